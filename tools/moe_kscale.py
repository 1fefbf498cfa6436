"""How much of an expert GEMM's time is per block rather than per K stage (device script).

Times `impbench moe`'s kernels (default: the engine's variant) on Qwen3-Coder-like shapes whose K alone
varies -- gate_up with H in --gate-up-k (N = 2 * 768 fixed), down with I in --down-k (N = 2048 fixed) --
under one routing, so the grid (token tiles x weight-row tiles) is the same at every K. A least-squares
line T = a + b * stages (stages = K / 128 per block) splits the time into a per-stage part b and a part a
that does not scale with K: block start (find_tile, the first stages' wait), epilogue and the wave tail.
a / waves is the cost per block that a longer-lived block could save. Prints one markdown table.

Usage (device machine): python3 tools/moe_kscale.py [--reps 40] [--routing uniform] [--variant wgp]
"""

from __future__ import annotations

import argparse

import numpy as np

from impbench.bench.moe import MoeShapes, route, run_moe_bench
from impbench.kernels import moe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--routing", default="uniform")
    ap.add_argument("--variant", default=None)
    ap.add_argument("--gate-up-k", default="1024,2048,4096")
    ap.add_argument("--down-k", default="768,1536,3072")
    args = ap.parse_args()
    ks = {"gate_up": [int(k) for k in args.gate_up_k.split(",")], "down": [int(k) for k in args.down_k.split(",")]}
    print("| op | K | stages | blocks | µs |\n|---|---|---|---|---|")
    for op, values in ks.items():
        times, blocks = [], 0
        for k in values:
            shapes = MoeShapes("kscale", 128, 8, k if op == "gate_up" else 2048, 768 if op == "gate_up" else k)
            report = run_moe_bench(shapes, 512, (args.routing,), reps=args.reps, ref_reps=1, variant=args.variant)
            row = next(r for r in report.rows if r["op"] == op)
            cols = moe.GATE_UP_COLS if op == "gate_up" else moe.DOWN_COLS
            n_out = row["n"] // 2 if op == "gate_up" else row["n"]
            tiles = sum(-(-c // moe.TOKENS_PER_TILE) for c in np.diff(_offsets(shapes, args.routing)))
            blocks = tiles * -(-n_out // cols)
            times.append(row["us"])
            print(f"| {op} | {k} | {k // 128} | {blocks} | {row['us']:.1f} |", flush=True)
        stages = np.array([k // 128 for k in values], float)
        b, a = np.polyfit(stages, np.array(times), 1)
        waves = blocks / (2 * _sms())  # 2 blocks per SM (launch bounds, shared memory)
        print(f"| {op} fit | | µs per stage {b:.2f} | waves {waves:.2f} | K-independent {a:.1f} µs = {a / max(waves, 1e-9):.2f} µs per block-wave |")


def _sms() -> int:
    import cupy

    return cupy.cuda.Device().attributes["MultiProcessorCount"]


def _offsets(shapes: MoeShapes, routing: str):
    return route(512, shapes.experts, shapes.top_k, routing, 0)[0]


if __name__ == "__main__":
    main()
