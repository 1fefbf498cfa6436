"""`impbench sweep --ray` on a local Ray cluster with declared fake GPUs and the measurement replaced by a
fake (tests/fakes_ray.py): one GPU per row and never two rows on one GPU, rows once per GPU kind and
grouped by it, retries, failed rows kept, resume; and the one-line errors."""

import json
import os
from pathlib import Path

import pytest
from cli_util import run_cli

ray = pytest.importorskip("ray")

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet")
    path = os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=4, num_gpus=2, resources={"accelerator_type:H100": 2, "accelerator_type:H200": 2},
             include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": path, "IMPBENCH_FAKE_FLEET": str(folder)}})  # fmt: skip
    yield folder
    ray.shutdown()


@pytest.fixture
def fake_task(monkeypatch, cluster):
    from fakes_ray import fake_row

    from impbench import fleet

    monkeypatch.setattr(fleet, "ROW_TASK", fake_row)
    for name in os.listdir(cluster):
        os.remove(cluster / name)
    return cluster


def _sweep(capsys, out, *extra):
    return run_cli(capsys, "sweep", "--model", "tiny", "--pp", "64,96", "--arm", "mode=eager", "--arm", "mode=graph",
                   "--reps", "3", "--ray", "--out", str(out), *extra)  # fmt: skip


def _log(folder):
    return [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]


def test_rows_run_once_per_gpu_kind_on_their_own_gpu_and_group_by_kind(capsys, fake_task, tmp_path):
    code, out, err = _sweep(capsys, tmp_path / "s.json", "--gpu-kinds", "h100,h200")
    assert code == 0, err
    from impbench.results import load_result

    result = load_result(tmp_path / "s.json")
    assert sorted((r.model, r.pp, r.gpu_kind) for r in result.rows) == [
        ("tiny-moe", 64, "h100"), ("tiny-moe", 64, "h200"), ("tiny-moe", 96, "h100"), ("tiny-moe", 96, "h200")]  # fmt: skip
    assert all(r.machine["host"] and r.machine["gpu_name"] == f"fake {r.gpu_kind}" for r in result.rows)
    assert result.settings["gpu_kinds"] == ["h100", "h200"]
    assert out.index("[h100 on") < out.index("[h200 on")  # the table groups rows by GPU kind
    log = _log(fake_task)
    assert all(len(entry["gpus"]) == 1 for entry in log)  # one whole GPU per row
    for a in log:  # and never two rows on one GPU at once
        for b in log:
            if a is not b and a["gpus"] == b["gpus"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], (a, b)


def test_a_failing_row_is_retried_then_kept_as_failed_and_a_rerun_resumes(capsys, fake_task, tmp_path):
    (fake_task / "fail_once").write_text("tiny-moe-64-None\n")
    (fake_task / "fail_always").write_text("tiny-moe-96-None\n")
    out = tmp_path / "s.json"
    code, text, err = _sweep(capsys, out, "--max-retries", "1")
    assert code == 0, err
    from impbench.results import load_result

    rows = {r.pp: r for r in load_result(out).rows}
    assert not rows[64].failed and (fake_task / "tiny-moe-64-None.attempts").read_text() == "2"
    assert rows[96].failed.startswith("failed after 2 attempt(s)") and "out of memory" in rows[96].failed
    assert "FAILED tiny-moe pp=96" in text
    (fake_task / "fail_always").write_text("")
    code, _, err = _sweep(capsys, out, "--max-retries", "1")
    assert code == 0 and "1 row(s) submitted, 1 already measured" in err
    assert not any(r.failed for r in load_result(out).rows)
    assert (fake_task / "tiny-moe-64-None.attempts").read_text() == "2"  # the measured row was not run again


def test_ray_errors_are_one_line(capsys, monkeypatch, tmp_path):
    code, _, err = run_cli(capsys, "sweep", "--model", "tiny", "--gpu-kinds", "h100")
    assert code == 2 and "--gpu-kinds places rows on a Ray cluster: give --ray too" in err
    code, _, err = run_cli(capsys, "sweep", "--model", "tiny", "--ray", "--gpu-kinds", "h300")
    assert code == 2 and "--gpu-kinds takes comma-separated GPU kinds" in err
    import builtins

    real = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, err = run_cli(capsys, "sweep", "--model", "tiny", "--pp", "64", "--ray")
    assert code == 2 and "pip install 'impbench[ray]'" in err and err.count("\n") == 1


def test_an_unreachable_cluster_is_one_line_quickly():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "impbench", "sweep", "--model", "tiny", "--pp", "64", "--ray", "127.0.0.1:9"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no Ray cluster answers there" in done.stderr


def test_results_of_several_clusters_merge_and_a_row_in_two_is_refused(capsys, tmp_path):
    from fakes import make_result, make_row
    from test_report import _save

    from impbench.results import load_result

    a = make_result([make_row(pp=512)], command="sweep")
    b = make_result([make_row(pp=1024)], command="sweep")
    a.rows[0].gpu_kind, b.rows[0].gpu_kind = "h100", "h200"
    _save(a, tmp_path / "a.json"), _save(b, tmp_path / "b.json")
    code, _, err = run_cli(capsys, "merge", str(tmp_path / "m.json"), str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert code == 0, err
    merged = load_result(tmp_path / "m.json")
    assert [(r.pp, r.gpu_kind) for r in merged.rows] == [(512, "h100"), (1024, "h200")]
    assert merged.metadata["merged_from"] == [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    code, _, err = run_cli(capsys, "merge", str(tmp_path / "m2.json"), str(tmp_path / "a.json"), str(tmp_path / "a.json"))
    assert code == 2 and "is also in" in err


def test_results_of_other_code_do_not_merge(capsys, tmp_path):
    from fakes import METADATA, make_result, make_row
    from test_report import _save

    code_a = {**METADATA, "kernels_digest": "aaaa", "impbench_env": "none"}
    a = make_result([make_row(pp=512)], command="sweep", metadata=code_a)
    for other, said in (({"kernels_digest": "bbbb"}, "kernel sources 'bbbb'"),
                        ({"git_commit": "fedcba9876543210"}, "commit 'fedcba9876543210'"),
                        ({"impbench_env": "IMPBENCH_PDL=off"}, "IMPBENCH_* settings 'IMPBENCH_PDL=off'")):  # fmt: skip
        b = make_result([make_row(pp=1024)], command="sweep", metadata={**code_a, **other})
        _save(a, tmp_path / "a.json"), _save(b, tmp_path / "b.json")
        code, _, err = run_cli(capsys, "merge", str(tmp_path / "m.json"), str(tmp_path / "a.json"), str(tmp_path / "b.json"))
        assert code == 2 and said in err and err.count("\n") == 1, err
    # the same code set up apart: its own kernel folder path and commit label on each machine
    b = make_result([make_row(pp=1024)], command="sweep",
                    metadata={**code_a, "impbench_env": "IMPBENCH_GIT_COMMIT=0123456789abcdef; IMPBENCH_KERNELS_DIR=/x"})
    _save(b, tmp_path / "b.json")
    code, _, err = run_cli(capsys, "merge", str(tmp_path / "m.json"), str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--force")
    assert code == 0, err
    # a file from before the metadata recorded the kernels (no key) still merges
    older = make_result([make_row(pp=1024)], command="sweep")
    _save(older, tmp_path / "old.json")
    code, _, err = run_cli(capsys, "merge", str(tmp_path / "m.json"), str(tmp_path / "a.json"), str(tmp_path / "old.json"), "--force")
    assert code == 0, err
