"""The kernel benchmarks: the shared report (CPU), the --out rules, and on the GPU each of
`impbench gemm`, `moe` and `ops` end to end on a few small cases."""

import json

import pytest
from cli_util import run_cli
from fakes import FakeGpu

from impbench.bench.report import BenchReport, Column, fixed
from impbench.bench.timing import MAX_SETS, ROTATE_BYTES, set_count


def test_input_sets_together_exceed_the_rotation_bytes():
    assert set_count(4 << 20) * (4 << 20) >= ROTATE_BYTES
    assert set_count(1 << 20) == MAX_SETS  # tiny sets: capped, as many launches per graph as sets
    assert set_count(10 << 30) == 1  # one set larger than the cap
    assert set_count(100 << 20) == 2


def _report():
    rows = [{"op": "rmsnorm", "tokens": 512, "us": 3.14159, "x_floor": 1.2}, {"op": "add", "tokens": 512, "us": 1.0, "x_floor": None}]
    return BenchReport("ops", rows, [Column("op", "op"), Column("us", "µs", fixed(2)), Column("x_floor", "x floor", fixed(2))],
                       ["a summary line"], {"gpu_name": "NVIDIA H200", "git_commit": "abcdef0123456789"})  # fmt: skip


def test_one_report_three_formats_and_an_atomic_writer(tmp_path):
    report = _report()
    md = report.format("md")
    assert "GPU: NVIDIA H200" in md and "| rmsnorm | 3.14 |" in md and "- a summary line" in md and "| -" in md
    assert report.format("csv").startswith("op,tokens,us,x_floor")
    assert json.loads(report.format("json"))["format"] == "impbench.ops"
    written = report.write(tmp_path / "ops.md", "md")
    assert [p.name for p in written] == ["ops.md", "ops.json"] and sorted(p.name for p in tmp_path.iterdir()) == ["ops.json", "ops.md"]
    assert [p.name for p in report.write(tmp_path / "x.md", "json")] == ["x.md"]
    assert json.loads((tmp_path / "x.md").read_text())["format"] == "impbench.ops"


def test_a_bench_out_is_checked_before_any_gpu_work(capsys, monkeypatch, tmp_path):
    FakeGpu(monkeypatch)
    notes = tmp_path / "gemm.md"
    notes.write_text("my notes\n")
    code, _, err = run_cli(capsys, "gemm", "--shape", "512x32x2048", "--out", str(notes))
    assert code == 2 and "not an `impbench gemm` report" in err and notes.read_text() == "my notes\n"
    _report().write(tmp_path / "ops.md", "md")
    code, _, err = run_cli(capsys, "ops", "--out", str(tmp_path / "ops.md"))
    assert code == 2 and "holds an earlier `impbench ops` report; add --force" in err
    code, _, err = run_cli(capsys, "moe", "--model", "tiny", "--out", str(tmp_path))
    assert code == 2 and "is a folder" in err


@pytest.mark.parametrize("args,needle", [(["gemm", "--shape", "512x32"], "bad --shape"), (["gemm", "--m", "0"], "--m"),
                                         (["moe", "--model", "tiny", "--pp", "0"], "--pp must be between"),
                                         (["moe", "--model", "tiny", "--reps", "0"], "--reps must be"),
                                         (["gemm", "--reps", "0"], "--reps must be"),
                                         (["ops", "--out", "t.json"], "gets its JSON beside it, at this very path"),
                                         (["ops", "--pp", "x"], "--pp takes comma-separated")])  # fmt: skip
def test_bad_bench_input_is_exit_2(capsys, monkeypatch, args, needle):
    FakeGpu(monkeypatch)
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and not out and needle in err and err.count("\n") == 1


@pytest.mark.gpu
def test_gemm_bench_times_ours_against_cublas_and_checks_the_output(capsys, tmp_path):
    code, out, err = run_cli(capsys, "gemm", "--shape", "512x32x2048", "--shape", "256x1024x512", "--reps", "5",
                             "--variants", "mma_16x16k8", "--out", str(tmp_path / "g.md"))  # fmt: skip
    assert code == 0, err
    data = json.loads((tmp_path / "g.json").read_text())
    assert len(data["rows"]) == 2 and data["metadata"]["gpu_name"]
    for row in data["rows"]:
        assert row["cublas_us"] > 0 and row["ours_us"] > 0 and row["rel_err"] < 2e-3
    assert "geomean cuBLAS/ours over 2 shapes" in out


@pytest.mark.gpu
def test_moe_bench_on_the_tiny_expert_shapes(capsys):
    code, out, err = run_cli(capsys, "moe", "--model", "qwen3-coder", "--pp", "64", "--reps", "5", "--routing", "skewed",
                             "--format", "json")  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [r["op"] for r in rows] == ["gate_up", "down"]
    assert all(r["us"] > 0 and r["rel_err"] < 2e-3 and r["x_floor"] > 1.0 for r in rows)


@pytest.mark.gpu
def test_ops_bench_times_every_engine_op(capsys):
    code, out, err = run_cli(capsys, "ops", "--model", "tiny", "--pp", "64", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert {r["op"] for r in rows} >= {"embed", "rmsnorm", "qkv_post", "topk_count+permute_counted", "combine_rmsnorm"}
    assert all(r["us"] > 0 and r["hot_us"] > 0 and r["host_prepared_us"] > 0 for r in rows)
