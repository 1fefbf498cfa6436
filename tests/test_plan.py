"""Plan: GEMM shapes, FLOP and byte counts, chunking, floors, memory, GPU ceilings and printers."""

import io
import json

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from impbench.plan import cost as plan_mod
from impbench.errors import InputError
from impbench.gpus import GPUS, get_gpu, match_gpu_name
from impbench.plan import (
    dense_gemm_shapes,
    experts_touched,
    kv_cache_bytes,
    op_floors_us,
    plan_prefill,
    render_models,
    render_plan,
)
from impbench.prefill import PrefillSpec
from impbench.presets import get_preset, list_presets


def _row(plan, op, layer_type=None):
    rows = [r for r in plan.ops if r.op == op and (layer_type is None or r.layer_type == layer_type)]
    assert len(rows) == 1, (op, layer_type, rows)
    return rows[0]


# ---- dense GEMM shapes ------------------------------------------------------------------------------

def test_qwen3_coder_dense_gemms():
    shapes = [(s.op, s.n, s.k) for s in dense_gemm_shapes(get_preset("qwen3-coder"))]
    assert shapes == [("qkv_proj", 5120, 2048), ("o_proj", 2048, 4096), ("router", 128, 2048), ("lm_head", 151936, 2048)]
    lm_head = dense_gemm_shapes(get_preset("qwen3-coder"))[-1]
    assert lm_head.last_token_only and lm_head.layers == 1


def test_qwen36_has_the_small_n_projections_of_the_story():
    shapes = {(s.op, s.n, s.k): s for s in dense_gemm_shapes(get_preset("qwen3.6"))}
    assert ("in_proj_b", 32, 2048) in shapes and ("in_proj_a", 32, 2048) in shapes
    assert shapes[("in_proj_b", 32, 2048)].layers == 30 and shapes[("in_proj_b", 32, 2048)].layer_type == "linear"
    assert ("shared_expert_gate", 1, 2048) in shapes and ("router", 256, 2048) in shapes
    assert shapes[("router", 256, 2048)].layers == 40  # shared by linear and full layers, listed once
    assert ("qkv_proj", 9216, 2048) in shapes and ("lm_head", 248320, 2048) in shapes


@pytest.mark.parametrize("name", [p.name for p in list_presets()])
def test_dense_gemm_shapes_unique_and_complete(name):
    preset = get_preset(name)
    shapes = dense_gemm_shapes(preset)
    keys = [(s.op, s.n, s.k) for s in shapes]
    assert len(keys) == len(set(keys))
    ops = {s.op for s in shapes}
    assert {"router", "lm_head"} <= ops
    assert sum(s.layers for s in shapes if s.op == "router") == preset.num_layers
    # every dense GEMM of the plan appears among the shapes
    plan = plan_prefill(preset, PrefillSpec(64, 32))
    assert {(r.op, r.n, r.k) for r in plan.ops if r.kind == "gemm"} <= set(keys)


def test_gemma_dense_gemms_per_layer_type():
    shapes = {(s.op, s.n, s.k): s for s in dense_gemm_shapes(get_preset("gemma-4"))}
    assert shapes[("qkv_proj", 8192, 2816)].layers == 25
    assert shapes[("qkv_proj", 9216, 2816)].layers == 5
    assert shapes[("o_proj", 2816, 8192)].layer_type == "full"
    assert shapes[("mlp_gate_up", 4224, 2816)].layers == 30


# ---- counts ---------------------------------------------------------------------------------------------

def test_gemm_flops_are_2mnk_and_bytes_count_operands():
    preset = get_preset("qwen3-coder")
    plan = plan_prefill(preset, PrefillSpec(1100, 512))
    row = _row(plan, "qkv_proj")
    m_total = 1100
    assert row.calls == 48 * 3 and row.tokens == "512 (x2), 76"
    assert row.flops == pytest.approx(48 * 2 * m_total * 5120 * 2048)
    expected = 48 * (m_total * 2048 * 2 + 3 * 5120 * 2048 * 2 + m_total * 5120 * 2)
    assert row.bytes_moved == pytest.approx(expected)
    lm = _row(plan, "lm_head")
    assert lm.calls == 1 and lm.flops == 2 * 1 * 151936 * 2048


def test_grouped_expert_gemm_counts():
    preset = get_preset("tiny")
    plan = plan_prefill(preset, PrefillSpec(32, 32))
    row = _row(plan, "moe_gate_up")
    rows = 32 * preset.experts_per_token
    assert row.flops == pytest.approx(2 * 2 * rows * 2 * 128 * 256)  # 2 layers
    touched = experts_touched(preset, 32)
    weights = touched * 2 * 128 * 256 * 0.5625
    assert row.bytes_moved == pytest.approx(2 * (rows * 256 * 2 + weights + rows * 128 * 2))


def test_experts_touched_limits():
    p = get_preset("qwen3-coder")
    assert experts_touched(p, 1) == pytest.approx(8)
    assert experts_touched(p, 4096) == pytest.approx(128, rel=1e-9)
    assert experts_touched(p, 16) < experts_touched(p, 64) < 128


def test_causal_attention_flops_do_not_depend_on_chunking():
    preset = get_preset("qwen3-coder")
    one = _row(plan_prefill(preset, PrefillSpec(1024, 0)), "attention")
    chunked = _row(plan_prefill(preset, PrefillSpec(1024, 256)), "attention")
    pairs = 1024 * 1025 / 2
    assert one.flops == pytest.approx(48 * 4 * 32 * 128 * pairs)
    assert chunked.flops == pytest.approx(one.flops)
    assert chunked.bytes_moved > one.bytes_moved  # later chunks re-read earlier keys


@given(start=st.integers(0, 3000), length=st.integers(1, 700), window=st.one_of(st.none(), st.integers(1, 2048)))
def test_visible_pairs_closed_form(start, length, window):
    brute = sum(p + 1 if window is None else min(p + 1, window) for p in range(start, start + length))
    assert plan_mod.visible_pairs(start, length, window) == pytest.approx(brute)


def test_sliding_attention_is_capped_by_the_window():
    g = get_preset("gemma-4")
    row = _row(plan_prefill(g, PrefillSpec(4096)), "attention", "sliding")
    assert row.flops == pytest.approx(25 * 4 * 16 * 256 * plan_mod.visible_pairs(0, 4096, 1024))
    assert row.flops < 25 * 4 * 16 * 256 * 4096 * 4097 / 2


def test_floors_are_max_of_compute_and_memory_and_add_up():
    plan = plan_prefill(get_preset("qwen3.6"), PrefillSpec(1100, 512), "h200")
    for r in plan.ops:
        assert r.floor_us >= max(r.compute_us, r.memory_us) - 1e-9
        assert r.floor_us <= r.compute_us + r.memory_us + 1e-9
    assert plan.floor_us == pytest.approx(sum(r.floor_us for r in plan.ops))
    assert plan.flops == pytest.approx(sum(r.flops for r in plan.ops))
    assert plan.bytes_moved == pytest.approx(sum(r.bytes_moved for r in plan.ops))
    gemm = _row(plan, "in_proj_b")
    assert gemm.bound == "memory"  # N = 32: the weight and activations dominate, not the MACs


def test_op_floors_sum_fused_parts_and_scale_to_the_engine_calls():
    plan = plan_prefill(get_preset("qwen3-coder"), PrefillSpec(1024, 512))  # 2 chunks x 48 layers
    whole = op_floors_us(plan)
    assert whole["combine"] == pytest.approx(_row(plan, "combine").floor_us)
    assert set(whole) == {r.op for r in plan.ops}
    calls = {"attn_norm": 2, "combine+attn_norm": 94, "combine": 2, "qkv_post": 96, "topk+permute": 96, "made_up": 5}
    scaled = op_floors_us(plan, calls)
    norm, comb = _row(plan, "attn_norm"), _row(plan, "combine")
    assert norm.calls == comb.calls == 96
    assert scaled["attn_norm"] == pytest.approx(norm.floor_us * 2 / 96)
    assert scaled["combine+attn_norm"] == pytest.approx((norm.floor_us + comb.floor_us) * 94 / 96)
    assert scaled["qkv_post"] == pytest.approx(_row(plan, "qkv_post").floor_us)
    assert scaled["topk+permute"] == pytest.approx(_row(plan, "topk").floor_us + _row(plan, "permute").floor_us)
    assert "made_up" not in scaled


def test_preset_chunk_is_the_default():
    assert plan_prefill(get_preset("qwen3-coder"), PrefillSpec(1024)).chunk_size == 512
    assert len(plan_prefill(get_preset("gemma-4"), PrefillSpec(4096)).chunks) == 1


# ---- memory -----------------------------------------------------------------------------------------------

def test_kv_cache_bytes():
    assert kv_cache_bytes(get_preset("qwen3-coder"), 1024) == 48 * 1024 * 4 * 128 * 2 * 2
    g = get_preset("gemma-4")
    sliding = 25 * 1024 * 8 * 256 * 2 * 2  # capped at the window
    full = 5 * 4096 * 2 * 512 * 2 * 2
    assert kv_cache_bytes(g, 4096) == sliding + full
    q = get_preset("qwen3.6")
    state = 30 * (32 * 128 * 128 * 4 + 8192 * 3 * 2)
    assert kv_cache_bytes(q, 2048) == state + 10 * 2048 * 2 * 256 * 2 * 2


def test_plan_memory_lines():
    plan = plan_prefill(get_preset("qwen3-coder"), PrefillSpec(1024))
    assert plan.weight_total_bytes == pytest.approx(sum(get_preset("qwen3-coder").weight_bytes().values()))
    assert 15e9 < plan.weight_total_bytes < 25e9  # experts NVFP4, the rest FP16
    assert plan.activation_bytes > 512 * 2048 * 2


# ---- GPUs ----------------------------------------------------------------------------------------------------

def test_gpu_ceilings():
    # peaks no kernel beats, not what a copy or cuBLAS reached on the lent card (a floor must be a floor)
    assert get_gpu("H100") is GPUS["h100"] and GPUS["h100"].fp16_tflops == pytest.approx(989.4)
    assert GPUS["h100"].mem_tb_s == 3.35 and GPUS["h200"].mem_tb_s == 4.8
    for gpu in GPUS.values():
        assert "datasheet" in gpu.basis and gpu.measured
    assert set(GPUS) == {"h100", "h200", "rtx5090"}
    with pytest.raises(InputError, match="accepted: h100, h200, rtx5090, auto"):
        get_gpu("a100")
    assert match_gpu_name("NVIDIA H100 80GB HBM3").name == "h100"
    assert match_gpu_name("NVIDIA H200").name == "h200"
    assert match_gpu_name("NVIDIA GeForce RTX 5090").name == "rtx5090"
    assert match_gpu_name("Tesla T4") is None


def test_gpu_auto_without_nvml_is_input_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("no pynvml")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    with pytest.raises(InputError, match="h100\\|h200\\|rtx5090"):
        get_gpu("auto")


def test_gpu_auto_with_unknown_device(monkeypatch):
    monkeypatch.setattr("impbench.gpus._detect_name", lambda: "Tesla T4")
    with pytest.raises(InputError, match="Tesla T4"):
        get_gpu("auto")
    monkeypatch.setattr("impbench.gpus._detect_name", lambda: "NVIDIA H100 80GB HBM3")
    assert get_gpu("auto").name == "h100"


# ---- printers ----------------------------------------------------------------------------------------------

def test_render_formats():
    plan = plan_prefill(get_preset("qwen3-coder"), PrefillSpec(1024))
    md = render_plan(plan, "md")
    assert "total 30.5B (published 30.5B), active 3.35B (published 3.3B)" in md
    assert "| qkv_proj" in md and "| moe_gate_up" in md and "Per chunk" in md
    frame = pd.read_csv(io.StringIO(render_plan(plan, "csv")))
    assert set(frame["section"]) == {"op", "chunk"} and "floor_us" in frame.columns
    data = json.loads(render_plan(plan, "json"))
    assert data["params"]["total"] == plan.total_params and len(data["ops"]) == len(plan.ops)
    assert data["totals"]["floor_us"] == pytest.approx(plan.floor_us)
    with pytest.raises(InputError):
        render_plan(plan, "xml")


def test_render_models():
    md = render_models(list_presets(), "md")
    assert md.index("qwen3-coder-30b-a3b") < md.index("tiny-moe")
    frame = pd.read_csv(io.StringIO(render_models(list_presets(), "csv")))
    assert list(frame["name"])[-3:] == ["tiny-gemma4", "tiny-moe", "tiny-qwen3.6"]
    assert set(frame.columns) >= {"name", "aliases", "layers", "experts", "top_k", "attention", "total", "active"}
    assert len(json.loads(render_models(list_presets(), "json"))) == len(list_presets())


def test_the_gated_delta_rule_is_counted_as_the_chunked_kernel_computes_it():
    GDN_CHUNK, gdn_chunk_flops = plan_mod.GDN_CHUNK, plan_mod.gdn_chunk_flops
    dk = dv = 128
    per_token = gdn_chunk_flops(GDN_CHUNK, dk, dv) / GDN_CHUNK
    recurrent = 7 * dk * dv
    assert 1.4 < per_token / recurrent < 1.8  # the WY form does more arithmetic than the recurrence
    assert gdn_chunk_flops(64 + 12, dk, dv) == gdn_chunk_flops(64, dk, dv) + gdn_chunk_flops(12, dk, dv)
    plan = plan_prefill(get_preset("qwen3.6"), PrefillSpec(1100, 512))
    row = _row(plan, "gated_delta_rule")
    chunks = [512, 512, 76]
    assert row.flops == pytest.approx(30 * 32 * sum(gdn_chunk_flops(c, dk, dv) for c in chunks))
    # bytes: q, k, v (fp16), decay and write strength (fp32) read, the output written, the fp32 state read
    # and written once per prefill chunk (a floor: a kernel need not store the state of every WY chunk)
    state = 32 * dk * dv * 4
    per_token = (2 * 16 * dk + 32 * dv) * 2 + 2 * 32 * 4 + 32 * dv * 2
    assert row.bytes_moved == pytest.approx(30 * (sum(chunks) * per_token + 2 * state * len(chunks)))
