// Fused GroupNorm with optional spatial modulation and SiLU, forward and backward.
//
//   u = (x − mean) · rstd · gamma[c] + beta[c]              (GroupNorm, statistics in f32)
//   z = u · S[b, c, h / fh, w / fw] + T[b, c, h / fh, w / fw]   (SpatialNorm; skipped when !spatial)
//   y = silu(z) or z
//
// x, y, dy, dx are [B, C, H·W] contiguous in T (float or bf16). Every other buffer is f32 and
// packed (see src/gpu/group_norm.rs):
//   p    = [gamma C][beta C][S B·C·cells][T B·C·cells]   (cells = zh·zw; zh = zw = 0 unless spatial)
//   side = [dgamma B·C][dbeta B·C][dS B·C·cells][dT B·C·cells][mean B·G][rstd B·G][sum1 B·G][sum2 B·G]
// dgamma and dbeta are per-batch partial sums (summed over B by the caller).
//
// One block per (b, g) for the reductions; the group's elements are contiguous.

#include <cuda_bf16.h>
#include <stdint.h>

template <typename T> __device__ __forceinline__ float load(const T* p, size_t i);
template <> __device__ __forceinline__ float load<float>(const float* p, size_t i) { return p[i]; }
template <> __device__ __forceinline__ float load<__nv_bfloat16>(const __nv_bfloat16* p, size_t i) {
  return __bfloat162float(p[i]);
}
template <typename T> __device__ __forceinline__ void store(T* p, size_t i, float v);
template <> __device__ __forceinline__ void store<float>(float* p, size_t i, float v) { p[i] = v; }
template <> __device__ __forceinline__ void store<__nv_bfloat16>(__nv_bfloat16* p, size_t i, float v) {
  p[i] = __float2bfloat16(v);
}

struct Welford {
  float n, mean, m2;
};

__device__ __forceinline__ Welford combine(Welford a, Welford b) {
  float n = a.n + b.n;
  if (n == 0.f) return a;
  float d = b.mean - a.mean;
  float fb = b.n / n;
  Welford r;
  r.n = n;
  r.mean = a.mean + d * fb;
  r.m2 = a.m2 + b.m2 + d * d * a.n * fb;
  return r;
}

__device__ Welford warp_welford(Welford v) {
  for (int o = 16; o > 0; o >>= 1) {
    Welford u;
    u.n = __shfl_down_sync(0xffffffffu, v.n, o);
    u.mean = __shfl_down_sync(0xffffffffu, v.mean, o);
    u.m2 = __shfl_down_sync(0xffffffffu, v.m2, o);
    v = combine(v, u);
  }
  return v;
}

// The block's combined statistics, in every thread. blockDim.x is a multiple of 32, ≤ 1024.
__device__ Welford block_welford(Welford v) {
  __shared__ Welford sh[32];
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_welford(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  if (wid == 0) {
    Welford z = {0.f, 0.f, 0.f};
    v = warp_welford(lane < nw ? sh[lane] : z);
    if (lane == 0) sh[0] = v;
  }
  __syncthreads();
  return sh[0];
}

// Sums of two values over the block, in every thread.
__device__ float2 block_sum2(float a, float b) {
  __shared__ float2 sh[32];
  int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_down_sync(0xffffffffu, a, o);
    b += __shfl_down_sync(0xffffffffu, b, o);
  }
  __syncthreads();
  if (lane == 0) sh[wid] = make_float2(a, b);
  __syncthreads();
  if (wid == 0) {
    float2 v = lane < nw ? sh[lane] : make_float2(0.f, 0.f);
    for (int o = 16; o > 0; o >>= 1) {
      v.x += __shfl_down_sync(0xffffffffu, v.x, o);
      v.y += __shfl_down_sync(0xffffffffu, v.y, o);
    }
    if (lane == 0) sh[0] = v;
  }
  __syncthreads();
  return sh[0];
}

// Mean and 1/sqrt(var + eps) of n contiguous values (population variance).
template <typename T>
__device__ float2 group_stats(const T* xg, size_t n, float eps) {
  Welford acc = {0.f, 0.f, 0.f};
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
    float v = load(xg, i);
    acc.n += 1.f;
    float d = v - acc.mean;
    acc.mean += d / acc.n;
    acc.m2 += d * (v - acc.mean);
  }
  Welford t = block_welford(acc);
  return make_float2(t.mean, rsqrtf(t.m2 / t.n + eps));
}

struct Shape {
  int B, C, H, W, G, zh, zw, spatial, silu;
  float eps;
};

__device__ __forceinline__ size_t cell_of(const Shape& s, int b, int c, int pix) {
  int h = pix / s.W, w = pix - h * s.W;
  int fh = s.H / s.zh, fw = s.W / s.zw;
  return ((size_t)(b * s.C + c) * s.zh + h / fh) * s.zw + w / fw;
}

template <typename T>
__device__ void fwd(const T* x, const float* p, T* y, Shape s) {
  int bg = blockIdx.x, b = bg / s.G, g = bg - b * s.G;
  int cg = s.C / s.G, hw = s.H * s.W;
  size_t n = (size_t)cg * hw, base = (size_t)bg * n;
  float2 st = group_stats(x + base, n, s.eps);
  const float* gamma = p;
  const float* beta = p + s.C;
  const float* S = p + 2 * s.C;
  const float* Tm = S + (size_t)s.B * s.C * s.zh * s.zw;
  for (int cc = 0; cc < cg; cc++) {
    int c = g * cg + cc;
    float ga = gamma[c] * st.y, be = beta[c] - st.x * ga;  // u = x · ga + be
    size_t off = base + (size_t)cc * hw;
    for (int pix = threadIdx.x; pix < hw; pix += blockDim.x) {
      float z = load(x, off + pix) * ga + be;
      if (s.spatial) {
        size_t k = cell_of(s, b, c, pix);
        z = z * S[k] + Tm[k];
      }
      if (s.silu) z = z / (1.f + expf(-z));
      store(y, off + pix, z);
    }
  }
}

// The reductions of the backward pass, one block per (b, g): statistics, dgamma/dbeta partials,
// dS/dT per cell, and the group sums of g·gamma and g·gamma·x̂ (g the gradient of u).
template <typename T>
__device__ void bwd_reduce(const T* x, const T* dy, const float* p, float* side, Shape s) {
  int bg = blockIdx.x, b = bg / s.G, g = bg - b * s.G;
  int cg = s.C / s.G, hw = s.H * s.W;
  size_t n = (size_t)cg * hw, base = (size_t)bg * n;
  float2 st = group_stats(x + base, n, s.eps);
  size_t bc = (size_t)s.B * s.C, cells_all = bc * s.zh * s.zw;
  const float* gamma = p;
  const float* beta = p + s.C;
  const float* S = p + 2 * s.C;
  const float* Tm = S + cells_all;
  float* dgamma = side;
  float* dbeta = side + bc;
  float* dS = side + 2 * bc;
  float* dT = dS + cells_all;
  float* stats = dT + cells_all;
  size_t bgn = (size_t)s.B * s.G;
  // without modulation a cell is a pixel
  int zh = s.spatial ? s.zh : s.H, zw = s.spatial ? s.zw : s.W;
  int fh = s.H / zh, fw = s.W / zw, cells = zh * zw;
  float s1 = 0.f, s2 = 0.f;
  for (int cc = 0; cc < cg; cc++) {
    int c = g * cg + cc;
    size_t off = base + (size_t)cc * hw;
    float ga = gamma[c], be = beta[c], gg = 0.f, gb = 0.f;
    for (int cell = threadIdx.x; cell < cells; cell += blockDim.x) {
      int ch = cell / zw, cw = cell - ch * zw;
      size_t k = ((size_t)(b * s.C + c)) * cells + cell;
      float sv = s.spatial ? S[k] : 1.f, tv = s.spatial ? Tm[k] : 0.f;
      float ds = 0.f, dt = 0.f;
      for (int i = 0; i < fh; i++) {
        for (int j = 0; j < fw; j++) {
          size_t e = off + (size_t)(ch * fh + i) * s.W + cw * fw + j;
          float xh = (load(x, e) - st.x) * st.y;
          float u = xh * ga + be;
          float gz = load(dy, e);
          if (s.silu) {
            float z = u * sv + tv;
            float sg = 1.f / (1.f + expf(-z));
            gz *= sg * (1.f + z * (1.f - sg));
          }
          ds += gz * u;
          dt += gz;
          float gu = gz * sv;
          gg += gu * xh;
          gb += gu;
          float gx = gu * ga;
          s1 += gx;
          s2 += gx * xh;
        }
      }
      if (s.spatial) {
        dS[k] = ds;
        dT[k] = dt;
      }
    }
    float2 r = block_sum2(gg, gb);
    if (threadIdx.x == 0) {
      dgamma[(size_t)b * s.C + c] = r.x;
      dbeta[(size_t)b * s.C + c] = r.y;
    }
  }
  float2 r = block_sum2(s1, s2);
  if (threadIdx.x == 0) {
    stats[bg] = st.x;
    stats[bgn + bg] = st.y;
    stats[2 * bgn + bg] = r.x;
    stats[3 * bgn + bg] = r.y;
  }
}

// dx = rstd · (gx − mean(gx) − x̂ · mean(gx · x̂)) elementwise; ps = p ++ side. Blocks along y
// walk the (b, c) planes, along x the pixels of a plane.
template <typename T>
__device__ void bwd_input(const T* x, const T* dy, const float* ps, T* dx, Shape s) {
  size_t bc_all = (size_t)s.B * s.C, cells_all = bc_all * s.zh * s.zw;
  const float* gamma = ps;
  const float* beta = ps + s.C;
  const float* S = ps + 2 * s.C;
  const float* Tm = S + cells_all;
  const float* stats = Tm + cells_all + 2 * bc_all + 2 * cells_all;  // past p, dgamma, dbeta, dS, dT
  size_t bgn = (size_t)s.B * s.G;
  int hw = s.H * s.W, cg = s.C / s.G;
  float inv_n = 1.f / ((float)cg * (float)hw);
  for (int bc = blockIdx.y; bc < s.B * s.C; bc += gridDim.y) {
    int b = bc / s.C, c = bc - b * s.C;
    size_t bg = (size_t)b * s.G + c / cg;
    float mean = stats[bg], rstd = stats[bgn + bg];
    float m1 = stats[2 * bgn + bg] * inv_n, m2 = stats[3 * bgn + bg] * inv_n;
    float ga = gamma[c], be = beta[c];
    size_t off = (size_t)bc * hw;
    for (int pix = blockIdx.x * blockDim.x + threadIdx.x; pix < hw; pix += gridDim.x * blockDim.x) {
      float xh = (load(x, off + pix) - mean) * rstd;
      float gz = load(dy, off + pix);
      float sv = 1.f;
      if (s.spatial) {
        size_t k = cell_of(s, b, c, pix);
        sv = S[k];
        if (s.silu) {
          float z = (xh * ga + be) * sv + Tm[k];
          float sg = 1.f / (1.f + expf(-z));
          gz *= sg * (1.f + z * (1.f - sg));
        }
      } else if (s.silu) {
        float z = xh * ga + be;
        float sg = 1.f / (1.f + expf(-z));
        gz *= sg * (1.f + z * (1.f - sg));
      }
      float gx = gz * sv * ga;
      store(dx, off + pix, rstd * (gx - m1 - xh * m2));
    }
  }
}

#define SHAPE_ARGS int B, int C, int H, int W, int G, int zh, int zw, int spatial, int silu, float eps
#define SHAPE Shape{B, C, H, W, G, zh, zw, spatial, silu, eps}

extern "C" __global__ void gn_fwd_f32(const float* x, const float* p, float* y, SHAPE_ARGS) {
  fwd<float>(x, p, y, SHAPE);
}
extern "C" __global__ void gn_fwd_bf16(const __nv_bfloat16* x, const float* p, __nv_bfloat16* y,
                                       SHAPE_ARGS) {
  fwd<__nv_bfloat16>(x, p, y, SHAPE);
}
extern "C" __global__ void gn_bwd_reduce_f32(const float* x, const float* dy, const float* p,
                                             float* side, SHAPE_ARGS) {
  bwd_reduce<float>(x, dy, p, side, SHAPE);
}
extern "C" __global__ void gn_bwd_reduce_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy,
                                              const float* p, float* side, SHAPE_ARGS) {
  bwd_reduce<__nv_bfloat16>(x, dy, p, side, SHAPE);
}
extern "C" __global__ void gn_bwd_input_f32(const float* x, const float* dy, const float* ps,
                                            float* dx, SHAPE_ARGS) {
  bwd_input<float>(x, dy, ps, dx, SHAPE);
}
extern "C" __global__ void gn_bwd_input_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy,
                                             const float* ps, __nv_bfloat16* dx, SHAPE_ARGS) {
  bwd_input<__nv_bfloat16>(x, dy, ps, dx, SHAPE);
}
