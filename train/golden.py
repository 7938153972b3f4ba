"""Golden vectors: tiny seeded models of each architecture, fixed inputs, and the
outputs PyTorch computes for them. Written to shared_schema/golden/ and checked by
every stage's tests. `python -m train.golden --out DIR` regenerates them.

For each case NAME there are two files:
  NAME.safetensors         the model, exported exactly as `python -m train` exports
  NAME.golden.safetensors  inputs and expected outputs (names listed in its metadata)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from train.export import export
from train.manifest import SCHEMA_DIR
from train.models.gpt import GPT, GPTConfig
from train.models.vae import VAE, VAEConfig
from train.models.wgan import WGANGP, WGANConfig

GOLDEN_DIR = SCHEMA_DIR / "golden"
PROVENANCE = {"data": "none: seeded random weights", "purpose": "golden vectors"}


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.5) -> torch.nn.Module:
    """N(0, std^2) weights, wider than a training init so outputs and argmaxes are far from ties."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model.eval()


def vae_case() -> tuple[torch.nn.Module, dict]:
    model = _randomize(VAE(VAEConfig(x_dim=16, hidden=(12, 8), z_dim=4)), seed=1)
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(5, 4, generator=gen)
    x = torch.rand(5, 16, generator=gen)
    with torch.no_grad():
        mu, logvar = model.encode(x)
        vectors = {
            "decode.z": z,
            "decode.x": model.decode(z),
            "encode.x": x,
            "encode.mu": mu,
            "encode.logvar": logvar,
        }
    return model, vectors


def wgan_case() -> tuple[torch.nn.Module, dict]:
    model = _randomize(WGANGP(WGANConfig(z_dim=6, g_hidden=(8, 12), d_hidden=(4, 4), x_dim=16)), seed=2)
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        return model, {"generate.z": z, "generate.x": model.generator(z)}


def gpt_case(pre_ln: bool) -> tuple[torch.nn.Module, dict]:
    cfg = GPTConfig(vocab="\n !,.:?abcdefghij", block_size=16, n_layer=2, n_head=2, n_embd=16, pre_ln=pre_ln)
    model = _randomize(GPT(cfg), seed=5 if pre_ln else 15, std=1.0)
    prompt = model.encode("hi, bad")[None, :]  # (1, 7)
    with torch.no_grad():
        logits, _ = model(prompt)
        greedy = model.generate(prompt, 6, use_cache=True)  # stays inside the block
        slid = model.generate(prompt, 20, use_cache=True)  # outgrows block_size 16
    return model, {
        "prompt.ids": prompt,
        "prompt.logits": logits,
        "greedy_within_block.ids": greedy,
        "greedy_past_block.ids": slid,
    }


CASES = {
    "vae_tiny": vae_case,
    "wgan_tiny": wgan_case,
    "gpt_tiny": lambda: gpt_case(pre_ln=True),
    "gpt_tiny_post_ln": lambda: gpt_case(pre_ln=False),
}


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in CASES.items():
        model, vectors = build()
        written.append(export(model, out / f"{name}.safetensors", PROVENANCE))
        meta = {"model": f"{name}.safetensors", "tensors": json.dumps(sorted(vectors))}
        path = out / f"{name}.golden.safetensors"
        save_file({k: v.contiguous() for k, v in vectors.items()}, str(path), metadata=meta)
        written.append(path)
    return written


# Printable ASCII and newline: holds every prompt of shared_schema/examples, not "\u2603".
SERVICE_VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))


def write_service_models(out: Path) -> list[Path]:
    """Seeded, untrained models of the default sizes with the ids the wire examples use
    (vae: z_dim 20, wgan: z_dim 100, gpt), for service tests that need no training."""
    torch.manual_seed(0)
    models = {
        "vae": VAE(VAEConfig()),
        "wgan": WGANGP(WGANConfig()),
        "gpt": GPT(GPTConfig(vocab=SERVICE_VOCAB, n_layer=2)),
    }
    provenance = {"data": "none: seeded untrained weights", "purpose": "service tests"}
    return [export(m.eval(), out / f"{name}.safetensors", provenance) for name, m in models.items()]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m train.golden", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=GOLDEN_DIR)
    p.add_argument("--service-models", type=Path, help="also write untrained full-size models here")
    args = p.parse_args()
    paths = write(args.out) + (write_service_models(args.service_models) if args.service_models else [])
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
