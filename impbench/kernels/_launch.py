"""Pre-packed kernel launches: the argument block built once, each launch one driver call.

A CuPy RawKernel call converts every argument on every call (12-19 µs per launch in the engine on
the H100 machine's host, results/engine_h100.md); an engine that replays the same launch list chunk
after chunk needs that work once. `packed` turns a prepared launcher -- functools.partial(RawKernel, grid, block,
args, shared_mem=...) as every kernels/*.prepare returns -- into a callable that only calls
cuLaunchKernel on the current stream. Anything else (cuBLAS, a no-op) is returned unchanged.
"""

from __future__ import annotations

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
    gx, gy, gz = _dims(grid)
    bx, by, bz = _dims(block)
    smem = int(launcher.keywords.get("shared_mem", 0))
    launch = cupy.cuda.driver.launchKernel
    current_stream = cupy.cuda.get_current_stream
    params_ptr = ctypes.addressof(params)
    keep = (launcher, values, params)  # the arrays and the argument block must outlive every launch

    def run(keep=keep) -> None:
        launch(function, gx, gy, gz, bx, by, bz, smem, current_stream().ptr, params_ptr, 0)

    return run
