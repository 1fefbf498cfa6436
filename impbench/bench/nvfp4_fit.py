"""Refit the dense NVFP4 GEMM's per-variant efficiencies (impbench.kernels.nvfp4_gemm.VARIANTS) to measured
times, and show where the rule then picks the measured best.

    python -m impbench.bench.nvfp4_fit results/gemm_qwen3-modelopt_h100.json [more.json ...]

Input: `impbench gemm --out X.json` reports (their NVFP4 rows time every variant of the table at each shape).
Each variant's efficiency is the one (0.30 .. 0.99, steps of 0.01) with the least squared log error of
nvfp4_gemm.modelled_us against its times, the model's other constants held; a variant with no time keeps its
efficiency. Times of variants no longer in the table, and of any variant whose error against cuBLAS passes
bench.gemm.WRONG_REL_ERR, are left out. The fitted numbers are for a person to copy into the table (with the file they came
from); nothing is written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

from impbench.bench.gemm import WRONG_REL_ERR
from impbench.errors import InputError
from impbench.kernels import nvfp4_gemm

EFFICIENCIES = [e / 100 for e in range(30, 100)]

Shape = tuple[int, int, int]


def read_times(paths) -> dict[Shape, dict[str, float]]:
    """{(M, N, K): {variant: µs}} from the NVFP4 rows of `impbench gemm` JSON reports; later files win."""
    times: dict[Shape, dict[str, float]] = {}
    for path in paths:
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path} as an impbench gemm JSON report: {exc}") from exc
        if not isinstance(report, dict) or report.get("format") != "impbench.gemm":
            raise InputError(f"{path} is not an impbench gemm JSON report (format impbench.gemm)")
        for row in report.get("rows", []):
            picked = str(row.get("variant", ""))
            if not picked.startswith("nvfp4 "):
                continue
            shape = (int(row["m"]), int(row["n"]), int(row["k"]))
            timed = {picked.split(" ", 1)[1]: {"us": row["ours_us"], "rel_err": row["rel_err"]}, **row.get("variants", {})}
            times.setdefault(shape, {}).update(
                {name: float(t["us"]) for name, t in timed.items()
                 if name in nvfp4_gemm.VARIANTS and t["us"] and t["rel_err"] <= WRONG_REL_ERR})  # fmt: skip
    if not times:
        raise InputError("no NVFP4 GEMM rows in " + ", ".join(map(str, paths)) + " (run impbench gemm on a preset "
                         "with NVFP4 projections, such as qwen3-modelopt, on a Hopper GPU)")  # fmt: skip
    return times


def _log_error(variant, points) -> float:
    return sum(math.log(nvfp4_gemm.modelled_us(variant, *shape) / us) ** 2 for shape, us in points)


def fit(times: dict[Shape, dict[str, float]]) -> dict[str, tuple[float, float | None, int]]:
    """{variant: (efficiency, rms log error or None, points)}: refitted where the variant has times."""
    fitted = {}
    for name, variant in nvfp4_gemm.VARIANTS.items():
        points = [(shape, t[name]) for shape, t in times.items() if name in t]
        if not points:
            fitted[name] = (variant.efficiency, None, 0)
            continue
        err, best = min((_log_error(dataclasses.replace(variant, efficiency=e), points), e) for e in EFFICIENCIES)
        fitted[name] = (best, math.sqrt(err / len(points)), len(points))
    return fitted


def picks(times: dict[Shape, dict[str, float]], efficiencies: dict[str, float]) -> list[dict]:
    """Per shape: the rule's pick with these efficiencies, its time, and the measured best."""
    table = {name: dataclasses.replace(v, efficiency=efficiencies.get(name, v.efficiency))
             for name, v in nvfp4_gemm.VARIANTS.items()}  # fmt: skip
    rows = []
    for shape in sorted(times, key=lambda s: (s[1], s[2], s[0])):
        t = times[shape]
        pick, best = nvfp4_gemm.choose_variant(*shape, variants=table), min(t, key=t.get)
        rows.append({"shape": shape, "pick": pick, "pick_us": t.get(pick), "best": best, "best_us": t[best]})
    return rows


def report(paths) -> list[str]:
    times = read_times(paths)
    fitted = fit(times)
    lines = ["variant: efficiency in the table -> fitted (rms log error, points)"]
    for name, (e, rms, n) in fitted.items():
        was = nvfp4_gemm.VARIANTS[name].efficiency
        lines.append(f"  {name}: {was:.2f} -> {e:.2f} ({rms:.3f}, {n})" if n else f"  {name}: {was:.2f} (no times)")
    lines.append("shape MxNxK: the rule's pick with the fitted efficiencies, then the measured best (µs)")
    for row in picks(times, {name: e for name, (e, _, _) in fitted.items()}):
        m, n, k = row["shape"]
        pick_us = "-" if row["pick_us"] is None else f"{row['pick_us']:.1f}"
        mark = "" if row["pick"] == row["best"] else "  <- not timed" if row["pick_us"] is None else "  <- not the best"
        lines.append(f"  {m}x{n}x{k}: {row['pick']} {pick_us}, best {row['best']} {row['best_us']:.1f}{mark}")
    return lines


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        print("\n".join(report(argv)))
    except InputError as exc:
        print(f"nvfp4_fit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
