"""`impbench run` and `impbench ab`: bad input is exit 2 and one line before any GPU work; on the GPU
a tiny A/B finishes, writes a valid result (rewritten after every row) and compares with itself."""

import json

import pytest

from cli_util import run_cli
from impbench.device import cuda_available


@pytest.mark.parametrize("args,needle", [
    (["run", "--model", "gemma-4", "--pp", "512"], "use `impbench plan` for the others"),
    (["run", "--model", "qwen3.6", "--pp", "512"], "sliding-window or linear-attention"),
    (["run", "--model", "tiny", "--pp", "0"], "--pp must be a positive"),
    (["run", "--model", "tiny", "--pp", "64", "--chunk", "24"], "multiple of 16"),
    (["run", "--model", "tiny", "--pp", "64", "--reps", "0"], "--reps must be >= 1"),
    (["run", "--model", "tiny", "--pp", "64", "--mode", "lazy"], "'lazy' is not one of"),
    (["run", "--model", "tiny", "--pp", "64", "--layers", "3"], "--layers must be between 1 and 2"),
    (["ab", "--model", "nope"], "unknown model 'nope'"),
    (["ab", "--model", "tiny", "--pp", "512,x"], "--pp takes comma-separated whole numbers"),
    (["ab", "--model", "tiny", "--pp", "0"], "--pp values must be > 0"),
    (["ab", "--model", "tiny", "--reps", "1"], "--reps must be >= 2"),
    (["ab", "--model", "tiny", "--warmup", "-1"], "--warmup must be >= 0"),
    (["ab", "--model", "tiny", "--tolerance", "0"], "--tolerance must be > 0"),
    (["ab", "--model", "tiny", "--a", "mode=graph,speed=9"], "unknown arm spec key 'speed'"),
    (["ab", "--model", "tiny", "--b", "guard=loose"], "unknown guard 'loose'"),
    (["ab", "--model", "tiny", "--b", "chunk=33"], "multiple of 16"),
    (["ab", "--model", "tiny,gemma-4"], "gemma-4-26b-a4b has architecture gemma4"),
])  # fmt: skip
def test_bad_input_is_exit_2_and_one_line(capsys, args, needle):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("impbench: error: ") and needle in err


@pytest.mark.skipif(cuda_available(), reason="needs a machine without a usable CUDA device")
@pytest.mark.parametrize("args", [["run", "--model", "tiny", "--pp", "64"], ["ab", "--model", "tiny", "--pp", "64"]])
def test_gpu_command_without_device_is_exit_2_and_says_so(capsys, args):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and not out
    assert err.count("\n") == 1 and "no usable CUDA device" in err


@pytest.mark.gpu
def test_run_tiny_graph_captures_and_no_prewarm_falls_back(capsys):
    args = ["run", "--model", "tiny", "--pp", "96", "--mode", "graph", "--guard", "permissive", "--reps", "2"]
    code, out, _ = run_cli(capsys, *args, "--profile")
    assert code == 0 and "capture: captured" in out and "GEMM paths per prefill" in out
    assert "| moe_gate_up" in out and "plan floor µs" in out
    code, out, _ = run_cli(capsys, *args, "--no-prewarm")
    assert code == 0 and "capture: fell back to eager: allocate " in out
    code, out, _ = run_cli(capsys, "run", "--model", "tiny", "--pp", "96", "--mode", "eager", "--reps", "2", "--format", "json")
    record = json.loads(out)
    assert code == 0 and record["capture"] == "eager" and record["host_us_per_launch"] > 0
    assert record["gemm_paths"] == {"cublas": 3 * 2 * 3 + 1}  # 3 chunks x 2 layers x 3 GEMMs + lm_head


@pytest.mark.gpu
def test_ab_tiny_writes_a_valid_result_and_compares_with_itself(tmp_path, capsys):
    from impbench.results import CAPTURED, EAGER, load_result

    out_path = tmp_path / "ab.json"
    code, out, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64,80", "--reps", "3", "--warmup", "1",
                          "--b", "mode=graph,guard=permissive", "--out", str(out_path))  # fmt: skip
    assert code == 0, err
    assert "| tiny-moe" in out and "rep 6/6 B" in err and "cold" in err
    result = load_result(out_path)
    assert [row.pp for row in result.rows] == [64, 80]
    for row in result.rows:
        assert len(row.a.reps) == len(row.b.reps) == 3
        assert row.a.cold is not None and row.b.cold is not None
        assert row.a.capture.status == EAGER and row.b.capture.status == CAPTURED
        assert row.comparison().verdict in ("FASTER", "SLOWER", "SAME")
    assert result.metadata["command_line"] and result.metadata.get("gpu_name")
    assert out_path.with_suffix(".csv").read_text().startswith("model,")
    code, out, _ = run_cli(capsys, "compare", str(out_path), str(out_path))
    assert code == 0 and "tiny-moe" in out


@pytest.mark.gpu
def test_interrupted_ab_keeps_finished_rows(tmp_path, capsys, monkeypatch):
    import impbench.ab as ab_module
    from impbench.results import load_result

    real, calls = ab_module.measure_row, []

    def measure_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ab_module, "measure_row", measure_then_interrupt)
    out_path = tmp_path / "ab.json"
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64,80", "--reps", "2", "--warmup", "0",
                        "--out", str(out_path))  # fmt: skip
    assert code == 130 and "interrupted" in err
    assert [row.pp for row in load_result(out_path).rows] == [64]
