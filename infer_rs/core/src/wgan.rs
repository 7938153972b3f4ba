//! The WGAN-GP generator (Gulrajani et al., 2017, <https://arxiv.org/abs/1704.00028>),
//! as trained by `train/models/wgan.py`. Tensor paths: `generator.fc1`, `generator.fc2`,
//! `generator.out`. Images come out in [-1, 1], as the generator's tanh makes them.

use crate::activation::Activation;
use crate::dense::{Dense, Mlp};
use crate::error::Result;
use crate::latent::LatentDecoder;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// The config stored in the file's metadata (`shared_schema/configs/wgan.schema.json`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Noise dimension.
    pub z_dim: usize,
    /// Generator widths.
    pub g_hidden: [usize; 2],
    /// Critic widths; training only.
    pub d_hidden: [usize; 2],
    /// Pixels per image.
    pub x_dim: usize,
    /// Gradient-penalty weight; training only.
    pub gp_lambda: f64,
    /// Critic steps per generator step; training only.
    pub n_critic: u32,
    /// Adam betas; training only.
    pub betas: [f64; 2],
    /// Spectral-norm critic; training only.
    pub spectral_norm: bool,
    /// Critic leaky-relu slope; training only.
    pub leak: f64,
}

/// The generator G(z) = tanh(out(relu(fc2(relu(fc1(z)))))); the critic is training only.
pub struct Generator {
    /// The config from the file's metadata.
    pub cfg: Config,
    pub(crate) decoder: LatentDecoder,
}

impl Generator {
    /// The generator's layers at `generator.*` in `vb`, with the widths of `cfg`.
    pub fn load(vb: VarBuilder, cfg: Config) -> Result<Self> {
        let vb = vb.pp("generator");
        let widths = [cfg.z_dim, cfg.g_hidden[0], cfg.g_hidden[1], cfg.x_dim];
        let acts = [Activation::Relu, Activation::Relu, Activation::Tanh];
        let layers = ["fc1", "fc2", "out"]
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let layer = vb.pp(name);
                let weight = layer.get((widths[i + 1], widths[i]), "weight")?;
                Dense::new(&weight, &layer.get(widths[i + 1], "bias")?, acts[i])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            decoder: LatentDecoder::new(Mlp::new(layers), cfg.z_dim, 0, cfg.x_dim),
            cfg,
        })
    }
}
