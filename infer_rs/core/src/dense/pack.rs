//! A layer's weights as the micro-kernels read them: W^T packed once at load time in
//! panels of NR columns. Panel t holds rows k = 0..in_dim of columns t*NR..(t+1)*NR,
//! contiguous, so a kernel streams it front to back; columns past out_dim are zero, as
//! is their bias.

use crate::error::{InferError, Result};
use candle_core::Tensor;

/// Output columns per panel (one 16-lane tile row).
pub(super) const NR: usize = 16;

/// W^T in panels, and the bias padded to whole panels.
pub(super) struct Packed {
    pub in_dim: usize,
    pub out_dim: usize,
    /// out_dim rounded up to whole panels: the row stride of the layer's output.
    pub padded_out: usize,
    pub panels: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Packed {
    /// From a PyTorch-layout weight (out, in) and bias (out).
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let (out_dim, in_dim) = weight.dims2()?;
        if in_dim == 0 || out_dim == 0 {
            return Err(InferError::InvalidArgument(format!(
                "a dense layer needs inputs and outputs, got a {out_dim} x {in_dim} weight"
            )));
        }
        let w: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        let padded_out = out_dim.div_ceil(NR) * NR;
        let mut panels = vec![0f32; in_dim * padded_out];
        for o in 0..out_dim {
            let (tile, j) = (o / NR, o % NR);
            for k in 0..in_dim {
                panels[(tile * in_dim + k) * NR + j] = w[o * in_dim + k];
            }
        }
        let mut bias: Vec<f32> = bias.to_vec1()?;
        bias.resize(padded_out, 0.0);
        Ok(Self {
            in_dim,
            out_dim,
            padded_out,
            panels,
            bias,
        })
    }

    /// The panels, each NR output columns wide.
    pub fn tile_count(&self) -> usize {
        self.padded_out / NR
    }

    /// The bytes all panels take.
    pub fn panel_bytes(&self) -> usize {
        std::mem::size_of_val(self.panels.as_slice())
    }
}
