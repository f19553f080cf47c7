#!/usr/bin/env python3
"""A diffusers VQModel (norm_type="spatial", the Kandinsky 2.x MoVQ layout) with random weights,
and its outputs on fixed inputs, for movq's import parity tests.

  python3 scripts/diffusers_fixture.py OUT_DIR [reduced|movqgan|kandinsky]

(movqgan: the reduced shape with 32 groups in every GroupNorm, as MoVQGAN has, for
scripts/movqgan_fixture.py)

Writes OUT_DIR/config.json and OUT_DIR/diffusion_pytorch_model.safetensors (save_pretrained),
and OUT_DIR/parity.safetensors: x [2, 3, R, R] in [-1, 1]; latent = encode(x) (quant_conv
output); indices [2, h, w] (the quantizer's codes, int64); decoded = decode(latent) (quantized);
decoded_continuous = decode(latent, force_not_quantize=True). Every parameter is perturbed from
diffusers' initialisation (GroupNorm affines, zero biases) so that no layer is an identity.
Needs torch and diffusers (0.42.1 was used).
"""
import os
import sys

import torch
from diffusers import VQModel
from safetensors.torch import save_file

out = sys.argv[1]
shape = sys.argv[2] if len(sys.argv) > 2 else "reduced"
torch.manual_seed(0)
if shape in ("reduced", "movqgan"):
    cfg = dict(block_out_channels=(32, 64), layers_per_block=1,
               down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
               up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
               latent_channels=4, num_vq_embeddings=64, vq_embed_dim=4,
               norm_num_groups=8 if shape == "reduced" else 32, sample_size=32)
else:  # the Kandinsky 2.2 MoVQ shape
    cfg = dict(block_out_channels=(128, 256, 256, 512), layers_per_block=2,
               down_block_types=("DownEncoderBlock2D",) * 3 + ("AttnDownEncoderBlock2D",),
               up_block_types=("AttnUpDecoderBlock2D",) + ("UpDecoderBlock2D",) * 3,
               latent_channels=4, num_vq_embeddings=16384, vq_embed_dim=4, norm_num_groups=32,
               sample_size=256)
model = VQModel(in_channels=3, out_channels=3, norm_type="spatial", **cfg).eval()
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("quantize.embedding.weight"):
            p.uniform_(-1.0, 1.0)  # codes spread like the latents, so that the search matters
        else:
            p.add_(0.05 * torch.randn_like(p))
os.makedirs(out, exist_ok=True)
model.save_pretrained(out, safe_serialization=True)
r = cfg["sample_size"]
x = (torch.rand(2, 3, r, r) * 2 - 1)
with torch.no_grad():
    latent = model.encode(x).latents
    _, _, (_, _, indices) = model.quantize(latent)
    h, w = latent.shape[2:]
    decoded = model.decode(latent).sample
    decoded_continuous = model.decode(latent, force_not_quantize=True).sample
save_file({"x": x.contiguous(), "latent": latent.contiguous(),
           "indices": indices.reshape(2, h, w).contiguous(),
           "decoded": decoded.contiguous(), "decoded_continuous": decoded_continuous.contiguous()},
          os.path.join(out, "parity.safetensors"))
print(out, {k: list(v.shape) for k, v in [("latent", latent), ("decoded", decoded)]},
      "distinct codes", int(indices.unique().numel()))
