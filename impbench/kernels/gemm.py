"""Capture-safe dense FP16 GEMM (kernels_cu/gemm_fp16.cu): C[M,N] = A[M,K] . W[N,K]^T.

FP16 in, FP32 accumulation, FP16 out; any M >= 1, any N >= 1, K a multiple of 8; all arrays cupy,
C-contiguous. `gemm` launches one kernel on the current stream: it never allocates, never syncs and
never reads device memory on the host, so it can run inside a CUDA-graph capture in global mode.
Deterministic (split-K is summed in a fixed order, inside a block or across a cluster through
distributed shared memory): a replay is bit-identical to the eager call.

Families: `mma_*` (mma.sync, sm_80+), `wgmma_*` (cp.async-fed wgmma, sm_90a) and `tma_*` (the main
one on Hopper: TMA-fed, warp-specialised, persistent wgmma; `c2` = 2-CTA clusters multicasting W,
`kS` = split-K over a cluster of S CTAs). A `tma_*` launch carries two CUtensorMaps (A and W) by
value; `prepare` encodes them on the host (cuTensorMapEncodeTiled, no device call), so a prepared
launcher is bound to its buffers, as every prepared launcher is.

Tile variants (VARIANTS) and the dispatch guard:
- `tight`: only shapes with M >= 128 and N >= 128, on a large (128-row, >= 128-column) tile;
  every other shape declines to cuBLAS (None), which under capture means capture failure.
- `permissive`: every shape, always on a large tile: the original engine's behaviour, which put
  M=512 N=32 K=2048 on 4 blocks with 75% of the MMA work on padding.
- `small-n`: every shape, on the variant with the lowest modelled time among all of them (small
  tiles and split-K included), so the shapes tight declines get the small-N variants.
`choose_variant` picks by a wave-quantised time model (`estimate_us`) calibrated on the H100.
IMPBENCH_GEMM_VARIANTS (comma-separated names), where set, restricts the variants it may pick.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from functools import lru_cache

from impbench.kernels.modules import get_function, load_module
from impbench.kernels.checks import check_array
from impbench.kernels import driver

FAMILY = "gemm_fp16"
CUBLAS = "cublas"
TIGHT_BM = TIGHT_BN = 128  # the guard's "N >= BN and M >= BM"
MAX_GRID_Y = 65535
LAUNCH_US = 2.0  # time model: launch and ramp of one kernel
L2_BYTES_PER_CLK = 64.0  # time model: L2 -> SM bytes per clock per SM
DRAM_BYTES_PER_US = 3.0e6  # time model: 3.0 TB/s


@dataclass(frozen=True)
class Variant:
    """One extern "C" tile kernel of gemm_fp16.cu; must match its IMPGEMM_* line there."""

    name: str  # kernel name is "gemm_" + name
    family: str  # "mma" (mma.sync, sm_80+) or "wgmma" (sm_90a)
    bm: int
    bn: int
    bk: int
    threads: int
    smem_bytes: int  # dynamic shared memory per block
    regs: int  # registers per thread (ptxas -v, sm_90a): occupancy in the time model
    split_k: int = 1  # ways K is split: warps of a block (mma), CTAs of a cluster (tma kS)
    # time model (estimate_us), fitted to an H100 sweep: sustained FLOP per SM clock of a full SM,
    # fixed cost per block (tma: per work unit, i.e. the epilogue)
    flop_per_clk: float = 2000.0
    fixed_us: float = 1.0
    iter_us: float = 0.0  # floor per K stage of one block: load latency over the pipeline depth
    multicast: int = 1  # tma: CTAs of a cluster sharing (multicasting) each W tile
    last_us: float = 0.0  # tma time model: cost paid once (the exposed epilogue of the last tile)
    stages: int = 0  # tsk: K steps in flight per CTA (the time model's refill rounds)
    chunks: int = 1  # tsk: 64-wide K chunks a stage (2: one 3-D TMA box per operand where K % 64 == 0)

    @property
    def kernel_name(self) -> str:
        return "gemm_" + self.name

    @property
    def large(self) -> bool:
        """A tile the large-tile guards (tight, permissive) may use; tsk is the small-n policy's
        small-N split-K family whatever its tile."""
        return self.bm >= TIGHT_BM and self.bn >= TIGHT_BN and self.family != "tsk"

    @property
    def cluster(self) -> int:
        """CTAs per thread-block cluster (1: no cluster)."""
        if self.family == "tsk":
            return self.split_k
        return self.multicast if self.family != "tma" or self.split_k == 1 else self.split_k

    @property
    def tensor_maps(self) -> bool:
        """Launched with TMA tensor maps built by `prepare` (tma and tsk families)."""
        return self.family in ("tma", "tsk")

    @property
    def w_box_rows(self) -> int:
        """W rows of one TMA box: half the tile where a pair multicasts it, else the whole tile."""
        return self.bn // self.multicast

    def units(self, m: int, n: int) -> int:
        """Work units (tma: one per cluster and step; tsk: one per cluster): output tiles, or pairs of M
        tiles where a tma pair multicasts W."""
        return -(-(-(-m // self.bm)) // self.multicast) * -(-n // self.bn)

    def grid(self, m: int, n: int, clusters: int | None = None) -> tuple[int, int]:
        """Launch grid. tma: (CTAs, 1); persistent (no split-K) with at most `clusters` clusters
        resident (default: one CTA per SM of an H100)."""
        if self.family == "tsk":
            return (self.units(m, n) * self.split_k, 1)
        if self.family != "tma":
            return (-(-m // self.bm), -(-n // self.bn))
        units = self.units(m, n)
        if self.split_k > 1:
            return (units * self.split_k, 1)
        clusters = H100.sms // self.cluster if clusters is None else clusters
        return (min(units, clusters) * self.cluster, 1)

    def blocks_per_sm(self) -> int:
        by_smem = (228 * 1024) // (self.smem_bytes + 1024)
        regs_per_warp = -(-self.regs * 32 // 256) * 256
        by_regs = 65536 // (regs_per_warp * (self.threads // 32))
        return max(1, min(by_smem, by_regs, 2048 // self.threads, 32))


def _v(name, family, bm, bn, bk, threads, smem, regs, split_k=1, flop_per_clk=2000.0, fixed_us=1.0, iter_us=0.0):
    return Variant(name, family, bm, bn, bk, threads, smem, regs, split_k, flop_per_clk, fixed_us, iter_us)


def _tma(bn, stages, multicast=1, split_k=1, flop_per_clk=2500.0, fixed_us=0.5, last_us=0.0, store_warps=False):
    """A gemm_tma_* entry point: tile 128 x bn x 64, 384 threads (TmaConfig in gemm_fp16.cu)."""
    suffix = f"c{multicast}" if multicast > 1 else f"k{split_k}" if split_k > 1 else "s" if store_warps else ""
    # epilogue staging: none (split-K), the whole output tile (store warps), or 16 x 64 per consumer warp
    staging = 0 if split_k > 1 else 128 * (2 * bn + 16) if store_warps else 8 * 16 * 144
    smem = stages * (128 + bn) * 64 * 2 + staging + 1024
    return Variant(f"tma_128x{bn}{suffix}", "tma", 128, bn, 64, 384, smem, 168, split_k, flop_per_clk, fixed_us,
                   0.0, multicast, last_us)  # fmt: skip


def _tsk(bm, bn, stages, split_k, regs, fixed_us=0.0, chunks=1):
    """A gemm_tsk_* entry point: tile bm x bn, K steps of `chunks` x 64, bm/64 warpgroups, a cluster of
    split_k CTAs over K (TskConfig in gemm_fp16.cu); fixed_us: this variant's cost over the time model."""
    receive = (split_k - 1) * bm * bn * 4 // split_k  # the other ranks' FP32 partials of this rank's columns
    smem = stages * chunks * (bm + bn) * 64 * 2 + receive + 1024
    # s: one CTA per SM; p: two chunks a stage
    suffix = (f"s{stages}" if smem > 113 * 1024 else "") + ("p" if chunks == 2 else "")
    return Variant(f"tsk_{bm}x{bn}k{split_k}{suffix}", "tsk", bm, bn, 64 * chunks, 128 * bm // 64, smem, regs,
                   split_k, 2500.0, fixed_us, 0.0, 1, 0.0, stages, chunks)  # fmt: skip


# fmt: off
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    #  name               family   BM  BN  BK thr   smem regs splitK FLOP/clk fixed_us iter_us
    _v("mma_128x128",      "mma",   128, 128,  32, 128,  65536,  241,      1,   1300.0,     6.25,    0.50),
    _v("mma_64x128",       "mma",    64, 128,  32, 128,  49152,  167,      1,   1050.0,     6.00,    0.35),
    _v("mma_64x64k2",      "mma",    64,  64,  64, 256,  65536,   93,      2,    850.0,     2.50,    0.40),
    _v("mma_32x64k4",      "mma",    32,  64,  64, 256,  49152,   73,      4,    700.0,     2.50,    0.30),
    _v("mma_16x64k8",      "mma",    16,  64, 128, 512,  81920,   54,      8,    400.0,     2.00,    0.45),
    _v("mma_16x32k8",      "mma",    16,  32, 128, 256,  49152,   58,      8,    450.0,     2.25,    0.35),
    _v("mma_16x16k8",      "mma",    16,  16, 128, 256,  32768,   40,      8,    300.0,     1.50,    0.30),
    _v("mma_32x64k4s8",    "mma",    32,  64,  64, 256,  98304,   72,      4,    650.0,     3.25,    0.30),
    _v("mma_16x16k8s8",    "mma",    16,  16, 128, 256,  65536,   39,      8,    300.0,     1.00,    0.35),
    _v("wgmma_128x128",    "wgmma", 128, 128,  64, 256, 132096,  150,      1,   2300.0,     5.75,    0.00),
    _v("wgmma_128x128s6",  "wgmma", 128, 128,  64, 256, 197632,  150,      1,   2350.0,     5.50,    0.00),
    _v("wgmma_64x128s6",   "wgmma",  64, 128,  64, 128, 148480,  192,      1,   1550.0,     3.75,    0.00),
    _v("wgmma_64x64s8",    "wgmma",  64,  64,  64, 128, 132096,   90,      1,   1050.0,     2.50,    0.00),
    _v("wgmma_ws_128x128", "wgmma", 128, 128,  64, 384, 197632,  168,      1,   2100.0,     5.00,    0.00),
    # TMA family: sustained FLOP per SM clock, fixed_us per work unit and last_us once, fitted to the
    # sweeps of device calls 4 and 6 (every tma variant on the 63 model shapes; rms log error 4-7%,
    # 12-15% for BN 64/96). c1 = plain persistent, c2 = W multicast, kS = split-K, s = store warps.
    #    BN stages multicast split  FLOP/clk fixed_us last_us
    _tma( 64, 8, 1, 1, 2350.0, 2.55, 0.00),
    _tma( 96, 7, 1, 1, 3135.0, 2.98, 0.20),
    _tma(128, 6, 1, 1, 3738.0, 3.04, 1.66),
    _tma(144, 6, 1, 1, 3686.0, 2.79, 1.95),
    _tma(160, 5, 1, 1, 3789.0, 2.96, 2.13),
    _tma(176, 5, 1, 1, 3824.0, 3.46, 2.18),
    _tma(192, 5, 1, 1, 3805.0, 3.16, 2.35),
    _tma(224, 4, 1, 1, 3857.0, 3.95, 2.16),
    _tma(256, 4, 1, 1, 3877.0, 5.05, 1.26),
    _tma(128, 5, flop_per_clk=3658.0, fixed_us=2.34, last_us=4.30, store_warps=True),
    _tma(144, 5, flop_per_clk=3731.0, fixed_us=2.33, last_us=4.74, store_warps=True),
    _tma(160, 5, flop_per_clk=3864.0, fixed_us=2.49, last_us=5.16, store_warps=True),
    _tma(176, 4, flop_per_clk=3772.0, fixed_us=2.43, last_us=5.02, store_warps=True),
    _tma(192, 4, flop_per_clk=3848.0, fixed_us=3.03, last_us=4.85, store_warps=True),
    _tma(256, 3, flop_per_clk=3821.0, fixed_us=3.88, last_us=4.82, store_warps=True),
    _tma(128, 6, 2, 1, 3716.0, 2.62, 3.68),
    _tma(144, 6, 2, 1, 3776.0, 2.71, 3.74),
    _tma(256, 4, 2, 1, 3911.0, 5.47, 2.02),
    _tma( 64, 8, 1, 2, 1765.0, 4.66, 1.35),
    _tma(128, 6, 1, 2, 2851.0, 6.48, 1.74),
    _tma(176, 5, 1, 2, 3127.0, 7.93, 0.74),
    _tma(128, 6, 1, 4, 2372.0, 5.47, 2.26),
    # small-N split-K family (v7, v9): every stage in flight, partials pushed to their owner rank;
    # 4-CTA clusters, and (v9) 2-CTA clusters, with which every SM of a GPC is usable, so 128-CTA
    # grids run one CTA per SM (k8 and 64x256 tiles were slower on every shape in v7)
    #     BM   BN stages split regs fixed_us
    # fixed_us: a variant's mean residual under the fit below, where it is 0.25 µs or more
    _tsk( 64,  64,  6, 4, 58, -0.85),
    # p: two K chunks a stage in one 3-D box per operand (v10)
    _tsk( 64,  64,  6, 2, 58, -0.25, chunks=2),
    _tsk( 64,  64,  6, 1, 58, -0.38, chunks=2),  # fixed_us: on grids of >= 128 CTAs, the only ones it can win
    _tsk( 64, 128,  4, 2, 90, chunks=2),
)}
# fmt: on
# time model of the tma family (fitted with the per-variant constants above):
TMA_BASE_US = 1.00  # launch, barriers, tensor-map fetch, first loads, teardown (with last_us)
TMA_BUSY_SLOWDOWN = 0.108  # the per-SM rate falls as more SMs run (clocks under load)
TMA_DRAM_SLOWDOWN = 0.134  # ... and with DRAM bytes per FLOP (lm_head at M=512 streams W)
TMA_REF_FLOP_PER_CLK = 3000.0  # reference rate of the DRAM term


@dataclass(frozen=True)
class GuardPolicy:
    """Which dense GEMM shapes go to our kernel, and on which tiles (see the module docstring)."""

    name: str
    accepts_small: bool  # shapes with M < TIGHT_BM or N < TIGHT_BN
    small_tiles: bool  # may use variants smaller than 128x128
    description: str


POLICIES: dict[str, GuardPolicy] = {
    p.name: p
    for p in (
        GuardPolicy("tight", False, False, "large tile only where M >= 128 and N >= 128; else cuBLAS"),
        GuardPolicy("permissive", True, False, "large tile for every shape (the original engine's kernel)"),
        GuardPolicy("small-n", True, True, "tight, plus small-tile / split-K variants for the rest"),
    )
}
DEFAULT_POLICY = "small-n"


def get_policy(policy) -> GuardPolicy:
    if isinstance(policy, GuardPolicy):
        return policy
    found = POLICIES.get(policy)
    if found is None:
        raise ValueError(f"unknown GEMM guard policy {policy!r}; accepted: {', '.join(POLICIES)}")
    return found


@dataclass(frozen=True)
class DeviceInfo:
    sms: int
    compute_capability: str  # "90" on H100 / H200
    sm_mhz: float  # clock the time model assumes under load

    @property
    def has_wgmma(self) -> bool:
        return self.compute_capability == "90"


H100 = DeviceInfo(132, "90", 1980.0)


@lru_cache(maxsize=None)
def device_info() -> DeviceInfo:
    """The current device's SM count and compute capability (H100 figures where no GPU is usable)."""
    try:
        import cupy

        device = cupy.cuda.Device()
        sms = device.attributes["MultiProcessorCount"]
        return DeviceInfo(int(sms), str(device.compute_capability), H100.sm_mhz)
    except Exception:  # no driver / no device: CPU machines plan with the H100
        return H100


def check_shape(m: int, n: int, k: int) -> None:
    if m < 1 or n < 1 or k < 8 or k % 8:
        raise ValueError(f"GEMM shape M={m} N={n} K={k}: need M >= 1, N >= 1 and K a positive multiple of 8")


def estimate_us(variant: Variant, m: int, n: int, k: int, device: DeviceInfo = H100) -> float:
    """Modelled device time of one launch: waves of blocks, each a fixed cost plus its K loop."""
    if variant.family == "tma":
        return _estimate_tma_us(variant, m, n, k, device)
    if variant.family == "tsk":
        return _estimate_tsk_us(variant, m, n, k, device)
    gx, gy = variant.grid(m, n)
    occupancy = variant.blocks_per_sm()
    full_waves, tail = divmod(gx * gy, device.sms * occupancy)
    k_pad = -(-k // variant.bk) * variant.bk
    block_work_us = max(
        2.0 * variant.bm * variant.bn * k_pad / (variant.flop_per_clk * device.sm_mhz),
        2.0 * (variant.bm + variant.bn) * k_pad / (L2_BYTES_PER_CLK * device.sm_mhz),
    )
    latency_us = variant.iter_us * (k_pad // variant.bk)  # a K loop bound by load latency
    # In a full wave each block shares its SM with occupancy - 1 others; the last, partial wave
    # puts ceil(tail / sms) blocks on an SM.
    full_us = full_waves * (variant.fixed_us + max(block_work_us * occupancy, latency_us))
    tail_us = 0.0 if tail == 0 else variant.fixed_us + max(block_work_us * -(-tail // device.sms), latency_us)
    dram_us = 2.0 * (m * k + n * k + m * n) / DRAM_BYTES_PER_US  # every byte once, at least
    return LAUNCH_US + max(full_us + tail_us, dram_us)


def _estimate_tma_us(v: Variant, m: int, n: int, k: int, device: DeviceInfo) -> float:
    """tma: one CTA per SM; rounds of work units per cluster, each a fixed cost (epilogue, pipeline
    ramp; split-K: the reduction) plus K stages of one tile at the variant's rate, which falls with
    the fraction of SMs busy and with the DRAM traffic per FLOP."""
    k_tiles = -(-k // v.bk)
    units = v.units(m, n)
    if v.split_k > 1:  # one unit per cluster; clusters of 4 and 8 fit only 30 / 15 at once on an H100 (GPCs)
        slots = device.sms // v.split_k if v.split_k <= 2 else int(device.sms * 0.91) // v.split_k
        ctas = min(units, slots) * v.split_k
        rounds = -(-units // slots)
        k_tiles = -(-k_tiles // v.split_k)
    else:
        clusters = min(units, device.sms // v.cluster)
        ctas = clusters * v.cluster
        rounds = -(-units // clusters)
    busy = min(ctas, device.sms) / device.sms
    flop_clk = rounds * k_tiles * 2.0 * v.bm * v.bn * v.bk  # FLOP of one SM's work, padding included
    dram_us = 2.0 * (m * k + n * k + m * n) / DRAM_BYTES_PER_US
    dram_ratio = dram_us / (flop_clk / (TMA_REF_FLOP_PER_CLK * device.sm_mhz))
    flop_us = flop_clk / (v.flop_per_clk * device.sm_mhz) * (1 + TMA_BUSY_SLOWDOWN * busy) * (1 + TMA_DRAM_SLOWDOWN * dram_ratio)
    return TMA_BASE_US + v.last_us + rounds * v.fixed_us + max(flop_us, dram_us)


# time model of the tsk family: a linear fit (rms log error 6%) to its twelve variants on the 12 router /
# N <= 1024 shapes of two H200 sweeps of v9-v10 (results/NOTES.md; the H100 gave ~the same router times): a
# launch-to-last-store floor, one SM's intake of its CTAs' K slices, DRAM bytes, L2 -> SM bytes of the grid,
# refill rounds (K tiles past the pipeline, in turn), the partials a rank receives, and extra waves
TSK_BASE_US = 4.95
TSK_US_PER_SM_100KB = 0.462
TSK_US_PER_DRAM_MB = 0.146
TSK_US_PER_L2_MB = 0.016
TSK_US_PER_REFILL_ROUND = 0.482
TSK_US_PER_RECEIVE_KB = 0.068
TSK_US_PER_EXTRA_WAVE = 2.376
# clusters of S CTAs resident at once (cuOccupancyMaxActiveClusters / ncu on the H100), by CTAs per SM
TSK_CLUSTER_SLOTS = {(2, 2): 132, (2, 4): 62, (2, 8): 30, (1, 2): 66, (1, 4): 30, (1, 8): 15}
TSK_SM_SMEM_BYTES = 228 * 1024
# widest output the tsk model was fitted on: past it a W stream of hundreds of MB runs in waves of
# clusters the model never saw (the engine's last-token lm_head, 1x151936x2048, took 180 µs on
# tsk_64x128k2 against 150 on mma_16x16k8 on the H200)
TSK_MAX_N = 1024


def _estimate_tsk_us(v: Variant, m: int, n: int, k: int, device: DeviceInfo) -> float:
    """tsk: waves of resident clusters (two CTAs per SM below 113 KiB, a cluster within one GPC, so
    4- and 8-clusters leave SMs of each GPC unused); each SM takes in the K slices of the CTAs it
    holds; the grid moves every byte once from DRAM and (A once per N tile, W once per M tile) from
    L2 to the SMs; a K slice longer than the pipeline waits for refills; each rank receives the
    other ranks' FP32 partials of its columns."""
    steps_cta = -(-(-(-k // v.bk)) // v.split_k)  # K steps of bk = 64 x chunks
    ctas = v.grid(m, n)[0]
    w_rows = v.bn  # W rows a CTA asks L2 for
    per_sm = 2 if 2 * (v.smem_bytes + 2048) <= TSK_SM_SMEM_BYTES else 1

    def slots(ctas_per_sm: int) -> int:
        found = TSK_CLUSTER_SLOTS.get((ctas_per_sm, v.cluster), device.sms // v.cluster) * v.cluster
        return max(v.cluster, found * device.sms // H100.sms)

    waves = -(-ctas // slots(per_sm))
    sharing = min(per_sm, -(-min(ctas, slots(per_sm)) // min(device.sms, slots(1))))
    cta_kb = steps_cta * (v.bm + w_rows) * v.bk * 2 / 1024
    dram_mb = 2.0 * (m * k + n * k + m * n) / 1e6
    refill_rounds = max(0, -(-steps_cta // v.stages) - 1)
    receive_kb = (v.split_k - 1) * v.bm * v.bn * 4 / v.split_k / 1024
    return (TSK_BASE_US + v.fixed_us + TSK_US_PER_SM_100KB * waves * sharing * cta_kb / 100
            + TSK_US_PER_DRAM_MB * dram_mb + TSK_US_PER_L2_MB * ctas * cta_kb / 1024
            + TSK_US_PER_REFILL_ROUND * refill_rounds * waves + TSK_US_PER_RECEIVE_KB * receive_kb
            + TSK_US_PER_EXTRA_WAVE * (waves - 1))  # fmt: skip


def candidates(policy, device: DeviceInfo | None = None) -> list[Variant]:
    pol = get_policy(policy)
    device = device or device_info()
    allowed = [x.strip() for x in os.environ.get("IMPBENCH_GEMM_VARIANTS", "").split(",") if x.strip()]
    return [
        v
        for v in VARIANTS.values()
        if (pol.small_tiles or v.large)
        and (v.family == "mma" or device.has_wgmma)
        and (not allowed or v.name in allowed)
    ]


def choose_variant(m: int, n: int, k: int, policy=DEFAULT_POLICY, device: DeviceInfo | None = None) -> str | None:
    """The variant name our kernel runs this shape with under `policy`, or None (declined: cuBLAS)."""
    check_shape(m, n, k)
    pol = get_policy(policy)
    if not pol.accepts_small and (m < TIGHT_BM or n < TIGHT_BN):
        return None
    device = device or device_info()
    # tma tiles are >= 64 columns wide: narrower outputs (N=32, N=1) stay on the small mma tiles,
    # which already beat cuBLAS there (results/gemm_h100.md); the tsk model knows only N <= TSK_MAX_N
    usable = [
        v for v in candidates(pol, device)
        if v.grid(m, n)[1] <= MAX_GRID_Y and (not v.tensor_maps or n >= 64) and (v.family != "tsk" or n <= TSK_MAX_N)
    ]  # fmt: skip
    if not usable:
        return None
    return min(usable, key=lambda v: (estimate_us(v, m, n, k, device), v.name)).name


def prewarm() -> None:
    """Compile the family and fetch every usable kernel (with its shared-memory limit) outside capture."""
    load_module(FAMILY)
    for variant in candidates("small-n"):
        _kernel(variant)
        if variant.tensor_maps:
            max_clusters(variant.name)


def spin_kernel():
    """gemm_bench_spin(long long cycles): a one-thread kernel that busy-waits (benchmark helper)."""
    return get_function(FAMILY, "gemm_bench_spin")


def _kernel(variant: Variant):
    return get_function(FAMILY, variant.kernel_name, max_dynamic_smem=variant.smem_bytes)


def _check_args(a, w, out) -> tuple[int, int, int]:
    check_array("a", a, "float16", ndim=2)
    check_array("w", w, "float16", ndim=2)
    m, k = a.shape
    n, k_w = w.shape
    if k_w != k:
        raise ValueError(f"a {tuple(a.shape)} and w {tuple(w.shape)} disagree on K ({k} vs {k_w}); w is [N, K]")
    check_array("out", out, "float16", shape=(m, n))
    if m < 1 or n < 1 or k % 8 or k < 8:
        raise ValueError(f"a {tuple(a.shape)}, w {tuple(w.shape)}: need M >= 1, N >= 1, K a positive multiple of 8")
    for name, arr in (("a", a), ("w", w)):
        if arr.data.ptr % 16:
            raise ValueError(f"{name} {tuple(arr.shape)} must start 16-byte aligned (cp.async), got address {arr.data.ptr:#x}")
    if out.data.ptr % 2:
        raise ValueError(f"out {tuple(out.shape)} must be 2-byte aligned, got address {out.data.ptr:#x}")
    return m, n, k


def gemm(a, w, out, variant: str | None = None) -> None:
    """out[M,N] = a[M,K] . w[N,K]^T on the current stream (variant None: the small-n policy's choice)."""
    prepare(a, w, out, variant)()


def prepare(a, w, out, variant: str | None = None, group: int | None = None, tma_store: bool = True):
    """Check `gemm(a, w, out, variant)` once; return a no-argument callable that launches it.

    tsk variants (experiments): `group`, the tile order, bands of that many M tiles (tsk_group's choice if
    None); `tma_store` False stores the output from registers instead of one TMA store a CTA."""
    import numpy as np

    m, n, k = _check_args(a, w, out)
    name = variant or choose_variant(m, n, k, DEFAULT_POLICY)
    spec = VARIANTS.get(name)
    if spec is None:
        raise ValueError(f"unknown GEMM variant {name!r}; accepted: {', '.join(VARIANTS)}")
    if spec.family != "mma" and not device_info().has_wgmma:
        raise ValueError(f"GEMM variant {name!r} needs an sm_90 (Hopper) device")
    if spec.tensor_maps:
        return _tma_launcher(spec, a, w, out, m, n, k, group, tma_store)
    gx, gy = spec.grid(m, n)
    if gy > MAX_GRID_Y:
        raise ValueError(f"GEMM variant {name!r} cannot tile N={n} (w {tuple(w.shape)}): {gy} column tiles > {MAX_GRID_Y}")
    args = (a, w, out, np.int32(m), np.int32(n), np.int32(k))
    return functools.partial(_kernel(spec), (gx, gy), (spec.threads,), args, shared_mem=spec.smem_bytes)


# ---- tma: tensor maps and launches through the driver ---------------------------------------------


def _tensor_map(arr, box_rows: int, chunks: int = 1) -> driver.TensorMap:
    """The CUtensorMap of a row-major [rows, K] FP16 matrix: box 64 (K) x box_rows, 128-byte swizzle,
    out-of-bounds elements read as zero; chunks=2 (K % 64 == 0): the 3-D view [K/64, rows, 64] (64-wide
    K chunks outermost), box 64 x box_rows x 2 chunks, which lands as two consecutive swizzled tiles.
    Host-only (no device call): safe inside a capture."""
    rows, k = arr.shape
    if chunks == 2:
        return _fp16_map(arr, (64, rows, k // 64), (2 * k, 128), (64, box_rows, 2), driver.SWIZZLE_128B)
    return _fp16_map(arr, (k, rows), (2 * k,), (64, box_rows), driver.SWIZZLE_128B)


def _store_map(out, box_cols: int, box_rows: int) -> driver.TensorMap:
    """The CUtensorMap a tsk CTA stores its FP16 output box through: [M, N] row-major (N % 8 == 0), box
    box_cols x box_rows, swizzled over the box's row (32, 64 or 128 bytes; the kernel's staging layout)."""
    m, n = out.shape
    swizzle = {32: driver.SWIZZLE_32B, 64: driver.SWIZZLE_64B, 128: driver.SWIZZLE_128B}[2 * box_cols]
    return _fp16_map(out, (n, m), (2 * n,), (box_cols, box_rows), swizzle)


def _fp16_map(arr, dims, strides, box, swizzle) -> driver.TensorMap:
    return driver.TensorMap(arr.data.ptr, driver.FLOAT16, dims, strides, box, swizzle, driver.L2_PROMOTION_256B, keep=arr)


@lru_cache(maxsize=None)
def max_clusters(name: str) -> int:
    """Clusters of a tma variant that fit on the device at once (clustered kernels: a GPC's SMs may not
    pair up); its persistent grid uses no more."""
    spec = VARIANTS[name]
    fallback = device_info().sms // spec.cluster
    if spec.cluster == 1:
        return fallback
    return driver.max_active_clusters(_kernel(spec).kernel.ptr, spec.cluster, spec.threads, spec.smem_bytes, fallback)


def tsk_group(spec: Variant, m: int, n: int) -> int:
    """The tile order of a tsk launch (kernel tsk_tile): bands of this many M tiles, M fastest within.

    Consecutive clusters start on the same GPC, and the order decides which A and W lines those CTAs
    read together. Measured on the H200 (results/NOTES.md GEMM v12): at 512x1024x2048 (8 x 8 tiles, one
    wave) bands of 2 ask L2 for 15% fewer sectors than M-fastest and run the loop 0.5-0.75 us faster;
    on taller grids (2048x256) and on two-wave grids (1024x1024) M-fastest was as fast or faster."""
    mt, nt = -(-m // spec.bm), -(-n // spec.bn)
    one_wave = spec.grid(m, n)[0] <= device_info().sms
    return 2 if one_wave and nt >= mt else mt


def _tma_launcher(spec: Variant, a, w, out, m: int, n: int, k: int, group: int | None = None,
                  tma_store: bool = True):
    """A no-argument callable launching a tma variant on the current stream (driver.launcher):
    tensor maps passed by value, the argument block built once (clusters come from the kernel's
    compile-time __cluster_dims__)."""
    import ctypes

    # tsk "p" variants read 3-D maps where K % 64 == 0 (the kernel checks the same condition)
    chunks = spec.chunks if k % 64 == 0 else 1
    map_a, map_w = _tensor_map(a, spec.bm, chunks), _tensor_map(w, spec.w_box_rows, chunks)
    args = [map_a, map_w, out, ctypes.c_int32(m), ctypes.c_int32(n), ctypes.c_int32(k)]
    if spec.family == "tsk":  # + the output's map (TMA store where rows are 16-byte multiples), order, store mode
        # only split variants stage their columns for a TMA store (gemm_tsk_body); S = 1 stores from registers
        c_tma = tma_store and spec.split_k > 1 and n % 8 == 0 and out.data.ptr % 16 == 0
        args.insert(2, _store_map(out, spec.bn // spec.split_k, spec.bm) if c_tma else map_a)
        args += [ctypes.c_int32(tsk_group(spec, m, n) if group is None else group), ctypes.c_int32(int(c_tma))]
    gx, _ = spec.grid(m, n, max_clusters(spec.name))
    return driver.launcher(_kernel(spec).kernel.ptr, (gx, 1, 1), (spec.threads, 1, 1), spec.smem_bytes, args)


def dense_gemm(a, w, out, policy, counts: dict | None = None) -> str:
    """out = a . w^T through our kernel when `policy` accepts the shape, else cuBLAS (`cupy.matmul`).

    `policy` None means cuBLAS for every shape. Returns the path taken (variant name or "cublas")
    and adds one to counts[path] when a dict is given."""
    variant = None
    if policy is not None:
        variant = choose_variant(a.shape[0], w.shape[0], w.shape[1], policy)
    if variant is None:
        import cupy

        cupy.matmul(a, w.T, out=out)
        path = CUBLAS
    else:
        gemm(a, w, out, variant=variant)
        path = variant
    if counts is not None:
        counts[path] = counts.get(path, 0) + 1
    return path
