// Causal GQA flash attention for one prefill chunk over the KV cache (mma.sync m16n8k16, FP32 softmax).
//
// Query t of the chunk sits at absolute position pos + t and attends cache rows 0 .. pos + t; the
// chunk's own keys and values are already in the cache at rows pos .. pos + T - 1. `pos` is read
// from device memory, never from the host: the grid depends only on the static T and head count,
// and each block derives its KV range from pos itself, so one captured CUDA graph serves every
// non-last prefill chunk.
//
// Tile geometry: one block = 64 queries of one query head, 4 warps, each warp owns 16 query rows
// (one m16 MMA tile) for the whole KV sweep, so the online-softmax row statistics never leave the
// registers of the quad that holds the row. KV tiles of BLOCK_N keys (64; 32 for D = 256 to keep
// the S and O accumulators in registers) stream through two shared-memory stages filled by cp.async:
// tile j + 1 loads while tile j is multiplied. K and V are separate commit groups, so S = Q K^T
// starts as soon as K lands. Q fragments stay in registers for D <= 128 (D / 16 * 4 registers);
// for D = 256 they are re-read from shared memory with ldmatrix each tile. P goes from the S
// accumulators straight into the A fragments of P V (the C layout of m16n8 equals the A layout of
// m16n8k16), and V is read with ldmatrix .trans. Shared-memory rows are padded by 16 bytes so
// ldmatrix rows fall in distinct banks. Blocks of the last query tiles (the longest KV sweeps)
// are scheduled first. The output goes through shared memory for 16-byte coalesced stores.
//
// Layouts (row-major, contiguous): q, out [T, Hq, D]; k, v [max_len, Hkv, D]; pos int32 [1].
// Query head h reads KV head h / (Hq / Hkv). Keys at or beyond min(pos + T, max_len) are never
// loaded (their shared-memory rows are zero-filled), so nothing past the chunk can leak in.
#include "common.cuh"

namespace {

constexpr int BLOCK_M = 64;
constexpr int WARPS = 4;
constexpr int THREADS = WARPS * 32;

template <int D>
struct Geometry {
    static constexpr int BLOCK_N = D >= 256 ? 32 : 64;
    static constexpr bool Q_IN_REGS = D <= 128;
    static constexpr int STRIDE = D + 8;  // halves per shared-memory row (16-byte pad)
    static constexpr int Q_HALVES = BLOCK_M * STRIDE;
    static constexpr int KV_HALVES = BLOCK_N * STRIDE;
    // Q tile + two stages of K + two stages of V. attention.py computes the same number.
    static constexpr int SMEM_BYTES = (Q_HALVES + 4 * KV_HALVES) * 2;
};

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float fast_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ unsigned dynamic_smem_bytes() {
    unsigned bytes;
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(bytes));
    return bytes;
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
                                                       int max_len, float scale_log2) {
    using G = Geometry<D>;
    constexpr int BLOCK_N = G::BLOCK_N, STRIDE = G::STRIDE;
    constexpr int S_TILES = BLOCK_N / 8;  // n8 accumulator tiles of S per warp
    constexpr int O_TILES = D / 8;        // n8 accumulator tiles of O per warp

    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    half_t *sQ = reinterpret_cast<half_t *>(smem_raw);
    half_t *sK = sQ + G::Q_HALVES;
    half_t *sV = sK + 2 * G::KV_HALVES;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int head = blockIdx.x;
    const int t0 = (gridDim.y - 1 - blockIdx.y) * BLOCK_M;  // longest sweeps first
    const int kv_head = head / (Hq / Hkv);
    const int pos = *pos_ptr;
    const int rows_valid = min(BLOCK_M, T - t0);
    const int kv_end = min(pos + t0 + rows_valid, max_len);  // keys this block may touch: [0, kv_end)
    const int n_tiles = (kv_end + BLOCK_N - 1) / BLOCK_N;
    const long q_row = (long)Hq * D, kv_row = (long)Hkv * D;
    const half_t *k_base = k + (long)kv_head * D;
    const half_t *v_base = v + (long)kv_head * D;

    auto load_kv = [&](int j) {  // two commit groups: K then V of tile j
        const int n0 = j * BLOCK_N;
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

    // This lane's two rows (quad row r and r + 8 of the warp's 16) and their causal limits.
    const int row0 = t0 + warp * 16 + (lane >> 2);
    const int lim0 = min(pos + row0, kv_end - 1), lim1 = min(pos + row0 + 8, kv_end - 1);
    const int warp_min_lim = min(pos + t0 + warp * 16, kv_end - 1);

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

        // Causal mask, only on tiles that reach past the warp's first row limit.
        const int n0 = j * BLOCK_N;
        if (n0 + BLOCK_N - 1 > warp_min_lim) {
#pragma unroll
            for (int i = 0; i < S_TILES; ++i) {
                const int key = n0 + i * 8 + (lane & 3) * 2;
                if (key > lim0) s[i][0] = NEG_INF;
                if (key + 1 > lim0) s[i][1] = NEG_INF;
                if (key > lim1) s[i][2] = NEG_INF;
                if (key + 1 > lim1) s[i][3] = NEG_INF;
            }
        }

        // Online softmax in the log2 domain. Key 0 is visible to every row, so after tile 0 the
        // running max is finite and exp2(-inf - m) = 0 handles masked entries.
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
        const float alpha0 = fast_exp2(m0 - mx0), alpha1 = fast_exp2(m1 - mx1);
        m0 = mx0, m1 = mx1;
        float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
        for (int i = 0; i < S_TILES; ++i) {
            s[i][0] = fast_exp2(fmaf(s[i][0], scale_log2, -m0));
            s[i][1] = fast_exp2(fmaf(s[i][1], scale_log2, -m0));
            s[i][2] = fast_exp2(fmaf(s[i][2], scale_log2, -m1));
            s[i][3] = fast_exp2(fmaf(s[i][3], scale_log2, -m1));
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
            for (int dd = 0; dd < D / 16; ++dd) {
                unsigned b[4];
                ldmatrix_x4_trans(b[0], b[1], b[2], b[3], sVj + (kk * 16 + a_row) * STRIDE + dd * 16 + a_col);
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

    // Stage the warp's 16 x D output in its own Q rows (only this warp ever reads them), then store
    // 16-byte chunks of the rows that exist.
    __syncwarp();
    half_t *stage = sQw;
    const int r = lane >> 2, c = (lane & 3) * 2;
#pragma unroll
    for (int i = 0; i < O_TILES; ++i) {
        *reinterpret_cast<half2_t *>(stage + r * STRIDE + i * 8 + c) = pack_half2(o[i][0] * inv0, o[i][1] * inv0);
        *reinterpret_cast<half2_t *>(stage + (r + 8) * STRIDE + i * 8 + c) =
            pack_half2(o[i][2] * inv1, o[i][3] * inv1);
    }
    __syncwarp();
    constexpr int CHUNKS = D / 8;
#pragma unroll
    for (int it = 0; it < 16 * CHUNKS / 32; ++it) {
        const int i = lane + it * 32;
        const int rr = i / CHUNKS, cc = i % CHUNKS;
        const int t = t0 + warp * 16 + rr;
        if (t < T)
            *reinterpret_cast<uint4 *>(out + t * q_row + (long)head * D + cc * 8) =
                *reinterpret_cast<const uint4 *>(stage + rr * STRIDE + cc * 8);
    }
}

}  // namespace

// grid (Hq, ceil(T / 64)), block 128, dynamic shared memory Geometry<D>::SMEM_BYTES.
// scale_log2 = softmax_scale * log2(e).
#define ATTENTION_PREFILL(D)                                                                               \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_prefill_d##D(                          \
        const half_t *q, const half_t *k, const half_t *v, const int *pos, half_t *out, int T, int Hq, int Hkv, \
        int max_len, float scale_log2) {                                                                   \
        attention_prefill_tile<D>(q, k, v, pos, out, T, Hq, Hkv, max_len, scale_log2);                     \
    }

ATTENTION_PREFILL(64)
ATTENTION_PREFILL(128)
ATTENTION_PREFILL(256)
