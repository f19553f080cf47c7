// Times the fused attention kernels of src/gpu/kernels/attention.cu (or a variant of it named by
// ATT_SRC at compile time, with the same shared-memory layout) at the transformer's reference shape, with CUDA events: forward, and
// the backward pass's four launches, as attention.rs makes them. A diagnostic for kernel work:
//   nvcc -O3 -std=c++17 -arch=sm_90 -o /tmp/att-bench scripts/attention/bench.cu
// (add -L with the CUDA toolkit's lib folder if the linker misses cudart), then on a machine with
// an sm_90 GPU:
//   /tmp/att-bench [B T H]        (defaults 64 1025 16; head width 48)
// scripts/attention/sdpa.py times PyTorch's scaled_dot_product_attention at the same shape.
#ifndef ATT_SRC
#define ATT_SRC "../../src/gpu/kernels/attention.cu"
#endif
#include ATT_SRC
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x) do { cudaError_t e = (x); if (e != cudaSuccess) { printf("%s: %s\n", #x, cudaGetErrorString(e)); exit(1); } } while (0)

constexpr int D = 48;

__global__ void fill(bf16* p, size_t n, unsigned seed) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 13; h *= 0x5bd1e995u; h ^= h >> 15;
        p[i] = __float2bfloat16(((h & 0xffff) / 32768.f - 1.f) * 2.f);
    }
}

template <typename F> float time_ms(F f, int reps = 20) {
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a)); CK(cudaEventCreate(&b));
    f(); f();
    CK(cudaEventRecord(a));
    for (int i = 0; i < reps; ++i) f();
    CK(cudaEventRecord(b));
    CK(cudaEventSynchronize(b));
    float ms; CK(cudaEventElapsedTime(&ms, a, b));
    return ms / reps;
}

int main(int argc, char** argv) {
    const int B = argc > 1 ? atoi(argv[1]) : 64, T = argc > 2 ? atoi(argv[2]) : 1025, H = argc > 3 ? atoi(argv[3]) : 16;
    const size_t n = (size_t)B * T * H * D;
    bf16 *qkv, *out, *dout, *dqkv; float *lse, *delta, *dq;
    CK(cudaMalloc(&qkv, 3 * n * 2)); CK(cudaMalloc(&dqkv, 3 * n * 2));
    CK(cudaMalloc(&out, n * 2)); CK(cudaMalloc(&dout, n * 2)); CK(cudaMalloc(&dq, n * 4));
    CK(cudaMalloc(&lse, (size_t)B * H * T * 4)); CK(cudaMalloc(&delta, (size_t)B * H * T * 4));
    fill<<<1024, 256>>>(qkv, 3 * n, 1); fill<<<1024, 256>>>(dout, n, 2);
    const float scale = 1.f / sqrtf((float)D);
    const dim3 grid((T + TILE - 1) / TILE, B * H);
    // as attention.rs sizes them: padded tiles, the streamed ones in two stages
    const int tile = TILE * (D + 8) * 2;
    const int fwd_smem = 5 * tile;
    const int bwd_smem = 6 * tile + TILE * (TILE + 8) * 2 + 4 * TILE * 4;
    CK(cudaFuncSetAttribute(attention_fwd_d48_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize, fwd_smem));
    CK(cudaFuncSetAttribute(attention_bwd_d48_bf16, cudaFuncAttributeMaxDynamicSharedMemorySize, bwd_smem));
    auto fwd = [&] { attention_fwd_d48_bf16<<<grid, THREADS, fwd_smem>>>(qkv, out, lse, T, H, scale); };
    auto dlt = [&] { const int rows = B * H * T; attention_delta_d48_bf16<<<(rows + 7) / 8, 256>>>(out, dout, delta, rows, T, H); };
    auto bwd = [&] {
        CK(cudaMemsetAsync(dq, 0, n * 4));
        attention_bwd_d48_bf16<<<grid, THREADS, bwd_smem>>>(qkv, dout, lse, delta, dq, dqkv, T, H, scale);
    };
    auto cvt = [&] { attention_dq_bf16<<<(unsigned)std::min<size_t>((n + 255) / 256, 1 << 20), 256>>>(dq, dqkv, B, T, H, D); };
    fwd(); dlt(); bwd(); cvt();
    CK(cudaDeviceSynchronize());
    const double flops_fwd = 4.0 * B * H * (double)T * T * D;
    const float f = time_ms(fwd), d = time_ms(dlt), bw = time_ms(bwd), c = time_ms(cvt);
    printf("B%d T%d H%d D%d: forward %.3f ms (%.0f TFLOP/s), delta %.3f, backward (zero dq + kernel) %.3f ms (%.0f TFLOP/s), dq cast %.3f; backward total %.3f ms\n",
           B, T, H, D, f, flops_fwd / f / 1e9, d, bw, 2.5 * flops_fwd / bw / 1e9, c, d + bw + c);
    // checksum of the outputs, to compare variants
    std::vector<uint16_t> h(3 * n);
    CK(cudaMemcpy(h.data(), dqkv, 3 * n * 2, cudaMemcpyDeviceToHost));
    double s = 0; for (size_t i = 0; i < 3 * n; i += 97) { uint32_t u = (uint32_t)h[i] << 16; float v; memcpy(&v, &u, 4); s += fabs(v); }
    std::vector<uint16_t> o(n);
    CK(cudaMemcpy(o.data(), out, n * 2, cudaMemcpyDeviceToHost));
    double so = 0; for (size_t i = 0; i < n; i += 97) { uint32_t u = (uint32_t)o[i] << 16; float v; memcpy(&v, &u, 4); so += fabs(v); }
    printf("checksums: out %.6e dqkv %.6e\n", so, s);
    return 0;
}
