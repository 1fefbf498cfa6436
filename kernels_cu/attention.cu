// impbench-nvrtc-arch: sm_90a
// (read by impbench/kernels/_cache.py: on a compute-capability-9.0 device this family is compiled for
//  sm_90a so the wgmma kernels exist; elsewhere they compile to a trap and are never chosen.)
//
// Causal GQA flash attention for one prefill chunk over the KV cache, FP16 in, FP32 softmax.
//
// Query t of the chunk sits at absolute position i = pos + t and attends cache rows 0 .. i, or with a
// sliding window W > 0 rows i - W + 1 .. i (Gemma-4's sliding layers, W = 1024); the chunk's own keys
// and values are already in the cache at rows pos .. pos + T - 1. `pos` is read from device memory,
// never from the host: the grid depends only on the static T and head count, and each block derives
// its KV range from pos itself, so one captured CUDA graph serves every non-last prefill chunk.
// With a window a block starts at the key tile of its first query's first visible key: tiles wholly
// below it are never loaded; the partial tiles at both ends of each row's range are masked.
//
// Layouts (row-major, contiguous): q, out [T, Hq, D]; k, v [max_len, Hkv, D]; pos int32 [1].
// Query head h reads KV head h / (Hq / Hkv). Keys at or beyond min(pos + T, max_len) are never
// loaded (their shared-memory rows are zero-filled), so nothing past the chunk can leak in.
//
// Two kernel families (impbench/kernels/attention.py picks one per device), for D = 64, 128, 256, 512:
//
// 1. attention_prefill_wg_d<D> (Hopper, sm_90a; the H100 path) and attention_prefill_wg2_d<D>:
//    wgmma.mma_async. A block is WGS warpgroups (1 for wg_, 2 for wg2_) and 64 WGS (query, head)
//    rows: HB heads of one KV group x 64 WGS / HB consecutive queries (row r = query r / HB, head
//    r % HB; Qwen3-Coder in wg_: 8 heads x 8 queries). Why: all heads of a GQA group read the same
//    K/V, so packing them into one block streams each K/V tile from L2 once for the whole group
//    instead of once per head, and short query tiles waste little on the causal diagonal.
//    wg_ blocks have one warpgroup and fit two per SM (D <= 128), so two independent tile loops
//    share each SM; wg2_ blocks pair two warpgroups on one K/V stream.
//    Warpgroup g owns rows [64g, 64g + 64): S = Q K^T is one m64nBNk16 wgmma per k16 step (Q as
//    register A fragments for D <= 128, re-read with ldmatrix before every S; from shared memory
//    for D = 256), the online softmax runs on the accumulators in registers (row statistics inside
//    the quad that holds the row), P goes from the softmax straight into register A fragments, and
//    O += P V is an m64nDk16 wgmma per 16 keys with V read N-major (trans-b) from the same tile
//    layout as K. Per tile j: issue S_{j+1}, rescale O, issue PV_j, wait for S_{j+1}, run its
//    softmax while PV_j executes, wait for PV_j (FlashAttention-3's intra-warpgroup overlap).
//    K/V tiles of BN keys (64; 32 for D = 256) stream through STAGES shared-memory stages filled by
//    cp.async from every thread, STAGES - 1 tiles ahead; one __syncthreads per tile. Shared tiles
//    are stored as D/64 column blocks of [rows][64 halves] with the 128-byte swizzle (16-byte chunk
//    c of row r at c ^ (r & 7)), which is both the K-major layout of Q and K and the N-major layout
//    of V. Blocks of the last query tiles (the longest KV sweeps) are scheduled first.
//    D = 512 (attention_prefill_wg_d512, Gemma-4's full layers; FlashAttention stops at 256): 64
//    rows x 512 FP32 outputs are 256 registers a thread for one warpgroup, so two warpgroups share
//    the 64 rows and each owns half the head dimension (SplitGeometry): its halves of Q, K, V and O.
//    Each computes the partial S of its half; the halves meet once per tile through shared memory,
//    so both run the same softmax on the full S and their own PV.
//
// 2. attention_prefill_d<D> (portable mma.sync m16n8k16, any sm_80+; the fallback): 64 queries x 1
//    head per block, 4 warps, each warp owns 16 query rows (one m16 MMA tile) for the whole KV
//    sweep. KV tiles of BLOCK_N keys (64; 32 for D = 256) stream through two shared-memory stages
//    filled by cp.async: tile j + 1 loads while tile j is multiplied. K and V are separate commit
//    groups, so S = Q K^T starts as soon as K lands. Q fragments stay in registers for D <= 128;
//    for D = 256 they are re-read from shared memory with ldmatrix each tile. P goes from the S
//    accumulators straight into the A fragments of P V (the C layout of m16n8 equals the A layout of
//    m16n8k16), and V is read with ldmatrix .trans. Shared-memory rows are padded by 16 bytes so
//    ldmatrix rows fall in distinct banks. The output goes through shared memory for 16-byte
//    coalesced stores. D = 512: 32 queries per block, two warps per 16 rows, each the full S and half
//    of the output columns, 16-key tiles (97.5 KiB of shared memory, within sm_89's 99 KiB).
#include "common.cuh"
#include "hopper_async.cuh"

namespace {

constexpr int THREADS = 128;  // 4 warps
constexpr int NO_WINDOW_LO = -(1 << 30);  // a row's first visible key when there is no window

template <int D>
struct Geometry {
    // D = 512: 16 rows x 512 FP32 outputs would be 256 registers a lane, so two warps share each 16
    // query rows and split the output columns (each computes the full S itself), and the block is 32
    // queries with 16-key tiles: 97.5 KiB of shared memory, within the 99 KiB of sm_89 / sm_120.
    static constexpr int SPLIT = D == 512 ? 2 : 1;
    static constexpr int BLOCK_M = 64 / SPLIT;          // queries per block
    static constexpr int ROW_GROUPS = BLOCK_M / 16;     // warp w: rows 16 (w % ROW_GROUPS), column part w / ROW_GROUPS
    static constexpr int DO = D / SPLIT;                // output columns per warp
    static constexpr int BLOCK_N = D == 512 ? 16 : D >= 256 ? 32 : 64;
    static constexpr bool Q_IN_REGS = D <= 128;
    static constexpr int STRIDE = D + 8;  // halves per shared-memory row (16-byte pad)
    static constexpr int Q_HALVES = BLOCK_M * STRIDE;
    static constexpr int KV_HALVES = BLOCK_N * STRIDE;
    // Q tile + two stages of K + two stages of V. attention.py computes the same number.
    static constexpr int SMEM_BYTES = (Q_HALVES + 4 * KV_HALVES) * 2;
    static_assert(ROW_GROUPS * SPLIT * 32 == THREADS, "four warps per block");
};

#define NEG_INF __int_as_float(0xff800000)

// The first key tile a block of queries [first_query, ...) can see: keys below the window of its
// first query are skipped, never loaded. kv_end >= 1 keys exist; the result is a tile that holds
// one of them, so every block runs at least one tile.
__device__ __forceinline__ int first_tile(int first_query, int window, int kv_end, int block_n) {
    const int lo = window > 0 ? first_query - window + 1 : 0;
    return max(0, min(lo, kv_end - 1)) / block_n;
}

// A query at absolute position i sees keys [lo, lim]: lim = min(i, kv_end - 1) and, with a window,
// lo = i - window + 1 (key j visible iff i - window < j <= i); without one, no lower bound.
__device__ __forceinline__ int window_lo(int query, int window) {
    return window > 0 ? query - window + 1 : NO_WINDOW_LO;
}



// ROWS rows of D halves, global row stride `row_stride` halves, into shared rows of STRIDE halves.
// Rows >= rows_valid are zero-filled (cp.async with 0 source bytes reads nothing).
template <int ROWS, int D>
__device__ __forceinline__ void load_rows(half_t *smem, const half_t *gmem, long row_stride, int rows_valid,
                                          int tid) {
    constexpr int CHUNKS = D / 8;  // 16-byte chunks per row
    static_assert((ROWS * CHUNKS) % THREADS == 0, "tile must split evenly over the block");
#pragma unroll
    for (int it = 0; it < ROWS * CHUNKS / THREADS; ++it) {
        const int i = tid + it * THREADS;
        const int r = i / CHUNKS, c = i % CHUNKS;
        const bool ok = r < rows_valid;
        const half_t *src = ok ? gmem + r * row_stride + c * 8 : gmem;
        cp_async16(smem + r * Geometry<D>::STRIDE + c * 8, src, ok ? 16 : 0);
    }
}

template <int D>
__device__ __forceinline__ void attention_prefill_tile(const half_t *__restrict__ q, const half_t *__restrict__ k,
                                                       const half_t *__restrict__ v, const int *__restrict__ pos_ptr,
                                                       half_t *__restrict__ out, int T, int Hq, int Hkv,
                                                       int max_len, float scale_log2, int window) {
    using G = Geometry<D>;
    constexpr int BLOCK_M = G::BLOCK_M, BLOCK_N = G::BLOCK_N, STRIDE = G::STRIDE, DO = G::DO;
    constexpr int S_TILES = BLOCK_N / 8;  // n8 accumulator tiles of S per warp
    constexpr int O_TILES = DO / 8;       // n8 accumulator tiles of O per warp

    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    half_t *sQ = reinterpret_cast<half_t *>(smem_raw);
    half_t *sK = sQ + G::Q_HALVES;
    half_t *sV = sK + 2 * G::KV_HALVES;

    const int tid = threadIdx.x, lane = tid & 31;
    const int warp = (tid >> 5) % G::ROW_GROUPS, wcol = (tid >> 5) / G::ROW_GROUPS;  // 16-row group; column part
    const int head = blockIdx.x;
    const int t0 = (gridDim.y - 1 - blockIdx.y) * BLOCK_M;  // longest sweeps first
    const int kv_head = head / (Hq / Hkv);
    const int pos = *pos_ptr;
    const int rows_valid = min(BLOCK_M, T - t0);
    const int kv_end = min(pos + t0 + rows_valid, max_len);  // keys this block may touch: [0, kv_end)
    const int j0 = first_tile(pos + t0, window, kv_end, BLOCK_N);  // tile j of the loop is key tile j0 + j
    const int n_tiles = (kv_end + BLOCK_N - 1) / BLOCK_N - j0;
    const long q_row = (long)Hq * D, kv_row = (long)Hkv * D;
    const half_t *k_base = k + (long)kv_head * D;
    const half_t *v_base = v + (long)kv_head * D;

    auto load_kv = [&](int j) {  // two commit groups: K then V of tile j
        const int n0 = (j0 + j) * BLOCK_N;
        half_t *dk = sK + (j & 1) * G::KV_HALVES, *dv = sV + (j & 1) * G::KV_HALVES;
        if (j < n_tiles) load_rows<BLOCK_N, D>(dk, k_base + n0 * kv_row, kv_row, kv_end - n0, tid);
        cp_async_commit();
        if (j < n_tiles) load_rows<BLOCK_N, D>(dv, v_base + n0 * kv_row, kv_row, kv_end - n0, tid);
        cp_async_commit();
    };

    load_rows<BLOCK_M, D>(sQ, q + (long)t0 * q_row + (long)head * D, q_row, rows_valid, tid);
    cp_async_commit();
    load_kv(0);

    // Per-lane fragment addressing (see the PTX ISA fragment layouts for m16n8k16 and ldmatrix).
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;  // A, and V (.trans)
    const int k_row = (lane & 7) + (lane >> 4) * 8, k_col = ((lane >> 3) & 1) * 8;  // K as col-major B
    half_t *sQw = sQ + (warp * 16) * STRIDE;  // this warp's Q rows, later its output stage

    // This lane's two rows (quad row r and r + 8 of the warp's 16) and their visible keys [lo, lim].
    const int row0 = t0 + warp * 16 + (lane >> 2);
    const int lim0 = min(pos + row0, kv_end - 1), lim1 = min(pos + row0 + 8, kv_end - 1);
    const int lo0 = window_lo(pos + row0, window), lo1 = window_lo(pos + row0 + 8, window);
    const int warp_min_lim = min(pos + t0 + warp * 16, kv_end - 1);
    const int warp_max_lo = window_lo(pos + t0 + warp * 16 + 15, window);

    unsigned qf[G::Q_IN_REGS ? D / 16 : 1][4];
    float o[O_TILES][4];
#pragma unroll
    for (int i = 0; i < O_TILES; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;  // running max (log2 domain) and sum

    for (int j = 0; j < n_tiles; ++j) {
        // Pending before: [Q,] K_j, V_j. Wait for K_j (and Q); the barrier also frees stage (j+1)&1.
        cp_async_wait<1>();
        __syncthreads();
        if constexpr (G::Q_IN_REGS) {
            if (j == 0) {
#pragma unroll
                for (int kk = 0; kk < D / 16; ++kk)
                    ldmatrix_x4(qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], sQw + a_row * STRIDE + kk * 16 + a_col);
            }
        }
        load_kv(j + 1);  // empty groups past the end keep the group count uniform

        // S = Q K^T for this warp's 16 rows x BLOCK_N keys.
        const half_t *sKj = sK + (j & 1) * G::KV_HALVES;
        float s[S_TILES][4];
#pragma unroll
        for (int i = 0; i < S_TILES; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned a[4];
            if constexpr (G::Q_IN_REGS) {
                a[0] = qf[kk][0], a[1] = qf[kk][1], a[2] = qf[kk][2], a[3] = qf[kk][3];
            } else {
                ldmatrix_x4(a[0], a[1], a[2], a[3], sQw + a_row * STRIDE + kk * 16 + a_col);
            }
#pragma unroll
            for (int nn = 0; nn < BLOCK_N / 16; ++nn) {
                unsigned b[4];
                ldmatrix_x4(b[0], b[1], b[2], b[3], sKj + (nn * 16 + k_row) * STRIDE + kk * 16 + k_col);
                mma_16816(s[2 * nn], a, b);
                mma_16816(s[2 * nn + 1], a, b + 2);
            }
        }

        // Causal and window mask, only on tiles that reach past the warp's first row limit or below
        // its last row's window.
        const int n0 = (j0 + j) * BLOCK_N;
        if (n0 + BLOCK_N - 1 > warp_min_lim || n0 < warp_max_lo) {
#pragma unroll
            for (int i = 0; i < S_TILES; ++i) {
                const int key = n0 + i * 8 + (lane & 3) * 2;
                if (key > lim0 || key < lo0) s[i][0] = NEG_INF;
                if (key + 1 > lim0 || key + 1 < lo0) s[i][1] = NEG_INF;
                if (key > lim1 || key < lo1) s[i][2] = NEG_INF;
                if (key + 1 > lim1 || key + 1 < lo1) s[i][3] = NEG_INF;
            }
        }

        // Online softmax in the log2 domain. A row may see no key of a tile (the window starts later),
        // so its max can still be -inf: then it subtracts 0 instead, so exp2(-inf) = 0 gives P and the
        // rescale of its (zero) O, never -inf - -inf.
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int i = 0; i < S_TILES; ++i) {
            mx0 = fmaxf(mx0, fmaxf(s[i][0], s[i][1]) * scale_log2);
            mx1 = fmaxf(mx1, fmaxf(s[i][2], s[i][3]) * scale_log2);
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        const float b0 = mx0 == NEG_INF ? 0.f : mx0, b1 = mx1 == NEG_INF ? 0.f : mx1;
        const float alpha0 = fast_exp2(m0 - b0), alpha1 = fast_exp2(m1 - b1);
        m0 = mx0, m1 = mx1;
        float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
        for (int i = 0; i < S_TILES; ++i) {
            s[i][0] = fast_exp2(fmaf(s[i][0], scale_log2, -b0));
            s[i][1] = fast_exp2(fmaf(s[i][1], scale_log2, -b0));
            s[i][2] = fast_exp2(fmaf(s[i][2], scale_log2, -b1));
            s[i][3] = fast_exp2(fmaf(s[i][3], scale_log2, -b1));
            sum0 += s[i][0] + s[i][1];
            sum1 += s[i][2] + s[i][3];
        }
        l0 = l0 * alpha0 + sum0;  // per-lane partial sums; the quad reduces once at the end
        l1 = l1 * alpha1 + sum1;
#pragma unroll
        for (int i = 0; i < O_TILES; ++i) {
            o[i][0] *= alpha0, o[i][1] *= alpha0;
            o[i][2] *= alpha1, o[i][3] *= alpha1;
        }

        // O += P V: the S accumulators of keys 16kk..16kk+15 are the A fragment of step kk.
        cp_async_wait<2>();  // V_j landed (K_{j+1}, V_{j+1} may still be in flight)
        __syncthreads();
        const half_t *sVj = sV + (j & 1) * G::KV_HALVES;
#pragma unroll
        for (int kk = 0; kk < BLOCK_N / 16; ++kk) {
            const unsigned p[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]), pack_half2(s[2 * kk][2], s[2 * kk][3]),
                                   pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                   pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int dd = 0; dd < DO / 16; ++dd) {
                unsigned b[4];
                ldmatrix_x4_trans(b[0], b[1], b[2], b[3], sVj + (kk * 16 + a_row) * STRIDE + wcol * DO + dd * 16 + a_col);
                mma_16816(o[2 * dd], p, b);
                mma_16816(o[2 * dd + 1], p, b + 2);
            }
        }
    }
    cp_async_wait<0>();

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;

    // Stage the warp's 16 x DO outputs in its own Q rows and columns, then store 16-byte chunks of
    // the rows that exist. Where two warps share the rows (D = 512), the other may still be reading
    // them for its last S: wait for it.
    if constexpr (G::SPLIT > 1) __syncthreads();
    __syncwarp();
    half_t *stage = sQw + wcol * DO;
    const int r = lane >> 2, c = (lane & 3) * 2;
#pragma unroll
    for (int i = 0; i < O_TILES; ++i) {
        *reinterpret_cast<half2_t *>(stage + r * STRIDE + i * 8 + c) = pack_half2(o[i][0] * inv0, o[i][1] * inv0);
        *reinterpret_cast<half2_t *>(stage + (r + 8) * STRIDE + i * 8 + c) =
            pack_half2(o[i][2] * inv1, o[i][3] * inv1);
    }
    __syncwarp();
    constexpr int CHUNKS = DO / 8;
#pragma unroll
    for (int it = 0; it < 16 * CHUNKS / 32; ++it) {
        const int i = lane + it * 32;
        const int rr = i / CHUNKS, cc = i % CHUNKS;
        const int t = t0 + warp * 16 + rr;
        if (t < T)
            *reinterpret_cast<uint4 *>(out + t * q_row + (long)head * D + wcol * DO + cc * 8) =
                *reinterpret_cast<const uint4 *>(stage + rr * STRIDE + cc * 8);
    }
}

}  // namespace

// grid (Hq, ceil(T / Geometry<D>::BLOCK_M)) (64; 32 for D = 512), block 128, dynamic shared memory
// Geometry<D>::SMEM_BYTES. scale_log2 = softmax_scale * log2(e); window 0 = none.
#define ATTENTION_PREFILL(D)                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_prefill_d##D(                          \
        const half_t *q, const half_t *k, const half_t *v, const int *pos, half_t *out, int T, int Hq, int Hkv, \
        int max_len, float scale_log2, int window) { pdl_entry();                                          \
        attention_prefill_tile<D>(q, k, v, pos, out, T, Hq, Hkv, max_len, scale_log2, window);             \
    }

ATTENTION_PREFILL(64)
ATTENTION_PREFILL(128)
ATTENTION_PREFILL(256)
ATTENTION_PREFILL(512)

// ---------------------------------------------------------------------------------------------
// Hopper family: attention_prefill_wg_d<D>, attention_prefill_wg2_d<D> (see the header). Compiled only
// where the sm_90a feature set is on; elsewhere the entry points trap and attention.py never selects them.
namespace {

// WGS warpgroups per block, each owning 64 (query, head) rows. WGS = 1 (attention_prefill_wg_*, the
// default): 4 warps, two blocks per SM (D <= 128), so the two blocks' softmax and wgmma phases need
// not line up. WGS = 2 (attention_prefill_wg2_*): the 128-row block measured first; its two
// warpgroups meet at every tile's barrier.
// Every wgmma is waited on inside its tile, so a stage is busy only for the tile being multiplied and
// the tiles loading: PREFETCH = STAGES - 1 tiles are loaded ahead.
template <int D, int WGS>
struct WgGeometry {
    static constexpr int ROWS = 64 * WGS;  // (query, head) rows per block
    static constexpr int THREADS = 128 * WGS;
    static constexpr int BN = D >= 256 ? 32 : 64;  // keys per tile (D = 256: keeps O + S in registers)
    // D = 128, WGS = 1: 16 + 3 x 32 KiB + 1 KiB = 113 KiB, two blocks fill the SM's 228 KiB.
    static constexpr int STAGES = (WGS == 1 && D == 64) || (WGS == 2 && D <= 128) ? 4 : 3;
    static constexpr int PREFETCH = STAGES - 1;
    static constexpr bool Q_IN_REGS = D <= 128;       // D = 256: Q stays in shared memory (A descriptor)
    static constexpr int CPR = D / 8;                 // 16-byte chunks per row
    static constexpr int RPP = THREADS / CPR;         // rows per pass of a block-wide copy
    static constexpr int Q_BYTES = ROWS * D * 2;
    static constexpr int KV_BYTES = BN * D * 2;       // K (or V) of one stage
    // Q + STAGES x (K + V) + 1 KiB to align the base to the 1024-byte swizzle atom. attention.py
    // computes the same number.
    static constexpr int SMEM_BYTES = Q_BYTES + STAGES * 2 * KV_BYTES + 1024;
    static_assert(BN % RPP == 0 && ROWS % RPP == 0, "tiles must split evenly over the block");
};

// attention_prefill_wg_d512: 64 rows (as WgGeometry<D, 1>) and two warpgroups that split the head
// dimension. Warpgroup g owns columns [g DH, g DH + DH) of Q, K, V and O: 64 x 256 FP32 outputs are
// 128 registers a thread, where one warpgroup with all 512 columns would need 256. Each warpgroup
// loads, multiplies and stores its own half; S = Q K^T is the sum of the two halves' partial
// products, exchanged through shared memory once per tile, so both softmaxes see the same full S.
// Per warpgroup: Q half, two K and two V half-tile slots, two partial-S buffers (the exchange of
// tile j + 2 reuses tile j's, which the other warpgroup has read before the barrier of tile j + 1).
template <int D>
struct SplitGeometry {
    static constexpr int DH = D / 2;             // columns per warpgroup
    static constexpr int BN = 32;                // keys per tile
    static constexpr int CPR = DH / 8;           // 16-byte chunks per half row
    static constexpr int RPP = 128 / CPR;        // rows per pass of a warpgroup's copy
    static constexpr int Q_BYTES = 64 * DH * 2;  // 32 KiB
    static constexpr int KV_BYTES = BN * DH * 2; // 16 KiB: a K or V half tile
    static constexpr int X_BYTES = 64 * BN * 4;  // 8 KiB: a partial S tile (FP32)
    static constexpr int WG_BYTES = Q_BYTES + 4 * KV_BYTES + 2 * X_BYTES;
    // two warpgroups' 112 KiB + 1 KiB to align the base to the swizzle atom = 225 KiB of the 227.
    // attention.py computes the same number.
    static constexpr int SMEM_BYTES = 2 * WG_BYTES + 1024;
    static_assert(BN % RPP == 0 && 64 % RPP == 0 && WG_BYTES % 1024 == 0, "copies and swizzle atoms must fit");
};

}  // namespace

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace {

using namespace impasync;  // wgmma fences and groups, fence_proxy_async, fence_regs

// Shared-memory matrix descriptor, 128-byte swizzle. K-major operands (Q, K): 8-row groups 1024 bytes
// apart (stride byte offset), the leading offset unused. N-major V: the stride byte offset is the
// next 8 keys (1024 bytes), the leading byte offset the next 64-wide column block of D.
__device__ __forceinline__ unsigned long long sw128_desc(unsigned addr, unsigned lead_bytes) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lead_bytes >> 4) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

#define WG_F8(i)                                                                                             \
    "+f"(d[OFF + i]), "+f"(d[OFF + i + 1]), "+f"(d[OFF + i + 2]), "+f"(d[OFF + i + 3]), "+f"(d[OFF + i + 4]), \
        "+f"(d[OFF + i + 5]), "+f"(d[OFF + i + 6]), "+f"(d[OFF + i + 7])

// D(64 x N) += A(64 x 16, registers: the m16n8k16 A fragment of each warp's 16 rows) * B(16 x N,
// shared memory; TRANS_B = 0: K-major, 1: N-major). FP16 in, FP32 accumulators d[OFF .. OFF + N / 2).
// accumulate = 0 overwrites d (no instruction outside the wgmma pipeline defines the accumulators).
template <int TRANS_B, int OFF = 0, int R>
__device__ __forceinline__ void wgmma_rs_n64(float (&d)[R], const unsigned (&a)[4], unsigned long long db,
                                             int accumulate = 1) {
    static_assert(OFF + 32 <= R, "accumulators out of range");
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %38, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %37;\n}\n"
        : WG_F8(0), WG_F8(8), WG_F8(16), WG_F8(24)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TRANS_B), "r"(accumulate));
}

template <int TRANS_B, int OFF = 0, int R>
__device__ __forceinline__ void wgmma_rs_n128(float (&d)[R], const unsigned (&a)[4], unsigned long long db) {
    static_assert(OFF + 64 <= R, "accumulators out of range");
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, 1, 1, 1, %69;\n"
        : WG_F8(0), WG_F8(8), WG_F8(16), WG_F8(24), WG_F8(32), WG_F8(40), WG_F8(48), WG_F8(56)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TRANS_B));
}

// D(64 x 32) += A(64 x 16) * B(16 x 32), both K-major in shared memory (S of D = 256).
template <int OFF = 0, int R>
__device__ __forceinline__ void wgmma_ss_n32(float (&d)[R], unsigned long long da, unsigned long long db,
                                             int accumulate = 1) {
    static_assert(OFF + 16 <= R, "accumulators out of range");
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %18, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n32k16.f32.f16.f16 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15}, "
        "%16, %17, p, 1, 1, 0, 0;\n}\n"
        : WG_F8(0), WG_F8(8)
        : "l"(da), "l"(db), "r"(accumulate));
}
#undef WG_F8

// O(64 x D) += P(64 x 16 keys) V(16 keys x D) for one k16 step; v_desc addresses the step's 16 keys.
template <int D>
__device__ __forceinline__ void pv_step(float (&o)[D / 2], const unsigned (&p)[4], unsigned long long v_desc,
                                        unsigned block_bytes) {
    if constexpr (D == 64) {
        wgmma_rs_n64<1>(o, p, v_desc);
    } else if constexpr (D == 128) {
        wgmma_rs_n128<1>(o, p, v_desc);
    } else {  // D = 256: two N = 128 halves, column blocks 0-1 and 2-3
        wgmma_rs_n128<1, 0>(o, p, v_desc);
        wgmma_rs_n128<1, 64>(o, p, v_desc + ((2 * block_bytes) >> 4));
    }
}

// A thread's two accumulator rows (r and r + 8 of its warp's 16) see keys [lo, lim] of the cache.
struct RowLimits {
    int lim0, lim1, lo0, lo1;
};

// One online-softmax step on this thread's scores x of key tile [n0, n0 + BN) in the wgmma (and
// m16n8) accumulator layout: x[4i + e] is row r (e < 2) or r + 8, key n0 + 8i + 2 (lane & 3) + (e & 1).
// Masks keys outside each row's [lo, lim] (only on tiles that cross a limit), updates the running
// max m (log2 domain) and the per-lane partial sums l, sets the O rescale alpha, and leaves the
// probabilities in x. A row may see no key of a tile (its window starts later), so its max can still
// be -inf: it then subtracts 0 instead, so exp2(-inf) = 0 gives P and alpha, never -inf - -inf.
template <int BN>
__device__ __forceinline__ void softmax_step(float (&x)[BN / 2], int n0, int lane, const RowLimits &rows,
                                             float scale_log2, float &m0, float &m1, float &l0, float &l1,
                                             float &alpha0, float &alpha1) {
    if (n0 + BN - 1 > rows.lim0 || n0 < rows.lo1) {
        const int key0 = n0 + 2 * (lane & 3);
#pragma unroll
        for (int i = 0; i < BN / 8; ++i) {
            const int key = key0 + 8 * i;
            x[4 * i] = key > rows.lim0 || key < rows.lo0 ? NEG_INF : x[4 * i];
            x[4 * i + 1] = key + 1 > rows.lim0 || key + 1 < rows.lo0 ? NEG_INF : x[4 * i + 1];
            x[4 * i + 2] = key > rows.lim1 || key < rows.lo1 ? NEG_INF : x[4 * i + 2];
            x[4 * i + 3] = key + 1 > rows.lim1 || key + 1 < rows.lo1 ? NEG_INF : x[4 * i + 3];
        }
    }
    float mx0 = m0, mx1 = m1;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
        mx0 = fmaxf(mx0, fmaxf(x[4 * i], x[4 * i + 1]) * scale_log2);
        mx1 = fmaxf(mx1, fmaxf(x[4 * i + 2], x[4 * i + 3]) * scale_log2);
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float b0 = mx0 == NEG_INF ? 0.f : mx0, b1 = mx1 == NEG_INF ? 0.f : mx1;
    alpha0 = fast_exp2(m0 - b0), alpha1 = fast_exp2(m1 - b1);
    m0 = mx0, m1 = mx1;
    float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
        x[4 * i] = fast_exp2(fmaf(x[4 * i], scale_log2, -b0));
        x[4 * i + 1] = fast_exp2(fmaf(x[4 * i + 1], scale_log2, -b0));
        x[4 * i + 2] = fast_exp2(fmaf(x[4 * i + 2], scale_log2, -b1));
        x[4 * i + 3] = fast_exp2(fmaf(x[4 * i + 3], scale_log2, -b1));
        sum0 += x[4 * i] + x[4 * i + 1];
        sum1 += x[4 * i + 2] + x[4 * i + 3];
    }
    l0 = l0 * alpha0 + sum0;  // per-lane partial sums; the quad reduces once at the end
    l1 = l1 * alpha1 + sum1;
}

// The probabilities of keys 16kk .. 16kk + 15 are the A fragment of k16 step kk.
template <int BN>
__device__ __forceinline__ void pack_probs(const float (&x)[BN / 2], unsigned (&p)[BN / 16][4]) {
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
        p[kk][0] = pack_half2(x[8 * kk], x[8 * kk + 1]);
        p[kk][1] = pack_half2(x[8 * kk + 2], x[8 * kk + 3]);
        p[kk][2] = pack_half2(x[8 * kk + 4], x[8 * kk + 5]);
        p[kk][3] = pack_half2(x[8 * kk + 6], x[8 * kk + 7]);
    }
}

// The Hopper kernel (see the header). Tile j of a warpgroup: wait for K/V tile j + 1, issue S_{j+1} =
// Q K_{j+1}^T, rescale O by the softmax of tile j, issue PV_j, wait for S_{j+1}, run the softmax of
// tile j + 1 while PV_j executes, wait for PV_j, pack P_{j+1}. The tensor cores see S_{j+1} and PV_j
// back to back and the softmax hides behind PV (the order of FlashAttention-3's intra-warpgroup
// overlap). Each tile ends with every wgmma waited on (ptxas serializes wgmmas whose accumulators are
// touched while an older group may still be pending).
template <int D, int WGS>
__device__ __forceinline__ void attention_wg_body(const half_t *__restrict__ q, const half_t *__restrict__ k,
                                                  const half_t *__restrict__ v, const int *__restrict__ pos_ptr,
                                                  half_t *__restrict__ out, int T, int Hq, int Hkv, int max_len,
                                                  float scale_log2, int HB, int window) {
    using G = WgGeometry<D, WGS>;
    constexpr int BN = G::BN, ST = G::STAGES, PF = G::PREFETCH, CPR = G::CPR, RPP = G::RPP;
    constexpr int S_REGS = BN / 2, O_REGS = D / 2;
    constexpr unsigned KV_BLOCK = BN * 128;       // bytes of one 64-wide column block of a K/V tile
    constexpr unsigned Q_BLOCK = G::ROWS * 128;   // ... of the Q tile

    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    // The 128-byte swizzle is a function of address bits 4-9: tile bases must be 1024-byte aligned.
    const unsigned raw_addr = smem_u32(smem_raw);
    unsigned char *smem = smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr);
    unsigned char *sQ = smem;
    unsigned char *sKV = smem + G::Q_BYTES;  // stage s: K at s * 2 * KV_BYTES, V right after it
    const unsigned sQ_addr = smem_u32(sQ), sKV_addr = smem_u32(sKV);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wg = warp >> 2, wq = warp & 3;
    const int group = Hq / Hkv;
    const int QB = G::ROWS / HB;                             // queries per block
    const int head0 = blockIdx.x * HB;                       // first query head of the block
    const int kv_head = head0 / group;
    const int t0 = (gridDim.y - 1 - blockIdx.y) * QB;        // longest sweeps first
    const int pos = *pos_ptr;
    const int q_valid = min(QB, T - t0);
    const int kv_end = min(pos + t0 + q_valid, max_len);     // keys this block may touch: [0, kv_end)
    const int j0 = first_tile(pos + t0, window, kv_end, BN); // tile j of the loop is key tile j0 + j
    const int n_tiles = (kv_end + BN - 1) / BN - j0;         // >= 1
    const long q_row = (long)Hq * D, kv_row = (long)Hkv * D;

    // Copy geometry: thread copies chunk c of rows r_first + RPP * it. Byte offset of pass `it` in a
    // tile: swizzled chunk c ^ (row & 7) of the row (constant over passes when RPP % 8 == 0).
    const int c = tid % CPR, r_first = tid / CPR;
    auto soff = [&](int it) -> unsigned {
        const int r = r_first + it * RPP;
        return (((c & 7) ^ (r & 7)) << 4) + r * 128;
    };
    const unsigned kv_soff = (c >> 3) * KV_BLOCK, q_soff = (c >> 3) * Q_BLOCK;
    const half_t *k_src = k + (long)kv_head * D + c * 8, *v_src = v + (long)kv_head * D + c * 8;

    auto load_kv = [&](int j) {  // tile j into stage j % ST, one commit group (empty past the end)
        if (j < n_tiles) {
            const int n0 = (j0 + j) * BN;
            unsigned char *dk = sKV + (j % ST) * 2 * G::KV_BYTES + kv_soff;
#pragma unroll
            for (int it = 0; it < BN / RPP; ++it) {
                const int key = n0 + r_first + it * RPP;
                const bool ok = key < kv_end;
                const long g = ok ? key * kv_row : 0;
                cp_async16(dk + soff(it), k_src + g, ok ? 16 : 0);
                cp_async16(dk + G::KV_BYTES + soff(it), v_src + g, ok ? 16 : 0);
            }
        }
        cp_async_commit();
    };

#pragma unroll
    for (int it = 0; it < G::ROWS / RPP; ++it) {  // Q rows: (query t0 + r / HB, head head0 + r % HB)
        const int r = r_first + it * RPP, qi = r / HB, t = t0 + qi;
        const bool ok = qi < QB && t < T;
        const half_t *src = ok ? q + (long)t * q_row + (long)(head0 + r - qi * HB) * D + c * 8 : q;
        cp_async16(sQ + q_soff + soff(it), src, ok ? 16 : 0);
    }
#pragma unroll
    for (int j = 0; j < PF; ++j) load_kv(j);  // tiles 0 .. PF - 1; Q joins tile 0's group

    // This thread's two accumulator rows (block rows R0, R0 + 8) and their visible keys [lo, lim].
    const int R0 = wg * 64 + wq * 16 + (lane >> 2);
    const RowLimits rows{min(pos + t0 + R0 / HB, kv_end - 1), min(pos + t0 + (R0 + 8) / HB, kv_end - 1),
                         window_lo(pos + t0 + R0 / HB, window), window_lo(pos + t0 + (R0 + 8) / HB, window)};

    unsigned qf[G::Q_IN_REGS ? D / 16 : 1][4];  // Q A fragments, re-read for every S (see issue_s)
    unsigned p[BN / 16][4];                     // P fragments of the next PV
    float o[O_REGS], s[S_REGS], x[S_REGS];      // O; S; masked scores, then probabilities
#pragma unroll
    for (int i = 0; i < O_REGS; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < S_REGS; ++i) s[i] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;  // running max (log2 domain) and partial sums
    float alpha0 = 0.f, alpha1 = 0.f;                      // O rescale of the tile whose P is in p

    // S_jt = Q K_jt^T (64 rows x BN keys per warpgroup) into s, committed as one wgmma group. The Q
    // fragments are re-read each time: kept in registers across loop iterations, ptxas 13.0 gave
    // their registers to the P fragments (D = 64), so their live range stays inside one tile.
    auto issue_s = [&](int jt) {
        const unsigned k_addr = sKV_addr + (jt % ST) * 2 * G::KV_BYTES;
        if constexpr (G::Q_IN_REGS) {
            const int row = wg * 64 + wq * 16 + (lane & 15);
#pragma unroll
            for (int ks = 0; ks < D / 16; ++ks) {
                const int chunk = 2 * ks + (lane >> 4);
                ldmatrix_x4(qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3],
                            sQ + (chunk >> 3) * Q_BLOCK + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
            }
        }
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            const unsigned k_desc_addr = k_addr + (ks >> 2) * KV_BLOCK + (ks & 3) * 32;
            if constexpr (G::Q_IN_REGS) {
                static_assert(BN == 64, "register-A S wgmma is m64n64k16");
                wgmma_rs_n64<0>(s, qf[ks], sw128_desc(k_desc_addr, 16), ks > 0);
            } else {
                static_assert(BN == 32, "shared-A S wgmma is m64n32k16");
                const unsigned q_desc_addr = sQ_addr + (ks >> 2) * Q_BLOCK + wg * 64 * 128 + (ks & 3) * 32;
                wgmma_ss_n32(s, sw128_desc(q_desc_addr, 16), sw128_desc(k_desc_addr, 16), ks > 0);
            }
        }
        wgmma_commit();
    };

    // Softmax of the complete S of tile jt: reads s (never writes it: registers a wgmma owns are
    // defined only by wgmma, else ptxas serializes, C7515), leaves the probabilities in x and the O
    // rescale in alpha.
    auto softmax = [&](int jt) {
#pragma unroll
        for (int i = 0; i < S_REGS; ++i) x[i] = s[i];
        softmax_step<BN>(x, (j0 + jt) * BN, lane, rows, scale_log2, m0, m1, l0, l1, alpha0, alpha1);
    };
    auto pack_p = [&]() { pack_probs<BN>(x, p); };

    // Prologue: S_0 and its softmax.
    cp_async_wait<PF - 1>();  // tile 0 and Q landed
    fence_proxy_async();
    __syncthreads();
    issue_s(0);
    wgmma_wait<0>();
    fence_regs(s);
    softmax(0);
    pack_p();

    auto pv = [&](int jt) {  // O = alpha O + P_jt V_jt, committed as one wgmma group
#pragma unroll
        for (int i = 0; i < D / 8; ++i) {
            o[4 * i] *= alpha0, o[4 * i + 1] *= alpha0;
            o[4 * i + 2] *= alpha1, o[4 * i + 3] *= alpha1;
        }
        const unsigned v_addr = sKV_addr + (jt % ST) * 2 * G::KV_BYTES + G::KV_BYTES;
        fence_regs(o);
        fence_regs(p);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) pv_step<D>(o, p[kk], sw128_desc(v_addr + kk * 2048, KV_BLOCK), KV_BLOCK);
        wgmma_commit();
    };

    // Every tile but the last: S of the next tile is issued unconditionally, so each wait below retires
    // a known group on every path (with S conditional, ptxas could not tell and serialized, C7514).
    for (int j = 0; j + 1 < n_tiles; ++j) {
        // Pending before: tiles j + 1 .. j + PF - 1. Wait for tile j + 1 and pass the barrier: after it
        // every warpgroup has finished tile j - 1, so stage (j - 1) % ST = (j + PF) % ST is free.
        cp_async_wait<PF - 2>();
        fence_proxy_async();
        __syncthreads();
        load_kv(j + PF);
        issue_s(j + 1);
        pv(j);
        wgmma_wait<1>();  // S_{j+1} done; PV_j runs under the softmax
        fence_regs(s);
        softmax(j + 1);
        wgmma_wait<0>();  // PV_j done: its P registers are free
        fence_regs(o);
        fence_regs(p);
        pack_p();
    }
    // The last tile (its K/V landed before the last barrier above, or the prologue's).
    pv(n_tiles - 1);
    wgmma_wait<0>();
    fence_regs(o);
    fence_regs(p);
    cp_async_wait<0>();  // only empty groups can remain; keep the count tidy before exit

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;

    // Stage this warpgroup's 64 x D output in its own rows of the Q tile (same swizzled layout; only
    // this warpgroup ever read them, and its last wgmma is complete), then store 16-byte chunks of
    // the rows that exist.
    const int R1 = R0 + 8, cq = (lane & 3) * 4;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        const unsigned blk = (i >> 3) * Q_BLOCK, ch = i & 7;
        *reinterpret_cast<half2_t *>(sQ + blk + R0 * 128 + ((ch ^ (R0 & 7)) << 4) + cq) =
            pack_half2(o[4 * i] * inv0, o[4 * i + 1] * inv0);
        *reinterpret_cast<half2_t *>(sQ + blk + R1 * 128 + ((ch ^ (R1 & 7)) << 4) + cq) =
            pack_half2(o[4 * i + 2] * inv1, o[4 * i + 3] * inv1);
    }
    if (wg == 0)  // this warpgroup's 128 threads (named barriers 1 and 2; immediates keep the count at 3)
        asm volatile("bar.sync 1, 128;\n" ::: "memory");
    else
        asm volatile("bar.sync 2, 128;\n" ::: "memory");
#pragma unroll
    for (int it = 0; it < 64 * CPR / 128; ++it) {
        const int i = (tid & 127) + it * 128;
        const int rr = i / CPR, cc = i % CPR;
        const int r = wg * 64 + rr, qi = r / HB, t = t0 + qi;
        if (qi < QB && t < T)
            *reinterpret_cast<uint4 *>(out + (long)t * q_row + (long)(head0 + r - qi * HB) * D + cc * 8) =
                *reinterpret_cast<const uint4 *>(sQ + (cc >> 3) * Q_BLOCK + r * 128 + (((cc & 7) ^ (r & 7)) << 4));
    }
}

// This warpgroup's 128 threads (named barriers 1 and 2; immediates keep the barrier count known).
__device__ __forceinline__ void warpgroup_bar(int wg) {
    if (wg == 0)
        asm volatile("bar.sync 1, 128;\n" ::: "memory");
    else
        asm volatile("bar.sync 2, 128;\n" ::: "memory");
}

__device__ __forceinline__ void st_shared_f32x4(unsigned addr, float a, float b, float c, float d) {
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}
__device__ __forceinline__ void ld_shared_f32x4(unsigned addr, float &a, float &b, float &c, float &d) {
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(a), "=f"(b), "=f"(c), "=f"(d) : "r"(addr) : "memory");
}

// The D = 512 kernel (SplitGeometry). Per tile j of warpgroup g: wait for K_{j+1} and V_j, load K_{j+2}
// and V_{j+1} into the slots S_j and PV_{j-1} freed, issue S_{j+1} (its half of the head dimension),
// issue PV_j (its half of the output columns), wait for S_{j+1}, add the other warpgroup's partial
// S_{j+1} and run the softmax while PV_j executes, wait for PV_j. K and V sit in separate two-slot
// rings so that every load is issued one whole tile before it is needed.
template <int D>
__device__ __forceinline__ void attention_wg_split_body(const half_t *__restrict__ q, const half_t *__restrict__ k,
                                                        const half_t *__restrict__ v, const int *__restrict__ pos_ptr,
                                                        half_t *__restrict__ out, int T, int Hq, int Hkv, int max_len,
                                                        float scale_log2, int HB, int window) {
    using G = SplitGeometry<D>;
    constexpr int BN = G::BN, DH = G::DH, CPR = G::CPR, RPP = G::RPP;
    constexpr int S_REGS = BN / 2, O_REGS = DH / 2;
    constexpr unsigned KV_BLOCK = BN * 128;  // bytes of one 64-wide column block of a K/V half tile
    constexpr unsigned Q_BLOCK = 64 * 128;   // ... of the Q half tile

    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    const unsigned raw_addr = smem_u32(smem_raw);
    unsigned char *smem = smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr);

    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, t = tid & 127, wq = t >> 5;
    unsigned char *sQ = smem + wg * G::WG_BYTES;  // this warpgroup's region: Q, K slots, V slots, partial S
    unsigned char *sK = sQ + G::Q_BYTES, *sV = sK + 2 * G::KV_BYTES;
    const unsigned sQ_addr = smem_u32(sQ), sK_addr = smem_u32(sK), sV_addr = smem_u32(sV);
    const unsigned sX_addr = sV_addr + 2 * G::KV_BYTES;
    const unsigned sX_other = wg == 0 ? sX_addr + G::WG_BYTES : sX_addr - G::WG_BYTES;

    const int group = Hq / Hkv;
    const int QB = 64 / HB;                                  // queries per block
    const int head0 = blockIdx.x * HB;                       // first query head of the block
    const int kv_head = head0 / group;
    const int t0 = (gridDim.y - 1 - blockIdx.y) * QB;        // longest sweeps first
    const int pos = *pos_ptr;
    const int q_valid = min(QB, T - t0);
    const int kv_end = min(pos + t0 + q_valid, max_len);     // keys this block may touch: [0, kv_end)
    const int j0 = first_tile(pos + t0, window, kv_end, BN); // tile j of the loop is key tile j0 + j
    const int n_tiles = (kv_end + BN - 1) / BN - j0;         // >= 1, the same for both warpgroups
    const long q_row = (long)Hq * D, kv_row = (long)Hkv * D;

    // Copy geometry: thread t copies 16-byte chunk c of its half row in rows r_first + RPP * it, to
    // column block c / 8, swizzled chunk (c % 8) ^ (row % 8).
    const int c = t % CPR, r_first = t / CPR;
    auto soff = [&](int r, unsigned block_bytes) -> unsigned {
        return (c >> 3) * block_bytes + r * 128 + (((c & 7) ^ (r & 7)) << 4);
    };
    const long col = (long)kv_head * D + wg * DH + c * 8;
    auto load_half_tile = [&](const half_t *src, unsigned char *slots, int jt) {  // nothing past the last tile
        if (jt < n_tiles) {
            const int n0 = (j0 + jt) * BN;
            unsigned char *dst = slots + (jt & 1) * G::KV_BYTES;
#pragma unroll
            for (int it = 0; it < BN / RPP; ++it) {
                const int r = r_first + it * RPP, key = n0 + r;
                const bool ok = key < kv_end;
                cp_async16(dst + soff(r, KV_BLOCK), src + (ok ? key * kv_row + col : col), ok ? 16 : 0);
            }
        }
    };
    auto load_k = [&](int jt) { load_half_tile(k, sK, jt); };
    auto load_v = [&](int jt) { load_half_tile(v, sV, jt); };

#pragma unroll
    for (int it = 0; it < 64 / RPP; ++it) {  // Q rows: (query t0 + r / HB, head head0 + r % HB), this half
        const int r = r_first + it * RPP, qi = r / HB, tq = t0 + qi;
        const bool ok = qi < QB && tq < T;
        const half_t *src = ok ? q + (long)tq * q_row + (long)(head0 + r - qi * HB) * D + wg * DH + c * 8 : q;
        cp_async16(sQ + soff(r, Q_BLOCK), src, ok ? 16 : 0);
    }
    load_k(0);
    cp_async_commit();  // group: Q, K_0
    load_k(1);
    load_v(0);
    cp_async_commit();  // group: K_1, V_0

    // This thread's two accumulator rows (R0, R0 + 8 of the 64) and their visible keys [lo, lim]; the
    // thread of the same index in the other warpgroup holds the same rows and keys.
    const int R0 = wq * 16 + (lane >> 2);
    const RowLimits rows{min(pos + t0 + R0 / HB, kv_end - 1), min(pos + t0 + (R0 + 8) / HB, kv_end - 1),
                         window_lo(pos + t0 + R0 / HB, window), window_lo(pos + t0 + (R0 + 8) / HB, window)};

    unsigned p[BN / 16][4];                 // P fragments of the next PV
    float o[O_REGS], s[S_REGS], x[S_REGS];  // O half; partial S; full S, then probabilities
#pragma unroll
    for (int i = 0; i < O_REGS; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < S_REGS; ++i) s[i] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    float alpha0 = 0.f, alpha1 = 0.f;

    auto issue_s = [&](int jt) {  // partial S_jt over this half of the head dimension, one wgmma group
        const unsigned k_addr = sK_addr + (jt & 1) * G::KV_BYTES;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < DH / 16; ++ks)  // k16 step ks: column block ks / 4, 32 bytes in per step
            wgmma_ss_n32(s, sw128_desc(sQ_addr + (ks >> 2) * Q_BLOCK + (ks & 3) * 32, 16),
                         sw128_desc(k_addr + (ks >> 2) * KV_BLOCK + (ks & 3) * 32, 16), ks > 0);
        wgmma_commit();
    };
    // x = this partial S_jt + the other warpgroup's (a + b == b + a exactly, so both warpgroups hold
    // the same x). Layout [S_REGS / 4][128 threads][4 floats]: each warp's 16-byte accesses are contiguous.
    auto full_s = [&](int jt) {
        const unsigned buf = (jt & 1) * G::X_BYTES + t * 16;
#pragma unroll
        for (int i = 0; i < S_REGS / 4; ++i)
            st_shared_f32x4(sX_addr + buf + i * 2048, s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]);
        asm volatile("bar.sync 3, 256;\n" ::: "memory");  // both warpgroups' partials written
#pragma unroll
        for (int i = 0; i < S_REGS / 4; ++i) {
            ld_shared_f32x4(sX_other + buf + i * 2048, x[4 * i], x[4 * i + 1], x[4 * i + 2], x[4 * i + 3]);
#pragma unroll
            for (int e = 0; e < 4; ++e) x[4 * i + e] += s[4 * i + e];
        }
    };
    auto softmax = [&](int jt) {
        full_s(jt);
        softmax_step<BN>(x, (j0 + jt) * BN, lane, rows, scale_log2, m0, m1, l0, l1, alpha0, alpha1);
    };
    auto pv = [&](int jt) {  // O = alpha O + P_jt V_jt on this half of the columns, one wgmma group
#pragma unroll
        for (int i = 0; i < DH / 8; ++i) {
            o[4 * i] *= alpha0, o[4 * i + 1] *= alpha0;
            o[4 * i + 2] *= alpha1, o[4 * i + 3] *= alpha1;
        }
        const unsigned v_addr = sV_addr + (jt & 1) * G::KV_BYTES;
        fence_regs(o);
        fence_regs(p);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) pv_step<DH>(o, p[kk], sw128_desc(v_addr + kk * 2048, KV_BLOCK), KV_BLOCK);
        wgmma_commit();
    };

    // Prologue: S_0 and its softmax.
    cp_async_wait<1>();  // Q and K_0 landed
    fence_proxy_async();
    warpgroup_bar(wg);
    issue_s(0);
    wgmma_wait<0>();
    fence_regs(s);
    softmax(0);
    pack_probs<BN>(x, p);

    for (int j = 0; j + 1 < n_tiles; ++j) {
        // K_{j+1} and V_j landed. After the barrier every thread of the warpgroup is past S_j and
        // PV_{j-1}, so K slot j % 2 and V slot (j + 1) % 2 are free.
        cp_async_wait<0>();
        fence_proxy_async();
        warpgroup_bar(wg);
        load_k(j + 2);
        load_v(j + 1);
        cp_async_commit();
        issue_s(j + 1);
        pv(j);
        wgmma_wait<1>();  // S_{j+1} done; PV_j runs under the exchange and the softmax
        fence_regs(s);
        softmax(j + 1);
        wgmma_wait<0>();  // PV_j done: its P registers are free
        fence_regs(o);
        fence_regs(p);
        pack_probs<BN>(x, p);
    }
    // The last tile: V_{n-1} came with the last group.
    cp_async_wait<0>();
    fence_proxy_async();
    warpgroup_bar(wg);
    pv(n_tiles - 1);
    wgmma_wait<0>();
    fence_regs(o);
    fence_regs(p);

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;

    // Stage this warpgroup's 64 x DH outputs in its own Q half (its S wgmmas, the only readers, are
    // complete), then store 16-byte chunks of the rows that exist.
    const int R1 = R0 + 8, cq = (lane & 3) * 4;
#pragma unroll
    for (int i = 0; i < DH / 8; ++i) {
        const unsigned blk = (i >> 3) * Q_BLOCK, ch = i & 7;
        *reinterpret_cast<half2_t *>(sQ + blk + R0 * 128 + ((ch ^ (R0 & 7)) << 4) + cq) =
            pack_half2(o[4 * i] * inv0, o[4 * i + 1] * inv0);
        *reinterpret_cast<half2_t *>(sQ + blk + R1 * 128 + ((ch ^ (R1 & 7)) << 4) + cq) =
            pack_half2(o[4 * i + 2] * inv1, o[4 * i + 3] * inv1);
    }
    warpgroup_bar(wg);
#pragma unroll
    for (int it = 0; it < 64 * CPR / 128; ++it) {
        const int i = t + it * 128;
        const int r = i / CPR, cc = i % CPR, qi = r / HB, tq = t0 + qi;
        if (qi < QB && tq < T)
            *reinterpret_cast<uint4 *>(out + (long)tq * q_row + (long)(head0 + r - qi * HB) * D + wg * DH + cc * 8) =
                *reinterpret_cast<const uint4 *>(sQ + (cc >> 3) * Q_BLOCK + r * 128 + (((cc & 7) ^ (r & 7)) << 4));
    }
}

}  // namespace
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// grid (Hq / HB, ceil(T / (64 WGS / HB))), block 128 WGS, dynamic shared memory WgGeometry<D, WGS>::SMEM_BYTES;
// HB = heads per block, a divisor of Hq / Hkv that fits in the block's 64 WGS rows (attention.py picks it). scale_log2 = softmax_scale * log2(e).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTENTION_WG_BODY(WGS, D) attention_wg_body<D, WGS>(q, k, v, pos, out, T, Hq, Hkv, max_len, scale_log2, HB, window)
#else
#define ATTENTION_WG_BODY(WGS, D) __trap()
#endif
#define ATTENTION_PREFILL_WG(NAME, WGS, D)                                                                 \
    extern "C" __global__ void __launch_bounds__(128 * WGS, 1) NAME##D(                                    \
        const half_t *q, const half_t *k, const half_t *v, const int *pos, half_t *out, int T, int Hq, int Hkv, \
        int max_len, float scale_log2, int HB, int window) { pdl_entry();                                  \
        ATTENTION_WG_BODY(WGS, D);                                                                         \
    }

ATTENTION_PREFILL_WG(attention_prefill_wg_d, 1, 64)
ATTENTION_PREFILL_WG(attention_prefill_wg_d, 1, 128)
ATTENTION_PREFILL_WG(attention_prefill_wg_d, 1, 256)
ATTENTION_PREFILL_WG(attention_prefill_wg2_d, 2, 64)
ATTENTION_PREFILL_WG(attention_prefill_wg2_d, 2, 128)
ATTENTION_PREFILL_WG(attention_prefill_wg2_d, 2, 256)

// D = 512: grid (Hq / HB, ceil(T / (64 / HB))), block 256 (two warpgroups on one 64-row tile),
// dynamic shared memory SplitGeometry<512>::SMEM_BYTES; arguments as above.
extern "C" __global__ void __launch_bounds__(256, 1) attention_prefill_wg_d512(
    const half_t *q, const half_t *k, const half_t *v, const int *pos, half_t *out, int T, int Hq, int Hkv,
    int max_len, float scale_log2, int HB, int window) {
    pdl_entry();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    attention_wg_split_body<512>(q, k, v, pos, out, T, Hq, Hkv, max_len, scale_log2, HB, window);
#else
    __trap();
#endif
}
