"""Where the time of a wgmma MoE kernel variant goes (--variant, default wgq): time copies of kernels_cu/ that
each leave one part of the K loop out (results are wrong on purpose; only the times mean something), next
to the unchanged kernel, with `impbench moe` in a subprocess per copy (IMPBENCH_KERNELS_DIR points it at the
copy). Each ablation patches code of some variants only (see ABLATIONS); on another it times the unchanged kernel.

    python3 tools/moe_ablation.py OUT_DIR [--reps 30] [--base-dir DIR] [--variant wgp]

--base-dir DIR adds the kernels in DIR (e.g. `git archive REV kernels_cu | tar -x -C DIR`, then
DIR/kernels_cu) as a row `base`: a before / after in the same run.
Prints one markdown table (gate_up / down µs, uniform routing, Qwen3-Coder, 512 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "moe_nvfp4.cu"

# name -> [(text in moe_nvfp4.cu, replacement)]; every text must occur exactly once (tests/test_moe.py checks).
ABLATIONS = {
    "no_decode": [  # wgmma variants: A = the e4m3 bytes as they are, no F2FP, no HMUL2 (the logic ops stay)
        ("a[mt][r] = hmul2(p ? e4m3x2_half<true>(hi[mt][r]) : e4m3x2_half<false>(hi[mt][r]), sh[mt][r]);",
         "a[mt][r] = hi[mt][r] + p;"),
        ("a[mt][r + 2] = hmul2(p ? e4m3x2_half<true>(lo[mt][r]) : e4m3x2_half<false>(lo[mt][r]), sh[mt][r]);",
         "a[mt][r + 2] = lo[mt][r] + p + sh[mt][r];"),
    ],
    "no_mma": [  # wgmma variants: no wgmma, the A registers folded into one accumulator each
        ("wgmma_rs<N>(acc[0], a[0], db);\n                    wgmma_rs<N>(acc[1], a[1], db);",
         "acc[0][0] += __uint_as_float(a[0][0] ^ a[0][1] ^ a[0][2] ^ a[0][3] ^ (unsigned)db);\n"
         "                    acc[1][0] += __uint_as_float(a[1][0] ^ a[1][1] ^ a[1][2] ^ a[1][3]);"),
    ],
    "no_sync": [  # wgq: no block barrier per stage
        ("fence_proxy_async();  // generic-proxy stores -> wgmma reads (async proxy)\n            __syncthreads();",
         "fence_proxy_async();"),
    ],
    "no_wload": [  # wgq, wgp: weight copies of 0 bytes (zero-fill: the same instructions, no DRAM traffic)
        ("qsrc[j] + (ok ? chunk * (BK / 2) : 0), ok ? 16 : 0);", "qsrc[j] + (ok ? chunk * (BK / 2) : 0), 0);"),
        ("cp_async16_l2(rd, ss, w_ok ? 16 : 0);", "cp_async16_l2(rd, ss, 0);"),
    ],
    "no_xload": [  # wgq: token-tile copies of 0 bytes (no L2 traffic; permutes stay)
        ("cp_async16s(sb + x_dst[0], xs, x_ok ? 16 : 0);\n            cp_async16s(sb + x_dst[1], xs + 64, x_ok ? 16 : 0);\n"
         "            cp_async16s(sb + x_dst[2], xh, xhi_ok ? 16 : 0);\n            cp_async16s(sb + x_dst[3], xh + 64, xhi_ok ? 16 : 0);",
         "cp_async16s(sb + x_dst[0], xs, 0);\n            cp_async16s(sb + x_dst[1], xs + 64, 0);\n"
         "            cp_async16s(sb + x_dst[2], xh, 0);\n            cp_async16s(sb + x_dst[3], xh + 64, 0);"),
    ],
    "no_xload_p": [  # wgp, wgb: token-tile copies of 0 bytes (the same instructions, no L2 traffic)
        ("cp_async16s(sb + p_dst + 2048 * m, x_bytes + (ok ? p_src[m] + chunk * (BK * 2) : 0u), ok ? 16 : 0);",
         "cp_async16s(sb + p_dst + 2048 * m, x_bytes + (ok ? p_src[m] + chunk * (BK * 2) : 0u), 0);"),
    ],
    "no_store": [  # wgmma variants: the epilogue stages the tile in shared memory but stores nothing
        ("        if (col < n_out)\n            *reinterpret_cast<uint4 *>(cx.out + (size_t)(tile.row0 + tok) * n_out + col) =\n"
         "                *reinterpret_cast<const uint4 *>(so + tok * STRIDE + u * 8);\n    }\n}\n\n}  // namespace wg",
         "        if (col < 0)\n            *reinterpret_cast<uint4 *>(cx.out + (size_t)(tile.row0 + tok) * n_out + col) =\n"
         "                *reinterpret_cast<const uint4 *>(so + tok * STRIDE + u * 8);\n    }\n}\n\n}  // namespace wg"),
    ],
    # cp.async weight copies (cvt, wgq, wgp): another L2 prefetch size, or none
    "l2_256": [("cp.async.cg.shared.global.L2::128B [%0]", "cp.async.cg.shared.global.L2::256B [%0]")],
    "l2_none": [("cp.async.cg.shared.global.L2::128B [%0]", "cp.async.cg.shared.global [%0]")],
}


def make_copy(dest: Path, patches, base: Path | None = None) -> None:
    shutil.copytree(base or ROOT / "kernels_cu", dest)
    text = (dest / SOURCE).read_text()
    for old, new in patches:
        if text.count(old) != 1:
            sys.exit(f"ablation pattern found {text.count(old)} times, expected once: {old[:60]!r}")
        text = text.replace(old, new)
    (dest / SOURCE).write_text(text)


def time_copy(kernels: Path, out: Path, reps: int, variant: str = "wgq") -> dict:
    env = dict(os.environ, IMPBENCH_KERNELS_DIR=str(kernels), PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "impbench", "moe", "--model", "qwen3-coder", "--pp", "512", "--reps", str(reps),
           "--variant", variant, "--format", "json", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    rows = json.loads(out.read_text())["rows"]
    return {r["op"]: r for r in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--variant", default="wgq", help="kernel variant timed (the ablations patch the wgq / wgp loop)")
    parser.add_argument("--base-dir", type=Path, default=None)
    parser.add_argument("--only", default="", help="comma-separated ablations (default: all)")
    parser.add_argument("--combine", action="append", default=[],
                        help="also one copy with these ablations together, e.g. no_wload,no_xload (repeatable)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "moe_ablation"
    shutil.rmtree(work, ignore_errors=True)
    cases = ([("base", [], args.base_dir)] if args.base_dir else []) + [("current", [], None)]
    names = args.only.split(",") if args.only else list(ABLATIONS)
    cases += [(name, ABLATIONS[name], None) for name in names]
    for combo in args.combine:
        parts = combo.split(",")
        cases.append(("+".join(parts), [pair for name in parts for pair in ABLATIONS[name]], None))
    lines = ["| kernels | gate_up µs | down µs | gate_up rel-err |", "|---|---|---|---|"]
    for name, patches, base in cases:
        make_copy(work / name, patches, base)
        got = time_copy(work / name, args.out / f"ablation_{name}.json", args.reps, args.variant)
        if "error" in got:
            lines.append(f"| {name} | error: {got['error'][:80]} | | |")
        else:
            up, down = got["gate_up"], got["down"]
            lines.append(f"| {name} | {up['time_us']:.1f} | {down['time_us']:.1f} | {up['rel_err']:.1e} |")
        print(lines[-1], file=sys.stderr, flush=True)
    table = "\n".join(lines)
    (args.out / "ablation.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
