"""The dense NVFP4 GEMM's efficiency refit (impbench.bench.nvfp4_fit): CPU only, on synthetic and committed
`impbench gemm` reports."""

import dataclasses
import json
from pathlib import Path

import pytest

from impbench.bench import nvfp4_fit
from impbench.errors import InputError
from impbench.kernels import nvfp4_gemm

RESULTS = Path(__file__).resolve().parents[1] / "results"
SHAPES = [(m, n, k) for n, k in ((5120, 2048), (2048, 4096)) for m in (64, 256, 512, 1024, 2048)]


def _report(path, times_of, extra=None):
    """An impbench gemm JSON report whose NVFP4 rows hold times_of(shape) = {variant: µs} (the pick: the first);
    `extra` {variant: {"us", "rel_err"}} overrides the first row's."""
    rows = []
    for m, n, k in SHAPES:
        times = times_of((m, n, k))
        pick, *others = times
        rows.append({"shape": f"{m}x{n}x{k}", "m": m, "n": n, "k": k, "variant": f"nvfp4 {pick}",
                     "ours_us": times[pick], "rel_err": 3e-4,
                     "variants": {v: {"us": times[v], "rel_err": 3e-4} for v in others} | ((extra or {}) if not rows else {})})  # fmt: skip
    rows.append({"shape": "512x128x2048", "m": 512, "n": 128, "k": 2048, "variant": "tma_128x128", "ours_us": 5.0})
    path.write_text(json.dumps({"format": "impbench.gemm", "schema_version": 2, "rows": rows}))
    return path


def test_fit_recovers_the_efficiencies_the_times_came_from(tmp_path):
    # times from the model itself with other efficiencies: the fit must find them again, and the rule with
    # them pick each shape's fastest; a deleted variant's and a wrong variant's times are left out
    truth = {name: round(v.efficiency * (0.8 + 0.07 * i), 2) for i, (name, v) in enumerate(nvfp4_gemm.VARIANTS.items())}

    def times_of(shape):
        return {name: nvfp4_gemm.modelled_us(dataclasses.replace(v, efficiency=min(truth[name], 0.99)), *shape)
                for name, v in nvfp4_gemm.VARIANTS.items()}  # fmt: skip

    table = dict(nvfp4_gemm.VARIANTS)
    extra = {"w256t128k2": {"us": 1.0, "rel_err": 3e-4}, "w128t64": {"us": 0.5, "rel_err": 0.4}}
    path = _report(tmp_path / "g.json", times_of, extra)
    times = nvfp4_fit.read_times([path])
    assert set(times) == set(SHAPES) and all("w256t128k2" not in t for t in times.values())
    assert "w128t64" not in times[SHAPES[0]] and all("w128t64" in times[s] for s in SHAPES[1:])  # WRONG: dropped
    fitted = nvfp4_fit.fit(times)
    for name, (e, rms, points) in fitted.items():
        assert e == pytest.approx(min(truth[name], 0.99), abs=0.011) and rms < 0.02, name
        assert points == len(SHAPES) - (name == "w128t64"), name
    rows = nvfp4_fit.picks(times, {name: e for name, (e, _, _) in fitted.items()})
    assert all(r["pick"] == r["best"] for r in rows if r["shape"] != SHAPES[0]), rows
    assert nvfp4_gemm.VARIANTS == table  # the table itself is untouched


def test_a_variant_without_times_keeps_its_efficiency(tmp_path):
    only = next(iter(nvfp4_gemm.VARIANTS))
    path = _report(tmp_path / "g.json", lambda shape: {only: nvfp4_gemm.modelled_us(nvfp4_gemm.VARIANTS[only], *shape)})
    fitted = nvfp4_fit.fit(nvfp4_fit.read_times([path]))
    assert fitted[only][2] == len(SHAPES)
    assert all(fitted[n] == (v.efficiency, None, 0) for n, v in nvfp4_gemm.VARIANTS.items() if n != only)
    lines = nvfp4_fit.report([path])
    assert any("(no times)" in line for line in lines) and any("<- not timed" in line for line in lines)


def test_committed_report_fits():
    lines = nvfp4_fit.report([RESULTS / "gemm_qwen3-modelopt_h100.json"])
    assert lines[0].startswith("variant: efficiency in the table -> fitted")
    assert any(line.startswith("  512x5120x2048: ") for line in lines)


@pytest.mark.parametrize("content,needle", [(None, "cannot read"), ("{", "cannot read"), ("[]", "not an impbench gemm"),
                                            ('{"format": "impbench.moe", "rows": []}', "not an impbench gemm"),
                                            ('{"format": "impbench.gemm", "rows": []}', "no NVFP4 GEMM rows")])  # fmt: skip
def test_bad_input_is_exit_2_in_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "r.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=needle):
        nvfp4_fit.read_times([path])
    assert nvfp4_fit.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_help(capsys):
    assert nvfp4_fit.main(["--help"]) == 0 and "python -m impbench.bench.nvfp4_fit" in capsys.readouterr().out
    assert nvfp4_fit.main([]) == 2
