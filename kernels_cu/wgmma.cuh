// The warpgroup MMA forms the sm_90a kernels issue (gemm_fp16.cu, attention.cu, moe_nvfp4.cu,
// nvfp4_gemm.cu): wgmma.mma_async m64nNk16, FP16 inputs, FP32 accumulators.
//   wgmma_ss<N>(d, da, db, accumulate)           A and B from shared memory (descriptors), both K-major
//   wgmma_rs<N, TRANS_B>(d, a, db, accumulate)   A from registers (each warp's 16 rows as the m16n8k16 A
//                                                fragment), B from shared memory, K-major (TRANS_B 0) or
//                                                N-major (1)
// d points at this thread's N / 2 accumulators; accumulate = 0 overwrites them instead of adding.
// PTX names every accumulator register of the instruction, so each width is one specialization of `Mma`,
// spelled by IMPWG_MMA from the register lists below; a width not listed fails to compile.
// Only instantiated inside sm_90a code paths; elsewhere nothing here is emitted.
#pragma once

namespace impasync {

// "%b, ..., %b+7": the PTX operand numbers of 8 accumulators
#define IMPWG_R8_0 "%0, %1, %2, %3, %4, %5, %6, %7"
#define IMPWG_R8_8 "%8, %9, %10, %11, %12, %13, %14, %15"
#define IMPWG_R8_16 "%16, %17, %18, %19, %20, %21, %22, %23"
#define IMPWG_R8_24 "%24, %25, %26, %27, %28, %29, %30, %31"
#define IMPWG_R8_32 "%32, %33, %34, %35, %36, %37, %38, %39"
#define IMPWG_R8_40 "%40, %41, %42, %43, %44, %45, %46, %47"
#define IMPWG_R8_48 "%48, %49, %50, %51, %52, %53, %54, %55"
#define IMPWG_R8_56 "%56, %57, %58, %59, %60, %61, %62, %63"
#define IMPWG_R8_64 "%64, %65, %66, %67, %68, %69, %70, %71"
#define IMPWG_R8_72 "%72, %73, %74, %75, %76, %77, %78, %79"
#define IMPWG_R8_80 "%80, %81, %82, %83, %84, %85, %86, %87"
#define IMPWG_R8_88 "%88, %89, %90, %91, %92, %93, %94, %95"
#define IMPWG_R8_96 "%96, %97, %98, %99, %100, %101, %102, %103"
#define IMPWG_R8_104 "%104, %105, %106, %107, %108, %109, %110, %111"
#define IMPWG_R8_112 "%112, %113, %114, %115, %116, %117, %118, %119"
#define IMPWG_R8_120 "%120, %121, %122, %123, %124, %125, %126, %127"

// IMPWG_R<C>: the operand numbers of C accumulators; IMPWG_D<C>: their in-out constraints on d[0 .. C)
#define IMPWG_F4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define IMPWG_F8(i) IMPWG_F4(i), IMPWG_F4(i + 4)
#define IMPWG_R4 "%0, %1, %2, %3"
#define IMPWG_D4 IMPWG_F4(0)
#define IMPWG_R8 IMPWG_R8_0
#define IMPWG_D8 IMPWG_F8(0)
#define IMPWG_R12 IMPWG_R8 ", %8, %9, %10, %11"
#define IMPWG_D12 IMPWG_D8, IMPWG_F4(8)
#define IMPWG_R16 IMPWG_R8 ", " IMPWG_R8_8
#define IMPWG_D16 IMPWG_D8, IMPWG_F8(8)
#define IMPWG_R20 IMPWG_R16 ", %16, %17, %18, %19"
#define IMPWG_D20 IMPWG_D16, IMPWG_F4(16)
#define IMPWG_R24 IMPWG_R16 ", " IMPWG_R8_16
#define IMPWG_D24 IMPWG_D16, IMPWG_F8(16)
#define IMPWG_R28 IMPWG_R24 ", %24, %25, %26, %27"
#define IMPWG_D28 IMPWG_D24, IMPWG_F4(24)
#define IMPWG_R32 IMPWG_R24 ", " IMPWG_R8_24
#define IMPWG_D32 IMPWG_D24, IMPWG_F8(24)
#define IMPWG_R48 IMPWG_R32 ", " IMPWG_R8_32 ", " IMPWG_R8_40
#define IMPWG_D48 IMPWG_D32, IMPWG_F8(32), IMPWG_F8(40)
#define IMPWG_R64 IMPWG_R48 ", " IMPWG_R8_48 ", " IMPWG_R8_56
#define IMPWG_D64 IMPWG_D48, IMPWG_F8(48), IMPWG_F8(56)
#define IMPWG_R72 IMPWG_R64 ", " IMPWG_R8_64
#define IMPWG_D72 IMPWG_D64, IMPWG_F8(64)
#define IMPWG_R80 IMPWG_R72 ", " IMPWG_R8_72
#define IMPWG_D80 IMPWG_D72, IMPWG_F8(72)
#define IMPWG_R88 IMPWG_R80 ", " IMPWG_R8_80
#define IMPWG_D88 IMPWG_D80, IMPWG_F8(80)
#define IMPWG_R96 IMPWG_R88 ", " IMPWG_R8_88
#define IMPWG_D96 IMPWG_D88, IMPWG_F8(88)
#define IMPWG_R112 IMPWG_R96 ", " IMPWG_R8_96 ", " IMPWG_R8_104
#define IMPWG_D112 IMPWG_D96, IMPWG_F8(96), IMPWG_F8(104)
#define IMPWG_R128 IMPWG_R112 ", " IMPWG_R8_112 ", " IMPWG_R8_120
#define IMPWG_D128 IMPWG_D112, IMPWG_F8(112), IMPWG_F8(120)

template <int N>
struct Mma;  // one specialization per width N below

// Width N with C = N / 2 accumulators: operands %0 .. %C-1 are the accumulators, and P0 .. P6 (= C .. C + 6,
// spelled out: PTX wants literal numbers) the operands after them. ss: da, db, accumulate. rs: the four A
// registers, db, TRANS_B (an immediate), accumulate.
#define IMPWG_MMA(N, P0, P1, P2, P3, P4, P5, P6)                                                              \
    template <>                                                                                              \
    struct Mma<N> {                                                                                          \
        static __device__ __forceinline__ void ss(float *d, unsigned long long da, unsigned long long db,     \
                                                  int accumulate) {                                          \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P2 ", 0;\n"                                   \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.f16.f16 {" IMPWG_R##P0 "}, %" #P0    \
                         ", %" #P1 ", p, 1, 1, 0, 0;\n}\n"                                                   \
                         : IMPWG_D##P0                                                                       \
                         : "l"(da), "l"(db), "r"(accumulate));                                               \
        }                                                                                                    \
        template <int TRANS_B>                                                                               \
        static __device__ __forceinline__ void rs(float *d, const unsigned (&a)[4], unsigned long long db,   \
                                                  int accumulate) {                                          \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P6 ", 0;\n"                                   \
                         "wgmma.mma_async.sync.aligned.m64n" #N "k16.f32.f16.f16 {" IMPWG_R##P0 "}, {%" #P0   \
                         ", %" #P1 ", %" #P2 ", %" #P3 "}, %" #P4 ", p, 1, 1, %" #P5 ";\n}\n"               \
                         : IMPWG_D##P0                                                                       \
                         : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "n"(TRANS_B),                \
                           "r"(accumulate));                                                                 \
        }                                                                                                    \
    };

IMPWG_MMA(8, 4, 5, 6, 7, 8, 9, 10)
IMPWG_MMA(16, 8, 9, 10, 11, 12, 13, 14)
IMPWG_MMA(24, 12, 13, 14, 15, 16, 17, 18)
IMPWG_MMA(32, 16, 17, 18, 19, 20, 21, 22)
IMPWG_MMA(40, 20, 21, 22, 23, 24, 25, 26)
IMPWG_MMA(48, 24, 25, 26, 27, 28, 29, 30)
IMPWG_MMA(56, 28, 29, 30, 31, 32, 33, 34)
IMPWG_MMA(64, 32, 33, 34, 35, 36, 37, 38)
IMPWG_MMA(96, 48, 49, 50, 51, 52, 53, 54)
IMPWG_MMA(128, 64, 65, 66, 67, 68, 69, 70)
IMPWG_MMA(144, 72, 73, 74, 75, 76, 77, 78)
IMPWG_MMA(160, 80, 81, 82, 83, 84, 85, 86)
IMPWG_MMA(176, 88, 89, 90, 91, 92, 93, 94)
IMPWG_MMA(192, 96, 97, 98, 99, 100, 101, 102)
IMPWG_MMA(224, 112, 113, 114, 115, 116, 117, 118)
IMPWG_MMA(256, 128, 129, 130, 131, 132, 133, 134)

#undef IMPWG_MMA

template <int N>
__device__ __forceinline__ void wgmma_ss(float *d, unsigned long long da, unsigned long long db, int accumulate = 1) {
    Mma<N>::ss(d, da, db, accumulate);
}
template <int N, int TRANS_B = 0>
__device__ __forceinline__ void wgmma_rs(float *d, const unsigned (&a)[4], unsigned long long db, int accumulate = 1) {
    Mma<N>::template rs<TRANS_B>(d, a, db, accumulate);
}

}  // namespace impasync
