//! The WGAN-GP generator (Gulrajani et al., 2017, <https://arxiv.org/abs/1704.00028>),
//! as trained by `train/models/wgan.py`. Tensor paths: `generator.fc1`, `generator.fc2`,
//! `generator.out`. Images come out in [-1, 1], as the generator's tanh makes them.

use crate::batch::{
    check_count, check_rows, merge_errors, run_stacked, seeded_latents, Matrix, Rows,
};
use crate::dense::{Activation, Dense, Mlp};
use crate::error::Result;
use crate::rng::Rng;
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

pub struct Generator {
    pub cfg: Config,
    /// G(z) = tanh(out(relu(fc2(relu(fc1(z)))))).
    net: Mlp,
}

impl Generator {
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
            net: Mlp::new(layers),
            cfg,
        })
    }

    /// G(z) for rows z of width z_dim.
    pub fn decode(&self, z: Rows) -> Result<Matrix> {
        let rows = check_rows("z", z, self.cfg.z_dim)?;
        Ok(Matrix {
            rows,
            cols: self.cfg.x_dim,
            data: self.net.forward(z.data, rows),
        })
    }

    /// n images from z ~ N(0, I) drawn with `seed`.
    pub fn generate(&self, n: usize, seed: u64) -> Result<Matrix> {
        check_count("n", n)?;
        let z = Rng::new(seed).normals(n * self.cfg.z_dim);
        self.decode(Rows {
            data: &z,
            width: self.cfg.z_dim,
        })
    }

    /// Many decode inputs in one pass through the generator.
    pub fn decode_batch(&self, inputs: &[Rows]) -> Vec<Result<Matrix>> {
        run_stacked("z", inputs, self.cfg.z_dim, self.cfg.x_dim, |z, rows| {
            self.net.forward(z, rows)
        })
    }

    /// Many generate requests (n, seed) in one pass; each equals `generate(n, seed)`
    /// up to float rounding.
    pub fn generate_batch(&self, requests: &[(usize, u64)]) -> Vec<Result<Matrix>> {
        merge_errors(seeded_latents(requests, self.cfg.z_dim), |inputs| {
            self.decode_batch(inputs)
        })
    }
}
