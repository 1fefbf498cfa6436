// impbench-nvrtc-arch: sm_90a
// (read by impbench/kernels/modules.py: on a compute-capability-9.0 device this family is compiled
//  for sm_90a so the wgmma kernels exist; elsewhere they compile to a trap and are never chosen.)
//
// Dense FP16 GEMM, C[M,N] = A[M,K] . W[N,K]^T (activations row-major, weights in nn.Linear layout),
// FP16 inputs, FP32 accumulation, FP16 output. Any M >= 1, any N >= 1, K a multiple of 8.
// Capture-safe: no allocation, no host synchronisation, deterministic (no atomics), so a replayed
// CUDA graph is bit-identical to the eager call.
//
// Four kernel families of named extern "C" tile variants. The variants are the rows of
// impbench/kernels/gemm/variants.py, which generates their entry-point lines (appended to this file
// before it compiles, see "Entry macros" below); impbench/kernels/gemm/dispatch.py chooses among them.
//  - gemm_mma_*: mma.sync, portable to any sm_80+ GPU (this header);
//  - gemm_wgmma_*: wgmma fed by cp.async, sm_90a ("Hopper wgmma family");
//  - gemm_tma_*: wgmma fed by TMA, warp-specialised and persistent: the main family on Hopper;
//  - gemm_tsk_*: TMA-fed split-K across a cluster, for small-N (router) shapes.
// The measurements behind each shape: docs/notes/gemm.md.
//
// gemm_mma_<BM>x<BN>[k<WK>][s<STAGES>]: mma.sync.m16n8k16 through inline PTX.
//    The block is WM x WN x WK warps. Warp (wm, wn, wk) owns a (BM/WM) x (BN/WN) tile of C and the
//    wk-th slice of every BK-wide K stage. WK > 1 is split-K inside the block: small-M / small-N
//    shapes (M=512 N=32 K=2048 has only 16K outputs) get enough warps and blocks in flight without
//    a second kernel or a workspace; the WK partial sums are added through shared memory in a
//    fixed order, so results stay deterministic.
//    Main tile 128x128x32, 4 warps in 2x2, 64x64 per warp: each k16 step a warp issues 4+4 ldmatrix.x4
//    for 32 mma, the ratio that keeps the tensor pipe fed from registers.
//    Operands stream global -> shared through a STAGES-deep cp.async pipeline (16-byte copies, rows
//    past M/N and chunks past K zero-filled through src_bytes), one __syncthreads per K stage.
//    Shared rows are XOR-swizzled in 16-byte chunks so both the cp.async stores and the ldmatrix
//    reads (8 rows, same logical chunk) hit 8 distinct bank groups.
#include "common.cuh"
#include "hopper_async.cuh"
#include "wgmma.cuh"

namespace impgemm {

using namespace impasync;  // TmaMap, mbarriers, TMA loads

// Experiment build only (-DIMPGEMM_TRACE, tools/gemm_trace.py): each CTA of a tma / tsk launch
// writes its SM and the global time (ns) and SM clock of four points -- start, first stage landed,
// main loop done, end -- so a launch's wave structure and where its microseconds go can be read
// per CTA; tsk kernels add five (4: first stages issued, 5: partials sent, 6: peers' partials in,
// 7: barriers initialised, 8: first stage issued). Without the macro IMPGEMM_MARK compiles to nothing.
#ifdef IMPGEMM_TRACE
constexpr int TRACE_CTAS = 4096, TRACE_POINTS = 9, TRACE_SLOTS = 2 * TRACE_POINTS + 1;  // [times, clocks, smid]
__device__ unsigned long long impgemm_trace[TRACE_CTAS * TRACE_SLOTS];
__device__ __forceinline__ void trace_mark(int point) {
    unsigned long long t, c;
    unsigned sm;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    asm volatile("mov.u64 %0, %%clock64;\n" : "=l"(c));
    asm volatile("mov.u32 %0, %%smid;\n" : "=r"(sm));
    if (blockIdx.x < TRACE_CTAS) {
        unsigned long long *row = impgemm_trace + blockIdx.x * TRACE_SLOTS;
        row[point] = t;
        row[TRACE_POINTS + point] = c;
        row[2 * TRACE_POINTS] = sm;
    }
}
#define IMPGEMM_MARK(point, cond) \
    do {                          \
        if (cond) impgemm::trace_mark(point); \
    } while (0)
#else
#define IMPGEMM_MARK(point, cond) \
    do {                          \
    } while (0)
#endif

// Physical 16-byte chunk of logical chunk `chunk` in row `row` of a tile whose rows hold
// ROW_CHUNKS chunks. 8 consecutive rows at one logical chunk land in 8 distinct bank groups.
template <int ROW_CHUNKS>
__device__ __forceinline__ int swz(int row, int chunk) {
    if constexpr (ROW_CHUNKS >= 8) {
        return chunk ^ (row & 7);
    } else {
        constexpr int ROWS_PER_LINE = 8 / ROW_CHUNKS;  // rows sharing one 128-byte bank line
        return chunk ^ ((row / ROWS_PER_LINE) & (ROW_CHUNKS - 1));
    }
}

// Copy a ROWS x (8*ROW_CHUNKS) half tile at (row0, k0) of a row-major [rows_total, K] matrix into
// swizzled shared memory; rows >= rows_total and chunks >= K are zero-filled.
template <int ROWS, int ROW_CHUNKS, int THREADS>
__device__ __forceinline__ void load_tile(half_t *smem, const half_t *__restrict__ g, int row0, int rows_total,
                                          int k0, int K, int tid) {
    constexpr int CHUNKS = ROWS * ROW_CHUNKS;
#pragma unroll
    for (int it = 0; it < (CHUNKS + THREADS - 1) / THREADS; ++it) {
        const int id = tid + it * THREADS;
        if (CHUNKS % THREADS == 0 || id < CHUNKS) {
            const int row = id / ROW_CHUNKS;
            const int chunk = id % ROW_CHUNKS;
            const int grow = row0 + row;
            const int gk = k0 + chunk * 8;
            const bool valid = grow < rows_total && gk < K;
            const half_t *src = valid ? g + (size_t)grow * K + gk : g;
            cp_async16(smem + row * (ROW_CHUNKS * 8) + swz<ROW_CHUNKS>(row, chunk) * 8, src, valid ? 16 : 0);
        }
    }
}

// Store one 16x8 accumulator fragment (c0,c1 at row r, c2,c3 at row r+8) as FP16 with edge checks.
__device__ __forceinline__ void store_frag(half_t *__restrict__ C, int M, int N, bool vec, int row, int col,
                                           float c0, float c1, float c2, float c3) {
    if (col >= N) return;
    if (vec) {  // N even and C 4-byte aligned: col even, so col + 1 < N too
        if (row < M) *reinterpret_cast<half2_t *>(C + (size_t)row * N + col) = pack_half2(c0, c1);
        if (row + 8 < M) *reinterpret_cast<half2_t *>(C + (size_t)(row + 8) * N + col) = pack_half2(c2, c3);
    } else {
        const bool second = col + 1 < N;
        if (row < M) {
            C[(size_t)row * N + col] = f2h(c0);
            if (second) C[(size_t)row * N + col + 1] = f2h(c1);
        }
        if (row + 8 < M) {
            C[(size_t)(row + 8) * N + col] = f2h(c2);
            if (second) C[(size_t)(row + 8) * N + col + 1] = f2h(c3);
        }
    }
}

template <int BM, int BN, int BK, int WM, int WN, int WK, int STAGES>
struct MmaConfig {
    static constexpr int THREADS = 32 * WM * WN * WK;
    static constexpr int TM = BM / WM, TN = BN / WN;  // warp tile
    static constexpr int MI = TM / 16, NI = TN / 8;   // m16 / n8 fragments per warp
    static constexpr int KW = BK / WK;                // K per warp per stage
    static constexpr int ROW_CHUNKS = BK / 8;
    static constexpr int A_STAGE = BM * BK, W_STAGE = BN * BK;  // halves
    static constexpr int PIPE_BYTES = STAGES * (A_STAGE + W_STAGE) * 2;
    static constexpr int RED_BYTES = (WK - 1) * BM * BN * 4;
    static constexpr int SMEM_BYTES = PIPE_BYTES > RED_BYTES ? PIPE_BYTES : RED_BYTES;
    static_assert(TM % 16 == 0 && TN % 8 == 0 && KW % 16 == 0, "warp tile must be whole fragments");
    static_assert(ROW_CHUNKS <= 8 || ROW_CHUNKS % 8 == 0, "swizzle needs <= 8 or a multiple of 8 chunks");
};

template <int BM, int BN, int BK, int WM, int WN, int WK, int STAGES>
__device__ __forceinline__ void gemm_mma_body(const half_t *__restrict__ A, const half_t *__restrict__ W,
                                              half_t *__restrict__ C, int M, int N, int K) {
    using Cfg = MmaConfig<BM, BN, BK, WM, WN, WK, STAGES>;
    constexpr int MI = Cfg::MI, NI = Cfg::NI, RC = Cfg::ROW_CHUNKS;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    half_t *sA = reinterpret_cast<half_t *>(smem_raw);
    half_t *sW = sA + STAGES * Cfg::A_STAGE;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp % WM, wn = (warp / WM) % WN, wk = warp / (WM * WN);
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int KT = (K + BK - 1) / BK;

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < KT) {
            load_tile<BM, RC, Cfg::THREADS>(sA + s * Cfg::A_STAGE, A, m0, M, s * BK, K, tid);
            load_tile<BN, RC, Cfg::THREADS>(sW + s * Cfg::W_STAGE, W, n0, N, s * BK, K, tid);
        }
        cp_async_commit();
    }

    // Per-lane ldmatrix coordinates (rows inside the warp tile, chunk offset inside a k16 step).
    const int a_row = wm * Cfg::TM + (lane & 15);
    const int a_chunk = lane >> 4;
    const int b_row = wn * Cfg::TN + ((lane >> 4) << 3) + (lane & 7);
    const int b_chunk = (lane >> 3) & 1;

    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        {  // refill the stage every warp finished reading in iteration kt-1
            const int nk = kt + STAGES - 1;
            if (nk < KT) {
                const int st = nk % STAGES;
                load_tile<BM, RC, Cfg::THREADS>(sA + st * Cfg::A_STAGE, A, m0, M, nk * BK, K, tid);
                load_tile<BN, RC, Cfg::THREADS>(sW + st * Cfg::W_STAGE, W, n0, N, nk * BK, K, tid);
            }
            cp_async_commit();
        }
        const half_t *tA = sA + (kt % STAGES) * Cfg::A_STAGE;
        const half_t *tW = sW + (kt % STAGES) * Cfg::W_STAGE;
#pragma unroll
        for (int ks = 0; ks < Cfg::KW / 16; ++ks) {
            const int kc = (wk * Cfg::KW + ks * 16) / 8;  // logical chunk of this k16 step
            unsigned af[MI][4], bf[NI][2];
#pragma unroll
            for (int i = 0; i < MI; ++i) {
                const int r = a_row + i * 16;
                ldmatrix_x4(af[i][0], af[i][1], af[i][2], af[i][3], tA + r * BK + swz<RC>(r, kc + a_chunk) * 8);
            }
#pragma unroll
            for (int j = 0; j + 1 < NI; j += 2) {
                const int r = b_row + j * 8;
                ldmatrix_x4(bf[j][0], bf[j][1], bf[j + 1][0], bf[j + 1][1], tW + r * BK + swz<RC>(r, kc + b_chunk) * 8);
            }
            if (NI % 2) {
                const int r = wn * Cfg::TN + (NI - 1) * 8 + (lane & 7);
                ldmatrix_x2(bf[NI - 1][0], bf[NI - 1][1], tW + r * BK + swz<RC>(r, kc + b_chunk) * 8);
            }
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j) mma_16816(acc[i][j], af[i], bf[j]);
        }
    }

    if (WK > 1) {  // add the K slices of the warps that share an output tile, in a fixed order
        cp_async_wait<0>();
        __syncthreads();  // every warp is done reading the pipeline buffers
        float *red = reinterpret_cast<float *>(smem_raw);
        constexpr int FRAG = MI * NI * 4;
        const int slot = wm + WM * wn;
        if (wk > 0) {
            float *dst = red + ((size_t)((wk - 1) * WM * WN + slot) * FRAG) * 32 + lane;
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j)
#pragma unroll
                    for (int r = 0; r < 4; ++r) dst[((i * NI + j) * 4 + r) * 32] = acc[i][j][r];
        }
        __syncthreads();
        if (wk > 0) return;
#pragma unroll 1
        for (int s = 1; s < WK; ++s) {
            const float *src = red + ((size_t)((s - 1) * WM * WN + slot) * FRAG) * 32 + lane;
#pragma unroll
            for (int i = 0; i < MI; ++i)
#pragma unroll
                for (int j = 0; j < NI; ++j)
#pragma unroll
                    for (int r = 0; r < 4; ++r) acc[i][j][r] += src[((i * NI + j) * 4 + r) * 32];
        }
    }

    const bool vec = (N % 2 == 0) && ((reinterpret_cast<size_t>(C) & 3) == 0);
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
        for (int j = 0; j < NI; ++j) {
            const int row = m0 + wm * Cfg::TM + i * 16 + (lane >> 2);
            const int col = n0 + wn * Cfg::TN + j * 8 + (lane & 3) * 2;
            store_frag(C, M, N, vec, row, col, acc[i][j][0], acc[i][j][1], acc[i][j][2], acc[i][j][3]);
        }
}


// ---------------------------------------------------------------------------------------------
// Hopper wgmma family (sm_90a). Compiled only where the sm_90a feature set is on; elsewhere the
// entry points trap and the dispatch never chooses them (dispatch.family_usable).
//
// gemm_wgmma_<BM>x<BN>[s<STAGES>]: warpgroup MMA (wgmma.mma_async m64nBNk16) fed by cp.async.
// BM/64 warpgroups; warpgroup g computes rows [64g, 64g+64) x all BN columns, accumulators in
// registers, A and W read by the tensor cores straight from shared memory through matrix
// descriptors (K-major, 128-byte swizzle: the same XOR pattern the cp.async stores write).
// BK = 64 (one 128-byte swizzle row). Every thread issues cp.async; STAGES-deep pipeline that
// prefetches STAGES-2 tiles ahead and keeps one wgmma batch in flight across the barrier.
// Why: mma.sync on the H100 peaks near two thirds of the wgmma rate, which cuBLAS uses.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define IMPGEMM_HAS_WGMMA 1

// Store a warpgroup's m64nBN accumulators: per n8 block j, d[4j..4j+1] at (row, col + 8j), d[4j+2..4j+3]
// eight rows below; row / col are this thread's first (lane / 4 and 2 (lane % 4) into the warp's 16 rows).
template <int BN>
__device__ __forceinline__ void store_wg_tile(half_t *__restrict__ C, int M, int N, int row, int col,
                                              const float (&acc)[BN / 2]) {
    const bool vec = (N % 2 == 0) && ((reinterpret_cast<size_t>(C) & 3) == 0);
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
        store_frag(C, M, N, vec, row, col + j * 8, acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]);
}

template <int BM, int BN, int STAGES>
struct WgConfig {
    static constexpr int BK = 64;  // one 128-byte swizzle row of halves
    static constexpr int WGS = BM / 64;
    static constexpr int THREADS = 128 * WGS;
    static constexpr int A_STAGE = BM * BK, W_STAGE = BN * BK;  // halves
    static constexpr int SMEM_BYTES = STAGES * (A_STAGE + W_STAGE) * 2 + 1024;  // + alignment slack
    static constexpr int PREFETCH = STAGES - 2;  // tiles in flight ahead of the one being multiplied
    static_assert(STAGES >= 3, "one stage computing, one wgmma batch in flight, >= 1 loading");
};

template <int BM, int BN, int STAGES>
__device__ __forceinline__ void gemm_wgmma_body(const half_t *__restrict__ A, const half_t *__restrict__ W,
                                                half_t *__restrict__ C, int M, int N, int K) {
    using Cfg = WgConfig<BM, BN, STAGES>;
    constexpr int BK = Cfg::BK, P = Cfg::PREFETCH;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    half_t *smem = reinterpret_cast<half_t *>(align1024(smem_raw));
    half_t *sA = smem;
    half_t *sW = smem + STAGES * Cfg::A_STAGE;

    const int tid = threadIdx.x, lane = tid & 31;
    const int wg = tid >> 7, warp_in_wg = (tid >> 5) & 3;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int KT = (K + BK - 1) / BK;

    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;

#pragma unroll
    for (int s = 0; s < P; ++s) {
        if (s < KT) {
            load_tile<BM, 8, Cfg::THREADS>(sA + s * Cfg::A_STAGE, A, m0, M, s * BK, K, tid);
            load_tile<BN, 8, Cfg::THREADS>(sW + s * Cfg::W_STAGE, W, n0, N, s * BK, K, tid);
        }
        cp_async_commit();
    }

    const unsigned sA_addr = smem_u32(sA) + wg * 64 * BK * 2;  // this warpgroup's 64-row slab
    const unsigned sW_addr = smem_u32(sW);

    for (int kt = 0; kt < KT; ++kt) {
        cp_async_wait<P - 1>();  // tile kt has landed (this thread's copies)
        fence_proxy_async();
        __syncthreads();  // ... everyone's; and wgmma batch kt-2 is complete in every warpgroup
        {
            const int nk = kt + P;  // its stage was last read by batch kt+P-STAGES <= kt-2
            if (nk < KT) {
                const int st = nk % STAGES;
                load_tile<BM, 8, Cfg::THREADS>(sA + st * Cfg::A_STAGE, A, m0, M, nk * BK, K, tid);
                load_tile<BN, 8, Cfg::THREADS>(sW + st * Cfg::W_STAGE, W, n0, N, nk * BK, K, tid);
            }
            cp_async_commit();
        }
        const int st = kt % STAGES;
        const unsigned a_base = sA_addr + st * Cfg::A_STAGE * 2;
        const unsigned w_base = sW_addr + st * Cfg::W_STAGE * 2;
        fence_regs(acc);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks)  // k16 step = 32 bytes along the swizzled row
            wgmma_ss<BN>(acc, smem_desc(a_base + ks * 32), smem_desc(w_base + ks * 32));
        wgmma_commit();
        wgmma_wait<1>();  // batch kt-1 done; batch kt may still run
        fence_regs(acc);
    }
    wgmma_wait<0>();
    fence_regs(acc);

    store_wg_tile<BN>(C, M, N, m0 + wg * 64 + warp_in_wg * 16 + (lane >> 2), n0 + (lane & 3) * 2, acc);
}

// ---- warp-specialised variant: one producer warpgroup, two consumer warpgroups ----------------
// Producer warpgroup 0 only issues cp.async (each thread signals a stage's `full` mbarrier when its
// copies land, cp.async.mbarrier.arrive.noinc); consumer warpgroups 1-2 only wait on `full`, issue
// wgmma on 64 rows x BN each, and release the stage through its `empty` mbarrier once the wgmma
// batch that read it has completed. No __syncthreads in the K loop: the tensor cores are never
// left idle behind a block-wide barrier or the address arithmetic of the loads.

template <int BN, int STAGES>
struct WsConfig {
    static constexpr int BM = 128, BK = 64, THREADS = 384;
    static constexpr int A_STAGE = BM * BK, W_STAGE = BN * BK;  // halves
    static constexpr int SMEM_BYTES = STAGES * (A_STAGE + W_STAGE) * 2 + 1024;
};

// Consumer warpgroup c (0 or 1) of the warp-specialised kernels: rows [64c, 64c+64) x BN.
// `proxy_fence`: stages filled by cp.async (generic proxy) need a proxy fence before wgmma reads
// them; stages filled by TMA (async proxy) do not.
template <int BN, int STAGES, bool PROXY_FENCE>
__device__ __forceinline__ void ws_consumer(unsigned sA_addr, unsigned sW_addr, unsigned full0, unsigned empty0,
                                            half_t *__restrict__ C, int M, int N, int KT, int m0, int n0, int c,
                                            int tid) {
    using Cfg = WsConfig<BN, STAGES>;
    constexpr int BK = Cfg::BK;
    const int warp_in_wg = (tid >> 5) & 3, lane = tid & 31;
    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
    sA_addr += c * 64 * BK * 2;
    for (int kt = 0; kt < KT; ++kt) {
        const int s = kt % STAGES;
        mbar_wait(full0 + 8 * s, (kt / STAGES) & 1);
        if (PROXY_FENCE) fence_proxy_async();  // cp.async (generic proxy) data -> wgmma (async proxy)
        const unsigned a_base = sA_addr + s * Cfg::A_STAGE * 2;
        const unsigned w_base = sW_addr + s * Cfg::W_STAGE * 2;
        fence_regs(acc);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < BK / 16; ++ks)
            wgmma_ss<BN>(acc, smem_desc(a_base + ks * 32), smem_desc(w_base + ks * 32));
        wgmma_commit();
        wgmma_wait<1>();  // the batch of kt-1 is done: its stage can be refilled
        fence_regs(acc);
        if (kt > 0) mbar_arrive(empty0 + 8 * ((kt - 1) % STAGES));
    }
    wgmma_wait<0>();
    fence_regs(acc);
    store_wg_tile<BN>(C, M, N, m0 + c * 64 + warp_in_wg * 16 + (lane >> 2), n0 + (lane & 3) * 2, acc);
}

template <int BN, int STAGES>
__device__ __forceinline__ void gemm_wgmma_ws_body(const half_t *__restrict__ A, const half_t *__restrict__ W,
                                                   half_t *__restrict__ C, int M, int N, int K) {
    using Cfg = WsConfig<BN, STAGES>;
    constexpr int BM = Cfg::BM, BK = Cfg::BK;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    __shared__ __align__(8) unsigned long long bars[2 * STAGES + 2];  // full[s], empty[s], staged, drained
    half_t *smem = reinterpret_cast<half_t *>(align1024(smem_raw));
    half_t *sA = smem;
    half_t *sW = smem + STAGES * Cfg::A_STAGE;
    const unsigned full0 = smem_u32(&bars[0]), empty0 = smem_u32(&bars[STAGES]);

    const int tid = threadIdx.x, wg = tid >> 7, tid_wg = tid & 127;
    const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN;
    const int KT = (K + BK - 1) / BK;

    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full0 + 8 * s, 128);   // every producer thread, on its copies' completion
            mbar_init(empty0 + 8 * s, 256);  // every consumer thread, after its batch read the stage
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    if (wg == 0) {  // producer
        setmaxnreg_dec<104>();
        for (int kt = 0; kt < KT; ++kt) {
            const int s = kt % STAGES, use = kt / STAGES;
            if (use > 0) mbar_wait(empty0 + 8 * s, (use - 1) & 1);
            load_tile<BM, 8, 128>(sA + s * Cfg::A_STAGE, A, m0, M, kt * BK, K, tid_wg);
            load_tile<BN, 8, 128>(sW + s * Cfg::W_STAGE, W, n0, N, kt * BK, K, tid_wg);
            mbar_arrive_on_cp_async(full0 + 8 * s);
        }
        cp_async_wait<0>();
    } else {  // consumers
        setmaxnreg_inc<200>();
        ws_consumer<BN, STAGES, true>(smem_u32(sA), smem_u32(sW), full0, empty0, C, M, N, KT, m0, n0, wg - 1, tid);
    }
}

// ---- TMA-fed, warp-specialised wgmma kernels (gemm_tma_*): the dispatch's main family ---------
// Tile 128 x BN x 64 (BN a multiple of 16, 64..256), 384 threads, one block per SM:
//  - warpgroup 0, one thread: the producer. Per K stage it posts the stage's byte count on the
//    stage's `full` mbarrier and issues two cp.async.bulk.tensor copies (A box 64x128, W box
//    64xBN; 128-byte swizzle; rows past M/N and columns past K zero-filled by the TMA unit). The
//    tensor maps are __grid_constant__ kernel parameters, encoded on the host per buffer.
//  - warpgroups 1-2: consumers, rows [64c, 64c+64) x BN each; wgmma straight from the stage, one
//    batch in flight; each warp hands a stage back through its `empty` mbarrier once read.
// Schedules (template CS, SPLIT):
//  - CS = 1: persistent. Block b takes work units b, b + gridDim.x, ... (M tile fastest, so the
//    blocks in flight share W tiles in L2); the producer runs on into the next unit while the
//    consumers store the last one, so the pipeline never drains between tiles.
//  - CS = 2: the same with 2-CTA clusters on two M tiles of one N tile. Each CTA loads half of the
//    W tile and multicasts it to both (half the L2->SM traffic for W); a stage is refilled only
//    after the consumers of both CTAs released it (remote mbarrier arrive).
//  - SPLIT: a cluster of CS CTAs shares one output tile; CTA r takes K tiles [r*KT/CS,
//    (r+1)*KT/CS), leaves its FP32 partial tile in its shared memory, and then adds up the CS
//    partials of its BN/CS columns through distributed shared memory in rank order: split-K that
//    is deterministic and needs no workspace, for shapes with too few tiles to fill 132 SMs.
// Epilogue (CS = 1 / 2): each consumer warp stages 16 x 64 outputs as FP16 in its own padded
// shared buffer, then writes whole 128-byte row segments with 16-byte stores.
// STORE_WARPS ("s", CS = 1): the producer warpgroup's idle warps 1-3 store each finished tile, which the
// consumers stage whole in shared memory before going on with the next (fewer stages make room for it).
// Why this family: the cp.async kernels above starve the tensor cores (every thread issues 16-byte
// copies and their address math); here the consumers issue nothing but wgmma.

// The same box written to the same shared offset of every CTA in `mask`, completing on each one's
// mbarrier at the same offset.
__device__ __forceinline__ void tma_load_2d_multicast(unsigned dst, const TmaMap *map, int c0, int c1, unsigned mbar,
                                                      unsigned short mask) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster "
        "[%0], [%1, {%2, %3}], [%4], %5;\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(mbar), "h"(mask)
        : "memory");
}
__device__ __forceinline__ void mbar_arrive_remote(unsigned cluster_address) {
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_address) : "memory");
}
__device__ __forceinline__ float ld_cluster_f32(unsigned cluster_address) {
    float v;
    asm volatile("ld.shared::cluster.f32 %0, [%1];\n" : "=f"(v) : "r"(cluster_address) : "memory");
    return v;
}
__device__ __forceinline__ void st_shared_u32(unsigned addr, unsigned v) {
    asm volatile("st.shared.u32 [%0], %1;\n" ::"r"(addr), "r"(v) : "memory");
}
__device__ __forceinline__ void st_shared_f32(unsigned addr, float v) {
    asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(addr), "f"(v) : "memory");
}
__device__ __forceinline__ void ld_shared_v4(unsigned addr, unsigned (&v)[4]) {
    asm volatile("ld.shared.v4.u32 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(v[0]), "=r"(v[1]), "=r"(v[2]), "=r"(v[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void st_global_v4(void *p, const unsigned (&v)[4]) {
    asm volatile("st.global.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "r"(v[0]), "r"(v[1]), "r"(v[2]), "r"(v[3])
                 : "memory");
}

template <int BN, int STAGES, int CS, bool SPLIT, bool STORE_WARPS = false>
struct TmaConfig {
    static constexpr int BM = 128, BK = 64, THREADS = 384;
    static constexpr bool MULTICAST = CS > 1 && !SPLIT;
    static constexpr int W_BOX = MULTICAST ? BN / CS : BN;  // W rows one CTA copies per stage
    static constexpr int A_BYTES = BM * BK * 2, W_BYTES = BN * BK * 2;
    static constexpr int STAGE_BYTES = A_BYTES + W_BYTES;
    static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
    static constexpr int EPI_ROW = 144;            // a staged row: 64 halves + 16 bytes of padding
    static constexpr int EPI_WARP = 16 * EPI_ROW;  // one consumer warp's 16 x 64 staging tile
    static constexpr int OUT_ROW = BN * 2 + 16;    // STORE_WARPS: a staged output row (+16: no conflicts)
    static constexpr int EPI_BYTES = STORE_WARPS ? BM * OUT_ROW : SPLIT ? 0 : 8 * EPI_WARP;
    static constexpr int SMEM_BYTES = PIPE_BYTES + EPI_BYTES + 1024;  // + 1024-byte alignment slack
    static constexpr int EMPTY_ARRIVALS = 8 * (MULTICAST ? CS : 1);   // consumer warps reading a stage
    static_assert(BN % 16 == 0 && BN >= 64 && BN <= 256, "wgmma N and the TMA box");
    static_assert(!MULTICAST || (W_BOX % 8 == 0 && CS == 2), "multicast halves start on a swizzle atom");
    static_assert(!SPLIT || ((BN / 8) % CS == 0 && CS <= 8), "split-K: whole n8 blocks per rank");
    static_assert(!SPLIT || BM * BN * 4 <= PIPE_BYTES, "split-K partials reuse the pipeline buffers");
    static_assert(!STORE_WARPS || (CS == 1 && !SPLIT), "store warps: plain persistent schedule only");
    static_assert(SMEM_BYTES + 16 * STAGES + 16 <= 232448, "227 KiB of shared memory per block");
};

template <int BN, int STAGES, int CS, bool SPLIT, bool STORE_WARPS = false>
__device__ __forceinline__ void gemm_tma_body(const TmaMap &map_a, const TmaMap &map_w, half_t *__restrict__ C,
                                              int M, int N, int K) {
    using Cfg = TmaConfig<BN, STAGES, CS, SPLIT, STORE_WARPS>;
    constexpr int BM = Cfg::BM, BK = Cfg::BK;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    __shared__ __align__(8) unsigned long long bars[2 * STAGES + 2];  // full[s], empty[s], staged, drained
    const unsigned sA = align1024(smem_u32(smem_raw));
    const unsigned sW = sA + STAGES * Cfg::A_BYTES;
    const unsigned full0 = smem_u32(&bars[0]), empty0 = smem_u32(&bars[STAGES]);
    const unsigned staged = smem_u32(&bars[2 * STAGES]), drained = staged + 8;  // STORE_WARPS hand-over
    const unsigned out_stage = sW + STAGES * Cfg::W_BYTES;                       // STORE_WARPS output tile

    const int tid = threadIdx.x, wg = tid >> 7;
    IMPGEMM_MARK(0, tid == 0);
    const unsigned rank = CS > 1 ? cluster_rank() : 0u;
    const int MT = (M + BM - 1) / BM, NT = (N + BN - 1) / BN, KT = (K + BK - 1) / BK;
    const int MG = SPLIT ? MT : (MT + CS - 1) / CS;  // M tiles per work unit: 1, or CS (one per CTA)
    const int units = MG * NT;
    const int first = blockIdx.x / CS, stride = gridDim.x / CS;
    const int kt_begin = SPLIT ? (int)rank * KT / CS : 0;
    const int kt_end = SPLIT ? ((int)rank + 1) * KT / CS : KT;

    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full0 + 8 * s, 1);  // the producer's arrive.expect_tx; then the TMA bytes land
            mbar_init(empty0 + 8 * s, Cfg::EMPTY_ARRIVALS);
        }
        mbar_init(staged, 8);   // the 8 consumer warps, once their part of a tile is staged
        mbar_init(drained, 3);  // the 3 store warps, once they stored a staged tile
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    if (CS > 1) cluster_sync();  // the partner's barriers exist before anything lands in them
    else __syncthreads();

    if (wg == 0) {  // producer
        setmaxnreg_dec<40>();
        if (tid == 0) {
            tma_prefetch_map(&map_a);
            tma_prefetch_map(&map_w);
            int s = 0, filled = 0;
            unsigned phase = 0;
            for (int u = first; u < units; u += stride) {
                const int m0 = (SPLIT ? u % MG : (u % MG) * CS + (int)rank) * BM;
                const int n0 = (u / MG) * BN;
                for (int kt = kt_begin; kt < kt_end; ++kt) {
                    if (filled >= STAGES) mbar_wait(empty0 + 8 * s, phase ^ 1);  // released (everywhere)
                    const unsigned full = full0 + 8 * s;
                    mbar_expect_tx(full, Cfg::STAGE_BYTES);
                    tma_load_2d(sA + s * Cfg::A_BYTES, &map_a, kt * BK, m0, full);
                    if constexpr (Cfg::MULTICAST)
                        tma_load_2d_multicast(sW + s * Cfg::W_BYTES + rank * (Cfg::W_BOX * BK * 2), &map_w, kt * BK,
                                              n0 + (int)rank * Cfg::W_BOX, full, (unsigned short)((1 << CS) - 1));
                    else
                        tma_load_2d(sW + s * Cfg::W_BYTES, &map_w, kt * BK, n0, full);
                    ++filled;
                    if (++s == STAGES) {
                        s = 0;
                        phase ^= 1;
                    }
                }
            }
        } else if (STORE_WARPS && tid >= 32) {
            // Warps 1-3: the epilogue. Each staged tile (FP16, row-major) goes out as 16-byte stores of
            // whole row segments, while the consumers already multiply the next tile.
            const int st = tid - 32, lane = tid & 31;
            const bool fast = (N % 8 == 0) && ((reinterpret_cast<size_t>(C) & 15) == 0);
            unsigned ph = 0;
            for (int u = first; u < units; u += stride) {
                const int m0 = (u % MG) * BM, n0 = (u / MG) * BN;
                mbar_wait(staged, ph);
                for (int idx = st; idx < BM * (BN / 8); idx += 96) {
                    const int r = idx / (BN / 8), q = idx % (BN / 8);
                    const int grow = m0 + r, gcol = n0 + q * 8;
                    if (grow < M && gcol < N) {
                        unsigned v[4];
                        ld_shared_v4(out_stage + r * Cfg::OUT_ROW + q * 16, v);
                        half_t *dst = C + (size_t)grow * N + gcol;
                        if (fast && gcol + 8 <= N) {
                            st_global_v4(dst, v);
                        } else {
                            for (int e = 0; e < 8; ++e)
                                if (gcol + e < N) dst[e] = (half_t)(v[e >> 1] >> (16 * (e & 1)));
                        }
                    }
                }
                __syncwarp();
                if (lane == 0) mbar_arrive(drained);
                ph ^= 1;
            }
        }
    } else {  // consumers
        setmaxnreg_inc<232>();
        const int c = wg - 1, ct = tid - 128, warp = ct >> 5, lane = tid & 31;
        float acc[BN / 2];
        int s = 0, tiles_staged = 0;
        unsigned phase = 0;
        for (int u = first; u < units; u += stride) {
            const int m0 = (SPLIT ? u % MG : (u % MG) * CS + (int)rank) * BM;
            const int n0 = (u / MG) * BN;
#pragma unroll
            for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
            int prev = -1;
            for (int kt = kt_begin; kt < kt_end; ++kt) {
                mbar_wait(full0 + 8 * s, phase);
                IMPGEMM_MARK(1, tid == 128 && u == first && kt == kt_begin);
                const unsigned a_base = sA + s * Cfg::A_BYTES + c * (64 * BK * 2);
                const unsigned w_base = sW + s * Cfg::W_BYTES;
                fence_regs(acc);
                wgmma_fence();
#pragma unroll
                for (int ks = 0; ks < BK / 16; ++ks)  // k16 step = 32 bytes along the swizzled row
                    wgmma_ss<BN>(acc, smem_desc(a_base + ks * 32), smem_desc(w_base + ks * 32));
                wgmma_commit();
                wgmma_wait<1>();  // the batch of the previous stage is done: hand that stage back
                fence_regs(acc);
                if (prev >= 0 && lane == 0) {
                    mbar_arrive(empty0 + 8 * prev);
                    if constexpr (Cfg::MULTICAST) mbar_arrive_remote(cluster_addr(empty0 + 8 * prev, rank ^ 1u));
                }
                prev = s;
                if (++s == STAGES) {
                    s = 0;
                    phase ^= 1;
                }
            }
            wgmma_wait<0>();
            fence_regs(acc);
            IMPGEMM_MARK(2, tid == 128);  // the last unit's time stays
            if (prev >= 0 && lane == 0) {
                mbar_arrive(empty0 + 8 * prev);
                if constexpr (Cfg::MULTICAST) mbar_arrive_remote(cluster_addr(empty0 + 8 * prev, rank ^ 1u));
            }

            if constexpr (SPLIT) {
                // Partial tile over the pipeline buffers, once both warpgroups' wgmma are complete.
                // Layout [i][consumer thread]: conflict-free, and the reducer reads it the same way.
                named_barrier_sync(1, 256);
#pragma unroll
                for (int i = 0; i < BN / 2; ++i) st_shared_f32(sA + (i * 256 + ct) * 4, acc[i]);
            } else if constexpr (STORE_WARPS) {
                // hand the tile to the store warps: wait until they took the previous one out
                if (tiles_staged > 0) mbar_wait(drained, (tiles_staged - 1) & 1);
                const unsigned row = out_stage + (c * 64 + (warp & 3) * 16 + (lane >> 2)) * Cfg::OUT_ROW + (lane & 3) * 4;
#pragma unroll
                for (int j = 0; j < BN / 8; ++j) {
                    st_shared_u32(row + j * 16, pack_half2(acc[4 * j], acc[4 * j + 1]));
                    st_shared_u32(row + 8 * Cfg::OUT_ROW + j * 16, pack_half2(acc[4 * j + 2], acc[4 * j + 3]));
                }
                __syncwarp();
                if (lane == 0) mbar_arrive(staged);
                ++tiles_staged;
            } else {
                const unsigned stage = sW + STAGES * Cfg::W_BYTES + warp * Cfg::EPI_WARP;
                const int row0 = m0 + c * 64 + (warp & 3) * 16;
                const bool fast = (N % 8 == 0) && ((reinterpret_cast<size_t>(C) & 15) == 0);
#pragma unroll
                for (int ch = 0; ch < (BN + 63) / 64; ++ch) {
                    const int cw = BN - 64 * ch < 64 ? BN - 64 * ch : 64;  // columns in this chunk
#pragma unroll
                    for (int jj = 0; jj < 8; ++jj) {  // accumulator layout: n8 block j, rows lane/4 (+8)
                        const int j = ch * 8 + jj;   // (fixed trip counts: acc is indexed by constants only)
                        if (j >= BN / 8) break;
                        const unsigned at = stage + (lane >> 2) * Cfg::EPI_ROW + (jj * 4 + (lane & 3)) * 4;
                        st_shared_u32(at, pack_half2(acc[4 * j], acc[4 * j + 1]));
                        st_shared_u32(at + 8 * Cfg::EPI_ROW, pack_half2(acc[4 * j + 2], acc[4 * j + 3]));
                    }
                    __syncwarp();
                    const int cpr = cw / 8;  // 16-byte chunks per staged row
#pragma unroll
                    for (int it = 0; it < 4; ++it) {  // 16 rows x cpr chunks, 32 per pass
                        if (it >= cpr / 2) break;
                        const int idx = it * 32 + lane;
                        const int r = idx / cpr, q = idx % cpr;
                        unsigned v[4];
                        ld_shared_v4(stage + r * Cfg::EPI_ROW + q * 16, v);
                        const int grow = row0 + r, gcol = n0 + ch * 64 + q * 8;
                        if (grow < M && gcol < N) {
                            half_t *dst = C + (size_t)grow * N + gcol;
                            if (fast && gcol + 8 <= N) {
                                st_global_v4(dst, v);
                            } else {
#pragma unroll
                                for (int e = 0; e < 8; ++e)
                                    if (gcol + e < N) dst[e] = (half_t)(v[e >> 1] >> (16 * (e & 1)));
                            }
                        }
                    }
                    __syncwarp();
                }
            }
        }
    }

    if constexpr (SPLIT) {
        cluster_sync();  // every CTA's partial tile is in its shared memory
        if (wg > 0) {
            constexpr int JR = BN / 8 / CS;  // n8 column blocks this CTA adds up and stores
            const int ct = tid - 128, c = ct >> 7, lane = tid & 31;
            const int m0 = (first % MG) * BM, n0 = (first / MG) * BN;
            const int row = m0 + c * 64 + ((ct >> 5) & 3) * 16 + (lane >> 2);
            const bool vec = (N % 2 == 0) && ((reinterpret_cast<size_t>(C) & 3) == 0);
            unsigned part[CS];
#pragma unroll
            for (int r = 0; r < CS; ++r) part[r] = cluster_addr(sA + ct * 4, (unsigned)r);
#pragma unroll
            for (int jj = 0; jj < JR; ++jj) {
                const int j = (int)rank * JR + jj;
                float v[4];
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    float sum = 0.f;
#pragma unroll
                    for (int r = 0; r < CS; ++r) sum += ld_cluster_f32(part[r] + (4 * j + e) * 256 * 4);
                    v[e] = sum;
                }
                store_frag(C, M, N, vec, row, n0 + j * 8 + (lane & 3) * 2, v[0], v[1], v[2], v[3]);
            }
        }
        cluster_sync();  // no CTA leaves while another still reads its shared memory
    } else if constexpr (CS > 1) {
        cluster_sync();  // no CTA leaves while its partner may still arrive on its barriers
    }
    IMPGEMM_MARK(3, tid == 128);
}

// ---- gemm_tsk_<BM>x<BN>k<S>: latency-lean split-K for small-N shapes (routers) ---------------
// C is tiled BM x BN (BM 64 or 128); the S CTAs of a cluster share one output tile and CTA r
// multiplies K tiles [r*KT/S, (r+1)*KT/S) of it. BM/64 warpgroups per CTA, each on 64 rows, no
// producer warp: thread 0 posts every stage's TMA copies (A box 64xBM, W box 64xBN, 128-byte
// swizzle, OOB zero-fill) at once before the first wait, and the warpgroups run wgmma m64nBNk16 on
// each stage as it lands.
// Where a CTA has more K tiles than stages, a stage is refilled once every warp's wgmma on it has
// completed (one named barrier per refill). Then CTA r owns BN/S columns of the tile: every CTA
// pushes the FP32 partials of the other ranks' columns straight from registers into their receive
// buffers (st.async, completing on the receiver's mbarrier), and each adds up the S partials of
// its own columns in rank order and stores them: deterministic, no workspace.
// Why push, not pull: a pull needs two cluster barriers, and barrier.cluster.arrive.release
// compiles to MEMBAR.ALL.GPU -- the second one waits for the C stores to reach L2, which traced
// (tools/gemm_trace.py) took a third of a ~7 us launch.
// CH = 2 ("p" variants): a stage holds two 64-wide K chunks, and where K % 64 == 0 each operand's
// stage is one 3-D TMA box (64 x rows x 2 chunks of the [K/64, rows, 64] view, landing as two
// consecutive swizzled chunks); else two 2-D boxes. Why: traced, a CTA took in one 8-16 KiB box per
// ~100 ns whatever its size, so 64-row tiles (8 KiB A boxes) got ~80 GB/s an SM, not ~120.
// Why this family: a router GEMM (1024x128x2048: 4.5 MB, 0.5 GFLOP) is bound by how early and how
// many bytes are in flight, not by MMA rate. ~128 CTAs of BM x BN each read (BM + BN) x K/S halves,
// the whole slice in flight in one round trip; below 113 KiB of shared memory two CTAs fit on an
// SM, so more clusters are resident at once (a cluster of S CTAs must fit in one GPC: at one CTA
// per SM only ~120 CTAs of 4-clusters fit on an H100).
template <int BM_, int BN, int STAGES, int S, int CH>
struct TskConfig {
    static constexpr int BM = BM_, BK = 64, THREADS = 128 * (BM / 64);
    static constexpr int A_CHUNK = BM * BK * 2, W_CHUNK = BN * BK * 2;  // one 64-wide K chunk
    static constexpr int A_BYTES = CH * A_CHUNK, W_BYTES = CH * W_CHUNK;
    static constexpr int STAGE_BYTES = A_BYTES + W_BYTES;
    static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
    static constexpr int JR = BN / 8 / S;                        // n8 column blocks each rank reduces and stores
    static constexpr int RECV_BYTES = (S - 1) * JR * THREADS * 16;  // the other ranks' partials of those
    static constexpr int SMEM_BYTES = PIPE_BYTES + RECV_BYTES + 1024;
    // Where thread `tid`'s n8 block `jj` from sender `sender` lands in the receive buffer of rank
    // `receiver` (buffer base sR): the S-1 senders in rank order, skipping the receiver itself.
    __device__ static unsigned recv_addr(unsigned sR, int sender, int receiver, int jj, int tid) {
        const int slot = sender < receiver ? sender : sender - 1;
        return sR + ((slot * JR + jj) * THREADS + tid) * 16;
    }
    static_assert(BN % 16 == 0 && BN >= 64 && BN <= 256, "wgmma N and the TMA box");
    static_assert(BM == 64 || BM == 128, "one or two warpgroups of 64 rows");
    static_assert(S >= 1 && S <= 8 && (BN / 8) % S == 0, "split-K: whole n8 blocks per rank, portable cluster");
    static_assert(CH == 1 || CH == 2, "one or two K chunks a stage");
    static_assert(SMEM_BYTES + 8 * STAGES + 8 <= 232448, "227 KiB of shared memory per block");
};

struct F32x4 {  // (no float4: NVRTC without the toolkit headers)
    float x, y, z, w;
};
__device__ __forceinline__ F32x4 ld_shared_v4f(unsigned addr) {
    F32x4 v;
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(addr) : "memory");
    return v;
}
// 16 bytes into the shared memory of another CTA of the cluster, counted on its mbarrier `bar`
// (both shared::cluster addresses) as complete_tx bytes: no fence, no cluster barrier.
__device__ __forceinline__ void st_async_v4f(unsigned cluster_address, float a, float b, float c, float d, unsigned bar) {
    asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.v4.b32 [%0], {%1, %2, %3, %4}, [%5];\n" ::"r"(
                     cluster_address),
                 "r"(__float_as_uint(a)), "r"(__float_as_uint(b)), "r"(__float_as_uint(c)), "r"(__float_as_uint(d)),
                 "r"(bar)
                 : "memory");
}
// Split cluster barrier without memory ordering (the mbarrier init fence orders what it must).
__device__ __forceinline__ void cluster_arrive_relaxed() {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() { asm volatile("barrier.cluster.wait.aligned;\n" ::: "memory"); }

// K step `step` (CH 64-wide chunks from chunk step * CH) of `map`'s rows from row0 into dst, on mbarrier bar:
// one 3-D box where the host passed 3-D maps, else one 2-D box a chunk (chunks past K zero-filled).
template <int CH>
__device__ __forceinline__ void tsk_load_rows(const TmaMap &map, unsigned dst, int chunk_bytes, int row0, int step,
                                              unsigned bar, bool three_d) {
    if (CH == 2 && three_d) {
        tma_load_3d(dst, &map, 0, row0, step * CH, bar);
    } else {
#pragma unroll
        for (int c = 0; c < CH; ++c) tma_load_2d(dst + c * chunk_bytes, &map, (step * CH + c) * 64, row0, bar);
    }
}

// Stage `s` <- K step `step` of the A rows from m0 and W rows from n0.
template <class Cfg, int CH>
__device__ __forceinline__ void tsk_load_stage(const TmaMap &map_a, const TmaMap &map_w, unsigned sA, unsigned sW,
                                               unsigned full0, int s, int step, int m0, int n0, bool three_d) {
    const unsigned bar = full0 + 8 * s;
    mbar_expect_tx(bar, Cfg::STAGE_BYTES);
    tsk_load_rows<CH>(map_a, sA + s * Cfg::A_BYTES, Cfg::A_CHUNK, m0, step, bar, three_d);
    tsk_load_rows<CH>(map_w, sW + s * Cfg::W_BYTES, Cfg::W_CHUNK, n0, step, bar, three_d);
}

// One rank's FP16 output columns (JR n8 blocks from column col0, rows from m0) from registers: either
// staged in shared memory at sC (free by now) swizzled over the CB-byte box row and sent by one TMA
// store (whole lines, the tensor's edges clipped by the unit), or stored from registers.
template <int JR, int THREADS>
struct TskStore {
    static constexpr int CB = JR * 16;  // bytes of a staged row
    static_assert(CB == 32 || CB == 64 || CB == 128, "a TMA swizzle span");
    __device__ static void put(bool c_tma, unsigned sC, half_t *C, int M, int N, bool vec, int m0, int row, int col0,
                               int jj, int lane, F32x4 v) {
        if (c_tma) {  // 16-byte chunk jj of the row, XORed with the row's swizzle bits
            const int r0 = row - m0, r1 = r0 + 8;
            st_shared_u32(sC + r0 * CB + ((jj ^ ((r0 * CB >> 7) & (CB / 16 - 1))) << 4) + (lane & 3) * 4,
                          pack_half2(v.x, v.y));
            st_shared_u32(sC + r1 * CB + ((jj ^ ((r1 * CB >> 7) & (CB / 16 - 1))) << 4) + (lane & 3) * 4,
                          pack_half2(v.z, v.w));
        } else {
            store_frag(C, M, N, vec, row, col0 + jj * 8 + (lane & 3) * 2, v.x, v.y, v.z, v.w);
        }
    }
    __device__ static void finish(bool c_tma, const TmaMap &map_c, unsigned sC, int m0, int col0, int tid) {
        if (!c_tma) return;
        fence_proxy_async();
        named_barrier_sync(1, THREADS);
        if (tid == 0) {
            tma_store_2d(&map_c, sC, col0, m0);
            bulk_store_commit_wait_read();
        }
    }
};

// (M tile, N tile) of cluster `unit`: bands of `group` M tiles, within a band the M tile fastest, then N
// (group >= MT: M fastest over the grid, group 1: N fastest). The CTAs in flight on one GPC read the same
// A or W lines at the same time; the order decides which, and so how many L2 requests merge on the way.
__device__ __forceinline__ int2 tsk_tile(int unit, int MT, int NT, int group) {
    const int g0 = group < 1 ? 1 : (group > MT ? MT : group);
    const int band = unit / (g0 * NT), first = band * g0, g = min(g0, MT - first), r = unit - band * g0 * NT;
    return make_int2(first + r % g, r / g);
}

// One K step (CH 64-wide chunks) of a warpgroup's m64nBN accumulators from shared memory; returns once the
// previous step's batch is complete in this warp (this one stays in flight).
template <int BN, int CH, int A_CHUNK, int W_CHUNK>
__device__ __forceinline__ void tsk_mma_step(float (&acc)[BN / 2], unsigned a_base, unsigned w_base) {
    fence_regs(acc);
    wgmma_fence();
#pragma unroll
    for (int c = 0; c < CH; ++c)
#pragma unroll
        for (int ks = 0; ks < 4; ++ks)  // k16 steps of a 64-wide chunk
            wgmma_ss<BN>(acc, smem_desc(a_base + c * A_CHUNK + ks * 32), smem_desc(w_base + c * W_CHUNK + ks * 32));
    wgmma_commit();
    wgmma_wait<1>();
    fence_regs(acc);
}

// A warpgroup's m64nBN accumulators as FP16 from registers (rows from `row`, columns from n0; edges predicated).
template <int BN>
__device__ __forceinline__ void tsk_store_acc(const float (&acc)[BN / 2], half_t *__restrict__ C, int M, int N,
                                              bool vec, int row, int n0, int lane) {
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
        store_frag(C, M, N, vec, row, n0 + j * 8 + (lane & 3) * 2, acc[4 * j], acc[4 * j + 1], acc[4 * j + 2],
                   acc[4 * j + 3]);
}

template <int BM_, int BN, int STAGES, int S, int CH>
__device__ __forceinline__ void gemm_tsk_body(const TmaMap &map_a, const TmaMap &map_w, half_t *__restrict__ C,
                                              const TmaMap &map_c, int M, int N, int K, int group, bool c_tma) {
    using Cfg = TskConfig<BM_, BN, STAGES, S, CH>;
    constexpr int BM = Cfg::BM, BK = Cfg::BK, JR = Cfg::JR;
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    __shared__ __align__(8) unsigned long long bars[STAGES + 1];  // full[s], then the reduction's
    const unsigned sA = align1024(smem_u32(smem_raw));
    const unsigned sW = sA + STAGES * Cfg::A_BYTES;
    const unsigned sR = sW + STAGES * Cfg::W_BYTES;  // receive buffer [S-1 senders][JR][THREADS] x 16 bytes
    const unsigned full0 = smem_u32(&bars[0]), red_bar = smem_u32(&bars[STAGES]);

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    IMPGEMM_MARK(0, tid == 0);
    if (tid == 0) {  // the descriptors' fetch under the tile arithmetic below
        tma_prefetch_map(&map_a);
        tma_prefetch_map(&map_w);
    }
    const unsigned rank = S > 1 ? cluster_rank() : 0u;
    const int MT = (M + BM - 1) / BM, KS = ((K + BK - 1) / BK + CH - 1) / CH;  // K steps of CH chunks
    const int2 tile = tsk_tile(blockIdx.x / S, MT, (N + BN - 1) / BN, group);
    const int m0 = tile.x * BM, n0 = tile.y * BN;
    const int kt_begin = (int)rank * KS / S;  // this rank's K steps
    const int nk = ((int)rank + 1) * KS / S - kt_begin;
    const bool three_d = CH == 2 && K % BK == 0;  // the host passed 3-D maps (launch.py _tma_launcher)

    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) mbar_init(full0 + 8 * s, 1);
        if (S > 1) {
            mbar_init(red_bar, 1);
            mbar_expect_tx(red_bar, Cfg::RECV_BYTES);  // completes once the S-1 peers' partials landed
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        IMPGEMM_MARK(7, true);
        for (int s = 0; s < STAGES && s < nk; ++s) {  // every stage in flight before anyone waits
            tsk_load_stage<Cfg, CH>(map_a, map_w, sA, sW, full0, s, kt_begin + s, m0, n0, three_d);
            IMPGEMM_MARK(8, s == 0);
        }
        IMPGEMM_MARK(4, true);
    }
    __syncthreads();  // the barriers are initialised before any thread waits on them
    if (S > 1) cluster_arrive_relaxed();  // ... and before a peer sends to red_bar (it waits for this)

    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.f;
    for (int i = 0; i < nk; ++i) {
        const int s = i % STAGES;
        mbar_wait(full0 + 8 * s, (i / STAGES) & 1);
        IMPGEMM_MARK(1, tid == 0 && i == 0);
        const unsigned a_base = sA + s * Cfg::A_BYTES + wg * (64 * BK * 2), w_base = sW + s * Cfg::W_BYTES;
        tsk_mma_step<BN, CH, Cfg::A_CHUNK, Cfg::W_CHUNK>(acc, a_base, w_base);  // step i-1's batch done
        const int done = i - 1, refill = done + STAGES;  // the K step that goes into step done's buffers
        if (done >= 0 && refill < nk) {                 // uniform over the warps that read it
            named_barrier_sync(1, Cfg::THREADS);
            if (tid == 0)
                tsk_load_stage<Cfg, CH>(map_a, map_w, sA, sW, full0, done % STAGES, kt_begin + refill, m0, n0,
                                        three_d);
        }
    }
    wgmma_wait<0>();
    fence_regs(acc);
    IMPGEMM_MARK(2, tid == 0);

    // accumulator layout (m64nBN): thread = warp * 32 + lane of warpgroup wg holds rows
    // 64wg + 16warp + lane/4 (+8), columns 8j + 2*(lane%4) (+1) of n8 block j in acc[4j .. 4j+3]
    const int row = m0 + wg * 64 + warp * 16 + (lane >> 2);
    const bool vec = (N % 2 == 0) && ((reinterpret_cast<size_t>(C) & 3) == 0);
    if constexpr (S == 1) {
        tsk_store_acc<BN>(acc, C, M, N, vec, row, n0, lane);
    } else {
        cluster_wait();  // every peer's red_bar is initialised
#pragma unroll
        for (int d = 0; d < S; ++d) {  // rank d's columns go to rank d, into this rank's slot there
            if (d == (int)rank) continue;
            const unsigned bar = cluster_addr(red_bar, (unsigned)d);
#pragma unroll
            for (int jj = 0; jj < JR; ++jj) {
                const int j = d * JR + jj;
                st_async_v4f(cluster_addr(Cfg::recv_addr(sR, (int)rank, d, jj, tid), (unsigned)d), acc[4 * j],
                             acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3], bar);
            }
        }
        IMPGEMM_MARK(5, tid == 0);
        mbar_wait_cluster(red_bar, 0);
        IMPGEMM_MARK(6, tid == 0);
#pragma unroll
        for (int jj = 0; jj < JR; ++jj) {
            F32x4 sum = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int r = 0; r < S; ++r) {  // rank order, whoever finished first: deterministic
                F32x4 v;
                if (r == (int)rank) {
                    const int j = r * JR + jj;
                    v = {acc[4 * j], acc[4 * j + 1], acc[4 * j + 2], acc[4 * j + 3]};
                } else {
                    v = ld_shared_v4f(Cfg::recv_addr(sR, r, (int)rank, jj, tid));
                }
                if (r == 0) {
                    sum = v;
                } else {
                    sum.x += v.x;
                    sum.y += v.y;
                    sum.z += v.z;
                    sum.w += v.w;
                }
            }
            // staged in stage 0's A buffer: every load landed and was read
            TskStore<JR, Cfg::THREADS>::put(c_tma, sA, C, M, N, vec, m0, row, n0 + (int)rank * JR * 8, jj, lane, sum);
        }
        TskStore<JR, Cfg::THREADS>::finish(c_tma, map_c, sA, m0, n0 + (int)rank * JR * 8, tid);
        // no closing cluster barrier: a CTA's shared memory is read by itself only, and every CTA
        // waits for all bytes sent to it before it leaves
    }
    IMPGEMM_MARK(3, tid == 0);
}

#else
#define IMPGEMM_HAS_WGMMA 0
#endif

}  // namespace impgemm

// ---------------------------------------------------------------------------------------------
// Entry macros. The variants themselves are generated from the Python table
// (impbench/kernels/gemm/variants.py, entry_points) and appended to this source before it compiles:
// one IMPGEMM_<entry>(NAME, geometry..., TABLE_THREADS, TABLE_SMEM) line per variant. The last two are
// the row's threads and dynamic shared bytes, which its launches use; IMPGEMM_TABLE_ROW checks them
// against the config the kernel is built from, so a row that disagrees with this file fails to compile.
// mma and wgmma grids: (ceil(M/BM), ceil(N/BN)), M tiles fastest so the blocks in flight share W tiles in L2.
namespace impgemm {
template <class Cfg>
constexpr bool table_row(int threads, int smem_bytes) {
    return Cfg::THREADS == threads && Cfg::SMEM_BYTES == smem_bytes;
}
}  // namespace impgemm
#define IMPGEMM_TABLE_ROW(NAME, TABLE_THREADS, TABLE_SMEM, ...)                                            \
    static_assert(impgemm::table_row<__VA_ARGS__>(TABLE_THREADS, TABLE_SMEM),                              \
                  #NAME ": threads or shared bytes differ from its row in impbench/kernels/gemm/variants.py")

#define IMPGEMM_MMA(NAME, BM, BN, BK, WM, WN, WK, STAGES, TABLE_THREADS, TABLE_SMEM)                     \
    extern "C" __global__ void __launch_bounds__(32 * WM * WN * WK)                                        \
        NAME(const half_t *__restrict__ A, const half_t *__restrict__ W, half_t *__restrict__ C, int M,   \
             int N, int K) { pdl_wait();                                                                              \
        impgemm::gemm_mma_body<BM, BN, BK, WM, WN, WK, STAGES>(A, W, C, M, N, K);                          \
    }                                                                                                     \
    IMPGEMM_TABLE_ROW(NAME, TABLE_THREADS, TABLE_SMEM, impgemm::MmaConfig<BM, BN, BK, WM, WN, WK, STAGES>);

#if IMPGEMM_HAS_WGMMA
#define IMPGEMM_WGMMA(NAME, BM, BN, STAGES, TABLE_THREADS, TABLE_SMEM)                                    \
    extern "C" __global__ void __launch_bounds__(128 * (BM / 64), 1)                                       \
        NAME(const half_t *__restrict__ A, const half_t *__restrict__ W, half_t *__restrict__ C, int M,   \
             int N, int K) { pdl_wait();                                                                              \
        impgemm::gemm_wgmma_body<BM, BN, STAGES>(A, W, C, M, N, K);                                        \
    }                                                                                                     \
    IMPGEMM_TABLE_ROW(NAME, TABLE_THREADS, TABLE_SMEM, impgemm::WgConfig<BM, BN, STAGES>);
#define IMPGEMM_WGMMA_WS(NAME, BN, STAGES, TABLE_THREADS, TABLE_SMEM)                                     \
    extern "C" __global__ void __launch_bounds__(384, 1)                                                   \
        NAME(const half_t *__restrict__ A, const half_t *__restrict__ W, half_t *__restrict__ C, int M,   \
             int N, int K) { pdl_wait();                                                                              \
        impgemm::gemm_wgmma_ws_body<BN, STAGES>(A, W, C, M, N, K);                                         \
    }                                                                                                     \
    IMPGEMM_TABLE_ROW(NAME, TABLE_THREADS, TABLE_SMEM, impgemm::WsConfig<BN, STAGES>);
// tma: the tensor maps of A and W by value (encoded on the host per buffer); clusters from __cluster_dims__
#define IMPGEMM_TMA_ENTRY(NAME, BN, STAGES, CS, SPLIT, STORE_WARPS, CLUSTER_ATTR, TABLE_THREADS, TABLE_SMEM) \
    extern "C" __global__ void __launch_bounds__(384, 1) CLUSTER_ATTR                                          \
        NAME(const __grid_constant__ impgemm::TmaMap map_a, const __grid_constant__ impgemm::TmaMap map_w,     \
             half_t *__restrict__ C, int M, int N, int K) { pdl_wait();                                                   \
        impgemm::gemm_tma_body<BN, STAGES, CS, SPLIT, STORE_WARPS>(map_a, map_w, C, M, N, K);                  \
    }                                                                                                     \
    IMPGEMM_TABLE_ROW(NAME, TABLE_THREADS, TABLE_SMEM, impgemm::TmaConfig<BN, STAGES, CS, SPLIT, STORE_WARPS>);
#define IMPGEMM_TMA(NAME, BN, STAGES, T, S) IMPGEMM_TMA_ENTRY(NAME, BN, STAGES, 1, false, false, , T, S)
#define IMPGEMM_TMA_SW(NAME, BN, STAGES, T, S) IMPGEMM_TMA_ENTRY(NAME, BN, STAGES, 1, false, true, , T, S)
#define IMPGEMM_TMA_MC(NAME, BN, STAGES, T, S) \
    IMPGEMM_TMA_ENTRY(NAME, BN, STAGES, 2, false, false, __cluster_dims__(2, 1, 1), T, S)
#define IMPGEMM_TMA_SK(NAME, BN, STAGES, CS, T, S) \
    IMPGEMM_TMA_ENTRY(NAME, BN, STAGES, CS, true, false, __cluster_dims__(CS, 1, 1), T, S)
// tsk: + the output's tensor map (a TMA store where the host could build one, else unused), the tile
// order (tsk_tile's `group`) and whether to store through that map
#define IMPGEMM_TSK(NAME, BM, BN, STAGES, S, CH, TABLE_THREADS, TABLE_SMEM)                               \
    extern "C" __global__ void __launch_bounds__(128 * (BM / 64)) __cluster_dims__(S, 1, 1)                    \
        NAME(const __grid_constant__ impgemm::TmaMap map_a, const __grid_constant__ impgemm::TmaMap map_w,     \
             const __grid_constant__ impgemm::TmaMap map_c, half_t *__restrict__ C, int M, int N, int K, int group, \
             int c_tma) { pdl_wait();                                                                              \
        impgemm::gemm_tsk_body<BM, BN, STAGES, S, CH>(map_a, map_w, C, map_c, M, N, K, group, c_tma != 0);       \
    }                                                                                                     \
    IMPGEMM_TABLE_ROW(NAME, TABLE_THREADS, TABLE_SMEM, impgemm::TskConfig<BM, BN, STAGES, S, CH>);
#else
// Without sm_90a (another GPU, or nvcc's host pass) the sm_90a variants exist with their parameter lists
// and trap; the dispatch never picks them there.
#define IMPGEMM_WGMMA(NAME, BM, BN, STAGES, T, S)                                                         \
    extern "C" __global__ void NAME(const half_t *A, const half_t *W, half_t *C, int M, int N, int K) { pdl_wait();   \
        asm volatile("trap;");                                                                            \
    }
#define IMPGEMM_WGMMA_WS(NAME, BN, STAGES, T, S) IMPGEMM_WGMMA(NAME, 128, BN, STAGES, T, S)
#define IMPGEMM_TMA_TRAP(NAME)                                                                          \
    extern "C" __global__ void NAME(const __grid_constant__ impgemm::TmaMap ta,                                \
                                    const __grid_constant__ impgemm::TmaMap tw, half_t *C, int M, int N, int K) { pdl_wait(); \
        asm volatile("trap;");                                                                            \
    }
#define IMPGEMM_TMA(NAME, BN, STAGES, T, S) IMPGEMM_TMA_TRAP(NAME)
#define IMPGEMM_TMA_SW(NAME, BN, STAGES, T, S) IMPGEMM_TMA_TRAP(NAME)
#define IMPGEMM_TMA_MC(NAME, BN, STAGES, T, S) IMPGEMM_TMA_TRAP(NAME)
#define IMPGEMM_TMA_SK(NAME, BN, STAGES, CS, T, S) IMPGEMM_TMA_TRAP(NAME)
#define IMPGEMM_TSK(NAME, BM, BN, STAGES, S, CH, T, SM)                                                   \
    extern "C" __global__ void NAME(const __grid_constant__ impgemm::TmaMap ta,                                \
                                    const __grid_constant__ impgemm::TmaMap tw,                                \
                                    const __grid_constant__ impgemm::TmaMap tc, half_t *C, int M, int N, int K, \
                                    int group, int c_tma) { pdl_wait();                                       \
        asm volatile("trap;");                                                                            \
    }
#endif

