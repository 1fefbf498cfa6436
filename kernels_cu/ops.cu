// Small memory-bound ops of the prefill: embedding gather, RMSNorm, fused residual add + RMSNorm,
// elementwise add, and the attention prologue (per-head q/k RMSNorm, NeoX RoPE over all or the first
// R dims, KV append) in two forms: narrow (any even D <= 64 or multiple of 64, R = D) and 16-byte
// (D = 16..256, power of two). For the Qwen3.5/3.6 hybrid also: the linear layers' causal conv1d with
// its q/k/v, decay and write-strength prep, the conv-state carry and the gated RMSNorm; the full
// layers' sigmoid output gate; and the gated activation of a dense (shared-expert) MLP. For Gemma-4:
// the prologue's weightless V norm, K = V and "proportional" RoPE (qkv_post arguments), the scaled
// embedding, the post-attention norm fused with its residual add and the norms that read the sum
// (post_attn_norms), and the final logit soft-cap.
//
// Shared rules: FP16 storage (half_t bit patterns), FP32 math, one rounding per output element.
// Every kernel is capture-safe (the grid depends only on static shapes; the chunk position is read
// from device memory) and deterministic: each reduction runs in one fixed order inside one block or
// warp, with no atomics, so eager runs and graph replays give the same bits.
//
// Row kernels (embed, rmsnorm, add_rmsnorm, post_attn_norms): one block per token row, each thread owns C (a template
// parameter: 1, 2, 4 or 8) 16-byte chunks (8 halves) of the row, strided by blockDim.x so a warp's
// loads are one contiguous 512-byte span. The row and its norm weights stay in registers, packed as
// FP16 (4 registers a chunk), between the sum of squares and the scaling, so x is read once and every
// load is issued before the reduction; C is exact so no registers go to chunks past the row (at
// occupancy's cost). The wrapper picks blockDim.x = min(128, H/8 rounded up to a warp) -- at H=2048
// two loads of each input in flight per thread -- and C = the chunks per thread rounded up to a power
// of two; it checks H % 8 == 0, H <= 8 * 8 * 128 and 16-byte aligned rows.
#include "common.cuh"
#include "vec16.cuh"

namespace {

constexpr int QKV_HEADS_PER_WARP = 4;
constexpr int ROW_THREADS = 256;  // the row kernels' largest block (ops.py picks at most 128 by default)

// This thread's chunks of the norm weight, loaded with the row so that the scaling after the block
// sum waits for no second memory round trip.
template <int C>
__device__ __forceinline__ void load_weight_chunks(const half_t *__restrict__ weight, u32x4 w_raw[C], int chunks) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) w_raw[c] = ld16_nc(weight + chunk * 8);
    }
}

// out[row] = x[row] * rsqrt(mean(x[row]^2) + eps) * weight, with the row and its weights in registers.
template <int C>
__device__ __forceinline__ void norm_store(const u32x4 raw[C], const u32x4 w_raw[C], half_t *__restrict__ out_row,
                                           int chunks, float eps) {
    __shared__ float scratch[32];
    const float inv = rsqrtf(block_sum(chunk_sum_squares<C>(raw, chunks), scratch) / (float)(chunks * 8) + eps);
    scaled_store<C>(raw, w_raw, inv, reinterpret_cast<u32x4 *>(out_row), chunks);
}

// Per-head attention prologue, templated on VP = RoPE pairs per lane (D = 2 * 32 * VP, or D <= 64
// with VP = 1 and D/2 active lanes). Lane l owns elements [l*VP, l*VP+VP) of the first half of a head
// and the same span of the second half: rotate-half pairs element i with i + D/2, so the rotation
// never leaves the lane.
template <int VP>
struct Halves {
    __device__ static __forceinline__ void load(const half_t *p, float v[VP]) {
        if constexpr (VP == 1) {
            v[0] = h2f(p[0]);
        } else if constexpr (VP == 2) {
            unpack_half2(*reinterpret_cast<const unsigned *>(p), v[0], v[1]);
        } else if constexpr (VP == 4) {
            const u32x2 u = *reinterpret_cast<const u32x2 *>(p);
            unpack_half2(u.x, v[0], v[1]);
            unpack_half2(u.y, v[2], v[3]);
        } else {
            unpack8(ld16(p), v);
        }
    }
    __device__ static __forceinline__ void store(half_t *p, const float v[VP]) {
        if constexpr (VP == 1) {
            p[0] = f2h(v[0]);
        } else if constexpr (VP == 2) {
            *reinterpret_cast<unsigned *>(p) = pack_half2(v[0], v[1]);
        } else if constexpr (VP == 4) {
            u32x2 u;
            u.x = pack_half2(v[0], v[1]);
            u.y = pack_half2(v[2], v[3]);
            *reinterpret_cast<u32x2 *>(p) = u;
        } else {
            *reinterpret_cast<u32x4 *>(p) = pack8(v);
        }
    }
};

// What qkv_post writes to v_cache (kernel argument v_mode): the v head as is (Qwen3); the v head under a
// weightless RMSNorm (Gemma-4 sliding layers); or, with no v heads in qkv, the weightless RMSNorm of
// the raw k head -- before k_norm and RoPE -- (Gemma-4 full layers, attention_k_eq_v). The norm of a k
// head and its V share one sum of squares.
constexpr int V_COPY = 0, V_NORM = 1, V_FROM_K = 2;

// One block per token; warp w handles heads [w*HPW, w*HPW + HPW) of [q heads | k heads | v heads]
// (no v heads with V_FROM_K) and issues all their loads before any math, so each block waits for
// memory once. cos/sin depend only on (position, pair index): inv_freq is tabled per block in double,
// each thread forms its VP angles in double and reduces them mod 2*pi there (angles reach ~1e5 rad at
// long prompts, where an FP32 angle would be off by ~1e-2), then takes sincosf of the reduced FP32
// angle. Doing the whole sincos in FP64 made FP64 throughput the bottleneck (all blocks are resident
// at once). Pairs from rope_pairs on (Gemma-4's "proportional" RoPE: frequency 0) keep cos 1, sin 0
// and skip the sincos: x * 1 - y * 0 is x exactly, so they pass through unchanged.
template <int VP>
__device__ __forceinline__ void qkv_post_impl(const half_t *__restrict__ qkv, const half_t *__restrict__ q_norm_w,
                                              const half_t *__restrict__ k_norm_w, const int *__restrict__ pos,
                                              half_t *__restrict__ q_out, half_t *__restrict__ k_cache,
                                              half_t *__restrict__ v_cache, int row_stride, int head_dim, int q_heads,
                                              int kv_heads, int max_len, float eps, double log2_theta, int qk_norm,
                                              int rope_pairs, int v_mode) {
    constexpr int HPW = QKV_HEADS_PER_WARP;
    __shared__ double inv_freq[256];  // D/2 <= 256
    const int token = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int half_dim = head_dim >> 1;
    const bool active = lane * VP < half_dim;
    const int first = lane * VP;  // element index inside the first half
    const int heads = q_heads + (v_mode == V_FROM_K ? 1 : 2) * kv_heads;
    const half_t *row = qkv + (size_t)token * row_stride;

    float a[HPW][VP], b[HPW][VP];  // first-half and second-half elements of this lane, per head
#pragma unroll
    for (int h = 0; h < HPW; ++h) {
        const int head = warp * HPW + h;
        if (active && head < heads) {
            Halves<VP>::load(row + head * head_dim + first, a[h]);
            Halves<VP>::load(row + head * head_dim + half_dim + first, b[h]);
        } else {
#pragma unroll
            for (int i = 0; i < VP; ++i) a[h][i] = b[h][i] = 0.0f;
        }
    }
    // D = 512: this lane's 16-byte chunks of both norm weights, loaded with the row (as the 16-byte form
    // does) rather than after each head's reduction: one memory wait a head fewer
    u32x4 w_pre[4] = {};
    if constexpr (VP == 8) {
        if (qk_norm) {
            w_pre[0] = ld16(q_norm_w + first);
            w_pre[1] = ld16(q_norm_w + half_dim + first);
            w_pre[2] = ld16(k_norm_w + first);
            w_pre[3] = ld16(k_norm_w + half_dim + first);
        }
    }
    for (int i = threadIdx.x; i < min(half_dim, rope_pairs); i += blockDim.x)
        inv_freq[i] = exp2(-(double)(2 * i) / (double)head_dim * log2_theta);
    const int position = ld_i32(pos) + token;
    const bool in_cache = position >= 0 && position < max_len;
    __syncthreads();
    float cos_v[VP], sin_v[VP];
#pragma unroll
    for (int i = 0; i < VP; ++i) {
        cos_v[i] = 1.0f;
        sin_v[i] = 0.0f;
        if (active && first + i < rope_pairs) {
            const double angle = (double)position * inv_freq[first + i];
            const double turns = rint(angle * 0.15915494309189535);  // 1 / (2 pi)
            const double reduced = fma(-turns, 2.4492935982947064e-16, fma(-turns, 6.283185307179586, angle));
            sincosf((float)reduced, &sin_v[i], &cos_v[i]);
        }
    }

#pragma unroll
    for (int h = 0; h < HPW; ++h) {
        const int head = warp * HPW + h;  // warp-uniform
        if (head >= heads) break;
        const bool is_q = head < q_heads, is_k = !is_q && head < q_heads + kv_heads;
        if (!is_q && !is_k && v_mode == V_COPY) {
            if (active && in_cache) {  // v: straight copy into the cache
                half_t *v_dst = v_cache + ((size_t)position * kv_heads + (head - q_heads - kv_heads)) * head_dim;
                Halves<VP>::store(v_dst + first, a[h]);
                Halves<VP>::store(v_dst + half_dim + first, b[h]);
            }
            continue;
        }
        float inv = 1.0f;  // rsqrt(mean(x^2) + eps) of the raw head
        if (qk_norm || v_mode != V_COPY) {
            float sq = 0.0f;
#pragma unroll
            for (int i = 0; i < VP; ++i) sq += a[h][i] * a[h][i] + b[h][i] * b[h][i];
            inv = rsqrtf(warp_sum(sq) / (float)head_dim + eps);
        }
        if (!is_q && active && in_cache && v_mode == (is_k ? V_FROM_K : V_NORM)) {  // V: the weightless norm
            float va[VP], vb[VP];
#pragma unroll
            for (int i = 0; i < VP; ++i) {
                va[i] = a[h][i] * inv;
                vb[i] = b[h][i] * inv;
            }
            half_t *v_dst = v_cache + ((size_t)position * kv_heads + (head - q_heads - (is_k ? 0 : kv_heads))) * head_dim;
            Halves<VP>::store(v_dst + first, va);
            Halves<VP>::store(v_dst + half_dim + first, vb);
        }
        if (!is_q && !is_k) continue;
        half_t *dst = is_q ? q_out + ((size_t)token * q_heads + head) * head_dim
                           : k_cache + ((size_t)position * kv_heads + (head - q_heads)) * head_dim;
        if (qk_norm) {
            const half_t *w = is_q ? q_norm_w : k_norm_w;
            if (active) {
                float wa[VP], wb[VP];
                if constexpr (VP == 8) {
                    unpack8(w_pre[is_q ? 0 : 2], wa);
                    unpack8(w_pre[is_q ? 1 : 3], wb);
                } else {
                    Halves<VP>::load(w + first, wa);
                    Halves<VP>::load(w + half_dim + first, wb);
                }
#pragma unroll
                for (int i = 0; i < VP; ++i) {
                    a[h][i] = a[h][i] * inv * wa[i];
                    b[h][i] = b[h][i] * inv * wb[i];
                }
            }
        }
        if (active && (is_q || in_cache)) {
            float ra[VP], rb[VP];
#pragma unroll
            for (int i = 0; i < VP; ++i) {
                ra[i] = a[h][i] * cos_v[i] - b[h][i] * sin_v[i];
                rb[i] = b[h][i] * cos_v[i] + a[h][i] * sin_v[i];
            }
            Halves<VP>::store(dst + first, ra);
            Halves<VP>::store(dst + half_dim + first, rb);
        }
    }
}

// The 16-byte form of the prologue, for D = 8 * L with L in {2, 4, 8, 16, 32} (D = 16 .. 256):
// lane l of a warp owns chunk (l % L) -- 8 consecutive elements, one 16-byte load -- of head
// l / L of each of S steps, so a warp covers G = 32 / L heads a step and HPW = G * S heads. The
// rotate-half partner of chunk c is chunk c ^ (L / 2), in lane l ^ (L / 2) of the same head: one
// 4-word shuffle brings its raw FP16 values over, and each lane normalises both halves itself (the
// q/k sum of squares is a butterfly over the L lanes of the head, so every lane of it has the same
// bits). (cos, sin) per pair is computed once per block, by the first D/2 threads, into shared
// memory with the narrow kernel's exact math (FP64 angle reduced mod 2*pi, then sincosf), so both
// forms rotate by the same values. Why: the narrow form moves 2-8 bytes per lane per load, waits on
// the norm weights after each head's reduction and recomputes sincos in every warp.
//
// Partial rotary (Qwen3.6: R = 64 of D = 256): only the first R dims rotate, as rotate-half over R --
// pair (i, i + R/2) at inv_freq theta^(-2i/R) -- so chunk c < R/8 pairs with chunk c ^ (R/16) (R/8 a
// power of two >= 2) and chunks from R/8 on pass through after the norm. PARTIAL = false is R = D with
// R a compile-time constant: the runtime R cost 5-7 registers, one block a SM fewer at qwen3-coder's
// 160-thread blocks.
//
// Gemma-4: "proportional" RoPE (R = D, but only pairs i < rope_pairs rotate, still at theta^(-2i/D))
// tables cos 1, sin 0 for the other pairs, which then pass through exactly (x * 1 - y * 0 = x), so it
// costs the per-head math nothing; v_mode (V_NORM, V_FROM_K) takes the sum of squares the q/k norm
// already forms (see qkv_post_impl).
template <int L, int S, bool PARTIAL>
__device__ __forceinline__ void qkv_post_wide_impl(const half_t *__restrict__ qkv, const half_t *__restrict__ q_norm_w,
                                                   const half_t *__restrict__ k_norm_w, const int *__restrict__ pos,
                                                   half_t *__restrict__ q_out, half_t *__restrict__ k_cache,
                                                   half_t *__restrict__ v_cache, int row_stride, int rot_chunks_arg,
                                                   int q_heads, int kv_heads, int max_len, float eps, double log2_theta,
                                                   int qk_norm, int rope_pairs, int v_mode) {
    constexpr int G = 32 / L, HPW = G * S, D = 8 * L, HALF = D / 2;
    const int rot_chunks = PARTIAL ? rot_chunks_arg : L;  // R / 8
    __shared__ float2 rope_cs[HALF];
    const int token = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int sub = lane % L, group = lane / L;
    const int rot_half = rot_chunks >> 1;  // partner distance in chunks: R / 16
    const bool rotated = !PARTIAL || sub < rot_chunks;
    const bool second = (sub & rot_half) != 0;
    const int pair0 = 8 * (sub & (rot_half - 1));  // first RoPE pair of this lane's chunk (read, unused, past R)
    const int heads = q_heads + (v_mode == V_FROM_K ? 1 : 2) * kv_heads;
    const half_t *row = qkv + (size_t)token * row_stride;

    u32x4 raw[S];
#pragma unroll
    for (int s = 0; s < S; ++s) {
        const int head = warp * HPW + s * G + group;
        raw[s] = head < heads ? ld16(row + head * D + sub * 8) : u32x4{0u, 0u, 0u, 0u};
    }
    // coherent loads only: ptxas moved this kernel's ld.global.nc above griddepcontrol.wait (see ld16)
    u32x4 wq_own{}, wq_par{}, wk_own{}, wk_par{};
    if (qk_norm) {
        wq_own = ld16(q_norm_w + sub * 8);
        wq_par = ld16(q_norm_w + (sub ^ rot_half) * 8);
        wk_own = ld16(k_norm_w + sub * 8);
        wk_par = ld16(k_norm_w + (sub ^ rot_half) * 8);
    }
    const int position = ld_i32(pos) + token;
    const bool in_cache = position >= 0 && position < max_len;
    for (int i = threadIdx.x; i < rot_chunks * 4; i += blockDim.x) {  // the R/2 pairs
        if (i >= rope_pairs) {  // frequency 0
            rope_cs[i] = make_float2(1.0f, 0.0f);
            continue;
        }
        const double inv_freq = exp2(-(double)(2 * i) / (double)(rot_chunks * 8) * log2_theta);
        const double angle = (double)position * inv_freq;
        const double turns = rint(angle * 0.15915494309189535);  // 1 / (2 pi)
        const double reduced = fma(-turns, 2.4492935982947064e-16, fma(-turns, 6.283185307179586, angle));
        float sin_v, cos_v;
        sincosf((float)reduced, &sin_v, &cos_v);
        rope_cs[i] = make_float2(cos_v, sin_v);
    }
    __syncthreads();
    float cos_v[8], sin_v[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const float2 cs = rope_cs[pair0 + i];
        cos_v[i] = cs.x;
        sin_v[i] = cs.y;
    }

#pragma unroll
    for (int s = 0; s < S; ++s) {
        const int head = warp * HPW + s * G + group;  // uniform over the L lanes of a head only
        u32x4 par;  // every lane shuffles, whatever its head
        par.x = __shfl_xor_sync(0xffffffffu, raw[s].x, rot_half);
        par.y = __shfl_xor_sync(0xffffffffu, raw[s].y, rot_half);
        par.z = __shfl_xor_sync(0xffffffffu, raw[s].z, rot_half);
        par.w = __shfl_xor_sync(0xffffffffu, raw[s].w, rot_half);
        float own[8], other[8];
        unpack8(raw[s], own);
        unpack8(par, other);
        const bool is_q = head < q_heads, is_k = !is_q && head < q_heads + kv_heads;
        float inv = 1.0f;  // rsqrt(mean(x^2) + eps) of the raw head
        if (qk_norm || v_mode != V_COPY) {  // every lane shuffles, whatever its head
            float sq = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; ++i) sq += own[i] * own[i];
#pragma unroll
            for (int offset = L / 2; offset > 0; offset >>= 1) sq += __shfl_xor_sync(0xffffffffu, sq, offset);
            inv = rsqrtf(sq / (float)D + eps);
        }
        if (head >= heads) continue;
        if ((!is_q && !is_k) || (is_k && v_mode == V_FROM_K)) {  // V: the v head, or the raw k head
            if (in_cache) {
                u32x4 v = raw[s];  // V_COPY: straight copy
                if (v_mode != V_COPY) {
                    float y[8];
#pragma unroll
                    for (int i = 0; i < 8; ++i) y[i] = own[i] * inv;
                    v = pack8(y);
                }
                const int kv = head - q_heads - (is_k ? 0 : kv_heads);
                *reinterpret_cast<u32x4 *>(v_cache + ((size_t)position * kv_heads + kv) * D + sub * 8) = v;
            }
            if (!is_k) continue;
        }
        if (qk_norm) {
            float w_own[8], w_par[8];
            unpack8(is_q ? wq_own : wk_own, w_own);
            unpack8(is_q ? wq_par : wk_par, w_par);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                own[i] = own[i] * inv * w_own[i];
                other[i] = other[i] * inv * w_par[i];
            }
        }
        float out[8];  // first half: a cos - b sin; second half: b cos + a sin (own = b, other = a)
#pragma unroll
        for (int i = 0; i < 8; ++i)
            out[i] = !rotated ? own[i]
                     : second ? own[i] * cos_v[i] + other[i] * sin_v[i]
                              : own[i] * cos_v[i] - other[i] * sin_v[i];
        if (is_q) {
            *reinterpret_cast<u32x4 *>(q_out + ((size_t)token * q_heads + head) * D + sub * 8) = pack8(out);
        } else if (in_cache) {
            *reinterpret_cast<u32x4 *>(k_cache + ((size_t)position * kv_heads + (head - q_heads)) * D + sub * 8) =
                pack8(out);
        }
    }
}

// out = x * rsqrt(mean(x^2) + eps) * weight over each row of H.
template <int C>
__device__ __forceinline__ void rmsnorm_impl(const half_t *__restrict__ x, const half_t *__restrict__ weight,
                                             half_t *__restrict__ out, int hidden, float eps) {
    const int chunks = hidden >> 3;
    const u32x4 *x_row = reinterpret_cast<const u32x4 *>(x + (size_t)blockIdx.x * hidden);
    u32x4 raw[C], w_raw[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) raw[c] = ld16_nc(x_row + chunk);
    }
    load_weight_chunks<C>(weight, w_raw, chunks);
    norm_store<C>(raw, w_raw, out + (size_t)blockIdx.x * hidden, chunks, eps);
}

// One group of the kperm order (kperm_units) in a 128-wide block of 16 units of src -> dst. Plain
// loads: src may have been written by this kernel (add_rmsnorm's out).
__device__ __forceinline__ void kperm_group(const u32x4 *src, u32x4 *dst, int i) {
    u32x4 v[4], out[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = ld16(src + i + 4 * j);
    kperm_units(v, out);
#pragma unroll
    for (int q = 0; q < 4; ++q) dst[4 * i + q] = out[q];
}

// The block's row `row` (just written by its threads) again in kperm order at kp_row: the input of the
// wgp / wgb expert GEMMs, without a launch of its own. chunks % 16 == 0 (hidden % 128 == 0).
__device__ __forceinline__ void store_kperm_row(const half_t *row, half_t *kp_row, int chunks) {
    __syncthreads();  // the block's row is written (and visible to the block)
    const u32x4 *o_row = reinterpret_cast<const u32x4 *>(row);
    u32x4 *k_row = reinterpret_cast<u32x4 *>(kp_row);
    for (int g = threadIdx.x; g < chunks / 4; g += blockDim.x) kperm_group(o_row + (g >> 2) * 16, k_row + (g >> 2) * 16, g & 3);
}

// residual += x (rounded to FP16, as the residual stream is stored), then out = RMSNorm(residual).
// The norm reads the rounded sum, so it matches what the next op sees in `residual`. With out_kp, the
// block then also writes its out row in kperm order there (hidden % 128 == 0): the input of the wgp
// expert GEMMs, without a launch of its own.
template <int C>
__device__ __forceinline__ void add_rmsnorm_impl(const half_t *__restrict__ x, half_t *__restrict__ residual,
                                                 const half_t *__restrict__ weight, half_t *__restrict__ out,
                                                 half_t *__restrict__ out_kp, int hidden, float eps) {
    const int chunks = hidden >> 3;
    const u32x4 *x_row = reinterpret_cast<const u32x4 *>(x + (size_t)blockIdx.x * hidden);
    u32x4 *r_row = reinterpret_cast<u32x4 *>(residual + (size_t)blockIdx.x * hidden);
    u32x4 raw[C], r_raw[C], w_raw[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {  // every load of the row issued before the first add
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            raw[c] = ld16_nc(x_row + chunk);
            r_raw[c] = ld16(r_row + chunk);
        }
    }
    load_weight_chunks<C>(weight, w_raw, chunks);
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float a[8], b[8];
            unpack8(raw[c], a);
            unpack8(r_raw[c], b);
#pragma unroll
            for (int i = 0; i < 8; ++i) b[i] = a[i] + b[i];
            raw[c] = pack8(b);
            r_row[chunk] = raw[c];
        }
    }
    norm_store<C>(raw, w_raw, out + (size_t)blockIdx.x * hidden, chunks, eps);
    if (out_kp) store_kperm_row(out + (size_t)blockIdx.x * hidden, out_kp + (size_t)blockIdx.x * hidden, chunks);
}

// Gemma-4's post-attention sandwich, one launch: a = RMSNorm(x) * w0 (the attention block's output,
// stored over x, which the engine's trace reads), residual <- h = residual + a (a enters the sum in
// FP32, so h is rounded once, as the residual stream is stored), then outs[j] = RMSNorm(h) * w[j + 1]
// for the n_out (1..3) norms that read h: pre-MLP, pre-MoE, the router's prenorm (its scale folded
// into the weight). h's rms is taken once, from the rounded h as add_rmsnorm's is, so each out is what
// a separate rmsnorm of the stored residual gives. Two block sums, each with its own scratch
// (block_sum does not reset it). The outs' weights are loaded after the first sum, once x, residual
// and w0 are dead: before it, they would raise the registers held across it from 12 C to 24 C; here
// their L2 round trip overlaps the stores and the second sum. x is read and written by the same
// thread (in place); no other argument may alias it. With out_kp, the block then also writes out2 (the
// pre-MoE norm) in kperm order there, as add_rmsnorm does for the wgp / wgb expert GEMMs.
template <int C>
__device__ __forceinline__ void post_attn_norms_impl(half_t *x, half_t *__restrict__ residual,
                                                     const half_t *__restrict__ w0, const half_t *__restrict__ w1,
                                                     const half_t *__restrict__ w2, const half_t *__restrict__ w3,
                                                     half_t *__restrict__ out1, half_t *__restrict__ out2,
                                                     half_t *__restrict__ out3, half_t *__restrict__ out_kp, int n_out,
                                                     int hidden, float eps) {
    __shared__ float scratch_a[32], scratch_h[32];
    const int chunks = hidden >> 3;
    const size_t row0 = (size_t)blockIdx.x * hidden;
    u32x4 *x_row = reinterpret_cast<u32x4 *>(x + row0);
    u32x4 *r_row = reinterpret_cast<u32x4 *>(residual + row0);
    u32x4 raw[C], r_raw[C], w_raw[C];
#pragma unroll
    for (int c = 0; c < C; ++c) {  // every load of the row issued before the first sum
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            raw[c] = ld16(x_row + chunk);
            r_raw[c] = ld16(r_row + chunk);
        }
    }
    load_weight_chunks<C>(w0, w_raw, chunks);
    const float inv_a = rsqrtf(block_sum(chunk_sum_squares<C>(raw, chunks), scratch_a) / (float)hidden + eps);
    float sq_h = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) {  // raw[c] <- h, the rounded sum
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float v[8], w[8], r[8];
            unpack8(raw[c], v);
            unpack8(w_raw[c], w);
            unpack8(r_raw[c], r);
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                v[i] = v[i] * inv_a * w[i];
                r[i] += v[i];
            }
            x_row[chunk] = pack8(v);
            raw[c] = pack8(r);
            r_row[chunk] = raw[c];
            unpack8(raw[c], r);
#pragma unroll
            for (int i = 0; i < 8; ++i) sq_h += r[i] * r[i];
        }
    }
    u32x4 wj_raw[3][C];
#pragma unroll
    for (int j = 0; j < 3; ++j)
        if (j < n_out) load_weight_chunks<C>(j == 0 ? w1 : (j == 1 ? w2 : w3), wj_raw[j], chunks);
    const float inv_h = rsqrtf(block_sum(sq_h, scratch_h) / (float)hidden + eps);
#pragma unroll
    for (int j = 0; j < 3; ++j) {
        if (j >= n_out) break;
        scaled_store<C>(raw, wj_raw[j], inv_h, reinterpret_cast<u32x4 *>((j == 0 ? out1 : (j == 1 ? out2 : out3)) + row0),
                        chunks);
    }
    if (out_kp) store_kperm_row(out2 + row0, out_kp + row0, chunks);
}

// ---- Qwen3.5/3.6 hybrid layers -------------------------------------------------------------------

// log(1 + e^x) without overflow or cancellation at either end (FP32 outputs: the accurate expf)
__device__ __forceinline__ float softplus_f(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }

// Sum over aligned groups of `lanes` lanes (a power of two <= 32; 1: no shuffle). Every lane of the
// warp must call it; each lane of a group gets the same bits.
__device__ __forceinline__ float group_sum(float v, int lanes) {
    for (int offset = lanes >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

constexpr int CONV_TAPS = 4;    // the conv width the kernels are built for (Qwen3.5/3.6: linear_conv_kernel 4)
constexpr int CONV_TOKENS = 8;  // tokens per thread of conv_prep

// conv_state <- the last K - 1 rows of concat(conv_state, mixed), for one 16-byte column chunk. All K - 1
// source rows are read before any is written, so the in-place shift of a chunk shorter than K - 1 tokens
// (it reads state rows it also writes) is right.
template <int K>
__device__ __forceinline__ void conv_state_carry(const half_t *__restrict__ mixed, int mixed_stride, half_t *conv_state,
                                                 int tokens, int channels, int chunk) {
    u32x4 rows[K - 1];
#pragma unroll
    for (int r = 0; r < K - 1; ++r) {
        const int p = tokens + r;  // row of concat(conv_state, mixed)
        rows[r] = p < K - 1 ? ld16(conv_state + (size_t)p * channels + chunk * 8)
                            : ld16_nc(mixed + (size_t)(p - (K - 1)) * mixed_stride + chunk * 8);
    }
#pragma unroll
    for (int r = 0; r < K - 1; ++r) *reinterpret_cast<u32x4 *>(conv_state + (size_t)r * channels + chunk * 8) = rows[r];
}

// The linear layer's prologue, one launch: causal depthwise conv (K taps, no bias) over the raw
// in_proj_qkv output with the K - 1 rows of the previous chunk in front, SiLU, then per head
// q = l2norm / sqrt(dk), k = l2norm, v as is; and g = -exp(A_log) softplus(a + dt_bias), beta =
// sigmoid(b). Thread = one 16-byte chunk (8 channels) of TT consecutive tokens: it loads the TT + K - 1
// rows it needs, all before any math, and its 8 x K taps, so each input is read once from DRAM
// (the K - 1 halo rows again from L2 by the next token tile). A warp spans 256 channels, so a head of
// dk = 8 * 2^n <= 256 channels is an aligned group of dk / 8 lanes and its l2 norm is one group_sum;
// the q | k | v boundaries are multiples of dk, so each group is all q, all k or all v. Grid:
// (chunks / blockDim, ceil(T / TT)); the g/beta pairs of a token tile are spread over its blocks.
// The thread of token tile 0 and a chunk also carries the state: having read the chunk's K - 1 state rows
// (before any write), it ends by writing there the last K - 1 rows of concat(conv_state, mixed). It is the
// only thread that reads or writes those 16 bytes of the state (later tiles start past the state's rows), so
// no other launch and no double buffer is needed; the state is read coherently, as the kernel writes it.
template <int K, int TT>
__device__ __forceinline__ void conv_prep_impl(const half_t *__restrict__ mixed, int mixed_stride,
                                               const half_t *__restrict__ conv_w, half_t *conv_state,
                                               const half_t *__restrict__ a, int a_stride, const half_t *__restrict__ b,
                                               int b_stride, const float *__restrict__ a_log,
                                               const float *__restrict__ dt_bias, half_t *__restrict__ q,
                                               half_t *__restrict__ k, half_t *__restrict__ v, float *__restrict__ g,
                                               float *__restrict__ beta, int tokens, int key_heads, int value_heads,
                                               int key_dim, int value_dim, float eps, float q_scale) {
    static_assert(TT >= K - 1, "only token tile 0 may touch conv_state: tile y reads rows from y * TT of "
                               "concat(conv_state, mixed), whose first K - 1 rows are the state");
    const int key_width = key_heads * key_dim, value_width = value_heads * value_dim;
    const int channels = 2 * key_width + value_width;
    const int chunk = blockIdx.x * blockDim.x + threadIdx.x;
    const int t0 = blockIdx.y * TT;
    const bool live = chunk < (channels >> 3);

    u32x4 raw[TT + K - 1];  // rows t0 .. t0 + TT + K - 2 of concat(conv_state, mixed)
#pragma unroll
    for (int i = 0; i < TT + K - 1; ++i) {
        const int p = t0 + i;
        raw[i] = u32x4{0u, 0u, 0u, 0u};
        if (live && p < tokens + K - 1)
            raw[i] = p < K - 1 ? ld16(conv_state + (size_t)p * channels + chunk * 8)
                               : ld16_nc(mixed + (size_t)(p - (K - 1)) * mixed_stride + chunk * 8);
    }
    u32x4 w_raw[K];  // channel e, tap j at half e * K + j
#pragma unroll
    for (int j = 0; j < K; ++j) w_raw[j] = live ? ld16_nc(conv_w + (size_t)chunk * 8 * K + j * 8) : u32x4{0u, 0u, 0u, 0u};

    const int tile_tokens = min(TT, tokens - t0);
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < tile_tokens * value_heads; idx += gridDim.x * blockDim.x) {
        const int t = t0 + idx / value_heads, h = idx % value_heads;
        const float av = h2f(a[(size_t)t * a_stride + h]) + dt_bias[h];
        g[(size_t)t * value_heads + h] = -expf(a_log[h]) * softplus_f(av);
        beta[(size_t)t * value_heads + h] = 1.0f / (1.0f + expf(-h2f(b[(size_t)t * b_stride + h])));
    }

    float w[8 * K];
#pragma unroll
    for (int j = 0; j < K; ++j) unpack8(w_raw[j], w + 8 * j);
    const int c0 = chunk * 8;
    const int region = c0 < key_width ? 0 : (c0 < 2 * key_width ? 1 : 2);  // q, k, v
    half_t *dst = region == 0 ? q + c0 : (region == 1 ? k + (c0 - key_width) : v + (c0 - 2 * key_width));
    const int dst_stride = region == 2 ? value_width : key_width;
    float win[K][8];  // rows i .. i + K - 1 in FP32: each row converted once
#pragma unroll
    for (int j = 1; j < K; ++j) unpack8(raw[j - 1], win[j]);
#pragma unroll
    for (int i = 0; i < TT; ++i) {
#pragma unroll
        for (int j = 0; j + 1 < K; ++j)
#pragma unroll
            for (int e = 0; e < 8; ++e) win[j][e] = win[j + 1][e];
        unpack8(raw[i + K - 1], win[K - 1]);
        float y[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            y[e] = 0.0f;
#pragma unroll
            for (int j = 0; j < K; ++j) y[e] = fmaf(w[e * K + j], win[j][e], y[e]);
        }
        float sq = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            y[e] = silu_f(y[e]);
            sq = fmaf(y[e], y[e], sq);
        }
        sq = group_sum(sq, key_dim >> 3);  // every lane: the v lanes' sums go unused
        const float scale = region == 2 ? 1.0f : rsqrtf(sq + eps) * (region == 0 ? q_scale : 1.0f);
#pragma unroll
        for (int e = 0; e < 8; ++e) y[e] *= scale;
        if (live && i < tile_tokens) *reinterpret_cast<u32x4 *>(dst + (size_t)(t0 + i) * dst_stride) = pack8(y);
    }
    if (live && blockIdx.y == 0) conv_state_carry<K>(mixed, mixed_stride, conv_state, tokens, channels, chunk);
}

// out = w * rmsnorm(o) * silu(z) per (token, head) of D channels, over a flat [T, H * D] grid of
// 16-byte chunks: a head is an aligned group of D / 8 lanes (D = 8 * 2^n <= 256), its sum of squares
// one group_sum. One chunk per thread; the tail warp's spare lanes still shuffle. out may alias o
// (each lane reads its chunk before writing it).
__device__ __forceinline__ void gated_rmsnorm_impl(const half_t *o, const half_t *__restrict__ z, int z_stride,
                                                   const half_t *__restrict__ weight, half_t *out, int tokens,
                                                   int width, int head_dim, float eps) {
    const int row_chunks = width >> 3;
    const int chunk = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = chunk / row_chunks, col = (chunk - t * row_chunks) * 8;
    const bool live = t < tokens;
    u32x4 o_raw{0u, 0u, 0u, 0u}, z_raw{0u, 0u, 0u, 0u}, w_raw{0u, 0u, 0u, 0u};
    if (live) {
        o_raw = ld16(o + (size_t)chunk * 8);
        z_raw = ld16_nc(z + (size_t)t * z_stride + col);
        w_raw = ld16_nc(weight + col % head_dim);
    }
    float x[8], zf[8], wf[8];
    unpack8(o_raw, x);
    float sq = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) sq = fmaf(x[e], x[e], sq);
    const float inv = rsqrtf(group_sum(sq, head_dim >> 3) / (float)head_dim + eps);
    if (!live) return;
    unpack8(z_raw, zf);
    unpack8(w_raw, wf);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = x[e] * inv * wf[e] * silu_f(zf[e]);
    *reinterpret_cast<u32x4 *>(out + (size_t)chunk * 8) = pack8(x);
}

// out = attn * sigmoid(gate) elementwise over [T, W], one 16-byte chunk per thread; gate's rows may be
// spaced wider than W (the gate columns of the q projection's output). out may alias attn.
__device__ __forceinline__ void attn_gate_impl(const half_t *attn, const half_t *__restrict__ gate, int gate_stride,
                                               half_t *out, int tokens, int width) {
    const int row_chunks = width >> 3;
    const int chunk = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = chunk / row_chunks, col = (chunk - t * row_chunks) * 8;
    if (t >= tokens) return;
    float x[8], gf[8];
    unpack8(ld16(attn + (size_t)chunk * 8), x);
    unpack8(ld16_nc(gate + (size_t)t * gate_stride + col), gf);
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] *= sigmoid_f(gf[e]);
    *reinterpret_cast<u32x4 *>(out + (size_t)chunk * 8) = pack8(x);
}

// out[t, :] = act(gate_up[t, :S]) * gate_up[t, S:] over [T, S], one 16-byte chunk per thread.
constexpr int ACT_SILU = 0, ACT_GELU_TANH = 1;
template <int ACT>
__device__ __forceinline__ void gated_act_impl(const half_t *__restrict__ gate_up, int gate_up_stride,
                                               half_t *__restrict__ out, int tokens, int inter) {
    const int row_chunks = inter >> 3;
    const int chunk = blockIdx.x * blockDim.x + threadIdx.x;
    const int t = chunk / row_chunks, col = (chunk - t * row_chunks) * 8;
    if (t >= tokens) return;
    const half_t *row = gate_up + (size_t)t * gate_up_stride + col;
    float gf[8], up[8];
    unpack8(ld16_nc(row), gf);
    unpack8(ld16_nc(row + inter), up);
#pragma unroll
    for (int e = 0; e < 8; ++e) gf[e] = (ACT == ACT_SILU ? silu_f(gf[e]) : gelu_tanh_f(gf[e])) * up[e];
    *reinterpret_cast<u32x4 *>(out + (size_t)t * inter + col) = pack8(gf);
}

}  // namespace

extern "C" {

// out[t, :] = table[ids[t], :] * scale (FP32 product, one rounding; scale 1 copies the bits, Gemma-4
// scales by sqrt(H)); ids outside [0, vocab) give a zero row (no out-of-bounds read).
__global__ void embed_f16(const int *__restrict__ ids, const half_t *__restrict__ table, half_t *__restrict__ out,
                          int vocab, int hidden, float scale) { pdl_entry();
    const int token = blockIdx.x, chunks = hidden >> 3;
    const int id = ids[token];
    const bool valid = id >= 0 && id < vocab;
    const u32x4 *src = reinterpret_cast<const u32x4 *>(table + (size_t)(valid ? id : 0) * hidden);
    u32x4 *dst = reinterpret_cast<u32x4 *>(out + (size_t)token * hidden);
    for (int chunk = threadIdx.x; chunk < chunks; chunk += blockDim.x) {
        u32x4 v = {0u, 0u, 0u, 0u};
        if (valid) v = ld16_nc(src + chunk);
        if (scale != 1.0f) {  // uniform over the launch
            float f[8];
            unpack8(v, f);
#pragma unroll
            for (int i = 0; i < 8; ++i) f[i] *= scale;
            v = pack8(f);
        }
        dst[chunk] = v;
    }
}

// rmsnorm_f16_c{C}, add_rmsnorm_f16_c{C}, post_attn_norms_f16_c{C}: C chunks per thread (see the header).
// One block per row.
#define ROW_KERNELS(C)                                                                                             \
    __global__ void __launch_bounds__(ROW_THREADS)                                                                 \
        rmsnorm_f16_c##C(const half_t *__restrict__ x, const half_t *__restrict__ weight, half_t *__restrict__ out, \
                         int hidden, float eps) { pdl_entry();                                                                  \
        rmsnorm_impl<C>(x, weight, out, hidden, eps);                                                              \
    }                                                                                                              \
    __global__ void __launch_bounds__(ROW_THREADS)                                                                 \
        add_rmsnorm_f16_c##C(const half_t *__restrict__ x, half_t *__restrict__ residual,                          \
                             const half_t *__restrict__ weight, half_t *__restrict__ out, half_t *__restrict__ out_kp, \
                             int hidden, float eps) { pdl_entry();                                                  \
        add_rmsnorm_impl<C>(x, residual, weight, out, out_kp, hidden, eps);                                        \
    }                                                                                                              \
    __global__ void __launch_bounds__(ROW_THREADS) post_attn_norms_f16_c##C(                                      \
        half_t *x, half_t *__restrict__ residual, const half_t *__restrict__ w0, const half_t *__restrict__ w1,    \
        const half_t *__restrict__ w2, const half_t *__restrict__ w3, half_t *__restrict__ out1,                   \
        half_t *__restrict__ out2, half_t *__restrict__ out3, half_t *__restrict__ out_kp, int n_out, int hidden,  \
        float eps) {                                                                                               \
        pdl_entry();                                                                                               \
        post_attn_norms_impl<C>(x, residual, w0, w1, w2, w3, out1, out2, out3, out_kp, n_out, hidden, eps);        \
    }
ROW_KERNELS(1)
ROW_KERNELS(2)
ROW_KERNELS(4)
ROW_KERNELS(8)
#undef ROW_KERNELS

// out = a + b elementwise over n halves (n % 8 == 0); out may alias a or b (same thread reads, then
// writes, each chunk).
__global__ void add_f16(const half_t *a, const half_t *b, half_t *out, long long n) { pdl_entry();
    const long long chunks = n >> 3;
    for (long long chunk = (long long)blockIdx.x * blockDim.x + threadIdx.x; chunk < chunks;
         chunk += (long long)gridDim.x * blockDim.x) {
        float x[8], y[8];
        unpack8(ld16(reinterpret_cast<const u32x4 *>(a) + chunk), x);
        unpack8(ld16(reinterpret_cast<const u32x4 *>(b) + chunk), y);
#pragma unroll
        for (int i = 0; i < 8; ++i) x[i] += y[i];
        reinterpret_cast<u32x4 *>(out)[chunk] = pack8(x);
    }
}

// out = cap * tanh(x / cap) elementwise over n halves (n % 8 == 0): Gemma-4's final logit soft-capping
// (the last token's [1, V] logits). The accurate tanhf: it runs once a prompt, and the approximate MUFU
// tanh's ~2^-11 relative error would be a whole FP16 rounding. out may alias x.
__global__ void softcap_f16(const half_t *x, half_t *out, long long n, float cap, float inv_cap) { pdl_entry();
    const long long chunks = n >> 3;
    for (long long chunk = (long long)blockIdx.x * blockDim.x + threadIdx.x; chunk < chunks;
         chunk += (long long)gridDim.x * blockDim.x) {
        float v[8];
        unpack8(ld16(reinterpret_cast<const u32x4 *>(x) + chunk), v);
#pragma unroll
        for (int i = 0; i < 8; ++i) v[i] = cap * tanhf(v[i] * inv_cap);
        reinterpret_cast<u32x4 *>(out)[chunk] = pack8(v);
    }
}

// qkv_post_vp{1,2,4,8}: see qkv_post_impl. Grid: one block per token; block: ceil(heads / 4) warps.
#define QKV_POST(VP)                                                                                               \
    __global__ void qkv_post_vp##VP(const half_t *__restrict__ qkv, const half_t *__restrict__ q_norm_w,            \
                                    const half_t *__restrict__ k_norm_w, const int *__restrict__ pos,              \
                                    half_t *__restrict__ q_out, half_t *__restrict__ k_cache,                      \
                                    half_t *__restrict__ v_cache, int row_stride, int head_dim, int q_heads,       \
                                    int kv_heads, int max_len, float eps, double log2_theta, int qk_norm,          \
                                    int rope_pairs, int v_mode) {                                                  \
        pdl_entry();                                                                                               \
        qkv_post_impl<VP>(qkv, q_norm_w, k_norm_w, pos, q_out, k_cache, v_cache, row_stride, head_dim, q_heads,    \
                          kv_heads, max_len, eps, log2_theta, qk_norm, rope_pairs, v_mode);                        \
    }
QKV_POST(1)
QKV_POST(2)
QKV_POST(4)
QKV_POST(8)
#undef QKV_POST

// qkv_post_l{L}_s{S}: see qkv_post_wide_impl. Grid: one block per token; block: ceil(heads / (32 / L * S)) warps.
// qkv_post_l{L}_s{S}_partial: the same with R < D (rot_chunks = R / 8 < L); never for L = 2, where R >= 16 = D.
#define QKV_POST_WIDE(L, S, PARTIAL, SUFFIX)                                                                       \
    __global__ void qkv_post_l##L##_s##S##SUFFIX(                                                                 \
        const half_t *__restrict__ qkv, const half_t *__restrict__ q_norm_w, const half_t *__restrict__ k_norm_w,  \
        const int *__restrict__ pos, half_t *__restrict__ q_out, half_t *__restrict__ k_cache,                     \
        half_t *__restrict__ v_cache, int row_stride, int rot_chunks, int q_heads, int kv_heads, int max_len,      \
        float eps, double log2_theta, int qk_norm, int rope_pairs, int v_mode) {                                   \
        pdl_entry();                                                                                               \
        qkv_post_wide_impl<L, S, PARTIAL>(qkv, q_norm_w, k_norm_w, pos, q_out, k_cache, v_cache, row_stride,       \
                                          rot_chunks, q_heads, kv_heads, max_len, eps, log2_theta, qk_norm,        \
                                          rope_pairs, v_mode);                                                     \
    }
#define QKV_POST_WIDE_BOTH(L, S) QKV_POST_WIDE(L, S, false, ) QKV_POST_WIDE(L, S, true, _partial)
QKV_POST_WIDE(2, 2, false, )
QKV_POST_WIDE(2, 4, false, )
QKV_POST_WIDE(2, 8, false, )
QKV_POST_WIDE_BOTH(4, 2)
QKV_POST_WIDE_BOTH(4, 4)
QKV_POST_WIDE_BOTH(4, 8)
QKV_POST_WIDE_BOTH(8, 2)
QKV_POST_WIDE_BOTH(8, 4)
QKV_POST_WIDE_BOTH(8, 8)
QKV_POST_WIDE_BOTH(16, 2)
QKV_POST_WIDE_BOTH(16, 4)
QKV_POST_WIDE_BOTH(16, 8)
QKV_POST_WIDE_BOTH(32, 2)
QKV_POST_WIDE_BOTH(32, 4)
QKV_POST_WIDE_BOTH(32, 8)
#undef QKV_POST_WIDE_BOTH
#undef QKV_POST_WIDE

// conv_prep_k4: see conv_prep_impl. Grid (ceil(C / 8 / blockDim), ceil(T / CONV_TOKENS)); blockDim a
// multiple of 32, at most 128. Four blocks a SM, so at most 128 registers: at 130 (allocated as 136) only
// three fit, and Qwen3.6's 512 blocks at T 512 took 1.3 waves of 132 SMs instead of one.
__global__ void __launch_bounds__(128, 4) conv_prep_k4(
    const half_t *__restrict__ mixed, int mixed_stride, const half_t *__restrict__ conv_w, half_t *conv_state,
    const half_t *__restrict__ a, int a_stride, const half_t *__restrict__ b, int b_stride,
    const float *__restrict__ a_log, const float *__restrict__ dt_bias, half_t *__restrict__ q, half_t *__restrict__ k,
    half_t *__restrict__ v, float *__restrict__ g, float *__restrict__ beta, int tokens, int key_heads,
    int value_heads, int key_dim, int value_dim, float eps, float q_scale) {
    pdl_entry();
    conv_prep_impl<CONV_TAPS, CONV_TOKENS>(mixed, mixed_stride, conv_w, conv_state, a, a_stride, b, b_stride, a_log,
                                           dt_bias, q, k, v, g, beta, tokens, key_heads, value_heads, key_dim,
                                           value_dim, eps, q_scale);
}

// gated_rmsnorm_f16: see gated_rmsnorm_impl. Grid: ceil(T * W / 8 / blockDim).
__global__ void gated_rmsnorm_f16(const half_t *o, const half_t *__restrict__ z, int z_stride,
                                  const half_t *__restrict__ weight, half_t *out, int tokens, int width, int head_dim,
                                  float eps) {
    pdl_entry();
    gated_rmsnorm_impl(o, z, z_stride, weight, out, tokens, width, head_dim, eps);
}

// attn_gate_f16: see attn_gate_impl. Grid: ceil(T * W / 8 / blockDim).
__global__ void attn_gate_f16(const half_t *attn, const half_t *__restrict__ gate, int gate_stride, half_t *out,
                              int tokens, int width) {
    pdl_entry();
    attn_gate_impl(attn, gate, gate_stride, out, tokens, width);
}

// gated_act_{silu,gelu_tanh}: see gated_act_impl. Grid: ceil(T * S / 8 / blockDim).
#define GATED_ACT(NAME, ACT)                                                                                     \
    __global__ void gated_act_##NAME(const half_t *__restrict__ gate_up, int gate_up_stride,                    \
                                     half_t *__restrict__ out, int tokens, int inter) {                           \
        pdl_entry();                                                                                             \
        gated_act_impl<ACT>(gate_up, gate_up_stride, out, tokens, inter);                                        \
    }
GATED_ACT(silu, ACT_SILU)
GATED_ACT(gelu_tanh, ACT_GELU_TANH)
#undef GATED_ACT

}  // extern "C"
