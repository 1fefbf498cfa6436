"""Compile cache: each kernels_cu/<family>.cu becomes one cupy.RawModule, compiled once per process.

This is the only module-level mutable state in impbench (STYLE.md rule 10).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

KERNELS_DIR = Path(os.environ.get("IMPBENCH_KERNELS_DIR", Path(__file__).resolve().parents[2] / "kernels_cu"))

# NVRTC options shared by every family. No toolkit include path: kernels must compile with the
# NVRTC that a plain `pip install cupy-cuda13x` brings (DESIGN.md, Facts), so they include only
# our own headers from kernels_cu/.
NVRTC_OPTIONS = ("--std=c++17", f"-I{KERNELS_DIR}")

_modules: dict[str, object] = {}
_functions: dict[tuple[str, str], object] = {}

# A family whose source starts with `// impbench-nvrtc-arch: sm_90a` is compiled for that
# architecture-specific target (wgmma, setmaxnreg) on a device of that compute capability; CuPy
# also passes its own -arch=sm_90, and NVRTC keeps the more specific sm_90a. Elsewhere the family
# compiles as usual and must guard such code with __CUDA_ARCH_FEAT_SM90_ALL.
_ARCH_MARKER = "impbench-nvrtc-arch:"


def source_path(family: str) -> Path:
    path = KERNELS_DIR / f"{family}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"kernel family {family!r} not found: {path}")
    return path


def load_module(family: str):
    """The RawModule for kernels_cu/<family>.cu, compiled on first use."""
    module = _modules.get(family)
    if module is None:
        import cupy

        code = source_path(family).read_text()
        module = cupy.RawModule(code=code, options=module_options(code), backend="nvrtc")
        module.compile()
        _modules[family] = module
    return module


def module_options(code: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The NVRTC options of a family's source `code` (plus `extra`, e.g. an experiment's -D flag)."""
    return NVRTC_OPTIONS + _arch_options(code) + (f"-DIMPBENCH_HEADERS={headers_digest()}",) + extra


def headers_digest() -> str:
    """A digest of every kernels_cu/*.cuh. CuPy's on-disk cache keys a module on its source text and
    options only, so a changed header must change the options, or a stale binary is loaded."""
    digest = hashlib.sha256()
    for header in sorted(KERNELS_DIR.glob("*.cuh")):
        digest.update(header.name.encode() + b"\0" + header.read_bytes())
    return digest.hexdigest()[:16]


def _arch_options(code: str) -> tuple[str, ...]:
    import cupy

    for line in code.splitlines()[:5]:
        if _ARCH_MARKER in line:
            arch = line.split(_ARCH_MARKER, 1)[1].strip()  # e.g. sm_90a
            if arch.startswith("sm_") and arch[3:].rstrip("a") == cupy.cuda.Device().compute_capability:
                return (f"-arch={arch}",)
    return ()


def get_function(family: str, name: str, max_dynamic_smem: int = 0):
    """An extern "C" kernel of a family, by name; fetched once. `max_dynamic_smem` (bytes) raises
    the kernel's dynamic shared-memory limit above the 48 KiB default, once, when it is first fetched."""
    key = (family, name)
    function = _functions.get(key)
    if function is None:
        function = load_module(family).get_function(name)
        if max_dynamic_smem > 48 * 1024:
            function.max_dynamic_shared_size_bytes = max_dynamic_smem
        _functions[key] = function
    return function
