// Fused multi-head self-attention (no mask) in bf16 with f32 accumulation, forward and backward,
// tiled so that the T×T score matrix never reaches global memory (the FlashAttention-2 scheme).
//
// Layouts: `qkv` is the packed projection [B, T, 3, H, D] (q, k, v of every head side by side,
// as a linear layer of width 3·H·D writes it), `out` and `dout` are [B, T, H, D], `lse` and
// `delta` are [B·H, T] f32. The backward pass writes `dqkv` in `qkv`'s layout.
//
// Both passes run on mma.sync tensor-core steps with their intermediates in registers (see
// attention_fwd and attention_bwd). A block has 4 warps: 64 query rows (forward) or 64 key rows
// (backward), 16 per warp.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

namespace {

constexpr int TILE = 64;   // rows of a query or key tile
constexpr int WARPS = 4;   // 16 rows each
constexpr int THREADS = WARPS * 32;
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// Shared-memory row strides (elements), padded so that ldmatrix's eight 16-byte rows fall in
// distinct banks. Shared memory (bytes; `attention.rs` sizes the launch the same way): forward,
// the q, k, v tiles ([TILE][LDH] bf16 each); backward, the k, v, q, dout tiles, the dSᵀ tile
// ([TILE][LDP] bf16) and the query tile's lse and delta (f32).
template <int D> struct Sizes {
    static constexpr int LDH = D + 8;     // a bf16 [TILE][D] tile
    static constexpr int LDP = TILE + 8;  // a bf16 [TILE][TILE] tile
};

// Rows t0..t0+TILE of one head's q, k, v or dout (row stride `stride` elements) into a shared
// [TILE][LDH] tile, zeros past T; 16-byte loads.
template <int D>
__device__ __forceinline__ void load_tile(bf16* dst, const bf16* src, size_t stride, int t0, int T) {
    constexpr int LDH = Sizes<D>::LDH;
    constexpr int VEC = D / 8;
    for (int i = threadIdx.x; i < TILE * VEC; i += THREADS) {
        const int row = i / VEC, c = (i % VEC) * 8;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (t0 + row < T) v = *reinterpret_cast<const uint4*>(src + (size_t)(t0 + row) * stride + c);
        *reinterpret_cast<uint4*>(dst + row * LDH + c) = v;
    }
}

// Raw tensor-core steps (sm_80+): ldmatrix loads of 8×8 bf16 tiles from
// shared memory and mma.m16n8k16 with f32 accumulators held in registers. Fragment layouts
// (PTX ISA): with g = lane / 4 and c = 2·(lane % 4), a 16×8 accumulator holds (g, c..c+1) and
// (g + 8, c..c+1); a 16×16 A operand (g, c..), (g + 8, c..), (g, c + 8..), (g + 8, c + 8..);
// a 16×8 B operand (k = c.., n = g), (k = c + 8.., n = g).
__device__ __forceinline__ void ldsm_x4(uint32_t* r, const bf16* p) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t* r, const bf16* p) {
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void mma_bf16(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
}

// The forward pass with every intermediate in registers: per warp 16 query rows; per key tile
// S = Q Kᵀ (8 accumulators of 16×8), the online softmax on them (a row's values are spread
// over the 4 lanes of a quad), P repacked in place as the A operand of O += P V.
template <int D>
__device__ void attention_fwd(const bf16* __restrict__ qkv, bf16* __restrict__ out,
                              float* __restrict__ lse, int T, int H, float scale) {
    typedef Sizes<D> S;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16* qs = reinterpret_cast<bf16*>(smem);
    bf16* ks = qs + TILE * S::LDH;
    bf16* vs = ks + TILE * S::LDH;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, c = 2 * (lane & 3);
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int q0 = blockIdx.x * TILE;
    const size_t stride = (size_t)3 * H * D;
    const bf16* base = qkv + (size_t)b * T * stride + (size_t)h * D;
    const float scale2 = scale * LOG2E;

    load_tile<D>(qs, base, stride, q0, T);
    __syncthreads();
    uint32_t qa[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
        ldsm_x4(qa[kk], qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S::LDH + kk * 16 + (lane >> 4) * 8);

    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    // rows g and g + 8: running maximum (base 2) and this lane's share of the running sum
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int k0 = 0; k0 < T; k0 += TILE) {
        __syncthreads();  // the previous key tile is consumed
        load_tile<D>(ks, base + (size_t)H * D, stride, k0, T);
        load_tile<D>(vs, base + (size_t)2 * H * D, stride, k0, T);
        __syncthreads();
        float s[TILE / 8][4];
#pragma unroll
        for (int t = 0; t < TILE / 8; ++t) s[t][0] = s[t][1] = s[t][2] = s[t][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int tp = 0; tp < TILE / 16; ++tp) {
                uint32_t kb[4];
                ldsm_x4(kb, ks + (tp * 16 + (lane & 7) + (lane >> 4) * 8) * S::LDH + kk * 16 + ((lane >> 3) & 1) * 8);
                mma_bf16(s[2 * tp], qa[kk], kb[0], kb[1]);
                mma_bf16(s[2 * tp + 1], qa[kk], kb[2], kb[3]);
            }
        }
        float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int t = 0; t < TILE / 8; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool in = k0 + 8 * t + c + (e & 1) < T;
                s[t][e] = in ? s[t][e] * scale2 : -INFINITY;
                mx[e >> 1] = fmaxf(mx[e >> 1], s[t][e]);
            }
        }
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float m_new = fmaxf(m[i], mx[i]);  // finite: every key tile has a key
            alpha[i] = exp2f(m[i] - m_new);
            m[i] = m_new;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int t = 0; t < TILE / 8; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[t][e] = exp2f(s[t][e] - m[e >> 1]);
                l[e >> 1] += s[t][e];
            }
        }
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][0] *= alpha[0];
            o[n][1] *= alpha[0];
            o[n][2] *= alpha[1];
            o[n][3] *= alpha[1];
        }
        // O += P V, 16 keys at a time
#pragma unroll
        for (int kk = 0; kk < TILE / 16; ++kk) {
            const uint32_t pa[4] = {pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
                                    pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                    pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int np = 0; np < D / 16; ++np) {
                uint32_t vb[4];
                ldsm_x4_trans(vb, vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S::LDH + np * 16 + (lane >> 4) * 8);
                mma_bf16(o[2 * np], pa, vb[0], vb[1]);
                mma_bf16(o[2 * np + 1], pa, vb[2], vb[3]);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const int q = q0 + warp * 16 + g + 8 * i;
        if (q >= T) continue;
        const float inv = 1.f / l[i];
        bf16* og = out + ((size_t)b * T + q) * H * D + (size_t)h * D + c;
#pragma unroll
        for (int n = 0; n < D / 8; ++n)
            *reinterpret_cast<__nv_bfloat162*>(og + 8 * n) = __floats2bfloat162_rn(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
        if ((lane & 3) == 0) lse[(size_t)bh * T + q] = (m[i] + log2f(l[i])) * LN2;
    }
}

// delta[bh, t] = Σ_d dout·out (f32), a warp per row.
template <int D>
__device__ void attention_delta(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                                float* __restrict__ delta, int rows, int T, int H) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    // row = (b·H + h)·T + t; the tensors are [B, T, H, D]
    const int t = row % T, bh = row / T, b = bh / H, h = bh % H;
    const size_t at = ((size_t)b * T + t) * H * D + (size_t)h * D;
    float acc = 0.f;
    for (int c = lane; c < D; c += 32) acc += __bfloat162float(out[at + c]) * __bfloat162float(dout[at + c]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) delta[row] = acc;
}

// The backward pass, per block 64 keys (16 per warp) against every query tile: Sᵀ = K Qᵀ and
// dPᵀ = V dOᵀ in registers, Pᵀ = exp(Sᵀ − lse), dSᵀ = Pᵀ ⊙ (dPᵀ − delta); dV += Pᵀ dO and
// dK += dSᵀ Q accumulate in registers over the query tiles; dSᵀ goes through shared memory
// once, for dQ += dS K (every warp 16 of the tile's queries, over the block's 64 keys), added
// to an f32 accumulator with atomics.
template <int D>
__device__ void attention_bwd(const bf16* __restrict__ qkv, const bf16* __restrict__ dout,
                              const float* __restrict__ lse, const float* __restrict__ delta,
                              float* __restrict__ dq, bf16* __restrict__ dqkv, int T, int H,
                              float scale) {
    typedef Sizes<D> S;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16* ks = reinterpret_cast<bf16*>(smem);
    bf16* vs = ks + TILE * S::LDH;
    bf16* qs = vs + TILE * S::LDH;
    bf16* dos = qs + TILE * S::LDH;
    bf16* dst = dos + TILE * S::LDH;  // dSᵀ [key][query]
    float* lse_s = reinterpret_cast<float*>(dst + TILE * S::LDP);
    float* delta_s = lse_s + TILE;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, c = 2 * (lane & 3);
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int k0 = blockIdx.x * TILE;
    const size_t stride = (size_t)3 * H * D;
    const size_t ostride = (size_t)H * D;
    const bf16* base = qkv + (size_t)b * T * stride + (size_t)h * D;
    const bf16* dbase = dout + (size_t)b * T * ostride + (size_t)h * D;
    const float scale2 = scale * LOG2E;
    // the warp's key rows g and g + 8
    const bool key_in[2] = {k0 + warp * 16 + g < T, k0 + warp * 16 + g + 8 < T};
    // ldmatrix addresses: the A operand of 16 rows; B from a [n][k] tile; B from a [k][n] tile
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;
    const int bn_row = (lane & 7) + (lane >> 4) * 8, bn_col = ((lane >> 3) & 1) * 8;
    const int bk_row = a_row, bk_col = a_col;

    load_tile<D>(ks, base + (size_t)H * D, stride, k0, T);
    load_tile<D>(vs, base + (size_t)2 * H * D, stride, k0, T);
    __syncthreads();
    uint32_t ka[D / 16][4], va[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        ldsm_x4(ka[kk], ks + (warp * 16 + a_row) * S::LDH + kk * 16 + a_col);
        ldsm_x4(va[kk], vs + (warp * 16 + a_row) * S::LDH + kk * 16 + a_col);
    }
    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;

    for (int q0 = 0; q0 < T; q0 += TILE) {
        __syncthreads();  // the previous query tile and dSᵀ are consumed
        load_tile<D>(qs, base, stride, q0, T);
        load_tile<D>(dos, dbase, ostride, q0, T);
        for (int i = threadIdx.x; i < TILE; i += THREADS) {
            const bool in = q0 + i < T;
            // a query past T gets probability 0 everywhere (lse = +∞)
            lse_s[i] = in ? lse[(size_t)bh * T + q0 + i] * LOG2E : INFINITY;
            delta_s[i] = in ? delta[(size_t)bh * T + q0 + i] : 0.f;
        }
        __syncthreads();
        // Sᵀ = K_w Qᵀ and dPᵀ = V_w dOᵀ: 16 keys × TILE queries each
        float p[TILE / 8][4], dp[TILE / 8][4];
#pragma unroll
        for (int t = 0; t < TILE / 8; ++t)
#pragma unroll
            for (int e = 0; e < 4; ++e) p[t][e] = dp[t][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
            for (int tp = 0; tp < TILE / 16; ++tp) {
                uint32_t qb[4], ob[4];
                ldsm_x4(qb, qs + (tp * 16 + bn_row) * S::LDH + kk * 16 + bn_col);
                ldsm_x4(ob, dos + (tp * 16 + bn_row) * S::LDH + kk * 16 + bn_col);
                mma_bf16(p[2 * tp], ka[kk], qb[0], qb[1]);
                mma_bf16(p[2 * tp + 1], ka[kk], qb[2], qb[3]);
                mma_bf16(dp[2 * tp], va[kk], ob[0], ob[1]);
                mma_bf16(dp[2 * tp + 1], va[kk], ob[2], ob[3]);
            }
        }
        // Pᵀ and dSᵀ (in dp); dSᵀ also to shared memory for dQ
#pragma unroll
        for (int t = 0; t < TILE / 8; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int col = 8 * t + c + (e & 1);
                p[t][e] = key_in[e >> 1] ? exp2f(p[t][e] * scale2 - lse_s[col]) : 0.f;
                dp[t][e] = p[t][e] * (dp[t][e] - delta_s[col]);
            }
#pragma unroll
            for (int i = 0; i < 2; ++i)
                *reinterpret_cast<__nv_bfloat162*>(dst + (warp * 16 + g + 8 * i) * S::LDP + 8 * t + c) =
                    __floats2bfloat162_rn(dp[t][2 * i], dp[t][2 * i + 1]);
        }
        // dV_w += Pᵀ dO, dK_w += dSᵀ Q, 16 queries at a time
#pragma unroll
        for (int kk = 0; kk < TILE / 16; ++kk) {
            const uint32_t pa[4] = {pack_bf16(p[2 * kk][0], p[2 * kk][1]), pack_bf16(p[2 * kk][2], p[2 * kk][3]),
                                    pack_bf16(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                    pack_bf16(p[2 * kk + 1][2], p[2 * kk + 1][3])};
            const uint32_t sa[4] = {pack_bf16(dp[2 * kk][0], dp[2 * kk][1]), pack_bf16(dp[2 * kk][2], dp[2 * kk][3]),
                                    pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                                    pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
            for (int np = 0; np < D / 16; ++np) {
                uint32_t ob[4], qb[4];
                ldsm_x4_trans(ob, dos + (kk * 16 + bk_row) * S::LDH + np * 16 + bk_col);
                ldsm_x4_trans(qb, qs + (kk * 16 + bk_row) * S::LDH + np * 16 + bk_col);
                mma_bf16(dv[2 * np], pa, ob[0], ob[1]);
                mma_bf16(dv[2 * np + 1], pa, ob[2], ob[3]);
                mma_bf16(dk[2 * np], sa, qb[0], qb[1]);
                mma_bf16(dk[2 * np + 1], sa, qb[2], qb[3]);
            }
        }
        __syncthreads();  // every warp's dSᵀ rows are written
        // dQ for the warp's 16 queries of the tile: dS (from dSᵀ, transposed by ldmatrix) × K
        float acc[D / 8][4];
#pragma unroll
        for (int n = 0; n < D / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < TILE / 16; ++kk) {
            uint32_t sa[4];
            ldsm_x4_trans(sa, dst + (kk * 16 + ((lane >> 4) & 1) * 8 + (lane & 7)) * S::LDP + warp * 16 + ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int np = 0; np < D / 16; ++np) {
                uint32_t kb[4];
                ldsm_x4_trans(kb, ks + (kk * 16 + bk_row) * S::LDH + np * 16 + bk_col);
                mma_bf16(acc[2 * np], sa, kb[0], kb[1]);
                mma_bf16(acc[2 * np + 1], sa, kb[2], kb[3]);
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int q = q0 + warp * 16 + g + 8 * i;
            if (q >= T) continue;
            float* dqg = dq + ((size_t)b * T + q) * H * D + (size_t)h * D + c;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                atomicAdd(dqg + 8 * n, acc[n][2 * i] * scale);
                atomicAdd(dqg + 8 * n + 1, acc[n][2 * i + 1] * scale);
            }
        }
    }

    // dK (scaled) and dV of the warp's keys into dqkv
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        if (!key_in[i]) continue;
        const int key = k0 + warp * 16 + g + 8 * i;
        bf16* gk = dqkv + ((size_t)b * T + key) * stride + (size_t)H * D + (size_t)h * D + c;
        bf16* gv = gk + (size_t)H * D;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            *reinterpret_cast<__nv_bfloat162*>(gk + 8 * n) = __floats2bfloat162_rn(dk[n][2 * i] * scale, dk[n][2 * i + 1] * scale);
            *reinterpret_cast<__nv_bfloat162*>(gv + 8 * n) = __floats2bfloat162_rn(dv[n][2 * i], dv[n][2 * i + 1]);
        }
    }
}

}  // namespace

// dq (f32 [B, T, H, D]) into the q part of dqkv ([B, T, 3, H, D], bf16).
extern "C" __global__ void attention_dq_bf16(const float* __restrict__ dq, bf16* __restrict__ dqkv,
                                             int B, int T, int H, int D) {
    const size_t n = (size_t)B * T * H * D;
    const size_t hd = (size_t)H * D;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const size_t token = i / hd, rest = i % hd;
        dqkv[token * 3 * hd + rest] = __float2bfloat16(dq[i]);
    }
}

#define ATTENTION_ENTRY_POINTS(D)                                                                  \
    extern "C" __global__ void __launch_bounds__(THREADS) attention_fwd_d##D##_bf16(             \
        const bf16* qkv, bf16* out, float* lse, int T, int H, float scale) {                       \
        attention_fwd<D>(qkv, out, lse, T, H, scale);                                              \
    }                                                                                              \
    extern "C" __global__ void attention_delta_d##D##_bf16(const bf16* out, const bf16* dout,      \
                                                           float* delta, int rows, int T, int H) { \
        attention_delta<D>(out, dout, delta, rows, T, H);                                          \
    }                                                                                              \
    extern "C" __global__ void __launch_bounds__(THREADS, D <= 48 ? 3 : 1) attention_bwd_d##D##_bf16(           \
        const bf16* qkv, const bf16* dout, const float* lse, const float* delta, float* dq,        \
        bf16* dqkv, int T, int H, float scale) {                                                   \
        attention_bwd<D>(qkv, dout, lse, delta, dq, dqkv, T, H, scale);                            \
    }

ATTENTION_ENTRY_POINTS(16)
ATTENTION_ENTRY_POINTS(32)
ATTENTION_ENTRY_POINTS(48)
ATTENTION_ENTRY_POINTS(64)
ATTENTION_ENTRY_POINTS(128)
