"""The chunked gated delta rule of one prefill chunk (kernels_cu/gated_delta.cu): Gated DeltaNet's core,
in WY chunks of 64 tokens, as two kernels -- the intra-chunk factors of every chunk at once, then the
sequential pass over the chunks that carries the state.

The state is read from and written back to device memory by the kernels, and nothing in a launch
depends on where the chunk sits in the prompt, so one captured CUDA graph serves every chunk of the
same length. The workspace (`Workspace`) holds what the first kernel leaves for the second; the engine
allocates it once, outside any capture (`workspace`, or `workspace_specs` + `workspace_from` for a
buffer set).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from impbench.kernels.checks import check_array
from impbench.kernels.modules import get_function
from impbench.plan.cost import GDN_CHUNK as CHUNK

FAMILY = "gated_delta"  # CHUNK: the WY chunk the plan counts is the one the kernels run
GEOMETRIES = ((128, 128), (32, 32))  # (dk, dv) the family is built for: Qwen3.5 / 3.6, the tiny preset
BLOCK_V = 32  # value columns per block of the state pass
PREP_THREADS = 128
STATE_THREADS = 256
_PAD = 8  # halves of padding per shared row (kernels_cu/gated_delta.cu)


def check_geometry(dk: int, dv: int) -> None:
    if (dk, dv) not in GEOMETRIES:
        built = ", ".join(f"({k}, {v})" for k, v in GEOMETRIES)
        raise ValueError(f"gated_delta: head dims (dk, dv) = ({dk}, {dv}) are not built; built: {built}")


def prep_smem_bytes(dk: int) -> int:
    """Dynamic shared memory of gated_delta_prep_k<dk> (PrepGeometry<DK>::SMEM_BYTES): Q, K, A, T in
    FP16, the FP32 diagonal blocks of A, gamma and beta. The kernel traps if it gets less."""
    return (2 * CHUNK * (dk + _PAD) + 2 * CHUNK * (CHUNK + _PAD)) * 2 + (4 * 16 * 17 + 2 * CHUNK) * 4


def state_smem_bytes(dk: int) -> int:
    """Dynamic shared memory of gated_delta_state_k<dk>_v* (StateGeometry<DK>::SMEM_BYTES): two stages of
    Q, K, T, Aqk, the value slice and (gamma, beta); then S, R, v' and the decayed v'."""
    stage = (2 * CHUNK * (dk + _PAD) + 2 * CHUNK * (CHUNK + _PAD) + CHUNK * (BLOCK_V + _PAD)) * 2 + CHUNK * 2 * 4
    return 2 * stage + (dk * (BLOCK_V + _PAD) + 3 * CHUNK * (BLOCK_V + _PAD)) * 2


# -- the workspace -------------------------------------------------------------------------------

WORK_FIELDS = ("t_inv", "aqk", "gamma_beta")


@dataclass(frozen=True)
class Workspace:
    """What the first kernel leaves for the second, per value head and token row: t_inv fp16
    [Hv, rows, 64] (T = (I + A)^{-1} of each WY chunk), aqk fp16 [Hv, rows, 64] (its decayed Q K^T), both
    lower triangular and written only in the 16x16 blocks on and below the diagonal (the second kernel
    reads no others); gamma_beta fp32 [Hv, rows, 2] (the cumulative log decay in log2 units, and beta).
    rows >= the tokens of any chunk it serves."""

    t_inv: object
    aqk: object
    gamma_beta: object

    @property
    def rows(self) -> int:
        return int(self.t_inv.shape[1])

    @property
    def value_heads(self) -> int:
        return int(self.t_inv.shape[0])


def workspace_specs(max_tokens: int, value_heads: int, dk: int, dv: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of the workspace for chunks of up to `max_tokens` tokens (rows rounded up
    to a whole WY chunk). dk and dv only pick the kernels; an unbuilt pair is refused here."""
    check_geometry(dk, dv)
    if max_tokens < 1 or value_heads < 1:
        raise ValueError(f"gated_delta workspace: need max_tokens >= 1 and value heads >= 1, got {max_tokens}, {value_heads}")
    rows = -(-max_tokens // CHUNK) * CHUNK
    f16, f32 = np.dtype(np.float16), np.dtype(np.float32)
    return {"t_inv": ((value_heads, rows, CHUNK), f16), "aqk": ((value_heads, rows, CHUNK), f16),
            "gamma_beta": ((value_heads, rows, 2), f32)}  # fmt: skip


def workspace(max_tokens: int, value_heads: int, dk: int, dv: int) -> Workspace:
    """Allocate a workspace (outside any capture: this is a device allocation)."""
    import cupy

    specs = workspace_specs(max_tokens, value_heads, dk, dv)
    return Workspace(**{name: cupy.empty(shape, dtype) for name, (shape, dtype) in specs.items()})


def workspace_from(buffers, prefix: str = "") -> Workspace:
    """The workspace held by a buffer set under the names of workspace_specs, each with `prefix`."""
    return Workspace(**{name: getattr(buffers, prefix + name) for name in WORK_FIELDS})


# -- launches ------------------------------------------------------------------------------------


def _check_aligned(name: str, arr, nbytes: int = 16) -> None:
    if arr.data.ptr % nbytes:
        raise ValueError(f"{name} must start on a {nbytes}-byte boundary (cp.async), got address {arr.data.ptr:#x}")


def _plan(q, k, v, g, beta, state, out, work):
    """Check every argument once; return [(kernel, grid, block, args, shared bytes)] of both launches."""
    check_array("q", q, np.float16, ndim=3)
    tokens, key_heads, dk = q.shape
    check_array("k", k, np.float16, shape=q.shape)
    check_array("v", v, np.float16, ndim=3)
    if v.shape[0] != tokens:
        raise ValueError(f"v {tuple(v.shape)} and q {tuple(q.shape)} disagree on the token count")
    value_heads, dv = v.shape[1], v.shape[2]
    check_geometry(dk, dv)
    if tokens < 1:
        raise ValueError(f"gated_delta: q {tuple(q.shape)} has no tokens")
    if key_heads < 1 or value_heads % key_heads:
        raise ValueError(f"gated_delta: value heads ({value_heads}) must be a multiple of key heads ({key_heads})")
    check_array("g", g, np.float32, shape=(tokens, value_heads))
    check_array("beta", beta, np.float32, shape=(tokens, value_heads))
    check_array("state", state, np.float32, shape=(value_heads, dk, dv))
    check_array("out", out, np.float16, shape=(tokens, value_heads, dv))
    if not isinstance(work, Workspace):  # a ValueError like every other argument check here
        raise ValueError(  # noqa: TRY004
            f"work must be a gated_delta.Workspace (gated_delta.workspace(...)), got {type(work).__name__}")
    rows = work.rows
    check_array("work.t_inv", work.t_inv, np.float16, ndim=3)
    if work.value_heads != value_heads or rows < tokens or rows % CHUNK:
        raise ValueError(f"work.t_inv {tuple(work.t_inv.shape)} does not serve {tokens} tokens of {value_heads} value heads: "
                         f"allocate gated_delta.workspace(max_tokens >= {tokens}, {value_heads}, {dk}, {dv})")  # fmt: skip
    check_array("work.t_inv", work.t_inv, np.float16, shape=(value_heads, rows, CHUNK))
    check_array("work.aqk", work.aqk, np.float16, shape=(value_heads, rows, CHUNK))
    check_array("work.gamma_beta", work.gamma_beta, np.float32, shape=(value_heads, rows, 2))
    for name, arr in (("q", q), ("k", k), ("v", v), ("out", out), ("work.t_inv", work.t_inv), ("work.aqk", work.aqk),
                      ("work.gamma_beta", work.gamma_beta)):  # fmt: skip
        _check_aligned(name, arr)
    _check_aligned("state", state, 8)

    counts = (np.int32(tokens), np.int32(key_heads), np.int32(value_heads), np.int32(rows))
    prep_smem, state_smem = prep_smem_bytes(dk), state_smem_bytes(dk)
    prep = get_function(FAMILY, f"gated_delta_prep_k{dk}", max_dynamic_smem=prep_smem)
    rule = get_function(FAMILY, f"gated_delta_state_k{dk}_v{dv}", max_dynamic_smem=state_smem)
    chunks = -(-tokens // CHUNK)
    return [
        (prep, (chunks, value_heads), (PREP_THREADS,), (q, k, g, beta, work.t_inv, work.aqk, work.gamma_beta, *counts),
         prep_smem),
        (rule, (dv // BLOCK_V, value_heads), (STATE_THREADS,),
         (q, k, v, work.t_inv, work.aqk, work.gamma_beta, state, out, *counts), state_smem),
    ]  # fmt: skip


def prepare(q, k, v, g, beta, state, out, work, kernels: str = "both"):
    """Check once; return a no-argument launcher of the whole rule for this chunk (both kernels, each
    pre-packed: impbench.kernels.driver); `kernels="prep"` launches the first alone (benchmarks time
    the two apart: the state pass is the whole minus it). Shapes: q, k fp16 [T, Hk, dk] (q L2-normalised and scaled by
    1/sqrt(dk), k L2-normalised); v fp16 [T, Hv, dv], value head h reads key head h // (Hv // Hk);
    g (log decay, <= 0) and beta fp32 [T, Hv]; state fp32 [Hv, dk, dv], the state before the chunk,
    overwritten with the state after it; out fp16 [T, Hv, dv]; work a Workspace of at least T rows.
    Any T >= 1; (dk, dv) one of GEOMETRIES. Launches on the current stream; never synchronizes."""
    from impbench.kernels.driver import packed

    if kernels not in ("both", "prep"):
        raise ValueError(f"kernels must be 'both' or 'prep', got {kernels!r}")
    plans = _plan(q, k, v, g, beta, state, out, work)
    launches = [packed(functools.partial(kernel, grid, block, args, shared_mem=smem))
                for kernel, grid, block, args, smem in plans[: 1 if kernels == "prep" else 2]]  # fmt: skip

    def launch() -> None:
        for run in launches:
            run()

    return launch


def chunk_gated_delta(q, k, v, g, beta, state, out, work) -> None:
    """Run the rule on one chunk now (prepare, then launch; see prepare for the arguments)."""
    prepare(q, k, v, g, beta, state, out, work)()


def prewarm() -> None:
    """Compile the family and raise every kernel's shared-memory limit outside any capture."""
    for dk, dv in GEOMETRIES:
        get_function(FAMILY, f"gated_delta_prep_k{dk}", max_dynamic_smem=prep_smem_bytes(dk))
        get_function(FAMILY, f"gated_delta_state_k{dk}_v{dv}", max_dynamic_smem=state_smem_bytes(dk))
