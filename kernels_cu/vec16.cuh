// Helpers shared by the memory-bound kernels (ops.cu, routing.cu): explicit 16-byte global loads,
// FP16x8 <-> FP32x8 packing, and fixed-order warp / block sums (every thread gets the same bits, so
// reruns and graph replays agree). Include after common.cuh (unpack_half2, pack_half2).
#pragma once

namespace {

struct alignas(16) u32x4 {
    unsigned x, y, z, w;
};

// Explicit 16-byte global loads: the compiler splits a struct load through a pointer that may alias
// a store (residual, in-place outputs) into four 4-byte loads. `nc`: read-only for the whole kernel.
// Under programmatic dependent launch a kernel runs while the previous one still writes, until its
// griddepcontrol.wait (pdl_entry): ptxas schedules ld.global.nc -- "read-only for the whole kernel" --
// before that wait where it likes (qkv_post's were: eager runs disagreed, the seed arm read NaN), so
// `nc` is for weights, and tests/test_kernels_compile.py checks that no kernel loads before the wait.
// volatile keeps the compiler from moving these asms (which it sees reading no memory) likewise.
__device__ __forceinline__ u32x4 ld16(const void *p) {
    u32x4 v;
    asm volatile("ld.global.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
__device__ __forceinline__ u32x4 ld16_nc(const void *p) {
    u32x4 v;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
// A 4-byte coherent load, for a device scalar (the chunk's position) read where a `const __restrict__`
// read would become ld.global.nc, which ptxas may schedule before griddepcontrol.wait.
__device__ __forceinline__ int ld_i32(const int *p) {
    int v;
    asm volatile("ld.global.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}
struct alignas(8) u32x2 {  // 8-byte pairs (ops.cu head-dim pairs)
    unsigned x, y;
};

__device__ __forceinline__ void unpack8(const u32x4 &v, float f[8]) {
    unpack_half2(v.x, f[0], f[1]);
    unpack_half2(v.y, f[2], f[3]);
    unpack_half2(v.z, f[4], f[5]);
    unpack_half2(v.w, f[6], f[7]);
}

__device__ __forceinline__ u32x4 pack8(const float f[8]) {
    u32x4 v;
    v.x = pack_half2(f[0], f[1]);
    v.y = pack_half2(f[2], f[3]);
    v.z = pack_half2(f[4], f[5]);
    v.w = pack_half2(f[6], f[7]);
    return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// The row kernels' thread layout: thread t holds chunks t + c * blockDim.x (c < C) of a row of `chunks`
// 16-byte chunks (8 halves each). This thread's sum of squares of them, in chunk then element order.
template <int C>
__device__ __forceinline__ float chunk_sum_squares(const u32x4 raw[C], int chunks) {
    float sq = 0.0f;
#pragma unroll
    for (int c = 0; c < C; ++c) {
        if (threadIdx.x + c * blockDim.x < chunks) {
            float x[8];
            unpack8(raw[c], x);
#pragma unroll
            for (int i = 0; i < 8; ++i) sq += x[i] * x[i];
        }
    }
    return sq;
}

// out_row's chunks of this thread = raw * inv * w (an RMSNorm's scaling, inv its reciprocal rms).
template <int C>
__device__ __forceinline__ void scaled_store(const u32x4 raw[C], const u32x4 w_raw[C], float inv, u32x4 *out_row,
                                             int chunks) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int chunk = threadIdx.x + c * blockDim.x;
        if (chunk < chunks) {
            float x[8], w[8], y[8];
            unpack8(raw[c], x);
            unpack8(w_raw[c], w);
#pragma unroll
            for (int i = 0; i < 8; ++i) y[i] = x[i] * inv * w[i];
            out_row[chunk] = pack8(y);
        }
    }
}

// Sum over the block in a fixed order (butterfly in each warp, then every warp over the warp sums);
// every thread gets the same bits. blockDim.x must be a multiple of 32; one call per kernel (scratch
// is not reset).
__device__ __forceinline__ float block_sum(float v, float *scratch /* [32] shared */) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (warps == 1) return v;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    return total;
}

}  // namespace
