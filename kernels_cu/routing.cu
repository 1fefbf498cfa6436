// MoE routing: router softmax + top-k, the expert permutation (histogram, offsets, stable scatter),
// and the weighted un-permute (combine) with the residual add and, optionally, a shared expert's
// output scaled by the sigmoid of its gate (Qwen3.5/3.6).
//
// Layouts shared with the expert GEMMs and the engine (R = T * k permuted rows):
//   topk_ids int32 [T, k], topk_weights fp32 [T, k]
//   expert_offsets int32 [E + 1]: rows of expert e are [offsets[e], offsets[e+1]); offsets[E] = R
//   row_token int32 [R], row_weight fp32 [R]: the token and router weight of permuted row r
//   token_rows int32 [T, k]: the permuted row of (t, j)
// Rows of one expert are in increasing (t, j) order (a stable counting sort), so the permutation is
// the same on every run. No atomics on global memory and every reduction in a fixed order: every
// kernel is deterministic bit for bit, and capture-safe (fixed grids, no host reads).
// The engine runs topk_count + permute_counted (top-k, then the permutation spread over every block;
// the outputs of topk_softmax + build_permutation) and combine_rmsnorm (combine + the next layer's
// RMSNorm of the new residual). A one-launch form whose last block (by an atomic ticket) built the
// whole permutation measured slower than these two launches (9.0 vs 7.7 us at T=512 on the H100,
// docs/notes/ops.md): one SM's serial phases cost more than a launch.
// Gemma-4 multiplies each chosen expert's weight by a per-expert scale (topk's expert_scale) and ends
// its feed-forward block with post_ffn_norms instead of a combine: the expert rows summed, the norms
// of both branches and of their sum, the residual add and the layer scalar, in one launch.
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

// One token's top-k with one warp (all 32 lanes call it); lane j < k writes selection j and returns
// its expert id (other lanes return -1). expert_scale (fp32 [E], null: none) multiplies each chosen
// expert's weight after the softmax and the renormalisation (Gemma-4's router).
template <int NPL>
__device__ __forceinline__ int topk_token(const half_t *__restrict__ logits, int token, int experts, int k,
                                           int renormalize, int *__restrict__ topk_ids,
                                           float *__restrict__ topk_weights, const float *expert_scale) {
    const int lane = threadIdx.x & 31;
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
        float weight = my_p / denom;
        if (expert_scale) weight *= expert_scale[my_id];
        topk_ids[(size_t)token * k + lane] = my_id;
        topk_weights[(size_t)token * k + lane] = weight;
    }
    return lane < k ? my_id : -1;
}

template <int NPL>
__device__ __forceinline__ void topk_softmax_impl(const half_t *__restrict__ logits, int tokens, int experts, int k,
                                                  int renormalize, int *__restrict__ topk_ids,
                                                  float *__restrict__ topk_weights, const float *expert_scale) {
    const int token = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    if (token >= tokens) return;  // whole warps only
    topk_token<NPL>(logits, token, experts, k, renormalize, topk_ids, topk_weights, expert_scale);
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

// Exclusive scan over the block of one int per thread (thread order); `total` gets the block sum.
__device__ __forceinline__ int block_exclusive_scan(int v, int *warp_sums /* [32] shared */, int &total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    int inclusive = v;
#pragma unroll
    for (int offset = 1; offset < 32; offset <<= 1) {
        const int other = __shfl_up_sync(FULL, inclusive, offset);
        if (lane >= offset) inclusive += other;
    }
    if (lane == 31) warp_sums[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
        int t = lane < warps ? warp_sums[lane] : 0;
#pragma unroll
        for (int offset = 1; offset < 32; offset <<= 1) {
            const int other = __shfl_up_sync(FULL, t, offset);
            if (lane >= offset) t += other;
        }
        if (lane < warps) warp_sums[lane] = t;  // inclusive over warps
    }
    __syncthreads();
    total = warp_sums[warps - 1];
    const int result = inclusive - v + (warp > 0 ? warp_sums[warp - 1] : 0);
    __syncthreads();  // warp_sums may be reused
    return result;
}

// combine: the token's k rows (a bad row -> -1: adds nothing, never reads out of bounds) and weights
// into shared memory. Ends with __syncthreads.
__device__ __forceinline__ void load_combine_rows(const int *__restrict__ token_rows,
                                                  const float *__restrict__ topk_weights, int has_weights, int rows,
                                                  int k, int token, int *row_of, float *weight_of) {
    if (threadIdx.x < k) {
        const int r = token_rows[(size_t)token * k + threadIdx.x];
        row_of[threadIdx.x] = (r >= 0 && r < rows) ? r : -1;
        weight_of[threadIdx.x] = has_weights ? topk_weights[(size_t)token * k + threadIdx.x] : 1.0f;
    }
    __syncthreads();
}

// The shared expert's part of token `token`: its row (null: none) and the sigmoid of its gate (null
// gate: 1). Every thread reads the one gate value (a broadcast load).
struct SharedRow {
    const half_t *row;
    float scale;
};
__device__ __forceinline__ SharedRow shared_row(const half_t *__restrict__ shared, int shared_stride,
                                                const half_t *__restrict__ shared_gate, int gate_stride, int token) {
    SharedRow r{nullptr, 1.0f};
    if (shared) {
        r.row = shared + (size_t)token * shared_stride;
        if (shared_gate) r.scale = 1.0f / (1.0f + expf(-h2f(shared_gate[(size_t)token * gate_stride])));
    }
    return r;
}

__device__ __forceinline__ u32x4 shared_chunk(const SharedRow &sh, int chunk) {
    return sh.row ? ld16_nc(sh.row + chunk * 8) : u32x4{0u, 0u, 0u, 0u};
}

// acc = sum_j w_j * y[row_j] over one 16-byte chunk, FP32 from 0, j in order (a bad row adds nothing).
// The k row loads are issued 8 at a time before any is added. NC: the rows are loaded with ld.global.nc
// (combine's: the rows' addresses come through shared memory after pdl_entry, so no load can move above
// its wait), else coherent (post_ffn_norms).
template <bool NC>
__device__ __forceinline__ void sum_rows_chunk(const half_t *__restrict__ y, const int *row_of, const float *weight_of,
                                               int k, int hidden, int chunk, float acc[8]) {
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = 0.0f;
    for (int j0 = 0; j0 < k; j0 += 8) {
        u32x4 loaded[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int r = (j0 + j < k) ? row_of[j0 + j] : -1;
            if (r >= 0) {
                const half_t *src = y + (size_t)r * hidden + chunk * 8;
                loaded[j] = NC ? ld16_nc(src) : ld16(src);
            }
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
}

// One 16-byte chunk of a combined row: residual + sum_j w_j * y[row_j] (+ scale * shared), FP32, j in
// order then the shared row, one rounding. sh_raw: the shared row's chunk, loaded early by the caller.
__device__ __forceinline__ u32x4 combine_chunk(const half_t *__restrict__ y, const int *row_of,
                                               const float *weight_of, int k, int hidden, int chunk, u32x4 res_raw,
                                               const SharedRow &sh, u32x4 sh_raw) {
    float acc[8];
    sum_rows_chunk<true>(y, row_of, weight_of, k, hidden, chunk, acc);
    if (sh.row) {
        float f[8];
        unpack8(sh_raw, f);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = fmaf(sh.scale, f[i], acc[i]);
    }
    float res[8];
    unpack8(res_raw, res);
#pragma unroll
    for (int i = 0; i < 8; ++i) res[i] += acc[i];
    return pack8(res);
}

constexpr int COMBINE_THREADS = 256;  // routing.py: min(256, H/8 rounded up to a warp)

template <int C>
__device__ __forceinline__ void combine_rmsnorm_impl(const half_t *__restrict__ y, const int *__restrict__ token_rows,
                                                     const half_t *residual, half_t *out,
                                                     const float *__restrict__ topk_weights, int has_weights, int rows,
                                                     int k, int hidden, const half_t *__restrict__ shared,
                                                     int shared_stride, const half_t *__restrict__ shared_gate,
                                                     int gate_stride, const half_t *__restrict__ norm_w,
                                                     half_t *__restrict__ normed, float eps) {
    __shared__ int row_of[32];
    __shared__ float weight_of[32];
    __shared__ float scratch[32];
    const int token = blockIdx.x, chunks = hidden >> 3;
    const u32x4 *res_row = reinterpret_cast<const u32x4 *>(residual + (size_t)token * hidden);
    u32x4 *out_row = reinterpret_cast<u32x4 *>(out + (size_t)token * hidden);
    const SharedRow sh = shared_row(shared, shared_stride, shared_gate, gate_stride, token);
    u32x4 w_raw[C], done[C], sh_raw[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {  // residual, shared row and weights first: independent of the row ids
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            w_raw[c] = ld16_nc(norm_w + chunk * 8);
            done[c] = ld16(res_row + chunk);
            sh_raw[c] = shared_chunk(sh, chunk);
        }
    }
    load_combine_rows(token_rows, topk_weights, has_weights, rows, k, token, row_of, weight_of);
    float sq = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            done[c] = combine_chunk(y, row_of, weight_of, k, hidden, chunk, done[c], sh, sh_raw[c]);
            out_row[chunk] = done[c];
            float x[8];
            unpack8(done[c], x);
#pragma unroll
            for (int i = 0; i < 8; ++i) sq += x[i] * x[i];
        }
    }
    const float inv = rsqrtf(block_sum(sq, scratch) / (float)hidden + eps);
    scaled_store<C>(done, w_raw, inv, reinterpret_cast<u32x4 *>(normed + (size_t)token * hidden), chunks);
}

// Two sums over the block at once, each as block_sum (butterfly in each warp, then every warp over the
// warp sums): every thread gets the same bits. One call per scratch array.
__device__ __forceinline__ float2 block_sum2(float a, float b, float2 *scratch /* [32] shared */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    a = warp_sum(a);
    b = warp_sum(b);
    if (warps == 1) return make_float2(a, b);
    if (lane == 0) scratch[warp] = make_float2(a, b);
    __syncthreads();
    const float2 t = lane < warps ? scratch[lane] : make_float2(0.0f, 0.0f);
    return make_float2(warp_sum(t.x), warp_sum(t.y));
}

// Gemma-4's feed-forward block after its GEMMs, one token row per block (post_ffn_norms_f16_c{C}):
//   routed  = sum_j y[row_j]                     the token's k expert rows (already weighted), FP32, j in order
//   s       = rmsnorm(dense, w_mlp) + rmsnorm(routed, w_moe)               FP32, neither rounded
//   o       = rmsnorm(s, w_ffn)                  rounded to FP16 and stored over `dense` (the block's output)
//   out     = (residual + o) * layer_scalar      from the rounded o, FP32, one rounding
//   normed  = rmsnorm(out, next_norm)            of the rounded row, as combine_rmsnorm (where next_norm)
// Each thread keeps its C 16-byte chunks of the row in registers between the four norms. dense, residual
// and the rows are coherent loads (written by the kernels before); each thread reads its chunks of dense
// and residual before it writes them, so `dense` is overwritten in place and out may alias residual.
template <int C>
__device__ __forceinline__ void post_ffn_norms_impl(const half_t *__restrict__ y, const int *__restrict__ token_rows,
                                                    half_t *dense, const half_t *residual, half_t *out, int rows,
                                                    int k, int hidden, const half_t *__restrict__ w_mlp,
                                                    const half_t *__restrict__ w_moe, const half_t *__restrict__ w_ffn,
                                                    float eps, float layer_scalar, const half_t *__restrict__ next_norm,
                                                    half_t *__restrict__ normed) {
    __shared__ int row_of[32];
    __shared__ float weight_of[32];
    __shared__ float2 scratch_branches[32];
    __shared__ float scratch_sum[32], scratch_next[32];
    const int token = blockIdx.x, chunks = hidden >> 3;
    const size_t row0 = (size_t)token * hidden;
    u32x4 *dense_row = reinterpret_cast<u32x4 *>(dense + row0);
    u32x4 res_raw[C], dense_raw[C], wm_raw[C], we_raw[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {  // dense, residual and the branch norms first: independent of the row ids
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            dense_raw[c] = ld16(dense_row + chunk);
            res_raw[c] = ld16(residual + row0 + chunk * 8);
            wm_raw[c] = ld16_nc(w_mlp + chunk * 8);
            we_raw[c] = ld16_nc(w_moe + chunk * 8);
        }
    }
    load_combine_rows(token_rows, nullptr, 0, rows, k, token, row_of, weight_of);  // weights 1: rows summed
    float acc[C][8];  // routed, then s
    float sq_routed = 0.0f, sq_dense = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            sum_rows_chunk<false>(y, row_of, weight_of, k, hidden, chunk, acc[c]);
            float d[8];
            unpack8(dense_raw[c], d);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                sq_routed += acc[c][i] * acc[c][i];
                sq_dense += d[i] * d[i];
            }
        }
    }
    const float2 sq = block_sum2(sq_routed, sq_dense, scratch_branches);
    const float inv_routed = rsqrtf(sq.x / (float)hidden + eps), inv_dense = rsqrtf(sq.y / (float)hidden + eps);
    float sq_sum = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float d[8], wm[8], we[8];
            unpack8(dense_raw[c], d);
            unpack8(wm_raw[c], wm);
            unpack8(we_raw[c], we);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                acc[c][i] = d[i] * inv_dense * wm[i] + acc[c][i] * inv_routed * we[i];
                sq_sum += acc[c][i] * acc[c][i];
            }
        }
    }
    const float inv_sum = rsqrtf(block_sum(sq_sum, scratch_sum) / (float)hidden + eps);
    float sq_next = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float w[8], o[8], r[8];
            unpack8(ld16_nc(w_ffn + chunk * 8), w);
#pragma unroll
            for (int i = 0; i < 8; ++i) o[i] = acc[c][i] * inv_sum * w[i];
            const u32x4 o_raw = pack8(o);
            dense_row[chunk] = o_raw;
            unpack8(o_raw, o);
            unpack8(res_raw[c], r);
#pragma unroll
            for (int i = 0; i < 8; ++i) r[i] = (r[i] + o[i]) * layer_scalar;
            res_raw[c] = pack8(r);  // the new residual row, as stored
            reinterpret_cast<u32x4 *>(out + row0)[chunk] = res_raw[c];
            unpack8(res_raw[c], r);
#pragma unroll
            for (int i = 0; i < 8; ++i) sq_next += r[i] * r[i];
        }
    }
    if (!next_norm) return;  // the whole block
    const float inv_next = rsqrtf(block_sum(sq_next, scratch_next) / (float)hidden + eps);
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float x[8], w[8], o[8];
            unpack8(res_raw[c], x);
            unpack8(ld16_nc(next_norm + chunk * 8), w);
#pragma unroll
            for (int i = 0; i < 8; ++i) o[i] = x[i] * inv_next * w[i];
            reinterpret_cast<u32x4 *>(normed + row0)[chunk] = pack8(o);
        }
    }
}

// The permutation in two parallel launches, the engine's form: topk_count, then permute_counted.
// Both tile the tokens in blocks of COUNT_TOKENS (one warp a token in topk_count).
//
// topk_count: topk_token per warp, then, per block, the bit mask over its tokens of each expert
// (shared atomicOr; a token's experts are distinct, so (token, expert) is one bit): the count of
// expert e in block b goes to block_counts[b][e], and each item's rank among the block's items of
// its expert (earlier tokens first) goes to token_rows[t, j] for the second launch.
// permute_counted: block b reads column e of block_counts (thread e): the expert's total and its
// rows in blocks before b; one block scan of the totals gives expert_offsets (written by block 0),
// so row(t, j) = offsets[e] + rows of e in earlier blocks + rank. Every block does its own items, so
// no SM scatters more than COUNT_TOKENS * k rows; the counts read per block are B * E ints (B =
// blocks, 4 KB per 8 blocks at E = 128), spread over all its threads. Same rows as build_permutation:
// the stable (t, j) order.
constexpr int COUNT_TOKENS = 16;
constexpr int COUNT_THREADS = 32 * COUNT_TOKENS;  // also >= E (routing.py MAX_EXPERTS): thread e owns expert e

template <int NPL>
__device__ __forceinline__ void topk_count_impl(const half_t *__restrict__ logits, int tokens, int experts, int k,
                                                int renormalize, int *__restrict__ topk_ids,
                                                float *__restrict__ topk_weights, int *__restrict__ token_rows,
                                                int *__restrict__ block_counts, const float *expert_scale) {
    __shared__ unsigned bits[COUNT_THREADS];  // expert -> tokens of this block (bit = warp) that picked it
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (tid < experts) bits[tid] = 0u;
    const int token = blockIdx.x * COUNT_TOKENS + warp;
    int my_id = -1;
    if (token < tokens)
        my_id = topk_token<NPL>(logits, token, experts, k, renormalize, topk_ids, topk_weights, expert_scale);
    __syncthreads();  // bits cleared
    if (my_id >= 0) atomicOr(&bits[my_id], 1u << warp);
    __syncthreads();
    if (my_id >= 0) token_rows[(size_t)token * k + lane] = __popc(bits[my_id] & ((1u << warp) - 1u));
    if (tid < experts) block_counts[(size_t)blockIdx.x * experts + tid] = __popc(bits[tid]);
}

__device__ __forceinline__ void permute_counted_impl(const int *__restrict__ topk_ids,
                                                     const float *__restrict__ topk_weights,
                                                     const int *__restrict__ block_counts, int tokens, int k,
                                                     int experts, int *__restrict__ expert_offsets,
                                                     int *__restrict__ row_token, float *__restrict__ row_weight,
                                                     int *token_rows) {
    __shared__ int base[COUNT_THREADS], part_total[COUNT_THREADS], part_before[COUNT_THREADS];
    __shared__ int warp_sums[32];
    const int tid = threadIdx.x, block = blockIdx.x, blocks = gridDim.x;
    // this block's items first: their loads do not wait on the counts
    const int first_item = block * COUNT_TOKENS * k;
    const int my_items = min(COUNT_TOKENS, tokens - block * COUNT_TOKENS) * k;  // <= 16 * 16 < COUNT_THREADS
    const bool has_item = tid < my_items;
    int expert = 0, rank = 0;
    float weight = 0.0f;
    if (has_item) {
        expert = topk_ids[first_item + tid];
        rank = token_rows[first_item + tid];
        weight = topk_weights[first_item + tid];
    }
    // Expert e's count over all blocks (total) and over the blocks before this one (before). Column e is
    // split over `spread` = COUNT_THREADS / E threads (thread q E + e takes blocks q, q + spread, ...), each
    // issuing its loads 16 at a time: one thread a column walked Gemma-4's 128 blocks (T 2048) in 16
    // dependent L2 round trips. Integer sums: the order does not change the bits.
    // The loads are unconditional, the index clamped to this thread's last block (b0 + last * spread <
    // blocks), and the repeats are masked when added (m > last exactly when b >= blocks > block). With
    // `b < blocks ? load : 0`, ptxas interleaved loads and adds, 2 loads in flight; this form, adding from
    // m 15 down, issues all 16 before the first add (sm_90a; adding from m 0 up, 6 before).
    const int spread = COUNT_THREADS / experts, e = tid % experts, q = tid / experts;
    int total = 0, before = 0;
    if (q < spread) {
        for (int b0 = q; b0 < blocks; b0 += 16 * spread) {
            const int *col = block_counts + (size_t)b0 * experts + e;
            const int last = (blocks - 1 - b0) / spread;  // >= 0: b0 < blocks
            int c[16];
#pragma unroll
            for (int m = 0; m < 16; ++m) c[m] = __ldg(col + (size_t)min(m, last) * ((size_t)spread * experts));
#pragma unroll
            for (int m = 15; m >= 0; --m) {
                const int b = b0 + m * spread;
                total += b < blocks ? c[m] : 0;
                before += b < block ? c[m] : 0;
            }
        }
    }
    part_total[tid] = total;
    part_before[tid] = before;
    __syncthreads();
    total = before = 0;
    if (tid < experts)
        for (int j = tid; j < spread * experts; j += experts) {
            total += part_total[j];
            before += part_before[j];
        }
    int rows;
    const int offset = block_exclusive_scan(total, warp_sums, rows);
    if (tid < experts) {
        base[tid] = offset + before;
        if (block == 0) expert_offsets[tid] = offset;
    }
    if (block == 0 && tid == 0) expert_offsets[experts] = rows;
    __syncthreads();
    if (has_item) {
        const int row = base[expert] + rank;
        row_token[row] = (first_item + tid) / k;
        row_weight[row] = weight;
        token_rows[first_item + tid] = row;
    }
}

}  // namespace

extern "C" {

// topk_softmax_n{4,8,16}: NPL = experts per lane (E <= 32 * NPL). One warp per token, 4 warps a block.
// expert_scale fp32 [E] or null (topk_token).
#define TOPK_SOFTMAX(NPL)                                                                                     \
    __global__ void topk_softmax_n##NPL(const half_t *__restrict__ logits, int tokens, int experts, int k,    \
                                        int renormalize, int *__restrict__ topk_ids,                          \
                                        float *__restrict__ topk_weights, const float *expert_scale) {        \
        pdl_entry();                                                                                          \
        topk_softmax_impl<NPL>(logits, tokens, experts, k, renormalize, topk_ids, topk_weights, expert_scale); \
    }
TOPK_SOFTMAX(4)
TOPK_SOFTMAX(8)
TOPK_SOFTMAX(16)
#undef TOPK_SOFTMAX

// build_permutation_i32: grid ceil(E / EPB) blocks of PERM_THREADS threads; see build_permutation_impl.
__global__ void __launch_bounds__(PERM_THREADS)
    build_permutation_i32(const int *__restrict__ topk_ids, const float *__restrict__ topk_weights, int items, int k,
                          int experts, int *__restrict__ expert_offsets, int *__restrict__ row_token,
                          float *__restrict__ row_weight, int *__restrict__ token_rows) { pdl_entry();
    build_permutation_impl(topk_ids, topk_weights, items, k, experts, expert_offsets, row_token, row_weight,
                           token_rows);
}

// out[t] = residual[t] + sum_{j=0..k-1} w[t,j] * y[token_rows[t,j]], FP32, j summed in order; w = 1
// when has_weights == 0 (rows already scaled by the down GEMM). One block per token, each thread a
// 16-byte chunk of H; the k row ids go through shared memory once. The k row loads of a chunk are
// issued 8 at a time before any is added, to keep 8 loads in flight per thread. out may alias
// residual: each thread reads its residual chunk before writing the same chunk. With `shared` (rows
// shared_stride halves apart) the token's shared-expert row is added too, scaled by sigmoid of
// shared_gate[t * gate_stride] (null: by 1); null `shared`: none.
__global__ void __launch_bounds__(COMBINE_THREADS, 4) combine_f16(const half_t *__restrict__ y, const int *__restrict__ token_rows,
                            const half_t *residual, half_t *out, const float *__restrict__ topk_weights,
                            int has_weights, int rows, int k, int hidden, const half_t *__restrict__ shared,
                            int shared_stride, const half_t *__restrict__ shared_gate, int gate_stride) { pdl_entry();
    __shared__ int row_of[32];
    __shared__ float weight_of[32];
    const int token = blockIdx.x, chunks = hidden >> 3;
    const SharedRow sh = shared_row(shared, shared_stride, shared_gate, gate_stride, token);
    load_combine_rows(token_rows, topk_weights, has_weights, rows, k, token, row_of, weight_of);
    const u32x4 *res_row = reinterpret_cast<const u32x4 *>(residual + (size_t)token * hidden);
    u32x4 *out_row = reinterpret_cast<u32x4 *>(out + (size_t)token * hidden);
    for (int chunk = threadIdx.x; chunk < chunks; chunk += blockDim.x)
        out_row[chunk] = combine_chunk(y, row_of, weight_of, k, hidden, chunk, ld16(res_row + chunk), sh,
                                       shared_chunk(sh, chunk));
}

// combine_rmsnorm_f16_c{C}: combine_f16, then normed[t] = RMSNorm(out[t]) * norm_w over the rounded FP16
// row (what the next layer reads from the residual), so the next layer's attn_norm needs no launch
// of its own. Each thread keeps its C chunks of the row in registers for the norm; norm weights
// and the residual are loaded before the expert rows. The sum of squares is block_sum's fixed order.
// At most 64 registers a thread for C = 1: four 256-thread blocks a SM, so T = 512 tokens is one wave.
#define COMBINE_RMSNORM(C)                                                                                          \
    __global__ void __launch_bounds__(COMBINE_THREADS, 4 / C) combine_rmsnorm_f16_c##C(                                \
        const half_t *__restrict__ y, const int *__restrict__ token_rows, const half_t *residual, half_t *out,      \
        const float *__restrict__ topk_weights, int has_weights, int rows, int k, int hidden,                       \
        const half_t *__restrict__ shared, int shared_stride, const half_t *__restrict__ shared_gate,               \
        int gate_stride, const half_t *__restrict__ norm_w, half_t *__restrict__ normed, float eps) {               \
        pdl_entry();                                                                                                \
        combine_rmsnorm_impl<C>(y, token_rows, residual, out, topk_weights, has_weights, rows, k, hidden, shared,   \
                                shared_stride, shared_gate, gate_stride, norm_w, normed, eps);                      \
    }
COMBINE_RMSNORM(1)
COMBINE_RMSNORM(2)
COMBINE_RMSNORM(4)
#undef COMBINE_RMSNORM

// post_ffn_norms_f16_c{C}: see post_ffn_norms_impl. One block per token of at most COMBINE_THREADS threads,
// C 16-byte chunks each (routing.py: the fewest C of 1, 2, 4 that cover H / 8 with 256 threads, then threads
// = H / 8 / C rounded up to a warp). w_mlp, w_moe, w_ffn: the post-MLP, post-MoE and post-feed-forward norm
// weights fp16 [H]; next_norm fp16 [H] or null (then normed is not written).
#define POST_FFN_NORMS(C)                                                                                          \
    __global__ void __launch_bounds__(COMBINE_THREADS, 4 / C) post_ffn_norms_f16_c##C(                              \
        const half_t *__restrict__ y, const int *__restrict__ token_rows, half_t *dense, const half_t *residual,    \
        half_t *out, int rows, int k, int hidden, const half_t *__restrict__ w_mlp,                                 \
        const half_t *__restrict__ w_moe, const half_t *__restrict__ w_ffn, float eps, float layer_scalar,          \
        const half_t *__restrict__ next_norm, half_t *__restrict__ normed) {                                        \
        pdl_entry();                                                                                                \
        post_ffn_norms_impl<C>(y, token_rows, dense, residual, out, rows, k, hidden, w_mlp, w_moe, w_ffn, eps,      \
                               layer_scalar, next_norm, normed);                                                    \
    }
POST_FFN_NORMS(1)
POST_FFN_NORMS(2)
POST_FFN_NORMS(4)
#undef POST_FFN_NORMS

// topk_count_n{4,8,16}: grid ceil(T / COUNT_TOKENS) blocks of COUNT_THREADS; see topk_count_impl.
// expert_scale fp32 [E] or null (topk_token).
#define TOPK_COUNT(NPL)                                                                                            \
    __global__ void __launch_bounds__(COUNT_THREADS) topk_count_n##NPL(                                             \
        const half_t *__restrict__ logits, int tokens, int experts, int k, int renormalize,                        \
        int *__restrict__ topk_ids, float *__restrict__ topk_weights, int *__restrict__ token_rows,                \
        int *__restrict__ block_counts, const float *expert_scale) {                                               \
        pdl_entry();                                                                                               \
        topk_count_impl<NPL>(logits, tokens, experts, k, renormalize, topk_ids, topk_weights, token_rows,          \
                             block_counts, expert_scale);                                                          \
    }
TOPK_COUNT(4)
TOPK_COUNT(8)
TOPK_COUNT(16)
#undef TOPK_COUNT

// permute_counted_i32: the same grid as topk_count, which must have run on these arrays; see
// permute_counted_impl. token_rows: ranks in, rows out.
__global__ void __launch_bounds__(COUNT_THREADS)
    permute_counted_i32(const int *__restrict__ topk_ids, const float *__restrict__ topk_weights,
                        const int *__restrict__ block_counts, int tokens, int k, int experts,
                        int *__restrict__ expert_offsets, int *__restrict__ row_token, float *__restrict__ row_weight,
                        int *token_rows) { pdl_entry();
    permute_counted_impl(topk_ids, topk_weights, block_counts, tokens, k, experts, expert_offsets, row_token,
                         row_weight, token_rows);
}


}  // extern "C"
