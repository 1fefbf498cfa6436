"""Capture-safe dense FP16 GEMM (kernels_cu/gemm_fp16.cu): C[M,N] = A[M,K] . W[N,K]^T.

FP16 in, FP32 accumulation, FP16 out; any M >= 1, any N >= 1, K a multiple of 8; all arrays cupy,
C-contiguous. `gemm` launches one kernel on the current stream: it never allocates, never syncs and
never reads device memory on the host, so it can run inside a CUDA-graph capture in global mode.
Deterministic (split-K is summed in a fixed order, inside a block or across a cluster through
distributed shared memory): a replay is bit-identical to the eager call.

Modules: `variants` (the table of tile kernels, which also generates their extern "C" entry points),
`dispatch` (guards, the rules that choose a variant, the time models), `launch` (checks, tensor
maps, prepared launchers).

Families: `mma_*` (mma.sync, any sm_80+ GPU), and on Hopper (sm_90a) `wgmma_*` (cp.async-fed wgmma),
`tma_*` (the main one: TMA-fed, warp-specialised, persistent wgmma; `c2` = 2-CTA clusters multicasting
W, `kS` = split-K over a cluster of S CTAs, `s` = store warps) and `tsk_*` (small-N split-K). tma and tsk
launches carry CUtensorMaps by value, encoded on the host by `prepare`, so a prepared launcher is bound
to its buffers, as every prepared launcher is.

Guards (GUARDS):
- `tight`: only shapes with M >= 128 and N >= 128, on a large (128-row, >= 128-column) tile; every
  other shape declines to cuBLAS (None), which under capture means capture failure.
- `permissive`: every shape, always on a large tile of any family (the fastest large tile by the model).
- `seed`: every shape on `mma_128x128`, the original engine's capture kernel (one 128x128x32 tile, 4 warps
  of 64x64), which put M=512 N=32 K=2048 on 4 blocks with 75% of the MMA work on padding; not narrowed
  by IMPBENCH_GEMM_VARIANTS, so the seed arm stays what it says.
- `small-n`: every shape, on the variant with the lowest modelled time among all of them (small
  tiles and split-K included), so the shapes tight declines get the small-N variants.

`choose_variant(m, n, k, guard, device=None, portable=False)` picks by a time model (`estimate_us`)
fitted on the H100 (tsk: the H200). `portable=True` chooses as a GPU without wgmma would, from the
mma.sync family only: on a Hopper it runs (and the GPU tests check) the kernels an A100 or an RTX 4090
would run. IMPBENCH_GEMM_VARIANTS (comma-separated names), where set, restricts the variants it may pick.
"""

from impbench.kernels.gemm.dispatch import (  # noqa: F401
    CUBLAS,
    DEFAULT_GUARD,
    H100,
    GUARDS,
    DeviceInfo,
    Guard,
    candidates,
    check_shape,
    choose_variant,
    estimate_us,
    get_guard,
    launchable,
)
from impbench.kernels.gemm.launch import (  # noqa: F401
    device_info,
    gemm,
    max_clusters,
    prepare,
    prewarm,
    tsk_group,
)
from impbench.kernels.gemm.variants import FAMILY, MAX_GRID_Y, VARIANTS, Variant  # noqa: F401
