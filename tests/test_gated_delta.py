"""The chunked gated delta rule (kernels_cu/gated_delta.cu) against the float64 reference, its workspace
and argument checks, and `impbench gdn`.

Error bound: the kernels round to FP16 where flash-linear-attention does (T = (I + A)^{-1} and the
decayed Q K^T, the state as an MMA operand, R, v', the output) and accumulate in FP32. A NumPy model of
exactly those roundings, and the kernels' own source run on a host emulation of ldmatrix / mma.sync,
give max |error| / max |reference| of 3e-4 .. 7e-4 on the output and on the final state (Qwen3.6 and
tiny geometries, T 1 .. 512). REL_ERR = 5e-3 leaves a 7x margin and still fails on a real bug: one
16x16 block of T left out gives 3e-2, a missing barrier gives NaN, a lost state gives ~1.
"""

import json

import numpy as np
import pytest
from cli_util import run_cli
from fakes import FakeGpu

from impbench.bench.gated_delta import GdnShape, draw_inputs
from impbench.kernels import gated_delta
from impbench.reference.gated_delta import gated_delta_chunked

REL_ERR = 5e-3
GEOMETRIES = {"qwen3.6": GdnShape("qwen3.6", 16, 32, 128, 128), "tiny": GdnShape("tiny", 2, 4, 32, 32)}
TOKENS = (1, 37, 64, 100, 512)


def _reference(host, state=None):
    f64 = {name: value.astype(np.float64) for name, value in host.items()}
    start = f64["state"] if state is None else state
    return gated_delta_chunked(f64["q"], f64["k"], f64["v"], f64["g"], f64["beta"], start)


def _device(host):
    import cupy

    return {name: cupy.asarray(value) for name, value in host.items()}


def _poisoned_workspace(rows, shape):
    work = gated_delta.workspace(rows, shape.value_heads, shape.dk, shape.dv)
    for array in (work.t_inv, work.aqk, work.gamma_beta):
        array.fill(np.nan)  # a row the first kernel leaves unwritten and the second reads shows as NaN
    return work


def _run(shape, host, rows=None):
    """One call on fresh device copies, the output poisoned with NaN: (out, final state) on the host."""
    import cupy

    d = _device(host)
    tokens = host["q"].shape[0]
    out = cupy.full((tokens, shape.value_heads, shape.dv), np.nan, dtype=cupy.float16)
    work = _poisoned_workspace(rows or tokens, shape)
    gated_delta.chunk_gated_delta(d["q"], d["k"], d["v"], d["g"], d["beta"], d["state"], out, work)
    return out.get(), d["state"].get()


def _check(name, ours, ref, bound=REL_ERR):
    ours = np.asarray(ours, dtype=np.float64)
    bad = ~np.isfinite(ours)
    assert not bad.any(), f"{name}: {bad.sum()} non-finite values (unwritten or NaN), first at {np.argwhere(bad)[0].tolist()}"
    err = np.abs(ours - ref)
    worst = np.unravel_index(np.argmax(err), err.shape)
    rel = err.max() / np.abs(ref).max()
    norm = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert rel <= bound, (f"{name}: max |error| / max |ref| = {rel:.2e} > {bound:.0e} at {tuple(int(i) for i in worst)} "
                          f"(ours {ours[worst]:.5f}, ref {ref[worst]:.5f}); norm-wise {norm:.2e}")  # fmt: skip


# -- CPU -------------------------------------------------------------------------------------------


def test_workspace_rows_cover_whole_chunks_and_unbuilt_head_dims_are_refused():
    specs = gated_delta.workspace_specs(100, 32, 128, 128)
    assert specs["t_inv"] == ((32, 128, 64), np.dtype(np.float16)) and specs["aqk"][0] == (32, 128, 64)
    assert specs["gamma_beta"] == ((32, 128, 2), np.dtype(np.float32))
    assert gated_delta.workspace_specs(128, 4, 32, 32)["t_inv"][0] == (4, 128, 64)
    with pytest.raises(ValueError, match=r"\(64, 64\) are not built"):
        gated_delta.workspace_specs(64, 4, 64, 64)


def test_every_built_geometry_has_its_entry_points_and_fits_in_shared_memory():
    from impbench.kernels.modules import module_source

    source = module_source(gated_delta.FAMILY)
    for dk, dv in gated_delta.GEOMETRIES:
        assert f"GATED_DELTA({dk}, {dv})" in source  # the macro that emits both entry points of (dk, dv)
        assert gated_delta.prep_smem_bytes(dk) <= 227 * 1024 and gated_delta.state_smem_bytes(dk) <= 227 * 1024
    assert gated_delta.state_smem_bytes(128) == 143360 and gated_delta.prep_smem_bytes(128) == 58112


def test_the_bench_draws_normalised_keys_and_decays_below_one():
    host = draw_inputs(GEOMETRIES["tiny"], 50, seed=1)
    assert host["q"].dtype == np.float16 and host["g"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(host["k"].astype(np.float64), axis=-1), 1.0, atol=2e-3)
    np.testing.assert_allclose(np.linalg.norm(host["q"].astype(np.float64), axis=-1), 1 / np.sqrt(32), atol=2e-3)
    assert (host["g"] <= 0).all() and ((host["beta"] > 0) & (host["beta"] < 1)).all()
    slow, fast = host["g"][:, 1::2], host["g"][:, 0::2]  # odd value heads decay slowly (state across chunks)
    assert np.median(slow) > np.median(fast)


@pytest.mark.parametrize("args,needle", [
    (["gdn", "--pp", "x"], "--pp takes comma-separated"),
    (["gdn", "--pp", "0"], "--pp must be between"),
    (["gdn", "--reps", "0"], "--reps must be"),
    (["gdn", "--model", "qwen3-coder"], "has no Gated DeltaNet layers"),
    (["gdn", "--model", "nope"], "unknown model"),
    (["gdn", "--out", "t.json"], "gets its JSON beside it, at this very path"),
])  # fmt: skip
def test_bad_gdn_input_is_exit_2(capsys, monkeypatch, args, needle):
    FakeGpu(monkeypatch)
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and not out and needle in err and err.count("\n") == 1, err


# -- GPU -------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("tokens", TOKENS)
def test_matches_the_reference(geometry, tokens):
    """Output and final state from a non-zero initial state; T any length (partial last chunk)."""
    shape = GEOMETRIES[geometry]
    host = draw_inputs(shape, tokens, seed=1000 + tokens)
    out, state = _run(shape, host)
    o_ref, s_ref = _reference(host)
    _check(f"{geometry} T={tokens} output", out, o_ref)
    _check(f"{geometry} T={tokens} final state", state, s_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_a_workspace_for_longer_chunks_serves_a_short_one(geometry):
    shape = GEOMETRIES[geometry]
    host = draw_inputs(shape, 37, seed=7)
    out, state = _run(shape, host, rows=512)
    o_ref, s_ref = _reference(host)
    _check(f"{geometry} output", out, o_ref)
    _check(f"{geometry} final state", state, s_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("split", [37, 64])
def test_a_split_prompt_equals_one_call(geometry, split):
    """Two calls carrying the state (the engine's chunked prefill) against one call and the reference."""
    shape = GEOMETRIES[geometry]
    host = draw_inputs(shape, 150, seed=split)
    first = {name: value if name == "state" else value[:split] for name, value in host.items()}
    out1, state1 = _run(shape, first)
    second = {name: state1 if name == "state" else value[split:] for name, value in host.items()}
    out2, state2 = _run(shape, second)
    whole_out, whole_state = _run(shape, host)
    o_ref, s_ref = _reference(host)
    split_out = np.concatenate([out1, out2])
    _check(f"{geometry} split at {split}: output", split_out, o_ref)
    _check(f"{geometry} split at {split}: final state", state2, s_ref)
    _check(f"{geometry} split at {split} against one call: output", split_out, whole_out.astype(np.float64))
    _check(f"{geometry} split at {split} against one call: state", state2, whole_state.astype(np.float64))


@pytest.mark.gpu
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_one_captured_graph_carries_the_state_from_replay_to_replay(geometry):
    """A global-mode capture of the launcher, replayed twice, equals two eager calls bit for bit; the
    second call is the same tokens again from the first call's state (the reference of both in a row)."""
    import cupy
    from cupy.cuda import runtime

    from impbench.kernels.modules import load_module

    shape = GEOMETRIES[geometry]
    host = draw_inputs(shape, 100, seed=11)
    load_module(gated_delta.FAMILY)  # compile outside the capture, as the engine does
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        eager = _device(host)
        eager_out = cupy.full((100, shape.value_heads, shape.dv), np.nan, dtype=cupy.float16)
        work = _poisoned_workspace(100, shape)
        outs_eager = []
        for _ in range(2):
            gated_delta.chunk_gated_delta(eager["q"], eager["k"], eager["v"], eager["g"], eager["beta"], eager["state"],
                                          eager_out, work)  # fmt: skip
            outs_eager.append(eager_out.get(stream=stream))

        graph_in = _device(host)
        graph_out = cupy.empty_like(eager_out)
        graph_work = _poisoned_workspace(100, shape)
        launch = gated_delta.prepare(graph_in["q"], graph_in["k"], graph_in["v"], graph_in["g"], graph_in["beta"],
                                     graph_in["state"], graph_out, graph_work)  # fmt: skip
        stream.synchronize()
        stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
        launch()
        graph = stream.end_capture()
        outs_graph = []
        for _ in range(2):
            graph_out.fill(np.nan)
            graph.launch(stream=stream)
            outs_graph.append(graph_out.get(stream=stream))
        stream.synchronize()
    for i in range(2):
        np.testing.assert_array_equal(outs_graph[i], outs_eager[i], err_msg=f"replay {i + 1} differs from eager call {i + 1}")
    np.testing.assert_array_equal(graph_in["state"].get(), eager["state"].get(), err_msg="final states differ")
    twice = {name: value if name == "state" else np.concatenate([value, value]) for name, value in host.items()}
    o_ref, s_ref = _reference(twice)
    _check(f"{geometry} second replay", outs_graph[1], o_ref[100:])
    _check(f"{geometry} state after two replays", graph_in["state"].get(), s_ref)


@pytest.mark.gpu
def test_bad_arguments_are_one_line_value_errors():
    import cupy

    shape = GEOMETRIES["tiny"]
    d = _device(draw_inputs(shape, 70, seed=3))
    out = cupy.empty((70, 4, 32), cupy.float16)
    work = gated_delta.workspace(70, 4, 32, 32)
    args = [d["q"], d["k"], d["v"], d["g"], d["beta"], d["state"], out, work]

    def refused(index, value, needle):
        bad = list(args)
        bad[index] = value
        with pytest.raises(ValueError, match=needle):
            gated_delta.prepare(*bad)

    refused(0, d["q"].astype(cupy.float32), "q must have dtype float16")
    refused(2, cupy.zeros((70, 4, 64), cupy.float16), r"\(32, 64\) are not built")
    refused(3, d["g"][:60], r"g must have shape \(70, 4\)")
    refused(5, cupy.zeros((4, 32, 16), cupy.float32), "state must have shape")
    refused(7, gated_delta.workspace(64, 4, 32, 32), "does not serve 70 tokens")
    refused(7, (work.t_inv, work.aqk, work.gamma_beta), "must be a gated_delta.Workspace")
    refused(0, cupy.zeros((70, 3, 32), cupy.float16), "k must have shape")


@pytest.mark.gpu
def test_gdn_bench_on_the_tiny_geometry(capsys):
    code, out, err = run_cli(capsys, "gdn", "--model", "tiny-qwen3.6", "--pp", "64,100", "--reps", "3", "--format", "json")
    assert code == 0, err
    data = json.loads(out)
    rows = data["rows"]
    assert [r["tokens"] for r in rows] == [64, 100]
    for row in rows:
        assert row["ours_us"] > 0 and row["ours_hot_us"] > 0 and 0 < row["prep_us"] < row["ours_us"] and row["ref_err"] <= REL_ERR
        if row["fla_us"] is not None:  # FLA present: it computed the same function
            assert row["fla_us"] > 0 and row["fla_o_err"] < 1e-2 and row["fla_state_err"] < 1e-2
    assert any(line.startswith("FLA") for line in data["summary"])
