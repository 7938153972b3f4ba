//! The WGAN-GP generator (Gulrajani et al., 2017, <https://arxiv.org/abs/1704.00028>),
//! as trained by `train/models/wgan.py`. Tensor paths: `generator.fc1`, `generator.fc2`,
//! `generator.out`. Images come out in [-1, 1], as the generator's tanh makes them.

use crate::batch::{check_count, input_tensor, Matrix, Rows};
use crate::error::Result;
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use candle_nn::{linear, Linear, Module, VarBuilder};
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

pub struct Generator {
    pub cfg: Config,
    fc1: Linear,
    fc2: Linear,
    out: Linear,
}

impl Generator {
    pub fn load(vb: VarBuilder, cfg: Config) -> Result<Self> {
        let vb = vb.pp("generator");
        Ok(Self {
            fc1: linear(cfg.z_dim, cfg.g_hidden[0], vb.pp("fc1"))?,
            fc2: linear(cfg.g_hidden[0], cfg.g_hidden[1], vb.pp("fc2"))?,
            out: linear(cfg.g_hidden[1], cfg.x_dim, vb.pp("out"))?,
            cfg,
        })
    }

    /// G(z) = tanh(out(relu(fc2(relu(fc1(z)))))).
    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(z)?.relu()?;
        let h = self.fc2.forward(&h)?.relu()?;
        Ok(self.out.forward(&h)?.tanh()?)
    }

    /// G(z) for rows z of width z_dim.
    pub fn decode(&self, z: Rows) -> Result<Matrix> {
        Matrix::from_tensor(&self.forward(&input_tensor("z", z, self.cfg.z_dim)?)?)
    }

    /// n images from z ~ N(0, I) drawn with `seed`.
    pub fn generate(&self, n: usize, seed: u64) -> Result<Matrix> {
        check_count("n", n)?;
        let z = Tensor::from_vec(
            Rng::new(seed).normals(n * self.cfg.z_dim),
            (n, self.cfg.z_dim),
            &Device::Cpu,
        )?;
        Matrix::from_tensor(&self.forward(&z)?)
    }
}
