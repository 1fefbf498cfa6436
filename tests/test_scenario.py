"""scenario: the sweep TOML files, every key typed and checked before any GPU work."""

import pytest
from cli_util import run_cli

from impbench.errors import InputError
from impbench.scenario import load_scenario


def test_the_packaged_ci_scenario_is_found_by_name():
    ci = load_scenario("ci")
    assert ci.models == ("qwen3-coder", "qwen3-modelopt") and ci.pp == (512, 1024, 2048)
    assert len(ci.arms) >= 2 and ci.path.endswith("ci.toml")


def test_the_packaged_gemma_4_scenario_replays_the_original_pair_and_the_chunked_arms():
    from impbench.arms import parse_arm

    g = load_scenario("gemma-4")
    assert g.models == ("gemma-4",) and g.pp == (1024, 2048, 4096) and g.tolerance == 10
    assert [parse_arm(a).label() for a in g.arms[:2]] == ["eager/cublas/prewarm=off", "graph/small-n"]
    assert {parse_arm(a).chunk for a in g.arms} == {None, 512, 1024}


@pytest.mark.parametrize("text,needle", [
    ('models = ["tiny"]\nspeed = 3\n', "unknown keys ['speed']"),
    ("models = [", "not valid TOML"),
    ("models = []", "models is an empty list"),
    ("pp = []", "pp is an empty list"),
    ("arms = []", "arms is an empty list"),
    ('arms = ["mode=eager"]', "at least two arm specs"),
    ("pp = 512", "pp must be a list"),
    ('pp = [512, "x"]', "every entry of pp must be"),
    ('reps = "abc"', "reps must be a whole number"),
    ("reps = 2.9", "reps must be a whole number"),
    ("reps = 2", "reps must be >= 3"),
    ("warmup = -1", "warmup must be >= 0"),
    ('tolerance = "x"', "tolerance must be a number of percent > 0"),
    ("tolerance = nan", "tolerance must be a number of percent > 0"),
    ("layers = 0", "layers must be >= 1"),
    ("seed = true", "seed must be a whole number"),
])  # fmt: skip
def test_a_bad_key_is_one_line_naming_it(tmp_path, text, needle):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(InputError) as info:
        load_scenario(str(path))
    assert needle in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("content", [b"\xff\xfe\x00\x01", b"\x1f\x8b\x08\x00\x00"])
def test_a_scenario_that_is_not_text_is_exit_2_and_one_line(tmp_path, capsys, content):
    path = tmp_path / "s.toml"
    path.write_bytes(content)
    code, out, err = run_cli(capsys, "sweep", str(path))
    assert code == 2 and not out and err.count("\n") == 1 and "not a UTF-8 text scenario file" in err
