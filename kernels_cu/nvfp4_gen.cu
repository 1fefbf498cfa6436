// Synthetic NVFP4 expert weights, generated and quantized on the GPU (impbench.nvfp4.generate_experts_gpu).
//
// One thread per 16-value block (one e4m3 scale, 8 code bytes): draws 16 values N(0, sigma_e^2) with a
// counter-based hash (splitmix64 of seed and element index) and Box-Muller, so the output depends only
// on the seed, not on the launch shape; then quantizes them as ModelOpt does (impbench/nvfp4.py) with
// amax = 6 sigma_e, i.e. scale_2 = sigma_e / 448 given per expert: block scale = block_amax / (6 scale_2)
// rounded to e4m3 (RNE, saturating), codes = value / (scale * scale_2) rounded to E2M1 (RNE, saturating;
// the same midpoint rule as nvfp4.e2m1_encode). Element 2j is the low nibble of byte j.
// Why a kernel: a 30B MoE (48 x 128 experts x 4.7M weights) is 29e9 values; drawing and quantizing
// them with array operations would take minutes and tens of GB of temporaries, this takes < 1 s.
#include "common.cuh"

namespace impgen {

__device__ __forceinline__ unsigned long long splitmix64(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// e4m3 byte, replicated into both bytes of the 16-bit result, of a non-negative float.
__device__ __forceinline__ unsigned e4m3_rne(float v) {
    unsigned short d;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %1;" : "=h"(d) : "f"(v));
    return d;
}

__device__ __forceinline__ float e4m3_value(unsigned bb) {
    unsigned h2;
    asm("{ .reg .b16 t; cvt.u16.u32 t, %1; cvt.rn.f16x2.e4m3x2 %0, t; }" : "=r"(h2) : "r"(bb));
    return h2f((half_t)(h2 & 0xffffu));
}

__device__ __forceinline__ unsigned e2m1_code(float y) {
    const float a = fabsf(y);
    const unsigned index = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) + (a > 5.0f);
    return (y < 0.0f && index) ? (index | 8u) : index;
}

}  // namespace impgen

// codes uint8 [E * blocks_per_expert * 8], scales uint8 [E * blocks_per_expert], scale2 fp32 [E].
extern "C" __global__ void nvfp4_generate(unsigned char *codes, unsigned char *scales, const float *scale2,
                                          long long blocks_per_expert, long long total, unsigned long long seed) { pdl_entry();
    using namespace impgen;
    const unsigned long long key = splitmix64(seed ^ 0x6e76667034ull);
    for (long long b = blockIdx.x * (long long)blockDim.x + threadIdx.x; b < total;
         b += (long long)gridDim.x * blockDim.x) {
        const float s2 = scale2[b / blocks_per_expert];
        const float sigma = s2 * 448.0f;
        float v[16];
        float amax = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const unsigned long long h = splitmix64(key + (unsigned long long)b * 8ull + j);
            const float u1 = (float)((h >> 40) + 1) * (1.0f / 16777216.0f);  // (0, 1]
            const float u2 = (float)((h >> 8) & 0xffffffull) * (1.0f / 16777216.0f);
            const float radius = sqrtf(-2.0f * __logf(u1)) * sigma;
            float sn, cs;
            __sincosf(6.28318530718f * u2, &sn, &cs);
            v[2 * j] = radius * cs;
            v[2 * j + 1] = radius * sn;
            amax = fmaxf(amax, fmaxf(fabsf(v[2 * j]), fabsf(v[2 * j + 1])));
        }
        float block_scale = amax / (6.0f * s2);
        block_scale = block_scale == 0.0f ? 1.0f : fmaxf(block_scale, 0.001953125f);  // 2^-9
        const unsigned sbits = e4m3_rne(block_scale);
        const float divisor = e4m3_value(sbits) * s2;
        unsigned lo = 0, hi = 0;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            lo |= e2m1_code(v[j] / divisor) << (4 * j);
            hi |= e2m1_code(v[8 + j] / divisor) << (4 * j);
        }
        reinterpret_cast<uint2 *>(codes)[b] = make_uint2(lo, hi);
        scales[b] = (unsigned char)(sbits & 0xffu);
    }
}
