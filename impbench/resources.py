"""Where the package's data lives: the CUDA kernel sources and the scenarios (model presets, sweeps).

Both ship inside the installed package, as `impbench.kernels_cu` and `impbench.scenarios`
(pyproject.toml maps the checkout's top-level kernels_cu/ and scenarios/ folders there), so a wheel
or `pip install .` finds them as an editable install does. Run straight from a checkout without any
install (PYTHONPATH=.), those subpackages are not importable, and the checkout's own folders beside
the package are used instead. IMPBENCH_KERNELS_DIR (impbench.env) replaces the kernel folder.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from impbench import env

_CHECKOUT = Path(__file__).resolve().parents[1]


@cache
def _package_dir(name: str, checkout_name: str) -> Path:
    spec = importlib.util.find_spec(f"impbench.{name}")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return _CHECKOUT / checkout_name


def kernels_dir() -> Path:
    """The folder of kernels_cu/*.cu and *.cuh sources in use."""
    return env.kernels_dir() or _package_dir("kernels_cu", "kernels_cu")


def sources_digest(*patterns: str) -> str:
    """SHA-256 (hex) over the kernel folder's files matching `patterns`, each file's name and bytes in
    path order: what the compile cache keys headers on, and what a result records of its kernels."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(path for pattern in patterns for path in kernels_dir().glob(pattern)):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def kernel_source(family: str) -> Path:
    path = kernels_dir() / f"{family}.cu"
    if not path.is_file():
        raise FileNotFoundError(f"kernel family {family!r} not found: {path}")
    return path


def kernel_families() -> list[str]:
    """Every kernel family (a kernels_cu/<family>.cu file), sorted."""
    return sorted(path.stem for path in kernels_dir().glob("*.cu"))


def scenarios_dir() -> Path:
    return _package_dir("scenarios", "scenarios")


def model_presets_dir() -> Path:
    return scenarios_dir() / "models"


def sweeps_dir() -> Path:
    return scenarios_dir() / "sweeps"
