// Hopper (sm_90) asynchronous-copy primitives shared by gemm_fp16.cu and moe_nvfp4.cu: mbarriers in
// shared memory and TMA 2D tile loads that complete on them. Only instantiated inside the sm_90a code
// paths of those files; elsewhere nothing here is emitted.
#pragma once

namespace impasync {

// A CUtensorMap (opaque, 128 bytes, 64-byte aligned), passed by value as a __grid_constant__ kernel
// parameter so the TMA unit reads it from the parameter space (no global copy, no allocation).
struct __align__(64) TmaMap {
    unsigned long long bits[16];
};

__device__ __forceinline__ void mbar_init(unsigned addr, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
}
// Spin until the phase with parity `parity` of the mbarrier at `addr` has completed.
__device__ __forceinline__ void mbar_wait(unsigned addr, unsigned parity) {
    asm volatile(
        "{\n.reg .pred P1;\nLAB_WAIT:\n"
        "mbarrier.try_wait.parity.shared::cta.b64 P1, [%0], %1;\n"
        "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(addr),
        "r"(parity)
        : "memory");
}
__device__ __forceinline__ void mbar_arrive(unsigned addr) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(addr) : "memory");
}
// Arrive once this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void mbar_arrive_on_cp_async(unsigned addr) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(addr) : "memory");
}
// Arrive and add `bytes` to the transaction count the current phase waits for.
__device__ __forceinline__ void mbar_expect_tx(unsigned addr, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(addr), "r"(bytes) : "memory");
}
// The box at coordinates (c0 innermost, c1) of `map` into shared address dst, completing on mbar.
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TmaMap *map, int c0, int c1, unsigned mbar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
        "[%4];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(mbar)
        : "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const TmaMap *map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
}

}  // namespace impasync
