//! Variational autoencoder (Kingma & Welling, 2013, <https://arxiv.org/abs/1312.6114>),
//! as trained by `train/models/vae.py`. Tensor paths: `encoder.hidden.{i}`,
//! `encoder.mu`, `encoder.logvar`, `decoder.hidden.{i}`, `decoder.out`.

use crate::batch::{check_count, input_tensor, one_hot, Matrix, Rows};
use crate::error::{InferError, Result};
use crate::rng::Rng;
use candle_core::{Device, Tensor};
use candle_nn::{linear, Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

/// The config stored in the file's metadata (`shared_schema/configs/vae.schema.json`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Pixels per image.
    pub x_dim: usize,
    /// Encoder widths; the decoder uses them in reverse.
    pub hidden: Vec<usize>,
    /// Latent dimension.
    pub z_dim: usize,
    /// 0, or the classes of a conditional VAE (one-hot label joins both inputs).
    pub n_classes: usize,
    /// "gaussian" or "bernoulli"; training only.
    pub likelihood: String,
    /// KL weight; training only.
    pub beta: f64,
    /// KL warm-up steps; training only.
    pub kl_anneal_steps: u64,
}

/// A tanh MLP: h = tanh(W h + b) per layer.
struct TanhStack(Vec<Linear>);

impl TanhStack {
    fn load(vb: VarBuilder, widths: &[usize]) -> Result<Self> {
        let layers = widths
            .windows(2)
            .enumerate()
            .map(|(i, w)| linear(w[0], w[1], vb.pp(i)))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self(layers))
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = xs.clone();
        for layer in &self.0 {
            h = layer.forward(&h)?.tanh()?;
        }
        Ok(h)
    }
}

pub struct Vae {
    pub cfg: Config,
    enc_hidden: TanhStack,
    mu: Linear,
    logvar: Linear,
    dec_hidden: TanhStack,
    out: Linear,
}

impl Vae {
    pub fn load(vb: VarBuilder, cfg: Config) -> Result<Self> {
        let last = *cfg
            .hidden
            .last()
            .ok_or_else(|| InferError::InvalidArgument("empty hidden".into()))?;
        let enc_widths: Vec<usize> = std::iter::once(cfg.x_dim + cfg.n_classes)
            .chain(cfg.hidden.iter().copied())
            .collect();
        let dec_widths: Vec<usize> = std::iter::once(cfg.z_dim + cfg.n_classes)
            .chain(cfg.hidden.iter().rev().copied())
            .collect();
        let (enc, dec) = (vb.pp("encoder"), vb.pp("decoder"));
        Ok(Self {
            enc_hidden: TanhStack::load(enc.pp("hidden"), &enc_widths)?,
            mu: linear(last, cfg.z_dim, enc.pp("mu"))?,
            logvar: linear(last, cfg.z_dim, enc.pp("logvar"))?,
            dec_hidden: TanhStack::load(dec.pp("hidden"), &dec_widths)?,
            out: linear(cfg.hidden[0], cfg.x_dim, dec.pp("out"))?,
            cfg,
        })
    }

    /// [v, one_hot(y)] for a conditional model, v otherwise.
    fn condition(&self, v: Tensor, labels: Option<&[u32]>) -> Result<Tensor> {
        match (self.cfg.n_classes, labels) {
            (0, None) => Ok(v),
            (0, Some(_)) => Err(InferError::InvalidArgument(
                "labels given to a VAE that is not conditional".into(),
            )),
            (_, None) => Err(InferError::InvalidArgument(format!(
                "this conditional VAE needs one label in 0..{} per row",
                self.cfg.n_classes
            ))),
            (n_classes, Some(labels)) => {
                if labels.len() != v.dims()[0] {
                    return Err(InferError::InvalidArgument(format!(
                        "{} labels for {} rows",
                        labels.len(),
                        v.dims()[0]
                    )));
                }
                Ok(Tensor::cat(&[&v, &one_hot(labels, n_classes)?], 1)?)
            }
        }
    }

    /// x_hat = sigmoid(out(tanh-MLP([z, y]))) for rows z of width z_dim.
    pub fn decode(&self, z: Rows, labels: Option<&[u32]>) -> Result<Matrix> {
        let z = input_tensor("z", z, self.cfg.z_dim)?;
        Matrix::from_tensor(&self.decode_tensor(z, labels)?)
    }

    fn decode_tensor(&self, z: Tensor, labels: Option<&[u32]>) -> Result<Tensor> {
        let h = self.dec_hidden.forward(&self.condition(z, labels)?)?;
        Ok(candle_nn::ops::sigmoid(&self.out.forward(&h)?)?)
    }

    /// (mu, logvar) of q(z | x[, y]) for rows x of width x_dim.
    pub fn encode(&self, x: Rows, labels: Option<&[u32]>) -> Result<(Matrix, Matrix)> {
        let (mu, logvar) = self.encode_tensor(x, labels)?;
        Ok((Matrix::from_tensor(&mu)?, Matrix::from_tensor(&logvar)?))
    }

    fn encode_tensor(&self, x: Rows, labels: Option<&[u32]>) -> Result<(Tensor, Tensor)> {
        let x = input_tensor("x", x, self.cfg.x_dim)?;
        let h = self.enc_hidden.forward(&self.condition(x, labels)?)?;
        Ok((self.mu.forward(&h)?, self.logvar.forward(&h)?))
    }

    /// decode(mu(x)): the posterior mean's reconstruction.
    pub fn reconstruct(&self, x: Rows, labels: Option<&[u32]>) -> Result<Matrix> {
        let (mu, _) = self.encode_tensor(x, labels)?;
        Matrix::from_tensor(&self.decode_tensor(mu, labels)?)
    }

    /// n samples: z ~ N(0, I) from `seed`, decoded; a conditional model cycles labels
    /// 0, 1, ..., n_classes - 1 as `train/` does.
    pub fn generate(&self, n: usize, seed: u64) -> Result<Matrix> {
        check_count("n", n)?;
        let z = Tensor::from_vec(
            Rng::new(seed).normals(n * self.cfg.z_dim),
            (n, self.cfg.z_dim),
            &Device::Cpu,
        )?;
        let labels: Option<Vec<u32>> = (self.cfg.n_classes > 0)
            .then(|| (0..n).map(|i| (i % self.cfg.n_classes) as u32).collect());
        Matrix::from_tensor(&self.decode_tensor(z, labels.as_deref())?)
    }
}
