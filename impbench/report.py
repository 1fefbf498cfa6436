"""Views of results: markdown / CSV / JSON printers over the same rows, the --out writer, and compare.

Every printer starts from one list of records (plain dicts of raw numbers, None where unknown);
CSV and JSON print them as they are, markdown formats a chosen subset for people (llama-bench's
markdown_printer / csv_printer / json_printer split). A second, per-arm table says *why*: cold vs
warm time, clocks, throttling, capture status, GEMM dispatch and host time per launch.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from impbench.errors import InputError
from impbench.results import ABResult, ABRow, ArmResult
from impbench.stats import Comparison, compare_arms

FORMATS = ("md", "csv", "json")
NA = "n/a"
# Metadata that, when it differs between two results, changes what their numbers mean.
MACHINE_KEYS = ("gpu_name", "gpu_driver", "cuda_driver_version", "cpu_model", "cpu_count_usable",
                "cupy_version", "python_version")  # fmt: skip

# Markdown tables: cell key -> header, in column order.
ANSWER_COLUMNS = {"model": "Model", "pp": "pp", "a": "A tok/s", "b": "B tok/s", "delta": "Δ", "ci": "95% CI",
                  "noise": "noise", "verdict": "verdict", "flagged": "flagged reps"}  # fmt: skip
WHY_COLUMNS = {"model": "Model", "pp": "pp", "arm": "arm", "chunk": "chunk", "cold": "cold / warm ms",
               "spread": "spread", "sm": "SM MHz min / med", "temp": "max °C", "power": "W (med)",
               "throttle": "throttle", "capture": "capture", "gemm": "GEMM paths (per prefill)",
               "host": "host µs/launch"}  # fmt: skip
COMPARE_COLUMNS = {"model": "Model", "pp": "pp", "arm": "arm", "old": "OLD tok/s", "new": "NEW tok/s",
                   "delta": "Δ", "ci": "95% CI", "verdict": "verdict"}  # fmt: skip


# -- formatting helpers (markdown only; CSV and JSON keep raw numbers) ----------------------------
def _num(value, digits: int = 0, unit: str = "") -> str:
    if value is None:
        return NA
    return f"{value:,.{digits}f}{unit}"


def _pct(value) -> str:
    return NA if value is None else f"{value:+.1f}%"


def _ci(low, high) -> str:
    return NA if low is None or high is None else f"[{low:+.1f}, {high:+.1f}]%"


def _paths(gemm_paths: dict) -> str:
    return " ".join(f"{path}={count}" for path, count in sorted(gemm_paths.items())) or "-"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")


def _table(records: list[dict], columns: dict[str, str], left: tuple[str, ...] = ("model", "arm")) -> str:
    """A markdown table of `records` (cells already text); `columns` maps record key -> header.

    Numbers are right-aligned so their digits line up; the `left` columns are names.
    """
    frame = pd.DataFrame([{header: record[key] for key, header in columns.items()} for record in records])
    if frame.empty:
        return "(no rows)"
    align = ["left" if key in left else "right" for key in columns]
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


# -- A/B records ----------------------------------------------------------------------------------
def arm_record(arm: ArmResult) -> dict:
    """The raw per-arm numbers, keys without the arm prefix."""
    summary = arm.summary()
    throttle = arm.throttle_reasons
    return {
        "spec": arm.label,
        "chunk_size": arm.chunk_size,
        "n": 0 if summary is None else summary.n,
        "tok_s": None if summary is None else summary.median_tok_s,
        "min_tok_s": None if summary is None else summary.min_tok_s,
        "max_tok_s": None if summary is None else summary.max_tok_s,
        "spread_pct": None if summary is None else summary.spread_pct,
        "cold_ms": None if arm.cold is None else arm.cold.wall_ms,
        "warm_ms": arm.warm_ms,
        "sm_mhz_min": arm.sm_mhz_min,
        "sm_mhz_median": arm.sm_mhz_median,
        "temp_c_max": arm.temp_c_max,
        "power_w_median": arm.power_w_median,
        "throttle": None if throttle is None else (",".join(throttle) or "none"),
        "flagged": arm.flagged_count,
        "capture": arm.capture.label(),
        "gemm_paths": _paths(arm.gemm_paths),
        "host_us_per_launch": arm.host_us_per_launch,
    }


def _comparison_record(comparison: Comparison | None) -> dict:
    if comparison is None:
        return dict.fromkeys(("delta_pct", "ci_low_pct", "ci_high_pct", "noise_pct", "verdict", "reason"))
    return {
        "delta_pct": comparison.delta_pct,
        "ci_low_pct": comparison.ci_low_pct,
        "ci_high_pct": comparison.ci_high_pct,
        "noise_pct": comparison.noise_pct,
        "verdict": comparison.verdict,
        "reason": comparison.reason,
    }


def _row_comparison(row: ABRow) -> Comparison | None:
    return row.comparison() if row.a.reps and row.b.reps else None


def ab_records(result: ABResult) -> list[dict]:
    """One flat record per (model, pp) row: the answer, then every arm column prefixed a_ / b_."""
    records = []
    for row in result.rows:
        record = {"model": row.model, "pp": row.pp, **_comparison_record(_row_comparison(row))}
        record.update(
            flagged=row.flagged_count, reps=row.rep_count, verdict_without_flagged=row.verdict_without_flagged()
        )
        for prefix, arm in (("a", row.a), ("b", row.b)):
            record.update({f"{prefix}_{key}": value for key, value in arm_record(arm).items()})
        records.append(record)
    return records


def _flagged_cell(record: dict) -> str:
    text = f"{record['flagged']}/{record['reps']}"
    without = record["verdict_without_flagged"]
    if without is None:
        return text
    return f"{text}, verdict holds" if without == record["verdict"] else f"{text}, {without} without them"


def _metadata_line(metadata: dict) -> str:
    keys = ("impbench_version", "git_commit", "gpu_name", "gpu_driver", "cuda_driver_version", "cupy_version",
            "cpu_model", "cpu_count_usable", "time_utc")  # fmt: skip
    m = {**dict.fromkeys(keys, NA), **metadata}
    dirty = " (dirty)" if m.get("git_dirty") is True else ""
    return (
        f"impbench {m['impbench_version']} @ {str(m['git_commit'])[:12]}{dirty} · GPU {m['gpu_name']}, "
        f"driver {m['gpu_driver']}, CUDA {m['cuda_driver_version']} · CuPy {m['cupy_version']} · "
        f"CPU {m['cpu_model']} ({m['cpu_count_usable']} usable cores) · {m['time_utc']}"
    )


def _why_cells(record: dict, arm: str) -> dict:
    """One arm's line of the per-arm table, from the flat record's `arm`_ columns."""
    v = {key[len(arm) + 1 :]: value for key, value in record.items() if key.startswith(f"{arm}_")}
    return {
        "model": record["model"],
        "pp": str(record["pp"]),
        "arm": f"{arm.upper()} {v['spec']}",
        "chunk": NA if v["chunk_size"] is None else str(v["chunk_size"]),
        "cold": f"{_num(v['cold_ms'], 1)} / {_num(v['warm_ms'], 1)}",
        "spread": _num(v["spread_pct"], 1, "%"),
        "sm": f"{_num(v['sm_mhz_min'])} / {_num(v['sm_mhz_median'])}",
        "temp": _num(v["temp_c_max"]),
        "power": _num(v["power_w_median"]),
        "throttle": v["throttle"] or NA,
        "capture": v["capture"],
        "gemm": v["gemm_paths"],
        "host": _num(v["host_us_per_launch"], 2),
    }


def ab_markdown(result: ABResult) -> str:
    records = ab_records(result)
    legend_a = ", ".join(dict.fromkeys(r["a_spec"] for r in records)) or NA
    legend_b = ", ".join(dict.fromkeys(r["b_spec"] for r in records)) or NA
    settings = result.settings
    answer = [
        {
            "model": r["model"],
            "pp": str(r["pp"]),
            "a": _num(r["a_tok_s"]),
            "b": _num(r["b_tok_s"]),
            "delta": _pct(r["delta_pct"]),
            "ci": _ci(r["ci_low_pct"], r["ci_high_pct"]),
            "noise": _num(r["noise_pct"], 1, "%"),
            "verdict": r["verdict"] or NA,
            "flagged": _flagged_cell(r),
        }
        for r in records
    ]
    why = [_why_cells(r, arm) for r in records for arm in ("a", "b")]
    lines = [
        _metadata_line(result.metadata),
        f"A = {legend_a}; B = {legend_b}; {settings.get('reps', NA)} reps per arm interleaved A B B A, "
        f"{settings.get('warmup', NA)} warm-up; Δ = B over A (medians), 95% bootstrap CI; "
        f"SAME = CI contains 0 or |Δ| under the noise (larger arm IQR).",
        "",
        _table(answer, ANSWER_COLUMNS, left=("model", "verdict", "flagged")),
        "",
        _table(why, WHY_COLUMNS, left=("model", "arm", "throttle", "capture", "gemm")),
    ]
    return "\n".join(lines)


def _csv(records: list[dict]) -> str:
    return pd.DataFrame(records).to_csv(index=False)


def _json(payload) -> str:
    return json.dumps(payload, indent=1, allow_nan=False)


def format_ab(result: ABResult, fmt: str = "md") -> str:
    """The A/B table as markdown, CSV or JSON records."""
    _check_format(fmt)
    if fmt == "md":
        return ab_markdown(result)
    records = ab_records(result)
    return _csv(records) if fmt == "csv" else _json(records)


# -- the --out writer -----------------------------------------------------------------------------
def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temp file in path's directory, then rename it over path (never half a file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def csv_path_for(path: Path) -> Path:
    return path.with_suffix(".csv") if path.suffix == ".json" else path.with_name(path.name + ".csv")


def write_result(result: ABResult, path: str | Path) -> tuple[Path, Path]:
    """PATH: the full result as JSON (metadata, every rep, every reading); beside it the CSV table."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"--out {path} is a directory; give a file name such as {path / 'ab.json'}")
    csv_path = csv_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, result.to_json())
        atomic_write_text(csv_path, format_ab(result, "csv"))
    except OSError as exc:
        raise InputError(f"--out {path}: cannot write: {exc.strerror or exc}") from None
    return path, csv_path


# -- compare two results --------------------------------------------------------------------------
@dataclass
class CompareRow:
    """One arm of one (model, pp) in OLD and/or NEW; a row on one side only keeps None on the other."""

    model: str
    pp: int
    arm: str  # "A" or "B"
    spec: str  # the arm's label: arms with different settings are never matched
    old: ArmResult | None
    new: ArmResult | None

    def comparison(self) -> Comparison | None:
        """NEW against OLD. Unpaired: the two runs' reps have no order in common."""
        if self.old is None or self.new is None or not self.old.reps or not self.new.reps:
            return None
        return compare_arms(self.old.tok_s, self.new.tok_s, paired=False)


def _arms_by_key(result: ABResult) -> dict[tuple, ArmResult]:
    arms: dict[tuple, ArmResult] = {}
    for row in result.rows:
        for arm in (row.a, row.b):
            arms[(row.model, row.pp, arm.name, arm.label)] = arm
    return arms


def compare_results(old: ABResult, new: ABResult) -> list[CompareRow]:
    """Match arms by (model, pp, arm, spec); OLD's order first, then what only NEW has."""
    old_arms, new_arms = _arms_by_key(old), _arms_by_key(new)
    keys = list(old_arms) + [key for key in new_arms if key not in old_arms]
    return [CompareRow(*key, old_arms.get(key), new_arms.get(key)) for key in keys]


def compare_notes(old: ABResult, new: ABResult) -> list[str]:
    """One line per machine fact that differs: eager numbers move with the host (DESIGN.md, Facts)."""
    notes = []
    for key in MACHINE_KEYS:
        before, after = old.metadata.get(key, NA), new.metadata.get(key, NA)
        if before != after:
            notes.append(f"note: {key} differs (OLD {before!r}, NEW {after!r}): the two runs are not like for like")
    return notes


def compare_records(rows: list[CompareRow]) -> list[dict]:
    records = []
    for row in rows:
        old_summary = None if row.old is None else row.old.summary()
        new_summary = None if row.new is None else row.new.summary()
        note = "only in OLD" if row.new is None else "only in NEW" if row.old is None else ""
        records.append(
            {
                "model": row.model,
                "pp": row.pp,
                "arm": row.arm,
                "spec": row.spec,
                "old_n": 0 if old_summary is None else old_summary.n,
                "new_n": 0 if new_summary is None else new_summary.n,
                "old_tok_s": None if old_summary is None else old_summary.median_tok_s,
                "new_tok_s": None if new_summary is None else new_summary.median_tok_s,
                **_comparison_record(row.comparison()),
                "note": note,
            }
        )
    return records


def format_compare(old: ABResult, new: ABResult, fmt: str = "md") -> str:
    """NEW against OLD per arm: markdown (with notes), CSV (table only) or JSON {notes, rows}."""
    _check_format(fmt)
    records = compare_records(compare_results(old, new))
    notes = compare_notes(old, new)
    if fmt == "csv":
        return _csv(records)
    if fmt == "json":
        return _json({"notes": notes, "rows": records})
    table = [
        {
            "model": r["model"],
            "pp": str(r["pp"]),
            "arm": f"{r['arm']} {r['spec']}",
            "old": _num(r["old_tok_s"]),
            "new": _num(r["new_tok_s"]),
            "delta": _pct(r["delta_pct"]),
            "ci": _ci(r["ci_low_pct"], r["ci_high_pct"]),
            "verdict": r["verdict"] or r["note"] or NA,
        }
        for r in records
    ]
    lines = [
        f"OLD: {_metadata_line(old.metadata)}",
        f"NEW: {_metadata_line(new.metadata)}",
        "Δ = NEW over OLD (medians), 95% bootstrap CI, unpaired; SAME = CI contains 0 or |Δ| under the noise.",
        "",
        _table(table, COMPARE_COLUMNS, left=("model", "arm", "verdict")),
    ]
    if notes:
        lines += [""] + notes
    return "\n".join(lines)
