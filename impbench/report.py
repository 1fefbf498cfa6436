"""Views of results: markdown / CSV / JSON printers over one list of records, and `compare`.

Every printer starts from records (plain dicts of raw numbers, None where unknown), one per (row,
arm): CSV and JSON print them as they are, markdown formats a subset for people (llama-bench's
markdown_printer / csv_printer / json_printer split). The same printers serve `run`, `ab` and
`sweep`: a row's first arm is its baseline, and every other arm is compared with it. A second
table says *why*: cold vs warm time, clocks, throttling, capture status, GEMM paths, host time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pandas as pd

from impbench.errors import InputError
from impbench.metadata import run_settings, source_note
from impbench.results import ArmResult, Result, Row
from impbench.stats import CONFIDENCE, SAME, Comparison, compare_arms

FORMATS = ("md", "csv", "json", "gh")  # gh: GitHub-flavoured markdown for a job summary or a PR comment
MARKS = {"FASTER": "🟢 FASTER", "SLOWER": "🔴 SLOWER", "SAME": "⚪ SAME"}
# A time under the floor built on the GPU's peak rates cannot happen: the timing is wrong, not fast.
BELOW_FLOOR = "faster than the plan floor: a measurement error"
NA = "n/a"
# Metadata that, when it differs between two results, changes what their numbers mean.
MACHINE_KEYS = ("gpu_name", "gpu_driver", "cuda_driver_version", "cpu_model", "cpu_count_usable",
                "cupy_version", "python_version")  # fmt: skip

ANSWER_COLUMNS = {"model": "Model", "pp": "pp", "arm": "arm", "reps": "reps", "tok_s": "tok/s", "spread": "spread",
                  "delta": "Δ vs A", "ci": "95% CI", "verdict": "verdict", "flagged": "flagged reps",
                  "floor": "of plan floor"}  # fmt: skip
WHY_COLUMNS = {"model": "Model", "pp": "pp", "arm": "arm", "chunk": "chunk", "cold": "cold / warm ms",
               "sm": "SM MHz min / med", "temp": "max °C", "power": "W (med)", "throttle": "throttle",
               "discarded": "reps measured again",
               "capture": "capture", "gemm": "GEMM paths (per prefill)", "host": "host µs/launch"}  # fmt: skip
PROFILE_COLUMNS = {"op": "op", "calls": "calls", "device": "device µs", "share": "share", "floor": "plan floor µs",
                   "x_floor": "x floor"}  # fmt: skip
COMPARE_COLUMNS = {"model": "Model", "pp": "pp", "arm": "arm", "old": "OLD tok/s", "new": "NEW tok/s",
                   "delta": "Δ", "ci": "95% CI", "verdict": "verdict", "how": "how"}  # fmt: skip


# -- formatting helpers (markdown only; CSV and JSON keep raw numbers) ----------------------------
def num(value, digits: int = 0, unit: str = "") -> str:
    return NA if value is None else f"{value:,.{digits}f}{unit}"


def pct(value) -> str:
    return NA if value is None else f"{value:+.1f}%"


def interval(low, high) -> str:
    return NA if low is None or high is None else f"[{low:+.1f}, {high:+.1f}]%"


def _paths(gemm_paths: dict) -> str:
    return " ".join(f"{path}={count}" for path, count in sorted(gemm_paths.items())) or "-"


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}")


def markdown_table(records: list[dict], columns: dict[str, str], left: tuple[str, ...] = ("model", "arm")) -> str:
    """A markdown table of `records` (cells already text); `columns` maps record key -> header.
    Numbers are right-aligned so their digits line up; the `left` columns are names."""
    frame = pd.DataFrame([{header: record[key] for key, header in columns.items()} for record in records])
    if frame.empty:
        return "(no rows)"
    align = ["left" if key in left else "right" for key in columns]
    return frame.to_markdown(index=False, disable_numparse=True, colalign=align)


def metadata_line(metadata: dict) -> str:
    keys = ("impbench_version", "git_commit", "gpu_name", "gpu_driver", "cuda_driver_version", "cupy_version",
            "cpu_model", "cpu_count_usable", "time_utc")  # fmt: skip
    m = {**dict.fromkeys(keys, NA), **metadata}
    dirty = " (dirty)" if m.get("git_dirty") is True else ""
    return (
        f"impbench {m['impbench_version']} @ {str(m['git_commit'])[:12]}{dirty}{source_note(m)} · GPU {m['gpu_name']}, "
        f"driver {m['gpu_driver']}, CUDA {m['cuda_driver_version']} · CuPy {m['cupy_version']} · "
        f"CPU {m['cpu_model']} ({m['cpu_count_usable']} usable cores) · {m['time_utc']}"
    )


def _csv(records: list[dict]) -> str:
    return pd.DataFrame(records).to_csv(index=False)


def _json(payload) -> str:
    return json.dumps(payload, indent=1, allow_nan=False)


# -- records of a result ----------------------------------------------------------------------------
def _comparison_fields(comparison: Comparison | None) -> dict:
    if comparison is None:
        return dict.fromkeys(("delta_pct", "ci_low_pct", "ci_high_pct", "noise_pct", "verdict", "reason"))
    return {"delta_pct": comparison.delta_pct, "ci_low_pct": comparison.ci_low_pct, "ci_high_pct": comparison.ci_high_pct,
            "noise_pct": comparison.noise_pct, "verdict": comparison.verdict, "reason": comparison.reason}  # fmt: skip


def arm_record(row: Row, arm: ArmResult) -> dict:
    """Everything measured and derived about one arm of one row, raw numbers."""
    summary = arm.summary()
    throttle = arm.throttle_reasons
    tok_s = None if summary is None else summary.median_tok_s
    machine = row.machine or {}
    return {
        "model": row.model, "pp": row.pp, "arm": arm.name, "spec": arm.label,
        "gpu_kind": row.gpu_kind, "host": machine.get("host"), "gpu": machine.get("gpu_name"), "chunk_size": arm.chunk_size,
        "n": 0 if summary is None else summary.n, "stopped_by": row.stopped_by, "tok_s": tok_s,
        "min_tok_s": None if summary is None else summary.min_tok_s,
        "max_tok_s": None if summary is None else summary.max_tok_s,
        "spread_pct": None if summary is None else summary.spread_pct,
        **_comparison_fields(row.comparison(arm)),
        "verdict_without_flagged": row.verdict_without_flagged(arm),
        "flagged": arm.flagged_count,
        "floor_tok_s": row.floor_tok_s, "floor_gpu": row.floor_gpu,
        "of_floor_pct": None if not (row.floor_tok_s and tok_s) else 100.0 * tok_s / row.floor_tok_s,
        "faster_than_floor": bool(row.floor_tok_s and tok_s and tok_s > row.floor_tok_s),
        "reps_faster_than_floor": sum(rep.tok_s > row.floor_tok_s for rep in arm.reps) if row.floor_tok_s else 0,
        "cold_ms": None if arm.cold is None else arm.cold.wall_ms, "warm_ms": arm.warm_ms,
        "sm_mhz_min": arm.sm_mhz_min, "sm_mhz_median": arm.sm_mhz_median, "temp_c_max": arm.temp_c_max,
        "power_w_median": arm.power_w_median, "throttle": None if throttle is None else (",".join(throttle) or "none"),
        "discarded": len(arm.discarded),
        "discarded_why": "; ".join(sorted({rep.flag_reason.split(" (")[0] for rep in arm.discarded if rep.flag_reason})),
        "capture": arm.capture.label(), "gemm_paths": _paths(arm.gemm_paths),
        "host_us_per_launch": arm.host_us_per_launch,
    }  # fmt: skip


def result_records(result: Result) -> list[dict]:
    """One record per measured row and arm, rows grouped by GPU kind (a fleet sweep's) then in order."""
    rows = sorted(result.measured_rows, key=lambda row: row.gpu_kind or "")
    return [arm_record(row, arm) for row in rows for arm in row.arms]


def _flagged_cell(record: dict) -> str:
    text = str(record["flagged"])
    without = record["verdict_without_flagged"]
    if without is None:
        return text
    return f"{text}, verdict holds" if without == record["verdict"] else f"{text}, {without} without them"


def _model_cell(r: dict) -> str:
    """The row's model, and on a fleet sweep the GPU kind and host that measured it."""
    if not r.get("gpu_kind") and not r.get("host"):
        return r["model"]
    return f"{r['model']} [{r.get('gpu_kind') or r.get('gpu')} on {r.get('host')}]"


def _answer_cells(r: dict) -> dict:
    baseline = r["verdict"] is None and r["delta_pct"] is None
    return {
        "model": _model_cell(r), "pp": str(r["pp"]), "arm": f"{r['arm']} {r['spec']}", "tok_s": num(r["tok_s"]),
        "reps": str(r["n"]) + ("" if r["stopped_by"] in (None, "reps") else f" ({r['stopped_by']})"),
        "spread": num(r["spread_pct"], 1, "%"), "delta": "baseline" if baseline else pct(r["delta_pct"]),
        "ci": "" if baseline else interval(r["ci_low_pct"], r["ci_high_pct"]), "verdict": r["verdict"] or "",
        "flagged": _flagged_cell(r),
        "floor": NA if r["of_floor_pct"] is None else f"{r['of_floor_pct']:.0f}% of {num(r['floor_tok_s'])}"
        + (f" ({BELOW_FLOOR})" if r["faster_than_floor"] else f" ({r['reps_faster_than_floor']} reps {BELOW_FLOOR})"
           if r["reps_faster_than_floor"] else ""),
    }  # fmt: skip


def _why_cells(r: dict) -> dict:
    return {
        "model": _model_cell(r), "pp": str(r["pp"]), "arm": f"{r['arm']} {r['spec']}",
        "chunk": NA if r["chunk_size"] is None else str(r["chunk_size"] or "one"),
        "cold": f"{num(r['cold_ms'], 1)} / {num(r['warm_ms'], 1)}",
        "sm": f"{num(r['sm_mhz_min'])} / {num(r['sm_mhz_median'])}", "temp": num(r["temp_c_max"]),
        "power": num(r["power_w_median"]), "throttle": r["throttle"] or NA, "capture": r["capture"],
        "discarded": f"{r['discarded']}: {r['discarded_why']}" if r["discarded"] else "0",
        "gemm": r["gemm_paths"], "host": num(r["host_us_per_launch"], 2),
    }  # fmt: skip


def _profile_markdown(row: Row) -> list[str]:
    records = row.profile.records()
    cells = [{"op": r["op"], "calls": str(r["calls"]), "device": num(r["device_us"]), "share": num(r["share_pct"], 1, "%"),
              "floor": num(r["floor_us"]),
              "x_floor": num(r["x_floor"], 2) + (f" ({BELOW_FLOOR})" if r["below_floor"] else "")}
             for r in records]  # fmt: skip
    total = sum(r["device_us"] for r in records)
    return ["", f"{row.model} pp={row.pp}: device time per op, one eager prefill with CUDA events around each launch "
            f"({total:,.0f} µs):", "", markdown_table(cells, PROFILE_COLUMNS, left=("op",))]  # fmt: skip


def result_markdown(result: Result) -> str:
    records = result_records(result)
    settings = result.settings
    arms = ", ".join(f"{chr(ord('A') + i)} = {spec.label()}" for i, spec in enumerate(result.arm_specs)) or NA
    order = "A B B A" if len(result.arm_specs) == 2 else "A B C C B A" if len(result.arm_specs) > 2 else "one arm"
    lines = [
        metadata_line(result.metadata),
        f"{arms}; {settings.get('reps', NA)} reps per arm ({order}), {settings.get('warmup', NA)} warm-up; "
        f"Δ = arm over A (medians), {CONFIDENCE:.0%} bootstrap CI; SAME = CI contains 0 or |Δ| under the noise "
        f"(larger arm IQR).",
        "",
        markdown_table([_answer_cells(r) for r in records], ANSWER_COLUMNS, left=("model", "arm", "verdict", "flagged")),
        "",
        markdown_table([_why_cells(r) for r in records], WHY_COLUMNS,
                       left=("model", "arm", "throttle", "discarded", "capture", "gemm")),  # fmt: skip
    ]
    for row in result.measured_rows:
        if row.profile is not None:
            lines += _profile_markdown(row)
    failed = [row for row in result.rows if row.failed]
    if failed:
        lines += [""] + [f"FAILED {row.model} pp={row.pp}{' on ' + row.gpu_kind if row.gpu_kind else ''}: {row.failed}"
                         for row in failed]  # fmt: skip
    return "\n".join(lines)


def _marked(verdict: str | None) -> str:
    return MARKS.get(verdict or "", verdict or "")


def result_github(result: Result) -> str:
    """One headline table (a row per model and pp, each arm's tok/s, each arm's Δ over A with its
    interval and verdict), then the details folded: why-table, clocks, machine, commit."""
    records = result_records(result)
    specs = result.arm_specs
    headline = []
    for row in sorted(result.measured_rows, key=lambda row: row.gpu_kind or ""):
        by_arm = {r["arm"]: r for r in records if (r["model"], r["pp"], r["gpu_kind"]) == row.key}
        cells = {"Model": _model_cell(next(iter(by_arm.values()))), "pp": str(row.pp)}
        for arm in row.arms:
            cells[f"{arm.name} {arm.label} tok/s"] = num(by_arm[arm.name]["tok_s"])
        for arm in row.arms[1:]:
            r = by_arm[arm.name]
            cells[f"Δ {arm.name} vs A"] = f"{pct(r['delta_pct'])} {interval(r['ci_low_pct'], r['ci_high_pct'])}"
            cells[f"{arm.name} verdict"] = _marked(r["verdict"])
        headline.append(cells)
    table = pd.DataFrame(headline).to_markdown(index=False, disable_numparse=True) if headline else "(no rows)"
    legend = ", ".join(f"{chr(ord('A') + i)} = {spec.label()}" for i, spec in enumerate(specs))
    return "\n".join([
        f"### impbench {result.command}: {result.metadata.get('gpu_name', NA)} @ {str(result.metadata.get('git_commit', NA))[:12]}",
        "", table, "",
        f"{legend}; {result.settings.get('reps', NA)} reps per arm interleaved; Δ over A (medians) with its "
        f"{CONFIDENCE:.0%} bootstrap interval; SAME = interval contains 0 or |Δ| under the noise.",
        "", "<details><summary>Details: cold and warm time, clocks, throttling, capture, GEMM paths, machine</summary>",
        "", markdown_table([_why_cells(r) for r in records], WHY_COLUMNS, left=("model", "arm", "throttle", "capture", "gemm")),
        "", f"Machine: {metadata_line(result.metadata)}", "", "</details>", "",
    ])  # fmt: skip


def format_result(result: Result, fmt: str = "md") -> str:
    """A result of run / ab / sweep as markdown, GitHub markdown, CSV or JSON records (one per row and arm)."""
    check_format(fmt)
    if fmt == "md":
        return result_markdown(result)
    if fmt == "gh":
        return result_github(result)
    records = result_records(result)
    return _csv(records) if fmt == "csv" else _json(records)


# -- compare two results --------------------------------------------------------------------------
CONTROL, THROUGH_CONTROL, UNPAIRED = "control", "through control", "unpaired"


@dataclass
class CompareRow:
    """One arm of one (model, pp) in OLD and/or NEW; an arm on one side only keeps None on the other.

    `control` is the arm of the same spec that both runs measured beside it (the row's first arm
    common to both), or None. With a control, the arm's change is read from its tok/s ratio to its own
    run's control (THROUGH_CONTROL): a machine or run that is 1% faster moves both arms and leaves the
    ratio. The control itself (CONTROL) shows that drift; it says nothing about code."""

    model: str
    pp: int
    spec: str  # the arm's label: arms with different settings are never matched
    old: ArmResult | None
    new: ArmResult | None
    old_control: ArmResult | None = None
    new_control: ArmResult | None = None

    @property
    def how(self) -> str:
        if self.old is None or self.new is None:
            return "only in " + ("NEW" if self.old is None else "OLD")
        if self.old_control is None:
            return UNPAIRED
        return CONTROL if self.old_control is self.old else THROUGH_CONTROL

    def comparison(self) -> Comparison | None:
        """NEW against OLD: of tok/s ratios to the control where there is one, else of tok/s."""
        if self.old is None or self.new is None or not self.old.reps or not self.new.reps:
            return None
        if self.how == THROUGH_CONTROL:
            return compare_arms(_ratios(self.old, self.old_control), _ratios(self.new, self.new_control), paired=False)
        return compare_arms(self.old.tok_s, self.new.tok_s, paired=False)


def _ratios(arm: ArmResult, control: ArmResult) -> list[float]:
    """The arm's tok/s over its control's: rep by rep where the reps ran in pairs, else over the median."""
    if len(arm.reps) == len(control.reps):
        return [a / c for a, c in zip(arm.tok_s, control.tok_s)]
    base = control.summary().median_tok_s
    return [a / base for a in arm.tok_s]


def compare_results(old: Result, new: Result) -> list[CompareRow]:
    """Match arms by (model, pp, spec); OLD's order first, then what only NEW has."""
    old_rows = {row.key: row for row in old.measured_rows}
    new_rows = {row.key: row for row in new.measured_rows}
    out: list[CompareRow] = []
    for key in list(old_rows) + [key for key in new_rows if key not in old_rows]:
        o, n = old_rows.get(key), new_rows.get(key)
        o_arms = {arm.label: arm for arm in (o.arms if o else [])}
        n_arms = {arm.label: arm for arm in (n.arms if n else [])}
        common = [label for label in o_arms if label in n_arms]
        control = common[0] if len(common) > 1 or (common and len(o_arms) > 1) else None
        for label in list(o_arms) + [label for label in n_arms if label not in o_arms]:
            row = CompareRow(key[0], key[1], label, o_arms.get(label), n_arms.get(label))
            if control is not None and row.old is not None and row.new is not None:
                row.old_control, row.new_control = o_arms[control], n_arms[control]
            out.append(row)
    return out


def _drift_word(comparison: Comparison) -> str:
    if comparison.verdict == SAME:
        return "steady"
    return f"drift {comparison.delta_pct:+.1f}%"


def compare_records(rows: list[CompareRow]) -> list[dict]:
    records = []
    for row in rows:
        old_summary = None if row.old is None else row.old.summary()
        new_summary = None if row.new is None else row.new.summary()
        comparison = row.comparison()
        fields = _comparison_fields(comparison)
        if row.how == CONTROL and comparison is not None:
            fields["verdict"] = _drift_word(comparison)  # a control's change is the machine's or the run's
        records.append({
            "model": row.model, "pp": row.pp, "spec": row.spec, "how": row.how,
            "control": None if row.old_control is None else row.old_control.label,
            "old_n": 0 if old_summary is None else old_summary.n, "new_n": 0 if new_summary is None else new_summary.n,
            "old_tok_s": None if old_summary is None else old_summary.median_tok_s,
            "new_tok_s": None if new_summary is None else new_summary.median_tok_s,
            **fields,
        })  # fmt: skip
    return records


def compare_notes(old: Result, new: Result, rows: list[CompareRow]) -> list[str]:
    """How the verdicts were reached, and one line per machine fact that differs."""
    notes = []
    hows = {row.how for row in rows}
    if THROUGH_CONTROL in hows:
        notes.append("note: an arm marked 'through control' is judged by its tok/s ratio to the control arm measured "
                     "beside it in the same run (rep by rep), NEW over OLD; the control's own change, marked 'control', "
                     "is machine or run drift (or a change that slows every arm alike), never a verdict on the code.")  # fmt: skip
    if UNPAIRED in hows:
        notes.append("note: an arm marked 'unpaired' has no control arm measured beside it in both runs: its Δ compares "
                     "two runs, and whatever drifted between them (clocks, host, other load) is inside it.")  # fmt: skip
    for key in MACHINE_KEYS:
        before, after = old.metadata.get(key, NA), new.metadata.get(key, NA)
        if before != after:
            notes.append(f"note: {key} differs (OLD {before!r}, NEW {after!r}): the two runs are not like for like")
    return notes + code_notes(old.metadata, new.metadata)


def code_notes(old: dict, new: dict) -> list[str]:
    """What the two runs compiled and how they were set (results written before metadata carried this say
    nothing): the same kernel sources mean a change shows from host code, settings or the machine."""
    notes = []
    before, after = old.get("kernels_digest"), new.get("kernels_digest")
    if before and after:
        notes.append(f"note: both runs compiled the same kernel sources ({after}): a difference comes from host code, "
                     "settings or the machine" if before == after
                     else f"note: the kernel sources differ (OLD {before}, NEW {after})")  # fmt: skip
    before, after = run_settings(old), run_settings(new)
    if before and after and before != after:
        notes.append(f"note: the IMPBENCH_* settings differ (OLD {before!r}, NEW {after!r})")
    return notes


def format_compare(old: Result, new: Result, fmt: str = "md", rows: list[CompareRow] | None = None) -> str:
    """NEW against OLD per arm (`rows`: compare_results(old, new), where the caller has them already):
    markdown (with notes), CSV (table only) or JSON {notes, rows}."""
    check_format(fmt)
    rows = compare_results(old, new) if rows is None else rows
    records = compare_records(rows)
    notes = compare_notes(old, new, rows)
    if fmt == "csv":
        return _csv(records)
    if fmt == "json":
        return _json({"notes": notes, "rows": records})
    table = [{"model": r["model"], "pp": str(r["pp"]), "arm": r["spec"], "old": num(r["old_tok_s"]),
              "new": num(r["new_tok_s"]), "delta": pct(r["delta_pct"]), "ci": interval(r["ci_low_pct"], r["ci_high_pct"]),
              "verdict": (_marked(r["verdict"]) if fmt == "gh" else r["verdict"]) or NA, "how": r["how"]}
             for r in records]  # fmt: skip
    if fmt == "gh":
        return "\n".join([
            f"### impbench compare: {new.metadata.get('gpu_name', NA)}, {str(old.metadata.get('git_commit', NA))[:12]} "
            f"→ {str(new.metadata.get('git_commit', NA))[:12]}", "",
            markdown_table(table, COMPARE_COLUMNS, left=("model", "arm", "verdict", "how")), "",
            "<details><summary>How the verdicts were reached, and the machines</summary>", "",
            *[f"- {note.removeprefix('note: ')}" for note in notes],
            f"- OLD: {metadata_line(old.metadata)}", f"- NEW: {metadata_line(new.metadata)}", "", "</details>", "",
        ])  # fmt: skip
    lines = [
        f"OLD: {metadata_line(old.metadata)}",
        f"NEW: {metadata_line(new.metadata)}",
        f"Δ = NEW over OLD (medians), {CONFIDENCE:.0%} bootstrap CI; SAME = CI contains 0 or |Δ| under the noise.",
        "",
        markdown_table(table, COMPARE_COLUMNS, left=("model", "arm", "verdict", "how")),
    ]
    if notes:
        lines += [""] + notes
    return "\n".join(lines)


# -- what a gate judges ------------------------------------------------------------------------------
def judged_in_result(result: Result) -> list:
    """Every arm after a row's first, against it (the arms of one run)."""
    from impbench.gate import Judged

    return [Judged(row.model, row.pp, f"{arm.name} {arm.label}" + (f" on {row.gpu_kind}" if row.gpu_kind else ""),
                   row.comparison(arm)) for row in result.measured_rows for arm in row.arms[1:]]  # fmt: skip


def judged_in_compare(rows: list[CompareRow]) -> list:
    """Every arm measured in both runs, except a control (its change is drift, not code)."""
    from impbench.gate import Judged

    return [Judged(row.model, row.pp, row.spec, row.comparison()) for row in rows if row.how in (THROUGH_CONTROL, UNPAIRED)]
