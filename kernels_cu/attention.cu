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
// loaded (their shared-memory rows are zero-filled; the TMA kernel zeroes the V rows of the last tile
// after it lands), so nothing past the chunk can leak in.
//
// Two kernel families (impbench/kernels/attention.py's VARIANTS names each kernel per head dim), for
// D = 64, 128, 256, 512:
//
// 1. Hopper (sm_90a; the H100 path), wgmma.mma_async: attention_prefill_wg_d64 and wg_d128
//    (WgGeometry), wgpp_d256 (RingGeometry). A block is one or two warpgroups of 64 (query, head) rows:
//    HB heads of one KV group x 64 / HB consecutive queries per warpgroup (row r = query r / HB, head
//    r % HB; Qwen3-Coder in wg_d128: 8 heads x 8 queries). Why: all heads of a GQA group read the same
//    K/V, so packing them into one block streams each K/V tile from L2 once for the whole group instead
//    of once per head, and short query tiles waste little on the causal diagonal. wg_ blocks have one
//    warpgroup and fit two per SM (D <= 128), so two independent tile loops share each SM; wgpp_d256
//    pairs two warpgroups on one K/V stream (half the L2 reads per row).
//    Warpgroup g owns rows [64g, 64g + 64): S = Q K^T is one m64n64k16 wgmma per k16 step (Q as
//    register A fragments for D <= 128, re-read with ldmatrix before every S; from shared memory
//    for D = 256), the online softmax runs in place on the accumulators in registers (row
//    statistics inside the quad that holds the row), P goes from them into register A fragments,
//    and O += P V is an m64nDk16 wgmma per 16 keys with V read N-major (trans-b) from the same tile
//    layout as K. Per tile j: issue S_{j+1} and PV_j, wait for S_{j+1}, run its softmax while PV_j
//    executes (FlashAttention-3's intra-warpgroup overlap), wait for PV_j at the top of the next
//    tile. Each row keeps a reference max that moves only when a tile's max exceeds it by more
//    than 2^8 (REF_SLACK), so O is rescaled on few tiles, and a warp skips the rescale when none of
//    its rows moved.
//    wg_d<D>: K/V tiles of 64 keys stream through STAGES shared-memory stages filled by cp.async from
//    every thread, STAGES - 1 tiles ahead; one __syncthreads per tile. wgpp_d256: one thread brings
//    K/V tiles by TMA into rings that mbarriers hand over, with no per-tile block barrier, and the two
//    warpgroups take turns issuing their wgmma (FlashAttention-3's ping-pong), so one's softmax runs
//    under the other's GEMMs. Shared tiles are stored as D/64 column blocks of [rows][64 halves] with
//    the 128-byte swizzle (16-byte chunk c of row r at c ^ (r & 7)), which is both the K-major layout
//    of Q and K and the N-major layout of V. Blocks of the last query tiles (the longest KV sweeps) run first.
//    D = 512 (Gemma-4's full layers; FlashAttention stops at 256): 64 rows x 512 FP32 outputs are
//    256 registers a thread for one warpgroup, so two warpgroups share the 64 rows and each owns
//    half the head dimension (SplitGeometry): its halves of Q, K, V and O. Each computes the partial
//    S of its half; the halves meet once per tile through shared memory, so both run the same
//    softmax on the full S and their own PV. attention_prefill_wgtc_d512 loads K/V by TMA in 2-CTA
//    clusters that multicast every tile to both.
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
#include "wgmma.cuh"

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
// Hopper family: attention_prefill_wg*_d<D> (see the header). Compiled only where the sm_90a feature
// set is on; elsewhere the entry points trap and attention.py never selects them.
namespace {

// attention_prefill_wg_d<D> (D <= 128): one warpgroup owning 64 (query, head) rows; key tiles of BN = 64
// keys; STAGES shared-memory stages of one K and one V tile each, tile j in stage j % STAGES, loaded
// PREFETCH = STAGES - 1 tiles ahead. Every wgmma is waited on by the next tile, so a stage is busy only
// for the tile being multiplied and the tiles loading. Two blocks per SM (D = 128: 16 + 3 x 32 KiB +
// 1 KiB = 113 KiB each), so the two blocks' softmax and wgmma phases need not line up. attention.py's
// VARIANTS mirrors the geometry and its shared memory.
template <int D, int BN_, int STAGES_>
struct WgGeometry {
    static constexpr int ROWS = 64;  // (query, head) rows per block
    static constexpr int THREADS = 128;
    static constexpr int BN = BN_;   // keys per tile
    static constexpr int STAGES = STAGES_;
    static constexpr int PREFETCH = STAGES - 1;
    static constexpr int CPR = D / 8;                 // 16-byte chunks per row
    static constexpr int RPP = THREADS / CPR;         // rows per pass of a block-wide copy
    static constexpr int Q_BYTES = ROWS * D * 2;
    static constexpr int KV_BYTES = BN * D * 2;       // K (or V) of one stage
    // Q + STAGES x (K + V) + 1 KiB to align the base to the 1024-byte swizzle atom.
    static constexpr int SMEM_BYTES = Q_BYTES + STAGES * 2 * KV_BYTES + 1024;
    static_assert(BN % RPP == 0 && ROWS % RPP == 0, "tiles must split evenly over the block");
    static_assert(BN == 64, "S wgmma: m64n64k16");
    static_assert(D <= 128, "Q as register A fragments; D = 256 is RingGeometry's");
    static_assert(STAGES >= 3 && SMEM_BYTES <= 227 * 1024, "shared memory of one block");
};

// attention_prefill_wgtc_d512: 64 rows (as attention_prefill_wg_d<D>) and two warpgroups that split the
// head dimension. Warpgroup g owns columns [g DH, g DH + DH) of Q, K, V and O: 64 x 256 FP32 outputs are
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

// attention_prefill_wgpp_d256: 128 rows in two warpgroups on one K/V stream, with K and V brought in by
// the TMA unit (one thread issues a tile) into rings of K_SLOTS K and V_SLOTS V slots that full / empty
// mbarriers hand over, so no per-tile __syncthreads keeps the warpgroups in step, and named barriers
// order the two warpgroups' wgmma issue (FlashAttention-3's ping-pong): one's softmax runs while the
// other's wgmma execute. S as m64n64k16 with Q from shared memory reads Q once per 64 keys. Three K
// slots: K_{j+3} can go into the slot of tile j once both warpgroups' S_j completed, a tile and a half
// before it is needed.
template <int D>
struct RingGeometry {
    static constexpr int ROWS = 128, BN = 64;  // two warpgroups of 64 rows: 256 threads
    static constexpr int K_SLOTS = 3, V_SLOTS = 2;
    static constexpr int Q_BYTES = ROWS * D * 2;
    static constexpr int KV_BYTES = BN * D * 2;  // one K or V tile: D / 64 column blocks of [BN keys][128 bytes]
    static constexpr int SMEM_BYTES = Q_BYTES + (K_SLOTS + V_SLOTS) * KV_BYTES + 1024;  // + swizzle-atom alignment
    static_assert(SMEM_BYTES <= 227 * 1024, "shared memory of one block");
};

}  // namespace

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace {

using namespace impasync;  // wgmma forms, fences and groups, fence_proxy_async, fence_regs

// Shared-memory matrix descriptor, 128-byte swizzle. K-major operands (Q, K): 8-row groups 1024 bytes
// apart (stride byte offset), the leading offset unused. N-major V: the stride byte offset is the
// next 8 keys (1024 bytes), the leading byte offset the next 64-wide column block of D.
__device__ __forceinline__ unsigned long long sw128_desc(unsigned addr, unsigned lead_bytes) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | ((unsigned long long)(lead_bytes >> 4) << 16) |
           ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

// O(64 x D) += P(64 x 16 keys) V(16 keys x D) for one k16 step; v_desc addresses the step's 16 keys.
template <int D>
__device__ __forceinline__ void pv_step(float (&o)[D / 2], const unsigned (&p)[4], unsigned long long v_desc,
                                        unsigned block_bytes) {
    if constexpr (D == 64) {
        wgmma_rs<64, 1>(o, p, v_desc);
    } else if constexpr (D == 128) {
        wgmma_rs<128, 1>(o, p, v_desc);
    } else {  // D = 256: two N = 128 halves, column blocks 0-1 and 2-3
        wgmma_rs<128, 1>(o, p, v_desc);
        wgmma_rs<128, 1>(o + 64, p, v_desc + ((2 * block_bytes) >> 4));
    }
}

// A thread's two accumulator rows (r and r + 8 of its warp's 16) see keys [lo, lim] of the cache.
struct RowLimits {
    int lim0, lim1, lo0, lo1;
};

// How far (log2 units) a tile's row max may exceed the row's reference max before the reference moves.
// Probabilities are then at most 2^8 = 256 (FP16 keeps its relative precision there, the FP32 sums
// and outputs have room to spare) and the result is exact for any reference, as O and l share it. So
// O needs a rescale only on the few tiles where some row's max jumps, not on every tile.
constexpr float REF_SLACK = 8.f;

// One online-softmax step on this thread's scores x of key tile [n0, n0 + BN) in the wgmma (and
// m16n8) accumulator layout: x[4i + e] is row r (e < 2) or r + 8, key n0 + 8i + 2 (lane & 3) + (e & 1).
// Masks keys outside each row's [lo, lim] (only on tiles that cross a limit), moves the row's
// reference max m (log2 domain) only when the tile's max exceeds it by more than REF_SLACK, updates
// the per-lane partial sums l, sets the O rescale alpha (exactly 1 where m stayed), and leaves the
// probabilities in x. A row may see no key yet (its window starts later), so m can still be -inf:
// it then subtracts 0 instead, so exp2(-inf) = 0 gives P, never -inf - -inf.
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
    float mx0 = NEG_INF, mx1 = NEG_INF;
#pragma unroll
    for (int i = 0; i < BN / 8; ++i) {
        mx0 = fmaxf(mx0, fmaxf(x[4 * i], x[4 * i + 1]));
        mx1 = fmaxf(mx1, fmaxf(x[4 * i + 2], x[4 * i + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    mx0 *= scale_log2, mx1 *= scale_log2;  // scale > 0: the max of the scaled scores
    // -inf + slack = -inf: the first key a row sees always sets its reference.
    const bool up0 = mx0 > m0 + REF_SLACK, up1 = mx1 > m1 + REF_SLACK;
    const float r0 = up0 ? mx0 : m0, r1 = up1 ? mx1 : m1;
    const float b0 = r0 == NEG_INF ? 0.f : r0, b1 = r1 == NEG_INF ? 0.f : r1;
    alpha0 = up0 ? fast_exp2(m0 - b0) : 1.f, alpha1 = up1 ? fast_exp2(m1 - b1) : 1.f;
    m0 = r0, m1 = r1;
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

// O *= alpha per row (accumulator layout as softmax_step), skipped by a whole warp when none of its
// rows moved its reference max (every alpha exactly 1): the common case after the first tiles.
template <int R>
__device__ __forceinline__ void rescale_o(float (&o)[R], float alpha0, float alpha1) {
    if (__any_sync(0xffffffffu, alpha0 != 1.f || alpha1 != 1.f)) {
#pragma unroll
        for (int i = 0; i < R / 4; ++i) {
            o[4 * i] *= alpha0, o[4 * i + 1] *= alpha0;
            o[4 * i + 2] *= alpha1, o[4 * i + 3] *= alpha1;
        }
    }
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

// The end of a Hopper kernel's tile loop: the row sums l0 / l1 (rows R0 and R0 + 8, spread over the
// thread's quad) completed, then the thread's D columns of O / l staged as FP16 in those rows of a
// 128-byte-swizzled tile at sQ whose 64-column blocks lie q_block bytes apart (the kernel's own Q rows:
// only this warpgroup read them, and its last wgmma is complete). The caller stores the tile's rows.
template <int D>
__device__ __forceinline__ void stage_output_rows(const float (&o)[D / 2], float l0, float l1, unsigned char *sQ,
                                                  unsigned q_block, int R0, int lane) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;
    const int R1 = R0 + 8, cq = (lane & 3) * 4;
#pragma unroll
    for (int i = 0; i < D / 8; ++i) {
        const unsigned blk = (i >> 3) * q_block, ch = i & 7;
        *reinterpret_cast<half2_t *>(sQ + blk + R0 * 128 + ((ch ^ (R0 & 7)) << 4) + cq) =
            pack_half2(o[4 * i] * inv0, o[4 * i + 1] * inv0);
        *reinterpret_cast<half2_t *>(sQ + blk + R1 * 128 + ((ch ^ (R1 & 7)) << 4) + cq) =
            pack_half2(o[4 * i + 2] * inv1, o[4 * i + 3] * inv1);
    }
}

// This warpgroup's 128 threads (named barriers 1 and 2; immediates keep the barrier count known).
__device__ __forceinline__ void warpgroup_bar(int wg) {
    if (wg == 0)
        asm volatile("bar.sync 1, 128;\n" ::: "memory");
    else
        asm volatile("bar.sync 2, 128;\n" ::: "memory");
}

// O = alpha O + P V over the BN keys of the V tile at v_addr (DN output columns, 64-column blocks BN x 128
// bytes apart), committed as one wgmma group.
template <int DN, int BN>
__device__ __forceinline__ void issue_pv(float (&o)[DN / 2], unsigned (&p)[BN / 16][4], float alpha0, float alpha1,
                                         unsigned v_addr) {
    constexpr unsigned KV_BLOCK = BN * 128;
    rescale_o(o, alpha0, alpha1);
    fence_regs(o);
    fence_regs(p);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) pv_step<DN>(o, p[kk], sw128_desc(v_addr + kk * 2048, KV_BLOCK), KV_BLOCK);
    wgmma_commit();
}

// Every wgmma group done: O and the P registers are free.
template <int R, int KK>
__device__ __forceinline__ void wait_pv_done(float (&o)[R], unsigned (&p)[KK][4]) {
    wgmma_wait<0>();
    fence_regs(o);
    fence_regs(p);
}

// Store the rows that exist of a warpgroup's output, staged by stage_output_rows in block rows row0 ..
// row0 + 63 of the Q tile at sQ (64-column blocks q_block bytes apart), as 16-byte chunks: block row r is
// query t0 + r / HB, head head0 + r % HB; the DN staged columns go to columns col0 .. of the head's D.
template <int D, int DN>
__device__ __forceinline__ void store_output_rows(half_t *__restrict__ out, const unsigned char *sQ, unsigned q_block,
                                                  int row0, int col0, int t, int t0, int QB, int HB, int T, int head0,
                                                  long q_row) {
    constexpr int CPR = DN / 8;  // 16-byte chunks per staged row
#pragma unroll
    for (int it = 0; it < 64 * CPR / 128; ++it) {
        const int i = t + it * 128;
        const int r = row0 + i / CPR, cc = i % CPR, qi = r / HB, tq = t0 + qi;
        if (qi < QB && tq < T)
            *reinterpret_cast<uint4 *>(out + (long)tq * q_row + (long)(head0 + r - qi * HB) * D + col0 + cc * 8) =
                *reinterpret_cast<const uint4 *>(sQ + (cc >> 3) * q_block + r * 128 + (((cc & 7) ^ (r & 7)) << 4));
    }
}

// The Hopper kernel (see the header). Iteration j of a warpgroup: wait for PV_{j-1} and for K/V of
// tile j + 1, issue S_{j+1} = Q K_{j+1}^T, load the tiles that freed stages take, pack P_j, rescale O,
// issue PV_j, wait for S_{j+1}, run the softmax of tile j + 1 while PV_j executes (the order of
// FlashAttention-3's intra-warpgroup overlap: the tensor cores see S_{j+1} and PV_j back to back).
// PV_j is waited for at the top of the next iteration, not after the softmax: ptxas schedules a
// wgmma wait at the top of its basic block, so a wait placed after the softmax ran before it and
// the softmax never overlapped PV (SASS of a5be2a2: WARPGROUP.DEPBAR ahead of every MUFU.EX2).
template <int D, int BN_, int STAGES_>
__device__ __forceinline__ void attention_wg_body(const half_t *__restrict__ q, const half_t *__restrict__ k,
                                                  const half_t *__restrict__ v, const int *__restrict__ pos_ptr,
                                                  half_t *__restrict__ out, int T, int Hq, int Hkv, int max_len,
                                                  float scale_log2, int HB, int window) {
    using G = WgGeometry<D, BN_, STAGES_>;
    constexpr int BN = G::BN, ST = G::STAGES, PF = G::PREFETCH, CPR = G::CPR, RPP = G::RPP;
    constexpr int S_REGS = BN / 2, O_REGS = D / 2;
    constexpr unsigned KV_BLOCK = BN * 128;       // bytes of one 64-wide column block of a K/V tile
    constexpr unsigned Q_BLOCK = G::ROWS * 128;   // ... of the Q tile

    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    unsigned char *smem = align1024(smem_raw);
    unsigned char *sQ = smem;
    unsigned char *sKV = smem + G::Q_BYTES;  // stage s: K at s * 2 * KV_BYTES, V right after it
    const unsigned sQ_addr = smem_u32(sQ), sKV_addr = smem_u32(sKV);

    // wg is 0 in a block of one warpgroup. It is computed from the thread index, as in the other bodies,
    // so the row arithmetic and the helpers' arguments read the same, and the kernels compile to the
    // SASS the GPU tests ran (docs/notes/attention.md).
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

    // K (V: is_v) of tile j into its stage j % ST; nothing past the last tile. Keys at or
    // past kv_end are zero-filled.
    auto load_tile = [&](int j, bool is_v) {
        if (j < n_tiles) {
            const int n0 = (j0 + j) * BN;
            unsigned char *dst = sKV + (j % ST) * 2 * G::KV_BYTES + (is_v ? G::KV_BYTES : 0) + kv_soff;
            const half_t *src = is_v ? v_src : k_src;
#pragma unroll
            for (int it = 0; it < BN / RPP; ++it) {
                const int key = n0 + r_first + it * RPP;
                const bool ok = key < kv_end;
                cp_async16(dst + soff(it), src + (ok ? key * kv_row : 0), ok ? 16 : 0);
            }
        }
    };

#pragma unroll
    for (int it = 0; it < G::ROWS / RPP; ++it) {  // Q rows: (query t0 + r / HB, head head0 + r % HB)
        const int r = r_first + it * RPP, qi = r / HB, t = t0 + qi;
        const bool ok = qi < QB && t < T;
        const half_t *src = ok ? q + (long)t * q_row + (long)(head0 + r - qi * HB) * D + c * 8 : q;
        cp_async16(sQ + q_soff + soff(it), src, ok ? 16 : 0);
    }
#pragma unroll
    for (int j = 0; j < PF; ++j) {  // tiles 0 .. PF - 1, one group each; Q joins tile 0's
        load_tile(j, false);
        load_tile(j, true);
        cp_async_commit();
    }

    // This thread's two accumulator rows (block rows R0, R0 + 8) and their visible keys [lo, lim].
    const int R0 = wg * 64 + wq * 16 + (lane >> 2);
    const RowLimits rows{min(pos + t0 + R0 / HB, kv_end - 1), min(pos + t0 + (R0 + 8) / HB, kv_end - 1),
                         window_lo(pos + t0 + R0 / HB, window), window_lo(pos + t0 + (R0 + 8) / HB, window)};

    unsigned qf[D / 16][4];  // Q A fragments, re-read for every S (see issue_s)
    unsigned p[BN / 16][4];                     // P fragments of the next PV
    float o[O_REGS], s[S_REGS];                 // O; S, then (softmax in place) probabilities
#pragma unroll
    for (int i = 0; i < O_REGS; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < S_REGS; ++i) s[i] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;  // reference max (log2 domain) and partial sums
    float alpha0 = 1.f, alpha1 = 1.f;                      // O rescale of the tile whose P is in s

    // S_jt = Q K_jt^T (64 rows x BN keys) into s, committed as one wgmma group. The Q fragments are
    // re-read each time: kept in registers across loop iterations, ptxas 13.0 gave their registers to
    // the P fragments (D = 64), so their live range stays inside one tile.
    auto issue_s = [&](int jt) {
        const unsigned k_addr = sKV_addr + (jt % ST) * 2 * G::KV_BYTES;
        const int row = wg * 64 + wq * 16 + (lane & 15);
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks) {
            const int chunk = 2 * ks + (lane >> 4);
            ldmatrix_x4(qf[ks][0], qf[ks][1], qf[ks][2], qf[ks][3],
                        sQ + (chunk >> 3) * Q_BLOCK + row * 128 + (((chunk & 7) ^ (row & 7)) << 4));
        }
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks)
            wgmma_rs<64>(s, qf[ks], sw128_desc(k_addr + (ks >> 2) * KV_BLOCK + (ks & 3) * 32, 16), ks > 0);
        wgmma_commit();
    };

    // Softmax of the complete S of tile jt, in place: s holds the probabilities until the next
    // iteration packs them, before its S is issued (a write to wgmma accumulators is safe only while
    // no wgmma group that owns them is pending; ptxas serializes otherwise, C7515). Sets alpha.
    auto softmax = [&](int jt) {
        softmax_step<BN>(s, (j0 + jt) * BN, lane, rows, scale_log2, m0, m1, l0, l1, alpha0, alpha1);
    };
    auto pv = [&](int jt) {  // O = alpha O + P_jt V_jt, committed as one wgmma group
        issue_pv<D, BN>(o, p, alpha0, alpha1, sKV_addr + (jt % ST) * 2 * G::KV_BYTES + G::KV_BYTES);
    };
    auto wait_pv = [&]() { wait_pv_done(o, p); };  // every wgmma group done: O and the P registers are free

    // Prologue: S_0 and its softmax.
    cp_async_wait<PF - 1>();  // Q and tile 0 landed
    fence_proxy_async();
    __syncthreads();
    issue_s(0);
    wgmma_wait<0>();
    fence_regs(s);
    softmax(0);

    // Every tile but the last: S of the next tile is issued unconditionally, so each wait retires a
    // known group on every path (with S conditional, ptxas could not tell and serialized, C7514).
    for (int j = 0; j + 1 < n_tiles; ++j) {
        // Pending before: PV_{j-1}; loads. After the barrier every warpgroup is past S_j and PV_{j-1}.
        wait_pv();
        cp_async_wait<PF - 2>();  // tile j + 1 landed
        fence_proxy_async();
        __syncthreads();
        fence_regs(s);  // the probabilities of tile j stay in s until packed below
        pack_probs<BN>(s, p);
        issue_s(j + 1);
        load_tile(j + PF, false);  // into stage (j - 1) % ST, which tile j - 1 freed
        load_tile(j + PF, true);
        cp_async_commit();  // empty groups past the end keep the count uniform
        pv(j);
        wgmma_wait<1>();  // S_{j+1} done; PV_j runs under the softmax
        fence_regs(s);
        softmax(j + 1);
    }
    // The last tile: it landed before the last barrier above (or the prologue's).
    wait_pv();
    pack_probs<BN>(s, p);
    pv(n_tiles - 1);
    wait_pv();
    cp_async_wait<0>();  // only empty groups can remain; keep the count tidy before exit

    // Stage this warpgroup's 64 x D output in its own rows of the Q tile, then store 16-byte chunks of
    // the rows that exist.
    stage_output_rows<D>(o, l0, l1, sQ, Q_BLOCK, R0, lane);
    warpgroup_bar(wg);
    store_output_rows<D, D>(out, sQ, Q_BLOCK, wg * 64, 0, tid & 127, t0, QB, HB, T, head0, q_row);
}

__device__ __forceinline__ void st_shared_f32x4(unsigned addr, float a, float b, float c, float d) {
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}
__device__ __forceinline__ void ld_shared_f32x4(unsigned addr, float &a, float &b, float &c, float &d) {
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];\n" : "=f"(a), "=f"(b), "=f"(c), "=f"(d) : "r"(addr) : "memory");
}

// ---- D = 512: attention_prefill_wgtc_d512 ----
// SplitGeometry: two warpgroups split the head dimension of 64 rows. Per tile j of warpgroup g: issue
// S_{j+1} (its half of the head dimension), issue PV_j (its half of the output columns), wait for
// S_{j+1}, add the other warpgroup's partial S_{j+1} and run the softmax while PV_j executes; PV_j is
// waited for at the top of the next iteration (see attention_wg_body). K and V sit in separate
// two-slot rings so that every load is issued one whole tile before it is needed: K_{j+2} into the
// slot S_j freed, V_{j+1} into the one PV_{j-1} freed. Every K and V half tile comes in by the TMA
// unit: one thread issues a 3-D box (64 columns x 32 keys x 4 column blocks of the half) that lands
// in the 128-byte-swizzled layout the wgmma descriptors read, and completes on the slot's `full`
// mbarrier. A slot is handed back through its `empty` mbarrier by each warp that read it, once the
// wgmma that read it completed.
// Clusters of two CTAs on adjacent query blocks of one head group: CTA r loads half r of every K and V
// tile for both CTAs (multicast), so each tile crosses from L2 once per pair: half the L2 -> SM
// traffic of one CTA per tile at the same 64 rows a CTA (the register file holds no more at D 512).
// Both CTAs sweep the union of their key ranges (a tile either one needs); rows mask what they do not
// see. Keys at or past the union's end are in the cache (not zero-filled by the TMA unit, which
// zero-fills only past max_len), so the last tile's V rows there are zeroed in shared memory before
// its PV: they may hold anything, and 0 x NaN would leak.

// The same box written to the same shared offset of both CTAs of the cluster, completing on each one's
// mbarrier at the same offset.
__device__ __forceinline__ void tma_load_3d_multicast(unsigned dst, const TmaMap *map, int c0, int c1, int c2,
                                                      unsigned mbar, unsigned short mask) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster "
        "[%0], [%1, {%2, %3, %4}], [%5], %6;\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(mbar), "h"(mask)
        : "memory");
}
__device__ __forceinline__ void mbar_arrive_cluster(unsigned cluster_address) {
    asm volatile("mbarrier.arrive.shared::cluster.b64 _, [%0];\n" ::"r"(cluster_address) : "memory");
}

// Key tiles [j0, j0 + n_tiles) of BN keys that a block of queries [t0, t0 + QB) sweeps, and its key
// end; none (n_tiles = 0) for a block wholly past the chunk (the padding CTA of an odd cluster grid).
struct KeyRange {
    int j0, n_tiles, kv_end;
};
__device__ __forceinline__ KeyRange key_range(int t0, int QB, int T, int pos, int max_len, int window, int bn) {
    const int q_valid = min(QB, T - t0);
    if (q_valid <= 0) return {0, 0, 0};
    const int kv_end = min(pos + t0 + q_valid, max_len);
    const int j0 = first_tile(pos + t0, window, kv_end, bn);
    return {j0, (kv_end + bn - 1) / bn - j0, kv_end};
}

__device__ __forceinline__ void attention_wg_pair_body(const TmaMap &map_k, const TmaMap &map_v,
                                                       const half_t *__restrict__ q, const int *__restrict__ pos_ptr,
                                                       half_t *__restrict__ out, int T, int Hq, int Hkv, int max_len,
                                                       float scale_log2, int HB, int window) {
    constexpr int D = 512;
    using G = SplitGeometry<D>;
    constexpr int BN = G::BN, DH = G::DH, CPR = G::CPR, RPP = G::RPP;
    constexpr int S_REGS = BN / 2, O_REGS = DH / 2;
    constexpr unsigned KV_BLOCK = BN * 128;  // bytes of one 64-wide column block of a K/V half tile
    constexpr unsigned Q_BLOCK = 64 * 128;   // ... of the Q half tile

    extern __shared__ __align__(16) unsigned char smem_raw[];
    // mbarriers, per warpgroup g and slot s: full K 2g + s, full V 4 + 2g + s, empty K 8 + 2g + s,
    // empty V 12 + 2g + s. The empty barriers of half g that count are those of the CTA that loads it.
    __shared__ __align__(8) unsigned long long bars[16];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    const unsigned raw_addr = smem_u32(smem_raw);
    unsigned char *smem = smem_raw + (align1024(raw_addr) - raw_addr);

    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, t = tid & 127, wq = t >> 5;
    unsigned char *sQ = smem + wg * G::WG_BYTES;  // this warpgroup's region: Q, K slots, V slots, partial S
    const unsigned sQ_addr = smem_u32(sQ), sK_addr = sQ_addr + G::Q_BYTES, sV_addr = sK_addr + 2 * G::KV_BYTES;
    const unsigned sX_addr = sV_addr + 2 * G::KV_BYTES;
    const unsigned sX_other = wg == 0 ? sX_addr + G::WG_BYTES : sX_addr - G::WG_BYTES;
    const unsigned bar0 = smem_u32(&bars[0]);
    auto full_k = [&](int s) { return bar0 + 8 * (2 * wg + s); };
    auto full_v = [&](int s) { return bar0 + 8 * (4 + 2 * wg + s); };
    auto empty_k = [&](int s) { return bar0 + 8 * (8 + 2 * wg + s); };
    auto empty_v = [&](int s) { return bar0 + 8 * (12 + 2 * wg + s); };

    const bool loader = wg == (int)cluster_rank() && t == 0;  // issues this half's tiles for the pair

    const int group = Hq / Hkv;
    const int QB = 64 / HB;                                  // queries per block
    const int head0 = blockIdx.x * HB;                       // first query head of the block
    const int kv_head = head0 / group;
    const int t0 = (gridDim.y - 1 - blockIdx.y) * QB;        // longest sweeps first
    const int pos = *pos_ptr;
    const long q_row = (long)Hq * D;
    // The tiles this CTA sweeps: the union of its own range and its partner's (blockIdx.y ^ 1).
    const KeyRange own = key_range(t0, QB, T, pos, max_len, window, BN);
    const KeyRange other = key_range((gridDim.y - 1 - (blockIdx.y ^ 1)) * QB, QB, T, pos, max_len, window, BN);
    KeyRange sweep = own;
    if (own.n_tiles == 0) {
        sweep = other;
    } else if (other.n_tiles > 0) {
        const int j0 = min(own.j0, other.j0), kv_end = max(own.kv_end, other.kv_end);
        sweep = {j0, (kv_end + BN - 1) / BN - j0, kv_end};
    }
    const int j0 = sweep.j0, n_tiles = sweep.n_tiles, kv_end = sweep.kv_end;  // n_tiles >= 1

    if (tid == 0) {
        for (int i = 0; i < 8; ++i) mbar_init(bar0 + 8 * i, 1);   // full: the arming thread's arrive.expect_tx
        for (int i = 8; i < 16; ++i) mbar_init(bar0 + 8 * i, 8);  // empty: the 4 warps of half g of both CTAs
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    cluster_sync();  // the partner's barriers exist before anything lands in them or arrives on them

    // Thread 0 of the warpgroup arms this CTA's full barrier of a slot for its next tile (the bytes may
    // land before or after: the phase completes once both happened); the loader issues the tile into
    // the slot of every CTA that sweeps it; each warp hands a slot it read back to the loader's CTA.
    const int col_block = kv_head * (D / 64) + wg * (DH / 64);  // first 64-column block of this half
    auto arm = [&](unsigned full) {
        if (t == 0) mbar_expect_tx(full, G::KV_BYTES);
    };
    auto load = [&](const TmaMap *map, unsigned slot, int jt, unsigned full) {  // into both CTAs
        tma_load_3d_multicast(slot, map, 0, (j0 + jt) * BN, col_block, full, (unsigned short)0x3);
    };
    auto release = [&](unsigned empty) {  // on the barrier of the CTA that loads half wg
        if (lane == 0) mbar_arrive_cluster(cluster_addr(empty, (unsigned)wg));
    };
    auto wait_full = [&](unsigned full, int jt) { mbar_wait_cluster(full, (jt >> 1) & 1); };  // use jt / 2 of the slot

    // Q rows (query t0 + r / HB, head head0 + r % HB), this half, by cp.async (once per block).
    const int c = t % CPR, r_first = t / CPR;
#pragma unroll
    for (int it = 0; it < 64 / RPP; ++it) {
        const int r = r_first + it * RPP, qi = r / HB, tq = t0 + qi;
        const bool ok = qi < QB && tq < T;
        const half_t *src = ok ? q + (long)tq * q_row + (long)(head0 + r - qi * HB) * D + wg * DH + c * 8 : q;
        cp_async16(sQ + (c >> 3) * Q_BLOCK + r * 128 + (((c & 7) ^ (r & 7)) << 4), src, ok ? 16 : 0);
    }
    cp_async_commit();
    arm(full_k(0));
    if (n_tiles > 1) arm(full_k(1));
    arm(full_v(0));
    if (loader) {
        tma_prefetch_map(&map_k);
        tma_prefetch_map(&map_v);
        load(&map_k, sK_addr, 0, full_k(0));
        if (n_tiles > 1) load(&map_k, sK_addr + G::KV_BYTES, 1, full_k(1));
        load(&map_v, sV_addr, 0, full_v(0));
    }

    // This thread's two accumulator rows (R0, R0 + 8 of the 64) and their visible keys [lo, lim]. A
    // padding CTA (no rows in the chunk) sees no key and stores nothing.
    const int R0 = wq * 16 + (lane >> 2);
    const int own_end = own.n_tiles > 0 ? own.kv_end : 0;
    const RowLimits rows{min(pos + t0 + R0 / HB, own_end - 1), min(pos + t0 + (R0 + 8) / HB, own_end - 1),
                         window_lo(pos + t0 + R0 / HB, window), window_lo(pos + t0 + (R0 + 8) / HB, window)};

    unsigned p[BN / 16][4];       // P fragments of the next PV
    float o[O_REGS], s[S_REGS];  // O half; partial S, then full S, then (in place) probabilities
#pragma unroll
    for (int i = 0; i < O_REGS; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < S_REGS; ++i) s[i] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    float alpha0 = 1.f, alpha1 = 1.f;

    auto issue_s = [&](int jt) {  // partial S_jt over this half of the head dimension, one wgmma group
        const unsigned k_addr = sK_addr + (jt & 1) * G::KV_BYTES;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < DH / 16; ++ks)  // k16 step ks: column block ks / 4, 32 bytes in per step
            wgmma_ss<32>(s, sw128_desc(sQ_addr + (ks >> 2) * Q_BLOCK + (ks & 3) * 32, 16),
                         sw128_desc(k_addr + (ks >> 2) * KV_BLOCK + (ks & 3) * 32, 16), ks > 0);
        wgmma_commit();
    };
    // s = this partial S_jt + the other warpgroup's (a + b == b + a exactly, so both warpgroups hold
    // the same S), then the softmax in place: s holds the probabilities until the next iteration packs
    // them. Layout [S_REGS / 4][128 threads][4 floats]: each warp's 16-byte accesses are contiguous.
    auto softmax = [&](int jt) {
        const unsigned buf = (jt & 1) * G::X_BYTES + t * 16;
#pragma unroll
        for (int i = 0; i < S_REGS / 4; ++i)
            st_shared_f32x4(sX_addr + buf + i * 2048, s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]);
        asm volatile("bar.sync 3, 256;\n" ::: "memory");  // both warpgroups' partials written
#pragma unroll
        for (int i = 0; i < S_REGS / 4; ++i) {
            float b[4];
            ld_shared_f32x4(sX_other + buf + i * 2048, b[0], b[1], b[2], b[3]);
#pragma unroll
            for (int e = 0; e < 4; ++e) s[4 * i + e] += b[e];
        }
        softmax_step<BN>(s, (j0 + jt) * BN, lane, rows, scale_log2, m0, m1, l0, l1, alpha0, alpha1);
    };
    auto pv = [&](int jt) {  // O = alpha O + P_jt V_jt on this half of the columns, one wgmma group
        issue_pv<DH, BN>(o, p, alpha0, alpha1, sV_addr + (jt & 1) * G::KV_BYTES);
    };
    auto wait_pv = [&]() { wait_pv_done(o, p); };

    // Prologue: S_0 and its softmax. A tile's K slot is handed back once its S completed, its V slot
    // once its PV did, and only where a later tile is loaded into it (tile + 2 < n_tiles).
    cp_async_wait<0>();  // Q landed
    fence_proxy_async();
    warpgroup_bar(wg);
    wait_full(full_k(0), 0);
    issue_s(0);
    wgmma_wait<0>();
    fence_regs(s);
    if (2 < n_tiles) release(empty_k(0));
    softmax(0);

    // Iteration j: the loads of K_{j+2} and V_{j+1}, S_{j+1} and PV_j; PV_j is waited for at the top of
    // the next iteration (see attention_wg_body).
    for (int j = 0; j + 1 < n_tiles; ++j) {
        wait_pv();
        if (j >= 1) release(empty_v((j - 1) & 1));  // V_{j-1} read (j + 1 < n_tiles: V_{j+1} goes there)
        if (j + 2 < n_tiles) arm(full_k(j & 1));
        arm(full_v((j + 1) & 1));
        if (loader) {
            if (j + 2 < n_tiles) {  // into the K slot of tile j, once every CTA's S_j read it
                mbar_wait_cluster(empty_k(j & 1), (j >> 1) & 1);
                load(&map_k, sK_addr + (j & 1) * G::KV_BYTES, j + 2, full_k(j & 1));
            }
            if (j >= 1)  // into the V slot of tile j - 1, once every CTA's PV_{j-1} read it
                mbar_wait_cluster(empty_v((j + 1) & 1), ((j - 1) >> 1) & 1);
            load(&map_v, sV_addr + ((j + 1) & 1) * G::KV_BYTES, j + 1, full_v((j + 1) & 1));
        }
        fence_regs(s);
        pack_probs<BN>(s, p);  // P_j from the softmax of the previous iteration
        wait_full(full_k((j + 1) & 1), j + 1);
        issue_s(j + 1);
        wait_full(full_v(j & 1), j);
        pv(j);
        wgmma_wait<1>();  // S_{j+1} done; PV_j runs under the exchange and the softmax
        fence_regs(s);
        if (j + 3 < n_tiles) release(empty_k((j + 1) & 1));
        softmax(j + 1);
    }
    // The last tile: zero its V rows at or past the swept range's end (see above), then its PV.
    const int last = n_tiles - 1;
    wait_pv();
    wait_full(full_v(last & 1), last);
    const int n_last = (j0 + last) * BN;
    if (kv_end - n_last < BN) {
        const unsigned slot = sV_addr + (last & 1) * G::KV_BYTES;
        for (int i = t; i < (n_last + BN - kv_end) * (DH / 8); i += 128) {  // 16-byte chunks of those rows
            const int r = kv_end - n_last + i / (DH / 8), ch = i % (DH / 8);
            st_shared_f32x4(slot + (ch >> 3) * KV_BLOCK + r * 128 + (ch & 7) * 16, 0.f, 0.f, 0.f, 0.f);
        }
        fence_proxy_async();
        warpgroup_bar(wg);
    }
    fence_regs(s);
    pack_probs<BN>(s, p);
    pv(last);
    wait_pv();

    // Stage this warpgroup's 64 x DH outputs in its own Q half, then store 16-byte chunks of the rows
    // that exist.
    stage_output_rows<DH>(o, l0, l1, sQ, Q_BLOCK, R0, lane);
    warpgroup_bar(wg);
    store_output_rows<D, DH>(out, sQ, Q_BLOCK, 0, wg * DH, t, t0, QB, HB, T, head0, q_row);
    cluster_sync();  // no CTA leaves while its partner may still arrive on its barriers
}

// ---- D = 256, TMA rings and ping-pong: attention_prefill_wgpp_d256 ----
// RingGeometry. Each warpgroup loads its own 64 Q rows (cp.async, once); thread 128 (warpgroup 1) issues
// every K and V tile by TMA: a 3-D box of 64 columns x 64 keys x the head's 4 column blocks (the layout
// of attention_wg_body's tiles). A tile's K slot is handed back once both warpgroups' S on it completed,
// its V slot once their PV did (one arrival a warp); the loader waits for that at the top of its own
// iteration, where no wgmma of its warpgroup is in flight. Warpgroup 1 loads because with ping-pong it is
// the one behind: warpgroup 0 has released a slot before warpgroup 1 asks for it.
// Ping-pong: warpgroup g issues its wgmma (S_{j+1} and PV_j) only in its turn, named barrier 4 + g
// (both warpgroups' 256 threads: its own 128 wait, the other's 128 arrive when their issue is done), so
// the tensor cores see the two warpgroups' GEMMs alternately and each softmax runs under the other's
// GEMMs. Warpgroup 0 takes the first turn (warpgroup 1 arrives once ahead); each warpgroup has
// n_tiles + 1 turns and warpgroup 1 does not arrive after its last, so both barriers end balanced.

// Named barrier `id` over both warpgroups: wait (sync) / arrive where pred holds. Predicated, with the id
// in a register: no branch between wgmma groups in flight (C7513).
__device__ __forceinline__ void pair_bar_sync(unsigned id) { asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory"); }
__device__ __forceinline__ void pair_bar_arrive_if(unsigned id, bool pred) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n@p bar.arrive %0, 256;\n}\n" ::"r"(id), "r"((int)pred)
                 : "memory");
}

__device__ __forceinline__ void attention_ring_body(const TmaMap &map_k, const TmaMap &map_v,
                                                    const half_t *__restrict__ q, const int *__restrict__ pos_ptr,
                                                    half_t *__restrict__ out, int T, int Hq, int Hkv, int max_len,
                                                    float scale_log2, int HB, int window) {
    constexpr int D = 256;
    using G = RingGeometry<D>;
    constexpr int BN = G::BN, KS = G::K_SLOTS, CPR = D / 8, RPP = 128 / CPR;
    constexpr int S_REGS = BN / 2, O_REGS = D / 2;
    constexpr unsigned KV_BLOCK = BN * 128;      // bytes of one 64-wide column block of a K/V tile
    constexpr unsigned Q_BLOCK = G::ROWS * 128;  // ... of the Q tile
    static_assert(G::V_SLOTS == 2, "V_{j+1} goes into the slot of tile j - 1");

    extern __shared__ __align__(16) unsigned char smem_raw[];
    // full K s, full V s, empty K s, empty V s
    __shared__ __align__(8) unsigned long long bars[2 * (G::K_SLOTS + G::V_SLOTS)];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    unsigned char *sQ = align1024(smem_raw);
    const unsigned sQ_addr = smem_u32(sQ), sK_addr = sQ_addr + G::Q_BYTES, sV_addr = sK_addr + KS * G::KV_BYTES;
    const unsigned bar0 = smem_u32(&bars[0]);
    auto full_k = [&](int s) { return bar0 + 8 * s; };
    auto full_v = [&](int s) { return bar0 + 8 * (KS + s); };
    auto empty_k = [&](int s) { return bar0 + 8 * (KS + 2 + s); };
    auto empty_v = [&](int s) { return bar0 + 8 * (2 * KS + 2 + s); };

    const int tid = threadIdx.x, lane = tid & 31, wg = tid >> 7, t = tid & 127, wq = t >> 5;
    const bool loader = tid == 128;
    const int QB = G::ROWS / HB;                          // queries per block
    const int head0 = blockIdx.x * HB;                    // first query head of the block
    const int kv_head = head0 / (Hq / Hkv);
    const int t0 = (gridDim.y - 1 - blockIdx.y) * QB;     // longest sweeps first
    const int pos = *pos_ptr;
    // keys [0, kv_end) this block may touch; tile j of the loop is key tile j0 + j (n_tiles >= 1: t0 < T)
    const KeyRange range = key_range(t0, QB, T, pos, max_len, window, BN);
    const int j0 = range.j0, n_tiles = range.n_tiles, kv_end = range.kv_end;
    const long q_row = (long)Hq * D;

    if (tid == 0) {
        for (int i = 0; i < KS + 2; ++i) mbar_init(full_k(i), 1);  // the loader's arrive.expect_tx
        for (int i = 0; i < KS + 2; ++i) mbar_init(empty_k(i), 8);  // one arrival per warp of the block
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();

    const int col_block = kv_head * (D / 64);  // the head's first 64-column block in the maps' third dimension
    auto load = [&](const TmaMap *map, unsigned dst, int jt, unsigned full) {
        mbar_expect_tx(full, G::KV_BYTES);
        tma_load_3d(dst, map, 0, (j0 + jt) * BN, col_block, full);
    };
    if (loader) {
        tma_prefetch_map(&map_k);
        tma_prefetch_map(&map_v);
        for (int jt = 0; jt < KS && jt < n_tiles; ++jt) load(&map_k, sK_addr + jt * G::KV_BYTES, jt, full_k(jt));
        for (int jt = 0; jt < 2 && jt < n_tiles; ++jt) load(&map_v, sV_addr + jt * G::KV_BYTES, jt, full_v(jt));
    }

    // This warpgroup's Q rows (query t0 + r / HB, head head0 + r % HB), r = 64 wg + [0, 64).
    const int c = t % CPR, r_first = 64 * wg + t / CPR;
#pragma unroll
    for (int it = 0; it < 64 / RPP; ++it) {
        const int r = r_first + it * RPP, qi = r / HB, tq = t0 + qi;
        const bool ok = qi < QB && tq < T;
        const half_t *src = ok ? q + (long)tq * q_row + (long)(head0 + r - qi * HB) * D + c * 8 : q;
        cp_async16(sQ + (c >> 3) * Q_BLOCK + r * 128 + (((c & 7) ^ (r & 7)) << 4), src, ok ? 16 : 0);
    }
    cp_async_commit();

    const int R0 = wg * 64 + wq * 16 + (lane >> 2);
    const RowLimits rows{min(pos + t0 + R0 / HB, kv_end - 1), min(pos + t0 + (R0 + 8) / HB, kv_end - 1),
                         window_lo(pos + t0 + R0 / HB, window), window_lo(pos + t0 + (R0 + 8) / HB, window)};

    unsigned p[BN / 16][4];      // P fragments of the next PV
    float o[O_REGS], s[S_REGS];  // O; S, then (softmax in place) probabilities
#pragma unroll
    for (int i = 0; i < O_REGS; ++i) o[i] = 0.f;
#pragma unroll
    for (int i = 0; i < S_REGS; ++i) s[i] = 0.f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;
    float alpha0 = 1.f, alpha1 = 1.f;

    auto issue_s = [&](int jt) {  // S_jt = Q K_jt^T for this warpgroup's 64 rows, one wgmma group
        const unsigned k_addr = sK_addr + (jt % KS) * G::KV_BYTES;
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < D / 16; ++ks)
            wgmma_ss<64>(s, sw128_desc(sQ_addr + (ks >> 2) * Q_BLOCK + wg * 64 * 128 + (ks & 3) * 32, 16),
                         sw128_desc(k_addr + (ks >> 2) * KV_BLOCK + (ks & 3) * 32, 16), ks > 0);
        wgmma_commit();
    };
    auto softmax = [&](int jt) {
        softmax_step<BN>(s, (j0 + jt) * BN, lane, rows, scale_log2, m0, m1, l0, l1, alpha0, alpha1);
    };
    auto pv = [&](int jt) { issue_pv<D, BN>(o, p, alpha0, alpha1, sV_addr + (jt & 1) * G::KV_BYTES); };
    auto wait_pv = [&]() { wait_pv_done(o, p); };
    auto turn = [&]() { pair_bar_sync(4 + wg); };
    auto pass_turn = [&](bool more) { pair_bar_arrive_if(5 - wg, more); };  // more: the other has a turn after this

    // Prologue: S_0 and its softmax.
    cp_async_wait<0>();  // this warpgroup's Q rows landed
    fence_proxy_async();
    warpgroup_bar(wg);
    pair_bar_arrive_if(4, wg == 1);  // warpgroup 0 takes the first turn
    mbar_wait(full_k(0), 0);
    turn();
    issue_s(0);
    pass_turn(true);
    wgmma_wait<0>();
    fence_regs(s);
    mbar_arrive_if(empty_k(0), lane == 0 && KS < n_tiles);
    softmax(0);

    // Iteration j: the loads of K_{j+3} and V_{j+1} (loader), S_{j+1} and PV_j in this warpgroup's turn;
    // PV_j is waited for at the top of the next iteration (see attention_wg_body).
    for (int j = 0; j + 1 < n_tiles; ++j) {
        wait_pv();
        mbar_arrive_if(empty_v((j + 1) & 1), lane == 0 && j >= 1);  // V_{j-1} read; V_{j+1} goes there
        if (loader) {
            if (j + KS < n_tiles) {  // into the K slot of tile j, once both warpgroups' S_j read it
                mbar_wait(empty_k(j % KS), (j / KS) & 1);
                load(&map_k, sK_addr + (j % KS) * G::KV_BYTES, j + KS, full_k(j % KS));
            }
            if (j >= 1) {  // into the V slot of tile j - 1, once both warpgroups' PV_{j-1} read it
                mbar_wait(empty_v((j + 1) & 1), ((j - 1) >> 1) & 1);
                load(&map_v, sV_addr + ((j + 1) & 1) * G::KV_BYTES, j + 1, full_v((j + 1) & 1));
            }
        }
        fence_regs(s);
        pack_probs<BN>(s, p);  // P_j from the softmax of the previous iteration
        mbar_wait(full_k((j + 1) % KS), ((j + 1) / KS) & 1);
        turn();
        issue_s(j + 1);
        mbar_wait(full_v(j & 1), (j >> 1) & 1);  // after S_{j+1} is issued: a late V_j holds back PV_j only
        pv(j);
        pass_turn(true);
        wgmma_wait<1>();  // S_{j+1} done; PV_j runs under the softmax (and the other warpgroup's turn)
        fence_regs(s);
        mbar_arrive_if(empty_k((j + 1) % KS), lane == 0 && j + 1 + KS < n_tiles);
        softmax(j + 1);
    }
    // The last tile: zero its V rows at or past kv_end (the TMA unit zero-fills only past max_len), split
    // over the block and published to both warpgroups' PV by one block barrier, then its PV.
    const int last = n_tiles - 1;
    wait_pv();
    mbar_wait(full_v(last & 1), (last >> 1) & 1);
    const int n_last = (j0 + last) * BN;
    if (kv_end - n_last < BN) {  // the same for the whole block
        const unsigned slot = sV_addr + (last & 1) * G::KV_BYTES;
        for (int i = tid; i < (n_last + BN - kv_end) * (D / 8); i += 256) {  // 16-byte chunks of those rows
            const int r = kv_end - n_last + i / (D / 8), ch = i % (D / 8);
            st_shared_f32x4(slot + (ch >> 3) * KV_BLOCK + r * 128 + (ch & 7) * 16, 0.f, 0.f, 0.f, 0.f);
        }
        fence_proxy_async();
        __syncthreads();
    }
    fence_regs(s);
    pack_probs<BN>(s, p);
    turn();
    pv(last);
    pass_turn(wg == 0);
    wait_pv();

    // Stage this warpgroup's 64 x D output in its own rows of the Q tile, then store 16-byte chunks of
    // the rows that exist.
    stage_output_rows<D>(o, l0, l1, sQ, Q_BLOCK, R0, lane);
    warpgroup_bar(wg);
    store_output_rows<D, D>(out, sQ, Q_BLOCK, wg * 64, 0, t, t0, QB, HB, T, head0, q_row);
}

}  // namespace
#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// grid (Hq / HB, ceil(T / (64 / HB))), block 128, dynamic shared memory WgGeometry<D, BN, STAGES>::SMEM_BYTES;
// HB = heads per block, a divisor of Hq / Hkv that fits in the block's 64 rows (attention.py picks it).
// scale_log2 = softmax_scale * log2(e).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTENTION_WG_BODY(D, BN, STAGES) \
    attention_wg_body<D, BN, STAGES>(q, k, v, pos, out, T, Hq, Hkv, max_len, scale_log2, HB, window)
#else
#define ATTENTION_WG_BODY(D, BN, STAGES) __trap()
#endif
#define ATTENTION_PREFILL_WG(NAME, D, BN, STAGES)                                                          \
    extern "C" __global__ void __launch_bounds__(128, 1) NAME(                                             \
        const half_t *q, const half_t *k, const half_t *v, const int *pos, half_t *out, int T, int Hq, int Hkv, \
        int max_len, float scale_log2, int HB, int window) { pdl_entry();                                  \
        ATTENTION_WG_BODY(D, BN, STAGES);                                                                  \
    }

//                   entry point                 D  key tile  stages
ATTENTION_PREFILL_WG(attention_prefill_wg_d64,   64,   64,       4)
ATTENTION_PREFILL_WG(attention_prefill_wg_d128, 128,   64,       3)

// The TMA kernels: the tensor maps of k and v first (3-D: 64 halves x key x 64-wide column block of every
// head, 128-byte swizzle; attention.py encodes them) instead of k and v, the other arguments as above.
// - D = 256, attention_prefill_wgpp_d256: grid (Hq / HB, ceil(T / (128 / HB))), block 256 (two
//   warpgroups of 64 rows), dynamic shared memory RingGeometry<256>::SMEM_BYTES; box 64 x 64 keys x 4
//   column blocks.
// - D = 512, attention_prefill_wgtc_d512: grid (Hq / HB, 2 ceil(ceil(T / (64 / HB)) / 2)) (whole clusters
//   of two along y), block 256 (two warpgroups on one 64-row tile), dynamic shared memory
//   SplitGeometry<512>::SMEM_BYTES.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define ATTENTION_WGTC_ATTRS __launch_bounds__(256, 1) __cluster_dims__(1, 2, 1)
#define ATTENTION_TMA_BODY(BODY) BODY(map_k, map_v, q, pos, out, T, Hq, Hkv, max_len, scale_log2, HB, window)
#else
#define ATTENTION_WGTC_ATTRS
#define ATTENTION_TMA_BODY(BODY) __trap()
#endif
#define ATTENTION_PREFILL_TMA(NAME, ATTRS, BODY)                                                            \
    extern "C" __global__ void ATTRS NAME(                                                                   \
        const __grid_constant__ impasync::TmaMap map_k, const __grid_constant__ impasync::TmaMap map_v,     \
        const half_t *q, const int *pos, half_t *out, int T, int Hq, int Hkv, int max_len, float scale_log2, \
        int HB, int window) {                                                                                \
        pdl_entry();                                                                                         \
        ATTENTION_TMA_BODY(BODY);                                                                            \
    }
ATTENTION_PREFILL_TMA(attention_prefill_wgpp_d256, __launch_bounds__(256, 1), attention_ring_body)
ATTENTION_PREFILL_TMA(attention_prefill_wgtc_d512, ATTENTION_WGTC_ATTRS, attention_wg_pair_body)
