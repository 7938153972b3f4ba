"""Every model `python -m train --model NAME` trains, in one table: its network, the
sizes that differ from the network's config defaults, and its training recipe.

The CLI's flags override these; the run summary records the recipe in words (which
`train.bench.quality` prints), and the export records the config that was built.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from train.models.gpt import GPT
from train.models.vae import VAE
from train.models.wgan import WGANGP
from train.trainer import TrainConfig


@dataclass(frozen=True)
class Preset:
    network: type  # VAE | WGANGP | GPT; its `Config` dataclass holds the sizes
    recipe: TrainConfig
    sizes: dict = field(default_factory=dict)  # config fields that differ from the defaults
    about: str = ""


# nanoGPT-style char-level schedule: AdamW, warm-up then cosine, clip at 1
GPT_SCHEDULE = dict(warmup_steps=100, min_lr_ratio=0.1, grad_clip=1.0, weight_decay=0.1, log_every=25)

MODELS = {
    "vae": Preset(
        VAE,
        # Adam, batch 128; peak lr 3e-3 decayed by cosine to 3e-4 (tuned on the held-out split)
        TrainConfig(epochs=30, batch_size=128, lr=3e-3, min_lr_ratio=0.1),
        about="VAE 784-400-200-20 on MNIST digits",
    ),
    "wgan": Preset(
        WGANGP,
        # Alg. 1 of Gulrajani et al. (Adam, betas (0.5, 0.9), batch 64, constant lr) at 3e-4
        # rather than 1e-4, for 280 epochs (3,976 generator steps), exporting an average of
        # the generator's weights (decay 0.999 per step): FID 6.1 in under 6 minutes on 2
        # threads, where 1e-4 needed 600 epochs for 4.8 (docs/training.md, "The WGAN recipe")
        TrainConfig(epochs=280, batch_size=64, lr=3e-4, keep_best=False, ema=0.999),
        about="WGAN-GP, MLP generator 100-256-512-784",
    ),
    "gpt": Preset(
        GPT,
        # peak lr raised to 3e-3 for the small model
        TrainConfig(epochs=10, steps_per_epoch=250, batch_size=32, lr=3e-3, **GPT_SCHEDULE),
        about="char-level GPT, 4 layers x 4 heads x 128 wide, block 128",
    ),
    "gpt-small": Preset(
        GPT,
        TrainConfig(epochs=10, steps_per_epoch=250, batch_size=64, lr=1e-3, **GPT_SCHEDULE),
        sizes=dict(n_layer=6, n_head=6, n_embd=384, block_size=256, dropout=0.2),
        about="char-level GPT, 6 layers x 6 heads x 384 wide, block 256, dropout 0.2",
    ),
}
