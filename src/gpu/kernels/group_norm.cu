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
// One block per (b, g) for the reductions; the group's elements are contiguous. Where rows are
// a multiple of 8 wide and the tensors 16-byte aligned (every layer of the models), each thread
// takes 8 consecutive pixels of a row at once (vector loads, one Welford merge per 8 values, the
// modulation's cells walked without a division per pixel, the backward pass's per-cell sums
// gathered in shared memory over coalesced reads): at 16 × 128 × 256² in bf16 on the H200 the
// scalar kernels took 1.3 ms (forward) and 1.4 + 2.0 ms (backward) where the data moves in ~0.2.

#include <cuda_bf16.h>
#include <stdint.h>

#include "vec.cuh"

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

// The end of a backward reduction block: its group's mean and 1/σ (`st`) and the block's sums
// of gx and gx·x̂ (`s1`, `s2`, summed over the block here) into the stats (`bgn` = B·G groups).
__device__ void write_group_stats(float* stats, size_t bgn, int bg, float2 st, float s1, float s2) {
  float2 r = block_sum2(s1, s2);
  if (threadIdx.x == 0) {
    stats[bg] = st.x;
    stats[bgn + bg] = st.y;
    stats[2 * bgn + bg] = r.x;
    stats[3 * bgn + bg] = r.y;
  }
}

__device__ __forceinline__ float silu(float z) { return z / (1.f + __expf(-z)); }
__device__ __forceinline__ float silu_grad(float z) {
  float sg = 1.f / (1.f + __expf(-z));
  return sg * (1.f + z * (1.f - sg));
}

// One pixel's share of the backward reductions, from x̂, the output's gradient `gz`, the
// channel's gamma and beta and the pixel's modulation (sv, tv): its cell's ds and dt, its
// channel's gg and gb (dgamma, dbeta) and its group's s1 and s2 (the sums of gx and gx·x̂).
__device__ __forceinline__ void reduce_pixel(float xh, float gz, float ga, float be, float sv, float tv,
                                             int silu, float& ds, float& dt, float& gg, float& gb,
                                             float& s1, float& s2) {
  float u = xh * ga + be;
  if (silu) gz *= silu_grad(u * sv + tv);
  ds += gz * u;
  dt += gz;
  float gu = gz * sv;
  gg += gu * xh;
  gb += gu;
  float gx = gu * ga;
  s1 += gx;
  s2 += gx * xh;
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

// The parts of the packed parameters p = [gamma C][beta C][S B·C·cells][T B·C·cells].
struct Params {
  const float *gamma, *beta, *S, *T;
  __device__ Params(const float* p, const Shape& s) {
    gamma = p;
    beta = p + s.C;
    S = p + 2 * s.C;
    T = S + (size_t)s.B * s.C * s.zh * s.zw;
  }
  __device__ size_t len(const Shape& s) const { return (T - gamma) + (size_t)s.B * s.C * s.zh * s.zw; }
};

// The parts of the backward pass's reductions side = [dgamma B·C][dbeta B·C][dS][dT][stats],
// stats = [mean B·G][rstd B·G][sum1 B·G][sum2 B·G]; F is float or const float.
template <typename F>
struct Side {
  F *dgamma, *dbeta, *dS, *dT, *stats;
  __device__ Side(F* side, const Shape& s) {
    size_t bc = (size_t)s.B * s.C, cells_all = bc * s.zh * s.zw;
    dgamma = side;
    dbeta = side + bc;
    dS = side + 2 * bc;
    dT = dS + cells_all;
    stats = dT + cells_all;
  }
};

// What the input gradient of plane bc = (b, c) needs: its group's mean and 1/σ, the group means
// of gx and gx·x̂ (gx = g·gamma, from the reductions), and the channel's gamma and beta.
struct PlaneGrad {
  float mean, rstd, m1, m2, ga, be;
  __device__ PlaneGrad(const Params& P, const float* stats, const Shape& s, int bc) {
    int b = bc / s.C, c = bc - b * s.C, cg = s.C / s.G;
    size_t bgn = (size_t)s.B * s.G, bg = (size_t)b * s.G + c / cg;
    float inv_n = 1.f / ((float)cg * (float)(s.H * s.W));
    mean = stats[bg];
    rstd = stats[bgn + bg];
    m1 = stats[2 * bgn + bg] * inv_n;
    m2 = stats[3 * bgn + bg] * inv_n;
    ga = P.gamma[c];
    be = P.beta[c];
  }
};

template <typename T>
__device__ void fwd(const T* x, const float* p, T* y, Shape s) {
  int bg = blockIdx.x, b = bg / s.G, g = bg - b * s.G;
  int cg = s.C / s.G, hw = s.H * s.W;
  size_t n = (size_t)cg * hw, base = (size_t)bg * n;
  float2 st = group_stats(x + base, n, s.eps);
  Params P(p, s);
  const float *S = P.S, *Tm = P.T;
  for (int cc = 0; cc < cg; cc++) {
    int c = g * cg + cc;
    float ga = P.gamma[c] * st.y, be = P.beta[c] - st.x * ga;  // u = x · ga + be
    size_t off = base + (size_t)cc * hw;
    for (int pix = threadIdx.x; pix < hw; pix += blockDim.x) {
      float z = load(x, off + pix) * ga + be;
      if (s.spatial) {
        size_t k = cell_of(s, b, c, pix);
        z = z * S[k] + Tm[k];
      }
      if (s.silu) z = silu(z);
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
  Params P(p, s);
  Side<float> R(side, s);
  const float *gamma = P.gamma, *beta = P.beta, *S = P.S, *Tm = P.T;
  float *dgamma = R.dgamma, *dbeta = R.dbeta, *dS = R.dS, *dT = R.dT, *stats = R.stats;
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
          reduce_pixel((load(x, e) - st.x) * st.y, load(dy, e), ga, be, sv, tv, s.silu, ds, dt, gg, gb,
                       s1, s2);
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
  write_group_stats(stats, bgn, bg, st, s1, s2);
}

// dx = rstd · (gx − mean(gx) − x̂ · mean(gx · x̂)) elementwise; ps = p ++ side. Blocks along y
// walk the (b, c) planes, along x the pixels of a plane.
template <typename T>
__device__ void bwd_input(const T* x, const T* dy, const float* ps, T* dx, Shape s) {
  Params P(ps, s);
  const float* stats = Side<const float>(ps + P.len(s), s).stats;
  const float *S = P.S, *Tm = P.T;
  int hw = s.H * s.W;
  for (int bc = blockIdx.y; bc < s.B * s.C; bc += gridDim.y) {
    int b = bc / s.C, c = bc - b * s.C;
    PlaneGrad q(P, stats, s, bc);
    float mean = q.mean, rstd = q.rstd, m1 = q.m1, m2 = q.m2, ga = q.ga, be = q.be;
    size_t off = (size_t)bc * hw;
    for (int pix = blockIdx.x * blockDim.x + threadIdx.x; pix < hw; pix += gridDim.x * blockDim.x) {
      float xh = (load(x, off + pix) - mean) * rstd;
      float gz = load(dy, off + pix);
      float sv = 1.f;
      if (s.spatial) {
        size_t k = cell_of(s, b, c, pix);
        sv = S[k];
        if (s.silu) gz *= silu_grad((xh * ga + be) * sv + Tm[k]);
      } else if (s.silu) {
        gz *= silu_grad(xh * ga + be);
      }
      float gx = gz * sv * ga;
      store(dx, off + pix, rstd * (gx - m1 - xh * m2));
    }
  }
}

// ---- the vectorised kernels: 8 pixels of a row per thread and step ----

// The Welford statistics of 8 values merged into `acc` (one division per 8 values).
__device__ __forceinline__ void welford8(Welford& acc, const float* v) {
  float m = 0.f;
#pragma unroll
  for (int k = 0; k < 8; k++) m += v[k];
  m *= 0.125f;
  float q = 0.f;
#pragma unroll
  for (int k = 0; k < 8; k++) q += (v[k] - m) * (v[k] - m);
  acc = combine(acc, Welford{8.f, m, q});
}

template <typename T>
__device__ float2 group_stats8(const T* xg, size_t n, float eps) {
  Welford acc = {0.f, 0.f, 0.f};
  for (size_t i = (size_t)threadIdx.x * 8; i < n; i += (size_t)blockDim.x * 8) {
    float v[8];
    load8(xg, i, v);
    welford8(acc, v);
  }
  Welford t = block_welford(acc);
  return make_float2(t.mean, rsqrtf(t.m2 / t.n + eps));
}

// The modulation cell (index inside a (b, c) plane's zh × zw cells) of pixel `pix` of a plane,
// then of the pixels after it in the same row: one division per 8 pixels, not three per pixel.
struct Cells {
  int cell, rem, fw;
  __device__ Cells() : cell(0), rem(0), fw(1) {}  // no modulation: one cell
  __device__ Cells(const Shape& s, int pix) {
    int h = pix / s.W, w = pix - h * s.W;
    fw = s.W / s.zw;
    int cw = w / fw;
    rem = w - cw * fw;
    cell = h / (s.H / s.zh) * s.zw + cw;
  }
  __device__ __forceinline__ void next() {
    if (++rem == fw) {
      rem = 0;
      ++cell;
    }
  }
};

// Whether the vectorised kernels take these tensors: rows of a multiple of 8 pixels (so 8
// consecutive pixels share a row and a plane) and 16-byte aligned data.
__device__ __forceinline__ bool vec8(const Shape& s, const void* a, const void* b, const void* c) {
  return s.W % 8 == 0 && aligned16(a) && aligned16(b) && aligned16(c);
}

template <typename T>
__device__ void fwd8(const T* x, const float* p, T* y, Shape s) {
  int bg = blockIdx.x, b = bg / s.G, g = bg - b * s.G;
  int cg = s.C / s.G, hw = s.H * s.W, cells = s.zh * s.zw;
  size_t n = (size_t)cg * hw, base = (size_t)bg * n;
  float2 st = group_stats8(x + base, n, s.eps);
  Params P(p, s);
  const float *S = P.S, *Tm = P.T;
  for (int cc = 0; cc < cg; cc++) {
    int c = g * cg + cc;
    float ga = P.gamma[c] * st.y, be = P.beta[c] - st.x * ga;  // u = x · ga + be
    size_t off = base + (size_t)cc * hw, plane = (size_t)(b * s.C + c) * cells;
    for (int pix = threadIdx.x * 8; pix < hw; pix += blockDim.x * 8) {
      float v[8];
      load8(x, off + pix, v);
      if (s.spatial) {
        Cells cl(s, pix);
#pragma unroll
        for (int k = 0; k < 8; k++) {
          v[k] = (v[k] * ga + be) * S[plane + cl.cell] + Tm[plane + cl.cell];
          cl.next();
        }
      } else {
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = v[k] * ga + be;
      }
      if (s.silu) {
#pragma unroll
        for (int k = 0; k < 8; k++) v[k] = silu(v[k]);
      }
      store8(y, off + pix, v);
    }
  }
}

// The most modulation cells per plane whose backward sums fit the shared accumulators.
constexpr int MAX_CELLS = 2048;

// bwd_reduce over 8 pixels at a time: each plane's dS/dT sums gather in shared memory (a thread's
// run of pixels in one cell summed first, then one shared atomic per cell it touched).
template <typename T>
__device__ void bwd_reduce8(const T* x, const T* dy, const float* p, float* side, Shape s) {
  __shared__ float acc[2 * MAX_CELLS];
  int bg = blockIdx.x, b = bg / s.G, g = bg - b * s.G;
  int cg = s.C / s.G, hw = s.H * s.W;
  size_t n = (size_t)cg * hw, base = (size_t)bg * n;
  float2 st = group_stats8(x + base, n, s.eps);
  int cells = s.zh * s.zw;  // 0 without modulation
  Params P(p, s);
  Side<float> R(side, s);
  const float *gamma = P.gamma, *beta = P.beta, *S = P.S, *Tm = P.T;
  float *dgamma = R.dgamma, *dbeta = R.dbeta, *dS = R.dS, *dT = R.dT, *stats = R.stats;
  size_t bgn = (size_t)s.B * s.G;
  float s1 = 0.f, s2 = 0.f;
  for (int cc = 0; cc < cg; cc++) {
    int c = g * cg + cc;
    size_t off = base + (size_t)cc * hw, plane = (size_t)(b * s.C + c) * cells;
    float ga = gamma[c], be = beta[c], gg = 0.f, gb = 0.f;
    if (s.spatial) {
      for (int i = threadIdx.x; i < 2 * cells; i += blockDim.x) acc[i] = 0.f;
      __syncthreads();
    }
    for (int pix = threadIdx.x * 8; pix < hw; pix += blockDim.x * 8) {
      float xv[8], gv[8];
      load8(x, off + pix, xv);
      load8(dy, off + pix, gv);
      Cells cl = s.spatial ? Cells(s, pix) : Cells();
      int cur = cl.cell;
      float ds = 0.f, dt = 0.f;
#pragma unroll
      for (int k = 0; k < 8; k++) {
        float sv = 1.f, tv = 0.f;
        if (s.spatial) {
          if (cl.cell != cur) {
            atomicAdd(acc + cur, ds);
            atomicAdd(acc + cells + cur, dt);
            ds = dt = 0.f;
            cur = cl.cell;
          }
          sv = S[plane + cur];
          tv = Tm[plane + cur];
          cl.next();
        }
        reduce_pixel((xv[k] - st.x) * st.y, gv[k], ga, be, sv, tv, s.silu, ds, dt, gg, gb, s1, s2);
      }
      if (s.spatial) {
        atomicAdd(acc + cur, ds);
        atomicAdd(acc + cells + cur, dt);
      }
    }
    // block_sum2 synchronises the block: every shared atomic of this plane is in after it
    float2 r = block_sum2(gg, gb);
    if (threadIdx.x == 0) {
      dgamma[(size_t)b * s.C + c] = r.x;
      dbeta[(size_t)b * s.C + c] = r.y;
    }
    if (s.spatial) {
      for (int i = threadIdx.x; i < cells; i += blockDim.x) {
        dS[plane + i] = acc[i];
        dT[plane + i] = acc[cells + i];
      }
      __syncthreads();  // read before the next plane clears them
    }
  }
  write_group_stats(stats, bgn, bg, st, s1, s2);
}

template <typename T>
__device__ void bwd_input8(const T* x, const T* dy, const float* ps, T* dx, Shape s) {
  int cells = s.zh * s.zw;
  Params P(ps, s);
  const float* stats = Side<const float>(ps + P.len(s), s).stats;
  const float *S = P.S, *Tm = P.T;
  int hw = s.H * s.W;
  for (int bc = blockIdx.y; bc < s.B * s.C; bc += gridDim.y) {
    PlaneGrad q(P, stats, s, bc);
    float mean = q.mean, rstd = q.rstd, m1 = q.m1, m2 = q.m2, ga = q.ga, be = q.be;
    size_t off = (size_t)bc * hw, plane = (size_t)bc * cells;
    for (int pix = (blockIdx.x * blockDim.x + threadIdx.x) * 8; pix < hw; pix += gridDim.x * blockDim.x * 8) {
      float xv[8], gv[8];
      load8(x, off + pix, xv);
      load8(dy, off + pix, gv);
      Cells cl = s.spatial ? Cells(s, pix) : Cells();
#pragma unroll
      for (int k = 0; k < 8; k++) {
        float xh = (xv[k] - mean) * rstd;
        float gz = gv[k], sv = 1.f, tv = 0.f;
        if (s.spatial) {
          sv = S[plane + cl.cell];
          tv = Tm[plane + cl.cell];
          cl.next();
        }
        if (s.silu) gz *= silu_grad((xh * ga + be) * sv + tv);
        float gx = gz * sv * ga;
        xv[k] = rstd * (gx - m1 - xh * m2);
      }
      store8(dx, off + pix, xv);
    }
  }
}

#define SHAPE_ARGS int B, int C, int H, int W, int G, int zh, int zw, int spatial, int silu, float eps
#define SHAPE Shape{B, C, H, W, G, zh, zw, spatial, silu, eps}

// Each entry point takes the vectorised kernel where it applies (see vec8), else the scalar one.
template <typename T>
__device__ void fwd_any(const T* x, const float* p, T* y, Shape s) {
  if (vec8(s, x, y, y)) fwd8<T>(x, p, y, s);
  else fwd<T>(x, p, y, s);
}
template <typename T>
__device__ void bwd_reduce_any(const T* x, const T* dy, const float* p, float* side, Shape s) {
  if (vec8(s, x, dy, dy) && (!s.spatial || s.zh * s.zw <= MAX_CELLS)) bwd_reduce8<T>(x, dy, p, side, s);
  else bwd_reduce<T>(x, dy, p, side, s);
}
template <typename T>
__device__ void bwd_input_any(const T* x, const T* dy, const float* ps, T* dx, Shape s) {
  if (vec8(s, x, dy, dx)) bwd_input8<T>(x, dy, ps, dx, s);
  else bwd_input<T>(x, dy, ps, dx, s);
}

extern "C" __global__ void gn_fwd_f32(const float* x, const float* p, float* y, SHAPE_ARGS) {
  fwd_any<float>(x, p, y, SHAPE);
}
extern "C" __global__ void gn_fwd_bf16(const __nv_bfloat16* x, const float* p, __nv_bfloat16* y,
                                       SHAPE_ARGS) {
  fwd_any<__nv_bfloat16>(x, p, y, SHAPE);
}
// (two blocks of GROUP_BLOCK = 512 threads per SM: at most 64 registers)
extern "C" __global__ void __launch_bounds__(512, 2) gn_bwd_reduce_f32(const float* x, const float* dy, const float* p,
                                             float* side, SHAPE_ARGS) {
  bwd_reduce_any<float>(x, dy, p, side, SHAPE);
}
extern "C" __global__ void __launch_bounds__(512, 2) gn_bwd_reduce_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy,
                                              const float* p, float* side, SHAPE_ARGS) {
  bwd_reduce_any<__nv_bfloat16>(x, dy, p, side, SHAPE);
}
extern "C" __global__ void gn_bwd_input_f32(const float* x, const float* dy, const float* ps,
                                            float* dx, SHAPE_ARGS) {
  bwd_input_any<float>(x, dy, ps, dx, SHAPE);
}
extern "C" __global__ void gn_bwd_input_bf16(const __nv_bfloat16* x, const __nv_bfloat16* dy,
                                             const float* ps, __nv_bfloat16* dx, SHAPE_ARGS) {
  bwd_input_any<__nv_bfloat16>(x, dy, ps, dx, SHAPE);
}
