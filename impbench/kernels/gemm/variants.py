"""The dense FP16 GEMM variant table: one row per extern "C" tile kernel of kernels_cu/gemm_fp16.cu.

The table is the only place a variant is declared. `entry_points()` writes the kernels' extern "C"
lines from it, and impbench.kernels.modules appends them to gemm_fp16.cu before NVRTC (or the nvcc
compile test) sees the source. Each generated line hands the row's threads and shared bytes to its
IMPGEMM_* macro, which static_asserts them against the kernel's own config struct: a row that
disagrees with the CUDA code does not compile.

Every row is a variant the dispatch picks on some preset shape (tests/test_gemm.py checks that the
table holds nothing else; guard seed picks SEED_VARIANT on every shape). Its time-model constants were
fitted together with the family fits in impbench.kernels.gemm.dispatch, on the GPU named there. No cupy here: the dispatch, the plan and the
CPU tests read the table on machines without a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

FAMILY = "gemm_fp16"  # the kernel source (kernels_cu/gemm_fp16.cu) and compile-cache family
LARGE_TILE = 128  # rows and columns of the smallest tile the large-tile guards (tight, permissive) use
SEED_VARIANT = "mma_128x128"  # the original engine's capture kernel: guard seed runs every shape on it
MAX_GRID_Y = 65535  # CUDA's grid y limit: mma and wgmma put the N tiles there
H100_SMS = 132  # a persistent tma grid's default size (Variant.grid); launches pass the device's clusters


@dataclass(frozen=True)
class Variant:
    """One tile kernel: its geometry (what the entry macro instantiates), what a launch needs (threads,
    dynamic shared bytes, cluster), and the per-variant constants of its family's time model."""

    name: str  # the kernel is "gemm_" + name
    family: str  # "mma" (mma.sync, sm_80+), "wgmma" (cp.async-fed wgmma), "tma" and "tsk" (TMA-fed): sm_90a
    entry: str  # the IMPGEMM_<entry> macro of gemm_fp16.cu that instantiates it
    bm: int
    bn: int
    bk: int  # K of one pipeline stage
    stages: int  # pipeline stages (tsk: K steps in flight per CTA)
    threads: int
    smem_bytes: int  # dynamic shared memory per block: the kernel's Config::SMEM_BYTES
    regs: int  # registers per thread (ptxas -v, sm_90a): the block-wave model's occupancy
    split_k: int = 1  # ways K is split: warps of a block (mma), CTAs of a cluster (tma kS, tsk)
    multicast: int = 1  # tma c2: CTAs of a cluster on two M tiles, sharing (multicasting) each W tile
    warps: tuple[int, int] = (1, 1)  # mma: warps over the tile's rows x columns (times split_k over K)
    chunks: int = 1  # tsk: 64-wide K chunks a stage (2: one 3-D TMA box per operand where K % 64 == 0)
    # time model (dispatch.estimate_us): sustained FLOP per SM clock, fixed cost per block (tma: per work
    # unit), floor per K stage (load latency over the pipeline depth), cost paid once (tma: the exposed
    # epilogue of the last tile; tsk: this variant's residual over the family fit)
    flop_per_clk: float = 0.0
    fixed_us: float = 0.0
    iter_us: float = 0.0
    last_us: float = 0.0

    @property
    def kernel_name(self) -> str:
        return "gemm_" + self.name

    @property
    def large(self) -> bool:
        """A tile the large-tile guards may use; tsk is small-n's split-K family whatever its tile."""
        return self.bm >= LARGE_TILE and self.bn >= LARGE_TILE and self.family != "tsk"

    @property
    def cluster(self) -> int:
        """CTAs per thread-block cluster (1: no cluster)."""
        if self.family == "tsk":
            return self.split_k
        return self.multicast if self.family != "tma" or self.split_k == 1 else self.split_k

    @property
    def tensor_maps(self) -> bool:
        """Launched with TMA tensor maps built on the host (tma and tsk families)."""
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
        """Launch grid. mma, wgmma: (M tiles, N tiles). tma, tsk: (CTAs, 1); a persistent tma launch (no
        split-K) runs at most `clusters` clusters, taking work units in turn (default: one CTA per SM
        of an H100)."""
        if self.family == "tsk":
            return (self.units(m, n) * self.split_k, 1)
        if self.family != "tma":
            return (-(-m // self.bm), -(-n // self.bn))
        units = self.units(m, n)
        if self.split_k > 1:
            return (units * self.split_k, 1)
        clusters = H100_SMS // self.cluster if clusters is None else clusters
        return (min(units, clusters) * self.cluster, 1)

    def entry_point(self) -> str:
        """The line of gemm_fp16.cu that instantiates this kernel: IMPGEMM_<entry>(name, geometry...,
        threads, shared bytes)."""
        geometry = {
            "MMA": (self.bm, self.bn, self.bk, *self.warps, self.split_k, self.stages),
            "WGMMA": (self.bm, self.bn, self.stages),
            "WGMMA_WS": (self.bn, self.stages),
            "TMA": (self.bn, self.stages),
            "TMA_SW": (self.bn, self.stages),
            "TMA_MC": (self.bn, self.stages),
            "TMA_SK": (self.bn, self.stages, self.split_k),
            "TSK": (self.bm, self.bn, self.stages, self.split_k, self.chunks),
        }[self.entry]
        args = ", ".join(str(x) for x in (*geometry, self.threads, self.smem_bytes))
        return f"IMPGEMM_{self.entry}({self.kernel_name}, {args})"


# ---- row constructors: each names its variant and sizes it as the family's config struct does ----------


def _mma(bm, bn, bk, warps, split_k, stages, regs, flop_per_clk, fixed_us, iter_us) -> Variant:
    """gemm_mma_<BM>x<BN>[k<S>][s<stages>] (MmaConfig): warps[0] x warps[1] x split_k warps; shared memory
    is the cp.async pipeline, reused for the split-K partial sums where those are larger."""
    name = f"mma_{bm}x{bn}" + (f"k{split_k}" if split_k > 1 else "") + (f"s{stages}" if stages != 4 else "")
    threads = 32 * warps[0] * warps[1] * split_k
    smem = max(stages * (bm + bn) * bk * 2, (split_k - 1) * bm * bn * 4)
    return Variant(name, "mma", "MMA", bm, bn, bk, stages, threads, smem, regs, split_k, warps=warps,
                   flop_per_clk=flop_per_clk, fixed_us=fixed_us, iter_us=iter_us)  # fmt: skip


def _wgmma(bm, bn, stages, regs, flop_per_clk, fixed_us, iter_us=0.0, producer=False) -> Variant:
    """gemm_wgmma_<BM>x<BN>[s<stages>] (WgConfig): BM/64 warpgroups, every thread issues cp.async; or
    `producer` gemm_wgmma_ws_128x<BN> (WsConfig): a cp.async producer warpgroup and two wgmma consumer
    warpgroups. BK 64, + 1 KiB to align the stages to the 128-byte swizzle."""
    smem = stages * (bm + bn) * 64 * 2 + 1024
    if producer:
        return Variant(f"wgmma_ws_{bm}x{bn}", "wgmma", "WGMMA_WS", bm, bn, 64, stages, 384, smem, regs,
                       flop_per_clk=flop_per_clk, fixed_us=fixed_us, iter_us=iter_us)  # fmt: skip
    name = f"wgmma_{bm}x{bn}" + (f"s{stages}" if stages != 4 else "")
    return Variant(name, "wgmma", "WGMMA", bm, bn, 64, stages, 128 * bm // 64, smem, regs,
                   flop_per_clk=flop_per_clk, fixed_us=fixed_us, iter_us=iter_us)  # fmt: skip


def _tma(bn, stages, flop_per_clk, fixed_us, last_us, multicast=1, split_k=1, store_warps=False) -> Variant:
    """gemm_tma_128x<BN>[c2|k<S>|s] (TmaConfig): tile 128 x BN x 64, 384 threads (a producer warpgroup, two
    consumer warpgroups). Shared memory: the pipeline, plus epilogue staging: none (split-K), the whole
    output tile (store warps, "s"), or 16 x 64 per consumer warp; + 1 KiB alignment."""
    entry, suffix = ("TMA_MC", f"c{multicast}") if multicast > 1 else ("TMA_SK", f"k{split_k}") if split_k > 1 else (
        ("TMA_SW", "s") if store_warps else ("TMA", ""))  # fmt: skip
    staging = 0 if split_k > 1 else 128 * (2 * bn + 16) if store_warps else 8 * 16 * 144
    smem = stages * (128 + bn) * 64 * 2 + staging + 1024
    return Variant(f"tma_128x{bn}{suffix}", "tma", entry, 128, bn, 64, stages, 384, smem, 168, split_k, multicast,
                   flop_per_clk=flop_per_clk, fixed_us=fixed_us, last_us=last_us)  # fmt: skip


def _tsk(bm, bn, stages, split_k, chunks, regs, fixed_us=0.0) -> Variant:
    """gemm_tsk_<BM>x<BN>k<S>[s<stages>][p] (TskConfig): BM/64 warpgroups, a cluster of S CTAs over K, K steps
    of `chunks` x 64 ("p": 2). Shared memory: every stage, plus the other ranks' FP32 partials of this rank's
    columns, + 1 KiB; "s<stages>" where that passes 113 KiB (one CTA per SM instead of two)."""
    receive = (split_k - 1) * bm * bn * 4 // split_k
    smem = stages * chunks * (bm + bn) * 64 * 2 + receive + 1024
    suffix = (f"s{stages}" if smem > 113 * 1024 else "") + ("p" if chunks == 2 else "")
    return Variant(f"tsk_{bm}x{bn}k{split_k}{suffix}", "tsk", "TSK", bm, bn, 64 * chunks, stages, 128 * bm // 64,
                   smem, regs, split_k, chunks=chunks, fixed_us=fixed_us)  # fmt: skip


# fmt: off
VARIANTS: dict[str, Variant] = {v.name: v for v in (
    # mma.sync, sm_80+: the only family without wgmma. A block of WM x WN x S warps; split-K (S > 1) inside
    # the block for small-M / small-N shapes; deeper pipelines (s8) for small grids bound by load latency.
    # mma_128x128 is the original engine's capture tile (one 128x128x32 tile, 4 warps of 64x64): SEED_VARIANT,
    # which guard seed pins for every shape.
    #     BM   BN   BK  WM,WN  S stages regs  FLOP/clk fixed_us iter_us
    _mma(128, 128,  32, (2, 2), 1, 4,  241,   1300.0,  6.25,   0.50),
    _mma( 64, 128,  32, (2, 2), 1, 4,  167,   1050.0,  6.00,   0.35),
    _mma( 64,  64,  64, (2, 2), 2, 4,   93,    850.0,  2.50,   0.40),
    _mma( 32,  64,  64, (1, 2), 4, 4,   73,    700.0,  2.50,   0.30),
    _mma( 16,  64, 128, (1, 2), 8, 4,   54,    400.0,  2.00,   0.45),
    _mma( 16,  32, 128, (1, 1), 8, 4,   58,    450.0,  2.25,   0.35),
    _mma( 16,  16, 128, (1, 1), 8, 4,   40,    300.0,  1.50,   0.30),
    _mma( 32,  64,  64, (1, 2), 4, 8,   72,    650.0,  3.25,   0.30),
    _mma( 16,  16, 128, (1, 1), 8, 8,   39,    300.0,  1.00,   0.35),
    # wgmma fed by cp.async, sm_90a: what small-n's N=8..32 shapes at large M and permissive's narrow
    # outputs run on (the tma tiles start at 64 columns).
    #       BM   BN stages regs FLOP/clk fixed_us iter_us
    _wgmma(128, 128, 4,   150,  2300.0,  5.75),
    _wgmma(128, 128, 6,   150,  2350.0,  5.50),
    _wgmma( 64, 128, 6,   192,  1550.0,  3.75),
    _wgmma( 64,  64, 8,    90,  1050.0,  2.50),
    _wgmma(128, 128, 6,   168,  2100.0,  5.00, producer=True),
    # TMA-fed, warp-specialised, persistent wgmma: the main family on Hopper. Widths between 128 and 256
    # quantise waves (512x5120: 32 tiles of 160 columns x 4 = 128 tiles on 132 SMs, not 160 of 128).
    # c2: 2-CTA clusters multicasting W; kS: split-K over a cluster of S CTAs; s: store warps.
    #   BN stages FLOP/clk fixed_us last_us
    _tma( 64, 8, 2350.0, 2.55, 0.00),
    _tma( 96, 7, 3135.0, 2.98, 0.20),
    _tma(128, 6, 3738.0, 3.04, 1.66),
    _tma(144, 6, 3686.0, 2.79, 1.95),
    _tma(160, 5, 3789.0, 2.96, 2.13),
    _tma(176, 5, 3824.0, 3.46, 2.18),
    _tma(192, 5, 3805.0, 3.16, 2.35),
    _tma(224, 4, 3857.0, 3.95, 2.16),
    _tma(256, 4, 3877.0, 5.05, 1.26),
    _tma(128, 5, 3658.0, 2.34, 4.30, store_warps=True),
    _tma(144, 5, 3731.0, 2.33, 4.74, store_warps=True),
    _tma(160, 5, 3864.0, 2.49, 5.16, store_warps=True),
    _tma(176, 4, 3772.0, 2.43, 5.02, store_warps=True),
    _tma(192, 4, 3848.0, 3.03, 4.85, store_warps=True),
    _tma(256, 3, 3821.0, 3.88, 4.82, store_warps=True),
    _tma(128, 6, 3716.0, 2.62, 3.68, multicast=2),
    _tma(144, 6, 3776.0, 2.71, 3.74, multicast=2),
    _tma(256, 4, 3911.0, 5.47, 2.02, multicast=2),
    _tma( 64, 8, 1765.0, 4.66, 1.35, split_k=2),
    _tma(128, 6, 2851.0, 6.48, 1.74, split_k=2),
    _tma(176, 5, 3127.0, 7.93, 0.74, split_k=2),
    _tma(128, 6, 2372.0, 5.47, 2.26, split_k=4),
    # tsk: small-N split-K (routers): every stage in flight from the start, partials pushed to their owner
    # rank; 2-CTA clusters can use every SM of a GPC. fixed_us: the variant's residual under the family fit.
    #    BM  BN stages S chunks regs fixed_us
    _tsk(64,  64, 6,   4, 1,     58,  -0.85),
    _tsk(64,  64, 6,   2, 2,     58,  -0.25),
    _tsk(64,  64, 6,   1, 2,     58,  -0.38),
    _tsk(64, 128, 4,   2, 2,     90),
)}
# fmt: on


def entry_points() -> str:
    """The extern "C" entry-point lines of every variant, for the end of gemm_fp16.cu
    (impbench.kernels.modules.GENERATED_ENTRY_POINTS)."""
    return "".join(v.entry_point() + "\n" for v in VARIANTS.values())
