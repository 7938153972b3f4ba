"""WGAN-GP terms on critics whose gradients are known in closed form."""

import torch
from torch import nn

from train.models.wgan import WGANGP, WGANConfig, critic_loss, gradient_penalty, interpolate


class LinearCritic(nn.Module):
    """D(x) = w . x + b, so grad_x D = w everywhere and ||grad|| = ||w||."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        return x @ self.w + 0.5


def test_gradient_penalty_is_exact_for_a_linear_critic():
    torch.manual_seed(0)
    w = torch.tensor([3.0, 4.0, 0.0])  # ||w|| = 5, so the penalty is (5 - 1)^2 = 16
    real, fake = torch.randn(8, 3), torch.randn(8, 3)
    gp = gradient_penalty(LinearCritic(w), real, fake)
    torch.testing.assert_close(gp, torch.tensor(16.0))


def test_gradient_penalty_vanishes_for_a_unit_norm_critic():
    w = torch.tensor([0.6, 0.8])
    gp = gradient_penalty(LinearCritic(w), torch.randn(4, 2), torch.randn(4, 2))
    assert gp.item() < 1e-10


def test_gradient_penalty_of_a_quadratic_critic():
    # D(x) = 1/2 ||x||^2 has grad x, so the penalty is the mean of (||x_hat|| - 1)^2.
    class Quadratic(nn.Module):
        def forward(self, x):
            return 0.5 * (x * x).sum(1)

    torch.manual_seed(5)
    real, fake = torch.randn(6, 4), torch.randn(6, 4)
    torch.manual_seed(7)
    gp = gradient_penalty(Quadratic(), real, fake)
    torch.manual_seed(7)
    a = torch.rand(6)
    x_hat = interpolate(real, fake, a)
    torch.testing.assert_close(gp, ((x_hat.norm(dim=1) - 1) ** 2).mean())


def test_interpolation_is_per_sample():
    real, fake = torch.ones(3, 2), torch.zeros(3, 2)
    a = torch.tensor([0.0, 0.25, 1.0])
    torch.testing.assert_close(interpolate(real, fake, a), a[:, None].expand(3, 2))


def test_critic_loss_combines_the_terms():
    critic = LinearCritic(torch.tensor([3.0, 4.0]))
    real, fake = torch.ones(5, 2), torch.zeros(5, 2)
    terms = critic_loss(critic, real, fake, gp_lambda=10.0)
    torch.testing.assert_close(terms["wasserstein"], torch.tensor(7.0))  # (3 + 4) - 0
    torch.testing.assert_close(terms["loss"], torch.tensor(-7.0 + 10.0 * 16.0))


def test_generator_step_every_n_critic_batches():
    torch.manual_seed(0)
    model = WGANGP(WGANConfig(z_dim=3, g_hidden=(4, 4), d_hidden=(4, 4), x_dim=5, n_critic=5))
    batch = (torch.rand(2, 5), torch.zeros(2, dtype=torch.long))
    names = [[name for name, _, _ in model.objectives(batch, step)] for step in range(10)]
    assert sum(n == ["critic", "generator"] for n in names) == 2
    assert names[4] == ["critic", "generator"] and names[9] == ["critic", "generator"]


def test_spectral_norm_critic_has_unit_spectral_norm():
    torch.manual_seed(0)
    model = WGANGP(WGANConfig(spectral_norm=True))
    for _ in range(30):  # power iteration converges as the critic runs in training mode
        model.critic(torch.randn(4, 784))
    sigma = torch.linalg.matrix_norm(model.critic.fc1.weight.detach(), ord=2)
    assert abs(sigma.item() - 1.0) < 0.05
