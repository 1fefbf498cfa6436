// Grouped NVFP4 MoE expert GEMMs for Hopper, which has no FP4 tensor cores: the weights are
// dequantized in registers and multiplied with mma.sync m16n8k16 (FP16 in, FP32 accumulate).
//
//   moe_nvfp4_gate_up: out[r, :I] = SiLU(x[row_token[r]] . gate_e^T) * (x[row_token[r]] . up_e^T)
//   moe_nvfp4_down:    out[r, :H] = (h[r] . down_e^T) * row_weight[r]      (row_weight optional)
// for every permuted row r of every expert e, rows of e = expert_offsets[e] .. expert_offsets[e+1]-1.
// Weights in the ModelOpt NVFP4 layout, stacked over experts (impbench/nvfp4.py): codes uint8
// [E, N, K/2] (low nibble = even k), e4m3 block scales [E, N, K/16], fp32 global scale [E].
//
// One launch covers every expert. Block = (token tile, weight-row tile):
//   token tile  = up to BT=64 consecutive permuted rows of ONE expert (a tile never straddles two);
//   weight tile = 256 rows of that expert's weight (gate_up: 128 gate rows + the matching 128 up rows,
//                 so the SiLU*up epilogue has both operands of an output in the same thread).
// The grid is sized from static shapes only (every possible token tile: floor((R + min(E,R)*(BT-1))/BT)
// slots x weight-row tiles); each block locates its tile by a prefix sum over expert_offsets, read
// on the device, and a block whose slot is past the last tile exits at once. Capture-safe: no
// allocation, no host read, no atomics (every output element is written by exactly one thread).
//
// Why "swap AB": the weights are the mma A operand (M = weight rows) and the tokens the N operand,
// so a tile of 33 tokens pays for 40 (n8 granularity), not 48 or 64; and each weight byte is copied,
// dequantized and fed to the tensor cores by exactly one thread, straight into its A fragment.
// 4 warps; warp w owns 64 weight rows (4 m16 tiles) x all 64 tokens (8 n8 tiles, those past the
// tile's rows skipped): 128 FP32 accumulators per thread.
//
// K order inside a BK=128 stage is permuted, identically for both operands (a dot product does not
// care): thread t of a quad (lane = 4g + t) owns k in [32t, 32t+32) of the stage, i.e. one 16-byte
// load of codes per weight row and exactly two e4m3 scales. Word i (8 nibbles, k = 32t+8i .. +7) is
// decoded Marlin-style: (q << 4j) puts nibbles 3-j and 7-j at bits 12-15 / 28-31, and
// (v & 0x80008000) | ((v >> 3) & 0x0E000E00) is a half2 of (E2M1 value * 2^-14), exactly. Multiplied
// by the block scale * 2^7 (an exact FP16 product), it is an A register: mma step p=0 takes nibble
// pairs (3,7),(2,6), step p=1 (1,5),(0,4). The activation side builds the same pairs from one 16-byte
// shared load with __byte_perm. The missing 2^-7 and the global scale are applied in FP32 at the end.
//
// Pipeline: cp.async, 3 stages of BK=128 (codes 16 KiB + scales 2 KiB + activations 16 KiB), each
// thread copying exactly the code bytes it later decodes; activation rows are gathered through
// row_token (gate_up) and XOR-swizzled so the 16-byte reads of 8 token rows are conflict-free.
// 102 KiB shared, <= 255 registers: 2 blocks per SM. Requires K % 64 == 0 and N % 16 == 0.
#include "common.cuh"

namespace impmoe {

constexpr int THREADS = 128;       // 4 warps
constexpr int BT = 64;             // tokens per tile (8 n8 mma tiles)
constexpr int BK = 128;            // K per pipeline stage
constexpr int STAGES = 3;
constexpr int ROWS = 256;          // weight rows per block (4 warps x 4 m16 tiles)
constexpr int CODE_STAGE = ROWS * BK / 2;     // 16384 bytes
constexpr int SCALE_STAGE = ROWS * BK / 16;   // 2048 bytes
constexpr int X_STAGE = BT * BK * 2;          // 16384 bytes
constexpr int STAGE_BYTES = CODE_STAGE + SCALE_STAGE + X_STAGE;
constexpr int SMEM_BYTES = STAGES * STAGE_BYTES;  // 104448: impbench/kernels/moe.py SMEM_BYTES
static_assert((BT * (256 + 8) * 2) <= SMEM_BYTES, "epilogue staging must fit in the pipeline buffers");

__device__ __forceinline__ void cp_async4(void *smem, const void *gmem, int src_bytes) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(src_bytes));
}

__device__ __forceinline__ unsigned hmul2(unsigned a, unsigned b) {
    unsigned d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

// e4m3 byte b (replicated into both bytes of a 16-bit value) -> half2(b, b); exact.
__device__ __forceinline__ unsigned e4m3_pair(unsigned bb) {
    unsigned d;
    asm("{ .reg .b16 t; cvt.u16.u32 t, %1; cvt.rn.f16x2.e4m3x2 %0, t; }" : "=r"(d) : "r"(bb));
    return d;
}

// Nibbles 3-J and 7-J of q as half2(lo = nibble 3-J, hi = nibble 7-J) of E2M1 value * 2^-14.
template <int J>
__device__ __forceinline__ unsigned e2m1x2(unsigned q) {
    const unsigned v = q << (4 * J);
    return (v & 0x80008000u) | ((v >> 3) & 0x0E000E00u);
}

// Physical 16-byte unit of logical unit u (0..15) in activation row `row` of a stage: the 8 rows x
// 4 quads reading units 4t+i (fixed i) hit 8 distinct bank groups per quarter warp.
__device__ __forceinline__ int xswz(int u, int row) { return u ^ (((u >> 3) & 1) << 1) ^ (row & 1); }

struct Tile {
    int expert, row0, rows;  // expert -1: this block has no tile
};

// Token tile number `slot` in expert order (expert e has ceil(count_e / BT) tiles), from the device
// array of expert offsets. All threads of the block call it; it ends in a barrier.
__device__ __forceinline__ Tile find_tile(const int *__restrict__ offsets, int num_experts, int slot,
                                          int *s_warp, int *s_tile) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (threadIdx.x == 0) s_tile[0] = -1;
    int before = 0;  // tiles of the experts in earlier rounds
    for (int e0 = 0; e0 < num_experts && before <= slot; e0 += THREADS) {
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
        for (int w = 0; w < THREADS / 32; ++w) {
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

// x: activations [*, k] (gate_up: token rows gathered through row_token; down: permuted rows).
// n_out: output columns (gate_up: I, the weight has 2I rows; down: H). n_tiles: ceil(n_out / COLS).
template <bool GATE_UP>
__device__ __forceinline__ void moe_body(const half_t *__restrict__ x, const int *__restrict__ row_token,
                                         const int *__restrict__ offsets, const unsigned char *__restrict__ w,
                                         const unsigned char *__restrict__ w_scale,
                                         const float *__restrict__ w_scale2, const float *__restrict__ row_weight,
                                         half_t *__restrict__ out, int num_experts, int k, int n_out, int n_tiles) {
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int s_warp[THREADS / 32], s_tile[3], s_src[BT];
    __shared__ float s_rw[BT];
    constexpr int COLS = GATE_UP ? ROWS / 2 : ROWS;  // output columns per block

    const int n_tile = blockIdx.x % n_tiles, slot = blockIdx.x / n_tiles;
    const Tile tile = find_tile(offsets, num_experts, slot, s_warp, s_tile);
    if (tile.expert < 0) return;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    if (tid < tile.rows) {
        const int r = tile.row0 + tid;
        s_src[tid] = GATE_UP ? row_token[r] : r;
        s_rw[tid] = row_weight ? row_weight[r] : 1.0f;
    }
    __syncthreads();

    const int n0 = n_tile * COLS;
    const int kb = k / 2, ks = k / 16;  // code and scale bytes per weight row
    const size_t n_rows = GATE_UP ? 2 * (size_t)n_out : (size_t)n_out;
    const unsigned char *wq = w + (size_t)tile.expert * n_rows * kb;
    const unsigned char *wsc = w_scale + (size_t)tile.expert * n_rows * ks;
    const int nt_act = (tile.rows + 7) >> 3;  // n8 token tiles with rows

    // Output column of the thread's weight row (mt, r) for quad row gg; its row in the weight.
    auto out_col = [&](int mt, int r, int gg) {
        return n0 + (GATE_UP ? warp * 32 + (mt & 1) * 16 : warp * 64 + mt * 16) + r * 8 + gg;
    };
    auto weight_row = [&](int mt, int col) { return (GATE_UP && mt >= 2) ? col + n_out : col; };

    auto issue = [&](int chunk, int stage) {
        unsigned char *sc = smem + stage * STAGE_BYTES;
        unsigned char *ss = sc + CODE_STAGE;
        unsigned char *sx = ss + SCALE_STAGE;
        const int code_off = chunk * (BK / 2) + 16 * t;
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int col = out_col(mt, r, g);
                const bool ok = col < n_out && code_off < kb;
                const unsigned char *src = ok ? wq + (size_t)weight_row(mt, col) * kb + code_off : w;
                cp_async16(sc + (((warp * 4 + mt) * 2 + r) * 32 + lane) * 16, src, ok ? 16 : 0);
            }
        }
        // 8 scale bytes per weight row and stage: the quad copies the 16 words of its 8 rows.
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int idx = t * 4 + j, mt = idx >> 2, r = (idx >> 1) & 1, word = idx & 1;
            const int col = out_col(mt, r, g);
            const int off = chunk * (BK / 16) + word * 4;
            const bool ok = col < n_out && off < ks;
            const unsigned char *src = ok ? wsc + (size_t)weight_row(mt, col) * ks + off : w_scale;
            cp_async4(ss + (((warp * 4 + mt) * 2 + r) * 8 + g) * 8 + word * 4, src, ok ? 4 : 0);
        }
#pragma unroll
        for (int j = 0; j < BT / 8; ++j) {
            if (j < nt_act) {
                const int row = (tid >> 4) + 8 * j, u = tid & 15;
                const int kk = chunk * BK + u * 8;
                const bool ok = row < tile.rows && kk < k;
                const half_t *src = ok ? x + (size_t)s_src[row] * k + kk : x;
                cp_async16(sx + row * 256 + (xswz(u, row) << 4), src, ok ? 16 : 0);
            }
        }
    };

    float acc[4][8][4];
#pragma unroll
    for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[mt][nt][c] = 0.0f;

    auto compute = [&](int stage) {
        const unsigned char *sc = smem + stage * STAGE_BYTES + warp * (4 * 2 * 32 * 16);
        const unsigned char *ss = smem + stage * STAGE_BYTES + CODE_STAGE + warp * (4 * 2 * 8 * 8);
        const unsigned char *sx = smem + stage * STAGE_BYTES + CODE_STAGE + SCALE_STAGE;
        uint4 q[4][2];
        unsigned sraw[4][2];
#pragma unroll
        for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                q[mt][r] = *reinterpret_cast<const uint4 *>(sc + ((mt * 2 + r) * 32 + lane) * 16);
                sraw[mt][r] = *reinterpret_cast<const unsigned short *>(ss + ((mt * 2 + r) * 8 + g) * 8 + 2 * t);
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            unsigned a[2][4][4];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const unsigned word = i == 0 ? q[mt][r].x : i == 1 ? q[mt][r].y : i == 2 ? q[mt][r].z : q[mt][r].w;
                    // words 0-1 are the thread's first 16-value block, 2-1 its second; x 2^7 keeps
                    // typical products in the FP16 normal range (undone in the epilogue).
                    const unsigned s = hmul2(e4m3_pair(__byte_perm(sraw[mt][r], 0, i < 2 ? 0x0000 : 0x1111)),
                                             0x58005800u);
                    a[0][mt][r] = hmul2(e2m1x2<0>(word), s);
                    a[0][mt][r + 2] = hmul2(e2m1x2<1>(word), s);
                    a[1][mt][r] = hmul2(e2m1x2<2>(word), s);
                    a[1][mt][r + 2] = hmul2(e2m1x2<3>(word), s);
                }
            }
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                if (nt < nt_act) {
                    const int row = nt * 8 + g;
                    const uint4 xv = *reinterpret_cast<const uint4 *>(sx + row * 256 + (xswz(4 * t + i, row) << 4));
                    unsigned b[2][2];
                    b[0][0] = __byte_perm(xv.y, xv.w, 0x7632);  // elements (3, 7)
                    b[0][1] = __byte_perm(xv.y, xv.w, 0x5410);  // (2, 6)
                    b[1][0] = __byte_perm(xv.x, xv.z, 0x7632);  // (1, 5)
                    b[1][1] = __byte_perm(xv.x, xv.z, 0x5410);  // (0, 4)
#pragma unroll
                    for (int p = 0; p < 2; ++p)
#pragma unroll
                        for (int mt = 0; mt < 4; ++mt) mma_16816(acc[mt][nt], a[p][mt], b[p]);
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
    const float f = w_scale2[tile.expert] * 128.0f;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
        if (nt < nt_act) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int tok = nt * 8 + 2 * t + (c & 1);
                if (GATE_UP) {
#pragma unroll
                    for (int mt = 0; mt < 2; ++mt) {
                        const float gate = acc[mt][nt][c] * f, up = acc[mt + 2][nt][c] * f;
                        so[tok * STRIDE + warp * 32 + mt * 16 + (c >> 1) * 8 + g] = f2h(gate / (1.0f + __expf(-gate)) * up);
                    }
                } else {
#pragma unroll
                    for (int mt = 0; mt < 4; ++mt)
                        so[tok * STRIDE + warp * 64 + mt * 16 + (c >> 1) * 8 + g] = f2h(acc[mt][nt][c] * f * s_rw[tok]);
                }
            }
        }
    }
    __syncthreads();
    constexpr int UNITS = COLS / 8;
    for (int idx = tid; idx < tile.rows * UNITS; idx += THREADS) {
        const int tok = idx / UNITS, u = idx % UNITS, col = n0 + u * 8;
        if (col < n_out)
            *reinterpret_cast<uint4 *>(out + (size_t)(tile.row0 + tok) * n_out + col) =
                *reinterpret_cast<const uint4 *>(so + tok * STRIDE + u * 8);
    }
}

}  // namespace impmoe

// x fp16 [T, H]; row_token int32 [R]; offsets int32 [E+1]; w13 [E, 2I, H/2]; w13_scale [E, 2I, H/16];
// w13_scale2 fp32 [E]; out fp16 [R, I]. Grid: slots * n_tiles blocks of 128 threads, n_tiles = ceil(I/128).
extern "C" __global__ void __launch_bounds__(impmoe::THREADS, 2)
    moe_nvfp4_gate_up(const half_t *x, const int *row_token, const int *offsets, const unsigned char *w13,
                      const unsigned char *w13_scale, const float *w13_scale2, half_t *out, int num_experts,
                      int hidden, int inter, int n_tiles) {
    impmoe::moe_body<true>(x, row_token, offsets, w13, w13_scale, w13_scale2, nullptr, out, num_experts, hidden,
                           inter, n_tiles);
}

// h fp16 [R, I]; offsets int32 [E+1]; w2 [E, H, I/2]; w2_scale [E, H, I/16]; w2_scale2 fp32 [E];
// row_weight fp32 [R] or null; out fp16 [R, H]. Grid: slots * n_tiles blocks, n_tiles = ceil(H/256).
extern "C" __global__ void __launch_bounds__(impmoe::THREADS, 2)
    moe_nvfp4_down(const half_t *h, const int *offsets, const unsigned char *w2, const unsigned char *w2_scale,
                   const float *w2_scale2, const float *row_weight, half_t *out, int num_experts, int inter,
                   int hidden, int n_tiles) {
    impmoe::moe_body<false>(h, nullptr, offsets, w2, w2_scale, w2_scale2, row_weight, out, num_experts, inter,
                            hidden, n_tiles);
}
