"""The VAE's equations against independent computations."""

import torch
import torch.nn.functional as F
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from train.models.vae import VAE, VAEConfig, kl_divergence, kl_weight, reconstruction_nll, reparameterize


def test_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(7, 5, generator=gen)
    logvar = torch.randn(7, 5, generator=gen)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch_kl(q, p).sum(dim=1)
    torch.testing.assert_close(kl_divergence(mu, logvar), expected, rtol=1e-5, atol=1e-5)


def test_kl_is_zero_at_the_prior():
    assert torch.equal(kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)), torch.zeros(3))


def test_reparameterize_moments():
    torch.manual_seed(0)
    mu = torch.full((200_000, 1), 1.5)
    logvar = torch.full((200_000, 1), torch.log(torch.tensor(0.25)).item())
    z = reparameterize(mu, logvar)
    assert abs(z.mean().item() - 1.5) < 0.01
    assert abs(z.std().item() - 0.5) < 0.01


def test_reconstruction_terms_match_functional_losses():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(4, 9, generator=gen)
    x_hat = torch.rand(4, 9, generator=gen) * 0.98 + 0.01
    gauss = reconstruction_nll(x_hat, x, "gaussian")
    torch.testing.assert_close(gauss, F.mse_loss(x_hat, x, reduction="none").sum(1))
    bern = reconstruction_nll(x_hat, x, "bernoulli")
    manual = -(x * torch.log(x_hat) + (1 - x) * torch.log(1 - x_hat)).sum(1)
    torch.testing.assert_close(bern, manual, rtol=1e-5, atol=1e-5)


def test_kl_annealing_schedule():
    assert kl_weight(0, 2.0, 100) == 0.0
    assert kl_weight(50, 2.0, 100) == 1.0
    assert kl_weight(500, 2.0, 100) == 2.0
    assert kl_weight(0, 0.5, 0) == 0.5


def test_neg_elbo_is_recon_plus_kl_and_beta_weights_only_the_loss():
    torch.manual_seed(3)
    model = VAE(VAEConfig(x_dim=6, hidden=(5,), z_dim=2, beta=4.0))
    x = torch.rand(3, 6)
    torch.manual_seed(9)
    terms = model.neg_elbo(x, None, kl_w=4.0)
    torch.testing.assert_close(terms["neg_elbo"], terms["recon"] + terms["kl"])
    torch.testing.assert_close(terms["loss"], terms["recon"] + 4.0 * terms["kl"])


def test_conditional_vae_uses_the_label():
    torch.manual_seed(0)
    model = VAE(VAEConfig(x_dim=6, hidden=(5,), z_dim=2, n_classes=3))
    assert model.encoder.hidden[0].in_features == 9
    assert model.decoder.hidden[0].in_features == 5
    z = torch.randn(1, 2)
    a = model.decode(z, torch.tensor([0]))
    b = model.decode(z, torch.tensor([2]))
    assert not torch.allclose(a, b)
