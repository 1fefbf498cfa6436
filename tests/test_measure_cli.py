"""`impbench run`, `ab` and `sweep`: one protocol, one result file. On the CPU, with the measurement of a
row replaced by a fake (tests/fakes.py), every input is checked before any GPU work (exit 2, one
line), --out is never destructive and resumes, an interrupt keeps finished rows; on the GPU, tiny runs."""

import json

import pytest
from cli_util import run_cli
from fakes import FakeGpu, make_result

from impbench.device import cuda_available
from impbench.results import load_result


@pytest.mark.parametrize("args,needle", [
    (["run", "--model", "gemma-4", "--pp", "512", "--layers", "31"], "--layers must be between 1 and 30"),
    (["run", "--model", "tiny", "--pp", "0"], "--pp must be between 1 and"),
    (["run", "--model", "tiny", "--pp", "64", "--chunk", "24"], "multiple of 16"),
    (["run", "--model", "tiny", "--pp", "64", "--reps", "0"], "--reps must be a whole number >= 1"),
    (["run", "--model", "tiny", "--pp", "64", "--mode", "lazy"], "'lazy' is not one of"),
    (["run", "--model", "tiny", "--pp", "64", "--layers", "3"], "--layers must be between 1 and 2"),
    (["run", "--model", "tiny", "--pp", "2000000"], "--pp must be between 1 and 1,048,576"),
    (["ab", "--model", "nope"], "unknown model 'nope'"),
    (["ab", "--model", "tiny", "--pp", "512,x"], "--pp takes comma-separated whole numbers"),
    (["ab", "--model", "tiny", "--pp", "0"], "--pp must be between 1 and"),
    (["ab", "--model", "tiny", "--pp", "٥١٢"], "--pp takes comma-separated whole numbers"),
    (["ab", "--model", "tiny", "--reps", "2"], "--reps must be a whole number >= 3 (a confidence interval and verdict need 3"),
    (["ab", "--model", "tiny", "--warmup", "-1"], "--warmup must be a whole number >= 0"),
    (["ab", "--model", "tiny", "--tolerance", "0"], "--tolerance must be a finite number of percent > 0"),
    (["ab", "--model", "tiny", "--tolerance", "nan"], "--tolerance must be a finite number"),
    (["ab", "--model", "tiny", "--a", "mode=graph,speed=9"], "unknown arm spec key 'speed'"),
    (["ab", "--model", "tiny", "--b", "guard=loose"], "unknown guard 'loose'"),
    (["ab", "--model", "tiny", "--b", "chunk=33"], "multiple of 16"),
    (["ab", "--model", "tiny", "--b", "chunk=-16"], "chunk must be 0 (the whole prompt in one chunk) or a positive multiple"),
    (["ab", "--model", "tiny", "--b", "chunk=²"], "chunk must be a whole number of tokens"),
    (["ab", "--model", "tiny", "--b", "mode=graph,mode=eager"], "names mode twice"),
    (["ab", "--model", "tiny", "--a", "mode=eager,prewarm=maybe"], "unknown prewarm 'maybe' in an arm; accepted: on, off"),
    (["sweep", "--model", "tiny", "--arm", "mode=eager", "--arm", "prewarm=no"], "unknown prewarm 'no' in an arm; accepted: on, off"),
    (["ab", "--model", "tiny", "--b", "mode=graph,overlap=both"], "unknown overlap 'both' in an arm; accepted: on, off"),
    (["run", "--model", "tiny", "--pp", "64", "--overlap", "yes"], "--overlap"),
    (["ab", "--model", "tiny", "--model-config", "x.json"], "give --model or --model-config, not both"),
    (["ab", "--model", "tiny", "--name", "mine"], "--name names a --model-config model"),
    (["sweep", "--model", "tiny", "--arm", "mode=eager"], "at least two arms"),
    (["sweep", "--model", "tiny", "--reps", "1"], "--reps must be a whole number >= 3"),
    (["sweep", "nope"], "no scenario file 'nope'"),
])  # fmt: skip
def test_bad_input_is_exit_2_and_one_line_before_any_gpu_work(capsys, monkeypatch, args, needle):
    fake = FakeGpu(monkeypatch)
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and not out and not fake.rows_measured
    assert err.count("\n") == 1 and err.startswith("impbench: error: ") and needle in err


@pytest.mark.parametrize("name,value,needle", [
    ("IMPBENCH_PDL", "false-ish", "IMPBENCH_PDL='false-ish' is not a switch"),
    ("IMPBENCH_GEMM_VARIANTS", "tma_128x128,tsk_typo", "unknown GEMM variants ['tsk_typo']"),
    ("IMPBENCH_KERNELS_DIR", "", "is not a folder of *.cu kernel sources"),
])  # fmt: skip
def test_bad_environment_is_exit_2_before_any_gpu_work(capsys, monkeypatch, name, value, needle):
    fake = FakeGpu(monkeypatch)
    monkeypatch.setenv(name, value)
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3")
    assert code == 2 and not fake.rows_measured and needle in err and err.count("\n") == 1


def test_an_unknown_impbench_variable_is_named(capsys, monkeypatch):
    FakeGpu(monkeypatch)
    monkeypatch.setenv("IMPBENCH_PLD", "0")
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3")
    assert code == 0 and "IMPBENCH_PLD is not an impbench setting and is ignored" in err


def test_no_arguments_prints_the_help_as_help(capsys):
    code, out, err = run_cli(capsys)
    assert code == 2 and "Commands:" in err and err.count("\n") > 10 and "error" not in err


@pytest.mark.skipif(cuda_available(), reason="needs a machine without a usable CUDA device")
@pytest.mark.parametrize("args", [["run", "--model", "tiny", "--pp", "64"], ["ab", "--model", "tiny", "--pp", "64"]])
def test_gpu_command_without_device_is_exit_2_and_says_so(capsys, args):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and not out
    assert err.count("\n") == 1 and "no usable CUDA device" in err


def test_the_default_b_arm_is_graph_with_the_small_n_guard(capsys, monkeypatch, tmp_path):
    FakeGpu(monkeypatch)
    code, out, _ = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3", "--out", str(tmp_path / "r.json"))
    assert code == 0 and "A = eager/cublas, B = graph/small-n" in out
    assert [arm.label() for arm in load_result(tmp_path / "r.json").arm_specs] == ["eager/cublas", "graph/small-n"]


def test_the_seed_arm_is_a_guard_of_every_arm_command(capsys, monkeypatch, tmp_path):
    """guard=seed (the original engine's capture GEMM on every shape) parses like any guard, in --a/--b,
    --arm and --guard, and is named in the label and the result; a bad guard name lists it."""
    from impbench.arms import ArmSpec, parse_arm
    from impbench.errors import InputError

    arm = parse_arm("mode=graph,guard=seed")
    assert arm == ArmSpec("graph", "seed") and arm.label() == "graph/seed" and ArmSpec.from_dict(arm.to_dict()) == arm
    assert parse_arm("mode=graph", graph_guard="seed") == arm and parse_arm("mode=eager", graph_guard="seed").guard == "cublas"
    with pytest.raises(InputError, match="accepted: cublas, tight, small-n, permissive, seed"):
        parse_arm("guard=seeds")
    FakeGpu(monkeypatch)
    code, out, _ = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3", "--a", "mode=eager",
                           "--b", "mode=graph,guard=seed", "--out", str(tmp_path / "r.json"))  # fmt: skip
    assert code == 0 and "A = eager/cublas, B = graph/seed" in out
    assert [a.label() for a in load_result(tmp_path / "r.json").arm_specs] == ["eager/cublas", "graph/seed"]
    code, out, _ = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3", "--guard", "seed")
    assert code == 0 and "A = eager/cublas, B = graph/seed" in out
    code, out, _ = run_cli(capsys, "sweep", "--model", "tiny", "--pp", "64", "--reps", "3", "--arm", "mode=eager",
                           "--arm", "mode=graph,guard=seed", "--arm", "mode=graph,guard=tight")  # fmt: skip
    assert code == 0 and "graph/seed" in out and "graph/tight" in out
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--b", "guard=loose")
    assert code == 2 and "seed" in err


def _ab(capsys, path, *extra):
    return run_cli(capsys, "ab", "--model", "tiny", "--pp", "64,80,96", "--reps", "3", "--out", str(path), *extra)


def test_ab_resumes_like_sweep_and_never_measures_a_row_twice(capsys, monkeypatch, tmp_path):
    path = tmp_path / "ab.json"
    fake = FakeGpu(monkeypatch, interrupt_after=1)
    code, _, err = _ab(capsys, path)
    assert code == 130 and "interrupted" in err
    assert [row.pp for row in load_result(path).rows] == [64]  # the finished row is on disk
    fake = FakeGpu(monkeypatch)
    code, out, err = _ab(capsys, path)
    assert code == 0 and "resuming" in err and fake.rows_measured == [("tiny-moe", 80), ("tiny-moe", 96)]
    assert [row.pp for row in load_result(path).rows] == [64, 80, 96]
    assert path.with_suffix(".csv").read_text().startswith("model,pp,arm")


def test_out_of_other_settings_is_refused_unless_forced(capsys, monkeypatch, tmp_path):
    path = tmp_path / "ab.json"
    FakeGpu(monkeypatch)
    assert _ab(capsys, path)[0] == 0
    before = path.read_text()
    fake = FakeGpu(monkeypatch)
    code, _, err = _ab(capsys, path, "--b", "mode=graph,guard=tight")
    assert code == 2 and "holds a result of other settings" in err and "--force" in err and not fake.rows_measured
    assert path.read_text() == before
    code, _, _ = _ab(capsys, path, "--b", "mode=graph,guard=tight", "--force")
    assert code == 0 and [a.label() for a in load_result(path).arm_specs] == ["eager/cublas", "graph/tight"]


@pytest.mark.parametrize("content", ["[]", "my notes\n", '{"format": "impbench.result"}', b"\x00\x01\x02"])
def test_out_that_is_not_a_result_is_never_overwritten(capsys, monkeypatch, tmp_path, content):
    path = tmp_path / "notes.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    fake = FakeGpu(monkeypatch)
    for extra in ((), ("--force",)):
        code, _, err = _ab(capsys, path, *extra)
        assert code == 2 and "is not an impbench result" in err and err.count("\n") == 1 and not fake.rows_measured
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())


def test_a_csv_that_is_not_ours_is_never_overwritten(capsys, monkeypatch, tmp_path):
    (tmp_path / "ab.csv").write_text("someone,else\n")
    fake = FakeGpu(monkeypatch)
    code, _, err = _ab(capsys, tmp_path / "ab.json")
    assert code == 2 and "ab.csv is already there" in err and not fake.rows_measured


@pytest.mark.parametrize("where", ["/proc/impbench/x.json", "folder"])
def test_unwritable_out_is_refused_before_any_gpu_work(capsys, monkeypatch, tmp_path, where):
    path = tmp_path if where == "folder" else where
    for command in (["ab", "--model", "tiny", "--pp", "64", "--reps", "3"],
                    ["sweep", "--model", "tiny", "--pp", "64", "--arm", "mode=eager", "--arm", "mode=graph"],
                    ["run", "--model", "tiny", "--pp", "64"]):  # fmt: skip
        fake = FakeGpu(monkeypatch)
        code, _, err = run_cli(capsys, *command, "--out", str(path))
        assert code == 2 and err.count("\n") == 1 and not fake.rows_measured, err
        assert ("is a folder" in err) if where == "folder" else ("cannot write in" in err)


def test_a_full_disk_is_one_line_and_keeps_the_finished_rows(capsys, monkeypatch, tmp_path):
    import errno

    from impbench import outfile

    path = tmp_path / "ab.json"
    FakeGpu(monkeypatch)
    real, calls = outfile.atomic_write_text, []

    def fill_up(target, text):
        calls.append(target)
        if len(calls) > 2:  # the second row's JSON
            raise OSError(errno.ENOSPC, "No space left on device")
        real(target, text)

    monkeypatch.setattr(outfile, "atomic_write_text", fill_up)
    code, _, err = _ab(capsys, path)
    assert code == 2 and "No space left on device" in err and "rows written before are still there" in err
    assert [row.pp for row in load_result(path).rows] == [64]


def test_rows_of_another_gpu_are_not_resumed_into(capsys, monkeypatch, tmp_path):
    from impbench import metadata

    path = tmp_path / "ab.json"
    FakeGpu(monkeypatch)
    assert _ab(capsys, path)[0] == 0
    FakeGpu(monkeypatch)
    monkeypatch.setattr(metadata, "device_metadata", lambda argv=None: {"gpu_name": "NVIDIA H200"})
    code, _, err = _ab(capsys, path)
    assert code == 2 and "measured on 'NVIDIA H100 80GB HBM3', not on this 'NVIDIA H200'" in err


def test_rows_of_other_code_are_not_resumed_into(capsys, monkeypatch, tmp_path):
    from fakes import METADATA

    from impbench import metadata

    path = tmp_path / "ab.json"
    code_a = {**METADATA, "kernels_digest": "aaaa", "impbench_env": "none"}
    FakeGpu(monkeypatch)
    monkeypatch.setattr(metadata, "device_metadata", lambda argv=None: dict(code_a))
    assert _ab(capsys, path)[0] == 0
    FakeGpu(monkeypatch)  # the same code again: resumed (nothing left to measure)
    monkeypatch.setattr(metadata, "device_metadata", lambda argv=None: dict(code_a))
    assert _ab(capsys, path)[0] == 0
    FakeGpu(monkeypatch)  # an edited kernel
    monkeypatch.setattr(metadata, "device_metadata", lambda argv=None: {**code_a, "kernels_digest": "bbbb"})
    code, _, err = _ab(capsys, path)
    assert code == 2 and "holds rows of other code than this run (this run's kernel sources 'bbbb' against 'aaaa'" in err
    assert err.count("\n") == 1 and [row.pp for row in load_result(path).rows] == [64, 80, 96]


def test_sweep_takes_the_scenario_s_seed_and_reps(capsys, monkeypatch, tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('models = ["tiny"]\npp = [64]\narms = ["mode=eager", "mode=graph"]\nreps = 4\nseed = 7\n')
    FakeGpu(monkeypatch)
    code, _, err = run_cli(capsys, "sweep", str(scenario), "--out", str(tmp_path / "s.json"))
    assert code == 0, err
    settings = load_result(tmp_path / "s.json").settings
    assert settings["seed"] == 7 and settings["reps"] == 4


def test_model_config_names_the_model(capsys, monkeypatch, tmp_path):
    from impbench.presets import get_preset, to_hf_config

    snapshot = tmp_path / ("0123456789abcdef" * 2 + "01234567")  # a Hugging Face cache snapshot folder
    snapshot.mkdir()
    config = to_hf_config(get_preset("tiny"))
    del config["_name_or_path"]
    (snapshot / "config.json").write_text(json.dumps(config))
    FakeGpu(monkeypatch)
    code, out, _ = run_cli(capsys, "ab", "--model-config", str(snapshot / "config.json"), "--pp", "64", "--reps", "3")
    assert code == 0 and "qwen3_moe-L2-H256-E8x2" in out
    code, out, _ = run_cli(capsys, "ab", "--model-config", str(snapshot / "config.json"), "--name", "mine", "--pp", "64",
                           "--reps", "3")  # fmt: skip
    assert code == 0 and "| mine " in out


# ---- on the GPU --------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_run_tiny_graph_captures_and_no_prewarm_falls_back(capsys):
    args = ["run", "--model", "tiny", "--pp", "96", "--mode", "graph", "--guard", "permissive", "--reps", "2"]
    code, out, _ = run_cli(capsys, *args, "--profile")
    assert code == 0 and "captured (" in out and "GEMM paths" in out
    assert "| moe_gate_up" in out and "plan floor µs" in out
    code, out, _ = run_cli(capsys, *args, "--no-prewarm")
    assert code == 0 and "fell back to eager at allocate " in out
    code, out, _ = run_cli(capsys, "run", "--model", "tiny", "--pp", "96", "--mode", "eager", "--reps", "2", "--format", "json")
    (record,) = json.loads(out)
    assert code == 0 and record["capture"] == "eager" and record["host_us_per_launch"] > 0
    assert record["gemm_paths"] == "cublas=19"  # 3 chunks x 2 layers x 3 GEMMs + lm_head


@pytest.mark.gpu
def test_ab_tiny_writes_a_valid_result_and_compares_with_itself(tmp_path, capsys):
    from impbench.capture import CAPTURED, EAGER

    out_path = tmp_path / "ab.json"
    code, out, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64,80", "--reps", "3", "--warmup", "1",
                             "--b", "mode=graph,guard=permissive", "--out", str(out_path))  # fmt: skip
    assert code == 0, err
    assert "| tiny-moe" in out and "rep 3/3 B" in err and "cold" in err
    result = load_result(out_path)
    assert [row.pp for row in result.rows] == [64, 80]
    for row in result.rows:
        a, b = row.arms
        assert len(a.reps) == len(b.reps) == 3 and a.cold is not None and b.cold is not None
        assert a.capture.status == EAGER and b.capture.status == CAPTURED
        assert row.comparison(b).verdict in ("FASTER", "SLOWER", "SAME")
    assert result.metadata["command_line"] and result.metadata.get("gpu_name")
    code, out, _ = run_cli(capsys, "compare", str(out_path), str(out_path))
    assert code == 0 and "tiny-moe" in out and "FASTER" not in out and "SLOWER" not in out


@pytest.mark.gpu
def test_tiny_sweep_writes_rows_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    args = ["sweep", "--model", "tiny", "--pp", "64,96", "--arm", "mode=eager", "--arm", "mode=graph,guard=permissive",
            "--arm", "mode=graph,guard=tight", "--reps", "3", "--warmup", "0", "--out", str(out)]  # fmt: skip
    code, text, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "B graph/permissive" in text and "baseline" in text and "fell back" in text
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["pp"], len(r["arms"])) for r in rows] == [("tiny-moe", 64, 3), ("tiny-moe", 96, 3)]
    code, _, err = run_cli(capsys, *args)
    assert code == 0 and "resuming" in err and "building the engine" not in err


def test_fakes_are_results():
    assert make_result().rows


def test_a_planted_delay_is_an_arm_key_and_named_in_the_label(capsys, monkeypatch):
    from impbench.arms import ArmSpec, parse_arm

    arm = parse_arm("mode=graph,delay_us=50")
    assert arm == ArmSpec("graph", "small-n", None, 50.0) and arm.label() == "graph/small-n/delay=50us"
    assert ArmSpec.from_dict(arm.to_dict()) == arm and "delay_us" not in ArmSpec("graph").to_dict()
    for bad in ("delay_us=-5", "delay_us=x", "delay_us=1e9"):
        fake = FakeGpu(monkeypatch)
        code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--b", f"mode=graph,{bad}")
        assert code == 2 and "delay_us must be" in err and not fake.rows_measured


# ---- prewarm as an arm key (CPU, fake engines) -----------------------------------------------------------


def test_a_row_of_mixed_prewarm_builds_two_engines_on_one_set_of_weights_and_frees_both(capsys, monkeypatch, tmp_path):
    """The original A/B replayed: A eager without prewarm, B graph with it. Each row builds A's engine, then
    B's on A's weights; every prefill of an arm runs on its own engine, the prewarm=off engine's first one
    being A's cold run; both engines are gone when the row's memory is freed; the key round-trips."""
    path = tmp_path / "ab.json"
    fake = FakeGpu(monkeypatch)
    args = ["ab", "--model", "tiny", "--pp", "64,80", "--reps", "3", "--a", "mode=eager,prewarm=off", "--out", str(path)]
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    assert "A = eager/cublas/prewarm=off, B = graph/small-n" in out and "| A eager/cublas/prewarm=off" in out
    assert fake.rows_measured == [("tiny-moe", 64), ("tiny-moe", 80)]
    assert [(e.prompt_tokens, e.prewarm, [a.label() for a in e.arms]) for e in fake.engines] == [
        (64, False, ["eager/cublas/prewarm=off"]), (64, True, ["graph/small-n"]),
        (80, False, ["eager/cublas/prewarm=off"]), (80, True, ["graph/small-n"])]  # fmt: skip
    first, second, third, _ = fake.engines
    assert second.weights is first.weights and third.weights is not first.weights  # shared in a row, not across
    assert fake.alive_at_free == [[False, False], [False, False, False, False]]
    for engine, label in zip(fake.engines, ["eager/cublas/prewarm=off", "graph/small-n"] * 2):
        assert engine.prefills == [label] * (1 + 2 + 3)  # cold, --warmup 2, --reps 3: no arm strays onto the other engine
    assert err.count("building a second engine for the prewarm=on arms, on the first's weights") == 2
    assert err.count("A eager/cublas/prewarm=off cold") == 2
    assert err.count("(first prefill on its prewarm=off engine: its buffers are allocated here, on first use)") == 2
    saved = json.loads(path.read_text())
    assert [arm.get("prewarm") for arm in saved["settings"]["arms"]] == ["off", None]
    assert [arm["spec"].get("prewarm") for arm in saved["rows"][0]["arms"]] == ["off", None]
    result = load_result(path)
    assert [a.label() for a in result.arm_specs] == ["eager/cublas/prewarm=off", "graph/small-n"]
    assert [a.label for a in result.rows[1].arms] == ["eager/cublas/prewarm=off", "graph/small-n"]
    fake = FakeGpu(monkeypatch)
    code, _, err = run_cli(capsys, *args)  # same settings, read back from the file: resumes, measures nothing
    assert code == 0 and "resuming" in err and not fake.rows_measured and not fake.engines


@pytest.mark.parametrize("extra,prewarm", [((), True), (("--no-prewarm",), False)])
def test_a_row_whose_arms_do_not_set_prewarm_builds_one_engine_as_before(capsys, monkeypatch, extra, prewarm):
    fake = FakeGpu(monkeypatch)
    code, out, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3", *extra)
    assert code == 0 and "A = eager/cublas, B = graph/small-n" in out and "second engine" not in err
    (engine,) = fake.engines
    assert engine.prewarm is prewarm and [a.label() for a in engine.arms] == ["eager/cublas", "graph/small-n"]
    assert engine.prefills[:2] == ["eager/cublas", "graph/small-n"]  # the cold runs, in arm order
    assert fake.alive_at_free == [[False]]


def test_an_arm_s_prewarm_wins_over_no_prewarm_and_a_shared_engine_says_who_allocated(capsys, monkeypatch):
    """Under --no-prewarm an arm's prewarm=on gets an engine of its own; arms left to the command share the
    prewarm=off one, whose buffers the first arm's cold run allocates (the later arm's cold line says so)."""
    fake = FakeGpu(monkeypatch)
    code, _, err = run_cli(capsys, "sweep", "--model", "tiny", "--pp", "64", "--reps", "3", "--no-prewarm",
                             "--arm", "mode=eager", "--arm", "mode=graph,prewarm=on", "--arm", "mode=graph,guard=tight")  # fmt: skip
    assert code == 0, err
    off, on = fake.engines
    assert (off.prewarm, on.prewarm) == (False, True) and on.weights is off.weights
    assert [a.label() for a in off.arms] == ["eager/cublas", "graph/tight"] and [a.label() for a in on.arms] == [
        "graph/small-n/prewarm=on"]  # fmt: skip
    assert off.prefills[:2] == ["eager/cublas", "graph/tight"] and on.prefills[0] == "graph/small-n/prewarm=on"
    assert "A eager/cublas cold" in err and "first prefill on its prewarm=off engine" in err
    assert "C graph/tight cold" in err and "(its engine's buffers were allocated in A's cold run)" in err
    assert fake.alive_at_free == [[False, False]]


def test_a_second_engine_that_fails_to_build_frees_the_first(capsys, monkeypatch):
    from impbench import measure
    from impbench.errors import InputError

    fake = FakeGpu(monkeypatch)
    build = measure.build_engine

    def second_does_not_fit(preset, prompt_tokens, arms, seed=0, prewarm=True, weights=None):
        if weights is not None:
            raise InputError("tiny-moe at 64 prompt tokens needs about 9 GB of GPU memory but 1 GB are free")
        return build(preset, prompt_tokens, arms, seed, prewarm, weights)

    monkeypatch.setattr(measure, "build_engine", second_does_not_fit)
    code, _, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "64", "--reps", "3", "--b", "mode=graph,prewarm=off")
    assert code == 2 and "needs about 9 GB" in err and err.count("\n") > 1  # progress lines, then the one error line
    assert len(fake.engines) == 1 and fake.alive_at_free == [[False]]


@pytest.mark.gpu
def test_a_second_engine_on_shared_weights_computes_the_same_logits():
    import numpy as np

    from impbench import measure
    from impbench.arms import ArmSpec
    from impbench.presets import get_preset

    tiny, arm = get_preset("tiny"), ArmSpec("eager")
    first = measure.build_engine(tiny, 96, [arm], prewarm=True)
    second = measure.build_engine(tiny, 96, [arm], prewarm=False, weights=first.weights)
    assert second.weights is first.weights and not second.prewarm
    logits = []
    for engine in (first, second):
        engine.buffers.logits.fill(float("nan"))  # poisoned: a prefill that writes nothing cannot pass
        measure.time_prefill(engine, 96, arm)
        logits.append(engine.logits())
    bad = np.flatnonzero(~np.isfinite(logits[0]) | (logits[0] != logits[1]))
    assert bad.size == 0, f"{bad.size} logits differ or are not finite, first at {bad[:5]}: {logits[0][bad[:5]]} vs {logits[1][bad[:5]]}"


@pytest.mark.gpu
def test_ab_tiny_replays_the_original_pair_on_two_engines(tmp_path, capsys):
    """A eager without prewarm, B graph with it: B's own (prewarmed) engine captures; A's cold run is its
    engine's first prefill and pays the allocations."""
    from impbench.capture import CAPTURED, EAGER

    out_path = tmp_path / "ab.json"
    code, out, err = run_cli(capsys, "ab", "--model", "tiny", "--pp", "96", "--reps", "3", "--warmup", "1",
                             "--a", "mode=eager,prewarm=off", "--b", "mode=graph,guard=permissive", "--out", str(out_path))  # fmt: skip
    assert code == 0, err
    assert "building a second engine for the prewarm=on arms" in err and "first prefill on its prewarm=off engine" in err
    assert "A = eager/cublas/prewarm=off, B = graph/permissive" in out
    (row,) = load_result(out_path).rows
    a, b = row.arms
    assert a.spec.prewarm == "off" and a.capture.status == EAGER and b.capture.status == CAPTURED, (a.capture, b.capture)
    assert a.cold.wall_ms > a.warm_ms, f"A cold {a.cold.wall_ms:.2f} ms, warm {a.warm_ms:.2f} ms"
