"""CUDA-graph capture of one non-last prefill chunk, in global capture mode, with eager fallback; and
CaptureStatus, the one record of whether an arm's chunks ran as a graph.

Global mode (not CuPy's default relaxed mode) makes every forbidden call inside the captured region
fail loudly: a lazy cudaMalloc, a cuBLAS call (CuPy refuses those under capture), a host read. When
capture fails the graph is marked failed with the op that broke it and the CUDA error, the capture
is ended cleanly, and the caller runs that prefill eager, as the original engine fell back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

CAPTURED = "captured"
FELL_BACK = "fell back"
EAGER = "eager"  # the arm does not capture
ONE_CHUNK = "one chunk"  # a graph arm whose prefill has no non-last chunk to capture
STATUSES = (CAPTURED, FELL_BACK, EAGER, ONE_CHUNK)


@dataclass(frozen=True)
class CaptureStatus:
    """Whether an arm's non-last chunks ran as a graph, and if capture failed, where and why."""

    status: str = EAGER
    op: str | None = None  # the op that broke capture (fell back only)
    error: str | None = None  # its error, one line (fell back only)
    kernels: int = 0  # launches recorded in the graph (captured only)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"capture status {self.status!r} is not one of {', '.join(STATUSES)}")

    @property
    def captured(self) -> bool:
        return self.status == CAPTURED

    def label(self) -> str:
        if self.status == CAPTURED:
            return f"captured ({self.kernels} kernels)"
        if self.status == FELL_BACK:
            return f"fell back to eager at {self.op}: {self.error}"
        if self.status == ONE_CHUNK:
            return "one chunk: nothing to capture, ran eager"
        return EAGER

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CaptureStatus:
        return cls(data["status"], data.get("op"), data.get("error"), int(data.get("kernels") or 0))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _rejoin_side_stream(engine, origin) -> None:
    """A launch that fails between a fork and its join (under tight, Qwen3.6's first declined GEMM is in
    one: cuBLAS refused under capture) leaves the side stream in the capture, forked and never joined:
    join it into `origin`, the capturing stream, so that end_capture closes the capture for both streams
    and the chunk can run eager."""
    branch = getattr(engine, "branch", None)
    if branch is None:
        return
    try:
        if branch.stream.is_capturing():
            branch.join(origin)
    except Exception:  # an invalidated capture: end_capture reports it
        pass


class ChunkGraph:
    """A captured (or failed) graph of one chunk of `length` tokens under one GEMM guard."""

    def __init__(self, status: CaptureStatus, graph=None):
        self.status = status
        self._graph = graph

    @property
    def captured(self) -> bool:
        return self.status.captured

    @classmethod
    def capture(cls, engine, length: int, guard: str, delay_us: float = 0.0, overlap: bool = True) -> ChunkGraph:
        """Capture the launches of one non-last chunk on the engine's stream (global mode); with `overlap` the
        side stream joins the capture at each fork, so its branch becomes a parallel path of the graph."""
        from cupy.cuda import runtime

        from impbench.engine.buffers import BufferAllocationError

        stream = engine.stream
        failure: tuple[str, str] | None = None
        kernels = 0
        engine.current_op = "begin_capture"
        stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
        try:
            launches = engine.launch_list(length, last=False, guard=guard, delay_us=delay_us, overlap=overlap)
            kernels = len(launches.kernels)
            launches.run(engine)
        except BufferAllocationError as exc:
            failure = (f"allocate {exc.buffer_name}", _one_line(exc.cause))
        except Exception as exc:  # cuBLAS under capture, a bad launch, anything: record and fall back
            failure = (engine.current_op, _one_line(exc))
        if failure is not None:
            _rejoin_side_stream(engine, stream)
        graph = None
        try:
            graph = stream.end_capture()
        except Exception as exc:  # an invalidated capture reports here
            if failure is None:
                failure = (engine.current_op, _one_line(exc))
        if failure is not None:
            return cls(CaptureStatus(FELL_BACK, failure[0], failure[1]))
        graph.upload(stream)
        return cls(CaptureStatus(CAPTURED, kernels=kernels), graph)

    def replay(self, stream) -> None:
        self._graph.launch(stream=stream)
