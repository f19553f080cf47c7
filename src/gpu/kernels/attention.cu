// Fused multi-head self-attention (no mask) in bf16 with f32 accumulation, forward and backward,
// tiled so that the T×T score matrix never reaches global memory (the FlashAttention-2 scheme).
//
// Layouts: `qkv` is the packed projection [B, T, 3, H, D] (q, k, v of every head side by side,
// as a linear layer of width 3·H·D writes it), `out` and `dout` are [B, T, H, D], `lse` and
// `delta` are [B·H, T] f32. The backward pass writes `dqkv` in `qkv`'s layout.
//
// Both passes run on mma.sync tensor-core steps with their intermediates in registers (see
// attention_fwd and attention_bwd). A block has 4 warps: 64 query rows (forward) or 64 key rows
// (backward), 16 per warp. The tiles a block walks through (keys and values forward; queries,
// dout and their statistics backward) stream in by cp.async in two stages, the next tile's
// loads in flight during the tensor-core work on this one (at 64 × 1,025 tokens, 16 heads of
// 48 on the H200: forward 2.25 → 1.19 ms, backward kernel 5.47 → 4.43 ms). The backward pass's
// dQ goes out by float4 atomics on sm_90 (4.43 → 3.35 ms; float atomics elsewhere). The
// probabilities are one FFMA and one MUFU.EX2 each (exp2_ftz): forward 1.20 → 1.09 ms,
// backward kernel 3.35 → 2.78 ms.

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

// The same rows through asynchronous copies (cp.async, 16 bytes each, zero-filled past T): the
// loads of the next tile overlap the tensor-core work on this one. Completion is per commit
// group (cp_async_commit / cp_async_wait).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid) {
    const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(d), "l"(src), "r"(valid ? 4 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

template <int D>
__device__ __forceinline__ void load_tile_async(bf16* dst, const bf16* src, size_t stride, int t0, int T) {
    constexpr int LDH = Sizes<D>::LDH;
    constexpr int VEC = D / 8;
    for (int i = threadIdx.x; i < TILE * VEC; i += THREADS) {
        const int row = i / VEC, c = (i % VEC) * 8;
        const bool in = t0 + row < T;
        // a row past T reads nothing; its address stays inside the tensor
        cp_async16(dst + row * LDH + c, src + (size_t)(in ? t0 + row : 0) * stride + c, in);
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
// 2^x in one MUFU.EX2 (flushing subnormal results to 0): exp2f also guards against subnormals,
// three more instructions on each of the 64 × 64 probabilities of a tile pair, where the
// softmax's instructions compete with the tensor-core steps for issue slots
__device__ __forceinline__ float exp2_ftz(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
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
    // the query tile, then two stages of (key tile, value tile)
    bf16* qs = reinterpret_cast<bf16*>(smem);
    bf16* kv = qs + TILE * S::LDH;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane >> 2, c = 2 * (lane & 3);
    const int bh = blockIdx.y, b = bh / H, h = bh % H;
    const int q0 = blockIdx.x * TILE;
    const size_t stride = (size_t)3 * H * D;
    const bf16* base = qkv + (size_t)b * T * stride + (size_t)h * D;
    const float scale2 = scale * LOG2E;
    auto load_kv = [&](int stage, int k0) {
        bf16* ks = kv + stage * 2 * TILE * S::LDH;
        load_tile_async<D>(ks, base + (size_t)H * D, stride, k0, T);
        load_tile_async<D>(ks + TILE * S::LDH, base + (size_t)2 * H * D, stride, k0, T);
    };

    load_tile_async<D>(qs, base, stride, q0, T);
    load_kv(0, 0);
    cp_async_commit();
    uint32_t qa[D / 16][4];

    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    // rows g and g + 8: running maximum (base 2) and this lane's share of the running sum
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

    for (int k0 = 0, it = 0; k0 < T; k0 += TILE, ++it) {
        // the next key tile streams in while this one is used
        if (k0 + TILE < T) {
            load_kv((it + 1) & 1, k0 + TILE);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk)
                ldsm_x4(qa[kk], qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S::LDH + kk * 16 + (lane >> 4) * 8);
        }
        const bf16* ks = kv + (it & 1) * 2 * TILE * S::LDH;
        const bf16* vs = ks + TILE * S::LDH;
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
        const bool full = k0 + TILE <= T;
#pragma unroll
        for (int t = 0; t < TILE / 8; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const bool in = full || k0 + 8 * t + c + (e & 1) < T;
                s[t][e] = in ? s[t][e] : -INFINITY;  // scaled (base 2) with the exponent below
                mx[e >> 1] = fmaxf(mx[e >> 1], s[t][e]);
            }
        }
        float alpha[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float m_new = fmaxf(m[i], mx[i] * scale2);  // finite: every key tile has a key
            alpha[i] = exp2_ftz(m[i] - m_new);
            m[i] = m_new;
            l[i] *= alpha[i];
        }
#pragma unroll
        for (int t = 0; t < TILE / 8; ++t) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[t][e] = exp2_ftz(fmaf(s[t][e], scale2, -m[e >> 1]));
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
        __syncthreads();  // this stage is consumed before the next iteration refills it
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
    // the block's key and value tiles; two stages of (query tile, dout tile); dSᵀ [key][query];
    // two stages of the query tile's lse and delta
    bf16* ks = reinterpret_cast<bf16*>(smem);
    bf16* vs = ks + TILE * S::LDH;
    bf16* qdo = vs + TILE * S::LDH;
    bf16* dst = qdo + 4 * TILE * S::LDH;
    float* stats = reinterpret_cast<float*>(dst + TILE * S::LDP);

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

    auto load_queries = [&](int stage, int q0) {
        bf16* qs = qdo + stage * 2 * TILE * S::LDH;
        load_tile_async<D>(qs, base, stride, q0, T);
        load_tile_async<D>(qs + TILE * S::LDH, dbase, ostride, q0, T);
        float* st = stats + stage * 2 * TILE;
        for (int i = threadIdx.x; i < TILE; i += THREADS) {
            const bool in = q0 + i < T;
            const size_t at = (size_t)bh * T + (in ? q0 + i : 0);
            cp_async4(st + i, lse + at, in);
            cp_async4(st + TILE + i, delta + at, in);
        }
    };
    load_tile_async<D>(ks, base + (size_t)H * D, stride, k0, T);
    load_tile_async<D>(vs, base + (size_t)2 * H * D, stride, k0, T);
    load_queries(0, 0);
    cp_async_commit();
    uint32_t ka[D / 16][4], va[D / 16][4];
    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.f;

    for (int q0 = 0, it = 0; q0 < T; q0 += TILE, ++it) {
        // the next query tile streams in while this one is used
        if (q0 + TILE < T) {
            load_queries((it + 1) & 1, q0 + TILE);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // this stage has landed; the previous dSᵀ is consumed
        if (it == 0) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                ldsm_x4(ka[kk], ks + (warp * 16 + a_row) * S::LDH + kk * 16 + a_col);
                ldsm_x4(va[kk], vs + (warp * 16 + a_row) * S::LDH + kk * 16 + a_col);
            }
        }
        const bf16* qs = qdo + (it & 1) * 2 * TILE * S::LDH;
        const bf16* dos = qs + TILE * S::LDH;
        const float* lse_s = stats + (it & 1) * 2 * TILE;
        const float* delta_s = lse_s + TILE;
        const bool full = q0 + TILE <= T;
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
                // a query past T gets probability 0 everywhere
                const bool in = key_in[e >> 1] && (full || q0 + col < T);
                p[t][e] = in ? exp2_ftz(fmaf(p[t][e], scale2, -lse_s[col] * LOG2E)) : 0.f;
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
#if __CUDA_ARCH__ >= 900
            // four columns per atomic: lanes 2j and 2j + 1 of a quad swap halves so that for
            // each pair of 8-column blocks (2m, 2m + 1) the even lane adds block 2m's columns
            // 4j'..4j'+3 and the odd lane block 2m + 1's (sm_90's vector atomics)
            float* dqg = dq + ((size_t)b * T + q) * H * D + (size_t)h * D + 4 * ((lane & 3) >> 1);
            const bool odd = lane & 1;
#pragma unroll
            for (int m = 0; m < D / 16; ++m) {
                // (selected, not indexed: the accumulators stay in registers)
                const float e0 = acc[2 * m][2 * i], e1 = acc[2 * m][2 * i + 1];
                const float o0 = acc[2 * m + 1][2 * i], o1 = acc[2 * m + 1][2 * i + 1];
                // send the partner the block it writes; receive the half of the block this lane writes
                const float s0 = __shfl_xor_sync(0xffffffffu, odd ? e0 : o0, 1);
                const float s1 = __shfl_xor_sync(0xffffffffu, odd ? e1 : o1, 1);
                const float4 v = odd ? make_float4(s0, s1, o0, o1) : make_float4(e0, e1, s0, s1);
                if (q < T)
                    atomicAdd(reinterpret_cast<float4*>(dqg + 8 * (2 * m + odd)),
                              make_float4(v.x * scale, v.y * scale, v.z * scale, v.w * scale));
            }
#else
            if (q >= T) continue;
            float* dqg = dq + ((size_t)b * T + q) * H * D + (size_t)h * D + c;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                atomicAdd(dqg + 8 * n, acc[n][2 * i] * scale);
                atomicAdd(dqg + 8 * n + 1, acc[n][2 * i + 1] * scale);
            }
#endif
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
