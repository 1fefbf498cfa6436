// The chunked (WY) gated delta rule of Gated DeltaNet for one prefill chunk of T tokens: FP16 operands,
// FP32 accumulators and state. The algebra is impbench/reference/gated_delta.py's; per value head h
// (key head h / (Hv / Hk)) and WY chunk of C = 64 tokens, with gamma the cumulative log decay in it:
//     T   = (I + A)^{-1},  A_ij = beta_i e^{gamma_i - gamma_j} k_i . k_j  (j < i)
//     v'  = U - W S0 = T R,  R = beta (V - e^gamma K S0)       (W, U never formed: one product fewer)
//     O   = e^gamma Q S0 + Aqk v',  Aqk_ij = e^{gamma_i - gamma_j} q_i . k_j  (j <= i)
//     S_C = e^{gamma_C} S0 + K^T (e^{gamma_C - gamma} v')
// Every exponent is gamma_i - gamma_j with i >= j, gamma, or gamma_C - gamma_t: never above 0, so no
// factor exceeds 1 (e^{-gamma} on k alone would overflow on a fast-decaying head).
//
// Two kernels (impbench/kernels/gated_delta.py launches both, in this order):
//
// 1. gated_delta_prep_k<DK>: everything that does not need the state, one block of 4 warps per (WY
//    chunk, value head), all chunks at once. Q and K of the chunk go to shared memory (cp.async, rows
//    past T zero-filled); warp 0 scans g into gamma (log2 units). Warp w computes rows 16w..16w+15 of
//    K K^T and Q K^T with mma.sync m16n8k16 over the column blocks 0..w only (the rest lies above the
//    diagonal), applies the decays and beta, writes Aqk (FP16) to the workspace and A to shared memory.
//    T = (I + A)^{-1} by 16x16 blocks: the four diagonal blocks by forward substitution in FP32, one
//    thread per column (16 rows unrolled, the column in registers); then the blocks below, level by
//    level, T_IJ = -sum_K (T_II A_IK) T_KJ with FP16 MMAs (FLA's kernel merges in TF32: the same 10-bit
//    mantissa), one warp per block. Why blocks: a 64-row substitution is 2016 dependent FMAs per column;
//    the blocked form is 120 per column plus a few dozen MMAs. T and Aqk (FP16; of the 16x16 blocks only
//    those on and below the diagonal, which hold zeros above the diagonal) and (gamma, beta) per token
//    go to the workspace; rows past T are never written.
//
// 2. gated_delta_state_k<DK>_v<DV>: the sequential pass over the chunks, one block of 8 warps per (value
//    head, 32 value columns): Qwen3.6 has 32 x 4 = 128 blocks on 132 SMs. The state slice S [DK x 32]
//    lives in FP32 MMA accumulators for the whole chunk loop (DK = 128: warp w owns rows 16w..16w+15),
//    and as FP16 in shared memory as the B operand of the token-side products. Per chunk, with the next
//    chunk's Q, K, T, Aqk, V slice and (gamma, beta) loading meanwhile (cp.async, two stages): warp w
//    takes tokens 16(w % 4).. and value columns 16(w / 4)..; K S and Q S together (k = DK, one S
//    fragment for both), then the next chunk's copies, R to shared memory; v' = T R (T lower
//    triangular: column blocks <= the warp's row block only); v' and e^{gamma_C - gamma} v' to shared
//    memory; o = e^gamma Q S + Aqk v' to `out`; then every warp updates its state tiles S = e^{gamma_C} S + K^T (e^{gamma_C - gamma} v')
//    with K^T read by ldmatrix .trans. Three block barriers a chunk. After the last chunk the FP32 state
//    goes back to `state`, in place: the launch never depends on where in the prompt the chunk sits, so
//    one captured graph serves every chunk of the same length. Why this split: the per-chunk Q, K, T,
//    Aqk of a head are read by its 4 blocks from L2 (52 KB a block a chunk), and 32 columns a block is
//    what keeps 128 SMs busy; fusing the output here (FLA writes every chunk's state and reads it back
//    in a third kernel) saves those bytes.
//
// Layouts (row-major, contiguous): q, k [T, Hk, DK]; v, out [T, Hv, DV]; g, beta FP32 [T, Hv];
// state FP32 [Hv, DK, DV]; workspace (rows = T rounded up to 64 or more): t_inv, aqk FP16
// [Hv, rows, 64] (the 16x16 blocks above the diagonal of each chunk are never written or read),
// gamma_beta FP32 [Hv, rows, 2] (gamma in log2 units). Shared rows are padded by 16
// bytes so the 8 rows of an ldmatrix fall in distinct banks.
#include "common.cuh"

namespace {

constexpr int CHUNK = 64;  // tokens per WY chunk (impbench/plan/cost.py GDN_CHUNK)
constexpr int BV = 32;     // value columns per block of the state pass
constexpr int PREP_THREADS = 128;
constexpr int STATE_WARPS = 8;
constexpr int STATE_THREADS = 32 * STATE_WARPS;
constexpr int LDC = CHUNK + 8;  // halves per shared row of a 64-column tile (A, T, Aqk)
constexpr int LDV = BV + 8;     // halves per shared row of a 32-column tile (S, R, v', V)
constexpr int DIAG_LD = 17;     // floats per row of a 16x16 FP32 diagonal block of A



// Per-lane fragment addressing of ldmatrix for mma.sync m16n8k16 (PTX ISA fragment layouts):
//  A from a row-major [m][k] tile: ldmatrix_x4 at (row a_row, col a_col);
//  B from a row-major [k][n] tile: ldmatrix_x4_trans at (a_row, a_col): b[0..1] columns n..n+7, b[2..3] n+8..;
//  B from a row-major [n][k] tile: ldmatrix_x4 at (b_row, b_col), same split;
//  A from a row-major [k][m] tile (A^T stored): ldmatrix_x4_trans at (b_row, b_col).
struct Lanes {
    int a_row, a_col, b_row, b_col, gr, tc;
    __device__ __forceinline__ explicit Lanes(int lane)
        : a_row((lane & 7) + ((lane >> 3) & 1) * 8), a_col((lane >> 4) * 8),
          b_row((lane & 7) + (lane >> 4) * 8), b_col(((lane >> 3) & 1) * 8),
          gr(lane >> 2), tc((lane & 3) * 2) {}
};

__device__ __forceinline__ void zero(float (&d)[4]) { d[0] = d[1] = d[2] = d[3] = 0.f; }

// A 16x16 accumulator pair (columns 0..7, 8..15) as the A operand of the next product.
__device__ __forceinline__ void acc_to_a(const float (&lo)[4], const float (&hi)[4], unsigned (&a)[4]) {
    a[0] = pack_half2(lo[0], lo[1]);
    a[1] = pack_half2(lo[2], lo[3]);
    a[2] = pack_half2(hi[0], hi[1]);
    a[3] = pack_half2(hi[2], hi[3]);
}

// ROWS rows of COLS halves, global rows `row_stride` halves apart, into shared rows LD halves apart.
// Rows >= valid are zero-filled (cp.async with 0 source bytes reads nothing). LOWER: a block lower
// triangular 64x64 tile (T, Aqk); the 16x16 blocks above the diagonal are zero-filled, never read from
// global memory (a predicate, not a branch: the state pass's copies then schedule freely).
template <int ROWS, int COLS, int LD, int THREADS, bool LOWER = false>
__device__ __forceinline__ void load_tile(half_t *smem, const half_t *gmem, long row_stride, int valid, int tid) {
    constexpr int CPR = COLS / 8;  // 16-byte chunks per row
    static_assert((ROWS * CPR) % THREADS == 0, "tile must split evenly over the block");
#pragma unroll
    for (int it = 0; it < ROWS * CPR / THREADS; ++it) {
        const int i = tid + it * THREADS;
        const int r = i / CPR, c = i % CPR;
        const bool ok = r < valid && !(LOWER && c / 2 > r / 16);
        cp_async16(smem + r * LD + c * 8, ok ? gmem + r * row_stride + c * 8 : gmem, ok ? 16 : 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel 1: the intra-chunk factors.

template <int DK>
struct PrepGeometry {
    static constexpr int LD = DK + 8;  // halves per shared Q / K row
    static constexpr int QK_HALVES = CHUNK * LD;
    static constexpr int TILE_HALVES = CHUNK * LDC;
    static constexpr int DIAG_FLOATS = 4 * 16 * DIAG_LD;
    // Q, K, A (FP16), T (FP16), the FP32 diagonal blocks of A, gamma, beta. gated_delta.py computes
    // the same number.
    static constexpr int SMEM_BYTES = (2 * QK_HALVES + 2 * TILE_HALVES) * 2 + (DIAG_FLOATS + 2 * CHUNK) * 4;
};

// T_IJ (I > J) of T = (I + A)^{-1} by 16x16 blocks: -sum_{K = J}^{I-1} (T_II A_IK) T_KJ, one warp. The
// product T_II A_IK stays in registers as the A operand of the next MMA. Reads T_II and T_KJ (K < I),
// which earlier levels wrote; writes T_IJ.
template <int I, int J>
__device__ __forceinline__ void merge_block(half_t *sT, const half_t *sA, const Lanes &ln) {
    unsigned tii[4];
    ldmatrix_x4(tii[0], tii[1], tii[2], tii[3], sT + (16 * I + ln.a_row) * LDC + 16 * I + ln.a_col);
    float z[2][4];
    zero(z[0]);
    zero(z[1]);
#pragma unroll
    for (int kb = J; kb < I; ++kb) {
        unsigned b[4], ay[4];
        float y[2][4];
        zero(y[0]);
        zero(y[1]);
        ldmatrix_x4_trans(b[0], b[1], b[2], b[3], sA + (16 * I + ln.a_row) * LDC + 16 * kb + ln.a_col);
        mma_16816(y[0], tii, b);
        mma_16816(y[1], tii, b + 2);
        acc_to_a(y[0], y[1], ay);
        ldmatrix_x4_trans(b[0], b[1], b[2], b[3], sT + (16 * kb + ln.a_row) * LDC + 16 * J + ln.a_col);
        mma_16816(z[0], ay, b);
        mma_16816(z[1], ay, b + 2);
    }
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
        half_t *dst = sT + (16 * I + ln.gr) * LDC + 16 * J + 8 * nt + ln.tc;
        *reinterpret_cast<half2_t *>(dst) = pack_half2(-z[nt][0], -z[nt][1]);
        *reinterpret_cast<half2_t *>(dst + 8 * LDC) = pack_half2(-z[nt][2], -z[nt][3]);
    }
}

// K K^T and Q K^T, rows 16 W .. 16 W + 15 against the key blocks 0..W (B from K stored [n][k]); the warp
// index W is a template argument, so the loop has no branch and its loads schedule ahead of the MMAs.
template <int W, int DK, int LD>
__device__ __forceinline__ void row_block_products(const half_t *sQ, const half_t *sK, const Lanes &ln,
                                                   float (&kk)[8][4], float (&qk)[8][4]) {
    const half_t *sKw = sK + (W * 16) * LD, *sQw = sQ + (W * 16) * LD;
#pragma unroll
    for (int ks = 0; ks < DK / 16; ++ks) {
        unsigned ak[4], aq[4];
        ldmatrix_x4(ak[0], ak[1], ak[2], ak[3], sKw + ln.a_row * LD + ks * 16 + ln.a_col);
        ldmatrix_x4(aq[0], aq[1], aq[2], aq[3], sQw + ln.a_row * LD + ks * 16 + ln.a_col);
#pragma unroll
        for (int nb = 0; nb <= W; ++nb) {
            unsigned b[4];
            ldmatrix_x4(b[0], b[1], b[2], b[3], sK + (nb * 16 + ln.b_row) * LD + ks * 16 + ln.b_col);
            mma_16816(kk[2 * nb], ak, b);
            mma_16816(kk[2 * nb + 1], ak, b + 2);
            mma_16816(qk[2 * nb], aq, b);
            mma_16816(qk[2 * nb + 1], aq, b + 2);
        }
    }
}

template <int DK>
__device__ __forceinline__ void gated_delta_prep(const half_t *__restrict__ q, const half_t *__restrict__ k,
                                                 const float *__restrict__ g, const float *__restrict__ beta,
                                                 half_t *__restrict__ t_inv, half_t *__restrict__ aqk,
                                                 float *__restrict__ gamma_beta, int T, int Hk, int Hv, int rows) {
    using G = PrepGeometry<DK>;
    constexpr int LD = G::LD;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    half_t *sQ = reinterpret_cast<half_t *>(smem_raw);
    half_t *sK = sQ + G::QK_HALVES;
    half_t *sA = sK + G::QK_HALVES;
    half_t *sT = sA + G::TILE_HALVES;
    float *sD = reinterpret_cast<float *>(sT + G::TILE_HALVES);
    float *sG = sD + G::DIAG_FLOATS;
    float *sB = sG + CHUNK;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int h = blockIdx.y, t0 = blockIdx.x * CHUNK;
    const int valid = min(CHUNK, T - t0);
    const int kh = h / (Hv / Hk);
    const long qk_row = (long)Hk * DK;
    const long work_row0 = (long)h * rows + t0;  // this chunk's first row in the workspace

    load_tile<CHUNK, DK, LD, PREP_THREADS>(sQ, q + t0 * qk_row + kh * DK, qk_row, valid, tid);
    load_tile<CHUNK, DK, LD, PREP_THREADS>(sK, k + t0 * qk_row + kh * DK, qk_row, valid, tid);
    cp_async_commit();

    if (warp == 0) {  // gamma = inclusive cumulative sum of g (log2 units); rows past T: g = beta = 0
        const int r0 = lane, r1 = lane + 32;
        float x0 = r0 < valid ? g[(long)(t0 + r0) * Hv + h] : 0.f;
        float x1 = r1 < valid ? g[(long)(t0 + r1) * Hv + h] : 0.f;
        const float b0 = r0 < valid ? beta[(long)(t0 + r0) * Hv + h] : 0.f;
        const float b1 = r1 < valid ? beta[(long)(t0 + r1) * Hv + h] : 0.f;
#pragma unroll
        for (int off = 1; off < 32; off <<= 1) {
            const float y0 = __shfl_up_sync(0xffffffffu, x0, off), y1 = __shfl_up_sync(0xffffffffu, x1, off);
            if (lane >= off) x0 += y0, x1 += y1;
        }
        x1 += __shfl_sync(0xffffffffu, x0, 31);
        x0 *= LOG2E, x1 *= LOG2E;
        sG[r0] = x0, sG[r1] = x1, sB[r0] = b0, sB[r1] = b1;
        float2 *gb = reinterpret_cast<float2 *>(gamma_beta + work_row0 * 2);
        if (r0 < valid) gb[r0].x = x0, gb[r0].y = b0;
        if (r1 < valid) gb[r1].x = x1, gb[r1].y = b1;
    }
    cp_async_wait<0>();
    __syncthreads();

    // K K^T and Q K^T, rows 16w..16w+15 against the key blocks 0..w (B from K stored [n][k]).
    const Lanes ln(lane);
    float kk[8][4], qk[8][4];
#pragma unroll
    for (int i = 0; i < 8; ++i) zero(kk[i]), zero(qk[i]);
    switch (warp) {  // warp-uniform
        case 0: row_block_products<0, DK, LD>(sQ, sK, ln, kk, qk); break;
        case 1: row_block_products<1, DK, LD>(sQ, sK, ln, kk, qk); break;
        case 2: row_block_products<2, DK, LD>(sQ, sK, ln, kk, qk); break;
        default: row_block_products<3, DK, LD>(sQ, sK, ln, kk, qk); break;
    }

    // Decays and beta: A (FP16 everywhere, FP32 on the diagonal blocks) to shared memory, Aqk to the
    // workspace (the column blocks up to the diagonal block of every row that exists).
    const int i0 = warp * 16 + ln.gr, i1 = i0 + 8;
    const float g0 = sG[i0], g1 = sG[i1], be0 = sB[i0], be1 = sB[i1];
    half_t *aqk_rows = aqk + work_row0 * CHUNK;
    float *diag = sD + warp * 16 * DIAG_LD;
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
        const int j = nt * 8 + ln.tc;
        const float gj0 = sG[j], gj1 = sG[j + 1];
        // a select, not a product: the discarded exp2 of a positive difference may be inf
        const float d00 = j <= i0 ? fast_exp2(g0 - gj0) : 0.f, d01 = j + 1 <= i0 ? fast_exp2(g0 - gj1) : 0.f;
        const float d10 = j <= i1 ? fast_exp2(g1 - gj0) : 0.f, d11 = j + 1 <= i1 ? fast_exp2(g1 - gj1) : 0.f;
        const float a00 = j < i0 ? be0 * d00 * kk[nt][0] : 0.f, a01 = j + 1 < i0 ? be0 * d01 * kk[nt][1] : 0.f;
        const float a10 = j < i1 ? be1 * d10 * kk[nt][2] : 0.f, a11 = j + 1 < i1 ? be1 * d11 * kk[nt][3] : 0.f;
        *reinterpret_cast<half2_t *>(sA + i0 * LDC + j) = pack_half2(a00, a01);
        *reinterpret_cast<half2_t *>(sA + i1 * LDC + j) = pack_half2(a10, a11);
        if (nt / 2 == warp) {  // the diagonal block of this warp's rows
            const int c = j - warp * 16;
            diag[ln.gr * DIAG_LD + c] = a00, diag[ln.gr * DIAG_LD + c + 1] = a01;
            diag[(ln.gr + 8) * DIAG_LD + c] = a10, diag[(ln.gr + 8) * DIAG_LD + c + 1] = a11;
        }
        if (nt / 2 <= warp) {
            if (i0 < valid)
                *reinterpret_cast<half2_t *>(aqk_rows + i0 * CHUNK + j) = pack_half2(d00 * qk[nt][0], d01 * qk[nt][1]);
            if (i1 < valid)
                *reinterpret_cast<half2_t *>(aqk_rows + i1 * CHUNK + j) = pack_half2(d10 * qk[nt][2], d11 * qk[nt][3]);
        }
    }
    __syncthreads();

    // Diagonal blocks: column c of (I + A_bb)^{-1}, x_r = [r == c] - sum_{s < r} A_rs x_s, in FP32.
    if (tid < 64) {
        const int blk = tid >> 4, c = tid & 15;
        const float *ad = sD + blk * 16 * DIAG_LD;
        float x[16];
#pragma unroll
        for (int r = 0; r < 16; ++r) {
            float acc = r == c ? 1.f : 0.f;
#pragma unroll
            for (int s = 0; s < r; ++s) acc = fmaf(-ad[r * DIAG_LD + s], x[s], acc);
            x[r] = acc;
        }
        half_t *col = sT + (blk * 16) * LDC + blk * 16 + c;
#pragma unroll
        for (int r = 0; r < 16; ++r) col[r * LDC] = f2h(x[r]);
    }
    __syncthreads();
    if (warp == 0) merge_block<1, 0>(sT, sA, ln);
    else if (warp == 1) merge_block<2, 1>(sT, sA, ln);
    else if (warp == 2) merge_block<3, 2>(sT, sA, ln);
    __syncthreads();
    if (warp == 0) merge_block<2, 0>(sT, sA, ln);
    else if (warp == 1) merge_block<3, 1>(sT, sA, ln);
    __syncthreads();
    if (warp == 0) merge_block<3, 0>(sT, sA, ln);
    __syncthreads();

    // T to the workspace in 16-byte chunks, the column blocks up to the diagonal block of each row
    half_t *t_rows = t_inv + work_row0 * CHUNK;
#pragma unroll
    for (int it = 0; it < CHUNK * 8 / PREP_THREADS; ++it) {
        const int i = tid + it * PREP_THREADS, r = i >> 3, c = i & 7;
        if (r < valid && c / 2 <= r / 16)
            *reinterpret_cast<uint4 *>(t_rows + r * CHUNK + c * 8) = *reinterpret_cast<const uint4 *>(sT + r * LDC + c * 8);
    }
}

// ---------------------------------------------------------------------------------------------
// Kernel 2: the state pass.

// acc += L[16 rg .. 16 rg + 15, :] x B[:, 16 ch .. 16 ch + 15] for a 64-row L that is zero above its diagonal
// 16x16 blocks (T, Aqk: LDC halves a row) and a 64-row B of LDV halves a row. The A fragments of the
// blocks above the diagonal are replaced by zeros (a select, not a branch: every warp's four MMAs then
// schedule beside its other work; docs/notes/gated_delta.md has the measurement).
__device__ __forceinline__ void lower_times(float (&acc)[2][4], const half_t *l, const half_t *b_rows, int rg, int ch,
                                            const Lanes &ln) {
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        unsigned a[4], b[4];
        ldmatrix_x4(a[0], a[1], a[2], a[3], l + (16 * rg + ln.a_row) * LDC + 16 * kk + ln.a_col);
        ldmatrix_x4_trans(b[0], b[1], b[2], b[3], b_rows + (16 * kk + ln.a_row) * LDV + 16 * ch + ln.a_col);
        const bool on = kk <= rg;
#pragma unroll
        for (int i = 0; i < 4; ++i) a[i] = on ? a[i] : 0u;
        mma_16816(acc[0], a, b);
        mma_16816(acc[1], a, b + 2);
    }
}

template <int DK>
struct StateGeometry {
    static constexpr int LD = DK + 8;  // halves per shared Q / K row
    // one stage: Q, K, T, Aqk, the V slice, (gamma, beta)
    static constexpr int Q_HALVES = CHUNK * LD;
    static constexpr int TILE_HALVES = CHUNK * LDC;
    static constexpr int V_HALVES = CHUNK * LDV;
    static constexpr int STAGE_BYTES = (2 * Q_HALVES + 2 * TILE_HALVES + V_HALVES) * 2 + CHUNK * 2 * 4;
    // two stages, then S (FP16, DK x BV), R, v', e^{gamma_C - gamma} v'. gated_delta.py computes the same number.
    static constexpr int SMEM_BYTES = 2 * STAGE_BYTES + (DK * LDV + 3 * CHUNK * LDV) * 2;
    // the state tiles (m16 x n8) of a warp: WM warps along DK, WN along the 32 value columns
    static constexpr int WM = DK / 16 < STATE_WARPS ? DK / 16 : STATE_WARPS;
    static constexpr int WN = STATE_WARPS / WM;
    static constexpr int MT = DK / 16 / WM;
    static constexpr int NT = BV / 8 / WN;
    static_assert(MT >= 1 && NT >= 1 && (NT == 1 || NT % 2 == 0), "state tiles must split over the warps");
};

struct Stage {
    half_t *q, *k, *t, *aqk, *v;
    float *gb;
};

template <int DK>
__device__ __forceinline__ Stage stage_at(unsigned char *base) {
    using G = StateGeometry<DK>;
    Stage s;
    s.q = reinterpret_cast<half_t *>(base);
    s.k = s.q + G::Q_HALVES;
    s.t = s.k + G::Q_HALVES;
    s.aqk = s.t + G::TILE_HALVES;
    s.v = s.aqk + G::TILE_HALVES;
    s.gb = reinterpret_cast<float *>(s.v + G::V_HALVES);
    return s;
}

template <int DK, int DV>
__device__ __forceinline__ void gated_delta_state(const half_t *__restrict__ q, const half_t *__restrict__ k,
                                                  const half_t *__restrict__ v, const half_t *__restrict__ t_inv,
                                                  const half_t *__restrict__ aqk, const float *__restrict__ gamma_beta,
                                                  float *__restrict__ state, half_t *__restrict__ out, int T, int Hk,
                                                  int Hv, int rows) {
    using G = StateGeometry<DK>;
    constexpr int LD = G::LD, MT = G::MT, NT = G::NT;
    static_assert(DV % BV == 0, "value columns split into blocks of 32");
    extern __shared__ __align__(16) unsigned char smem_raw[];
    if (dynamic_smem_bytes() < (unsigned)G::SMEM_BYTES) __trap();  // wrapper and kernel disagree
    half_t *sS = reinterpret_cast<half_t *>(smem_raw + 2 * G::STAGE_BYTES);
    half_t *sR = sS + DK * LDV;
    half_t *sVn = sR + CHUNK * LDV;
    half_t *sVd = sVn + CHUNK * LDV;

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int dv0 = blockIdx.x * BV, h = blockIdx.y;
    const int kh = h / (Hv / Hk);
    const long qk_row = (long)Hk * DK, v_row = (long)Hv * DV;
    const Lanes ln(lane);
    const int chunks = (T + CHUNK - 1) / CHUNK;

    auto load_chunk = [&](int c, const Stage &s) {
        const int t0 = c * CHUNK, valid = min(CHUNK, T - t0);
        const long work_row0 = (long)h * rows + t0;
        load_tile<CHUNK, DK, LD, STATE_THREADS>(s.q, q + t0 * qk_row + kh * DK, qk_row, valid, tid);
        load_tile<CHUNK, DK, LD, STATE_THREADS>(s.k, k + t0 * qk_row + kh * DK, qk_row, valid, tid);
        load_tile<CHUNK, CHUNK, LDC, STATE_THREADS, true>(s.t, t_inv + work_row0 * CHUNK, CHUNK, valid, tid);
        load_tile<CHUNK, CHUNK, LDC, STATE_THREADS, true>(s.aqk, aqk + work_row0 * CHUNK, CHUNK, valid, tid);
        load_tile<CHUNK, BV, LDV, STATE_THREADS>(s.v, v + t0 * v_row + (long)h * DV + dv0, v_row, valid, tid);
        if (tid < CHUNK / 2) {  // (gamma, beta) of rows 2 tid and 2 tid + 1
            const int have = min(2, max(0, valid - 2 * tid));
            const float *src = gamma_beta + work_row0 * 2;
            cp_async16(s.gb + 4 * tid, have ? src + 4 * tid : src, 8 * have);
        }
    };

    // This warp's state tiles: rows m0 + 16 mt + (gr, gr + 8), columns n0 + 8 nt + (tc, tc + 1).
    const int m0 = (warp % G::WM) * MT * 16, n0 = (warp / G::WM) * NT * 8;
    float s_acc[MT][NT][4];
    float *state_h = state + (long)h * DK * DV + dv0;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const float2 s2 = *reinterpret_cast<const float2 *>(
                    state_h + (long)(m0 + 16 * mt + ln.gr + 8 * half) * DV + n0 + 8 * nt + ln.tc);
                s_acc[mt][nt][2 * half] = s2.x, s_acc[mt][nt][2 * half + 1] = s2.y;
            }
    auto store_state_half = [&]() {
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int half = 0; half < 2; ++half)
                    *reinterpret_cast<half2_t *>(sS + (m0 + 16 * mt + ln.gr + 8 * half) * LDV + n0 + 8 * nt + ln.tc) =
                        pack_half2(s_acc[mt][nt][2 * half], s_acc[mt][nt][2 * half + 1]);
    };

    load_chunk(0, stage_at<DK>(smem_raw));
    cp_async_commit();
    store_state_half();

    // token side of this warp: rows 16 rg.., value columns 16 ch.. of the block's 32
    const int rg = warp & 3, ch = warp >> 2;
    const int i0 = 16 * rg + ln.gr, i1 = i0 + 8;
    for (int c = 0; c < chunks; ++c) {
        const Stage s = stage_at<DK>(smem_raw + (c & 1) * G::STAGE_BYTES);
        const int t0 = c * CHUNK, valid = min(CHUNK, T - t0);
        cp_async_wait<0>();
        __syncthreads();  // chunk c landed, S (FP16) is the state before it, stage (c + 1) & 1 is free

        // K S and Q S for 16 tokens x 16 columns (B = S stored [k][n], one fragment for both products),
        // even and odd k steps in separate chains: eight independent accumulators, four MMAs deep
        float ks[2][4], ks_odd[2][4], os[2][4], os_odd[2][4];
        zero(ks[0]), zero(ks[1]), zero(ks_odd[0]), zero(ks_odd[1]);
        zero(os[0]), zero(os[1]), zero(os_odd[0]), zero(os_odd[1]);
#pragma unroll
        for (int kk = 0; kk < DK / 16; ++kk) {
            unsigned a[4], aq[4], b[4];
            ldmatrix_x4(a[0], a[1], a[2], a[3], s.k + (16 * rg + ln.a_row) * LD + 16 * kk + ln.a_col);
            ldmatrix_x4(aq[0], aq[1], aq[2], aq[3], s.q + (16 * rg + ln.a_row) * LD + 16 * kk + ln.a_col);
            ldmatrix_x4_trans(b[0], b[1], b[2], b[3], sS + (16 * kk + ln.a_row) * LDV + 16 * ch + ln.a_col);
            mma_16816(kk % 2 ? ks_odd[0] : ks[0], a, b);
            mma_16816(kk % 2 ? ks_odd[1] : ks[1], a, b + 2);
            mma_16816(kk % 2 ? os_odd[0] : os[0], aq, b);
            mma_16816(kk % 2 ? os_odd[1] : os[1], aq, b + 2);
        }
        // the next chunk's copies, issued while those MMAs run
        if (c + 1 < chunks) load_chunk(c + 1, stage_at<DK>(smem_raw + ((c + 1) & 1) * G::STAGE_BYTES));
        cp_async_commit();
        // R = beta (V - e^gamma K S)
        const float gam0 = s.gb[2 * i0], gam1 = s.gb[2 * i1];
        const float be0 = s.gb[2 * i0 + 1], be1 = s.gb[2 * i1 + 1];
        const float e0 = fast_exp2(gam0), e1 = fast_exp2(gam1);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const int col = 16 * ch + 8 * nt + ln.tc;
            float v00, v01, v10, v11;
            unpack_half2(*reinterpret_cast<const half2_t *>(s.v + i0 * LDV + col), v00, v01);
            unpack_half2(*reinterpret_cast<const half2_t *>(s.v + i1 * LDV + col), v10, v11);
            *reinterpret_cast<half2_t *>(sR + i0 * LDV + col) = pack_half2(be0 * (v00 - e0 * (ks[nt][0] + ks_odd[nt][0])),
                                                                           be0 * (v01 - e0 * (ks[nt][1] + ks_odd[nt][1])));
            *reinterpret_cast<half2_t *>(sR + i1 * LDV + col) = pack_half2(be1 * (v10 - e1 * (ks[nt][2] + ks_odd[nt][2])),
                                                                           be1 * (v11 - e1 * (ks[nt][3] + ks_odd[nt][3])));
        }
        __syncthreads();  // R complete

        // v' = T R over the column blocks 0..rg (T is zero above its diagonal blocks)
        float vn[2][4];
        zero(vn[0]), zero(vn[1]);
        lower_times(vn, s.t, sR, rg, ch, ln);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) os[nt][e] = (os[nt][e] + os_odd[nt][e]) * (e < 2 ? e0 : e1);
        const float gam_last = s.gb[2 * (valid - 1)];
        const float dec0 = i0 < valid ? fast_exp2(gam_last - gam0) : 0.f;
        const float dec1 = i1 < valid ? fast_exp2(gam_last - gam1) : 0.f;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const int col = 16 * ch + 8 * nt + ln.tc;
            *reinterpret_cast<half2_t *>(sVn + i0 * LDV + col) = pack_half2(vn[nt][0], vn[nt][1]);
            *reinterpret_cast<half2_t *>(sVn + i1 * LDV + col) = pack_half2(vn[nt][2], vn[nt][3]);
            *reinterpret_cast<half2_t *>(sVd + i0 * LDV + col) = pack_half2(dec0 * vn[nt][0], dec0 * vn[nt][1]);
            *reinterpret_cast<half2_t *>(sVd + i1 * LDV + col) = pack_half2(dec1 * vn[nt][2], dec1 * vn[nt][3]);
        }
        __syncthreads();  // v' complete; every warp is done reading S

        // o += Aqk v' (Aqk is zero above its diagonal), then the rows that exist to `out`
        lower_times(os, s.aqk, sVn, rg, ch, ln);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) {
            const int col = dv0 + 16 * ch + 8 * nt + ln.tc;
            if (i0 < valid)
                *reinterpret_cast<half2_t *>(out + ((long)(t0 + i0) * Hv + h) * DV + col) = pack_half2(os[nt][0], os[nt][1]);
            if (i1 < valid)
                *reinterpret_cast<half2_t *>(out + ((long)(t0 + i1) * Hv + h) * DV + col) = pack_half2(os[nt][2], os[nt][3]);
        }

        // S = e^{gamma_C} S + K^T (e^{gamma_C - gamma} v') on this warp's tiles (A = K^T from K stored [k][m])
        const float decay = fast_exp2(gam_last);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) s_acc[mt][nt][e] *= decay;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt)
                ldmatrix_x4_trans(a[mt][0], a[mt][1], a[mt][2], a[mt][3],
                                  s.k + (16 * kk + ln.b_row) * LD + m0 + 16 * mt + ln.b_col);
            if constexpr (NT == 1) {  // one n8 tile: the matching half of a 16-column load
                unsigned b[4];
                ldmatrix_x4_trans(b[0], b[1], b[2], b[3], sVd + (16 * kk + ln.a_row) * LDV + (n0 & ~15) + ln.a_col);
                const bool upper = (n0 >> 3) & 1;
                const unsigned bh[2] = {upper ? b[2] : b[0], upper ? b[3] : b[1]};
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) mma_16816(s_acc[mt][0], a[mt], bh);
            } else {
#pragma unroll
                for (int ng = 0; ng < NT / 2; ++ng) {
                    unsigned b[4];
                    ldmatrix_x4_trans(b[0], b[1], b[2], b[3], sVd + (16 * kk + ln.a_row) * LDV + n0 + 16 * ng + ln.a_col);
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma_16816(s_acc[mt][2 * ng], a[mt], b);
                        mma_16816(s_acc[mt][2 * ng + 1], a[mt], b + 2);
                    }
                }
            }
        }
        store_state_half();  // every warp read S before the barrier "v' complete"
    }
    cp_async_wait<0>();

#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                float2 s2;
                s2.x = s_acc[mt][nt][2 * half], s2.y = s_acc[mt][nt][2 * half + 1];
                *reinterpret_cast<float2 *>(state_h + (long)(m0 + 16 * mt + ln.gr + 8 * half) * DV + n0 + 8 * nt + ln.tc) = s2;
            }
}

}  // namespace

// gated_delta_prep_k<DK>: grid (ceil(T / 64), Hv), block 128, dynamic shared memory PrepGeometry<DK>::SMEM_BYTES.
// gated_delta_state_k<DK>_v<DV>: grid (DV / 32, Hv), block 256, StateGeometry<DK>::SMEM_BYTES.
// `rows`: the workspace's rows per value head (>= T).
#define GATED_DELTA(DK, DV)                                                                                        \
    extern "C" __global__ void __launch_bounds__(PREP_THREADS) gated_delta_prep_k##DK(                            \
        const half_t *q, const half_t *k, const float *g, const float *beta, half_t *t_inv, half_t *aqk,          \
        float *gamma_beta, int T, int Hk, int Hv, int rows) {                                                       \
        pdl_entry();                                                                                               \
        gated_delta_prep<DK>(q, k, g, beta, t_inv, aqk, gamma_beta, T, Hk, Hv, rows);                              \
    }                                                                                                              \
    extern "C" __global__ void __launch_bounds__(STATE_THREADS, 1) gated_delta_state_k##DK##_v##DV(               \
        const half_t *q, const half_t *k, const half_t *v, const half_t *t_inv, const half_t *aqk,                \
        const float *gamma_beta, float *state, half_t *out, int T, int Hk, int Hv, int rows) {                     \
        pdl_entry();                                                                                               \
        gated_delta_state<DK, DV>(q, k, v, t_inv, aqk, gamma_beta, state, out, T, Hk, Hv, rows);                   \
    }

GATED_DELTA(128, 128)  // Qwen3.5 / Qwen3.6
GATED_DELTA(32, 32)    // the tiny test preset
