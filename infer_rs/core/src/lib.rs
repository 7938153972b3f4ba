//! `infer_core`: loads the `.safetensors` files that `train/` exports, checks them against
//! the manifests of `shared_schema/`, and runs the VAE, the WGAN-GP generator and the
//! char-level GPT on the CPU with Candle. It knows nothing of Python or Erlang; the
//! binding crates beside it convert types and map [`InferError`] in one place each.
//!
//! The public API is [`Model`] and the types its methods take and return; the modules
//! [`isa`] and [`limits`] hold the knobs and bounds a caller may need. Everything else is
//! internal to the crate.

#![warn(missing_docs)]

mod activation;
mod arch;
mod artifact;
mod attention;
mod batch;
mod cpu;
pub mod decoding;
mod dense;
mod error;
pub mod gpt;
pub mod isa;
mod latent;
pub mod limits;
mod manifest;
mod model;
mod pair;
mod rng;
pub mod vae;
pub mod wgan;

pub use arch::Arch;
pub use batch::{merge_errors, Matrix, OwnedRows, Rows};
pub use cpu::{cpu_info, set_threads, CpuInfo};
pub use decoding::{DecodingBatch, Emitted, Limits, SeqId};
pub use error::{InferError, Result, StopReason};
pub use gpt::Sampling;
pub use isa::{isa, Isa};
pub use model::Model;

/// Internals that the benches, the idle test and the idle example drive directly. Not
/// part of the API: it may change with any release.
#[doc(hidden)]
pub mod internals {
    pub use crate::activation::Activation;
    pub use crate::dense::{Dense, Mlp};
    pub use crate::manifest::expected_shapes;
    pub use crate::rng::Rng;
}
