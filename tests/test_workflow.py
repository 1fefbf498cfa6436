"""The example GitHub workflow for a self-hosted GPU runner installs the project as the README says,
sweeps the base and the head commit, gates the head on the base, writes the job summary and uploads
the result files; every impbench command in it is a command and option set the CLI accepts."""

import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "gpu-bench.yml"


def _steps():
    data = yaml.safe_load(WORKFLOW.read_text())
    (job,) = data["jobs"].values()
    assert "self-hosted" in job["runs-on"] and "gpu" in job["runs-on"]
    return job["steps"]


def _commands():
    return [line.strip() for step in _steps() for line in str(step.get("run", "")).splitlines() if line.strip()]


def test_the_workflow_sweeps_base_and_head_and_gates_the_head():
    commands = _commands()
    installs = [c for c in commands if "pip install -e" in c]
    assert len(installs) == 2  # the README's install, once per commit
    sweeps = [c for c in commands if " sweep " in f" {c} "]
    assert any("base.json" in c for c in sweeps) and any("head.json" in c and "--summary" in c for c in sweeps)
    (gate,) = [c for c in commands if " compare " in f" {c} "]
    assert "base.json" in gate and "head.json" in gate and "--fail-on slower" in gate and "--summary" in gate
    uploads = [s for s in _steps() if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["if"] == "always()" and uploads[0]["with"]["path"] == "results-ci/"


def test_every_impbench_command_of_the_workflow_parses(capsys):
    from impbench.cli import cli

    for command in _commands():
        words = shlex.split(command)
        if not words[0].endswith("impbench"):
            continue
        context = cli.make_context("impbench", words[1:2], resilient_parsing=True)
        sub = cli.get_command(context, words[1])
        assert sub is not None, command
        sub.make_context(words[1], words[2:], resilient_parsing=False)  # raises on an unknown option or value
