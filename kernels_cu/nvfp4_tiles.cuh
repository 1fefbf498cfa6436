// The NVFP4 decode shared by moe_nvfp4.cu and nvfp4_gemm.cu: E2M1 codes and E4M3 block scales to FP16
// (ModelOpt layout, impbench/nvfp4.py). The conversions are sm_89+ PTX, emitted only where a kernel that
// runs there uses them. Include after common.cuh.
#pragma once

__device__ __forceinline__ unsigned hmul2(unsigned a, unsigned b) {
    unsigned d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

// The decode: byte [s 0 0 e e m 0 0] is the e4m3 encoding of (E2M1 value [s e e m]) / 64, so the four
// high nibbles of q become four e4m3 bytes with 3 logic ops (the low nibbles with 4) and the hardware
// e4m3x2 -> f16x2 conversion makes two of those bytes a half2, exactly. moe_nvfp4.cu pairs nibbles
// (1,3), (5,7) of the high ones and (0,2), (4,6) of the low ones; nvfp4_gemm.cu first interleaves the
// two nibbles of each byte.
__device__ __forceinline__ unsigned e2m1_hi_as_e4m3(unsigned q) { return (q & 0x80808080u) | ((q >> 2) & 0x1C1C1C1Cu); }
__device__ __forceinline__ unsigned e2m1_lo_as_e4m3(unsigned q) {
    return ((q << 4) & 0x80808080u) | ((q << 2) & 0x1C1C1C1Cu);
}
template <bool HIGH>
__device__ __forceinline__ unsigned e4m3x2_half(unsigned v) {  // bytes 0-1 (or 2-3) of v -> half2
    unsigned d;
    if (HIGH)
        asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.rn.f16x2.e4m3x2 %0, hi; }" : "=r"(d) : "r"(v));
    else
        asm("{ .reg .b16 lo, hi; mov.b32 {lo, hi}, %1; cvt.rn.f16x2.e4m3x2 %0, lo; }" : "=r"(d) : "r"(v));
    return d;
}
