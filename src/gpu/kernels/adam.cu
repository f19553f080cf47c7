// One Adam / AdamW step over a parameter tensor in place: parameter, first and second moments
// (f32), from its f32 gradient, in one pass — the composed update takes about ten kernels per
// parameter tensor, each a pass over it.

#include <stddef.h>

// decoupled = 1: AdamW (θ ← θ·(1 − lr·wd)); 0: Adam with L2 (g ← g + wd·θ).
// bias1 = 1 − β1ᵗ, bias2 = 1 − β2ᵗ; gscale multiplies the gradient (global-norm clipping).
extern "C" __global__ void adam_step_f32(float* __restrict__ p, float* __restrict__ m,
                                         float* __restrict__ v, const float* __restrict__ g,
                                         size_t n, float lr, float b1, float b2, float eps,
                                         float wd, int decoupled, float bias1, float bias2,
                                         float gscale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float gi = g[i] * gscale;
        float th = p[i];
        if (wd > 0.f) {
            if (decoupled) th *= 1.f - lr * wd;
            else gi += wd * th;
        }
        const float mi = b1 * m[i] + (1.f - b1) * gi;
        const float vi = b2 * v[i] + (1.f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = th - lr * ((mi / bias1) / (sqrtf(vi / bias2) + eps));
    }
}

// acc[0] += Σ g[i]² (f32): a gradient's share of the global norm, each block's partial sum added
// by one atomic (a kernel per gradient, where the composed sum takes three and a stack copy).
extern "C" __global__ void sum_squares_f32(float* __restrict__ acc, const float* __restrict__ g, size_t n) {
    __shared__ float part[32];
    float s = 0.f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const float v = g[i];
        s += v * v;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x < 32) {
        s = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (threadIdx.x == 0) atomicAdd(acc, s);
    }
}
