"""The three model families. Each module holds one model, its config and its math;
`ARCHITECTURES` maps each `arch` name (the one an export's metadata carries) to its network."""

from train.models.gpt import GPT
from train.models.vae import VAE
from train.models.wgan import WGANGP

ARCHITECTURES = {network.arch: network for network in (VAE, WGANGP, GPT)}
