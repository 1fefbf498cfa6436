#!/usr/bin/env bash
# One device call for the small-op kernels (kernels_cu/ops.cu, kernels_cu/routing.cu): their GPU tests,
# then each op's time at Qwen3-Coder shapes (H=2048, Hq=32, Hkv=4, D=128, E=128, k=8) for T=512 and
# T=2048. Time per launch = CUDA-event time of a replayed graph of ~200 launches of the op / launches,
# rotating over enough buffer sets that the working set is >= 3x the 50 MB L2 (median_us: no
# cache-resident numbers), and again on one set (hot_us: inputs in L2, as in the engine where the
# producer just wrote them). The reference forms sit next to the engine's (topk_softmax +
# build_permutation vs topk_count + permute_counted (one row, both launches), combine + rmsnorm vs
# combine_rmsnorm, qkv_post narrow vs wide).
# Also host time per eager call, through the wrapper and through a prepared launcher.
# Usage (device machine): bash scripts/device_ops.sh   -> logs under $OUT (or /tmp/device_ops)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_ops}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv 2>&1 | tee "$OUT/gpu_before.csv"
if [ "${DEVICE_OPS_SKIP_TESTS:-0}" != 1 ]; then
    python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_ops.py tests/test_routing.py 2>&1 | tee "$OUT/tests.log"
fi
PYTHONPATH=. python3 - <<'PY' 2>&1 | tee "$OUT/timing.txt"
import statistics
import time

import cupy as cp
import numpy as np
from cupy.cuda import runtime

from impbench.kernels import ops, routing

H, HQ, HKV, D, E, K, V = 2048, 32, 4, 128, 128, 8, 151936
MAX_LEN, POS = 4096, 1024
BW_BYTES_S = 3.0e12  # measured device-to-device copy, read + write (DESIGN.md, Facts)
FOOTPRINT = 160 << 20
rng = np.random.default_rng(0)
stream = cp.cuda.Stream(non_blocking=True)


def f16(shape, scale=1.0):  # generated on the device: host RNG for ~100 MB sets dominated the script's time
    return (cp.random.standard_normal(shape, dtype=cp.float32) * scale).astype(cp.float16)


with stream:
    table = f16((V, H))
    pos = cp.asarray([POS], cp.int32)
    weight = f16((H,))
    qn, kn = f16((D,)), f16((D,))


def case_embed(T):
    return ops, ops.embed, (cp.asarray(rng.integers(0, V, T).astype(np.int32)), table, f16((T, H))), 4 * T * H


def case_rmsnorm(T, threads=None):
    return ops, ops.rmsnorm, (f16((T, H)), weight, 1e-6, f16((T, H))), 4 * T * H, {"threads": threads}


def case_add_rmsnorm(T, threads=None):
    return ops, ops.add_rmsnorm, (f16((T, H)), f16((T, H)), weight, 1e-6, f16((T, H))), 8 * T * H, {"threads": threads}


def case_add(T):
    a, b = f16((T, H)), f16((T, H))
    return ops, ops.add, (a, b, a), 6 * T * H


def case_qkv_post(T, form="auto", steps=4):
    cols = (HQ + 2 * HKV) * D
    args = (f16((T, cols)), qn, kn, 1e-6, 1e6, pos, f16((T, HQ, D)), f16((MAX_LEN, HKV, D)), f16((MAX_LEN, HKV, D)))
    return ops, ops.qkv_post, args, 2 * T * cols * 2, {"form": form, "steps": steps}


def case_topk(T):
    args = (f16((T, E)), K, True, cp.empty((T, K), cp.int32), cp.empty((T, K), cp.float32))
    return routing, routing.topk_softmax, args, T * E * 2 + T * K * 8


def _topk_ids(T):
    ids, w = cp.empty((T, K), cp.int32), cp.empty((T, K), cp.float32)
    routing.topk_softmax(f16((T, E)), K, True, ids, w)
    return ids, w


def case_permute(T):
    ids, w = _topk_ids(T)
    R = T * K
    args = (ids, w, E, cp.empty(E + 1, cp.int32), cp.empty(R, cp.int32), cp.empty(R, cp.float32), cp.empty((T, K), cp.int32))
    return routing, routing.build_permutation, args, R * 8 + R * 12


class _TwoLaunches:
    """time_case's `module` for topk_count + permute_counted: one "launch" is both kernels."""

    @staticmethod
    def prepare(fn, *args):
        return fn(*args, prepared=True)


def _topk_count_permute(logits, ids, w, offsets, row_token, row_weight, token_rows, counts, prepared=False):
    launches = [
        routing.prepare(routing.topk_count, logits, K, True, ids, w, token_rows, counts),
        routing.prepare(routing.permute_counted, ids, w, counts, offsets, row_token, row_weight, token_rows),
    ]
    if not prepared:
        for launch in launches:
            launch()
        return None
    return lambda: [launch() for launch in launches]


def case_topk_count_permute(T):
    R = T * K
    args = (f16((T, E)), cp.empty((T, K), cp.int32), cp.empty((T, K), cp.float32), cp.empty(E + 1, cp.int32),
            cp.empty(R, cp.int32), cp.empty(R, cp.float32), cp.empty((T, K), cp.int32),
            cp.empty((routing.count_blocks(T), E), cp.int32))
    return _TwoLaunches, _topk_count_permute, args, T * E * 2 + T * K * 8 + R * 8 + R * 12


def case_combine(T, weighted=False):
    R = T * K
    rows = cp.asarray(rng.permutation(R).astype(np.int32).reshape(T, K))
    resid = f16((T, H))
    w = cp.asarray(rng.random((T, K)).astype(np.float32)) if weighted else None
    return routing, routing.combine, (f16((R, H)), rows, resid, resid, w), R * H * 2 + 2 * T * H * 2


def case_combine_w(T):
    return case_combine(T, weighted=True)


def case_combine_rmsnorm(T):
    R = T * K
    rows = cp.asarray(rng.permutation(R).astype(np.int32).reshape(T, K))
    resid = f16((T, H))
    args = (f16((R, H)), rows, resid, resid, weight, 1e-6, f16((T, H)), None)
    return routing, routing.combine_rmsnorm, args, R * H * 2 + 3 * T * H * 2


CASES = [
    ("embed", case_embed),
    ("rmsnorm", case_rmsnorm), ("rmsnorm/256thr", lambda T: case_rmsnorm(T, 256)),
    ("rmsnorm/64thr", lambda T: case_rmsnorm(T, 64)),
    ("add_rmsnorm", case_add_rmsnorm), ("add_rmsnorm/256thr", lambda T: case_add_rmsnorm(T, 256)),
    ("add_rmsnorm/64thr", lambda T: case_add_rmsnorm(T, 64)),
    ("add", case_add),
    ("qkv_post/narrow", lambda T: case_qkv_post(T, "narrow")), ("qkv_post/wide_s2", lambda T: case_qkv_post(T, "wide", 2)),
    ("qkv_post/wide_s4", lambda T: case_qkv_post(T, "wide", 4)), ("qkv_post/wide_s8", lambda T: case_qkv_post(T, "wide", 8)),
    ("topk_softmax", case_topk), ("build_permutation", case_permute),
    ("topk_count+permute", case_topk_count_permute),
    ("combine", case_combine), ("combine+w", case_combine_w), ("combine_rmsnorm", case_combine_rmsnorm),
]


def _unpack(made):
    module, fn, args, nbytes, kwargs = (tuple(made) + ({},))[:5]
    return module, fn, args, nbytes, kwargs


def time_case(make, T, footprint):
    with stream:
        module, fn, args, nbytes, kwargs = _unpack(make(T))
        sets = [(fn, args)]
        while len(sets) * nbytes < footprint and len(sets) < 32:
            sets.append(_unpack(make(T))[1:3])
        launchers = [module.prepare(f, *a, **kwargs) for f, a in sets]
        passes = max(1, 200 // len(launchers))
        for launch in launchers:
            launch()
        stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
        for _ in range(passes):
            for launch in launchers:
                launch()
        graph = stream.end_capture()
        graph.upload(stream)
        for _ in range(3):
            graph.launch(stream=stream)
        per_launch_us = []
        for _ in range(15):
            start, stop = cp.cuda.Event(), cp.cuda.Event()
            start.record(stream)
            graph.launch(stream=stream)
            stop.record(stream)
            stop.synchronize()
            per_launch_us.append(1e3 * cp.cuda.get_elapsed_time(start, stop) / (passes * len(launchers)))
        # host time per eager call: wrapper (checks + launch) and prepared launcher (launch only)
        host = {}
        for label, call in (("wrapper", lambda: fn(*args)), ("prepared", launchers[0])):  # wrapper: default form
            stream.synchronize()
            t0 = time.perf_counter()
            for _ in range(300):
                call()
            host[label] = 1e6 * (time.perf_counter() - t0) / 300
            stream.synchronize()
    return statistics.median(per_launch_us), min(per_launch_us), max(per_launch_us), nbytes, len(launchers), host


print(f"device: {cp.cuda.runtime.getDeviceProperties(0)['name'].decode()}")
rows = []
for name, make in CASES:
    for T in (512, 2048):
        med, lo, hi, nbytes, nsets, host = time_case(make, T, FOOTPRINT)
        hot = time_case(make, T, 0)[0]
        floor = 1e6 * nbytes / BW_BYTES_S
        rows.append((name, T, med, lo, hi, hot, floor, nsets, host["wrapper"], host["prepared"]))
print(f"{'op':<20} {'T':>5} {'median_us':>9} {'min_us':>7} {'max_us':>7} {'hot_us':>7} {'floor_us':>8} {'sets':>4} {'host_wrap_us':>12} {'host_prep_us':>12}")
for name, T, med, lo, hi, hot, floor, nsets, hw, hp in rows:
    print(f"{name:<20} {T:>5} {med:>9.2f} {lo:>7.2f} {hi:>7.2f} {hot:>7.2f} {floor:>8.2f} {nsets:>4} {hw:>12.2f} {hp:>12.2f}")
PY
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv 2>&1 | tee "$OUT/gpu_after.csv"
