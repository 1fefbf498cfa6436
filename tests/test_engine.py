"""Engine: chunk planning (CPU), and on the GPU logits vs the float64 reference, eager == graph bit
for bit, capture in global mode after prewarm, and the loud fallback without prewarm."""

import random

import numpy as np
import pytest

from impbench.engine import plan_chunks
from impbench.errors import InputError


def test_plan_chunks_splits_prompt_with_short_last_chunk():
    chunks = plan_chunks(1100, 512)
    assert [(c.start, c.length, c.last) for c in chunks] == [(0, 512, False), (512, 512, False), (1024, 76, True)]
    assert [(c.start, c.length, c.last) for c in plan_chunks(300, 0)] == [(0, 300, True)]
    with pytest.raises(InputError):
        plan_chunks(0, 512)


def _tiny():
    from impbench.presets import get_preset

    return get_preset("tiny")


def _engine(prompt_tokens=80, chunk=32, prewarm=True, seed=None):
    from impbench.engine import Engine

    return Engine(_tiny(), prompt_tokens, chunk, seed=random.randrange(1 << 20) if seed is None else seed, prewarm=prewarm)


def _poison_logits(engine):
    import cupy

    engine.buffers.logits.fill(cupy.nan)


@pytest.mark.gpu
@pytest.mark.parametrize("guard", [None, "permissive"])
def test_engine_logits_match_float64_reference(guard):
    from impbench.engine.weights import reference_weights
    from impbench.reference import reference_forward

    prompt_tokens, chunk = 80, 32  # three chunks, the last one short
    engine = _engine(prompt_tokens, chunk)
    _poison_logits(engine)
    engine.prefill(prompt_tokens, chunk, mode="eager", guard=guard)
    logits = engine.logits()
    assert np.isfinite(logits).all()
    ids = engine.buffers.prompt_ids.get()[:prompt_tokens]
    ref = reference_forward(engine.preset, reference_weights(engine.weights), ids, chunk_size=chunk)
    rel_err = np.linalg.norm(logits - ref) / np.linalg.norm(ref)
    assert rel_err <= 1e-2, rel_err


@pytest.mark.gpu
def test_eager_and_graph_logits_are_bit_identical():
    prompt_tokens, chunk = 96, 32
    engine = _engine(prompt_tokens, chunk)
    _poison_logits(engine)
    engine.prefill(prompt_tokens, chunk, mode="eager", guard="permissive")
    eager = engine.logits()
    _poison_logits(engine)
    stats = engine.prefill(prompt_tokens, chunk, mode="graph", guard="permissive")
    status = engine.capture_status(chunk, "permissive")
    assert status.captured, status.describe()
    assert stats.graph_replays == 2
    graph = engine.logits()
    np.testing.assert_array_equal(eager, graph)
    # and again: the second prefill replays the same graph
    _poison_logits(engine)
    engine.prefill(prompt_tokens, chunk, mode="graph", guard="permissive")
    np.testing.assert_array_equal(eager, engine.logits())


@pytest.mark.gpu
def test_capture_declined_gemm_falls_back_naming_the_op():
    # tiny's router has N = 8 experts < the 128-wide tile: the tight guard sends it to cuBLAS,
    # which cannot run under capture, so the graph arm must fall back and say where.
    prompt_tokens, chunk = 64, 32
    engine = _engine(prompt_tokens, chunk)
    stats = engine.prefill(prompt_tokens, chunk, mode="graph", guard="tight")
    status = engine.capture_status(chunk, "tight")
    assert not status.captured
    assert status.failed_op in ("qkv_proj", "o_proj", "router")
    assert "capture" in status.error.lower()
    assert stats.graph_replays == 0 and stats.python_launches > 0
    assert np.isfinite(engine.logits()).all()


@pytest.mark.gpu
def test_no_prewarm_capture_fails_on_allocation_and_runs_eager():
    prompt_tokens, chunk = 64, 32
    engine = _engine(prompt_tokens, chunk, prewarm=False)
    engine.prefill(prompt_tokens, chunk, mode="graph", guard="permissive")
    status = engine.capture_status(chunk, "permissive")
    assert not status.captured
    assert status.failed_op.startswith("allocate ")
    assert "StreamCapture" in status.error or "capture" in status.error.lower()
    assert np.isfinite(engine.logits()).all()
