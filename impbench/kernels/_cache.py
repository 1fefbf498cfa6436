"""Compile cache: each kernels_cu/<family>.cu becomes one cupy.RawModule, compiled once per process.

This is the only module-level mutable state in impbench (STYLE.md rule 10).
"""

from __future__ import annotations

import os
from pathlib import Path

KERNELS_DIR = Path(os.environ.get("IMPBENCH_KERNELS_DIR", Path(__file__).resolve().parents[2] / "kernels_cu"))

# NVRTC options shared by every family. No toolkit include path: kernels must compile with the
# NVRTC that a plain `pip install cupy-cuda13x` brings (DESIGN.md, Facts), so they include only
# our own headers from kernels_cu/.
NVRTC_OPTIONS = ("--std=c++17", f"-I{KERNELS_DIR}")

_modules: dict[str, object] = {}


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
        module = cupy.RawModule(code=code, options=NVRTC_OPTIONS, backend="nvrtc")
        module.compile()
        _modules[family] = module
    return module


def get_function(family: str, name: str):
    """An extern "C" kernel of a family, by name."""
    return load_module(family).get_function(name)
