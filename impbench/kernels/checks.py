"""Argument checks shared by the kernel wrappers: each raises ValueError naming what is wrong."""

from __future__ import annotations


def check_array(name: str, arr, dtype, shape: tuple | None = None, ndim: int | None = None) -> None:
    """Check dtype, C-contiguity and (optionally) the exact shape or rank of a device array."""
    _check_device_dtype(name, arr, dtype, "shape")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous, got strides {arr.strides}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(arr.shape)}")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")


def check_rows(name: str, arr, dtype, shape: tuple, vector: bool = True) -> int:
    """Check a 2-D device array whose rows may be spaced wider than they are (a column slice of a wider
    buffer): dtype, exact shape, unit column stride, non-overlapping rows; with `vector`, 16-byte rows
    (start and row stride). Returns the row stride in elements."""
    _check_device_dtype(name, arr, dtype, "strides")
    if tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(arr.shape)}")
    rows, width = shape
    item = arr.dtype.itemsize
    row_bytes, col_bytes = arr.strides
    if width > 1 and col_bytes != item:
        raise ValueError(f"{name} must have contiguous columns (a column slice at most), got strides {arr.strides}")
    stride = row_bytes // item if rows > 1 else width
    if rows > 1 and (row_bytes % item or stride < width):
        raise ValueError(f"{name} rows must not overlap, got strides {arr.strides} for shape {tuple(arr.shape)}")
    if vector and (arr.data.ptr % 16 or (stride * item) % 16):
        raise ValueError(f"{name} must have 16-byte aligned rows, got address {arr.data.ptr:#x} and strides {arr.strides}")
    return stride


def _check_device_dtype(name: str, arr, dtype, attribute: str) -> None:
    """A cupy device array (with `attribute`, which the caller reads next) of `dtype`."""
    import numpy as np

    if not hasattr(arr, "data") or not hasattr(arr, attribute) or type(arr).__module__.split(".")[0] != "cupy":
        raise ValueError(f"{name} must be a cupy device array, got {type(arr).__name__}")
    if arr.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {arr.dtype.name}")


def byte_span(arr) -> tuple[int, int]:
    """[first, last + 1) device bytes an array's elements occupy (rows may be spaced wider)."""
    end = arr.data.ptr + arr.dtype.itemsize
    for extent, stride in zip(arr.shape, arr.strides):
        end += (extent - 1) * stride
    return arr.data.ptr, end


def check_apart(name: str, arr, others: dict) -> None:
    """`arr`, which a kernel writes, shares no byte with any of `others` (name -> array) that it reads or
    writes in the same launch."""
    lo, hi = byte_span(arr)
    for other_name, other in others.items():
        o_lo, o_hi = byte_span(other)
        if lo < o_hi and o_lo < hi:
            raise ValueError(f"{name} must not overlap {other_name}: bytes {lo:#x}-{hi:#x} and {o_lo:#x}-{o_hi:#x}")
