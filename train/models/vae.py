"""Variational autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes", 2013).

https://arxiv.org/abs/1312.6114 . Module paths here are the tensor names of the export
and the `vb.pp(...)` paths of the Rust engine: `encoder.hidden.{i}`, `encoder.mu`,
`encoder.logvar`, `decoder.hidden.{i}`, `decoder.out`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from train.flags import knob


@dataclass(frozen=True)
class VAEConfig:
    x_dim: int = 784  # pixels per image (set by the data, not a flag)
    hidden: tuple[int, ...] = knob((400, 200), "encoder widths; the decoder mirrors them")
    z_dim: int = knob(20, "latent (VAE) or noise (WGAN) dimension")
    n_classes: int = knob(0, "10 makes a conditional VAE: the one-hot digit joins both inputs")
    likelihood: str = knob(
        "gaussian", "gaussian (squared error) or bernoulli (BCE)", choices=("gaussian", "bernoulli")
    )
    beta: float = knob(1.0, "weight of the KL term (beta-VAE, Higgins et al. 2017)")
    kl_anneal_steps: int = knob(0, "linear KL warm-up from 0 to beta over this many steps")

    def __post_init__(self) -> None:
        assert self.likelihood in ("gaussian", "bernoulli"), f"likelihood {self.likelihood!r}"
        assert self.x_dim > 0 and self.z_dim > 0 and all(h > 0 for h in self.hidden)
        assert self.beta >= 0 and self.kl_anneal_steps >= 0 and self.n_classes >= 0


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sample, closed form (Kingma & Welling, App. B).

    KL = -1/2 * sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)
    """
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)  # (B,)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, sigma = exp(logvar / 2), eps ~ N(0, I) (Sec. 2.4)."""
    eps = torch.randn_like(mu)
    return mu + torch.exp(0.5 * logvar) * eps


def reconstruction_nll(x_hat: torch.Tensor, x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """-log p(x | z) per sample, up to an additive constant.

    gaussian:  sum_i (x_i - x_hat_i)^2          (unit-free squared error, sigma^2 = 1/2)
    bernoulli: -sum_i x_i log x_hat_i + (1 - x_i) log(1 - x_hat_i)
    """
    if likelihood == "gaussian":
        return (x_hat - x).pow(2).sum(dim=1)
    return F.binary_cross_entropy(x_hat, x, reduction="none").sum(dim=1)


def kl_weight(step: int, beta: float, anneal_steps: int) -> float:
    """beta * min(1, step / anneal_steps): linear KL annealing (Bowman et al. 2016)."""
    if anneal_steps == 0:
        return beta
    return beta * min(1.0, step / anneal_steps)


def one_hot(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    return F.one_hot(y, n_classes).to(torch.float32)


class Encoder(nn.Module):
    """q(z | x[, y]): tanh MLP, then two linear heads for mu and log sigma^2."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = (cfg.x_dim + cfg.n_classes, *cfg.hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.mu = nn.Linear(widths[-1], cfg.z_dim)
        self.logvar = nn.Linear(widths[-1], cfg.z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x  # (B, x_dim [+ n_classes])
        for layer in self.hidden:
            h = torch.tanh(layer(h))
        return self.mu(h), self.logvar(h)  # (B, z_dim) each


class Decoder(nn.Module):
    """p(x | z[, y]): the encoder's widths in reverse, tanh, then a sigmoid output."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = (cfg.z_dim + cfg.n_classes, *reversed(cfg.hidden))
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.out = nn.Linear(widths[-1], cfg.x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = z  # (B, z_dim [+ n_classes])
        for layer in self.hidden:
            h = torch.tanh(layer(h))
        return torch.sigmoid(self.out(h))  # (B, x_dim), pixel means in (0, 1)


class VAE(nn.Module):
    arch = "vae"
    Config = VAEConfig
    data = "images"

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def _condition(self, v: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.n_classes == 0:
            return v
        assert y is not None, "a conditional VAE needs labels"
        return torch.cat([v, one_hot(y, self.cfg.n_classes)], dim=1)

    def compile(self, *args, **kwargs) -> None:
        """Compile the two networks; the loss calls them directly, never self.forward."""
        self.encoder.compile(*args, **kwargs)
        self.decoder.compile(*args, **kwargs)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None):
        return self.encoder(self._condition(x, y))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self._condition(z, y))

    def neg_elbo(self, x: torch.Tensor, y: torch.Tensor | None, kl_w: float) -> dict:
        """-ELBO = E_q[-log p(x|z)] + kl_w * KL(q(z|x) || p(z)), averaged over the batch."""
        mu, logvar = self.encode(x, y)
        z = reparameterize(mu, logvar)
        recon = reconstruction_nll(self.decode(z, y), x, self.cfg.likelihood).mean()
        kl = kl_divergence(mu, logvar).mean()
        return {"loss": recon + kl_w * kl, "neg_elbo": recon + kl, "recon": recon, "kl": kl}

    # --- the trainer's interface -------------------------------------------------
    def configure_optimizers(self, lr: float, weight_decay: float) -> dict:
        return {"model": torch.optim.Adam(self.parameters(), lr=lr, weight_decay=weight_decay)}

    @staticmethod
    def recipe(cfg: VAEConfig, train) -> str:
        return f"Adam {train.describe()}"

    def export_state(self) -> dict[str, torch.Tensor]:
        """Every parameter: the encoder serves `encode`, the decoder `generate`."""
        return self.state_dict()

    def objectives(self, batch, step: int):
        x, y = batch
        terms = self.neg_elbo(x, y, kl_weight(step, self.cfg.beta, self.cfg.kl_anneal_steps))
        yield "model", terms["loss"], terms

    @torch.no_grad()
    def validation(self, batch) -> dict:
        x, y = batch
        terms = self.neg_elbo(x, y, self.cfg.beta)
        return {"loss": terms["neg_elbo"], "recon": terms["recon"], "kl": terms["kl"]}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw z ~ N(0, I) and decode; a conditional model cycles through the labels."""
        device = self.decoder.out.weight.device
        z = torch.randn(n, self.cfg.z_dim, generator=generator, device=generator.device).to(device)
        y = torch.arange(n, device=device) % self.cfg.n_classes if self.cfg.n_classes else None
        return self.decode(z, y)  # (n, x_dim) in (0, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Decode the posterior mean of each image: (B, x_dim) -> (B, x_dim) in (0, 1)."""
        mu, _ = self.encode(x, y)
        return self.decode(mu, y)

    @staticmethod
    def prepare_images(x: torch.Tensor) -> torch.Tensor:
        return x  # the VAE models pixels in [0, 1]
