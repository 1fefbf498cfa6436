"""`impbench plot` and `--plot`: the figure of a result, and one line where matplotlib is missing."""

import builtins

import pytest
from cli_util import run_cli
from fakes import FakeGpu, make_result, make_row
from test_report import _save

from impbench.arms import ArmSpec
from impbench.results import Profile, Row

pytest.importorskip("matplotlib")


def test_plot_of_a_result_with_profile_and_flagged_reps(tmp_path, capsys):
    rows = [make_row(pp=512, sm_mhz=[1980] * 9 + [1500]), make_row(pp=1024, sm_mhz=[1980] * 10)]
    rows.append(Row("tiny-moe", 96, [rows[0].arms[0]], profile=Profile({"moe_gate_up": [10.0], "embed": [1.0]},
                                                                        {"moe_gate_up": 8.0})))  # fmt: skip
    result = _save(make_result(rows), tmp_path / "r.json")
    for name in ("r.png", "r.svg"):
        code, _, err = run_cli(capsys, "plot", str(result), "-o", str(tmp_path / name))
        assert code == 0 and (tmp_path / name).stat().st_size > 10_000, err
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG" and b"<svg" in (tmp_path / "r.svg").read_bytes()[:500]


@pytest.mark.parametrize("name,needle", [("r.jpg", "a plot is written as .png or .svg"), ("none/x/../", "a plot is written")])
def test_a_bad_plot_path_is_exit_2(tmp_path, capsys, name, needle):
    result = _save(make_result(), tmp_path / "r.json")
    code, _, err = run_cli(capsys, "plot", str(result), "-o", str(tmp_path / name))
    assert code == 2 and needle in err and err.count("\n") == 1


def test_without_matplotlib_plot_is_one_line(tmp_path, capsys, monkeypatch):
    real = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = _save(make_result(), tmp_path / "r.json")
    code, _, err = run_cli(capsys, "plot", str(result), "-o", str(tmp_path / "r.png"))
    assert code == 2 and "pip install 'impbench[plot]'" in err
    fake = FakeGpu(monkeypatch)
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3", "--out", str(tmp_path / "a.json"),
                           "--plot")  # fmt: skip
    assert code == 2 and "pip install 'impbench[plot]'" in err and not fake.rows_measured


def test_ab_plot_writes_the_figure_beside_out(tmp_path, capsys, monkeypatch):
    FakeGpu(monkeypatch)
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64,96", "--reps", "3", "--out", str(tmp_path / "a.json"),
                           "--plot")  # fmt: skip
    assert code == 0 and (tmp_path / "a.png").stat().st_size > 10_000, err
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3", "--plot")
    assert code == 2 and "--plot writes beside --out" in err


def test_single_arm_rows_plot_too(tmp_path, capsys):
    from fakes import make_arm

    row = Row("m", 64, [make_arm("A", [100.0, 101.0, 99.0], spec=ArmSpec())])
    result = _save(make_result([row], command="run"), tmp_path / "r.json")
    code, _, _ = run_cli(capsys, "plot", str(result), "-o", str(tmp_path / "r.png"))
    assert code == 0
