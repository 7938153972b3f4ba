"""The trained models, run by the Rust engine from Python: a grid of VAE and WGAN
digits (runs/engine_samples.png) with their FID next to real digits', and GPT text,
each checked against PyTorch.

    python infer_rs/examples/demo.py --artifacts artifacts
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

import infer_rs
from train.export import load
from train.fid import Reference
from train.plots import image_grid


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--out", type=Path, default=Path("runs/engine_samples.png"))
    args = p.parse_args()

    vae = infer_rs.vae_generate(args.artifacts / "vae.safetensors", 50, seed=1)
    wgan_model = infer_rs.Model(args.artifacts / "wgan.safetensors")
    wgan = (wgan_model.generate(50, seed=1) + 1) / 2  # tanh pixels to [0, 1]
    image_grid(np.concatenate([vae, wgan]), args.out, "infer_rs: 50 VAE samples, then 50 WGAN-GP samples")
    print(f"infer_rs.vae_generate(..., 50).shape = {vae.shape}; samples: {args.out}")

    # what the samples are worth: FID on the project's digit classifier (train/fid.py)
    reference = Reference()
    vae_fid = reference.fid(
        torch.from_numpy(infer_rs.vae_generate(args.artifacts / "vae.safetensors", 1000, seed=2))
    )
    wgan_fid = reference.fid(torch.from_numpy((wgan_model.generate(1000, seed=2) + 1) / 2))
    print(
        f"FID of 1,000 samples against the held-out digits (lower is better): VAE {vae_fid:.1f}, "
        f"WGAN-GP {wgan_fid:.1f}; 1,000 real training digits score {reference.floor:.1f}, the floor"
    )

    z = np.random.default_rng(0).standard_normal((8, 100), dtype=np.float32)
    with torch.no_grad():
        torch_out = load(args.artifacts / "wgan.safetensors").generator(torch.from_numpy(z)).numpy()
    print(f"WGAN from fixed z: max |infer_rs - torch| = {np.abs(wgan_model.decode(z) - torch_out).max():.2e}")

    gpt = infer_rs.Model(args.artifacts / "gpt.safetensors")
    prompt = "ROMEO:" if set("ROMEO:") <= set(gpt.config["vocab"]) else gpt.config["vocab"][0]
    text = gpt.generate_text(prompt, 240, temperature=0.8, top_k=20, seed=7)
    print(f"\nGPT via infer_rs, temperature 0.8, top-k 20, seed 7:\n{text}")


if __name__ == "__main__":
    main()
