"""Which variant runs a dense GEMM shape: guards, a few named rules, and the time models they use.

choose_variant(m, n, k, guard) applies, in order:
1. the guard (`declines`): tight sends every shape smaller than a large tile to cuBLAS (None);
2. the candidates, the same for every shape (`candidates`): families the GPU has (`family_usable`),
   tiles the guard allows (`tile_allowed`), names IMPBENCH_GEMM_VARIANTS allows; a pinned guard
   (seed: the original engine's kernel) has its one variant as the only candidate (`pinned_variant`);
3. the shape rules (`launchable`, `wide_enough_for_tma`, `within_tsk_fit`);
4. the fastest by the time model (`estimate_us`), ties broken by name.
The time models' fitted constants sit in TimeModelFit objects that name the GPU and the sweeps they were
fitted on; the per-variant constants are the table's (variants.py), fitted in the same sweeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from impbench.kernels.gemm.variants import (
    LARGE_TILE,
    MAX_GRID_Y,
    SEED_VARIANT,
    VARIANTS,
    Variant,
)

CUBLAS = "cublas"  # the path of a declined shape


@dataclass(frozen=True)
class DeviceInfo:
    """What the dispatch knows of a GPU."""

    sms: int
    compute_capability: str  # "90" on H100 / H200
    sm_mhz: float  # clock the time model assumes under load

    @property
    def has_wgmma(self) -> bool:
        return self.compute_capability == "90"


H100 = DeviceInfo(132, "90", 1980.0)


# ---- guards -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Guard:
    """Which dense GEMM shapes go to our kernel, and on which tiles."""

    name: str
    accepts_small: bool  # shapes with M or N below one large tile
    small_tiles: bool  # may use tiles smaller than 128x128, split-K and the tsk family
    description: str
    pinned: str = ""  # the one variant every shape runs on (a fixed configuration, no choice); "": chosen


GUARDS: dict[str, Guard] = {
    p.name: p
    for p in (
        Guard("tight", False, False, "large tile only where M >= 128 and N >= 128; else cuBLAS"),
        Guard("permissive", True, False, "a large tile (128x128 or wider, any family) for every shape"),
        Guard("small-n", True, True, "tight, plus small-tile / split-K variants for the rest"),
        Guard("seed", True, False, f"{SEED_VARIANT} for every shape: the original engine's capture GEMM",
              pinned=SEED_VARIANT),
    )
}  # fmt: skip
DEFAULT_GUARD = "small-n"


def get_guard(guard) -> Guard:
    """A guard by name (tight, permissive, small-n, seed); `cublas` takes no shape and is handled by choose_variant."""
    if isinstance(guard, Guard):
        return guard
    found = GUARDS.get(guard)
    if found is None:
        raise ValueError(f"unknown GEMM guard {guard!r}; accepted: {', '.join(GUARDS)}")
    return found


def check_shape(m: int, n: int, k: int) -> None:
    if m < 1 or n < 1 or k < 8 or k % 8:
        raise ValueError(f"GEMM shape M={m} N={n} K={k}: need M >= 1, N >= 1 and K a positive multiple of 8")


# ---- the rules ------------------------------------------------------------------------------------


def declines(guard: Guard, m: int, n: int) -> bool:
    """The guard: tight takes only shapes that fill at least one large tile (M >= 128 and N >= 128).

    It is the large-tile engine made safe: a small shape on a 128x128 tile wastes most of its MMA work
    on padding (M=512 N=32 K=2048 on 4 blocks, 75% padding), so tight hands it to cuBLAS instead, which
    under a CUDA-graph capture means the capture fails. permissive, small-n and seed take every shape."""
    return not guard.accepts_small and (m < LARGE_TILE or n < LARGE_TILE)


def family_usable(variant: Variant, device: DeviceInfo, portable: bool = False) -> bool:
    """wgmma, TMA and clusters exist only on sm_90a: elsewhere, or where `portable` asks for the kernels
    every sm_80+ GPU runs, only the mma.sync family is usable.

    On another GPU the sm_90a variants are compiled to a trap, so picking one would fail at run time;
    `portable` lets a Hopper run (the GPU tests) exercise the path an A100 or an RTX 4090 takes."""
    return variant.family == "mma" or (device.has_wgmma and not portable)


def tile_allowed(variant: Variant, guard: Guard) -> bool:
    """tight and permissive use large tiles only (the original engine's tile size); small-n any tile.

    small-n exists for the shapes a large tile wastes: small tiles, split-K and the tsk family fill the
    GPU on N=32 or on a 128-expert router where one 128x128 tile per 4 CTAs would not."""
    return guard.small_tiles or variant.large


def launchable(variant: Variant, m: int, n: int) -> bool:
    """mma and wgmma grids put the N tiles on grid y, which CUDA caps at 65535 (an N of 151936 on 1-column
    tiles would not launch); tma and tsk grids are one-dimensional."""
    return variant.grid(m, n)[1] <= MAX_GRID_Y


def wide_enough_for_tma(variant: Variant, n: int) -> bool:
    """tma and tsk tiles are at least 64 columns wide (the TMA box and the wgmma N): narrower outputs
    (N=32, N=8, N=1) stay on the small mma tiles, which beat cuBLAS there (results/gemm_h100.md)."""
    return not variant.tensor_maps or n >= 64


def within_tsk_fit(variant: Variant, n: int) -> bool:
    """The tsk model knows only the outputs it was fitted on (N <= TSK_FIT.max_n).

    Past that a W stream of hundreds of MB runs in waves of clusters the model never saw: the engine's
    last-token lm_head, 1x151936x2048, took 180 µs on tsk_64x128k2 against 150 on mma_16x16k8."""
    return variant.family != "tsk" or n <= TSK_FIT.max_n


def pinned_variant(guard: Guard) -> Variant | None:
    """The one variant a pinned guard runs every shape on, or None where the guard chooses.

    seed pins mma_128x128, the original engine's capture kernel (one 128x128x32 tile, 4 warps of 64x64),
    on every shape, so that an arm can run the configuration whose N=32 shapes made capture slower. It is a
    configuration, not a choice: IMPBENCH_GEMM_VARIANTS, which narrows what the other guards choose from,
    does not apply to it (the names are still checked), or an experiment's setting would silently turn
    the seed arm into something else."""
    return VARIANTS[guard.pinned] if guard.pinned else None


def candidates(guard, device: DeviceInfo | None = None, portable: bool = False) -> list[Variant]:
    """The variants `guard` may pick on `device` whatever the shape: usable families, allowed tiles, and
    the names IMPBENCH_GEMM_VARIANTS lists where it is set (experiments; impbench.env checks the names);
    a pinned guard's one variant where the GPU can run it."""
    from impbench import env

    rule = get_guard(guard)
    device = device or _current_device()
    allowed = set(env.gemm_variants()) or set(VARIANTS)
    pinned = pinned_variant(rule)
    if pinned is not None:
        return [pinned] if family_usable(pinned, device, portable) else []
    return [
        v for v in VARIANTS.values()
        if v.name in allowed and family_usable(v, device, portable) and tile_allowed(v, rule)
    ]  # fmt: skip


def choose_variant(m: int, n: int, k: int, guard=DEFAULT_GUARD, device: DeviceInfo | None = None,
                   portable: bool = False) -> str | None:  # fmt: skip
    """The variant our kernel runs this shape with under `guard`, or None (declined: cuBLAS).

    `device`: the GPU to plan for (default: the current one, an H100 where none is usable).
    `portable`: choose as a GPU without wgmma would, from the mma.sync family only, so that a Hopper run
    checks the path other GPUs take."""
    check_shape(m, n, k)
    if guard == CUBLAS:  # every dense GEMM on cuBLAS: the eager baseline
        return None
    rule = get_guard(guard)
    if declines(rule, m, n):
        return None
    device = device or _current_device()
    usable = [v for v in candidates(rule, device, portable)
              if launchable(v, m, n) and wide_enough_for_tma(v, n) and within_tsk_fit(v, n)]  # fmt: skip
    if not usable:
        return None
    return min(usable, key=lambda v: (estimate_us(v, m, n, k, device), v.name)).name


def _current_device() -> DeviceInfo:
    from impbench.kernels.gemm.launch import device_info

    return device_info()


# ---- time models ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeModelFit:
    """Fitted constants of one family's time model: the GPU and the sweeps they come from."""

    gpu: str
    source: str


@dataclass(frozen=True)
class BlockWaveFit(TimeModelFit):
    launch_us: float  # launch and ramp of one kernel
    l2_bytes_per_clk: float  # L2 -> SM bytes per clock per SM
    dram_bytes_per_us: float
    sm_smem_bytes: int  # shared memory of an SM, for occupancy


@dataclass(frozen=True)
class TmaFit(TimeModelFit):
    base_us: float  # launch, barriers, tensor-map fetch, first loads, teardown (with a variant's last_us)
    busy_slowdown: float  # the per-SM rate falls as more SMs run (clocks under load)
    dram_slowdown: float  # ... and with DRAM bytes per FLOP (lm_head at M=512 streams W)
    ref_flop_per_clk: float  # reference rate of the DRAM term
    dram_bytes_per_us: float
    big_cluster_sm_share: float  # SMs usable by clusters of 4 or 8 CTAs at one CTA per SM (GPC sizes)


@dataclass(frozen=True)
class TskFit(TimeModelFit):
    base_us: float  # launch to last store
    us_per_sm_100kb: float  # one SM's intake of its CTAs' K slices
    us_per_dram_mb: float
    us_per_l2_mb: float  # L2 -> SM bytes of the grid
    us_per_refill_round: float  # K steps past the pipeline, in turn
    us_per_receive_kb: float  # the FP32 partials a rank receives
    us_per_extra_wave: float
    max_n: int  # widest output of the fit
    sm_smem_bytes: int  # shared memory of an SM (two CTAs fit below half of it)
    # clusters of S CTAs resident at once, by (CTAs per SM, S): cuOccupancyMaxActiveClusters and ncu on the
    # H100; other SM counts scale it
    cluster_slots: dict
    cluster_slots_sms: int  # the SM count of the GPU cluster_slots was measured on


BLOCK_WAVE_FIT = BlockWaveFit(
    gpu="H100 80GB HBM3", source="docs/notes/gemm.md v1-v3 sweeps (mma, wgmma)",
    launch_us=2.0, l2_bytes_per_clk=64.0, dram_bytes_per_us=3.0e6, sm_smem_bytes=228 * 1024,
)  # fmt: skip
TMA_FIT = TmaFit(
    gpu="H100 80GB HBM3", source="docs/notes/gemm.md v6: the v4 and v5 sweeps of every tma variant on the 63 "
    "model shapes (rms log error 4-7%, 12-15% for BN 64/96)",
    base_us=1.00, busy_slowdown=0.108, dram_slowdown=0.134, ref_flop_per_clk=3000.0, dram_bytes_per_us=3.0e6,
    big_cluster_sm_share=0.91,
)  # fmt: skip
TSK_FIT = TskFit(
    gpu="H200", source="docs/notes/gemm.md v10: the v9 and v10 sweeps of the tsk variants on the 12 router / "
    "N <= 1024 shapes (rms log error 6%; the H100 gave about the same router times)",
    base_us=4.95, us_per_sm_100kb=0.462, us_per_dram_mb=0.146, us_per_l2_mb=0.016, us_per_refill_round=0.482,
    us_per_receive_kb=0.068, us_per_extra_wave=2.376, max_n=1024, sm_smem_bytes=228 * 1024,
    cluster_slots={(2, 2): 132, (2, 4): 62, (2, 8): 30, (1, 2): 66, (1, 4): 30, (1, 8): 15}, cluster_slots_sms=132,
)  # fmt: skip


def estimate_us(variant: Variant, m: int, n: int, k: int, device: DeviceInfo = H100) -> float:
    """Modelled device time of one launch of `variant` on this shape, by its family's model."""
    if variant.family == "tma":
        return tma_persistent_us(variant, m, n, k, device)
    if variant.family == "tsk":
        return tsk_split_k_us(variant, m, n, k, device)
    return block_waves_us(variant, m, n, k, device)


def blocks_per_sm(variant: Variant, fit: BlockWaveFit = BLOCK_WAVE_FIT) -> int:
    """Blocks of a variant resident on one SM: the least of what its shared memory (+1 KiB reserved per
    block), its registers (allocated per warp in 256s of a 64K file) and its threads allow."""
    by_smem = fit.sm_smem_bytes // (variant.smem_bytes + 1024)
    regs_per_warp = -(-variant.regs * 32 // 256) * 256
    by_regs = 65536 // (regs_per_warp * (variant.threads // 32))
    return max(1, min(by_smem, by_regs, 2048 // variant.threads, 32))


def block_waves_us(variant: Variant, m: int, n: int, k: int, device: DeviceInfo,
                   fit: BlockWaveFit = BLOCK_WAVE_FIT) -> float:  # fmt: skip
    """mma, wgmma: waves of blocks, each a fixed cost plus its K loop, bound by the variant's MMA rate, by
    L2 -> SM bytes, or by load latency (iter_us per stage); the whole launch at least moves every byte
    once from DRAM.

    Why waves: one grid of these kernels is not persistent, so a last, partial wave costs as much per
    block as a full one while leaving SMs idle -- the effect that makes tile size matter on small shapes."""
    gx, gy = variant.grid(m, n)
    occupancy = blocks_per_sm(variant, fit)
    full_waves, tail = divmod(gx * gy, device.sms * occupancy)
    k_pad = -(-k // variant.bk) * variant.bk
    block_work_us = max(
        2.0 * variant.bm * variant.bn * k_pad / (variant.flop_per_clk * device.sm_mhz),
        2.0 * (variant.bm + variant.bn) * k_pad / (fit.l2_bytes_per_clk * device.sm_mhz),
    )
    latency_us = variant.iter_us * (k_pad // variant.bk)  # a K loop bound by load latency
    # In a full wave each block shares its SM with occupancy - 1 others; the last, partial wave
    # puts ceil(tail / sms) blocks on an SM.
    full_us = full_waves * (variant.fixed_us + max(block_work_us * occupancy, latency_us))
    tail_us = 0.0 if tail == 0 else variant.fixed_us + max(block_work_us * -(-tail // device.sms), latency_us)
    dram_us = 2.0 * (m * k + n * k + m * n) / fit.dram_bytes_per_us  # every byte once, at least
    return fit.launch_us + max(full_us + tail_us, dram_us)


def tma_persistent_us(v: Variant, m: int, n: int, k: int, device: DeviceInfo, fit: TmaFit = TMA_FIT) -> float:
    """tma: one CTA per SM; rounds of work units per cluster, each a fixed cost (epilogue, pipeline ramp;
    split-K: the reduction) plus K stages of one tile at the variant's rate, which falls with the share
    of SMs busy and with the DRAM traffic per FLOP.

    Why rounds, not waves: the grid is persistent, so a shape's cost steps with ceil(units / clusters);
    split-K clusters of 4 or 8 CTAs fit only within a GPC, so fewer of them are resident than SMs / S."""
    k_tiles = -(-k // v.bk)
    units = v.units(m, n)
    if v.split_k > 1:  # one unit per cluster
        slots = device.sms // v.split_k if v.split_k <= 2 else int(device.sms * fit.big_cluster_sm_share) // v.split_k
        ctas = min(units, slots) * v.split_k
        rounds = -(-units // slots)
        k_tiles = -(-k_tiles // v.split_k)
    else:
        clusters = min(units, device.sms // v.cluster)
        ctas = clusters * v.cluster
        rounds = -(-units // clusters)
    busy = min(ctas, device.sms) / device.sms
    flop_clk = rounds * k_tiles * 2.0 * v.bm * v.bn * v.bk  # FLOP of one SM's work, padding included
    dram_us = 2.0 * (m * k + n * k + m * n) / fit.dram_bytes_per_us
    dram_ratio = dram_us / (flop_clk / (fit.ref_flop_per_clk * device.sm_mhz))
    flop_us = (flop_clk / (v.flop_per_clk * device.sm_mhz) * (1 + fit.busy_slowdown * busy)
               * (1 + fit.dram_slowdown * dram_ratio))  # fmt: skip
    return fit.base_us + v.last_us + rounds * v.fixed_us + max(flop_us, dram_us)


def tsk_split_k_us(v: Variant, m: int, n: int, k: int, device: DeviceInfo, fit: TskFit = TSK_FIT) -> float:
    """tsk: a linear fit over what bounds a latency-bound router GEMM. Waves of resident clusters (two CTAs
    per SM below half an SM's shared memory; a cluster within one GPC, so 4-clusters leave SMs of each GPC
    unused); each SM takes in the K slices of the CTAs it holds; the grid moves every byte once from DRAM
    and (A once per N tile, W once per M tile) from L2 to the SMs; a K slice longer than the pipeline waits
    for refills; each rank receives the other ranks' FP32 partials of its columns.

    Why linear in bytes and rounds, not FLOPs: at 1024x128x2048 (0.5 GFLOP) the MMA work is a fraction of
    a microsecond; how early and how many bytes are in flight decide the time."""
    steps_cta = -(-(-(-k // v.bk)) // v.split_k)  # K steps of bk = 64 x chunks
    ctas = v.grid(m, n)[0]
    per_sm = 2 if 2 * (v.smem_bytes + 2048) <= fit.sm_smem_bytes else 1

    def slots(ctas_per_sm: int) -> int:
        found = fit.cluster_slots.get((ctas_per_sm, v.cluster), device.sms // v.cluster) * v.cluster
        return max(v.cluster, found * device.sms // fit.cluster_slots_sms)

    waves = -(-ctas // slots(per_sm))
    sharing = min(per_sm, -(-min(ctas, slots(per_sm)) // min(device.sms, slots(1))))
    cta_kb = steps_cta * (v.bm + v.bn) * v.bk * 2 / 1024
    dram_mb = 2.0 * (m * k + n * k + m * n) / 1e6
    refill_rounds = max(0, -(-steps_cta // v.stages) - 1)
    receive_kb = (v.split_k - 1) * v.bm * v.bn * 4 / v.split_k / 1024
    return (fit.base_us + v.fixed_us + fit.us_per_sm_100kb * waves * sharing * cta_kb / 100
            + fit.us_per_dram_mb * dram_mb + fit.us_per_l2_mb * ctas * cta_kb / 1024
            + fit.us_per_refill_round * refill_rounds * waves + fit.us_per_receive_kb * receive_kb
            + fit.us_per_extra_wave * (waves - 1))  # fmt: skip
