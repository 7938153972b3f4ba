//! `infer_core`: loads the `.safetensors` files that `train/` exports, checks them against
//! the manifests of `shared_schema/`, and runs the VAE, the WGAN-GP generator and the
//! char-level GPT on the CPU with Candle. It knows nothing of Python or Erlang; the
//! binding crates beside it convert types and map [`InferError`] in one place each.

pub mod arch;
pub mod artifact;
mod attention;
pub mod batch;
pub mod cpu;
pub mod dense;
pub mod error;
pub mod gpt;
mod grid;
pub mod isa;
pub mod limits;
pub mod manifest;
pub mod model;
mod pair;
pub mod rng;
pub mod vae;
pub mod wgan;

pub use arch::Arch;
pub use batch::{Matrix, Rows};
pub use cpu::{cpu_info, CpuInfo};
pub use error::{InferError, Result, StopReason};
pub use gpt::Sampling;
pub use isa::{isa, Isa};
pub use model::Model;
