//! The latent decoder that the VAE's decoder and the WGAN-GP generator share: a network
//! from latent rows z (width z_dim) to image rows (width x_dim), and the one place where
//! a seed becomes z ~ N(0, I).

use crate::batch::{check_count, check_rows, merge_errors, run_stacked, Matrix, OwnedRows, Rows};
use crate::dense::Mlp;
use crate::error::Result;
use crate::rng::Rng;

/// x = net(z), for rows z of width `z_dim`.
pub(crate) struct LatentDecoder {
    /// The width of a latent row.
    pub(crate) z_dim: usize,
    /// The width of an image row.
    pub(crate) x_dim: usize,
    net: Mlp,
}

impl LatentDecoder {
    pub(crate) fn new(net: Mlp, z_dim: usize, x_dim: usize) -> Self {
        Self { z_dim, x_dim, net }
    }

    /// Multiply-adds per decoded row.
    pub(crate) fn macs_per_row(&self) -> usize {
        self.net.macs_per_row()
    }

    /// `rows` rows of the network's input (which may be wider than z_dim, as a
    /// conditional VAE's is) through the network, unchecked.
    pub(crate) fn forward(&self, input: &[f32], rows: usize) -> Vec<f32> {
        self.net.forward(input, rows)
    }

    /// z ~ N(0, I): n rows of z_dim normals drawn from `seed`.
    pub(crate) fn latents(&self, n: usize, seed: u64) -> Result<Vec<f32>> {
        check_count("n", n)?;
        Ok(Rng::new(seed).normals(n * self.z_dim))
    }

    /// net(z) for rows z of width z_dim.
    pub(crate) fn decode(&self, z: Rows) -> Result<Matrix> {
        let rows = check_rows("z", z, self.z_dim)?;
        Ok(Matrix {
            rows,
            cols: self.x_dim,
            data: self.forward(z.data, rows),
        })
    }

    /// n images decoded from z ~ N(0, I) drawn with `seed`.
    pub(crate) fn generate(&self, n: usize, seed: u64) -> Result<Matrix> {
        let z = self.latents(n, seed)?;
        self.decode(Rows {
            data: &z,
            width: self.z_dim,
        })
    }

    /// Many decode inputs in one pass through the network.
    pub(crate) fn decode_batch(&self, inputs: &[Rows]) -> Vec<Result<Matrix>> {
        run_stacked("z", inputs, self.z_dim, self.x_dim, |z, rows| {
            self.forward(z, rows)
        })
    }

    /// Many generate requests (n, seed) in one pass; each equals `generate(n, seed)` up
    /// to float rounding, and an out-of-range n keeps its own error.
    pub(crate) fn generate_batch(&self, requests: &[(usize, u64)]) -> Vec<Result<Matrix>> {
        let latents: Vec<Result<OwnedRows>> = requests
            .iter()
            .map(|&(n, seed)| Ok((self.latents(n, seed)?, self.z_dim)))
            .collect();
        merge_errors(latents, |inputs| self.decode_batch(inputs))
    }
}
