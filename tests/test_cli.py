"""CLI: `impbench models` and `impbench plan`, and the arm SPECs of run / ab / sweep; every bad input is exit
code 2 and one stderr line."""

import json
import subprocess
import sys

import pytest

from cli_util import run_cli
from impbench.presets import get_preset, to_hf_config


def test_models_lists_the_four_presets_then_tiny(capsys):
    code, out, err = run_cli(capsys, "models")
    assert code == 0 and not err
    for name in ("qwen3-coder-30b-a3b", "qwen3-30b-a3b-modelopt", "gemma-4-26b-a4b", "qwen3.6-35b-a3b"):
        assert name in out
    assert out.index("qwen3.6-35b-a3b") < out.index("tiny-moe")
    code, out, _ = run_cli(capsys, "models", "--format", "json")
    assert code == 0 and {m["name"] for m in json.loads(out)} >= {"qwen3-coder-30b-a3b", "tiny-moe"}


def test_plan_qwen3_coder_pp1024(capsys):
    code, out, err = run_cli(capsys, "plan", "--model", "qwen3-coder", "--pp", "1024")
    assert code == 0 and not err
    assert "30.5B" in out and "3.3B" in out and "| lm_head" in out


def test_plan_from_config_json_and_layers(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_hf_config(get_preset("qwen3.6"))))
    code, out, _ = run_cli(capsys, "plan", "--model-config", str(path), "--pp", "600", "--layers", "4", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["layers"] == 4 and data["chunk_size"] == 512 and len(data["chunks"]) == 2
    assert any(op["op"] == "in_proj_b" and op["n"] == 32 for op in data["ops"])


@pytest.mark.parametrize("args,needle", [
    (["plan", "--model", "nope", "--pp", "64"], "unknown model 'nope'; accepted:"),
    (["plan", "--model", "tiny", "--pp", "0"], "--pp must be between 1 and 1,048,576"),
    (["plan", "--model", "tiny", "--pp", "-3"], "--pp must be between 1 and"),
    (["plan", "--model", "tiny", "--pp", "10" + "0" * 155, "--chunk", "0"], "--pp must be between 1 and"),
    (["plan", "--model", "tiny", "--model-config", "c.json", "--pp", "64"], "give --model or --model-config, not both"),
    (["plan", "--model", "tiny", "--pp", "64", "--chunk", "-16"], "--chunk must be 0"),
    (["plan", "--model", "tiny", "--pp", "64", "--chunk", "40"], "multiple of 16"),
    (["plan", "--model", "tiny", "--pp", "ten"], "'ten' is not a valid integer"),
    (["plan", "--model", "tiny", "--pp", "64", "--gpu", "a100"], "'a100' is not one of"),
    (["plan", "--model", "tiny", "--pp", "64", "--format", "xml"], "'xml' is not one of"),
    (["plan", "--model", "tiny"], "Missing option '--pp'"),
    (["plan", "--pp", "64"], "pass --model NAME"),
    (["plan", "--model", "tiny", "--pp", "64", "--layers", "9"], "--layers must be between 1 and 2"),
    (["models", "--format", "yaml"], "'yaml' is not one of"),
])
def test_bad_input_is_exit_2_and_one_line(capsys, args, needle):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("impbench: error: ") and needle in err


@pytest.mark.parametrize("content,needle", [
    ("{broken", "not valid JSON"),
    ('{"model_type": "llama"}', "model_type 'llama' is not supported; supported: qwen3_moe"),
    ('{"model_type": "qwen3_moe", "hidden_size": 2048}', "lacks 'num_hidden_layers'"),
])
def test_bad_config_json_is_exit_2_and_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "config.json"
    path.write_text(content)
    code, out, err = run_cli(capsys, "plan", "--model-config", str(path), "--pp", "64")
    assert code == 2 and not out and err.count("\n") == 1 and needle in err


def test_missing_config_json(tmp_path, capsys):
    code, _, err = run_cli(capsys, "plan", "--model-config", str(tmp_path / "none.json"), "--pp", "64")
    assert code == 2 and err.count("\n") == 1 and "no such config.json" in err


@pytest.mark.parametrize("content", [b"\xff\xd8\xff\xe0 random bytes", b"\x1f\x8b\x08\x00\x00\x00"])
def test_a_config_json_that_is_not_text_is_exit_2(tmp_path, capsys, content):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    code, _, err = run_cli(capsys, "plan", "--model-config", str(path), "--pp", "64")
    assert code == 2 and err.count("\n") == 1 and "not a UTF-8 text config.json" in err


def test_python_m_impbench_exit_code_and_single_line():
    result = subprocess.run([sys.executable, "-m", "impbench", "plan", "--model", "nope", "--pp", "64"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "unknown model" in result.stderr
    ok = subprocess.run([sys.executable, "-m", "impbench", "plan", "-m", "tiny", "--pp", "64", "--format", "csv"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("section,op,")


def test_overlap_is_an_arm_key_on_unless_a_spec_turns_it_off():
    """overlap=on|off: unset is on and keeps the label and result dict of before; a set one is named and
    round-trips; anything else is refused with what is accepted."""
    from impbench.arms import KEYS, ArmSpec, parse_arm
    from impbench.errors import InputError

    assert "overlap" in KEYS
    plain = parse_arm("mode=graph")
    assert plain.overlapped and plain.label() == "graph/small-n" and "overlap" not in plain.to_dict()
    off = parse_arm("mode=eager,overlap=off")
    assert not off.overlapped and off.label() == "eager/cublas/overlap=off"
    on = parse_arm("mode=graph,prewarm=off,overlap=on")
    assert on.overlapped and on.label() == "graph/small-n/prewarm=off/overlap=on"
    for arm in (off, on):
        assert ArmSpec.from_dict(arm.to_dict()) == arm
    for bad in ("overlap=yes", "overlap=OFF", "overlap=1"):
        with pytest.raises(InputError, match=r"unknown overlap .* in an arm; accepted: on, off"):
            parse_arm(bad)


def test_prewarm_is_an_arm_key_named_only_where_a_spec_sets_it():
    """prewarm=on|off parses over a base like any key; an arm that does not set it takes the command's
    (--no-prewarm) and keeps the label and result dict of before; a set one round-trips."""
    from impbench.arms import KEYS, ArmSpec, parse_arm
    from impbench.errors import InputError

    assert "prewarm" in KEYS
    off = parse_arm("mode=eager,prewarm=off")
    assert off == ArmSpec("eager", prewarm="off") and off.label() == "eager/cublas/prewarm=off"
    assert off.to_dict() == {"mode": "eager", "guard": "cublas", "chunk": None, "prewarm": "off"}
    on = parse_arm("mode=graph,chunk=512,prewarm=on,delay_us=5")
    assert on.label() == "graph/small-n/chunk=512/prewarm=on/delay=5us"
    for arm in (off, on):
        assert ArmSpec.from_dict(arm.to_dict()) == arm
    plain = parse_arm("mode=graph")
    assert plain.label() == "graph/small-n" and plain.to_dict() == {"mode": "graph", "guard": "small-n", "chunk": None}
    assert ArmSpec.from_dict({"mode": "graph", "guard": "small-n", "chunk": None}) == plain  # a result file of before
    assert (plain.prewarmed(True), plain.prewarmed(False)) == (True, False)
    assert (off.prewarmed(True), on.prewarmed(False)) == (False, True)  # the arm's key wins
    assert parse_arm("mode=graph", base=ArmSpec(prewarm="off")).prewarm == "off"
    for bad in ("prewarm=maybe", "prewarm=OFF", "mode=eager,prewarm=0"):
        with pytest.raises(InputError, match=r"unknown prewarm .* in an arm; accepted: on, off"):
            parse_arm(bad)
    with pytest.raises(InputError, match="accepted: on, off"):
        ArmSpec.from_dict({"mode": "eager", "prewarm": True})
    with pytest.raises(InputError, match="names prewarm twice"):
        parse_arm("prewarm=on,prewarm=off")
