"""The one kernel-timing loop under `impbench gemm`, `moe` and `ops`.

- Cold inputs: every timed launch reads the next of several input sets that together exceed the
  L2 (50 MB on the H100, 60 MB on the H200) several times over, so no launch is timed on operands
  that it or another launch left in cache.
- Device time from CUDA events, median of `reps`. Each rep starts behind a spin kernel long enough
  for the host to queue every timed launch of the rep, so no host launch gap lands between the
  events around a kernel; the order of the timed sides alternates from rep to rep.
- Small ops run from a replayed CUDA graph of many launches (time per launch), since one launch of
  a few µs is shorter than the event resolution and the launch latency.
- Telemetry (SM clock, temperature, power, throttle reasons) is sampled while each case runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from impbench.errors import InputError

ROTATE_BYTES = 200 << 20  # input sets per case together: 4x the H100's L2, 3.3x the H200's
MAX_SETS = 96
MAX_TOTAL_BYTES = 8 << 30
SPIN_US = 150.0
SPIN_US_PER_LAUNCH = 30.0  # host time to queue one timed launch and its event, with margin
SM_MHZ = 1980.0  # the spin's clock: H100 and H200 under load


def check_reps(reps: int) -> None:
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise InputError(f"--reps must be a whole number >= 1, got {reps}")


def set_count(set_bytes: int, rotate_bytes: int = ROTATE_BYTES) -> int:
    """Input sets of `set_bytes` each so that together they exceed `rotate_bytes` (at least 2)."""
    want = max(2, min(MAX_SETS, -(-rotate_bytes // max(1, set_bytes))))
    return max(1, min(want, MAX_TOTAL_BYTES // max(1, set_bytes)))


def spin(us: float) -> Callable[[], None]:
    """A launcher of the spin kernel (kernels_cu/bench.cu) for about `us` µs."""
    import cupy

    from impbench.kernels import get_function

    kernel, cycles = get_function("bench", "bench_spin"), cupy.int64(int(us * SM_MHZ))
    return lambda: kernel((1,), (1,), (cycles,))


def time_interleaved(sides: dict[str, Callable[[int], None]], sets: int, reps: int, warmup: int = 5,
                     spin_us: float | None = None) -> dict[str, list[float]]:  # fmt: skip
    """Device µs of each side per rep. `sides[name](i)` launches that side on input set i; every launch
    takes the next set, the order of the sides alternates, and each rep runs behind one spin (of
    `spin_us`, default long enough to queue one launch per side)."""
    import cupy

    names = list(sides)
    for i in range(warmup):
        for name in names:
            sides[name](i % sets)
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    behind = spin(spin_us if spin_us is not None else SPIN_US + SPIN_US_PER_LAUNCH * len(names))
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        events = [cupy.cuda.Event() for _ in range(len(order) + 1)]
        behind()
        events[0].record(stream)
        for j, name in enumerate(order):
            sides[name]((rep * len(order) + j) % sets)
            events[j + 1].record(stream)
        events[-1].synchronize()
        for j, name in enumerate(order):
            times[name].append(cupy.cuda.get_elapsed_time(events[j], events[j + 1]) * 1000.0)
    return times


def time_graph(launchers: list[Callable[[], None]], launches: int = 200, reps: int = 15) -> list[float]:
    """Device µs per launch of `launchers` (one per input set) replayed from one captured graph of
    about `launches` launches, one value per replay."""
    import cupy
    from cupy.cuda import runtime

    stream = cupy.cuda.get_current_stream()
    passes = max(1, launches // len(launchers))
    for launch in launchers:  # outside the capture: module loads, first touches
        launch()
    stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
    try:
        for _ in range(passes):
            for launch in launchers:
                launch()
    finally:
        graph = stream.end_capture()
    graph.upload(stream)
    for _ in range(3):
        graph.launch(stream=stream)
    per_launch = []
    for _ in range(reps):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        graph.launch(stream=stream)
        stop.record(stream)
        stop.synchronize()
        per_launch.append(1e3 * cupy.cuda.get_elapsed_time(start, stop) / (passes * len(launchers)))
    return per_launch


def host_us(fn: Callable[[], None], calls: int = 300) -> float:
    """Host µs per call of `fn` (the launch path, not the kernel): the queue drained before and after."""
    import cupy

    stream = cupy.cuda.get_current_stream()
    stream.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    stream.synchronize()
    return 1e6 * elapsed / calls


def median_us(times: list[float]) -> float:
    return float(statistics.median(times))


def copy_gbs(nbytes: int = 1 << 30, reps: int = 10) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second (GB/s), of an `nbytes` buffer."""
    import cupy

    src = cupy.ones(nbytes // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    times = time_interleaved({"copy": lambda i: cupy.copyto(dst, src)}, 1, reps, warmup=1)["copy"]
    return 2.0 * nbytes / median_us(times) / 1e3


def cublas_tflops(size: int = 8192, reps: int = 5) -> float:
    """cuBLAS FP16 rate (cupy.matmul, size^3, random data) in TFLOP/s."""
    import cupy

    rng = cupy.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=cupy.float32).astype(cupy.float16)
    b = rng.standard_normal((size, size), dtype=cupy.float32).astype(cupy.float16)
    out = cupy.empty((size, size), cupy.float16)
    times = time_interleaved({"matmul": lambda i: cupy.matmul(a, b, out=out)}, 1, reps, warmup=1)["matmul"]
    return 2.0 * size**3 / median_us(times) / 1e6
