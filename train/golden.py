"""Golden vectors: tiny seeded models of each architecture, fixed inputs, and the
outputs PyTorch computes for them. Written to shared_schema/golden/ and checked by
every stage's tests. `python -m train.golden --out DIR` regenerates them.

For each case NAME there are two files:
  NAME.safetensors         the model, exported exactly as `python -m train` exports
  NAME.golden.safetensors  inputs and expected outputs; its metadata lists their names
                           ("tensors") and, per float output, the largest difference
                           float32 rounding allows between two evaluations ("tolerance")
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

# Unit roundoff of float32: every correctly rounded operation has relative error <= U.
U = 2.0**-24
# Elementwise functions (tanh, exp, GELU, ...) are allowed this many units of error each:
# vectorised implementations differ from libm by a few ulps.
ELEMENTWISE_ULPS = 4


def accumulation_length(model: torch.nn.Module) -> int:
    """N: an upper bound on the number of roundings that stand between the inputs and
    any output, summed over the sums a value passes through. Each nn.Linear is a sum of
    in_features products plus the bias, followed by at most one elementwise function;
    each LayerNorm sums its width twice (mean, variance); a GPT block also sums head_dim
    products for q.k and up to block_size for att.v and the softmax denominator.
    Counting every layer of the model, not only the deepest path, keeps it an upper bound."""
    n = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            n += module.in_features + 1 + ELEMENTWISE_ULPS
        elif isinstance(module, torch.nn.LayerNorm):
            n += 2 * module.normalized_shape[0] + ELEMENTWISE_ULPS
    cfg = getattr(model, "cfg", None)
    if isinstance(cfg, GPTConfig):
        n += cfg.n_layer * (cfg.n_embd // cfg.n_head + 2 * cfg.block_size + ELEMENTWISE_ULPS)
    return n


def largest_sum(model: torch.nn.Module, run) -> float:
    """max over every nn.Linear of sum_j |W_ij x_j| + |b_i|: the largest magnitude on which
    a rounding error is committed while `run()` executes."""
    biggest = [0.0]

    def hook(module, inputs, _output):
        x = inputs[0].detach().double().abs()
        s = x @ module.weight.detach().double().abs().T
        if module.bias is not None:
            s = s + module.bias.detach().double().abs()
        biggest[0] = max(biggest[0], float(s.max()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return biggest[0]


def reassociation_tolerance(n: int, magnitude: float) -> float:
    """How far two float32 evaluations of the same network may lie apart when they sum in
    different orders (another CPU, SIMD width, thread count, or engine).

    A float32 sum of n terms, in any order, is within gamma_n * sum|terms| of the exact sum,
    gamma_n = n U / (1 - n U) (Higham, Accuracy and Stability of Numerical Algorithms, 3.1).
    Along a network the errors of successive sums add (first order); the activations and
    layer norms keep the gain from one layer's error to the output near 1, so with N the
    accumulation length and S the largest magnitude a rounding is committed on, each
    evaluation is within gamma_N * S of the exact result, and two evaluations within twice
    that. The bound is relative to the magnitude of the values, never an absolute epsilon."""
    gamma = n * U / (1 - n * U)
    return 2 * gamma * max(1.0, magnitude)


def tolerances(model: torch.nn.Module, vectors: dict, outputs: dict) -> dict[str, float]:
    """The reassociation tolerance of each float output, keyed like the vectors.
    `outputs` maps an output name to a function that recomputes it (for the hooks)."""
    n = accumulation_length(model)
    out = {}
    with torch.no_grad():
        for name, run in outputs.items():
            magnitude = max(largest_sum(model, run), float(vectors[name].abs().max()))
            out[name] = reassociation_tolerance(n, magnitude)
    return out


def greedy_margin(model: GPT, ids: torch.Tensor, start: int) -> float:
    """The smallest gap between the best and second-best logit over the greedy steps that
    produced ids[start:], recomputed without a cache on the window each step saw. Tokens are
    reproducible on any CPU only if this gap exceeds twice the logits' tolerance."""
    gaps = []
    with torch.no_grad():
        for t in range(start, ids.shape[1]):
            window = ids[:, max(0, t - model.cfg.block_size) : t]
            logits = model(window)[0][0, -1]
            top = torch.topk(logits, 2)
            assert int(top.indices[0]) == int(ids[0, t]), f"step {t} is not greedy"
            gaps.append(float(top.values[0] - top.values[1]))
    return min(gaps)


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
    recompute = {"decode.x": lambda: model.decode(z), "encode.mu": lambda: model.encode(x)}
    tol = tolerances(model, vectors, recompute | {"encode.logvar": recompute["encode.mu"]})
    return model, vectors, tol


def wgan_case() -> tuple[torch.nn.Module, dict]:
    model = _randomize(WGANGP(WGANConfig(z_dim=6, g_hidden=(8, 12), d_hidden=(4, 4), x_dim=16)), seed=2)
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        vectors = {"generate.z": z, "generate.x": model.generator(z)}
    return model, vectors, tolerances(model, vectors, {"generate.x": lambda: model.generator(z)})


def gpt_case(pre_ln: bool) -> tuple[torch.nn.Module, dict]:
    cfg = GPTConfig(vocab="\n !,.:?abcdefghij", block_size=16, n_layer=2, n_head=2, n_embd=16, pre_ln=pre_ln)
    # seeds whose greedy steps are far from ties (asserted below), with varied text
    model = _randomize(GPT(cfg), seed=24 if pre_ln else 255, std=1.0)
    prompt = model.encode("hi, bad")[None, :]  # (1, 7)
    with torch.no_grad():
        logits, _ = model(prompt)
        greedy = model.generate(prompt, 6, use_cache=True)  # stays inside the block
        slid = model.generate(prompt, 20, use_cache=True)  # outgrows block_size 16
    vectors = {
        "prompt.ids": prompt,
        "prompt.logits": logits,
        "greedy_within_block.ids": greedy,
        "greedy_past_block.ids": slid,
    }
    tol = tolerances(model, vectors, {"prompt.logits": lambda: model(prompt)})
    margin = greedy_margin(model, slid, prompt.shape[1])
    assert margin > 2 * tol["prompt.logits"], f"greedy margin {margin} is within rounding of a tie"
    return model, vectors, tol


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
        model, vectors, tol = build()
        written.append(export(model, out / f"{name}.safetensors", PROVENANCE))
        meta = {
            "model": f"{name}.safetensors",
            "tensors": json.dumps(sorted(vectors)),
            "tolerance": json.dumps(tol),
        }
        if isinstance(model, GPT):
            # the greedy continuation as text, for readers without the vocabulary (the C test)
            meta["greedy_past_block.text"] = model.decode(vectors["greedy_past_block.ids"][0])
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
    p = argparse.ArgumentParser(prog="python -m train.golden", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=GOLDEN_DIR)
    p.add_argument("--service-models", type=Path, help="also write untrained full-size models here")
    args = p.parse_args()
    paths = write(args.out) + (write_service_models(args.service_models) if args.service_models else [])
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
