// Shared device helpers for every kernel family. No #include at all: kernels must compile with
// the NVRTC of a plain `pip install cupy-cuda13x`, which has no toolkit headers (docs/DESIGN.md, Facts).
// FP16 values are carried as raw 16-bit patterns (unsigned short) and converted with PTX.
#pragma once

typedef unsigned short half_t;   // IEEE binary16 bit pattern
typedef unsigned int half2_t;    // two binary16 values, low half = element 0

__device__ __forceinline__ float h2f(half_t h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ half_t f2h(float f) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ half2_t pack_half2(float lo, float hi) {
    half2_t r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ void unpack_half2(half2_t v, float &lo, float &hi) {
    lo = h2f((half_t)(v & 0xffffu));
    hi = h2f((half_t)(v >> 16));
}

// First statement of every kernel but the dense GEMMs (pdl_wait). Programmatic dependent launch (sm_90; impbench/kernels/driver.py
// launches our kernels with programmatic stream serialization there): let the next kernel of the
// stream start launching once every block of this one runs, then wait for the previous kernel's
// completion and memory before reading or writing anything. Both are no-ops for a normal launch.
__device__ __forceinline__ void pdl_entry() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// The dense GEMMs' first statement: they start early behind their predecessor, but no successor starts
// before they end. Qwen3.6's graph arm on an H100, against GEMMs launched plainly: -4.4% with pdl_entry in
// the GEMMs, +1.5% with this (docs/notes/engine.md).
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}

// 2^x on the MUFU unit (approximate, denormals flushed), and log2(e) to feed it e^x; the bytes of dynamic
// shared memory this launch got (kernels that need a minimum trap below it).
constexpr float LOG2E = 1.4426950408889634f;
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

// Shared-memory address for PTX operands.
__device__ __forceinline__ unsigned smem_u32(const void *p) {
    unsigned addr;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(addr) : "l"(p));
    return addr;
}

// cp.async 16 bytes global->shared; src_bytes < 16 zero-fills the rest (predicated edges).
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// ldmatrix: four 8x8 b16 tiles (x4) or two (x2), optionally transposed.
__device__ __forceinline__ void ldmatrix_x4(unsigned &r0, unsigned &r1, unsigned &r2, unsigned &r3,
                                            const void *smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(smem)));
}
__device__ __forceinline__ void ldmatrix_x2(unsigned &r0, unsigned &r1, const void *smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r0), "=r"(r1)
                 : "r"(smem_u32(smem)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned &r0, unsigned &r1, unsigned &r2, unsigned &r3,
                                                  const void *smem) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_u32(smem)));
}

// D = A(16x16, row) * B(16x8, col) + D, FP16 inputs, FP32 accumulators.
__device__ __forceinline__ void mma_16816(float d[4], const unsigned a[4], const unsigned b[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// The kperm order (impbench/kernels/moe.py kperm_order) of one 4-unit group of a 128-wide K block:
// v[j] = physical 16-byte unit i + 4j (j = 0..3) -> out[q] = logical unit 4i + q, whose word j holds
// halves {1,3}, {0,2}, {5,7}, {4,6} (q = 0..3) of v[j]. V: any struct of four 32-bit x, y, z, w.
template <class V>
__device__ __forceinline__ void kperm_units(const V (&v)[4], V (&out)[4]) {
    out[0] = {__byte_perm(v[0].x, v[0].y, 0x7632), __byte_perm(v[1].x, v[1].y, 0x7632),
              __byte_perm(v[2].x, v[2].y, 0x7632), __byte_perm(v[3].x, v[3].y, 0x7632)};
    out[1] = {__byte_perm(v[0].x, v[0].y, 0x5410), __byte_perm(v[1].x, v[1].y, 0x5410),
              __byte_perm(v[2].x, v[2].y, 0x5410), __byte_perm(v[3].x, v[3].y, 0x5410)};
    out[2] = {__byte_perm(v[0].z, v[0].w, 0x7632), __byte_perm(v[1].z, v[1].w, 0x7632),
              __byte_perm(v[2].z, v[2].w, 0x7632), __byte_perm(v[3].z, v[3].w, 0x7632)};
    out[3] = {__byte_perm(v[0].z, v[0].w, 0x5410), __byte_perm(v[1].z, v[1].w, 0x5410),
              __byte_perm(v[2].z, v[2].w, 0x5410), __byte_perm(v[3].z, v[3].w, 0x5410)};
}

// The elementwise activations run once per FP16 output, so they use the approximate MUFU exp2 and
// reciprocal with denormals flushed (a few FP32 ulp, far below an FP16 rounding): IEEE division and
// expf, with their range checks and slow paths, made conv_prep's 64 SiLUs a thread cost about as much
// issue time as its memory. 1 + e^-x overflowing to inf gives rcp 0, the limit.
__device__ __forceinline__ float rcp_fast(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float sigmoid_f(float x) { return rcp_fast(1.0f + fast_exp2(-LOG2E * x)); }
__device__ __forceinline__ float silu_f(float x) { return x * sigmoid_f(x); }
// GELU, tanh form: 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
__device__ __forceinline__ float gelu_tanh_f(float x) {
    return x * sigmoid_f(1.5957691216057308f * fmaf(0.044715f * x, x * x, x));
}
