//! Variational autoencoder (Kingma & Welling, 2013, <https://arxiv.org/abs/1312.6114>),
//! as trained by `train/models/vae.py`. Tensor paths: `encoder.hidden.{i}`,
//! `encoder.mu`, `encoder.logvar`, `decoder.hidden.{i}`, `decoder.out`.

use crate::activation::Activation;
use crate::batch::{check_rows, Matrix, Rows};
use crate::dense::{Dense, Mlp};
use crate::error::{InferError, Result};
use crate::latent::{with_one_hot, LatentDecoder};
use candle_core::Tensor;
use candle_nn::VarBuilder;
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

/// Weight (out, in) and bias of the linear layer at `vb`.
fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<(Tensor, Tensor)> {
    Ok((
        vb.get((out_dim, in_dim), "weight")?,
        vb.get(out_dim, "bias")?,
    ))
}

/// tanh layers of the given widths, then `last`.
fn tanh_stack(vb: VarBuilder, widths: &[usize], mut last: Vec<Dense>) -> Result<Mlp> {
    let mut layers = widths
        .windows(2)
        .enumerate()
        .map(|(i, w)| {
            let (weight, bias) = linear(&vb.pp(i), w[0], w[1])?;
            Dense::new(&weight, &bias, Activation::Tanh)
        })
        .collect::<Result<Vec<_>>>()?;
    layers.append(&mut last);
    Ok(Mlp::new(layers))
}

/// The encoder q(z | x[, y]) and the decoder p(x | z[, y]).
pub struct Vae {
    /// The config from the file's metadata.
    pub cfg: Config,
    /// x -> [mu, logvar]: tanh hidden layers, then both heads as one (2 z_dim)-wide layer.
    encoder: Mlp,
    /// [z, y] -> x_hat: tanh hidden layers, then the sigmoid output.
    pub(crate) decoder: LatentDecoder,
}

impl Vae {
    /// The encoder and decoder at `encoder.*` and `decoder.*` in `vb`, with the widths
    /// of `cfg`.
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
        let (mu_w, mu_b) = linear(&enc.pp("mu"), last, cfg.z_dim)?;
        let (lv_w, lv_b) = linear(&enc.pp("logvar"), last, cfg.z_dim)?;
        let heads = Dense::new(
            &Tensor::cat(&[&mu_w, &lv_w], 0)?,
            &Tensor::cat(&[&mu_b, &lv_b], 0)?,
            Activation::Identity,
        )?;
        let (out_w, out_b) = linear(&dec.pp("out"), cfg.hidden[0], cfg.x_dim)?;
        let out = Dense::new(&out_w, &out_b, Activation::Sigmoid)?;
        Ok(Self {
            encoder: tanh_stack(enc.pp("hidden"), &enc_widths, vec![heads])?,
            decoder: LatentDecoder::new(
                tanh_stack(dec.pp("hidden"), &dec_widths, vec![out])?,
                cfg.z_dim,
                cfg.n_classes,
                cfg.x_dim,
            ),
            cfg,
        })
    }

    /// Multiply-adds per row of the dearer of encode and decode.
    pub fn macs_per_row(&self) -> usize {
        self.encoder.macs_per_row().max(self.decoder.macs_per_row())
    }

    /// (mu, logvar) of q(z | x[, y]) for rows x of width x_dim.
    pub fn encode(&self, x: Rows, labels: Option<&[u32]>) -> Result<(Matrix, Matrix)> {
        let rows = check_rows("x", x, self.cfg.x_dim)?;
        let input = with_one_hot(x, labels, self.cfg.n_classes)?;
        let heads = self.encoder.forward(&input, rows);
        let z = self.cfg.z_dim;
        let split = |offset: usize| Matrix {
            rows,
            cols: z,
            data: heads
                .chunks_exact(2 * z)
                .flat_map(|r| &r[offset..offset + z])
                .copied()
                .collect(),
        };
        Ok((split(0), split(z)))
    }

    /// decode(mu(x)): the posterior mean's reconstruction.
    pub fn reconstruct(&self, x: Rows, labels: Option<&[u32]>) -> Result<Matrix> {
        let (mu, _) = self.encode(x, labels)?;
        self.decoder.decode(
            Rows {
                data: &mu.data,
                width: mu.cols,
            },
            labels,
        )
    }
}
