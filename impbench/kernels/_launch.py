"""Pre-packed kernel launches: the argument block built once, each launch one driver call.

A CuPy RawKernel call converts every argument on every call (12-19 µs per launch in the engine on
the H100 machine's host, results/engine_h100.md); an engine that replays the same launch list chunk
after chunk needs that work once. `packed` turns a prepared launcher -- functools.partial(RawKernel, grid, block,
args, shared_mem=...) as every kernels/*.prepare returns -- into a callable that only calls
cuLaunchKernel on the current stream. Anything else (cuBLAS, a no-op) is returned unchanged.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools


def _dims(value) -> tuple[int, int, int]:
    dims = tuple(int(v) for v in (value if isinstance(value, tuple) else (value,)))
    return (dims + (1, 1, 1))[:3]


def packed(launcher):
    """A faster equivalent of `launcher` where it is a plain RawKernel launch, else `launcher` itself."""
    import cupy
    import numpy as np

    if not (isinstance(launcher, functools.partial) and isinstance(launcher.func, cupy.RawKernel)):
        return launcher
    if len(launcher.args) != 3 or set(launcher.keywords) - {"shared_mem"}:
        return launcher
    grid, block, args = launcher.args
    values = []
    for arg in args:
        if isinstance(arg, cupy.ndarray):
            values.append(ctypes.c_void_p(arg.data.ptr))
        elif isinstance(arg, np.generic):
            values.append(ctypes.create_string_buffer(arg.tobytes(), arg.nbytes))
        else:  # a Python scalar: CuPy's own conversion rules apply, keep its launch
            return launcher
    params = (ctypes.c_void_p * max(1, len(values)))(*[ctypes.addressof(v) for v in values])
    function = launcher.func.kernel.ptr  # loads the module now, outside any capture
    smem = int(launcher.keywords.get("shared_mem", 0))
    # the arrays and the argument block must outlive every launch
    return driver_launcher(function, _dims(grid), _dims(block), smem, params, keep=(launcher, values))


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: id, padding, a 64-byte value union
    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_uint), ("value", ctypes.c_int), ("rest", ctypes.c_char * 60)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)), ("num_attrs", ctypes.c_uint)]  # fmt: skip


_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


_pdl_off = 0  # > 0 inside no_pdl()


def pdl_enabled() -> bool:
    """Programmatic dependent launch for our kernels: on compute capability >= 9.0 unless IMPBENCH_PDL=0
    or inside no_pdl(). Every kernel in kernels_cu/ starts with pdl_entry() (common.cuh): it lets the
    next kernel of the stream launch once all its blocks run, then waits for the previous kernel's
    completion and memory, so a launch's latency and block start overlap the tail of the kernel before it."""
    import os

    if _pdl_off or os.environ.get("IMPBENCH_PDL", "1") == "0":
        return False
    return _device_has_pdl()


@functools.cache
def _device_has_pdl() -> bool:
    import cupy

    return int(cupy.cuda.Device().compute_capability) >= 90


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


@functools.cache
def _launch_kernel_ex():
    lib = ctypes.CDLL("libcuda.so.1")
    fn = lib.cuLaunchKernelEx
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.POINTER(_LaunchConfig), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    return fn


def driver_launcher(function: int, grid, block, smem: int, params, keep=()):
    """A no-argument callable launching CUfunction `function` on the current stream with the prepared
    argument block `params` (a ctypes array of pointers): cuLaunchKernelEx with programmatic stream
    serialization where pdl_enabled(), else cuLaunchKernel. `keep`: objects the launches need alive."""
    import cupy

    current_stream = cupy.cuda.get_current_stream
    params_ptr = ctypes.addressof(params)
    gx, gy, gz = grid
    bx, by, bz = block
    if not pdl_enabled():
        launch = cupy.cuda.driver.launchKernel

        def run(keep=(keep, params)) -> None:
            launch(function, gx, gy, gz, bx, by, bz, smem, current_stream().ptr, params_ptr, 0)

        return run

    attribute = _LaunchAttribute(_PROGRAMMATIC_STREAM_SERIALIZATION, 0, 1)
    config = _LaunchConfig((gx, gy, gz), (bx, by, bz), smem, None, ctypes.pointer(attribute), 1)
    config_ref, launch_ex = ctypes.byref(config), _launch_kernel_ex()

    def run_pdl(keep=(keep, params, attribute, config)) -> None:
        config.stream = current_stream().ptr
        rc = launch_ex(config_ref, function, params_ptr, None)
        if rc != 0:
            raise RuntimeError(f"cuLaunchKernelEx failed with CUresult {rc}")

    return run_pdl
