"""Presets: TOML files load, names and aliases resolve, parameter counts match the published
figures, config.json round trips, and every kind of bad input is an InputError."""

import json
import math
from dataclasses import fields, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impbench.errors import InputError
from impbench.presets import (
    ModelPreset,
    from_hf_config,
    get_preset,
    list_presets,
    load_preset_file,
    replace_layers,
    to_hf_config,
)

REAL = ["qwen3-coder-30b-a3b", "qwen3-30b-a3b-modelopt", "gemma-4-26b-a4b", "qwen3.6-35b-a3b"]

# The published Qwen/Qwen3-Coder-30B-A3B-Instruct config.json, verbatim (fields that matter here).
QWEN3_CODER_CONFIG = {
    "architectures": ["Qwen3MoeForCausalLM"], "decoder_sparse_step": 1, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 2048, "intermediate_size": 5472, "max_position_embeddings": 262144, "mlp_only_layers": [],
    "model_type": "qwen3_moe", "moe_intermediate_size": 768, "norm_topk_prob": True, "num_attention_heads": 32,
    "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 10000000, "shared_expert_intermediate_size": 0,
    "sliding_window": None, "tie_word_embeddings": False, "use_qk_norm": True, "use_sliding_window": False,
    "vocab_size": 151936,
}

# Fields that describe where a preset came from, or impbench's choices, rather than the geometry
# a config.json states (a config.json carries no chunk size: from_hf_config picks 512, or 0 with
# sliding layers).
PROVENANCE = {"name", "aliases", "source", "synthetic", "nvfp4_tensors", "published_total_params",
              "published_active_params", "published_params_note", "unverified", "chunk_size"}


def _geometry(preset: ModelPreset) -> dict:
    return {f.name: getattr(preset, f.name) for f in fields(preset) if f.name not in PROVENANCE}


def _write(tmp_path, data, name="config.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


# ---- loading and lookup ------------------------------------------------------------------------

def test_every_preset_loads_and_real_ones_come_first():
    presets = list_presets()
    assert [p.name for p in presets if not p.synthetic] == sorted(REAL)
    synthetic = [p.name for p in presets if p.synthetic]
    assert synthetic == ["tiny-gemma4", "tiny-moe", "tiny-qwen3.6"] and presets[-len(synthetic):] == [p for p in presets if p.synthetic]
    keys = [k for p in presets for k in (p.name, *p.aliases)]
    assert len(keys) == len(set(keys))
    for p in presets:
        assert p.source and len(p.layer_types) == p.num_layers


@pytest.mark.parametrize("alias,name", [("qwen3-coder", "qwen3-coder-30b-a3b"), ("qwen3-modelopt", "qwen3-30b-a3b-modelopt"),
                                        ("gemma-4", "gemma-4-26b-a4b"), ("qwen3.6", "qwen3.6-35b-a3b"), ("tiny", "tiny-moe"),
                                        ("Qwen3-Coder", "qwen3-coder-30b-a3b"), ("gemma-4-26b-a4b", "gemma-4-26b-a4b")])
def test_aliases_and_names_resolve(alias, name):
    assert get_preset(alias).name == name


def test_unknown_model_lists_the_accepted_names():
    with pytest.raises(InputError) as err:
        get_preset("llama-70b")
    message = str(err.value)
    assert "llama-70b" in message and "\n" not in message
    for name in REAL + ["tiny-moe"]:
        assert name in message


def test_tiny_is_the_synthetic_test_model():
    t = get_preset("tiny")
    assert t.synthetic and t.architecture == "qwen3_moe"
    assert (t.num_layers, t.hidden_size, t.num_attention_heads, t.num_kv_heads, t.head_dim) == (2, 256, 4, 2, 64)
    assert (t.num_experts, t.experts_per_token, t.moe_intermediate_size, t.vocab_size) == (8, 2, 128, 512)
    assert t.qk_norm and t.chunk_size == 32 and t.layer_types == ("full", "full")
    assert t.published_total_params is None


# ---- numbers from the published configs ------------------------------------------------------------

def test_qwen3_presets_match_the_published_config():
    coder, modelopt = get_preset("qwen3-coder"), get_preset("qwen3-modelopt")
    for p in (coder, modelopt):
        assert (p.num_layers, p.hidden_size, p.num_attention_heads, p.num_kv_heads, p.head_dim) == (48, 2048, 32, 4, 128)
        assert (p.num_experts, p.experts_per_token, p.moe_intermediate_size, p.vocab_size) == (128, 8, 768, 151936)
        assert p.qk_norm and p.norm_topk_prob and not p.tie_word_embeddings and p.shared_expert_intermediate_size == 0
        assert set(p.layer_types) == {"full"} and p.chunk_size == 512
    assert coder.rope_theta == 1e7 and modelopt.rope_theta == 1e6
    assert coder.nvfp4_tensors == ("experts",) and set(modelopt.nvfp4_tensors) == {"experts", "attention"}
    assert modelopt.unverified, "the inferred NVFP4 attention must stay flagged until hf_quant_config.json is read"


def test_verbatim_qwen3_coder_config_gives_the_preset(tmp_path):
    built = from_hf_config(_write(tmp_path, QWEN3_CODER_CONFIG))
    assert _geometry(built) == _geometry(get_preset("qwen3-coder"))


def test_gemma4_layout():
    g = get_preset("gemma-4")
    assert [i for i, t in enumerate(g.layer_types) if t == "full"] == [5, 11, 17, 23, 29]
    assert g.sliding_window == 1024 and g.chunk_size == 0 and g.tie_word_embeddings
    assert g.attention_dims("sliding") == (16, 8, 256) and g.attention_dims("full") == (16, 2, 512)
    assert g.qkv_width("sliding") == 16 * 256 + 2 * 8 * 256
    assert g.qkv_width("full") == 16 * 512 + 2 * 512  # K = V: no v_proj on full layers
    assert (g.num_experts, g.experts_per_token, g.moe_intermediate_size, g.dense_intermediate_size) == (128, 8, 704, 2112)


def test_qwen36_hybrid_layout():
    q = get_preset("qwen3.6")
    assert q.architecture == "qwen3_5_moe"
    assert [i for i, t in enumerate(q.layer_types) if t == "full"] == list(range(3, 40, 4))
    assert q.linear_num_value_heads == 32  # N of in_proj_b / in_proj_a: the M=512 N=32 K=2048 GEMM
    assert q.linear_conv_dim == 2 * 16 * 128 + 32 * 128
    assert q.qkv_width("full") == 2 * 16 * 256 + 2 * 2 * 256  # q and its output gate, k, v
    assert (q.num_experts, q.experts_per_token, q.moe_intermediate_size, q.shared_expert_intermediate_size) == (256, 8, 512, 512)


def _agrees_with_published(ours: float, published: float) -> bool:
    """Within 1%, or -- for a figure printed to 0.1B -- equal to our count cut to that digit."""
    return abs(ours - published) <= 0.01 * published or math.floor(ours / 1e8) == round(published / 1e8)


@pytest.mark.parametrize("name", REAL)
def test_parameter_counts_match_published_figures(name):
    p = get_preset(name)
    if p.published_total_params is None:
        assert p.published_params_note, f"{name}: say why there are no published figures"
        return
    assert abs(p.total_params - p.published_total_params) <= 0.01 * p.published_total_params
    assert _agrees_with_published(p.active_params, p.published_active_params)


def test_qwen3_counts_reproduce_the_model_card():
    p = get_preset("qwen3-coder")
    assert abs(p.total_params / 30.5e9 - 1) < 0.01
    # The card's "3.3B activated" is 3.35B cut to two digits: our count is 1.6% above the figure as
    # printed (README, "Published numbers"), and exact to the parameter in every layer.
    assert 3.35e9 <= p.active_params < 3.36e9
    layer = p.layer_active_params("full")
    assert layer["experts"] == 8 * 3 * 2048 * 768 and layer["attention"] == 2048 * 5120 + 4096 * 2048


def test_gemma_counts_within_one_percent():
    g = get_preset("gemma-4")
    assert abs(g.total_params / 25.2e9 - 1) < 0.01 and abs(g.active_params / 3.8e9 - 1) < 0.01


def test_weight_bytes_use_nvfp4_for_marked_groups():
    p = get_preset("qwen3-coder")
    groups = p.param_groups()
    wb = p.weight_bytes()
    assert wb["experts"] == pytest.approx(groups["experts"] * 0.5625)
    assert wb["attention"] == groups["attention"] * 2
    assert get_preset("qwen3-modelopt").weight_bytes()["attention"] == pytest.approx(groups["attention"] * 0.5625)


# ---- config.json --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", REAL + ["tiny-moe"])
def test_hf_config_round_trip(name, tmp_path):
    preset = get_preset(name)
    built = from_hf_config(_write(tmp_path, to_hf_config(preset)))
    assert _geometry(built) == _geometry(preset)
    assert built.name == preset.name and built.total_params == preset.total_params
    assert built.chunk_size == (0 if "sliding" in preset.layer_types else 512)


@settings(max_examples=40, deadline=None)
@given(layers=st.integers(1, 8), heads=st.sampled_from([2, 4, 8]), kv=st.sampled_from([1, 2]),
       dim=st.sampled_from([16, 32, 64]), experts=st.integers(2, 16), hidden=st.sampled_from([64, 128, 256]),
       inter=st.sampled_from([32, 64]), vocab=st.integers(16, 1000), data=st.data())
def test_hf_round_trip_property(layers, heads, kv, dim, experts, hidden, inter, vocab, data):
    import tempfile
    from pathlib import Path

    top_k = data.draw(st.integers(1, experts))
    preset = replace(get_preset("tiny"), num_layers=layers, layer_types=("full",) * layers, num_attention_heads=heads,
                     num_kv_heads=kv, head_dim=dim, num_experts=experts, experts_per_token=top_k, hidden_size=hidden,
                     moe_intermediate_size=inter, vocab_size=vocab, chunk_size=512, synthetic=False)
    with tempfile.TemporaryDirectory() as tmp:
        built = from_hf_config(_write(Path(tmp), to_hf_config(preset)))
    assert _geometry(built) == _geometry(preset)


def test_modelopt_quantization_config_marks_attention(tmp_path):
    cfg = dict(QWEN3_CODER_CONFIG, quantization_config={"quant_method": "modelopt", "quant_algo": "NVFP4",
                                                        "exclude_modules": ["lm_head", "model.layers.0.mlp.gate"]})
    assert set(from_hf_config(_write(tmp_path, cfg)).nvfp4_tensors) == {"experts", "attention"}
    cfg["quantization_config"]["exclude_modules"].append("model.layers.*.self_attn*")
    assert from_hf_config(_write(tmp_path, cfg)).nvfp4_tensors == ("experts",)


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not an object"),
    (json.dumps({"model_type": "llama", "hidden_size": 4096}), "supported: qwen3_moe"),
    (json.dumps({"hidden_size": 4096}), "model_type None is not supported"),
    (json.dumps({k: v for k, v in QWEN3_CODER_CONFIG.items() if k != "num_experts"}), "lacks 'num_experts'"),
    (json.dumps(dict(QWEN3_CODER_CONFIG, hidden_size="2048")), "'hidden_size' must be an integer"),
    (json.dumps(dict(QWEN3_CODER_CONFIG, num_experts_per_tok=500)), "exceeds num_experts"),
    (json.dumps(dict(QWEN3_CODER_CONFIG, mlp_only_layers=[0])), "dense (mlp_only) layers"),
    (json.dumps({"model_type": "gemma4", "text_config": {"model_type": "gemma4_text", "enable_moe_block": False}}),
     "enable_moe_block=false"),
    (json.dumps({"model_type": "qwen3_5_moe", "text_config": dict(to_hf_config(get_preset("qwen3.6"))["text_config"],
                                                                   layer_types=["full_attention"])}),
     "one type per layer"),
])
def test_bad_config_json_is_one_line_input_error(tmp_path, content, needle):
    with pytest.raises(InputError) as err:
        from_hf_config(_write(tmp_path, content))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(InputError, match="no such config.json"):
        from_hf_config(tmp_path / "nope.json")


# ---- TOML files and --layers ------------------------------------------------------------------------

def test_bad_preset_files(tmp_path):
    from impbench.resources import model_presets_dir

    path = tmp_path / "t.toml"
    path.write_text("name = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_preset_file(path)
    text = (model_presets_dir() / "tiny-moe.toml").read_text()
    path.write_text(text + "\nbogus = 1\n")
    with pytest.raises(InputError, match="unknown keys"):
        load_preset_file(path)
    path.write_text(text.replace("vocab_size = 512\n", ""))
    with pytest.raises(InputError, match="missing keys"):
        load_preset_file(path)
    path.write_text(text.replace('layer_pattern = ["full"]', 'layer_pattern = ["full", "conv"]'))
    with pytest.raises(InputError, match="unknown layer types"):
        load_preset_file(path)
    path.write_text(text.replace("chunk_size = 32", "chunk_size = 40"))
    with pytest.raises(InputError, match="multiple of 16"):
        load_preset_file(path)
    assert load_preset_file(model_presets_dir() / "tiny-moe.toml") == get_preset("tiny")


def test_replace_layers_cuts_the_model():
    q = get_preset("qwen3.6")
    cut = replace_layers(q, 4)
    assert cut.num_layers == 4 and cut.layer_types == ("linear", "linear", "linear", "full")
    assert cut.published_total_params is None and cut.total_params < q.total_params
    assert replace_layers(q, q.num_layers) is q
    for bad in (0, 41, -1):
        with pytest.raises(InputError, match="between 1 and 40"):
            replace_layers(q, bad)


@pytest.mark.parametrize("kv_heads", [5, 64, 3])
def test_impossible_attention_geometry_is_refused(tmp_path, kv_heads):
    config = to_hf_config(get_preset("qwen3-coder"))
    config["num_key_value_heads"] = kv_heads
    with pytest.raises(InputError, match="must divide num_attention_heads 32"):
        from_hf_config(_write(tmp_path, config))
