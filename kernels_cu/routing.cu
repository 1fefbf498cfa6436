// MoE routing: router softmax + top-k, the expert permutation (histogram, offsets, stable scatter),
// and the weighted un-permute (combine) with the residual add.
//
// Layouts shared with the expert GEMMs and the engine (R = T * k permuted rows):
//   topk_ids int32 [T, k], topk_weights fp32 [T, k]
//   expert_offsets int32 [E + 1]: rows of expert e are [offsets[e], offsets[e+1]); offsets[E] = R
//   row_token int32 [R], row_weight fp32 [R]: the token and router weight of permuted row r
//   token_rows int32 [T, k]: the permuted row of (t, j)
// Rows of one expert are in increasing (t, j) order (a stable counting sort), so the permutation is
// the same on every run. No atomics on global memory and every reduction in a fixed order: all
// three kernels are deterministic bit for bit, and capture-safe (fixed grids, no host reads).
#include "common.cuh"
#include "vec16.cuh"

namespace {

constexpr unsigned FULL = 0xffffffffu;

// Top-k over one token's E logits with one warp: lane l holds experts l, l + 32, ... (NPL of them).
// Selection runs on the FP16 logits themselves (exact), largest first, ties to the lower expert id;
// softmax is monotone, so this is the top-k of the probabilities, without the ties that rounding
// exp() to FP32 could create between distinct logits. Each (logit, expert) is packed into one 32-bit
// key that orders exactly that way -- high half the FP16 bits mapped to an unsigned order, low half
// 0xffff - expert -- so each of the k picks is a per-lane max and one redux.sync.max.
__device__ __forceinline__ unsigned warp_max_u32(unsigned v) {
    unsigned r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
    return r;
}

__device__ __forceinline__ unsigned logit_key(half_t bits, int expert) {
    if (bits == 0x8000u) bits = 0;  // -0 == +0: let the expert id break the tie
    const unsigned ordered = (bits & 0x8000u) ? (~bits & 0xffffu) : (bits | 0x8000u);
    return (ordered << 16) | (0xffffu - (unsigned)expert);
}

__device__ __forceinline__ float key_logit(unsigned key) {
    const unsigned ordered = key >> 16;
    return h2f((half_t)((ordered & 0x8000u) ? (ordered & 0x7fffu) : (~ordered & 0xffffu)));
}

template <int NPL>
__device__ __forceinline__ void topk_softmax_impl(const half_t *__restrict__ logits, int tokens, int experts, int k,
                                                  int renormalize, int *__restrict__ topk_ids,
                                                  float *__restrict__ topk_weights) {
    const int token = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (token >= tokens) return;  // whole warps only
    const half_t *row = logits + (size_t)token * experts;
    unsigned key[NPL];  // 0 = no expert (below every real key)
#pragma unroll
    for (int i = 0; i < NPL; ++i) {
        const int e = i * 32 + lane;
        key[i] = e < experts ? logit_key(row[e], e) : 0u;
    }
    int my_id = 0;  // lane j keeps the j-th selection
    float my_logit = 0.0f, row_max = 0.0f;
    for (int j = 0; j < k; ++j) {
        unsigned best = 0u;
#pragma unroll
        for (int i = 0; i < NPL; ++i) best = max(best, key[i]);
        best = warp_max_u32(best);
        const int expert = 0xffff - (int)(best & 0xffffu);
        const float logit = key_logit(best);
        if (j == 0) row_max = logit;
        if ((expert & 31) == lane) {
#pragma unroll
            for (int i = 0; i < NPL; ++i)
                if (i == (expert >> 5)) key[i] = 0u;
        }
        if (lane == j) {
            my_id = expert;
            my_logit = logit;
        }
    }
    const float my_p = expf(my_logit - row_max);
    float denom = lane < k ? my_p : 0.0f;  // renormalised: the softmax denominator cancels
    if (!renormalize) {
        denom = 0.0f;
#pragma unroll
        for (int i = 0; i < NPL; ++i)
            if (i * 32 + lane < experts) denom += expf(h2f(row[i * 32 + lane]) - row_max);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) denom += __shfl_xor_sync(FULL, denom, offset);
    if (lane < k) {
        topk_ids[(size_t)token * k + lane] = my_id;
        topk_weights[(size_t)token * k + lane] = my_p / denom;
    }
}

// Stable counting sort of the R = T*k (t, j) items by expert. Block b owns experts
// [b*EPB, b*EPB + EPB); each of its PERM_THREADS threads owns a contiguous segment of items and
// counts, in registers, the items below the block's first expert and the items of each owned expert
// (no atomics, no per-expert histogram). One block scan of those EPB + 1 counts gives the block's
// expert offsets and each thread's first row per expert; a second walk over the segment (now in L1)
// scatters the owned items in (t, j) order. Every block reads all R ids (64 KB at T=2048, k=8):
// cheap next to running the whole sort on one SM.
constexpr int PERM_THREADS = 1024;
constexpr int EPB = 8;   // experts per block
constexpr int PERM_BATCH = 8;  // ids loaded together per thread (latency hiding)

__device__ __forceinline__ void build_permutation_impl(const int *__restrict__ topk_ids,
                                                       const float *__restrict__ topk_weights, int items, int k,
                                                       int experts, int *__restrict__ expert_offsets,
                                                       int *__restrict__ row_token, float *__restrict__ row_weight,
                                                       int *__restrict__ token_rows) {
    constexpr int COUNTS = EPB + 1;  // [0]: items below the first owned expert; [1 + x]: owned expert x
    __shared__ int warp_totals[32][COUNTS];
    __shared__ int block_base[COUNTS];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, warps = blockDim.x >> 5;
    const int first_expert = blockIdx.x * EPB;
    const int per_thread = (items + blockDim.x - 1) / blockDim.x;
    const int seg_begin = min(items, tid * per_thread), seg_end = min(items, seg_begin + per_thread);

    int count[COUNTS];
#pragma unroll
    for (int c = 0; c < COUNTS; ++c) count[c] = 0;
    for (int base = seg_begin; base < seg_end; base += PERM_BATCH) {
        int e[PERM_BATCH];
#pragma unroll
        for (int b = 0; b < PERM_BATCH; ++b) e[b] = base + b < seg_end ? topk_ids[base + b] : -1;
#pragma unroll
        for (int b = 0; b < PERM_BATCH; ++b) {
            const bool valid = e[b] >= 0 && e[b] < experts;
            count[0] += valid && e[b] < first_expert;
#pragma unroll
            for (int x = 0; x < EPB; ++x) count[1 + x] += valid && e[b] == first_expert + x;
        }
    }

    // exclusive block scan of the COUNTS-vector over threads (thread order = item order)
    int inclusive[COUNTS];
#pragma unroll
    for (int c = 0; c < COUNTS; ++c) {
        inclusive[c] = count[c];
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const int other = __shfl_up_sync(FULL, inclusive[c], offset);
            if (lane >= offset) inclusive[c] += other;
        }
    }
    if (lane == 31) {
#pragma unroll
        for (int c = 0; c < COUNTS; ++c) warp_totals[warp][c] = inclusive[c];
    }
    __syncthreads();
    if (warp == 0) {
#pragma unroll
        for (int c = 0; c < COUNTS; ++c) {
            int t = lane < warps ? warp_totals[lane][c] : 0;
#pragma unroll
            for (int offset = 1; offset < 32; offset <<= 1) {
                const int other = __shfl_up_sync(FULL, t, offset);
                if (lane >= offset) t += other;
            }
            if (lane < warps) warp_totals[lane][c] = t;  // inclusive over warps
            if (lane == warps - 1) block_base[c] = t;     // block total
        }
    }
    __syncthreads();
    if (tid == 0) {
        // block_base: totals -> first row of each owned expert; the owned offsets go out here
        int row = block_base[0];
#pragma unroll
        for (int x = 0; x < EPB; ++x) {
            const int total = block_base[1 + x];
            block_base[1 + x] = row;
            if (first_expert + x < experts) expert_offsets[first_expert + x] = row;
            row += total;
        }
        if (first_expert + EPB >= experts) expert_offsets[experts] = row;  // the last block
    }
    __syncthreads();
    int next_row[EPB];
#pragma unroll
    for (int x = 0; x < EPB; ++x)
        next_row[x] = block_base[1 + x] + inclusive[1 + x] - count[1 + x] + (warp > 0 ? warp_totals[warp - 1][1 + x] : 0);

    for (int base = seg_begin; base < seg_end; base += PERM_BATCH) {
        int e[PERM_BATCH];
#pragma unroll
        for (int b = 0; b < PERM_BATCH; ++b) e[b] = base + b < seg_end ? topk_ids[base + b] : -1;
#pragma unroll
        for (int b = 0; b < PERM_BATCH; ++b) {
            const unsigned x = (unsigned)(e[b] - first_expert);
            if (e[b] >= 0 && e[b] < experts && x < (unsigned)EPB) {
                int r = 0;
#pragma unroll
                for (int xx = 0; xx < EPB; ++xx) {
                    if (x == (unsigned)xx) {
                        r = next_row[xx];
                        next_row[xx] = r + 1;
                    }
                }
                const int item = base + b;
                row_token[r] = item / k;
                row_weight[r] = topk_weights[item];
                token_rows[item] = r;
            }
        }
    }
}

}  // namespace

extern "C" {

// topk_softmax_n{4,8,16}: NPL = experts per lane (E <= 32 * NPL). One warp per token, 4 warps a block.
#define TOPK_SOFTMAX(NPL)                                                                                     \
    __global__ void topk_softmax_n##NPL(const half_t *__restrict__ logits, int tokens, int experts, int k,    \
                                        int renormalize, int *__restrict__ topk_ids,                          \
                                        float *__restrict__ topk_weights) {                                   \
        topk_softmax_impl<NPL>(logits, tokens, experts, k, renormalize, topk_ids, topk_weights);              \
    }
TOPK_SOFTMAX(4)
TOPK_SOFTMAX(8)
TOPK_SOFTMAX(16)
#undef TOPK_SOFTMAX

// build_permutation_i32: grid ceil(E / EPB) blocks of PERM_THREADS threads; see build_permutation_impl.
__global__ void __launch_bounds__(PERM_THREADS)
    build_permutation_i32(const int *__restrict__ topk_ids, const float *__restrict__ topk_weights, int items, int k,
                          int experts, int *__restrict__ expert_offsets, int *__restrict__ row_token,
                          float *__restrict__ row_weight, int *__restrict__ token_rows) {
    build_permutation_impl(topk_ids, topk_weights, items, k, experts, expert_offsets, row_token, row_weight,
                           token_rows);
}

// out[t] = residual[t] + sum_{j=0..k-1} w[t,j] * y[token_rows[t,j]], FP32, j summed in order; w = 1
// when has_weights == 0 (rows already scaled by the down GEMM). One block per token, each thread a
// 16-byte chunk of H; the k row ids go through shared memory once. The k row loads of a chunk are
// issued 8 at a time before any is added, to keep 8 loads in flight per thread. out may alias
// residual: each thread reads its residual chunk before writing the same chunk.
__global__ void combine_f16(const half_t *__restrict__ y, const int *__restrict__ token_rows,
                            const half_t *residual, half_t *out, const float *__restrict__ topk_weights,
                            int has_weights, int rows, int k, int hidden) {
    __shared__ int row_of[32];
    __shared__ float weight_of[32];
    const int token = blockIdx.x, chunks = hidden >> 3;
    if (threadIdx.x < k) {
        const int r = token_rows[(size_t)token * k + threadIdx.x];
        row_of[threadIdx.x] = (r >= 0 && r < rows) ? r : -1;  // a bad row adds nothing, never reads out of bounds
        weight_of[threadIdx.x] = has_weights ? topk_weights[(size_t)token * k + threadIdx.x] : 1.0f;
    }
    __syncthreads();
    const u32x4 *res_row = reinterpret_cast<const u32x4 *>(residual + (size_t)token * hidden);
    u32x4 *out_row = reinterpret_cast<u32x4 *>(out + (size_t)token * hidden);
    for (int chunk = threadIdx.x; chunk < chunks; chunk += blockDim.x) {
        float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int j0 = 0; j0 < k; j0 += 8) {
            u32x4 loaded[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int r = (j0 + j < k) ? row_of[j0 + j] : -1;
                if (r >= 0) loaded[j] = ld16_nc(y + (size_t)r * hidden + chunk * 8);
            }
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const int r = (j0 + j < k) ? row_of[j0 + j] : -1;
                if (r >= 0) {
                    float f[8];
                    unpack8(loaded[j], f);
                    const float w = weight_of[j0 + j];
#pragma unroll
                    for (int i = 0; i < 8; ++i) acc[i] = fmaf(w, f[i], acc[i]);
                }
            }
        }
        float res[8];
        unpack8(ld16(res_row + chunk), res);
#pragma unroll
        for (int i = 0; i < 8; ++i) res[i] += acc[i];
        out_row[chunk] = pack8(res);
    }
}

}  // extern "C"
