"""Argument checks shared by the kernel wrappers: each raises ValueError naming what is wrong."""

from __future__ import annotations


def check_array(name: str, arr, dtype, shape: tuple | None = None, ndim: int | None = None) -> None:
    """Check dtype, C-contiguity and (optionally) the exact shape or rank of a device array."""
    import numpy as np

    if not hasattr(arr, "data") or not hasattr(arr, "shape") or type(arr).__module__.split(".")[0] != "cupy":
        raise ValueError(f"{name} must be a cupy device array, got {type(arr).__name__}")
    if arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {arr.dtype.name}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {arr.strides}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(arr.shape)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
