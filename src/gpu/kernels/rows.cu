// Row-wise kernels of the transformer's layers over [rows, N] tensors (f32 or bf16 values, f32
// parameters and statistics): a linear layer's bias (+ exact GELU) and LayerNorm, forward and
// backward, each in one pass where candle's broadcasting ops take several slow ones.

#include <cuda_bf16.h>
#include <stdint.h>

#include "vec.cuh"

typedef __nv_bfloat16 bf16;

namespace {

__device__ __forceinline__ float load(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const bf16* p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(bf16* p, size_t i, float v) { p[i] = __float2bfloat16(v); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

constexpr float SQRT1_2 = 0.70710678118654752f;
constexpr float INV_SQRT_2PI = 0.39894228040143268f;

__device__ __forceinline__ float gelu(float u) { return 0.5f * u * (1.f + erff(u * SQRT1_2)); }
__device__ __forceinline__ float gelu_grad(float u) {
    return 0.5f * (1.f + erff(u * SQRT1_2)) + u * INV_SQRT_2PI * __expf(-0.5f * u * u);
}

// y = x + b[channel] for x [B, N, H, W] (a convolution's bias), inner = H·W
template <typename T>
__device__ void bias_channel_fwd(const T* x, const float* b, T* y, int planes, int N, int inner) {
    // blockIdx.y walks the (batch, channel) planes, blockIdx.x the positions inside one
    for (int p = blockIdx.y; p < planes; p += gridDim.y) {
        const float bias = b[p % N];
        const size_t at = (size_t)p * inner;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < inner; i += gridDim.x * blockDim.x)
            store(y, at + i, load(x, at + i) + bias);
    }
}


// y += b[channel] in place for y [B, N, H, W] (a convolution's fresh output), inner = H·W; eight
// values per thread where planes are a multiple of 8 long and y is 16-byte aligned
template <typename T>
__device__ void bias_channel_inplace(T* y, const float* b, int planes, int N, int inner) {
    const bool vec = inner % 8 == 0 && aligned16(y);
    for (int p = blockIdx.y; p < planes; p += gridDim.y) {
        const float bias = b[p % N];
        const size_t at = (size_t)p * inner;
        if (vec) {
            for (int i = (blockIdx.x * blockDim.x + threadIdx.x) * 8; i < inner; i += gridDim.x * blockDim.x * 8) {
                float v[8];
                load8(y, at + i, v);
#pragma unroll
                for (int k = 0; k < 8; ++k) v[k] += bias;
                store8(y, at + i, v);
            }
        } else {
            for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < inner; i += gridDim.x * blockDim.x)
                store(y, at + i, load(y, at + i) + bias);
        }
    }
}

// Runs f(i, column) over the elements of a [rows, N] tensor: eight at a time when N is a
// multiple of 8 and `vec` (the tensors are 16-byte aligned), else one at a time. The column
// advances by the grid's stride each step rather than by a 64-bit modulo per element.
template <typename F8, typename F1>
__device__ __forceinline__ void over_columns(size_t n, int N, bool vec, F8 f8, F1 f1) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    if (vec && N % 8 == 0) {
        const size_t n8 = n / 8;
        if (i >= n8) return;
        int col = (int)((i * 8) % N);
        const int step = (int)((stride * 8) % N);
        for (; i < n8; i += stride) {
            f8(i * 8, col);
            col += step;
            if (col >= N) col -= N;
        }
    } else {
        for (; i < n; i += stride) f1(i, (int)(i % N));
    }
}

// y = act(x + b[column]); act 1 = exact GELU
template <typename T>
__device__ void bias_act_fwd(const T* x, const float* b, T* y, size_t n, int N, int act) {
    over_columns(
        n, N, aligned16(x) && aligned16(y),
        [&](size_t i, int col) {
            float v[8];
            load8(x, i, v);
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float u = v[k] + b[col + k];
                v[k] = act ? gelu(u) : u;
            }
            store8(y, i, v);
        },
        [&](size_t i, int col) {
            const float u = load(x, i) + b[col];
            store(y, i, act ? gelu(u) : u);
        });
}

// y += b[column], in place
template <typename T>
__device__ void bias_add_inplace(T* y, const float* b, size_t n, int N) {
    over_columns(
        n, N, aligned16(y),
        [&](size_t i, int col) {
            float v[8];
            load8(y, i, v);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] += b[col + k];
            store8(y, i, v);
        },
        [&](size_t i, int col) { store(y, i, load(y, i) + b[col]); });
}

// y += b[column] + r, in place: a linear layer's bias and the residual stream it adds onto
template <typename T>
__device__ void bias_residual_inplace(T* y, const float* b, const T* r, size_t n, int N) {
    over_columns(
        n, N, aligned16(y) && aligned16(r),
        [&](size_t i, int col) {
            float v[8], u[8];
            load8(y, i, v);
            load8(r, i, u);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] += b[col + k] + u[k];
            store8(y, i, v);
        },
        [&](size_t i, int col) { store(y, i, load(y, i) + b[col] + load(r, i)); });
}

// A uniform draw in (0, 1) from the counter `i` of stream `seed` (splitmix64's finaliser; 24
// bits, never 0 or 1), and a standard Gumbel draw from it.
__device__ __forceinline__ float uniform(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return ((float)(z >> 40) + 0.5f) * (1.f / 16777216.f);
}
__device__ __forceinline__ float gumbel(unsigned long long seed, unsigned long long i) {
    return -logf(-logf(uniform(seed, i)));
}

// (value, index) of the larger value; the lower index on ties (the first maximum)
__device__ __forceinline__ void arg_max_merge(float& v, int& i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) v = v2, i = i2;
}

// One MaskGIT step's token choice, a warp per token: for a `[MASK]` token (`tokens[r] ==
// mask`), z = logits[r, :] · inv_temp; the choice is argmax z (top1) or argmax z + Gumbel over
// the codes with z ≥ max z + ln min_p (a sample of softmax z truncated to the codes at least
// min_p times as likely as the most likely one; min_p 0 keeps all); conf = log softmax(z)[choice]
// + noise · Gumbel. A known token keeps its value with conf +∞ (it never competes for a mask).
// out[r] = conf, out[rows + r] = the token (as f32; ids below 2²⁴). Row r = (b, t) of the logits
// lies at b·batch_stride + t·K.
template <typename T>
__device__ void choose_tokens(const T* logits, const uint32_t* tokens, float* out, int rows, int L, int K,
                              size_t batch_stride, uint32_t mask, float inv_temp, int top1, float min_p,
                              float noise, unsigned long long seed) {
    const int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (r >= rows) return;
    const uint32_t current = tokens[r];
    if (current != mask) {
        if (lane == 0) {
            out[r] = INFINITY;
            out[rows + r] = (float)current;
        }
        return;
    }
    const T* z = logits + (size_t)(r / L) * batch_stride + (size_t)(r % L) * K;
    const unsigned long long base = (unsigned long long)r * K;
    float mz = -INFINITY;
    for (int k = lane; k < K; k += 32) mz = fmaxf(mz, load(z, k) * inv_temp);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mz = fmaxf(mz, __shfl_xor_sync(0xffffffffu, mz, o));
    // the perturbed maximum that picks the token, and the softmax's sum
    const float cut = min_p > 0.f ? mz + logf(min_p) : -INFINITY;
    float best = -INFINITY, s = 0.f;
    int pick = 0;
    for (int k = lane; k < K; k += 32) {
        const float v = load(z, k) * inv_temp;
        s += __expf(v - mz);
        if (top1) arg_max_merge(best, pick, v, k);
        else if (v >= cut) arg_max_merge(best, pick, v + gumbel(seed, base + k), k);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        arg_max_merge(best, pick, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, pick, o));
    s = warp_sum(s);
    if (lane == 0) {
        float conf = load(z, pick) * inv_temp - mz - logf(s);
        // the confidence's noise: a second stream, one draw per token
        if (noise != 0.f) conf += noise * gumbel(~seed, r);
        out[r] = conf;
        out[rows + r] = (float)pick;
    }
}

// dx = dy · GELU'(x + b[column])
template <typename T>
__device__ void bias_gelu_bwd(const T* x, const float* b, const T* dy, T* dx, size_t n, int N) {
    over_columns(
        n, N, aligned16(x) && aligned16(dy) && aligned16(dx),
        [&](size_t i, int col) {
            float v[8], g[8];
            load8(x, i, v);
            load8(dy, i, g);
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = g[k] * gelu_grad(v[k] + b[col + k]);
            store8(dx, i, v);
        },
        [&](size_t i, int col) { store(dx, i, load(dy, i) * gelu_grad(load(x, i) + b[col])); });
}

// out[r] = Σ_c g[r, c], a block per row (a convolution bias's gradient: rows are the (b, c) planes)
template <typename T>
__device__ void row_sum(const T* g, float* out, int cols) {
    __shared__ float part[32];
    const size_t at = (size_t)blockIdx.x * cols;
    float acc = 0.f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) acc += load(g, at + c);
    acc = warp_sum(acc);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.f;
        acc = warp_sum(acc);
        if (threadIdx.x == 0) out[blockIdx.x] = acc;
    }
}

// out[c] += Σ over this block's rows of g[r, c] (a thread per column, coalesced along the row;
// out zeroed by the caller, blocks along y take `chunk` rows each)
template <typename T>
__device__ void column_sum(const T* g, float* out, int rows, int N, int chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= N) return;
    const int r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float acc = 0.f;
    for (int r = r0; r < r1; ++r) acc += load(g, (size_t)r * N + c);
    atomicAdd(out + c, acc);
}

// LayerNorm, a warp per row: stats[r] = mean, stats[rows + r] = 1/σ (two passes for the
// variance, the row in L1 meanwhile)
template <typename T>
__device__ void ln_fwd(const T* x, const float* w, const float* b, T* y, float* stats, int rows, int D, float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const size_t at = (size_t)row * D;
    float s = 0.f;
    for (int c = lane; c < D; c += 32) s += load(x, at + c);
    const float mean = warp_sum(s) / D;
    float v = 0.f;
    for (int c = lane; c < D; c += 32) {
        const float d = load(x, at + c) - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(warp_sum(v) / D + eps);
    for (int c = lane; c < D; c += 32) store(y, at + c, (load(x, at + c) - mean) * rstd * w[c] + b[c]);
    if (lane == 0) {
        stats[row] = mean;
        stats[rows + row] = rstd;
    }
}

// dx = (1/σ)·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·w, a warp per row
template <typename T>
__device__ void ln_bwd_input(const T* x, const float* w, const T* dy, const float* stats, T* dx, int rows, int D) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const size_t at = (size_t)row * D;
    const float mean = stats[row], rstd = stats[rows + row];
    float sg = 0.f, sgx = 0.f;
    for (int c = lane; c < D; c += 32) {
        const float g = load(dy, at + c) * w[c];
        sg += g;
        sgx += g * (load(x, at + c) - mean) * rstd;
    }
    const float mg = warp_sum(sg) / D, mgx = warp_sum(sgx) / D;
    for (int c = lane; c < D; c += 32) {
        const float xh = (load(x, at + c) - mean) * rstd;
        store(dx, at + c, rstd * (load(dy, at + c) * w[c] - mg - xh * mgx));
    }
}

// dp[c] += Σ_r dy·x̂ (the scale's gradient), dp[D + c] += Σ_r dy (the shift's), a thread per
// column over this block's rows
template <typename T>
__device__ void ln_bwd_params(const T* x, const T* dy, const float* stats, float* dp, int rows, int D, int chunk) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= D) return;
    const int r0 = blockIdx.y * chunk, r1 = min(rows, r0 + chunk);
    float dw = 0.f, db = 0.f;
    for (int r = r0; r < r1; ++r) {
        const float g = load(dy, (size_t)r * D + c);
        dw += g * (load(x, (size_t)r * D + c) - stats[r]) * stats[rows + r];
        db += g;
    }
    atomicAdd(dp + c, dw);
    atomicAdd(dp + D + c, db);
}

// The LayerNorm backward pass in one pass over rows of D = 256·K values (16-byte aligned), a warp
// per row, lane l holding columns 256k + 8l … 256k + 8l + 7: dx = r + (1/σ)·(g − mean(g) −
// x̂·mean(g·x̂)) with g = dy·w, where r is a gradient reaching the same tensor by a residual path
// (optional; dx skipped when null), and the scale's and shift's gradients dp[c] += Σ dy·x̂,
// dp[D + c] += Σ dy, summed in registers over the warp's rows, in shared memory over the
// block's warps, then one atomic per column and block (dp zeroed by the caller). x and dy are
// read once, where the row kernel and the column pass above read them twice.
template <typename T, int K>
__device__ void ln_bwd_rows(const T* x, const float* w, const T* dy, const T* res, const float* stats, T* dx,
                            float* dp, int rows) {
    constexpr int D = 256 * K;
    __shared__ float part[2 * D];
    const int lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int i = threadIdx.x; i < 2 * D; i += blockDim.x) part[i] = 0.f;
    // (the scale is re-read from L1 per row: in registers it would cost the occupancy that
    // keeps enough loads in flight)
    float dw[K][8], db[K][8];
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
        for (int j = 0; j < 8; ++j) dw[k][j] = db[k][j] = 0.f;
    for (int r = blockIdx.x * warps + threadIdx.x / 32; r < rows; r += gridDim.x * warps) {
        const size_t at = (size_t)r * D + 8 * lane;
        const float mean = stats[r], rstd = stats[rows + r];
        float xh[K][8], g[K][8];
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            load8(x, at + 256 * k, xh[k]);
            load8(dy, at + 256 * k, g[k]);
            float wv[8];
            load8(w, 256 * k + 8 * lane, wv);
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                xh[k][j] = (xh[k][j] - mean) * rstd;
                dw[k][j] += g[k][j] * xh[k][j];
                db[k][j] += g[k][j];
                g[k][j] *= wv[j];
                sg += g[k][j];
                sgx += g[k][j] * xh[k][j];
            }
        }
        if (dx == nullptr) continue;  // the same for the whole warp
        const float mg = warp_sum(sg) / D, mgx = warp_sum(sgx) / D;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
            if (res != nullptr) load8(res, at + 256 * k, v);
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] += rstd * (g[k][j] - mg - xh[k][j] * mgx);
            store8(dx, at + 256 * k, v);
        }
    }
    __syncthreads();  // the block's sums are zeroed
#pragma unroll
    for (int k = 0; k < K; ++k)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            atomicAdd(part + 256 * k + 8 * lane + j, dw[k][j]);
            atomicAdd(part + D + 256 * k + 8 * lane + j, db[k][j]);
        }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * D; i += blockDim.x) atomicAdd(dp + i, part[i]);
}

}  // namespace

// out[i, :] = table[ids[i], :] (rows past the table's `V` rows read zeros), f32 tables
extern "C" __global__ void gather_rows_f32(const float* table, const uint32_t* ids, float* out, size_t n, int D, int V) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t id = ids[i / D];
        out[i] = id < (uint32_t)V ? table[(size_t)id * D + i % D] : 0.f;
    }
}

// dtable[ids[i], :] += g[i, :], atomically (ids past the table are skipped)
extern "C" __global__ void scatter_add_rows_f32(const float* g, const uint32_t* ids, float* dtable, size_t n, int D, int V) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t id = ids[i / D];
        if (id < (uint32_t)V) atomicAdd(dtable + (size_t)id * D + i % D, g[i]);
    }
}

// two blocks of 256 per SM where the registers allow it without spilling (bf16 rows up to 768,
// f32 up to 512)
#define LN_BWD_BLOCKS(T, K) ((sizeof(T) == 2 ? (K) <= 3 : (K) <= 2) ? 2 : 1)
#define LN_BWD_ROWS(T, S, K)                                                                        \
    extern "C" __global__ void __launch_bounds__(256, LN_BWD_BLOCKS(T, K)) ln_bwd_rows##K##_##S(const T* x, const float* w, const T* dy,         \
                                                   const T* res, const float* stats, T* dx,          \
                                                   float* dp, int rows) {                            \
        ln_bwd_rows<T, K>(x, w, dy, res, stats, dx, dp, rows);                                       \
    }

#define ROWS_ENTRY_POINTS(T, S)                                                                     \
    extern "C" __global__ void bias_act_fwd_##S(const T* x, const float* b, T* y, size_t n, int N,  \
                                                int act) {                                          \
        bias_act_fwd(x, b, y, n, N, act);                                                           \
    }                                                                                               \
    extern "C" __global__ void bias_channel_fwd_##S(const T* x, const float* b, T* y, int planes,    \
                                                    int N, int inner) {                             \
        bias_channel_fwd(x, b, y, planes, N, inner);                                                     \
    }                                                                                               \
    extern "C" __global__ void bias_channel_inplace_##S(T* y, const float* b, int planes, int N,    \
                                                        int inner) {                                \
        bias_channel_inplace(y, b, planes, N, inner);                                               \
    }                                                                                               \
    extern "C" __global__ void row_sum_##S(const T* g, float* out, int cols) {                       \
        row_sum(g, out, cols);                                                                      \
    }                                                                                               \
    extern "C" __global__ void bias_add_inplace_##S(T* y, const float* b, size_t n, int N) {       \
        bias_add_inplace(y, b, n, N);                                                               \
    }                                                                                               \
    extern "C" __global__ void bias_residual_inplace_##S(T* y, const float* b, const T* r, size_t n, \
                                                         int N) {                                   \
        bias_residual_inplace(y, b, r, n, N);                                                       \
    }                                                                                               \
    extern "C" __global__ void choose_tokens_##S(const T* logits, const uint32_t* tokens, float* out, \
                                                 int rows, int L, int K, size_t batch_stride,       \
                                                 uint32_t mask, float inv_temp, int top1,           \
                                                 float min_p, float noise,                          \
                                                 unsigned long long seed) {                         \
        choose_tokens(logits, tokens, out, rows, L, K, batch_stride, mask, inv_temp, top1, min_p,   \
                      noise, seed);                                                                 \
    }                                                                                               \
    extern "C" __global__ void bias_gelu_bwd_##S(const T* x, const float* b, const T* dy, T* dx,    \
                                                 size_t n, int N) {                                 \
        bias_gelu_bwd(x, b, dy, dx, n, N);                                                          \
    }                                                                                               \
    extern "C" __global__ void column_sum_##S(const T* g, float* out, int rows, int N, int chunk) {  \
        column_sum(g, out, rows, N, chunk);                                                         \
    }                                                                                               \
    extern "C" __global__ void ln_fwd_##S(const T* x, const float* w, const float* b, T* y,          \
                                          float* stats, int rows, int D, float eps) {               \
        ln_fwd(x, w, b, y, stats, rows, D, eps);                                                    \
    }                                                                                               \
    extern "C" __global__ void ln_bwd_input_##S(const T* x, const float* w, const T* dy,             \
                                                const float* stats, T* dx, int rows, int D) {       \
        ln_bwd_input(x, w, dy, stats, dx, rows, D);                                                 \
    }                                                                                               \
    extern "C" __global__ void ln_bwd_params_##S(const T* x, const T* dy, const float* stats,        \
                                                 float* dp, int rows, int D, int chunk) {           \
        ln_bwd_params(x, dy, stats, dp, rows, D, chunk);                                            \
    }                                                                                               \
    LN_BWD_ROWS(T, S, 1)                                                                            \
    LN_BWD_ROWS(T, S, 2)                                                                            \
    LN_BWD_ROWS(T, S, 3)                                                                            \
    LN_BWD_ROWS(T, S, 4)

ROWS_ENTRY_POINTS(float, f32)
ROWS_ENTRY_POINTS(bf16, bf16)
