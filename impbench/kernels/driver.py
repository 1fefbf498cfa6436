"""Every call impbench makes into the CUDA driver (libcuda) directly: kernel launches from a pre-built
argument block, TMA tensor maps, and cluster occupancy. No other module loads libcuda.

Why launch through the driver at all: a CuPy RawKernel call converts every argument on every call
(12-19 µs per launch in the engine on the H100 host, docs/notes/engine.md), while an engine that
replays the same launch list chunk after chunk needs that work once; and CuPy cannot pass a 128-byte
CUtensorMap by value. Every function here is host-only or a launch on the current stream: none
allocates device memory, synchronizes or reads the device, so all of them are capture-safe.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

# the CUtensorMapDataType, CUtensorMapSwizzle and CUtensorMapL2promotion values the kernels use
FLOAT16 = 6
SWIZZLE_32B, SWIZZLE_64B, SWIZZLE_128B = 1, 2, 3
L2_PROMOTION_256B = 3
_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_uint), ("value", ctypes.c_int), ("rest", ctypes.c_char * 60)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)), ("num_attrs", ctypes.c_uint)]  # fmt: skip


@functools.cache
def _libcuda():
    lib = ctypes.CDLL("libcuda.so.1")
    u64p, u32p = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32)
    lib.cuTensorMapEncodeTiled.restype = ctypes.c_int
    lib.cuTensorMapEncodeTiled.argtypes = [
        ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, u64p, u64p, u32p, u32p,
        ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    lib.cuOccupancyMaxActiveClusters.restype = ctypes.c_int
    lib.cuOccupancyMaxActiveClusters.argtypes = [ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.POINTER(_LaunchConfig)]
    lib.cuLaunchKernelEx.restype = ctypes.c_int
    lib.cuLaunchKernelEx.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return lib


# ---- tensor maps ---------------------------------------------------------------------------------


class TensorMap:
    """A CUtensorMap (128 bytes, 64-byte aligned) encoded on the host by cuTensorMapEncodeTiled, passed
    to a kernel by value. `keep` holds what the map points at (the array) for as long as the map lives."""

    def __init__(self, ptr: int, dtype: int, dims, strides_bytes, box, swizzle: int, l2_promotion: int, keep=None):
        rank = len(dims)
        self.keep = keep
        self.buffer = ctypes.create_string_buffer(128 + 64)
        self.address = (ctypes.addressof(self.buffer) + 63) & ~63
        rc = _libcuda().cuTensorMapEncodeTiled(
            self.address, dtype, rank, ctypes.c_void_p(ptr),
            (ctypes.c_uint64 * rank)(*dims), (ctypes.c_uint64 * max(1, rank - 1))(*strides_bytes),
            (ctypes.c_uint32 * rank)(*box), (ctypes.c_uint32 * rank)(*([1] * rank)),
            0, swizzle, l2_promotion, 0,
        )  # fmt: skip
        if rc != 0:
            raise ValueError(f"cuTensorMapEncodeTiled failed ({rc}) for dims {tuple(dims)}, box {tuple(box)}")


# ---- occupancy -----------------------------------------------------------------------------------


def max_active_clusters(function: int, cluster_ctas: int, threads: int, smem: int, fallback: int) -> int:
    """Clusters of `cluster_ctas` CTAs of CUfunction `function` resident at once (cuOccupancyMaxActiveClusters:
    a GPC's SMs may not pair up), at most `fallback`; `fallback` where the driver cannot say."""
    try:
        config = _LaunchConfig((cluster_ctas * fallback, 1, 1), (threads, 1, 1), smem, None, None, 0)
        found = ctypes.c_int(0)
        rc = _libcuda().cuOccupancyMaxActiveClusters(ctypes.byref(found), ctypes.c_void_p(function), ctypes.byref(config))
    except (OSError, AttributeError):  # no driver entry point: plan with the SM count
        return fallback
    return max(1, min(found.value, fallback)) if rc == 0 and found.value > 0 else fallback


# ---- launches ------------------------------------------------------------------------------------

_pdl_off = 0  # > 0 inside no_pdl()


def pdl_enabled() -> bool:
    """Programmatic dependent launch for our kernels: on compute capability >= 9.0 unless IMPBENCH_PDL is
    off or inside no_pdl(). Every kernel in kernels_cu/ starts with pdl_entry() (common.cuh): it lets the
    next kernel of the stream launch once all its blocks run, then waits for the previous kernel's
    completion and memory, so a launch's latency and block start overlap the tail of the kernel before it."""
    from impbench import env

    return not _pdl_off and env.pdl() and _device_has_pdl()


@functools.cache
def _device_has_pdl() -> bool:
    from impbench import device

    return device.compute_capability() >= 90


@contextlib.contextmanager
def no_pdl():
    """Launchers built inside launch without programmatic serialization: the kernel benchmarks time
    each launch alone between events, as cuBLAS's launches are."""
    global _pdl_off
    _pdl_off += 1
    try:
        yield
    finally:
        _pdl_off -= 1


def _dims(value) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in (value if isinstance(value, tuple) else (value,)))
    return (dims + (1, 1, 1))[:3]


def argument_block(args) -> tuple[object, list]:
    """The kernel parameter array for `args` (cupy arrays, NumPy scalars, TensorMaps, ctypes values):
    (ctypes array of pointers, the values it points into, which must outlive every launch)."""
    import cupy
    import numpy as np

    values: list = []
    for arg in args:
        if isinstance(arg, TensorMap):
            values.append(arg)
        elif isinstance(arg, cupy.ndarray):
            values.append(ctypes.c_void_p(arg.data.ptr))
        elif isinstance(arg, np.generic):
            values.append(ctypes.create_string_buffer(arg.tobytes(), arg.nbytes))
        elif isinstance(arg, ctypes._SimpleCData):
            values.append(arg)
        else:
            raise TypeError(f"kernel argument of type {type(arg).__name__}: pass a cupy array, a NumPy scalar or a TensorMap")
    pointers = [v.address if isinstance(v, TensorMap) else ctypes.addressof(v) for v in values]
    return (ctypes.c_void_p * max(1, len(pointers)))(*pointers), values


def launcher(function: int, grid, block, smem: int, args, keep=()):
    """A no-argument callable launching CUfunction `function` on the current stream with `args` packed
    once (argument_block): cuLaunchKernelEx with programmatic stream serialization where pdl_enabled(),
    else cuLaunchKernel. `keep`: more objects the launches need alive."""
    import cupy

    params, values = argument_block(args)
    current_stream = cupy.cuda.get_current_stream
    params_ptr = ctypes.addressof(params)
    gx, gy, gz = _dims(grid)
    bx, by, bz = _dims(block)
    if not pdl_enabled():
        launch = cupy.cuda.driver.launchKernel

        def run(keep=(keep, args, params, values)) -> None:
            launch(function, gx, gy, gz, bx, by, bz, smem, current_stream().ptr, params_ptr, 0)

        return run

    attribute = _LaunchAttribute(_PROGRAMMATIC_STREAM_SERIALIZATION, 0, 1)
    config = _LaunchConfig((gx, gy, gz), (bx, by, bz), smem, None, ctypes.pointer(attribute), 1)
    config_ref, launch_ex = ctypes.byref(config), _libcuda().cuLaunchKernelEx

    def run_pdl(keep=(keep, args, params, values, attribute, config)) -> None:
        config.stream = current_stream().ptr
        rc = launch_ex(config_ref, function, params_ptr, None)
        if rc != 0:
            raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {rc}")

    return run_pdl


def packed(launch):
    """A faster equivalent of `launch` where it is a plain RawKernel launch (functools.partial(RawKernel,
    grid, block, args, shared_mem=...), as the kernel wrappers' prepare returns), else `launch` itself
    (cuBLAS, a no-op, an already packed launcher)."""
    import cupy
    import numpy as np

    if not (isinstance(launch, functools.partial) and isinstance(launch.func, cupy.RawKernel)):
        return launch
    if len(launch.args) != 3 or set(launch.keywords) - {"shared_mem"}:
        return launch
    grid, block, args = launch.args
    if not all(isinstance(arg, (cupy.ndarray, np.generic)) for arg in args):
        return launch  # a Python scalar: CuPy's own conversion rules apply, keep its launch
    function = launch.func.kernel.ptr  # loads the module now, outside any capture
    return launcher(function, grid, block, int(launch.keywords.get("shared_mem", 0)), args, keep=(launch,))
