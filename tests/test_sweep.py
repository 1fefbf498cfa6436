"""`impbench sweep`: scenario parsing and bad input on the CPU; on the GPU a tiny grid that resumes."""

import json
from pathlib import Path

import pytest
from cli_util import run_cli

from impbench.errors import InputError
from impbench.sweep import build_plan, load_scenario

CI_SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "sweeps" / "ci.toml"


def test_ci_scenario_builds_a_plan():
    plan = build_plan(load_scenario(CI_SCENARIO), None, None, (), None, None, None, 0, True)
    assert plan.models == ["qwen3-coder", "qwen3-modelopt"] and plan.prompt_lengths == [512, 1024, 2048]
    assert [arm.label() for arm in plan.arms] == ["eager/cublas", "graph/tight", "graph/small-n", "graph/permissive"]


def test_options_override_the_scenario():
    plan = build_plan(load_scenario(CI_SCENARIO), "tiny", "64", ("mode=eager", "mode=graph"), 3, 0, None, 0, True)
    assert plan.models == ["tiny"] and plan.prompt_lengths == [64] and plan.settings.reps == 3 and len(plan.arms) == 2


@pytest.mark.parametrize("kwargs,needle", [
    ({"arm_specs": ("mode=eager",)}, "at least two arms"),
    ({"pp": "0"}, "pp values must be > 0"),
    ({"pp": "x"}, "whole numbers"),
    ({"reps": 1}, "--reps must be >= 2"),
])  # fmt: skip
def test_bad_plans(kwargs, needle):
    args = {"models": None, "pp": None, "arm_specs": (), "reps": None, "warmup": None, "layers": None,
            "seed": 0, "prewarm": True, **kwargs}  # fmt: skip
    with pytest.raises(InputError, match=needle):
        build_plan({}, **args)


def test_bad_scenario_file_is_exit_2_and_one_line(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text('models = ["tiny"]\nspeed = 3\n')
    code, out, err = run_cli(capsys, "sweep", str(path))
    assert code == 2 and not out and err.count("\n") == 1 and "unknown keys ['speed']" in err
    path.write_text("models = [")
    code, _, err = run_cli(capsys, "sweep", str(path))
    assert code == 2 and "not valid TOML" in err


@pytest.mark.gpu
def test_tiny_sweep_writes_rows_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    args = ["sweep", "--model", "tiny", "--pp", "64,96", "--arm", "mode=eager", "--arm", "mode=graph,guard=permissive",
            "--arm", "mode=graph,guard=tight", "--reps", "2", "--warmup", "0", "--out", str(out)]  # fmt: skip
    code, text, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "B graph/permissive" in text and "baseline" in text and "fell back" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["pp"], len(r["arms"])) for r in rows] == [("tiny-moe", 64, 3), ("tiny-moe", 96, 3)]
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "resuming" in err and "building the engine" not in err
