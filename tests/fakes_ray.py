"""A fake row task for `impbench sweep --ray` on a local Ray cluster with declared GPUs (tests/test_fleet.py).

It runs in Ray's worker processes, so it takes its instructions from files in the folder that the
environment variable IMPBENCH_FAKE_FLEET names: `fail_once` and `fail_always` (one row key per line,
"model-pp-kind"), and it writes there, per attempt, which GPU Ray gave it and when it ran."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path


def fake_row(job) -> dict:
    import ray

    from fakes import make_arm
    from impbench.results import Row

    folder = Path(os.environ["IMPBENCH_FAKE_FLEET"])
    key = f"{job.preset.name}-{job.prompt_tokens}-{job.gpu_kind}"
    attempts = folder / f"{key}.attempts"
    attempt = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(attempt))
    start = time.time()
    time.sleep(0.3)
    with open(folder / "log.jsonl", "a") as log:
        log.write(json.dumps({"key": key, "gpus": [str(g) for g in ray.get_gpu_ids()], "start": start, "end": time.time()}) + "\n")
    listed = lambda name: key in ((folder / name).read_text().split() if (folder / name).exists() else [])  # noqa: E731
    if listed("fail_always") or (listed("fail_once") and attempt == 1):
        raise RuntimeError(f"CUDA out of memory (fake, attempt {attempt})")
    arms = [make_arm(chr(ord("A") + i), [20_000.0 + 10 * r + 100 * i for r in range(job.protocol.reps)], spec=arm,
                     pp=job.prompt_tokens) for i, arm in enumerate(job.arms)]  # fmt: skip
    row = Row(job.preset.name, job.prompt_tokens, arms, gpu_kind=job.gpu_kind,
              machine={"host": socket.gethostname(), "gpu_name": f"fake {job.gpu_kind or 'GPU'}"})  # fmt: skip
    return row.to_dict()
