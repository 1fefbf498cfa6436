"""Engine: chunk planning (CPU), and on the GPU logits vs the float64 reference, eager == graph bit
for bit, capture in global mode after prewarm, and the loud fallback without prewarm."""

import random

import numpy as np
import pytest

from impbench.errors import InputError


@pytest.mark.parametrize("groups", [("attention",), ("experts", "lm_head")])
def test_engine_rejects_nvfp4_groups_it_cannot_store_with_one_line(groups):
    import dataclasses

    from impbench.engine.core import check_supported
    from impbench.presets import get_preset

    with pytest.raises(InputError, match="impbench plan"):
        check_supported(dataclasses.replace(get_preset("tiny"), nvfp4_tensors=groups))


def test_engine_accepts_every_preset():
    from impbench.engine.core import check_supported
    from impbench.presets import get_preset

    for model in ("qwen3-coder", "qwen3-modelopt", "tiny", "qwen3.6", "tiny-qwen3.6", "gemma-4", "tiny-gemma4"):
        check_supported(get_preset(model))


def test_experts_are_stored_padded_to_whole_tiles_only_where_that_adds_an_eighth_or_less():
    from impbench.engine.weights import expert_width

    assert [expert_width(_tiny(model=m)) for m in ("gemma-4", "qwen3-coder", "tiny-gemma4", PADDED_EXPERTS)] == [768, 768, 64, 256]


def test_an_engine_compiles_only_the_kernel_families_its_model_launches():
    from impbench.engine.core import KERNEL_FAMILIES, kernel_families
    from impbench.presets import get_preset

    assert kernel_families(get_preset("qwen3-coder")) == KERNEL_FAMILIES
    assert set(kernel_families(get_preset("qwen3-modelopt"))) - set(KERNEL_FAMILIES) == {"nvfp4_gemm"}
    assert set(kernel_families(get_preset("qwen3.6"))) - set(KERNEL_FAMILIES) == {"gated_delta"}


# a test-only variant: tiny-gemma4 with I = 240, which the engine stores padded to 256 (weights.expert_width), so
# its experts run on the tile-major K-permuted kernel (wgb on Hopper) as gemma-4's (704 -> 768) do
PADDED_EXPERTS = "tiny-gemma4/i240"


def _tiny(nvfp4_attention=False, model="tiny"):
    import dataclasses

    from impbench.presets import get_preset

    if model == PADDED_EXPERTS:
        return dataclasses.replace(get_preset("tiny-gemma4"), moe_intermediate_size=240)
    preset = get_preset(model)
    if nvfp4_attention:  # as qwen3-modelopt stores q/k/v/o
        preset = dataclasses.replace(preset, nvfp4_tensors=("experts", "attention"))
    return preset


def _engine(prompt_tokens=80, chunk=32, prewarm=True, seed=None, nvfp4_attention=False, model="tiny"):
    from impbench.engine import Engine

    seed = random.randrange(1 << 20) if seed is None else seed
    return Engine(_tiny(nvfp4_attention, model), prompt_tokens, chunk, seed=seed, prewarm=prewarm)


def _poison_logits(engine):
    import cupy

    engine.buffers.logits.fill(cupy.nan)


# Every sublayer's output against the float64 reference computed from the engine's own input to it:
# FP16 activations and FP32 accumulation land near 1e-3; each planted error of PLANTS costs >= 0.09
# (tests/test_reference.py), while it moves the last-token logits by only 2e-3 to 2e-2.
SUBLAYER_REL_ERR = 2e-2


@pytest.mark.gpu
@pytest.mark.parametrize("model,guard,nvfp4_attention", [
    ("tiny", "cublas", False), ("tiny", "permissive", False), ("tiny", "tight", True), ("tiny", "small-n", False),
    ("tiny-qwen3.6", "cublas", False), ("tiny-qwen3.6", "small-n", False), ("tiny-qwen3.6", "seed", True),
    ("tiny-gemma4", "cublas", False), ("tiny-gemma4", "small-n", False), (PADDED_EXPERTS, "small-n", False),
])  # fmt: skip
def test_engine_matches_the_float64_reference_sublayer_by_sublayer(model, guard, nvfp4_attention):
    """Three chunks of 32, the last one short: the KV cache, in tiny-qwen3.6's Gated DeltaNet layers the
    conv inputs and the recurrent state, carried across two chunk boundaries; in tiny-gemma4 the sliding
    window (24 keys) reaches back across them."""
    from impbench.engine.weights import reference_weights
    from impbench.reference import for_preset

    prompt_tokens, chunk = 80, 32
    engine = _engine(prompt_tokens, chunk, nvfp4_attention=nvfp4_attention, model=model)
    reference = for_preset(engine.preset)
    trace = engine.trace_layers(prompt_tokens, chunk, guard)
    assert len(trace) == 3 * engine.preset.num_layers
    weights = reference_weights(engine.weights, engine.preset)
    errors = reference.sublayer_errors(engine.preset, weights, trace)
    assert max(errors.values()) <= SUBLAYER_REL_ERR, errors
    for plant in reference.PLANTS:  # the same comparison against a reference with one error built in fails
        planted = reference.sublayer_errors(engine.preset, weights, trace, plants=(plant,))
        assert max(planted.values()) > 2 * SUBLAYER_REL_ERR, (plant, planted)
    # and the whole forward end to end, eager prefill with poisoned logits
    _poison_logits(engine)
    engine.prefill(prompt_tokens, chunk, mode="eager", guard=guard)
    logits = engine.logits()
    assert np.isfinite(logits).all()
    ids = engine.buffers.prompt_ids.get()[:prompt_tokens]
    ref = reference.reference_forward(engine.preset, weights, ids, chunk_size=chunk)
    assert np.linalg.norm(logits - ref) / np.linalg.norm(ref) <= 1e-2


@pytest.mark.gpu
@pytest.mark.parametrize("model,guard,nvfp4_attention", [
    ("tiny", "permissive", False), ("tiny", "permissive", True), ("tiny", "seed", False),
    ("tiny-qwen3.6", "small-n", False), ("tiny-qwen3.6", "seed", False), ("tiny-gemma4", "small-n", False),
    (PADDED_EXPERTS, "small-n", False),
])  # fmt: skip
def test_eager_and_graph_logits_are_bit_identical(model, guard, nvfp4_attention):
    """Every kernel is launched with programmatic dependent launch; a kernel that reads its input before the
    previous one finished made eager runs differ from each other (docs/notes/engine.md). The second graph
    prefill replays the same graph, so the carried states must start from zero again."""
    prompt_tokens, chunk = 96, 32
    engine = _engine(prompt_tokens, chunk, nvfp4_attention=nvfp4_attention, model=model)
    runs = []
    # the branch beside the experts on its own stream and in line: the same kernels, so the same bits
    for mode, overlap in (("eager", True), ("eager", True), ("graph", True), ("graph", True), ("eager", False),
                          ("graph", False)):  # fmt: skip
        _poison_logits(engine)
        stats = engine.prefill(prompt_tokens, chunk, mode=mode, guard=guard, overlap=overlap)
        if mode == "graph":
            status = engine.capture_status(chunk, guard, overlap=overlap)
            assert status.captured, status.label()
            assert status.kernels == len(engine.launch_list(chunk, False, guard, overlap=False).launches)
            assert stats.graph_replays == 2
        runs.append(engine.logits())
    for run in runs[1:]:
        np.testing.assert_array_equal(runs[0], run)


@pytest.mark.gpu
def test_the_side_branches_fork_after_their_input_and_join_before_their_reader():
    """Qwen3.6's shared expert and in_proj_b, and Gemma-4's dense MLP, are the only side launches. The
    experts' branch forks after its norm and is joined before the combine; Qwen3.6's in_proj_b forks before
    the merged in_proj_qkvz GEMM (after the layer's input norm) and is joined before the conv reads b. Without
    overlap there is no mark and no side launch."""
    from impbench.engine.forward import FORK, JOIN

    prompt_tokens, chunk = 64, 32
    for model, branch in (("tiny-qwen3.6", {"shared_gate_up", "shared_act", "shared_down", "shared_expert_gate",
                                            "in_proj_b"}),
                          ("tiny-gemma4", {"mlp_gate_up", "mlp_act", "mlp_down"}), ("tiny", set())):  # fmt: skip
        engine = _engine(prompt_tokens, chunk, model=model)
        launches = engine.launch_list(chunk, last=True, guard="small-n").launches
        assert {launch.op for launch in launches if launch.side} == branch
        ops = [launch.op for launch in launches]
        linear = engine.preset.layer_types.count("linear")
        assert ops.count(FORK) == ops.count(JOIN) == ((engine.preset.num_layers + linear) if branch else 0)
        open_fork = False
        for i, launch in enumerate(launches):
            if launch.op == FORK:
                assert not open_fork
                assert ops[i - 1] == "ffn_norm" or (ops[i - 1].endswith("attn_norm") and ops[i + 1] == "in_proj_qkvz")
                open_fork = True
            elif launch.op == JOIN:
                open_fork = False
            elif launch.op.startswith("combine") or launch.op == "conv1d":
                assert not open_fork, f"{launch.op} reads the branch before its join"
            assert launch.side == (open_fork and launch.op in branch)
        serial = engine.launch_list(chunk, last=True, guard="small-n", overlap=False).launches
        assert not any(launch.side or launch.op in (FORK, JOIN) for launch in serial)


@pytest.mark.gpu
def test_launch_list_fuses_the_small_ops_and_every_op_has_a_plan_floor():
    from impbench.plan import op_floors_us, plan_prefill
    from impbench.prefill import PrefillSpec

    prompt_tokens, chunk = 64, 32
    for model, combine in (("tiny", "combine"), ("tiny-qwen3.6", "combine+shared_combine"),
                           ("tiny-gemma4", "combine+post_ffn_norms")):
        engine = _engine(prompt_tokens, chunk, model=model)
        layers = engine.preset.num_layers
        ops = [launch.op for launch in engine.launch_list(chunk, last=True, guard="permissive").kernels]
        assert ops.count("attn_norm") == 1 and ops.count(combine + "+attn_norm") == layers - 1 and ops.count(combine) == 1
        assert ops.count("topk") == ops.count("permute") == layers
        calls = {op: ops.count(op) for op in ops}
        floors = op_floors_us(plan_prefill(engine.preset, PrefillSpec(chunk, chunk)), calls)
        assert set(floors) == set(calls), set(calls) - set(floors)


@pytest.mark.gpu
def test_capture_declined_gemm_falls_back_naming_the_op():
    # tiny's router has N = 8 experts < the 128-wide tile: the tight guard sends it to cuBLAS,
    # which cannot run under capture, so the graph arm must fall back and say where.
    prompt_tokens, chunk = 64, 32
    engine = _engine(prompt_tokens, chunk)
    stats = engine.prefill(prompt_tokens, chunk, mode="graph", guard="tight")
    status = engine.capture_status(chunk, "tight")
    assert not status.captured
    assert status.op in ("qkv_proj", "o_proj", "router")
    assert "capture" in status.error.lower()
    assert stats.graph_replays == 0 and stats.python_launches > 0
    assert np.isfinite(engine.logits()).all()


@pytest.mark.gpu
def test_a_capture_failing_inside_a_fork_falls_back_and_runs_eager_on_both_streams():
    # tiny-qwen3.6 under tight: its first declined GEMM (cuBLAS) comes after the fork that puts in_proj_b on
    # the side stream, so the failed capture must still close both streams; the eager chunks that follow run
    # on them and give the eager arm's logits.
    prompt_tokens, chunk = 64, 32
    engine = _engine(prompt_tokens, chunk, model="tiny-qwen3.6")
    stats = engine.prefill(prompt_tokens, chunk, mode="graph", guard="tight")
    status = engine.capture_status(chunk, "tight")
    assert not status.captured and status.op in ("in_proj_qkvz", "in_proj_b"), status.label()
    assert stats.graph_replays == 0
    assert not engine.branch.stream.is_capturing() and not engine.stream.is_capturing()
    graph_logits = engine.logits()
    engine.prefill(prompt_tokens, chunk, mode="eager", guard="tight")
    # not bit for bit: here every GEMM is cuBLAS's, on two streams at once through one handle, where cuBLAS
    # does not promise run-to-run identical bits (its workspace per stream may change the algorithm)
    eager_logits = engine.logits()
    assert np.isfinite(graph_logits).all()
    assert np.linalg.norm(graph_logits - eager_logits) / np.linalg.norm(eager_logits) <= 1e-3


@pytest.mark.gpu
def test_no_prewarm_capture_fails_on_allocation_and_runs_eager():
    prompt_tokens, chunk = 64, 32
    engine = _engine(prompt_tokens, chunk, prewarm=False)
    engine.prefill(prompt_tokens, chunk, mode="graph", guard="permissive")
    status = engine.capture_status(chunk, "permissive")
    assert not status.captured
    assert status.op.startswith("allocate ")
    assert "StreamCapture" in status.error or "capture" in status.error.lower()
    assert np.isfinite(engine.logits()).all()


def test_an_engine_that_cannot_fit_is_refused_with_the_numbers_and_the_way_out():
    from impbench.engine.memory import check_fits, required_bytes
    from impbench.presets import get_preset

    coder = get_preset("qwen3-coder")
    need = required_bytes(coder, 512, 65536)
    assert 15e9 < need["weights"] < 25e9 and need["buffers"] > 65536 * 48 * 4 * 128 * 2 * 2
    check_fits(coder, 512, 65536, need["total"] + 1)
    with pytest.raises(InputError) as info:
        check_fits(coder, 512, 65536, 20e9)
    message = str(info.value)
    assert "needs about" in message and "20.0 GB are free" in message and "--layers" in message and "--pp" in message
    layers = int(message.split("--layers ")[1].split()[0])
    assert 1 <= layers < 48
    from impbench.presets import replace_layers

    check_fits(replace_layers(coder, layers), 512, 65536, 20e9)  # the suggested cut does fit


def test_the_packed_nvfp4_projection_codes_are_counted():
    from impbench.engine.memory import packed_code_bytes, required_bytes
    from impbench.presets import get_preset

    modelopt, coder = get_preset("qwen3-modelopt"), get_preset("qwen3-coder")
    attention = modelopt.param_groups()["attention"]
    assert packed_code_bytes(coder) == 0  # FP16 projections: no second copy
    assert packed_code_bytes(modelopt) == 0.5 * attention and attention > 0.8e9
    stored = sum(modelopt.weight_bytes().values())
    assert required_bytes(modelopt, 512, 4096)["weights"] == stored + 0.5 * attention
