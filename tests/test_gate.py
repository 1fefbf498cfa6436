"""The CI gate and the GitHub tables: `compare --fail-on` and `ab/sweep --fail-on` exit 1 only on an
interval clear of the threshold, name the failing rows, and `--format gh` / `--summary` write the job
summary."""

import pytest
from cli_util import run_cli
from fakes import FakeGpu, make_result, make_row
from test_report import _paired, _save

from impbench.errors import InputError
from impbench.gate import Gate, Judged
from impbench.stats import compare_arms


def _judged(a, b):
    return [Judged("m", 512, "B graph/small-n", compare_arms(a, b, paired=True))]


def test_the_gate_fails_only_an_interval_clear_of_the_threshold():
    a, b = _paired(10_000.0, 0.97, seed=1)  # B 3% slower, noise 0.4%
    assert Gate("slower").report(_judged(a, b))[0] is False
    assert Gate("slower", 1.0).report(_judged(a, b))[0] is False
    assert Gate("slower", 5.0).report(_judged(a, b))[0] is True  # -3% is not past -5%
    assert Gate("faster").report(_judged(a, b))[0] is True
    assert Gate("change").report(_judged(a, b))[0] is False
    same_a, same_b = _paired(10_000.0, 1.0, seed=2)
    assert Gate("change").report(_judged(same_a, same_b))[0] is True
    passed, lines = Gate("slower", 1.0).report(_judged(a, b))
    assert "gate FAILED (--fail-on slower --threshold 1): 1 of 1" in lines[0] and "m pp=512 B graph/small-n: SLOWER -3." in lines[1]


@pytest.mark.parametrize("kwargs", [{"fail_on": "worse"}, {"fail_on": "slower", "threshold_pct": -1.0},
                                    {"fail_on": "slower", "threshold_pct": float("nan")}])  # fmt: skip
def test_a_bad_gate_is_an_input_error(kwargs):
    with pytest.raises(InputError):
        Gate(**kwargs)


def _runs(tmp_path, ratio_new: float):
    a_old, b_old = _paired(10_000.0, 1.0, seed=3)
    a_new, b_new = _paired(10_000.0, ratio_new, drift=1.01, seed=4)
    old = _save(make_result([make_row(a=a_old, b=b_old)]), tmp_path / "base.json")
    new = _save(make_result([make_row(a=a_new, b=b_new)]), tmp_path / "head.json")
    return str(old), str(new)


def test_compare_gate_exit_codes_and_the_failing_rows(capsys, tmp_path):
    old, new = _runs(tmp_path, 1.0)  # the head equals the base; the machine drifted 1%
    code, out, err = run_cli(capsys, "compare", old, new, "--fail-on", "slower")
    assert code == 0 and "gate passed" in err and "drift" in out
    old, new = _runs(tmp_path, 0.96)
    code, out, err = run_cli(capsys, "compare", old, new, "--fail-on", "slower", "--threshold", "1")
    assert code == 1 and "gate FAILED" in err and "graph/tight: SLOWER -" in err and "| qwen3-coder" in out
    code, _, err = run_cli(capsys, "compare", old, new, "--threshold", "1")
    assert code == 2 and "--threshold needs --fail-on" in err


def test_ab_gate_on_the_arms_of_one_run(capsys, monkeypatch):
    fake = FakeGpu(monkeypatch, seed=5)
    fake.tok_s = lambda model, pp, arm: 20_000.0 * (0.95 if arm.mode == "graph" else 1.0)
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "5", "--fail-on", "slower")
    assert code == 1 and "gate FAILED" in err and "B graph/small-n: SLOWER" in err
    fake = FakeGpu(monkeypatch, seed=6)
    code, _, err = run_cli(capsys, "sweep", "--model", "tiny", "--pp", "64", "--arm", "mode=eager", "--arm", "mode=graph",
                           "--reps", "5", "--fail-on", "slower")  # fmt: skip
    assert code == 0 and "gate passed" in err


def test_github_format_has_a_headline_table_and_folded_details(capsys, monkeypatch, tmp_path):
    fake = FakeGpu(monkeypatch, seed=7)
    fake.tok_s = lambda model, pp, arm: 20_000.0 * (1.05 if arm.mode == "graph" else 1.0)
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, out, _ = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64,96", "--reps", "5", "--format", "gh", "--summary")
    assert code == 0 and out.startswith("### impbench ab: NVIDIA H100 80GB HBM3 @ 0123456789ab")
    assert "A eager/cublas tok/s" in out and "B graph/small-n tok/s" in out and "Δ B vs A" in out and "🟢 FASTER" in out
    assert "<details><summary>Details" in out and "</details>" in out and "SM MHz" in out
    text = summary.read_text()
    assert text.startswith("earlier step\n### impbench ab") and text.count("| tiny-moe |") >= 2


def test_summary_outside_github_actions_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    old, new = _runs(tmp_path, 1.0)
    code, out, err = run_cli(capsys, "compare", old, new, "--format", "gh", "--summary")
    assert code == 0 and "GITHUB_STEP_SUMMARY is not set" in err and out.startswith("### impbench compare")


@pytest.mark.gpu
def test_on_the_gpu_a_planted_delay_fails_the_gate_and_a_copy_of_the_arm_passes(capsys, tmp_path):
    base = ["sweep", "--model", "tiny", "--pp", "96", "--reps", "6", "--warmup", "1", "--arm", "mode=graph,guard=permissive"]
    code, _, err = run_cli(capsys, *base, "--arm", "mode=graph,guard=permissive", "--fail-on", "slower", "--threshold", "1")
    assert code == 0 and "gate passed" in err
    code, _, err = run_cli(capsys, *base, "--arm", "mode=graph,guard=permissive,delay_us=100", "--fail-on", "slower",
                           "--threshold", "1")  # fmt: skip
    assert code == 1 and "gate FAILED" in err and "delay=100us: SLOWER" in err
