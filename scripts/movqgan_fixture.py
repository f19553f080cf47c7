#!/usr/bin/env python3
"""A MoVQGAN-style Lightning checkpoint for `movq import movqgan`'s parity test, made from a
diffusers fixture (`scripts/diffusers_fixture.py DIR movqgan`) by renaming its tensors back to the original
taming-transformers / MoVQGAN names, following diffusers' own Kandinsky conversion
(scripts/convert_kandinsky_to_diffusers.py there) in reverse: the same weights, so movq's import
of the checkpoint must reproduce the fixture's diffusers outputs (parity.safetensors).

usage: python3 scripts/diffusers_fixture.py /tmp/mg movqgan
       python3 scripts/movqgan_fixture.py /tmp/mg tests/data/movqgan-mini/model.ckpt
       cp /tmp/mg/parity.safetensors tests/data/movqgan-mini/
needs: torch, safetensors
"""
import collections
import json
import os
import re
import sys

import torch
from safetensors.torch import load_file


def original_name(name, levels):
    """diffusers VQModel (spatial norm) name -> original MoVQGAN name."""
    n = name
    n = re.sub(r"^decoder\.up_blocks\.(\d+)\.",
               lambda m: f"decoder.up.{levels - 1 - int(m.group(1))}.", n)
    n = re.sub(r"^encoder\.down_blocks\.(\d+)\.", r"encoder.down.\1.", n)
    n = re.sub(r"\.resnets\.(\d+)\.", r".block.\1.", n)
    n = re.sub(r"\.attentions\.(\d+)\.", r".attn.\1.", n)
    n = n.replace("mid_block.block.0.", "mid.block_1.").replace("mid_block.block.1.", "mid.block_2.")
    n = n.replace("mid_block.attn.0.", "mid.attn_1.")
    n = n.replace(".downsamplers.0.", ".downsample.").replace(".upsamplers.0.", ".upsample.")
    n = n.replace(".conv_shortcut.", ".nin_shortcut.").replace(".conv_norm_out.", ".norm_out.")
    n = n.replace(".group_norm.", ".norm.").replace(".spatial_norm.", ".norm.")
    n = n.replace(".to_q.", ".q.").replace(".to_k.", ".k.").replace(".to_v.", ".v.")
    n = n.replace(".to_out.0.", ".proj_out.")
    return n


def main():
    src, out = sys.argv[1], sys.argv[2]
    cfg = json.load(open(f"{src}/config.json"))
    levels = len(cfg["block_out_channels"])
    state = collections.OrderedDict()
    for name, t in load_file(f"{src}/diffusion_pytorch_model.safetensors").items():
        orig = original_name(name, levels)
        # the original attention projections are 1x1 convolutions
        if re.search(r"\.(q|k|v|proj_out)\.weight$", orig) and t.dim() == 2:
            t = t[:, :, None, None]
        state[orig] = t.contiguous()
    # what a Lightning checkpoint of the GAN also holds: discriminator and LPIPS tensors
    g = torch.Generator().manual_seed(0)
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=g)
    state["loss.discriminator.main.0.bias"] = torch.zeros(8)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.rand(1, 8, 1, 1, generator=g)
    torch.save({"epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.6.5",
                "state_dict": state}, out)
    print(out, len(state), "tensors")
    # a bare state dict (no Lightning wrapper) holding only the first convolution: readable, but
    # not a whole model
    partial = os.path.join(os.path.dirname(out), "partial-state-dict.pt")
    torch.save(collections.OrderedDict(
        [("encoder.conv_in.weight", state["encoder.conv_in.weight"].clone())]), partial)
    print(partial)


if __name__ == "__main__":
    main()
