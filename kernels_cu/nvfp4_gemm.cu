// impbench-nvrtc-arch: sm_90a
// (read by impbench/kernels/modules.py: on a compute-capability-9.0 device this family is compiled for
//  sm_90a; elsewhere every entry point compiles to a trap and impbench/kernels/nvfp4_gemm.py refuses it.)
//
// Dense NVFP4 x FP16 GEMM for Hopper: out[M, N] = a[M, K] . W[N, K]^T * scale2, W in the ModelOpt NVFP4
// layout (impbench/nvfp4.py): codes uint8 [N, K/2] (low nibble = even k; here packed per stage, see Decode),
// e4m3 block scales [N, K/16], one fp32 global scale2 read on the device. FP16 MMA, FP32 accumulation, one
// FP16 rounding of the output.
//
// Tile geometry. A tile is BW = 128 * MT weight rows (output columns) x BT tokens (output rows), over K in
// stages of BK = 128. "Swap AB": the weights are the wgmma A operand (M = weight rows), decoded into
// registers; the token tile is the B operand (N = BT tokens), read from shared memory. 384 threads:
//   warpgroup 0, the producer: thread 0 posts a stage's bytes on its `full` mbarrier and issues three TMA
//     copies (token tile: two 64-wide K halves, box 64 x BT, 128-byte swizzle; codes: box 64 bytes x BW,
//     rows and columns past the tensor zero-filled); all 128 threads copy the stage's scales (8 bytes a
//     row, cp.async, arriving on `full` once landed).
//   warpgroups 1-2, the consumers: warpgroup c owns the MT m64 tiles of block rows 64 (MT c + mt) + [0, 64),
//     for all BT tokens: per k16 step it decodes its A fragments and issues MT wgmma m64nBTk16 (accumulators
//     MT x BT/2 FP32 a thread); a stage goes back to the producer through its `empty` mbarrier.
// Why this shape: each weight byte is decoded once per BT tokens, not once per 64 (kernels_cu/moe_nvfp4.cu
// with one expert), and the decode runs in the consumers beside the asynchronous wgmma; BT = 128 keeps the
// decode (about 3 instructions a value) under half the issue slots of a stage, and 256 weight rows x 128
// tokens needs the fewest shared-memory bytes per FLOP of the tiles that fit the registers
// (docs/notes/nvfp4_gemm.md).
//
// Decode. Thread (lane 4g + t) of a warp needs, for k16 step s of a stage, the codes at k 16s + {2t, 2t+1}
// (byte 8s + t of the row's stage bytes in the ModelOpt layout) and k 16s + 8 + {2t, 2t+1} (byte 8s + 4 + t):
// byte t of every 4-byte word of the row's 64 stage bytes. The codes come packed for this kernel
// (impbench/kernels/nvfp4_gemm.py pack_codes): within each stage's 64 bytes of a row, byte 16p + 4i + t
// moves to 16t + 4p + i, so a thread's 16 bytes are contiguous and in the order its fragments take them
// (one 16-byte load; the quad exchanged them through shuffles before: 19 more instructions per row and
// stage). A byte becomes one half2 (low nibble = even k in the low half) through the e4m3 trick of
// nvfp4_tiles.cuh, times its block scale * 2^6 (an exact FP16 product); scale2 in the epilogue.
//
// Schedules (SPLIT):
//   SPLIT = 1: persistent. Block b takes tiles b, b + gridDim.x, ... (token tile fastest); the producer
//     runs on into the next tile while the consumers store the last one from registers.
//   SPLIT = 2, 4: split-K for shapes with too few tiles. A cluster of SPLIT blocks shares one tile, block r
//     takes K stages [r C / SPLIT, (r + 1) C / SPLIT), leaves its FP32 partial tile in its shared memory,
//     and sums 1/SPLIT of the tile over the cluster's partials in rank order (distributed shared memory):
//     deterministic, no workspace.
// Capture-safe: grid from static shapes, no allocation, no host read, no atomics; every output element is
// written by exactly one thread. Requires K % 64 == 0, K >= 128 (impbench/kernels/nvfp4_gemm.py checks).
#include "common.cuh"
#include "hopper_async.cuh"
#include "wgmma.cuh"
#include "nvfp4_tiles.cuh"

namespace impfp4 {

constexpr int BK = 128;            // K per stage: 64 code bytes and 8 scale bytes per weight row
// wgmma groups (k16 steps) a consumer leaves in flight while it decodes the next step's A fragments. A stage
// goes back to the producer once its last step is done, LAG steps into the next stage: the decode of a
// stage's first fragments runs under the previous stage's last wgmma instead of after a drain.
constexpr int LAG = 1;
constexpr int THREADS = 384;       // producer warpgroup + 2 consumer warpgroups
constexpr int SMEM_LIMIT = 232448;  // dynamic shared memory per block on sm_90 (227 KiB)

// Shared layout of a stage (every part 1024-byte aligned): token tile (two K halves of BT rows x 128 bytes,
// 128-byte swizzle, as TMA lands them), codes (BW rows x 64 bytes), scales (BW rows x 8 bytes).
template <int MT, int BT, int STAGES, int SPLIT>
struct Shape {
    static constexpr int BW = 128 * MT;
    static constexpr int X_HALF = BT * 128;
    static constexpr int X_BYTES = 2 * X_HALF;
    static constexpr int C_BYTES = BW * (BK / 2);
    static constexpr int S_BYTES = BW * (BK / 16);
    static constexpr int STAGE_BYTES = X_BYTES + C_BYTES + S_BYTES;
    static constexpr int PIPE_BYTES = STAGES * STAGE_BYTES;
    // SPLIT = 1 epilogue: each consumer warp stages its 16 output columns for EPI_TOKENS tokens at a time, a
    // token's 32 bytes in a row of EPI_ROW (+16: the 16-byte reads of 8 lanes spread over the banks)
    static constexpr int EPI_TOKENS = 64, EPI_ROW = 48, EPI_WARP = EPI_TOKENS * EPI_ROW;
    static constexpr int EPI_BYTES = SPLIT == 1 ? 8 * EPI_WARP : 0;
    static constexpr int SMEM_BYTES = PIPE_BYTES + EPI_BYTES + 1024;  // + alignment slack
    static constexpr int ACC = MT * BT / 2;                         // FP32 accumulators per consumer thread
    static constexpr int BLOCKS = ACC / 4;                          // 16-byte partial blocks (split-K)
    static_assert(MT == 1 || MT == 2, "one or two m64 tiles per consumer warpgroup");
    static_assert(BT % 32 == 0 && BT >= 32 && BT <= 256, "whole n32 wgmma pieces; one TMA box of rows");
    static_assert(SPLIT > 1 || BT % EPI_TOKENS == 0, "whole staged token groups");
    static_assert(ACC <= 128, "accumulators fit the consumers' 232 registers");
    static_assert(SMEM_BYTES <= SMEM_LIMIT, "227 KiB of shared memory per block");
    static_assert(SPLIT == 1 || (BLOCKS % SPLIT == 0 && ACC * 1024 <= STAGES * STAGE_BYTES),
                  "split-K: whole partial blocks per rank, partials in the pipeline buffers");
};

}  // namespace impfp4

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
namespace impfp4 {

using namespace impasync;  // mbarriers, TMA copies, wgmma forms, fences and groups, smem_desc, setmaxnreg

__device__ __forceinline__ void cp_async4(unsigned dst, const void *src, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ float4 ld_cluster_v4(unsigned cluster_address) {
    float4 v;
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(cluster_address)
                 : "memory");
    return v;
}
__device__ __forceinline__ void st_shared_v4(unsigned addr, float a, float b, float c, float d) {
    asm volatile("st.shared.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "f"(a), "f"(b), "f"(c), "f"(d) : "memory");
}

// All BT tokens of one k16 step, as wgmma pieces of 128, 64 and 32 tokens: piece j starts at token row
// 128 j (or 64 / 32 further), a multiple of 8 rows, so its rows sit at desc + rows * 128 bytes in the
// swizzled tile (the descriptor's address field counts 16-byte units).
template <int BT>
__device__ __forceinline__ void wgmma_tokens(float *d, const unsigned (&a)[4], unsigned long long desc) {
    if constexpr (BT >= 128) {
        wgmma_rs<128>(d, a, desc);
        wgmma_tokens<BT - 128>(d + 64, a, desc + (128 * 128 >> 4));
    } else if constexpr (BT >= 64) {
        wgmma_rs<64>(d, a, desc);
        wgmma_tokens<BT - 64>(d + 32, a, desc + (64 * 128 >> 4));
    } else if constexpr (BT >= 32) {
        wgmma_rs<32>(d, a, desc);
        wgmma_tokens<BT - 32>(d + 16, a, desc + (32 * 128 >> 4));
    }
}

// Which tiles and K stages a block works on: tiles first, first + step, ... < end; stages [c_begin, c_end).
struct Work {
    int m_tiles, first, step, end, c_begin, c_end;
};

template <int BT, int BW, int SPLIT>
__device__ __forceinline__ Work work_of(int M, int N, int K) {
    Work w;
    w.m_tiles = (M + BT - 1) / BT;
    const int tiles = w.m_tiles * ((N + BW - 1) / BW), chunks = (K + BK - 1) / BK;
    if constexpr (SPLIT == 1) {
        w.first = blockIdx.x, w.step = gridDim.x, w.end = tiles, w.c_begin = 0, w.c_end = chunks;
    } else {
        const int rank = (int)cluster_rank();
        w.first = blockIdx.x / SPLIT, w.step = tiles, w.end = tiles;
        w.c_begin = rank * chunks / SPLIT, w.c_end = (rank + 1) * chunks / SPLIT;
    }
    return w;
}

template <int MT, int BT, int STAGES, int SPLIT>
__device__ __forceinline__ void produce(const TmaMap &map_a, const TmaMap &map_w, const unsigned char *__restrict__ scale,
                                        unsigned s_base, unsigned full0, unsigned empty0, int M, int N, int K) {
    using S = Shape<MT, BT, STAGES, SPLIT>;
    const int ptid = threadIdx.x, ks = K >> 4;  // scale bytes per weight row
    const Work w = work_of<BT, S::BW, SPLIT>(M, N, K);
    if (ptid == 0) {
        tma_prefetch_map(&map_a);
        tma_prefetch_map(&map_w);
    }
    int slot = 0, filled = 0;
    unsigned phase = 0;
    for (int u = w.first; u < w.end; u += w.step) {
        const int m0 = (u % w.m_tiles) * BT, n0 = (u / w.m_tiles) * S::BW;
        for (int c = w.c_begin; c < w.c_end; ++c) {
            const unsigned full = full0 + 8 * slot, st = s_base + slot * S::STAGE_BYTES;
            if (filled >= STAGES) mbar_wait(empty0 + 8 * slot, phase ^ 1);  // the consumers released it
            if (ptid == 0) {
                mbar_add_tx(full, S::X_BYTES + S::C_BYTES);  // before this thread's own arrival below
                tma_load_2d(st, &map_a, c * BK, m0, full);
                tma_load_2d(st + S::X_HALF, &map_a, c * BK + 64, m0, full);
                tma_load_2d(st + S::X_BYTES, &map_w, c * (BK / 2), n0, full);
            }
            // scales: rows ptid + 128 j, two 4-byte pieces each (the second past K where K % 128 == 64)
#pragma unroll
            for (int j = 0; j < MT; ++j) {
                const int row = ptid + 128 * j, n = n0 + row;
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int col = c * (BK / 16) + 4 * h;
                    const bool ok = n < N && col < ks;
                    cp_async4(st + S::X_BYTES + S::C_BYTES + row * 8 + 4 * h, scale + (ok ? (size_t)n * ks + col : 0),
                              ok ? 4 : 0);
                }
            }
            mbar_arrive_on_cp_async(full);
            ++filled;
            if (++slot == STAGES) {
                slot = 0;
                phase ^= 1;
            }
        }
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
}

template <int MT, int BT, int STAGES, int SPLIT>
__device__ __forceinline__ void consume(unsigned char *smem, unsigned s_base, unsigned full0, unsigned empty0,
                                        const float *__restrict__ scale2, half_t *__restrict__ out, int M, int N,
                                        int K) {
    using S = Shape<MT, BT, STAGES, SPLIT>;
    const int ctid = threadIdx.x - 128, c = ctid >> 7, warp = (ctid >> 5) & 3, lane = ctid & 31;
    const int g = lane >> 2, t = lane & 3;
    const Work w = work_of<BT, S::BW, SPLIT>(M, N, K);
    const float f = *scale2;
    // block row (output column in the tile) of this thread's m64 tile mt, half r (rows g, g + 8)
    auto row_of = [&](int mt, int r) { return 64 * (MT * c + mt) + 16 * warp + 8 * r + g; };

    float acc[MT][BT / 2];
    unsigned a[8][MT][4];  // A fragments of k16 step s: a0 / a1 rows g / g+8 at k 2t; a2 / a3 at k 2t + 8
    int slot = 0;
    unsigned phase = 0;
    int m0 = 0, n0 = 0;
    for (int u = w.first; u < w.end; u += w.step) {
        m0 = (u % w.m_tiles) * BT, n0 = (u / w.m_tiles) * S::BW;
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int i = 0; i < BT / 2; ++i) acc[mt][i] = 0.0f;

        int held = -1;  // the previous stage's slot while its last LAG steps may still read it
        for (int kc = w.c_begin; kc < w.c_end; ++kc) {
            mbar_wait(full0 + 8 * slot, phase);
            const unsigned char *codes = smem + slot * S::STAGE_BYTES + S::X_BYTES;
            const unsigned char *scales = codes + S::C_BYTES;
            const unsigned x_addr = s_base + slot * S::STAGE_BYTES;
            unsigned z[MT][2][4], s2[MT][2][4];  // code words (bytes of steps 2p, 2p + 1); half2(scale 2p, 2p + 1) * 2^6
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int br = row_of(mt, r);
                    const uint4 q = *reinterpret_cast<const uint4 *>(codes + br * 64 + 16 * t);
                    z[mt][r][0] = q.x, z[mt][r][1] = q.y, z[mt][r][2] = q.z, z[mt][r][3] = q.w;
                    const uint2 sv = *reinterpret_cast<const uint2 *>(scales + br * 8);
                    s2[mt][r][0] = hmul2(e4m3x2_half<false>(sv.x), 0x54005400u);
                    s2[mt][r][1] = hmul2(e4m3x2_half<true>(sv.x), 0x54005400u);
                    s2[mt][r][2] = hmul2(e4m3x2_half<false>(sv.y), 0x54005400u);
                    s2[mt][r][3] = hmul2(e4m3x2_half<true>(sv.y), 0x54005400u);
                }
#pragma unroll
            for (int p = 0; p < 4; ++p) {
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        // z: bytes (step 2p: k 2t, k 2t+8; step 2p+1: the same) -> e01 = [lo0 hi0 lo1 hi1] as e4m3
                        const unsigned lo = e2m1_lo_as_e4m3(z[mt][r][p]), hi = e2m1_hi_as_e4m3(z[mt][r][p]);
                        const unsigned e01 = __byte_perm(lo, hi, 0x5140), e23 = __byte_perm(lo, hi, 0x7362);
                        const unsigned sa = __byte_perm(s2[mt][r][p], 0, 0x1010), sb = __byte_perm(s2[mt][r][p], 0, 0x3232);
                        a[2 * p][mt][r] = hmul2(e4m3x2_half<false>(e01), sa);
                        a[2 * p][mt][r + 2] = hmul2(e4m3x2_half<true>(e01), sa);
                        a[2 * p + 1][mt][r] = hmul2(e4m3x2_half<false>(e23), sb);
                        a[2 * p + 1][mt][r + 2] = hmul2(e4m3x2_half<true>(e23), sb);
                    }
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    const int s = 2 * p + h;  // k16 step: K half s / 4, 32 bytes per step along the swizzled row
                    const unsigned long long desc = smem_desc(x_addr + (s >> 2) * S::X_HALF + (s & 3) * 32);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) fence_regs(acc[mt]);
                    wgmma_fence();
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) wgmma_tokens<BT>(acc[mt], a[s][mt], desc);
                    wgmma_commit();
                    wgmma_wait<LAG>();  // step s - LAG is done: its A registers may be reused from here on
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) fence_regs(acc[mt]);
                    fence_regs(a[(s + 8 - LAG) % 8]);  // s < LAG: a step of the previous stage
                    if (s == LAG - 1) {  // the previous stage's last reads are done: hand it back
                        __syncwarp();
                        mbar_arrive_if(empty0 + 8 * max(held, 0), lane == 0 && held >= 0);
                    }
                }
            }
            held = slot;  // its last LAG steps run on under the next stage's decode
            if (++slot == STAGES) {
                slot = 0;
                phase ^= 1;
            }
        }
        wgmma_wait<0>();  // the tile's last reads are done: hand the last stage back
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) fence_regs(acc[mt]);
#pragma unroll
        for (int i = 0; i < LAG; ++i) fence_regs(a[7 - i]);
        __syncwarp();
        if (lane == 0 && held >= 0) mbar_arrive(empty0 + 8 * held);

        if constexpr (SPLIT == 1) {
            // d[4j + e] is block row g + 8 (e >> 1), token 8j + 2t + (e & 1): a warp holds 16 consecutive output
            // columns of every token. It stages them through its own shared rows, EPI_TOKENS tokens at a time,
            // and writes each token's columns as two 16-byte pieces (2-byte stores from the accumulators left
            // 75% of the sectors they touched unused). The producer meanwhile loads the next tile's stages.
            unsigned char *stage = smem + S::PIPE_BYTES + (ctid >> 5) * S::EPI_WARP;
            const bool vec = N % 8 == 0 && (reinterpret_cast<size_t>(out) & 15) == 0;
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const int col0 = n0 + row_of(mt, 0) - g;  // the warp's first column
#pragma unroll
                for (int j0 = 0; j0 < BT / 8; j0 += S::EPI_TOKENS / 8) {
                    __syncwarp();  // the previous group's reads are done
#pragma unroll
                    for (int jj = 0; jj < S::EPI_TOKENS / 8; ++jj)
#pragma unroll
                        for (int e = 0; e < 4; ++e)
                            *reinterpret_cast<half_t *>(stage + (8 * jj + 2 * t + (e & 1)) * S::EPI_ROW + 2 * (g + 8 * (e >> 1))) =
                                f2h(acc[mt][4 * (j0 + jj) + e] * f);
                    __syncwarp();
#pragma unroll
                    for (int q = 0; q < S::EPI_TOKENS * 2 / 32; ++q) {
                        const int piece = lane + 32 * q, tl = piece >> 1, h = piece & 1;
                        const int tok = m0 + 8 * j0 + tl, col = col0 + 8 * h;
                        if (tok < M && col < N) {
                            const uint4 v = *reinterpret_cast<const uint4 *>(stage + tl * S::EPI_ROW + 16 * h);
                            half_t *dst = out + (size_t)tok * N + col;
                            if (vec && col + 8 <= N) {
                                *reinterpret_cast<uint4 *>(dst) = v;
                            } else {
                                const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                                for (int i = 0; i < 8; ++i)
                                    if (col + i < N) dst[i] = (half_t)(w[i >> 1] >> (16 * (i & 1)));
                            }
                        }
                    }
                }
            }
        }
    }

    if constexpr (SPLIT > 1) {
        // The partial tile over the pipeline buffers once both warpgroups' wgmma are done, in 16-byte blocks
        // [block][consumer thread]: block mt * BT/8 + j holds acc[mt][4j .. 4j+3].
        named_barrier_sync(1, 256);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int j = 0; j < BT / 8; ++j)
                st_shared_v4(s_base + ((mt * (BT / 8) + j) * 256 + ctid) * 16, acc[mt][4 * j], acc[mt][4 * j + 1],
                             acc[mt][4 * j + 2], acc[mt][4 * j + 3]);
        cluster_sync();  // every block's partial is in its shared memory
        constexpr int PER_RANK = S::BLOCKS / SPLIT;
        const int rank = (int)cluster_rank();
#pragma unroll
        for (int i = 0; i < PER_RANK; ++i) {
            const int b = rank * PER_RANK + i, mt = b / (BT / 8), j = b % (BT / 8);
            const unsigned local = s_base + (b * 256 + ctid) * 16;
            float4 sum = ld_cluster_v4(cluster_addr(local, 0));
#pragma unroll
            for (int q = 1; q < SPLIT; ++q) {  // ranks in order: every replay adds the same way
                const float4 v = ld_cluster_v4(cluster_addr(local, (unsigned)q));
                sum.x += v.x, sum.y += v.y, sum.z += v.z, sum.w += v.w;
            }
            const float vals[4] = {sum.x, sum.y, sum.z, sum.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int tok = m0 + 8 * j + 2 * t + (e & 1), col = n0 + row_of(mt, e >> 1);
                if (tok < M && col < N) out[(size_t)tok * N + col] = f2h(vals[e] * f);
            }
        }
        cluster_sync();  // no block leaves while another still reads its shared memory
    }
}

template <int MT, int BT, int STAGES, int SPLIT>
__device__ __forceinline__ void gemm_body(const TmaMap &map_a, const TmaMap &map_w, const unsigned char *scale,
                                          const float *scale2, half_t *out, int M, int N, int K) {
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    __shared__ __align__(8) unsigned long long bars[2 * STAGES];  // full[s], empty[s]
    const unsigned raw = smem_u32(smem_raw);
    const unsigned s_base = align1024(raw);
    const unsigned full0 = smem_u32(&bars[0]), empty0 = full0 + 8 * STAGES;
    if (threadIdx.x == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(full0 + 8 * s, 128);  // the producer threads' cp.async arrivals; thread 0 adds the TMA bytes
            mbar_init(empty0 + 8 * s, 8);   // the 8 consumer warps, once their reads of the stage are done
        }
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
    __syncthreads();
    if (threadIdx.x < 128) {
        setmaxnreg_dec<40>();
        produce<MT, BT, STAGES, SPLIT>(map_a, map_w, scale, s_base, full0, empty0, M, N, K);
        if constexpr (SPLIT > 1) {  // the consumers' two cluster barriers
            cluster_sync();
            cluster_sync();
        }
    } else {
        setmaxnreg_inc<232>();
        consume<MT, BT, STAGES, SPLIT>(smem_raw + (s_base - raw), s_base, full0, empty0, scale2, out, M, N, K);
    }
}

}  // namespace impfp4
#define IMPFP4_BODY(MT, BT, STAGES, SPLIT) \
    impfp4::gemm_body<MT, BT, STAGES, SPLIT>(map_a, map_w, scale, scale2, out, M, N, K)
#else
#define IMPFP4_BODY(MT, BT, STAGES, SPLIT) __trap()  // sm_90a only; nvfp4_gemm.py never launches it elsewhere
#endif

// Entry points nvfp4_gemm_<name>, one per row of impbench/kernels/nvfp4_gemm.py VARIANTS (tests check the
// two agree): MT m64 tiles per consumer warpgroup (BW = 128 MT weight rows), BT tokens, STAGES, SPLIT, and
// the dynamic shared bytes the wrapper passes. 384 threads; grid: SPLIT 1 min(tiles, SMs), else tiles * SPLIT
// (clusters of SPLIT). map_a: a [M, K] fp16, box 64 x BT, 128-byte swizzle; map_w: packed codes uint8
// [N, 64 ceil(K / 128)] (pack_codes), box 64 x BW, no swizzle; scale [N, K/16] uint8; scale2 fp32 [1]; out fp16
// [M, N].
#define IMPFP4_CLUSTER_1
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900  // clusters exist from sm_90 on; elsewhere the entry traps
#define IMPFP4_CLUSTER_2 __cluster_dims__(2, 1, 1)
#define IMPFP4_CLUSTER_4 __cluster_dims__(4, 1, 1)
#else
#define IMPFP4_CLUSTER_2
#define IMPFP4_CLUSTER_4
#endif
#define NVFP4_GEMM_ENTRY(NAME, MT, BT, STAGES, SPLIT, SMEM)                                                        \
    static_assert(impfp4::Shape<MT, BT, STAGES, SPLIT>::SMEM_BYTES == SMEM, "shared bytes of " #NAME);              \
    extern "C" __global__ void __launch_bounds__(impfp4::THREADS, 1) IMPFP4_CLUSTER_##SPLIT nvfp4_gemm_##NAME(    \
        const __grid_constant__ impasync::TmaMap map_a, const __grid_constant__ impasync::TmaMap map_w,           \
        const unsigned char *scale, const float *scale2, half_t *out, int M, int N, int K) {                       \
        pdl_wait();                                                                                                \
        IMPFP4_BODY(MT, BT, STAGES, SPLIT);                                                                         \
    }

NVFP4_GEMM_ENTRY(w256t128, 2, 128, 4, 1, 230400)
NVFP4_GEMM_ENTRY(w128t192, 1, 192, 3, 1, 200704)
NVFP4_GEMM_ENTRY(w128t128, 1, 128, 4, 1, 193536)
NVFP4_GEMM_ENTRY(w128t64, 1, 64, 6, 1, 179200)
NVFP4_GEMM_ENTRY(w128t128k2, 1, 128, 5, 2, 210944)
NVFP4_GEMM_ENTRY(w128t128k4, 1, 128, 5, 4, 210944)
