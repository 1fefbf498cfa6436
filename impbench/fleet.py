"""`impbench sweep --ray`: the rows of a sweep as Ray tasks on the GPUs of a Ray cluster.

Every (model, prompt length[, GPU kind]) row is one task that asks Ray for one whole GPU (so two
measurements never share one), builds its engine there and measures every arm interleaved exactly
as a local sweep does (impbench.measure), and returns the row with the facts of the machine that ran
it (host, GPU, driver). With GPU kinds (`--gpu-kinds h100,h200`), every row runs once on each kind,
placed through Ray's accelerator-type resources, and the tables group rows by kind: rows of two kinds
are never compared as one machine.

The driver (which needs no GPU) writes the result file atomically as rows arrive, so an interrupted
fleet run resumes like a local one. A task that fails (out of memory, a lost node) is retried up to
`max_retries` times, then written as a failed row with its error, never dropped; a rerun retries it.
Ray is an optional extra (`pip install 'impbench[ray]'`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from impbench.arms import ArmSpec
from impbench.errors import InputError
from impbench.results import Result, Row

GPU_KINDS = {"h100": "H100", "h200": "H200", "a100": "A100", "b200": "B200", "rtx5090": "RTX5090"}
MAX_RETRIES = 2


def parse_gpu_kinds(text) -> tuple[str, ...]:
    """`h100,h200` (or a scenario's list) as checked kind names."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    kinds = tuple(dict.fromkeys(str(item).strip().lower() for item in items if str(item).strip()))
    unknown = [kind for kind in kinds if kind not in GPU_KINDS]
    if not kinds or unknown:
        raise InputError(f"--gpu-kinds takes comma-separated GPU kinds from {', '.join(GPU_KINDS)}; got {text!r}")
    return kinds


def require_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray, which is not installed: pip install 'impbench[ray]'") from None
    return ray


def _reachable(address: str, timeout_s: float = 5.0) -> bool:
    """A TCP connection to host:port opens (Ray itself retries an unreachable address for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def connect(address: str | None) -> None:
    """Join the cluster at `address` ("auto": the one this host runs), once per process; one line on failure."""
    ray = require_ray()
    if ray.is_initialized():
        return
    hint = "start one with `ray start --head` (workers: `ray start --address HEAD:6379 --num-gpus N`)"
    if address and not _reachable(address):
        raise InputError(f"--ray {address}: no Ray cluster answers there (host:port of its head, e.g. 10.0.0.5:6379); {hint}")
    try:
        ray.init(address=address or "auto", log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(f"--ray {address or 'auto'}: cannot reach a Ray cluster ({' '.join(str(exc).split())[:200]}); "
                         f"{hint}") from None


@dataclass(frozen=True)
class RowJob:
    """What a task needs to measure one row."""

    preset: object  # presets.ModelPreset (frozen, picklable)
    prompt_tokens: int
    arms: tuple[ArmSpec, ...]
    protocol: object  # measure.Protocol
    gpu_kind: str | None = None

    @property
    def key(self) -> tuple[str, int, str | None]:
        return (self.preset.name, self.prompt_tokens, self.gpu_kind)


def machine_facts() -> dict:
    """Host and GPU of the worker that measured a row."""
    import socket

    from impbench.metadata import device_metadata

    facts = device_metadata()
    keep = ("gpu_name", "gpu_pci_bus_id", "gpu_driver", "cuda_driver_version", "cpu_model", "cupy_version")
    return {"host": socket.gethostname(), **{key: facts.get(key) for key in keep}}


def measure_row(job: RowJob) -> dict:
    """On a worker with one GPU: the row measured as a local sweep measures it, as a dict (Row.to_dict)."""
    from impbench import device, measure
    from impbench.results import Result

    device.require_cuda()
    result = Result("sweep")
    measure.measure(result, [job.preset], [job.prompt_tokens], list(job.arms), job.protocol)
    (row,) = result.rows
    row.gpu_kind, row.machine = job.gpu_kind, machine_facts()
    return row.to_dict()


# The function each task runs; tests replace it with a fake measurement.
ROW_TASK: Callable[[RowJob], dict] = measure_row


def _failed_row(job: RowJob, error: str, attempts: int) -> Row:
    return Row(job.preset.name, job.prompt_tokens, [], gpu_kind=job.gpu_kind,
               failed=f"failed after {attempts} attempt(s): {error}")  # fmt: skip


def run_fleet(result: Result, jobs: list[RowJob], max_retries: int = MAX_RETRIES,
              on_row: Callable[[Result], None] | None = None, progress=None) -> Result:  # fmt: skip
    """Submit every job not already measured in `result` (a failed row is measured again), one GPU each;
    add each row as it arrives and hand the result to `on_row` (the file writer)."""
    ray = require_ray()
    say = progress or (lambda line: None)
    done = result.done()
    result.rows = result.measured_rows
    todo = [job for job in jobs if job.key not in done]
    task = ray.remote(ROW_TASK)
    pending: dict = {}
    for job in todo:
        options = {"num_gpus": 1, "max_retries": max_retries, "retry_exceptions": True}
        if job.gpu_kind:
            options["resources"] = {f"accelerator_type:{GPU_KINDS[job.gpu_kind]}": 0.001}
        pending[task.options(**options).remote(job)] = job
    say(f"ray: {len(todo)} row(s) submitted, {len(jobs) - len(todo)} already measured")
    start = time.perf_counter()
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        job = pending.pop(ready[0])
        try:
            row = Row.from_dict(ray.get(ready[0]))
            where = f"on {row.machine.get('host')} {row.machine.get('gpu_name')}" if row.machine else ""
            say(f"ray: {job.preset.name} pp={job.prompt_tokens}{' ' + job.gpu_kind if job.gpu_kind else ''} done {where} "
                f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
        except Exception as exc:  # the task's own error after its retries, or a lost worker
            error = " ".join(str(getattr(exc, "cause", None) or exc).split())[:300]
            row = _failed_row(job, error, max_retries + 1)
            say(f"ray: {job.preset.name} pp={job.prompt_tokens}: {row.failed}")
        result.rows.append(row)
        if on_row:
            on_row(result)
    return result
