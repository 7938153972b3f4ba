//! The latent decoder that the VAE's decoder and the WGAN-GP generator share: a network
//! from latent rows z (width z_dim), with a one-hot label appended for a conditional
//! VAE, to image rows (width x_dim); and the one place where a seed becomes z ~ N(0, I).

use crate::batch::{check_count, check_rows, merge_errors, run_stacked, Matrix, OwnedRows, Rows};
use crate::dense::Mlp;
use crate::error::{InferError, Result};
use crate::rng::Rng;
use std::borrow::Cow;

/// x = net([z, one_hot(y)]) for rows z of width `z_dim`; y only when `n_classes` > 0.
pub(crate) struct LatentDecoder {
    /// The width of a latent row.
    z_dim: usize,
    /// 0, or the classes whose one-hot label joins each latent row.
    n_classes: usize,
    /// The width of an image row.
    x_dim: usize,
    /// Takes rows of z_dim + n_classes values.
    net: Mlp,
}

impl LatentDecoder {
    pub(crate) fn new(net: Mlp, z_dim: usize, n_classes: usize, x_dim: usize) -> Self {
        Self {
            z_dim,
            n_classes,
            x_dim,
            net,
        }
    }

    /// Multiply-adds per decoded row.
    pub(crate) fn macs_per_row(&self) -> usize {
        self.net.macs_per_row()
    }

    /// z ~ N(0, I): n rows of z_dim normals drawn from `seed`.
    fn latents(&self, n: usize, seed: u64) -> Result<Vec<f32>> {
        check_count("n", n)?;
        Ok(Rng::new(seed).normals(n * self.z_dim))
    }

    /// net([z, one_hot(y)]) for rows z of width z_dim, with one label per row for a
    /// conditional decoder and none otherwise.
    pub(crate) fn decode(&self, z: Rows, labels: Option<&[u32]>) -> Result<Matrix> {
        let rows = check_rows("z", z, self.z_dim)?;
        let input = with_one_hot(z, labels, self.n_classes)?;
        Ok(Matrix {
            rows,
            cols: self.x_dim,
            data: self.net.forward(&input, rows),
        })
    }

    /// n images decoded from z ~ N(0, I) drawn with `seed`; a conditional decoder cycles
    /// labels 0, 1, ..., n_classes - 1 as `train/` does.
    pub(crate) fn generate(&self, n: usize, seed: u64) -> Result<Matrix> {
        let z = self.latents(n, seed)?;
        let labels: Option<Vec<u32>> =
            (self.n_classes > 0).then(|| (0..n).map(|i| (i % self.n_classes) as u32).collect());
        let z = Rows {
            data: &z,
            width: self.z_dim,
        };
        self.decode(z, labels.as_deref())
    }

    /// Many decode inputs in one pass through the network. A conditional decoder needs
    /// labels, which these inputs lack: each gets its own error.
    pub(crate) fn decode_batch(&self, inputs: &[Rows]) -> Vec<Result<Matrix>> {
        if self.n_classes > 0 {
            return inputs.iter().map(|z| self.decode(*z, None)).collect();
        }
        run_stacked("z", inputs, self.z_dim, self.x_dim, |z, rows| {
            self.net.forward(z, rows)
        })
    }

    /// Many generate requests (n, seed); each equals `generate(n, seed)` up to float
    /// rounding, and an out-of-range n keeps its own error. Unconditional requests run
    /// in one pass; conditional ones (each with its own cycle of labels) one by one.
    pub(crate) fn generate_batch(&self, requests: &[(usize, u64)]) -> Vec<Result<Matrix>> {
        if self.n_classes > 0 {
            return requests
                .iter()
                .map(|&(n, seed)| self.generate(n, seed))
                .collect();
        }
        let latents: Vec<Result<OwnedRows>> = requests
            .iter()
            .map(|&(n, seed)| Ok((self.latents(n, seed)?, self.z_dim)))
            .collect();
        merge_errors(latents, |inputs| self.decode_batch(inputs))
    }
}

/// Rows of `v` with one_hot(y) appended when `n_classes` > 0 (one label per row, each in
/// 0..n_classes); `v` itself otherwise, where labels are refused.
pub(crate) fn with_one_hot<'a>(
    v: Rows<'a>,
    labels: Option<&[u32]>,
    n_classes: usize,
) -> Result<Cow<'a, [f32]>> {
    let rows = v.data.len() / v.width;
    match (n_classes, labels) {
        (0, None) => Ok(Cow::Borrowed(v.data)),
        (0, Some(_)) => Err(InferError::InvalidArgument(
            "labels given to a VAE that is not conditional".into(),
        )),
        (_, None) => Err(InferError::InvalidArgument(format!(
            "this conditional VAE needs one label in 0..{n_classes} per row"
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::Activation;
    use crate::dense::Dense;
    use candle_core::{Device, Tensor};

    /// A conditional decoder whose one layer copies its input [z, one_hot(y)] through
    /// (W = I, b = 0): what it outputs is what it was given.
    fn identity_decoder(z_dim: usize, n_classes: usize) -> LatentDecoder {
        let width = z_dim + n_classes;
        let eye = Tensor::eye(width, candle_core::DType::F32, &Device::Cpu).unwrap();
        let bias = Tensor::zeros(width, candle_core::DType::F32, &Device::Cpu).unwrap();
        let layer = Dense::new(&eye, &bias, Activation::Identity).unwrap();
        LatentDecoder::new(Mlp::new(vec![layer]), z_dim, n_classes, width)
    }

    #[test]
    fn a_conditional_decoder_appends_the_one_hot_label() {
        let decoder = identity_decoder(2, 3);
        let z = [0.5, -1.0, 2.0, 0.25];
        let rows = Rows { data: &z, width: 2 };
        let x = decoder.decode(rows, Some(&[2, 0])).unwrap();
        let want = [0.5, -1.0, 0.0, 0.0, 1.0, 2.0, 0.25, 1.0, 0.0, 0.0];
        assert_eq!((x.rows, x.cols), (2, 5));
        assert_eq!(x.data, want);

        for labels in [None, Some(&[0][..]), Some(&[0, 3][..])] {
            let err = decoder.decode(rows, labels).unwrap_err();
            assert!(matches!(err, InferError::InvalidArgument(_)), "{err}");
        }
    }

    #[test]
    fn conditional_generation_cycles_the_labels_over_the_seeded_latents() {
        let decoder = identity_decoder(2, 3);
        let x = decoder.generate(4, 9).unwrap();
        let z = Rng::new(9).normals(8);
        for (i, row) in x.data.chunks_exact(5).enumerate() {
            assert_eq!(row[..2], z[2 * i..2 * i + 2]);
            let hot: Vec<f32> = (0..3).map(|c| f32::from(c == i % 3)).collect();
            assert_eq!(row[2..], hot[..]);
        }
        // batched requests of a conditional decoder each equal their own generate
        let batch = decoder.generate_batch(&[(4, 9), (0, 1)]);
        assert_eq!(batch[0].as_ref().unwrap(), &x);
        assert!(matches!(batch[1], Err(InferError::InvalidArgument(_))));
    }
}
