"""report: markdown / CSV / JSON printers, the atomic --out writer, and `impbench compare`."""

import io
import json
import os

import pandas as pd
import pytest
from test_results import GRAPH, METADATA, make_arm, make_result, make_row

from impbench.cli import main
from impbench.errors import InputError
from impbench.report import ab_records, compare_results, format_ab, format_compare, write_result
from impbench.results import ABResult, CaptureInfo, load_result


def test_markdown_has_the_seed_table_and_the_why_table():
    text = format_ab(make_result(), "md")
    assert "| Model" in text and "A tok/s" in text and "B tok/s" in text and "Δ" in text
    assert "95% CI" in text and "FASTER" in text and "flagged reps" in text
    assert "cold / warm ms" in text and "SM MHz min / med" in text and "GEMM paths" in text
    assert "| qwen3-coder |  512 |    10,045 |" in text  # A's median tok/s, right-aligned
    assert "captured (700 kernels)" in text and "mma=96 mma_small_n=48" in text and "cublas=144" in text
    assert "1,980 / 1,980" in text  # clocks where telemetry exists
    assert "n/a / n/a" in text  # and n/a where it does not
    assert "GPU NVIDIA H100 80GB HBM3" in text and "@ 0123456789ab" in text
    assert "A = eager/cublas; B = graph/tight" in text


def test_flagged_cell_says_whether_the_verdict_holds():
    row = make_row(sm_mhz=[1980] * 9 + [1500])
    assert row.flagged_count == 2
    text = format_ab(make_result([row]), "md")
    assert "2/20, verdict holds" in text


def test_csv_and_json_are_the_same_records():
    result = make_result()
    records = ab_records(result)
    frame = pd.read_csv(io.StringIO(format_ab(result, "csv")))
    assert list(frame.columns) == list(records[0])
    assert frame["verdict"].tolist() == ["FASTER", "FASTER"]
    assert frame["b_capture"].tolist() == ["captured (700 kernels)"] * 2
    assert json.loads(format_ab(result, "json")) == json.loads(json.dumps(records))
    assert records[0]["a_sm_mhz_min"] is None and records[1]["a_sm_mhz_min"] == 1980


def test_fell_back_capture_is_shown_with_op_and_error():
    row = make_row()
    row.b.capture = CaptureInfo("fell back", op="qkv_proj", error="NotImplementedError: cuBLAS under capture")
    assert "fell back at qkv_proj: NotImplementedError: cuBLAS under capture" in format_ab(make_result([row]), "md")


def test_unknown_format():
    with pytest.raises(InputError):
        format_ab(make_result(), "html")


def test_write_result_writes_json_and_csv_atomically(tmp_path):
    result = make_result()
    json_path, csv_path = write_result(result, tmp_path / "new" / "ab.json")
    assert csv_path == tmp_path / "new" / "ab.csv"
    assert load_result(json_path) == result
    assert pd.read_csv(csv_path).shape[0] == 2
    assert sorted(os.listdir(tmp_path / "new")) == ["ab.csv", "ab.json"]  # no temp file left


def test_failed_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "ab.json"
    write_result(make_result(), path)
    before = path.read_text()

    def boom(self):
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(ABResult, "to_json", boom)
    with pytest.raises(RuntimeError):
        write_result(make_result(), path)
    assert path.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["ab.csv", "ab.json"]


def test_write_result_to_a_directory_is_an_input_error(tmp_path):
    with pytest.raises(InputError):
        write_result(make_result(), tmp_path)


def _two_results():
    old = make_result([make_row(pp=512), make_row(pp=1024)])
    shifted = make_row(pp=512, a=[10_000.0 + 10 * i for i in range(10)], b=[11_550.0 + 10 * i for i in range(10)])
    other_b = make_row(pp=2048)
    other_b.b = make_arm("B", [11_000.0] * 10, spec={**GRAPH, "guard": "permissive"})
    new = make_result([shifted, other_b], metadata={**METADATA, "cpu_model": "AMD EPYC", "git_commit": "fedcba"})
    return old, new


def test_compare_matches_by_model_pp_arm_and_spec_and_lists_one_sided_rows():
    old, new = _two_results()
    rows = compare_results(old, new)
    keys = [(r.pp, r.arm, r.spec, r.old is not None, r.new is not None) for r in rows]
    assert keys == [
        (512, "A", "eager/cublas", True, True),
        (512, "B", "graph/tight", True, True),
        (1024, "A", "eager/cublas", True, False),
        (1024, "B", "graph/tight", True, False),
        (2048, "A", "eager/cublas", False, True),
        (2048, "B", "graph/permissive", False, True),
    ]
    assert rows[0].comparison().verdict == "SAME"
    assert rows[1].comparison().verdict == "FASTER" and rows[1].comparison().delta_pct == pytest.approx(5.0, abs=0.1)
    assert rows[2].comparison() is None


def test_compare_formats():
    old, new = _two_results()
    md = format_compare(old, new, "md")
    assert "OLD tok/s" in md and "NEW tok/s" in md and "only in OLD" in md and "only in NEW" in md
    assert "+5.0%" in md and "note: cpu_model differs" in md
    data = json.loads(format_compare(old, new, "json"))
    assert len(data["rows"]) == 6 and data["notes"][0].startswith("note: cpu_model")
    frame = pd.read_csv(io.StringIO(format_compare(old, new, "csv")))
    assert frame["note"].fillna("").tolist() == ["", "", "only in OLD", "only in OLD", "only in NEW", "only in NEW"]


def test_compare_command(tmp_path, capsys):
    old, new = _two_results()
    old_path, _ = write_result(old, tmp_path / "old.json")
    new_path, _ = write_result(new, tmp_path / "new.json")
    main(["compare", str(old_path), str(new_path)])
    out = capsys.readouterr().out
    assert "FASTER" in out and "only in NEW" in out
    main(["compare", str(old_path), str(new_path), "--format", "csv"])
    captured = capsys.readouterr()
    assert captured.out.startswith("model,pp,arm") and "cpu_model differs" in captured.err


@pytest.mark.parametrize("content", [None, "garbage", '{"format": "impbench.ab", "schema_version": 1, "rows": [{}]}'])
def test_compare_command_bad_input_exits_2_with_one_line(tmp_path, capsys, content):
    good, _ = write_result(make_result(), tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(SystemExit) as info:
        main(["compare", str(good), str(bad)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("impbench: error:") and err.count("\n") == 1


def test_compare_command_bad_format_exits_2(tmp_path, capsys):
    good, _ = write_result(make_result(), tmp_path / "good.json")
    with pytest.raises(SystemExit) as info:
        main(["compare", str(good), str(good), "--format", "html"])
    assert info.value.code == 2


def test_git_commit_from_environment_wins(monkeypatch):
    from impbench import metadata

    monkeypatch.setenv(metadata.GIT_COMMIT_ENV, "0123456789abcdef")
    assert metadata.git_info() == {"git_commit": "0123456789abcdef", "git_dirty": "n/a"}
