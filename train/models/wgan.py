"""Wasserstein GAN with gradient penalty (Gulrajani et al., "Improved Training of
Wasserstein GANs", 2017). https://arxiv.org/abs/1704.00028

Only the generator is exported; its module paths are `generator.fc1`, `generator.fc2`,
`generator.out`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from train.flags import knob


@dataclass(frozen=True)
class WGANConfig:
    z_dim: int = knob(100, "noise dimension")
    g_hidden: tuple[int, int] = knob((256, 512), "generator widths")
    d_hidden: tuple[int, int] = knob((512, 256), "critic widths")
    x_dim: int = 784  # pixels per image (set by the data, not a flag)
    gp_lambda: float = knob(10.0, "gradient-penalty weight (Alg. 1, lambda = 10)")
    n_critic: int = knob(5, "critic steps per generator step (Alg. 1)")
    betas: tuple[float, float] = knob((0.5, 0.9), "Adam (beta1, beta2) of Alg. 1")
    spectral_norm: bool = knob(False, "spectral-normalised critic (Miyato et al. 2018)")
    leak: float = knob(0.2, "leaky-relu slope of the critic")

    def __post_init__(self) -> None:
        assert self.n_critic >= 1 and self.gp_lambda >= 0, "n_critic >= 1, lambda >= 0"


class Generator(nn.Module):
    """G(z): relu MLP to tanh pixels in [-1, 1]."""

    def __init__(self, cfg: WGANConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.z_dim, cfg.g_hidden[0])
        self.fc2 = nn.Linear(cfg.g_hidden[0], cfg.g_hidden[1])
        self.out = nn.Linear(cfg.g_hidden[1], cfg.x_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(z))  # (B, 256)
        h = F.relu(self.fc2(h))  # (B, 512)
        return torch.tanh(self.out(h))  # (B, 784)


class Critic(nn.Module):
    """D(x): leaky-relu MLP to one unbounded score; no normalisation layers (Sec. 4)."""

    def __init__(self, cfg: WGANConfig) -> None:
        super().__init__()
        wrap = spectral_norm if cfg.spectral_norm else (lambda m: m)
        self.fc1 = wrap(nn.Linear(cfg.x_dim, cfg.d_hidden[0]))
        self.fc2 = wrap(nn.Linear(cfg.d_hidden[0], cfg.d_hidden[1]))
        self.out = wrap(nn.Linear(cfg.d_hidden[1], 1))
        self.leak = cfg.leak

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fc1(x), self.leak)
        h = F.leaky_relu(self.fc2(h), self.leak)
        return self.out(h).squeeze(1)  # (B,)


def interpolate(real: torch.Tensor, fake: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """x_hat = a * real + (1 - a) * fake, one a ~ U(0, 1) per sample (Alg. 1, line 6)."""
    return a[:, None] * real + (1 - a[:, None]) * fake


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """E_x_hat[(||grad_x_hat D(x_hat)||_2 - 1)^2] (Eq. 3), without the lambda weight."""
    a = torch.rand(real.shape[0], device=real.device)
    x_hat = interpolate(real, fake, a).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.norm(2, dim=1) - 1).pow(2).mean()


def critic_loss(critic: nn.Module, real, fake, gp_lambda: float) -> dict:
    """L_D = E[D(fake)] - E[D(real)] + lambda * GP (Eq. 3)."""
    wasserstein = critic(real).mean() - critic(fake).mean()
    gp = gradient_penalty(critic, real, fake)
    return {"loss": -wasserstein + gp_lambda * gp, "wasserstein": wasserstein, "gp": gp}


def generator_loss(critic: nn.Module, fake: torch.Tensor) -> torch.Tensor:
    """L_G = -E[D(G(z))] (Alg. 1, line 11)."""
    return -critic(fake).mean()


class WGANGP(nn.Module):
    arch = "wgan"
    Config = WGANConfig
    data = "images"

    def __init__(self, cfg: WGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.generator = Generator(cfg)
        self.critic = Critic(cfg)

    def noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ N(0, I) on the model's device; a given generator draws on its own device."""
        device = self.generator.out.weight.device
        if generator is None:
            return torch.randn(n, self.cfg.z_dim, device=device)
        return torch.randn(n, self.cfg.z_dim, generator=generator, device=generator.device).to(device)

    def compile(self, *args, **kwargs) -> None:
        """Compile the generator only: torch.compile has no double backward, which the
        critic's gradient penalty needs."""
        self.generator.compile(*args, **kwargs)

    # --- the trainer's interface -------------------------------------------------
    def configure_optimizers(self, lr: float, weight_decay: float) -> dict:
        def adam(params):
            return torch.optim.Adam(params, lr=lr, betas=self.cfg.betas, weight_decay=weight_decay)

        return {"critic": adam(self.critic.parameters()), "generator": adam(self.generator.parameters())}

    @staticmethod
    def recipe(cfg: WGANConfig, train) -> str:
        return f"Adam {cfg.betas} {train.describe()}, n_critic {cfg.n_critic}"

    def export_state(self) -> dict[str, torch.Tensor]:
        """The generator only (`generator.*`): the critic is a training device."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("generator.")}

    def objectives(self, batch, step: int):
        """Every batch is one critic step; every n_critic-th also one generator step."""
        real, _ = batch
        fake = self.generator(self.noise(real.shape[0])).detach()
        terms = critic_loss(self.critic, real, fake, self.cfg.gp_lambda)
        yield "critic", terms["loss"], terms
        if (step + 1) % self.cfg.n_critic == 0:
            g_loss = generator_loss(self.critic, self.generator(self.noise(real.shape[0])))
            yield "generator", g_loss, {"g_loss": g_loss}

    def validation(self, batch) -> dict:
        """The critic's Wasserstein estimate on held-out images; lower is a closer generator."""
        real, _ = batch
        with torch.no_grad():
            fake = self.generator(self.noise(real.shape[0]))
            wasserstein = self.critic(real).mean() - self.critic(fake).mean()
        return {"loss": wasserstein}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return (self.generator(self.noise(n, generator)) + 1) / 2  # (n, 784) in [0, 1]

    @staticmethod
    def prepare_images(x: torch.Tensor) -> torch.Tensor:
        return x * 2 - 1  # the GAN models pixels in [-1, 1] to match tanh
