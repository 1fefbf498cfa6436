// Hopper (sm_90) asynchronous primitives shared by gemm_fp16.cu, moe_nvfp4.cu, nvfp4_gemm.cu and
// attention.cu: mbarriers in shared memory, TMA 2D tile loads that complete on them, the wgmma fences,
// groups and shared-memory descriptor, setmaxnreg, named barriers and cluster primitives (the wgmma
// instruction forms: wgmma.cuh). Only instantiated inside the sm_90a code paths of those files;
// elsewhere nothing here is emitted.
#pragma once

namespace impasync {

// A CUtensorMap (opaque, 128 bytes, 64-byte aligned), passed by value as a __grid_constant__ kernel
// parameter so the TMA unit reads it from the parameter space (no global copy, no allocation).
struct __align__(64) TmaMap {
    unsigned long long bits[16];
};

// The 128-byte swizzle (TMA boxes, wgmma descriptors) is a function of address bits 4-9, so tile bases
// must be 1024-byte aligned; the dynamic shared memory is rounded up to that. The offset is the same in
// every CTA of a kernel (same static shared memory), which cluster multicast and split-K rely on.
__device__ __forceinline__ unsigned align1024(unsigned addr) { return (addr + 1023u) & ~1023u; }
__device__ __forceinline__ unsigned char *align1024(unsigned char *smem_raw) {
    const unsigned addr = smem_u32(smem_raw);
    return smem_raw + (align1024(addr) - addr);
}

__device__ __forceinline__ void mbar_init(unsigned addr, unsigned count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(count) : "memory");
}
// Spin until the phase with parity `parity` of the mbarrier at `addr` has completed (SEM: the
// try_wait's semantics, e.g. ".acquire.cluster"; empty: the default, acquire at CTA scope).
#define IMPASYNC_MBAR_WAIT(SEM)                                                                   \
    asm volatile("{\n.reg .pred P1;\nLAB_WAIT:\n"                                                   \
                 "mbarrier.try_wait.parity" SEM ".shared::cta.b64 P1, [%0], %1;\n"                 \
                 "@P1 bra DONE;\nbra LAB_WAIT;\nDONE:\n}\n" ::"r"(addr),                             \
                 "r"(parity)                                                                      \
                 : "memory")
__device__ __forceinline__ void mbar_wait(unsigned addr, unsigned parity) { IMPASYNC_MBAR_WAIT(""); }
// ... where the bytes counted on the barrier came from other CTAs of the cluster.
__device__ __forceinline__ void mbar_wait_cluster(unsigned addr, unsigned parity) {
    IMPASYNC_MBAR_WAIT(".acquire.cluster");
}
__device__ __forceinline__ void mbar_arrive(unsigned addr) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(addr) : "memory");
}
// Arrive where `pred` holds, as one predicated instruction: no branch, so that it may sit between
// wgmma groups in flight (a branch there makes ptxas serialize them, C7513).
__device__ __forceinline__ void mbar_arrive_if(unsigned addr, bool pred) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %1, 0;\n@p mbarrier.arrive.shared::cta.b64 _, [%0];\n}\n" ::"r"(addr),
                 "r"((int)pred)
                 : "memory");
}
// Arrive once this thread's earlier cp.async copies have landed.
__device__ __forceinline__ void mbar_arrive_on_cp_async(unsigned addr) {
    asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(addr) : "memory");
}
// Arrive and add `bytes` to the transaction count the current phase waits for.
__device__ __forceinline__ void mbar_expect_tx(unsigned addr, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(addr), "r"(bytes) : "memory");
}
// Add `bytes` to the transaction count of the current phase without arriving.
__device__ __forceinline__ void mbar_add_tx(unsigned addr, unsigned bytes) {
    asm volatile("mbarrier.expect_tx.relaxed.cta.shared::cta.b64 [%0], %1;\n" ::"r"(addr), "r"(bytes) : "memory");
}
// `bytes` (a multiple of 16) contiguous bytes from global src to shared dst (both 16-byte aligned) by the
// TMA unit, completing on mbar.
__device__ __forceinline__ void bulk_load(unsigned dst, const void *src, unsigned bytes, unsigned mbar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(mbar)
                 : "memory");
}
// The box at coordinates (c0 innermost, c1) of `map` into shared address dst, completing on mbar.
__device__ __forceinline__ void tma_load_2d(unsigned dst, const TmaMap *map, int c0, int c1, unsigned mbar) {
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], "
        "[%4];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(mbar)
        : "memory");
}
// The same for a 3-D tensor map (coordinates innermost first).
__device__ __forceinline__ void tma_load_3d(unsigned dst, const TmaMap *map, int c0, int c1, int c2, unsigned mbar) {
    asm volatile(
        "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], "
        "[%5];\n" ::"r"(dst),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(mbar)
        : "memory");
}
// The box at (c0 innermost, c1) of `map` from shared address src (a bulk async-group; rows and
// columns past the tensor's bounds are not written).
__device__ __forceinline__ void tma_store_2d(const TmaMap *map, unsigned src, int c0, int c1) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(map), "r"(src),
                 "r"(c0), "r"(c1)
                 : "memory");
}
// Close the bulk async-group of this thread's stores and wait until their shared-memory source was read.
__device__ __forceinline__ void bulk_store_commit_wait_read() {
    asm volatile("cp.async.bulk.commit_group;\ncp.async.bulk.wait_group.read 0;\n" ::: "memory");
}
__device__ __forceinline__ void tma_prefetch_map(const TmaMap *map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"(map) : "memory");
}

// wgmma.mma_async bookkeeping: fence before a batch reads registers or shared memory written since,
// commit the issued wgmmas as one group, wait until at most N groups are in flight.
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Generic-proxy shared-memory writes (st.shared, cp.async) before async-proxy reads (wgmma, TMA store):
// each writer fences before the barrier that publishes the data.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
// Keep the compiler from reading, moving or reusing registers that an in-flight wgmma owns
// (accumulators, or A fragments from registers).
template <int R>
__device__ __forceinline__ void fence_regs(float (&d)[R]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
}
template <int R>
__device__ __forceinline__ void fence_regs(unsigned (&d)[R][4]) {
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+r"(d[i][0]), "+r"(d[i][1]), "+r"(d[i][2]), "+r"(d[i][3])::"memory");
}

// Shared-memory matrix descriptor: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ unsigned long long smem_desc(unsigned addr) {
    unsigned long long d = 0;
    d |= (unsigned long long)((addr & 0x3FFFF) >> 4);  // start address
    d |= (unsigned long long)1 << 16;                  // leading byte offset (unused for this layout)
    d |= (unsigned long long)(1024 >> 4) << 32;        // stride byte offset: next 8-row group
    d |= (unsigned long long)1 << 62;                  // 128-byte swizzle
    return d;
}

// Warp specialization: a producer warpgroup gives registers back (dec) so the consumers can take them (inc);
// N is the new per-thread count, a multiple of 8 in [24, 256].
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N)); }
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N)); }

// Named barrier `id` over `threads` threads (whole warps): a subset of the block waits for itself only.
__device__ __forceinline__ void named_barrier_sync(int id, int threads) {
    asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// Clusters: this CTA's rank, a barrier over every thread of every CTA (release/acquire orders shared-memory
// traffic across it), and the shared::cluster address of shared::cta address `addr` in the CTA of rank `rank`.
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(r));
    return r;
}
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
}
__device__ __forceinline__ unsigned cluster_addr(unsigned addr, unsigned rank) {
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(r) : "r"(addr), "r"(rank));
    return r;
}

}  // namespace impasync
