# PyTorch's scaled_dot_product_attention (bf16) at the transformer's reference shape, forward and
# forward+backward, CUDA events: the figure scripts/attention/bench.cu's kernels are held to.
import sys
import torch
import torch.nn.functional as F

B, T, H, D = (int(a) for a in (sys.argv[1:] + ["64", "1025", "16", "48"][len(sys.argv) - 1:]))
q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
g = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)


def timed(f, reps=20):
    f(); f()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        f()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps


fwd = timed(lambda: F.scaled_dot_product_attention(q, k, v))
both = timed(lambda: F.scaled_dot_product_attention(q, k, v).backward(g))
flops = 4 * B * H * T * T * D
print(f"torch SDPA B{B} T{T} H{H} D{D}: forward {fwd:.3f} ms ({flops / fwd / 1e9:.0f} TFLOP/s), "
      f"forward+backward {both:.3f} ms, backward {both - fwd:.3f} ms")
