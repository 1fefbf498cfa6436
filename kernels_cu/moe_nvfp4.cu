// impbench-nvrtc-arch: sm_90a
// (read by impbench/kernels/modules.py: on a compute-capability-9.0 device this family is compiled for
//  sm_90a so the wgmma variants exist; elsewhere they compile to a trap and moe.py never picks them.)
//
// Grouped NVFP4 MoE expert GEMMs for GPUs without FP4 tensor cores (Hopper, Ada, consumer Blackwell):
// the weights are dequantized to FP16 in registers and multiplied in FP16 with FP32 accumulation.
//
//   moe_nvfp4_gate_up: out[r, :I] = act(x[row_token[r]] . gate_e^T) * (x[row_token[r]] . up_e^T)
//                      act = SiLU (activation 0) or GELU, tanh form (1): common.cuh silu_f / gelu_tanh_f
//   moe_nvfp4_down:    out[r, :H] = (h[r] . down_e^T) * row_weight[r]      (row_weight optional)
// for every permuted row r of every expert e, rows of e = expert_offsets[e] .. expert_offsets[e+1]-1.
// Weights in the ModelOpt NVFP4 layout, stacked over experts (impbench/nvfp4.py): codes uint8
// [E, N, K/2] (low nibble = even k), e4m3 block scales [E, N, K/16], fp32 global scale [E].
//
// Tile geometry. One launch covers every expert; a block of 8 warps computes
//   token tile  = up to BT = 64 consecutive permuted rows of ONE expert (a tile never straddles two)
//   x weight tile = 256 rows of that expert's weight (gate_up: 128 gate rows + the matching 128 up rows,
//                   so the act(gate) * up epilogue has both operands of an output in one thread; down: 256
//                   output columns),
// over K in stages of BK = 128 (3-stage pipeline). Each warp owns 32 of the 256 weight rows for all the
// tile's tokens (gate_up: 16 gate + the matching 16 up rows): it copies its share of every stage (codes,
// scales, token rows), decodes the A fragments of its rows and issues their MMAs -- mma.sync m16n8k16 on
// 2 m16 tiles x the tile's NTA n8 tiles (cvt), or its 16-row part of a warpgroup's wgmma m64 tiles (the wg
// section) -- then writes its columns through shared memory in 16-byte row segments.
// The grid is sized from static shapes only (every possible token tile: floor((R + min(E,R)*(BT-1))/BT)
// slots x weight-row tiles); each block locates its tile by a prefix sum over expert_offsets, read
// on the device, and a block whose slot is past the last tile exits at once. Capture-safe: no
// allocation, no host read, no atomics (every output element is written by exactly one thread).
//
// Why this shape ("swap AB"): the weights are the MMA A operand (M = weight rows) and the tokens the N
// operand, so a tile of 33 tokens pays for 40 (n8 granularity), not 48 or 64; and each weight byte is
// copied, dequantized and fed to the tensor cores exactly once per token tile, straight into an A
// fragment. 256 rows x at most 64 tokens is at most 64 FP32 accumulators per thread: 128 registers,
// 2 blocks (16 warps) per SM.
//
// K order inside a BK = 128 stage is permuted, identically for both operands (a dot product does not
// care): thread t of a quad (lane = 4g + t) owns k in [32t, 32t+32) of the stage, i.e. one 16-byte
// run of codes per weight row and exactly two e4m3 scales. Word i (8 nibbles, k = 32t+8i .. +7) is
// decoded through the hardware e4m3 -> f16 conversion (e2m1_hi_as_e4m3): MMA step p = 0 takes nibble
// pairs (1,3),(0,2), step p = 1 (5,7),(4,6), each times the block scale * 2^6 (an exact FP16 product).
// The activations are brought into the matching pair order once per stage (in shared memory, or stored
// so: kperm), so a B fragment is an aligned register pair of one 16-byte shared load. The global scale
// is applied in FP32 at the end.
//
// The K loop is specialized on NTA (chosen per block): with no branch inside, each stage is one basic
// block the compiler software-pipelines -- shared loads, MMA dependency chains and the next word's decode
// interleave, which a per-n8-tile branch would serialize.
//
// Variants (the traits structs below; impbench/kernels/moe.py VARIANTS is the same table and
// choose_variant picks one per GPU and layer):
//   cvt  mma.sync; cp.async pipeline with a block barrier per stage. Any sm_89+ GPU.
//   wgq  wgmma.mma_async (sm_90a), activations in natural order: each thread permutes the token-tile
//        units it copied before the stage's barrier.
//   wgp  wgq with x / h stored K-permuted (kperm_slot; gate_up writes h so): copies land in place, no
//        permute, and stages are handed over by mbarriers instead of block barriers.
//   wgb  wgp on tile-major expert weights (moe.tile_experts): a stage's codes are one contiguous 16 KiB,
//        copied by one TMA bulk copy.
// Earlier variants and their measurements: git history and docs/notes/moe.md.
#include "common.cuh"
#include "hopper_async.cuh"
#include "wgmma.cuh"
#include "nvfp4_tiles.cuh"

namespace impmoe {

constexpr int BT = 64;             // tokens per tile (8 n8 mma tiles)
constexpr int BK = 128;            // K per pipeline stage
constexpr int STAGES = 3;
constexpr int ROWS = 256;          // weight rows per block (8 warps x 32 rows)
constexpr int CODE_STAGE = ROWS * BK / 2;     // 16384 bytes
constexpr int SCALE_STAGE = ROWS * BK / 16;   // 2048 bytes
constexpr int X_STAGE = BT * BK * 2;          // 16384 bytes
constexpr int STAGE_BYTES = CODE_STAGE + SCALE_STAGE + X_STAGE;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;  // 104448: impbench/kernels/moe.py SMEM_BYTES
static_assert((BT * (256 + 8) * 2) <= SMEM_BYTES, "epilogue staging must fit in the pipeline buffers");
constexpr int WARPS = 8;           // per block, every variant
constexpr int MT = 2;              // cvt: m16 tiles per warp (gate_up: one gate, one up)

// What a variant is: its tensor-core instruction, and the order in which it finds its operands in memory.
//   wgmma  wgmma.mma_async with A from registers (sm_90a; a trap elsewhere), else mma.sync m16n8k16
//   kperm  x and h stored K-permuted (kperm_slot) and gate_up writes h so (wgmma only)
//   tiled  expert weights stored tile-major, one bulk copy per stage (kperm too: its mbarriers)
struct VariantCvt {
    static constexpr bool wgmma = false, kperm = false, tiled = false;
};
struct VariantWgq {
    static constexpr bool wgmma = true, kperm = false, tiled = false;
};
struct VariantWgp {
    static constexpr bool wgmma = true, kperm = true, tiled = false;
};
struct VariantWgb {
    static constexpr bool wgmma = true, kperm = true, tiled = true;
};

// 16-byte copy of the weight stream with a 128-byte L2 prefetch: a quad reads 64 bytes of a weight
// row per stage, the next stage's 64 bytes are the other half of the same 128-byte line.
// Copies to 32-bit shared addresses (cheaper to form than generic pointers in the K loop).
__device__ __forceinline__ void cp_async16_l2(unsigned dst, const void *gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global.L2::128B [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async16s(unsigned dst, const void *gmem, int src_bytes) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}

__device__ __forceinline__ void cp_async4(unsigned dst, const void *gmem, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem), "r"(src_bytes));
}

// The gate_up epilogue's activation of the gate, `act` a kernel argument (uniform over the grid, so the
// branch never diverges): 0 SiLU (Qwen3), 1 GELU with the tanh form (Gemma-4); impbench/kernels/moe.py
// ACTIVATIONS lists them in this order. common.cuh's MUFU forms: a few FP32 ulp, far below the FP16
// rounding of the output.
__device__ __forceinline__ float gate_act(float gate, int act) { return act ? gelu_tanh_f(gate) : silu_f(gate); }

// e4m3 byte b (replicated into both bytes of a 16-bit value) -> half2(b, b); exact.
__device__ __forceinline__ unsigned e4m3_pair(unsigned bb) {
    unsigned d;
    asm("{ .reg .b16 t; cvt.u16.u32 t, %1; cvt.rn.f16x2.e4m3x2 %0, t; }" : "=r"(d) : "r"(bb));
    return d;
}

// Physical 16-byte unit of logical unit u (0..15) in activation row `row` of a stage: the 8 rows x
// 4 quads reading units 4t+i (fixed i) hit 8 distinct bank groups per quarter warp.
__device__ __forceinline__ int xswz(int u, int row) { return u ^ (((u >> 3) & 1) << 1) ^ (row & 1); }

struct Tile {
    int expert, row0, rows;  // expert -1: this block has no tile
};

// Token tile number `slot` in expert order (expert e has ceil(count_e / BT) tiles), from the device
// array of expert offsets. All threads of the block call it; it ends in a barrier.
template <int NT>
__device__ __forceinline__ Tile find_tile(const int *__restrict__ offsets, int num_experts, int slot,
                                          int *s_warp, int *s_tile) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) s_tile[0] = -1;
    int before = 0;  // tiles of the experts in earlier rounds
    for (int e0 = 0; e0 < num_experts && before <= slot; e0 += NT) {
        const int e = e0 + threadIdx.x;
        int start = 0, count = 0;
        if (e < num_experts) {
            start = offsets[e];
            count = max(offsets[e + 1] - start, 0);
        }
        const int tiles = (count + BT - 1) / BT;
        int incl = tiles;
#pragma unroll
        for (int d = 1; d < 32; d <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, incl, d);
            if (lane >= d) incl += v;
        }
        if (lane == 31) s_warp[warp] = incl;
        __syncthreads();
        int total = 0;
#pragma unroll
        for (int w = 0; w < NT / 32; ++w) {
            const int v = s_warp[w];
            incl += w < warp ? v : 0;
            total += v;
        }
        const int first = before + incl - tiles;
        if (slot >= first && slot < first + tiles) {
            const int index = slot - first;
            s_tile[0] = e;
            s_tile[1] = start + index * BT;
            s_tile[2] = min(BT, count - index * BT);
        }
        before += total;
        __syncthreads();
    }
    Tile tile;
    tile.expert = s_tile[0];
    tile.row0 = s_tile[1];
    tile.rows = s_tile[2];
    return tile;
}

// What the K loop of a tile needs from the block prologue (moe_body).
struct Ctx {
    const half_t *x;
    const float *w_scale2;
    half_t *out;
    const unsigned char *wq, *wsc;  // this expert's codes and scales
    const int *s_src;               // shared: source row of each token of the tile (not kperm)
    const int *row_token;           // kperm: source rows in global memory (gate_up; down: null, rows are their own)
    unsigned bars;                  // kperm: shared address of the full[STAGES], empty[STAGES] mbarriers (moe_body)
    const float *s_rw;              // shared: router weight of each token (1 without)
    Tile tile;
    int n0, k, kb, ks, n_out;
    int act;                        // gate_up: the activation of the gate (gate_act)
    unsigned code_off, scale_off, valid;
};

// The mma.sync K loop and epilogue of one tile (cvt), NTA (n8 token tiles with rows, 1..8) fixed.
// Pipeline: cp.async, 3 stages of BK = 128 (codes 16 KiB + scales 2 KiB + activations 16 KiB); copies are
// tid-contiguous 16-byte pieces (4-byte for scales) of block rows, activation rows gathered through
// row_token (gate_up) into XOR-swizzled rows so 8 token rows x 4 quads read conflict-free. 102 KiB
// shared per block. Requires K % 64 == 0 and N % 16 == 0 (impbench/kernels/moe.py checks).
template <bool GATE_UP, int NTA>
__device__ __noinline__ void moe_tile(const Ctx &cx) {
    constexpr int NT = 32 * WARPS;
    constexpr int XC = BT * (BK / 8) / NT;
    constexpr int COLS = GATE_UP ? ROWS / 2 : ROWS;
    constexpr int CC = ROWS * (BK / 32) / NT;
    constexpr int SC = ROWS * (BK / 64) / NT;
    extern __shared__ __align__(16) unsigned char smem[];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const half_t *x = cx.x;
    const Tile tile = cx.tile;
    const int n0 = cx.n0, k = cx.k, kb = cx.kb, ks = cx.ks, n_out = cx.n_out;
    const unsigned char *wq = cx.wq, *wsc = cx.wsc;
    const int *s_src = cx.s_src;
    const float *s_rw = cx.s_rw;
    const unsigned code_off = cx.code_off, scale_off = cx.scale_off, valid = cx.valid;
    auto row_delta = [&](int first) { return GATE_UP && first >= 128 ? n_out - 128 + first : first; };
    const unsigned s_base = smem_u32(smem);
    auto issue = [&](int chunk, int stage) {
        const unsigned sc = s_base + stage * STAGE_BYTES, ss = sc + CODE_STAGE, sx = ss + SCALE_STAGE;
        // A copy past N or K reads 0 bytes from an address inside the expert.
        const bool kc_ok = chunk * (BK / 2) + (tid & 3) * 16 < kb;
#pragma unroll
        for (int j = 0; j < CC; ++j) {
            const bool ok = kc_ok && (valid >> j & 1);
            const unsigned off = code_off + row_delta((NT / 4) * j) * kb + chunk * (BK / 2);
            cp_async16_l2(sc + (tid + NT * j) * 16, wq + (ok ? off : 0u), ok ? 16 : 0);
        }
#pragma unroll
        for (int j = 0; j < SC; ++j) {
            const bool ok = chunk * (BK / 16) + (tid & 1) * 4 < ks && (valid >> (8 + j) & 1);
            const unsigned off = scale_off + row_delta((NT / 2) * j) * ks + chunk * (BK / 16);
            cp_async4(ss + (tid + NT * j) * 4, wsc + (ok ? off : 0u), ok ? 4 : 0);
        }
        const int u = tid & 15, row0 = tid >> 4;
        const bool kx_ok = chunk * BK + u * 8 < k;
        const unsigned dx = sx + row0 * 256 + (xswz(u, row0) << 4);  // (NT/16) * j keeps the row parity
#pragma unroll
        for (int j = 0; j < XC; ++j) {
            const int row = row0 + (NT / 16) * j;
            if ((NT / 16) * j < NTA * 8) {  // whole groups of rows past the tile are never read
                const bool ok = kx_ok && row < tile.rows;
                cp_async16s(dx + (NT / 16) * j * 256, x + (ok ? (unsigned)(s_src[row] * k + chunk * BK + u * 8) : 0u),
                            ok ? 16 : 0);
            }
        }
    };
    // Block row of the warp's m16 tile mt, half r (quad row g added by the caller).
    auto br_of = [&](int mt, int r) {
        return GATE_UP ? (mt / (MT / 2)) * 128 + (warp * (MT / 2) + mt % (MT / 2)) * 16 + r * 8
                       : (warp * MT + mt) * 16 + r * 8;
    };

    float acc[MT][NTA][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NTA; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[mt][nt][c] = 0.0f;

    auto compute = [&](int stage) {
        const unsigned char *sc = smem + stage * STAGE_BYTES;
        const unsigned char *ss = sc + CODE_STAGE;
        const unsigned char *sx = smem + stage * STAGE_BYTES + CODE_STAGE + SCALE_STAGE;
        unsigned sraw[MT][2];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r)
                sraw[mt][r] = *reinterpret_cast<const unsigned short *>(ss + (br_of(mt, r) + g) * 8 + 2 * t);
        // Code words per basic block: all 4 for small tiles; fewer for larger ones, whose 4-word
        // schedule runs out of the 128 registers (2 blocks x 256 threads per SM).
        constexpr int WORDS = NTA <= 4 ? 4 : NTA <= 5 ? 2 : 1;
#pragma unroll 1
        for (int i0 = 0; i0 < 4; i0 += WORDS) {
            unsigned q[MT][2][WORDS];  // the thread's code words i0 .. i0+WORDS-1 of each of its rows
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const unsigned char *src = sc + (br_of(mt, r) + g) * 64 + t * 16 + i0 * 4;
                    if constexpr (WORDS == 4) {
                        const uint4 v = *reinterpret_cast<const uint4 *>(src);
                        q[mt][r][0] = v.x, q[mt][r][1] = v.y, q[mt][r][2] = v.z, q[mt][r][3] = v.w;
                    } else if constexpr (WORDS == 2) {
                        const uint2 v = *reinterpret_cast<const uint2 *>(src);
                        q[mt][r][0] = v.x, q[mt][r][1] = v.y;
                    } else {
                        q[mt][r][0] = *reinterpret_cast<const unsigned *>(src);
                    }
                }
#pragma unroll
        for (int i1 = 0; i1 < WORDS; ++i1) {
            const int i = i0 + i1;
            unsigned a[2][MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const unsigned word = q[mt][r][i1];
                    // words 0-1 are the thread's first 16-value block, 2-3 its second; x 2^7 keeps
                    // typical products in the FP16 normal range (undone in the epilogue).
                    const unsigned s = hmul2(e4m3_pair(__byte_perm(sraw[mt][r], 0, i < 2 ? 0x0000 : 0x1111)),
                                             0x54005400u);  // x 2^6
                    // a = E2M1 value * scale, exactly
                    const unsigned hi = e2m1_hi_as_e4m3(word), lo = e2m1_lo_as_e4m3(word);
                    a[0][mt][r] = hmul2(e4m3x2_half<false>(hi), s);      // nibbles (1, 3)
                    a[0][mt][r + 2] = hmul2(e4m3x2_half<false>(lo), s);  // (0, 2)
                    a[1][mt][r] = hmul2(e4m3x2_half<true>(hi), s);       // (5, 7)
                    a[1][mt][r + 2] = hmul2(e4m3x2_half<true>(lo), s);   // (4, 6)
                }
            }
#pragma unroll
            for (int nt = 0; nt < NTA; ++nt) {
                    const int row = nt * 8 + g;
                    const uint4 xv = *reinterpret_cast<const uint4 *>(sx + row * 256 + (xswz(4 * t + i, row) << 4));
                    unsigned b[2][2];  // p=0: elements (1, 3), (0, 2); p=1: (5, 7), (4, 6), as a
                    b[0][0] = xv.x, b[0][1] = xv.y, b[1][0] = xv.z, b[1][1] = xv.w;
#pragma unroll
                    for (int p = 0; p < 2; ++p)
#pragma unroll
                        for (int mt = 0; mt < MT; ++mt) mma_16816(acc[mt][nt], a[p][mt], b[p]);
            }
        }
        }
    };

    const int chunks = (k + BK - 1) / BK;
#pragma unroll 1
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < chunks) issue(s, s);
        cp_async_commit();
    }
#pragma unroll 1
    for (int c = 0; c < chunks; ++c) {
        cp_async_wait<STAGES - 2>();
        {  // reorder the activation units this thread copied into mma B-fragment order --
           // (e1,e3,e0,e2,e5,e7,e4,e6) -- so each fragment is an aligned register pair of one 16-byte load
            const unsigned char *sx = smem + (c % STAGES) * STAGE_BYTES + CODE_STAGE + SCALE_STAGE;
            const int row0 = tid >> 4, u = xswz(tid & 15, tid >> 4);
#pragma unroll
            for (int j = 0; j < XC; ++j) {
                if ((NT / 16) * j < NTA * 8) {
                    uint4 *unit = reinterpret_cast<uint4 *>(const_cast<unsigned char *>(sx) + (row0 + (NT / 16) * j) * 256 + (u << 4));
                    const uint4 v = *unit;
                    *unit = make_uint4(__byte_perm(v.x, v.y, 0x7632), __byte_perm(v.x, v.y, 0x5410),
                                       __byte_perm(v.z, v.w, 0x7632), __byte_perm(v.z, v.w, 0x5410));
                }
            }
        }
        __syncthreads();
        const int next = c + STAGES - 1;
        if (next < chunks) issue(next, next % STAGES);
        cp_async_commit();
        compute(c % STAGES);
    }
    cp_async_wait<0>();
    __syncthreads();

    // Epilogue: scale, activate, stage the [tokens x COLS] FP16 tile in shared memory, then write
    // whole 16-byte row segments.
    constexpr int STRIDE = COLS + 8;  // halfs; 16-byte aligned rows, conflict-free 2-byte stores
    half_t *so = reinterpret_cast<half_t *>(smem);
    const float f = cx.w_scale2[tile.expert];
#pragma unroll
    for (int nt = 0; nt < NTA; ++nt) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int tok = nt * 8 + 2 * t + (c & 1);
                if (GATE_UP) {
#pragma unroll
                    for (int mt = 0; mt < MT / 2; ++mt) {
                        const float gate = acc[mt][nt][c] * f, up = acc[mt + MT / 2][nt][c] * f;
                        so[tok * STRIDE + (warp * (MT / 2) + mt) * 16 + (c >> 1) * 8 + g] =
                            f2h(gate_act(gate, cx.act) * up);
                    }
                } else {
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt)
                        so[tok * STRIDE + (warp * MT + mt) * 16 + (c >> 1) * 8 + g] = f2h(acc[mt][nt][c] * f * s_rw[tok]);
                }
            }
    }
    __syncthreads();
    constexpr int UNITS = COLS / 8;
    for (int idx = tid; idx < tile.rows * UNITS; idx += NT) {
        const int tok = idx / UNITS, u = idx % UNITS, col = n0 + u * 8;
        if (col < n_out)
            *reinterpret_cast<uint4 *>(cx.out + (size_t)(tile.row0 + tok) * n_out + col) =
                *reinterpret_cast<const uint4 *>(so + tok * STRIDE + u * 8);
    }
}

// ---------------------------------------------------------------------------------------------
// wgmma variants (sm_90a): the same tiles and decode, but the tensor-core work is wgmma.mma_async
// with A (the decoded weights) from registers and B (the token tile) from shared memory.
//
// Why: with mma.sync a warp issues, per 256-row stage, 64-96 HMMA and their B-fragment shared loads on
// top of the decode, and each HMMA chain waits on it. Here a warpgroup (4 warps, 64 weight rows per m64
// tile) issues one wgmma per m64 tile per k16 step for all the tile's tokens (N = 8 * NTA), B straight
// from shared memory, asynchronously: the decode of step s+1 runs while the tensor cores do step s.
//
// Roles: warp w (0..7), warpgroup wg = w / 4. Block rows 128 * mt + 16 * w + {g, g + 8}: m64 tile mt of
// warpgroup wg = block rows 128 * mt + 64 * wg + [0, 64). gate_up: mt 0 = gate, mt 1 = the matching up
// rows, so act(gate) * up pairs accumulators of one thread; down: mt 0 / 1 = output columns
// n0 + [0, 128) / [128, 256). Per thread 2 x 4 * NTA FP32 accumulators (the mma.sync C layout per n8).
// The A register fragment of wgmma m64nNk16 is, per warp, the m16n8k16 A fragment of its 16 rows, so
// each k16 step s = 2i + p of a stage takes the same (nibble pair, scale) registers as the mma.sync
// kernel (pairs (1,3),(0,2) for p = 0, (5,7),(4,6) for p = 1).
//
// Token tile in shared memory: K-major, 128-byte swizzle (the layout of gemm_fp16.cu's wgmma kernels):
// two 8 KiB atoms per stage (logical k 0-63, 64-127), token row n at n * 128 bytes, 16-byte unit u at
// (u ^ (n & 7)) * 16. Logical unit L of a row holds, for k16 step s = L / 2 and c = L % 2, the halves
// the quad's threads t = 0..3 pair with their A registers: word t = physical k 32t + 8i + (pair of (p, c)).
// Thread (row n, word i) copies physical units i, 4 + i, 8 + i, 12 + i into logical slots 4i .. 4i+3
// and, once they landed, permutes those four slots in place (its own copies: no barrier between) into
// the logical order, then fences (generic -> async proxy) before the barrier that publishes the stage.
// Shared layout: WQ_STAGE below.
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define IMPMOE_HAS_WGMMA 1
namespace wg {

constexpr int X_BYTES = BT * BK * 2;              // 16384: two 128-byte-swizzle atoms of 64 rows
constexpr int ATOM = BT * 128;                    // 8192
constexpr int C_OFF = X_BYTES;                    // codes after the token tile in a stage
// stage = token tile + codes (32 KiB), 3 stages; scales in a ring of 2 slots of 16 bytes per row
// (two stages each) after the stages; the base is aligned to 1024 bytes.
constexpr int WQ_STAGE = X_BYTES + CODE_STAGE;             // 32768
constexpr int WQ_RING = STAGES * WQ_STAGE;                 // offset of the scale ring
constexpr int WQ_SMEM = WQ_RING + 2 * ROWS * 16 + 1024;    // impbench/kernels/moe.py WG_SMEM_BYTES
static_assert(2 * (WQ_SMEM + 2048) <= 228 * 1024, "two blocks per SM (static shared and the per-block reserve included)");

using namespace impasync;  // mbarriers, TMA bulk copies, wgmma forms, fences and groups, smem_desc

// kperm: the order of K inside each 128-wide block in which the wgmma kernels consume a token row --
// logical unit L = 4 i + q (16 bytes) holds, for j = 0..3, halves H[q] = {1,3}, {0,2}, {5,7}, {4,6} of
// physical unit i + 4 j (what `permute` builds in shared memory). The kperm variants take x (gate_up) and
// h (down) already in this order (impbench/kernels/moe.py kperm_order) and their gate_up writes h in it.
// kperm_slot(p): the logical position of physical position p (0..127).
__device__ __forceinline__ int kperm_slot(int p) {
    const int unit = p >> 3, e = p & 7;
    const int q = 2 * (e >> 2) + ((e & 1) ^ 1), h = (e >> 1) & 1;
    return 8 * (4 * (unit & 3) + q) + 2 * (unit >> 2) + h;
}

// The K loop and epilogue of one tile, NTA (n8 token tiles, 1..8) fixed: wgmma N = 8 * NTA.
template <bool GATE_UP, class V, int NTA>
__device__ __forceinline__ void tile_wg(const Ctx &cx) {
    constexpr int NT = 256, N = 8 * NTA;
    constexpr int COLS = GATE_UP ? ROWS / 2 : ROWS;
    constexpr int WORDS = NTA <= 6 ? 4 : 2;    // code words loaded at once (registers: 2 blocks per SM)
    extern __shared__ __align__(1024) unsigned char smem_raw[];
    const unsigned raw = smem_u32(smem_raw);
    const unsigned s_base = align1024(raw);
    unsigned char *smem = smem_raw + (s_base - raw);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const Tile tile = cx.tile;
    const int n0 = cx.n0, k = cx.k, kb = cx.kb, n_out = cx.n_out;

    // cp.async weight copies (not tiled): thread (row qr = tid / 4, piece qp = tid % 4) copies piece qp of block rows
    // qr + 64 j, j = 0..3, so one instruction reads 8 rows x 64 contiguous bytes (one L2 request of two
    // sectors per row); piece P of row r in slot P ^ (r & 2) (the stores stay 512 contiguous bytes, the
    // quads' reads conflict-free). Scales: thread tid copies 16 bytes of block row tid every second stage
    // into a 2-slot ring (4-byte pieces where ks is not a multiple of 16).
    const int qr = tid >> 2, qp = tid & 3;
    const unsigned char *qsrc[4];
    unsigned qok = 0;  // bit j: row qr + 64 j exists
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const int br = qr + 64 * j;
        const int qcol = n0 + (GATE_UP ? (br & 127) : br);
        const bool ok = qcol < n_out;
        qok |= ok ? 1u << j : 0u;
        if (V::tiled)  // tile-major: the block's 256 rows x 64 bytes of a stage are one contiguous 16 KiB (full tiles)
            qsrc[j] = cx.wq + (unsigned)(n0 / COLS) * (ROWS * kb) + (unsigned)br * 64 + 16 * qp;
        else
            qsrc[j] = cx.wq + (ok ? (unsigned)(GATE_UP && br >= 128 ? n_out + qcol : qcol) * kb : 0u) + 16 * qp;
    }
    const unsigned qdst = C_OFF + qr * 64 + (((unsigned)qp ^ (qr & 2)) << 4);  // the slot of piece qp
    const int col = n0 + (GATE_UP ? (tid & 127) : tid);
    const bool w_ok = col < n_out;
    const unsigned char *scale_src =  // tiled: 256 rows x 16 bytes (two stages) contiguous, the tile's pairs in order
        V::tiled ? cx.wsc + (unsigned)(n0 / COLS) * (ROWS * cx.ks) + tid * 16
              : cx.wsc + (w_ok ? (unsigned)(GATE_UP && tid >= 128 ? n_out + col : col) * cx.ks : 0u);
    const bool scale16 = cx.ks % 16 == 0;

    // Token-tile copies: this thread's row xn (row block xw of 8 rows, so warps past the tile skip
    // whole) and word xi; slots 4 * xi + j of row xn get physical unit 4j + xi. Row blocks alternate
    // between the warpgroups (warp 0, 4, 1, 5, ... take blocks 0, 1, 2, 3, ...): with blocks 0..3 on
    // warpgroup 0 alone, a tile of <= 32 tokens gave it all the copy and permute work, and warpgroup 1
    // waited for it at every stage's barrier.
    const int xw = 2 * (warp & 3) + (warp >> 2);
    const int xn = (tid & 7) + 8 * xw, xi = (tid >> 3) & 3;
    const bool x_row = xw < NTA;
    const bool x_ok = xn < tile.rows;
    const unsigned x_off = !V::kperm && x_ok ? (unsigned)cx.s_src[xn] * (2u * k) + 16u * xi : 0u;  // bytes (kperm: unused)
    const unsigned char *x_bytes = reinterpret_cast<const unsigned char *>(cx.x);
    unsigned x_dst[4];  // byte offsets of this thread's slots in a stage's token tile
#pragma unroll
    for (int j = 0; j < 4; ++j) x_dst[j] = (xi >> 1) * ATOM + xn * 128 + ((((xi & 1) * 4 + j) ^ (xn & 7)) << 4);

    // kperm: x is stored K-permuted (kperm below), so logical unit L of a row is its 16 bytes at
    // 16 L: unit idx = tid + 256 m (m < XU) of the tile's 16 * 8 * NTA is copied by this thread, straight
    // into its swizzled slot, and no thread permutes. Every thread copies: no warpgroup waits for another.
    constexpr int XU = V::kperm ? (NTA + 1) / 2 : 1;
    const int pl = tid & 15, pn = tid >> 4;  // unit and first row (row pn + 16 m for copy m)
    const unsigned p_dst = (pl >> 3) * ATOM + pn * 128 + (((pl & 7) ^ (pn & 7)) << 4);  // + 2048 m
    unsigned p_src[XU];  // byte offset of copy m's unit in x (chunk 0), or ~0u: no row (zero-fill)
#pragma unroll
    for (int m = 0; m < XU; ++m) {  // straight from global memory: no barrier between find_tile and the first copies
        const int n = pn + 16 * m, r = tile.row0 + n;
        p_src[m] = n < tile.rows ? (unsigned)(cx.row_token ? cx.row_token[r] : r) * (2u * k) + 16u * pl : ~0u;
    }

    // Token-tile copies of `chunk` into the token tile at shared address sb. A piece past K (the second
    // half of a K % 128 == 64 tail stage) reads 0 bytes from the first half's address, so every address
    // stays inside its row.
    auto issue_x = [&](int chunk, unsigned sb) {
        if constexpr (V::kperm) {  // K % 128 == 0 (impbench/kernels/moe.py): no tail stage
#pragma unroll
            for (int m = 0; m < XU; ++m) {
                if (pn + 16 * m < 8 * NTA) {
                    const bool ok = p_src[m] != ~0u;
                    cp_async16s(sb + p_dst + 2048 * m, x_bytes + (ok ? p_src[m] + chunk * (BK * 2) : 0u), ok ? 16 : 0);
                }
            }
        } else if (x_row) {
            const bool xhi_ok = x_ok && chunk * BK + BK / 2 < k;
            const unsigned char *xs = x_bytes + (x_ok ? x_off + chunk * (BK * 2) : 0u);
            const unsigned char *xh = xs + (xhi_ok ? BK : 0);
            cp_async16s(sb + x_dst[0], xs, x_ok ? 16 : 0);
            cp_async16s(sb + x_dst[1], xs + 64, x_ok ? 16 : 0);
            cp_async16s(sb + x_dst[2], xh, xhi_ok ? 16 : 0);
            cp_async16s(sb + x_dst[3], xh + 64, xhi_ok ? 16 : 0);
        }
    };
    // Weight copies of `chunk` (codes, and the scales of an even chunk and the next) into pipeline stage
    // `stage`; issue(): and its token tile.
    auto issue_w = [&](int chunk, int stage) {
        if constexpr (V::tiled) {  // one TMA copy per stage (and scale pair), completing on the stage's full mbarrier
            if (tid == 0) {
                const bool scales = (chunk & 1) == 0;
                const unsigned bar = cx.bars + 8 * stage;
                mbar_add_tx(bar, CODE_STAGE + (scales ? ROWS * 16 : 0));
                bulk_load(s_base + stage * WQ_STAGE + C_OFF, qsrc[0] - 16 * qp + chunk * CODE_STAGE, CODE_STAGE, bar);
                if (scales)
                    bulk_load(s_base + WQ_RING + ((chunk >> 1) & 1) * (ROWS * 16), scale_src + (chunk >> 1) * (ROWS * 16),
                              ROWS * 16, bar);
            }
            return;
        }
        const unsigned sb = s_base + stage * WQ_STAGE;
        const bool kq = chunk * (BK / 2) + 16 * qp < kb;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const bool ok = kq && (qok >> j & 1);
            cp_async16_l2(sb + qdst + j * 64 * 64, qsrc[j] + (ok ? chunk * (BK / 2) : 0), ok ? 16 : 0);
        }
        if ((chunk & 1) == 0) {  // scales of chunks `chunk`, `chunk + 1`: bytes 8 chunk .. + 15 of the row
            const unsigned rd = s_base + WQ_RING + ((chunk >> 1) & 1) * (ROWS * 16) + tid * 16;
            const int from = chunk * (BK / 16);
            const unsigned char *ss = scale_src + (w_ok ? from : 0);
            if (scale16) {
                cp_async16_l2(rd, ss, w_ok ? 16 : 0);
            } else {
#pragma unroll
                for (int q = 0; q < 4; ++q) {
                    const bool ok = w_ok && from + 4 * q < cx.ks;
                    cp_async4(rd + 4 * q, ss + (ok ? 4 * q : 0), ok ? 4 : 0);
                }
            }
        }
    };
    auto issue = [&](int chunk, int stage) {
        issue_w(chunk, stage);
        issue_x(chunk, s_base + stage * WQ_STAGE);
    };
    // Permute this thread's four landed slots into the logical order (see the section comment):
    // slot 4i + 2p + c = pair (p, c) of each of the four physical units, unit of quad thread t -> word t.
    auto permute = [&](unsigned char *sx) {  // sx: the stage's token tile
        if constexpr (!V::kperm) {
            if (!x_row) return;
            uint4 v[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = *reinterpret_cast<const uint4 *>(sx + x_dst[j]);
            uint4 out[4];  // p 0, c 0: halves (1, 3); c 1: (0, 2); p 1, c 0: (5, 7); c 1: (4, 6)
            kperm_units(v, out);
#pragma unroll
            for (int q = 0; q < 4; ++q) *reinterpret_cast<uint4 *>(sx + x_dst[q]) = out[q];
        }
    };
    auto br_of = [&](int mt, int r) { return 128 * mt + 16 * warp + 8 * r; };  // + g

    float acc[2][N / 2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int i = 0; i < N / 2; ++i) acc[mt][i] = 0.0f;

    // One stage: sc = its codes (64 bytes per block row), ss = its scales (SROW bytes per row), x_addr =
    // shared address of its token tile.
    constexpr int SROW = 16;
    auto compute = [&](const unsigned char *sc, const unsigned char *ss, unsigned x_addr) {
        const unsigned long long d0 = smem_desc(x_addr);  // shared addresses < 256 KiB: no carry out of the field
        unsigned sraw[2][2];
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r)
                sraw[mt][r] = *reinterpret_cast<const unsigned short *>(ss + (br_of(mt, r) + g) * SROW + 2 * t);
        unsigned s01[2][2];  // half2(scale of block 0, of block 1) * 2^6 of each row
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
            for (int r = 0; r < 2; ++r) s01[mt][r] = hmul2(e4m3x2_half<false>(sraw[mt][r]), 0x54005400u);
        unsigned sh[2][2];  // half2(scale, scale) of the current 16-value block (words 0-1, then 2-3)
#pragma unroll
        for (int i0 = 0; i0 < 4; i0 += WORDS) {
            unsigned q[2][2][WORDS];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    // slot of piece t: t ^ (row & 2)
                    const unsigned char *src = sc + (br_of(mt, r) + g) * 64 + ((t ^ (g & 2)) << 4) + i0 * 4;
                    if constexpr (WORDS == 4) {
                        const uint4 v = *reinterpret_cast<const uint4 *>(src);
                        q[mt][r][0] = v.x, q[mt][r][1] = v.y, q[mt][r][2] = v.z, q[mt][r][3] = v.w;
                    } else {
                        const uint2 v = *reinterpret_cast<const uint2 *>(src);
                        q[mt][r][0] = v.x, q[mt][r][1] = v.y;
                    }
                }
#pragma unroll
            for (int i1 = 0; i1 < WORDS; ++i1) {
                const int i = i0 + i1;
                if (i == 0 || i == 2) {
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                        for (int r = 0; r < 2; ++r)
                            sh[mt][r] = __byte_perm(s01[mt][r], 0, i < 2 ? 0x1010 : 0x3232);
                }
                unsigned hi[2][2], lo[2][2];
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                    for (int r = 0; r < 2; ++r) {
                        hi[mt][r] = e2m1_hi_as_e4m3(q[mt][r][i1]);
                        lo[mt][r] = e2m1_lo_as_e4m3(q[mt][r][i1]);
                    }
#pragma unroll
                for (int p = 0; p < 2; ++p) {
                    unsigned a[2][4];  // a0 / a1: rows g / g+8, k pair c = 0; a2 / a3: c = 1
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                        for (int r = 0; r < 2; ++r) {
                            a[mt][r] = hmul2(p ? e4m3x2_half<true>(hi[mt][r]) : e4m3x2_half<false>(hi[mt][r]), sh[mt][r]);
                            a[mt][r + 2] = hmul2(p ? e4m3x2_half<true>(lo[mt][r]) : e4m3x2_half<false>(lo[mt][r]), sh[mt][r]);
                        }
                    const int s = 2 * i + p;  // k16 step: logical units 2s, 2s+1 = atom s/4, 32 bytes per step
                    const unsigned long long db = d0 + (((s >> 2) * ATOM + (s & 3) * 32) >> 4);  // address field
                    wgmma_fence();
                    wgmma_rs<N>(acc[0], a[0], db);
                    wgmma_rs<N>(acc[1], a[1], db);
                    wgmma_commit();
                    wgmma_wait<1>();  // step s-1 done: its A registers may be reused
                }
            }
        }
        wgmma_wait<0>();  // the stage's token tile may be overwritten after the next barrier
        fence_regs(acc[0]);
        fence_regs(acc[1]);
    };

    const int chunks = (k + BK - 1) / BK;
    if constexpr (V::kperm) {
        // No block barrier in the K loop: stage slot s has a `full` mbarrier (every thread arrives once its
        // own copies into the slot have landed: cp.async.mbarrier.arrive.noinc) and an `empty` one (every
        // thread arrives once its wgmma reading the slot are done). A thread waits for full[c] before
        // computing stage c, and for empty[c - 1] before copying stage c + 2 into that slot (and into the
        // scale-ring slot chunks c - 2, c - 1 used), so warps may drift up to a stage apart instead of
        // meeting at every stage. (Only kperm: wgq rewrites its token-tile slots after they land, a later event
        // than the cp.async arrival.) The mbarriers were initialized before find_tile (moe_body), and no
        // barrier precedes the first copies: the first stages' weights, which need only the tile's expert and
        // columns, go out before the token-tile copies, which wait for the row_token loads of p_src.
        const unsigned full = cx.bars, empty = full + 8 * STAGES;
#pragma unroll 1
        for (int s = 0; s < STAGES - 1 && s < chunks; ++s) issue_w(s, s);
#pragma unroll 1
        for (int s = 0; s < STAGES - 1 && s < chunks; ++s) {
            issue_x(s, s_base + s * WQ_STAGE);
            mbar_arrive_on_cp_async(full + 8 * s);
        }
#pragma unroll 1
        for (int c = 0; c < chunks; ++c) {
            const int slot = c % STAGES;
            mbar_wait(full + 8 * slot, (c / STAGES) & 1);
            fence_proxy_async();  // the landed copies (generic proxy) -> this thread's wgmma reads (async proxy)
            const int next = c + STAGES - 1;
            if (next < chunks) {
                if (c > 0) mbar_wait(empty + 8 * ((c - 1) % STAGES), ((c - 1) / STAGES) & 1);
                issue(next, next % STAGES);
                mbar_arrive_on_cp_async(full + 8 * (next % STAGES));
            }
            compute(smem + slot * WQ_STAGE + C_OFF, smem + WQ_RING + ((c >> 1) & 1) * (ROWS * 16) + (c & 1) * 8,
                    s_base + slot * WQ_STAGE);
            mbar_arrive(empty + 8 * slot);  // compute ends with wgmma_wait<0>: this thread's reads are done
        }
    } else {
#pragma unroll 1
        for (int s = 0; s < STAGES - 1; ++s) {
            if (s < chunks) issue(s, s);
            cp_async_commit();
        }
#pragma unroll 1
        for (int c = 0; c < chunks; ++c) {
            cp_async_wait<STAGES - 2>();
            unsigned char *stage = smem + (c % STAGES) * WQ_STAGE;
            permute(stage);
            fence_proxy_async();  // generic-proxy stores -> wgmma reads (async proxy)
            __syncthreads();
            const int next = c + STAGES - 1;
            if (next < chunks) issue(next, next % STAGES);
            cp_async_commit();
            compute(stage + C_OFF, smem + WQ_RING + ((c >> 1) & 1) * (ROWS * 16) + (c & 1) * 8, s_base + (c % STAGES) * WQ_STAGE);
        }
    }
    cp_async_wait<0>();
    __syncthreads();

    // Epilogue as in moe_tile: accumulator (mt, 4 nt + c) = block row br_of(mt, c >> 1) + g, token 8 nt + 2t + (c & 1).
    constexpr int STRIDE = COLS + 8;
    half_t *so = reinterpret_cast<half_t *>(smem);
    const float f = cx.w_scale2[tile.expert];
#pragma unroll
    for (int nt = 0; nt < NTA; ++nt) {
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            const int tok = nt * 8 + 2 * t + (c & 1), col = 16 * warp + (c >> 1) * 8 + g;
            if (GATE_UP) {
                const float gate = acc[0][4 * nt + c] * f, up = acc[1][4 * nt + c] * f;
                so[tok * STRIDE + (V::kperm ? kperm_slot(col) : col)] = f2h(gate_act(gate, cx.act) * up);
            } else {
#pragma unroll
                for (int mt = 0; mt < 2; ++mt)
                    so[tok * STRIDE + 128 * mt + col] = f2h(acc[mt][4 * nt + c] * f * cx.s_rw[tok]);
            }
        }
    }
    __syncthreads();
    constexpr int UNITS = COLS / 8;
    for (int idx = tid; idx < tile.rows * UNITS; idx += NT) {
        const int tok = idx / UNITS, u = idx % UNITS, col = n0 + u * 8;
        if (col < n_out)
            *reinterpret_cast<uint4 *>(cx.out + (size_t)(tile.row0 + tok) * n_out + col) =
                *reinterpret_cast<const uint4 *>(so + tok * STRIDE + u * 8);
    }
}

}  // namespace wg
#else
#define IMPMOE_HAS_WGMMA 0
#endif

// x: activations [*, k] (gate_up: token rows gathered through row_token; down: permuted rows).
// n_out: output columns (gate_up: I, the weight has 2I rows; down: H). n_tiles: ceil(n_out / COLS).
// WARPS x MT m16 tiles = 16: the block always covers 256 weight rows; gate_up warps hold MT/2 gate
// tiles and the MT/2 matching up tiles.
template <bool GATE_UP, class V>
__device__ __forceinline__ void moe_body(const half_t *__restrict__ x, const int *__restrict__ row_token,
                                         const int *__restrict__ offsets, const unsigned char *__restrict__ w,
                                         const unsigned char *__restrict__ w_scale,
                                         const float *__restrict__ w_scale2, const float *__restrict__ row_weight,
                                         half_t *__restrict__ out, int num_experts, int k, int n_out, int n_tiles,
                                         int act) {
    static_assert(WARPS * MT == ROWS / 16 && MT % 2 == 0, "256 weight rows per block, gate/up in pairs");
    static_assert(V::wgmma || !V::kperm, "the mma.sync loop reads natural-order activations");
    static_assert(!V::tiled || V::kperm, "tile-major weights complete on the kperm loop's mbarriers");
    constexpr int NT = 32 * WARPS;                    // threads
    constexpr int COLS = GATE_UP ? ROWS / 2 : ROWS;   // output columns per block
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int s_warp[NT / 32], s_tile[3], s_src[BT];
    __shared__ float s_rw[BT];
    __shared__ __align__(8) unsigned long long s_bars[2 * STAGES];  // kperm: full[STAGES], empty[STAGES]
    const int tid = threadIdx.x;
#if IMPMOE_HAS_WGMMA  // the fence is sm_90 PTX; kperm variants are wgmma ones, a trap below elsewhere
    if (V::kperm && tid == 0) {  // published by find_tile's barriers
#pragma unroll
        for (int i = 0; i < 2 * STAGES; ++i) impasync::mbar_init(smem_u32(s_bars) + 8 * i, NT);
        asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
    }
#endif

    const int n_tile = blockIdx.x % n_tiles, slot = blockIdx.x / n_tiles;
    const Tile tile = find_tile<NT>(offsets, num_experts, slot, s_warp, s_tile);
    if (tile.expert < 0) return;

    if (tid < tile.rows) {
        const int r = tile.row0 + tid;
        if (!V::kperm) s_src[tid] = GATE_UP ? row_token[r] : r;
        s_rw[tid] = row_weight ? row_weight[r] : 1.0f;
    }
    if (!V::kperm) __syncthreads();  // kperm reads row_token itself; s_rw is read after the epilogue's barrier

    const int n0 = n_tile * COLS;
    const int kb = k / 2, ks = k / 16;  // code and scale bytes per weight row
    const size_t n_rows = GATE_UP ? 2 * (size_t)n_out : (size_t)n_out;
    const unsigned char *wq = w + (size_t)tile.expert * n_rows * kb;  // this expert's weight
    const unsigned char *wsc = w_scale + (size_t)tile.expert * n_rows * ks;
    const int nt_act = (tile.rows + 7) >> 3;  // n8 token tiles with rows

    // Shared layouts (per stage), linear in the block row br so copies are tid-contiguous:
    //   codes  br * 64 + 16 * piece, scales br * 8 + byte, activations row * 256 + swizzled 16-byte unit.
    // Block row br: gate_up 0..127 gate rows n0+br, 128..255 the up rows of the same columns;
    // down n0+br. The warp's m16 tile mt, half r, quad row g is block row br_of(mt, r) + g.
    // Copy j of a thread is block row (its first row) + (NT/4)*j (codes) or + (NT/2)*j (scales):
    // a uniform offset per j, so the per-thread copy state is three registers.
    // A thread's copies stay in one half (gate or up) per j because its first row is < NT/4 (codes)
    // or < NT/2 (scales) <= 128 (see row_delta in moe_tile).
    auto col_of = [&](int br) { return n0 + (GATE_UP ? (br & 127) : br); };
    constexpr int CC = ROWS * (BK / 32) / NT;  // 16-byte code copies per thread and stage
    constexpr int SC = ROWS * (BK / 64) / NT;  // 4-byte scale copies
    static_assert(128 % (NT / 4) == 0 && NT / 2 <= 128, "copies of one thread stay in one half per j");
    const int code_br = tid >> 2, scale_br = tid >> 1;
    const unsigned code_off = (n0 + code_br) * kb + (tid & 3) * 16;  // copy 0; copy j adds row_delta * kb
    const unsigned scale_off = (n0 + scale_br) * ks + (tid & 1) * 4;
    unsigned valid = 0;  // bit j: code copy j has a row, bit 8 + j: scale copy j has a row
#pragma unroll
    for (int j = 0; j < CC; ++j) valid |= col_of(code_br + (NT / 4) * j) < n_out ? 1u << j : 0u;
#pragma unroll
    for (int j = 0; j < SC; ++j) valid |= col_of(scale_br + (NT / 2) * j) < n_out ? 1u << (8 + j) : 0u;

    Ctx cx;
    cx.x = x, cx.w_scale2 = w_scale2, cx.out = out, cx.wq = wq, cx.wsc = wsc, cx.s_src = s_src, cx.s_rw = s_rw;
    cx.row_token = GATE_UP ? row_token : nullptr, cx.bars = smem_u32(s_bars);
    cx.tile = tile, cx.n0 = n0, cx.k = k, cx.kb = kb, cx.ks = ks, cx.n_out = n_out;
    cx.code_off = code_off, cx.scale_off = scale_off, cx.valid = valid, cx.act = act;
    if constexpr (V::wgmma) {
#if IMPMOE_HAS_WGMMA
        switch (nt_act) {
            case 1: wg::tile_wg<GATE_UP, V, 1>(cx); break;
            case 2: wg::tile_wg<GATE_UP, V, 2>(cx); break;
            case 3: wg::tile_wg<GATE_UP, V, 3>(cx); break;
            case 4: wg::tile_wg<GATE_UP, V, 4>(cx); break;
            case 5: wg::tile_wg<GATE_UP, V, 5>(cx); break;
            case 6: wg::tile_wg<GATE_UP, V, 6>(cx); break;
            case 7: wg::tile_wg<GATE_UP, V, 7>(cx); break;
            default: wg::tile_wg<GATE_UP, V, 8>(cx); break;
        }
#else
        __trap();  // sm_90a only; impbench/kernels/moe.py never launches it elsewhere
#endif
        return;
    }
    switch (nt_act) {
        case 1: moe_tile<GATE_UP, 1>(cx); break;
        case 2: moe_tile<GATE_UP, 2>(cx); break;
        case 3: moe_tile<GATE_UP, 3>(cx); break;
        case 4: moe_tile<GATE_UP, 4>(cx); break;
        case 5: moe_tile<GATE_UP, 5>(cx); break;
        case 6: moe_tile<GATE_UP, 6>(cx); break;
        case 7: moe_tile<GATE_UP, 7>(cx); break;
        default: moe_tile<GATE_UP, 8>(cx); break;
    }
}

}  // namespace impmoe

// Entry points moe_nvfp4_gate_up<suffix> / moe_nvfp4_down<suffix>, one pair per variant (256 threads,
// 256 weight rows each; dynamic shared memory impmoe::SMEM_BYTES for cvt, impmoe::wg::WQ_SMEM for the
// wgmma variants).
// gate_up: x fp16 [T, H]; row_token int32 [R]; offsets int32 [E+1]; w13 [E, 2I, H/2]; w13_scale
// [E, 2I, H/16]; w13_scale2 fp32 [E]; out fp16 [R, I]; grid slots * n_tiles, n_tiles = ceil(I/128);
// activation: 0 SiLU, 1 GELU (tanh form) of the gate (gate_act).
// down: h fp16 [R, I]; w2 [E, H, I/2]; w2_scale [E, H, I/16]; w2_scale2 fp32 [E]; row_weight fp32 [R]
// or null; out fp16 [R, H]; grid slots * n_tiles, n_tiles = ceil(H/256).
// kperm variants take x / h K-permuted (K % 128 == 0) and gate_up writes out so; tiled ones take w13 / w2
// and their scales tile-major (H, I % 256 == 0).
#define MOE_ENTRY(SUFFIX, VARIANT)                                                                            \
    extern "C" __global__ void __launch_bounds__(32 * impmoe::WARPS, 2)                                       \
        moe_nvfp4_gate_up##SUFFIX(const half_t *x, const int *row_token, const int *offsets,                 \
                                  const unsigned char *w13, const unsigned char *w13_scale,                  \
                                  const float *w13_scale2, half_t *out, int num_experts, int hidden,         \
                                  int inter, int n_tiles, int activation) { pdl_entry();                     \
        impmoe::moe_body<true, impmoe::VARIANT>(x, row_token, offsets, w13, w13_scale, w13_scale2, nullptr,   \
                                                out, num_experts, hidden, inter, n_tiles, activation);        \
    }                                                                                                         \
    extern "C" __global__ void __launch_bounds__(32 * impmoe::WARPS, 2)                                       \
        moe_nvfp4_down##SUFFIX(const half_t *h, const int *offsets, const unsigned char *w2,                 \
                               const unsigned char *w2_scale, const float *w2_scale2, const float *row_weight, \
                               half_t *out, int num_experts, int inter, int hidden, int n_tiles) { pdl_entry(); \
        impmoe::moe_body<false, impmoe::VARIANT>(h, nullptr, offsets, w2, w2_scale, w2_scale2, row_weight,    \
                                                 out, num_experts, inter, hidden, n_tiles, 0);                \
    }

MOE_ENTRY(_cvt, VariantCvt)
MOE_ENTRY(_wgq, VariantWgq)
MOE_ENTRY(_wgp, VariantWgp)
MOE_ENTRY(_wgb, VariantWgb)
