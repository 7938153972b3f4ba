//! Variational autoencoder (Kingma & Welling, 2013, <https://arxiv.org/abs/1312.6114>),
//! as trained by `train/models/vae.py`. Tensor paths: `encoder.hidden.{i}`,
//! `encoder.mu`, `encoder.logvar`, `decoder.hidden.{i}`, `decoder.out`.

use crate::batch::{check_rows, Matrix, Rows};
use crate::dense::{Activation, Dense, Mlp};
use crate::error::{InferError, Result};
use crate::latent::LatentDecoder;
use candle_core::Tensor;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

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
    /// z -> x_hat: tanh hidden layers, then the sigmoid output.
    decoder: LatentDecoder,
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
                cfg.x_dim,
            ),
            cfg,
        })
    }

    /// Multiply-adds per row of the dearer of encode and decode.
    pub fn macs_per_row(&self) -> usize {
        self.encoder.macs_per_row().max(self.decoder.macs_per_row())
    }

    /// Rows of `v` with one_hot(y) appended for a conditional model; `v` itself otherwise.
    fn condition<'a>(&self, v: Rows<'a>, labels: Option<&[u32]>) -> Result<Cow<'a, [f32]>> {
        let rows = v.data.len() / v.width;
        match (self.cfg.n_classes, labels) {
            (0, None) => Ok(Cow::Borrowed(v.data)),
            (0, Some(_)) => Err(InferError::InvalidArgument(
                "labels given to a VAE that is not conditional".into(),
            )),
            (_, None) => Err(InferError::InvalidArgument(format!(
                "this conditional VAE needs one label in 0..{} per row",
                self.cfg.n_classes
            ))),
            (n_classes, Some(labels)) => {
                if labels.len() != rows {
                    return Err(InferError::InvalidArgument(format!(
                        "{} labels for {rows} rows",
                        labels.len()
                    )));
                }
                let mut out = Vec::with_capacity(rows * (v.width + n_classes));
                for (row, &label) in v.data.chunks_exact(v.width).zip(labels) {
                    if label as usize >= n_classes {
                        return Err(InferError::InvalidArgument(format!(
                            "label {label} is outside 0..{n_classes}"
                        )));
                    }
                    out.extend_from_slice(row);
                    out.extend((0..n_classes).map(|c| if c == label as usize { 1.0 } else { 0.0 }));
                }
                Ok(Cow::Owned(out))
            }
        }
    }

    /// x_hat = sigmoid(out(tanh-MLP([z, y]))) for rows z of width z_dim.
    pub fn decode(&self, z: Rows, labels: Option<&[u32]>) -> Result<Matrix> {
        if self.cfg.n_classes == 0 && labels.is_none() {
            return self.decoder.decode(z);
        }
        let rows = check_rows("z", z, self.cfg.z_dim)?;
        Ok(Matrix {
            rows,
            cols: self.cfg.x_dim,
            data: self.decoder.forward(&self.condition(z, labels)?, rows),
        })
    }

    /// (mu, logvar) of q(z | x[, y]) for rows x of width x_dim.
    pub fn encode(&self, x: Rows, labels: Option<&[u32]>) -> Result<(Matrix, Matrix)> {
        let rows = check_rows("x", x, self.cfg.x_dim)?;
        let heads = self.encoder.forward(&self.condition(x, labels)?, rows);
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
        self.decode(
            Rows {
                data: &mu.data,
                width: mu.cols,
            },
            labels,
        )
    }

    /// n samples: z ~ N(0, I) from `seed`, decoded; a conditional model cycles labels
    /// 0, 1, ..., n_classes - 1 as `train/` does.
    pub fn generate(&self, n: usize, seed: u64) -> Result<Matrix> {
        if self.cfg.n_classes == 0 {
            return self.decoder.generate(n, seed);
        }
        let z = self.decoder.latents(n, seed)?;
        let labels: Vec<u32> = (0..n).map(|i| (i % self.cfg.n_classes) as u32).collect();
        self.decode(
            Rows {
                data: &z,
                width: self.cfg.z_dim,
            },
            Some(&labels),
        )
    }

    /// Many decode inputs in one pass through the decoder (unconditional models; a
    /// conditional one needs labels, so it decodes each input on its own).
    pub fn decode_batch(&self, inputs: &[Rows]) -> Vec<Result<Matrix>> {
        if self.cfg.n_classes > 0 {
            return inputs.iter().map(|z| self.decode(*z, None)).collect();
        }
        self.decoder.decode_batch(inputs)
    }

    /// Many generate requests (n, seed) in one pass; each equals `generate(n, seed)`
    /// up to float rounding.
    pub fn generate_batch(&self, requests: &[(usize, u64)]) -> Vec<Result<Matrix>> {
        if self.cfg.n_classes > 0 {
            return requests
                .iter()
                .map(|&(n, seed)| self.generate(n, seed))
                .collect();
        }
        self.decoder.generate_batch(requests)
    }
}
