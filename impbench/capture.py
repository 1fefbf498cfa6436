"""CUDA-graph capture of one non-last prefill chunk, in global capture mode, with eager fallback.

Global mode (not CuPy's default relaxed mode) makes every forbidden call inside the captured region
fail loudly: a lazy cudaMalloc, a cuBLAS call (CuPy refuses those under capture), a host read. When
capture fails the graph is marked failed with the op that broke it and the CUDA error, the capture
is ended cleanly, and the caller runs that prefill eager -- the original engine's fallback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CaptureStatus:
    captured: bool
    failed_op: str | None = None
    error: str | None = None
    kernels: int = 0  # launches recorded in the graph

    def describe(self) -> str:
        if self.captured:
            return f"captured ({self.kernels} kernels)"
        return f"fell back to eager: {self.failed_op}: {self.error}"

    def to_dict(self) -> dict:
        return asdict(self)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


class ChunkGraph:
    """A captured (or failed) graph of one chunk of `length` tokens under one GEMM guard."""

    def __init__(self, status: CaptureStatus, graph=None):
        self.status = status
        self._graph = graph

    @property
    def captured(self) -> bool:
        return self.status.captured

    @classmethod
    def capture(cls, engine, length: int, guard: str | None) -> "ChunkGraph":
        """Capture the launches of one non-last chunk on the engine's stream (global mode)."""
        from cupy.cuda import runtime

        from impbench.engine.buffers import BufferAllocationError

        stream = engine.stream
        failure: tuple[str, str] | None = None
        kernels = 0
        engine.current_op = "begin_capture"
        stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
        try:
            launches = engine.launch_list(length, last=False, guard=guard)
            kernels = len(launches.launches)
            launches.run(engine)
        except BufferAllocationError as exc:
            failure = (f"allocate {exc.buffer_name}", _one_line(exc.cause))
        except Exception as exc:  # cuBLAS under capture, a bad launch, anything: record and fall back
            failure = (engine.current_op, _one_line(exc))
        graph = None
        try:
            graph = stream.end_capture()
        except Exception as exc:  # an invalidated capture reports here
            if failure is None:
                failure = (engine.current_op, _one_line(exc))
        if failure is not None:
            return cls(CaptureStatus(False, failure[0], failure[1]))
        graph.upload(stream)
        return cls(CaptureStatus(True, kernels=kernels), graph)

    def replay(self, stream) -> None:
        self._graph.launch(stream=stream)
