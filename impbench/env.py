"""The environment variables impbench reads: each one named, parsed and checked here, and nowhere else.

`check()` runs where a command starts (impbench.cli), before any GPU work, so a typo is exit code 2
and one line instead of a silently changed measurement (an `IMPBENCH_GEMM_VARIANTS` typo used to
send every GEMM to cuBLAS; `IMPBENCH_PDL=false` used to keep PDL on).

- IMPBENCH_PDL: programmatic dependent launch of our kernels on compute capability >= 9.0;
  1/on/true/yes (the default) or 0/off/false/no. The dense GEMMs take part only on their input side: they
  start early but let no successor start before they end (kernels_cu/common.cuh pdl_wait,
  docs/notes/engine.md).
- IMPBENCH_GEMM_VARIANTS: comma-separated GEMM variant names the dispatch may choose from
  (experiments); unset or empty means every variant. Each name must exist. (Guard seed is pinned to
  the original engine's tile and ignores it.)
- IMPBENCH_KERNELS_DIR: a folder of kernel sources to compile instead of the installed ones
  (a before / after on one machine); must be an existing folder holding *.cu files.
- IMPBENCH_GIT_COMMIT: the commit to record in results where the tree was copied without its .git.
Other IMPBENCH_* variables are ignored; `check()` names them so that a misspelt one is noticed.
"""

from __future__ import annotations

import os
from pathlib import Path

from impbench.errors import InputError

PDL = "IMPBENCH_PDL"
GEMM_VARIANTS = "IMPBENCH_GEMM_VARIANTS"
KERNELS_DIR = "IMPBENCH_KERNELS_DIR"
GIT_COMMIT = "IMPBENCH_GIT_COMMIT"
KNOWN = (PDL, GEMM_VARIANTS, KERNELS_DIR, GIT_COMMIT)

_TRUE, _FALSE = ("1", "on", "true", "yes"), ("0", "off", "false", "no")


def _pdl_value() -> str:
    value = os.environ.get(PDL, "").strip().lower()
    if value in ("",) + _TRUE + _FALSE:
        return value
    raise InputError(f"{PDL}={os.environ[PDL]!r} is not a switch; accepted: {', '.join(_TRUE + _FALSE)}")


def pdl() -> bool:
    """IMPBENCH_PDL: whether our kernels launch with PDL (default on)."""
    return _pdl_value() not in _FALSE


def gemm_variants() -> tuple[str, ...]:
    """IMPBENCH_GEMM_VARIANTS as names (empty: no restriction); every name must be a GEMM variant."""
    names = tuple(part.strip() for part in os.environ.get(GEMM_VARIANTS, "").split(",") if part.strip())
    if names:
        from impbench.kernels.gemm import VARIANTS

        unknown = [name for name in names if name not in VARIANTS]
        if unknown:
            raise InputError(f"{GEMM_VARIANTS} names unknown GEMM variants {unknown}; accepted: {', '.join(VARIANTS)}")
    return names


def kernels_dir() -> Path | None:
    """IMPBENCH_KERNELS_DIR as a folder of kernel sources, or None where unset."""
    if KERNELS_DIR not in os.environ:
        return None
    text = os.environ[KERNELS_DIR].strip()
    path = Path(text)
    if not text or not path.is_dir() or not any(path.glob("*.cu")):
        raise InputError(f"{KERNELS_DIR}={os.environ[KERNELS_DIR]!r} is not a folder of *.cu kernel sources; unset it "
                         "to use the installed kernels")  # fmt: skip
    return path


def git_commit() -> str | None:
    """IMPBENCH_GIT_COMMIT, or None where unset or empty."""
    return os.environ.get(GIT_COMMIT, "").strip() or None


def check() -> list[str]:
    """Parse every variable (InputError on a bad value); returns a note for each unknown IMPBENCH_* name."""
    pdl()
    gemm_variants()
    kernels_dir()
    return [f"note: {name} is not an impbench setting and is ignored (known: {', '.join(KNOWN)})"
            for name in sorted(os.environ) if name.startswith("IMPBENCH_") and name not in KNOWN]  # fmt: skip
