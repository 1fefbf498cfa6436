"""report: the markdown / CSV / JSON printers of every result, and `impbench compare` (control arms,
drift apart from change, one-sided rows)."""

import io
import json
import re

import numpy as np
import pandas as pd
import pytest
from cli_util import run_cli
from fakes import METADATA, make_arm, make_result, make_row

from impbench.arms import ArmSpec
from impbench.capture import FELL_BACK, CaptureStatus
from impbench.errors import InputError
from impbench.outfile import ResultFile
from impbench.report import compare_results, format_compare, format_result, result_records
from impbench.results import Profile, Result, Row


def test_markdown_has_the_answer_table_and_the_why_table():
    text = format_result(make_result(), "md")
    assert "| Model" in text and "tok/s" in text and "Δ vs A" in text and "95% CI" in text
    assert "FASTER" in text and "flagged reps" in text and "baseline" in text
    assert "cold / warm ms" in text and "SM MHz min / med" in text and "GEMM paths" in text
    assert "| qwen3-coder |  512 | A eager/cublas |" in text
    assert "captured (700 kernels)" in text and "mma_16x16k8=96 tma_128x128=48" in text and "cublas=144" in text
    assert "1,980 / 1,980" in text  # clocks where telemetry exists
    assert "n/a / n/a" in text  # and n/a where it does not
    assert "GPU NVIDIA H100 80GB HBM3" in text and "@ 0123456789ab" in text
    assert "A = eager/cublas, B = graph/tight" in text and "(A B B A)" in text


def test_flagged_cell_says_whether_the_verdict_holds():
    row = make_row(sm_mhz=[1980] * 9 + [1500])
    assert sum(arm.flagged_count for arm in row.arms) == 2
    assert "1, verdict holds" in format_result(make_result([row]), "md")


def test_csv_and_json_are_the_same_records_one_per_row_and_arm():
    result = make_result()
    records = result_records(result)
    frame = pd.read_csv(io.StringIO(format_result(result, "csv")))
    assert list(frame.columns) == list(records[0]) and len(frame) == 4
    assert frame["verdict"].fillna("").tolist() == ["", "FASTER", "", "FASTER"]
    assert frame["capture"].tolist() == ["eager", "captured (700 kernels)"] * 2
    assert json.loads(format_result(result, "json")) == json.loads(json.dumps(records))
    assert records[0]["sm_mhz_min"] is None and records[2]["sm_mhz_min"] == 1980


def test_a_single_arm_run_shows_its_plan_floor_and_profile():
    row = Row("tiny-moe", 96, [make_arm("A", [40_000.0, 41_000.0, 40_500.0])], floor_tok_s=81_000.0, floor_gpu="h100",
              profile=Profile({"moe_gate_up": [10.0, 12.0], "embed": [1.0]}, {"moe_gate_up": 11.0}))
    text = format_result(Result("run", [row], dict(METADATA), {"reps": 3, "warmup": 1, "arms": [ArmSpec().to_dict()]}), "md")
    assert "50% of 81,000" in text and "one arm" in text
    assert "| moe_gate_up |" in text and "plan floor µs" in text and "2.00" in text


def test_a_rate_above_the_plan_floor_is_called_a_measurement_error():
    row = Row("tiny-moe", 96, [make_arm("A", [90_000.0, 91_000.0, 90_500.0])], floor_tok_s=81_000.0, floor_gpu="h100",
              profile=Profile({"moe_gate_up": [5.0, 5.5]}, {"moe_gate_up": 11.0}))
    result = Result("run", [row], dict(METADATA), {"reps": 3, "warmup": 1, "arms": [ArmSpec().to_dict()]})
    text = format_result(result, "md")
    assert text.count("faster than the plan floor: a measurement error") == 2
    assert result_records(result)[0]["faster_than_floor"] is True


def test_fell_back_capture_is_shown_with_op_and_error():
    row = make_row()
    row.arms[1].capture = CaptureStatus(FELL_BACK, op="qkv_proj", error="NotImplementedError: cuBLAS under capture")
    assert "fell back to eager at qkv_proj: NotImplementedError: cuBLAS under capture" in format_result(make_result([row]))


def test_unknown_format():
    with pytest.raises(InputError):
        format_result(make_result(), "html")


def _paired(base: float, ratio: float, drift: float = 1.0, n: int = 10, noise: float = 0.004, seed: int = 0):
    """A and B reps of one run: B = ratio x A; the whole run scaled by `drift` (a faster machine)."""
    rng = np.random.default_rng(seed)
    a = base * drift * (1 + noise * rng.standard_normal(n))
    b = a * ratio * (1 + noise * rng.standard_normal(n))
    return [float(x) for x in a], [float(x) for x in b]


def test_compare_reads_change_through_the_control_arm_and_drift_apart():
    a_old, b_old = _paired(10_000.0, 1.10, seed=1)
    a_new, b_new = _paired(10_000.0, 1.10 * 1.05, drift=1.02, seed=2)  # B 5% faster; the whole machine 2% faster
    old, new = make_result([make_row(a=a_old, b=b_old)]), make_result([make_row(a=a_new, b=b_new)])
    rows = compare_results(old, new)
    assert [(r.spec, r.how) for r in rows] == [("eager/cublas", "control"), ("graph/tight", "through control")]
    b = rows[1].comparison()
    assert b.verdict == "FASTER" and b.delta_pct == pytest.approx(5.0, abs=1.0)
    text = format_compare(old, new, "md")
    assert re.search(r"drift \+[12]\.\d%", text) and "through control" in text and "machine or run drift" in text


def test_an_a_a_pair_of_runs_says_same_even_when_the_machine_drifted():
    a_old, b_old = _paired(10_000.0, 1.0, seed=3)
    a_new, b_new = _paired(10_000.0, 1.0, drift=1.006, seed=4)
    rows = compare_results(make_result([make_row(a=a_old, b=b_old)]), make_result([make_row(a=a_new, b=b_new)]))
    assert rows[1].comparison().verdict == "SAME"
    assert "FASTER" not in format_compare(make_result([make_row(a=a_old, b=b_old)]),
                                          make_result([make_row(a=a_new, b=b_new)]))  # fmt: skip


def test_compare_lists_one_sided_arms_and_machine_differences():
    old = make_result([make_row(pp=512), make_row(pp=1024)])
    other = make_row(pp=2048, b_spec=ArmSpec("graph", "permissive"))
    new = make_result([make_row(pp=512), other], metadata={**METADATA, "cpu_model": "AMD EPYC"})
    rows = compare_results(old, new)
    keys = [(r.pp, r.spec, r.how) for r in rows]
    assert keys == [(512, "eager/cublas", "control"), (512, "graph/tight", "through control"),
                    (1024, "eager/cublas", "only in OLD"), (1024, "graph/tight", "only in OLD"),
                    (2048, "eager/cublas", "only in NEW"), (2048, "graph/permissive", "only in NEW")]  # fmt: skip
    md = format_compare(old, new, "md")
    assert "note: cpu_model differs" in md and "only in NEW" in md
    data = json.loads(format_compare(old, new, "json"))
    assert len(data["rows"]) == 6
    frame = pd.read_csv(io.StringIO(format_compare(old, new, "csv")))
    assert frame["how"].tolist()[2:] == ["only in OLD"] * 2 + ["only in NEW"] * 2


def test_compare_says_whether_the_kernel_sources_and_settings_changed():
    code = {"kernels_digest": "aaaa", "kernels_dir": "installed", "impbench_env": "none"}
    same = format_compare(make_result(metadata={**METADATA, **code}), make_result(metadata={**METADATA, **code}))
    assert "both runs compiled the same kernel sources (aaaa)" in same and "settings differ" not in same
    other = {**code, "kernels_digest": "bbbb", "impbench_env": "IMPBENCH_PDL=off"}
    changed = format_compare(make_result(metadata={**METADATA, **code}), make_result(metadata={**METADATA, **other}))
    assert "the kernel sources differ (OLD aaaa, NEW bbbb)" in changed
    assert "the IMPBENCH_* settings differ (OLD 'none', NEW 'IMPBENCH_PDL=off')" in changed
    relabelled = {**code, "impbench_env": "IMPBENCH_GIT_COMMIT=abc; IMPBENCH_KERNELS_DIR=/elsewhere"}
    assert "settings differ" not in format_compare(make_result(metadata={**METADATA, **code}),
                                                   make_result(metadata={**METADATA, **relabelled}))  # fmt: skip
    # results written before the metadata carried these keys: nothing said either way
    older = format_compare(make_result(), make_result(metadata={**METADATA, **code}))
    assert "kernel sources" not in older and "settings differ" not in older


def test_two_single_arm_runs_compare_unpaired_and_say_so():
    old = make_result([Row("m", 64, [make_arm("A", [100.0, 101.0, 99.0])])], command="run")
    new = make_result([Row("m", 64, [make_arm("A", [110.0, 111.0, 109.0])])], command="run")
    rows = compare_results(old, new)
    assert rows[0].how == "unpaired" and rows[0].comparison().verdict == "FASTER"
    assert "has no control arm" in format_compare(old, new)


def _save(result, path):
    ResultFile(path).write(result, format_result(result, "csv"))
    return path


def test_compare_command_reads_every_command_s_results(tmp_path, capsys):
    old = _save(make_result(), tmp_path / "old.json")
    new = _save(make_result(command="sweep"), tmp_path / "new.json")
    code, out, _ = run_cli(capsys, "compare", str(old), str(new))
    assert code == 0 and "through control" in out
    code, out, err = run_cli(capsys, "compare", str(old), str(new), "--format", "csv")
    assert code == 0 and out.startswith("model,pp,spec") and "note:" in err


@pytest.mark.parametrize("content", [None, "garbage", '{"format": "impbench.ab", "schema_version": 1, "rows": [{}]}',
                                     b"\xff\xfe\x00binary", '{"format": "impbench.result", "schema_version": 2, "command": "ab",'
                                     ' "rows": [{"model": "m", "pp": 1, "arms": [{"name": "A", "spec": {"mode": "turbo"}}]}]}'])
def test_compare_command_bad_input_exits_2_with_one_line(tmp_path, capsys, content):
    good = _save(make_result(), tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif content is not None:
        bad.write_text(content)
    code, out, err = run_cli(capsys, "compare", str(good), str(bad))
    assert code == 2 and not out and err.startswith("impbench: error:") and err.count("\n") == 1


def test_compare_command_bad_format_exits_2(tmp_path, capsys):
    good = _save(make_result(), tmp_path / "good.json")
    code, _, err = run_cli(capsys, "compare", str(good), str(good), "--format", "html")
    assert code == 2 and "'html' is not one of" in err
