"""The compile cache: each kernels_cu/<family>.cu becomes one cupy.RawModule, compiled once per process.

This is the only module-level mutable state in impbench. A family may have entry points generated
from a Python table (GENERATED_ENTRY_POINTS): their source lines are appended to the file's text, so
the table is the one place a variant is declared; `module_source` gives that text to NVRTC here and
to nvcc in the compile test alike.
"""

from __future__ import annotations

import importlib

from impbench import resources

# family -> "module:function" returning the extern "C" entry-point lines of that family's variants
GENERATED_ENTRY_POINTS: dict[str, str] = {"gemm_fp16": "impbench.kernels.gemm.variants:entry_points"}

# Families that need more than sm_80 to run at all (every other family runs on any sm_80+ GPU):
# the e4m3x2 -> f16x2 conversion that decodes NVFP4 scales and values is sm_89+.
MIN_COMPUTE_CAPABILITY = {"moe_nvfp4": 89, "nvfp4_gen": 89}

_modules: dict[str, object] = {}
_functions: dict[tuple[str, str], object] = {}

# A family whose source starts with `// impbench-nvrtc-arch: sm_90a` is compiled for that
# architecture-specific target (wgmma, setmaxnreg) on a device of that compute capability; CuPy
# also passes its own -arch=sm_90, and NVRTC keeps the more specific sm_90a. Elsewhere the family
# compiles as usual and must guard such code with __CUDA_ARCH_FEAT_SM90_ALL.
ARCH_MARKER = "impbench-nvrtc-arch:"


def module_source(family: str) -> str:
    """The text compiled for a family: its .cu file, then any entry points generated from its table."""
    code = resources.kernel_source(family).read_text(encoding="utf-8")
    target = GENERATED_ENTRY_POINTS.get(family)
    if target:
        module, function = target.split(":")
        code += "\n// ---- entry points generated from the Python variant table ----\n"
        code += getattr(importlib.import_module(module), function)()
    return code


def load_module(family: str):
    """The RawModule of a family, compiled on first use (outside any capture)."""
    module = _modules.get(family)
    if module is None:
        import cupy

        code = module_source(family)
        module = cupy.RawModule(code=code, options=nvrtc_options(code), backend="nvrtc")
        module.compile()
        _modules[family] = module
    return module


def nvrtc_options(code: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """NVRTC options of a family's source `code` (plus `extra`, e.g. an experiment's -D flag). No toolkit
    include path: kernels must compile with the NVRTC that a plain `pip install cupy-cuda13x` brings, so
    they include only our own headers."""
    return ("--std=c++17", f"-I{resources.kernels_dir()}") + _arch_options(code) + (
        f"-DIMPBENCH_HEADERS={headers_digest()}",) + extra  # fmt: skip


def headers_digest() -> str:
    """A digest of every kernels_cu/*.cuh. CuPy's on-disk cache keys a module on its source text and
    options only, so a changed header must change the options, or a stale binary is loaded."""
    return resources.sources_digest("*.cuh")[:16]


def source_arch(code: str) -> str | None:
    """The architecture-specific target a source asks for in its first lines (e.g. "sm_90a"), or None."""
    for line in code.splitlines()[:5]:
        if ARCH_MARKER in line:
            return line.split(ARCH_MARKER, 1)[1].strip()
    return None


def _arch_options(code: str) -> tuple[str, ...]:
    from impbench import device

    arch = source_arch(code)
    if arch and arch.startswith("sm_") and arch[3:].rstrip("a") == str(device.compute_capability()):
        return (f"-arch={arch}",)
    return ()


def replace_module(family: str, module) -> None:
    """Use `module` (a RawModule built from module_source with other options, e.g. a trace build) for a
    family from now on in this process; fetched kernels of the family are dropped."""
    _modules[family] = module
    for key in [key for key in _functions if key[0] == family]:
        del _functions[key]


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
