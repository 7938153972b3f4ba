//! The one error type of the engine. Every variant says what was wrong and where.

use std::path::PathBuf;

/// Everything that can go wrong loading a model or running it.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant's fields are named in its message
pub enum InferError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The bytes are not a well-formed safetensors file (bad header length, bad JSON,
    /// offsets past the end of a truncated file, ...).
    #[error("{path} is not a valid safetensors file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// A metadata key the engine needs is absent.
    #[error("{path} has no '{key}' metadata; export it with `python -m train`")]
    MissingMetadata { path: PathBuf, key: &'static str },
    /// A metadata value cannot be parsed or breaks the config schema.
    #[error("{path}: metadata '{key}' is invalid: {reason}")]
    BadMetadata {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
    /// The file's `arch` is not one the engine knows.
    #[error("unknown architecture '{arch}'; expected one of vae, wgan, gpt")]
    UnknownArchitecture { arch: String },
    /// The file obeys a schema version the engine does not speak.
    #[error("schema version {found} is not supported (this engine reads version {supported})")]
    UnsupportedSchemaVersion { found: String, supported: u32 },
    /// The manifest requires a tensor the file does not hold.
    #[error("tensor '{name}' is missing")]
    TensorNotFound { name: String },
    /// The file holds a tensor the manifest does not know.
    #[error("tensor '{name}' is not part of a {arch} model")]
    UnexpectedTensor { name: String, arch: crate::Arch },
    /// A tensor's shape differs from the manifest's for this config.
    #[error("tensor '{name}' has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A tensor is stored in a dtype other than f32.
    #[error("tensor '{name}' has dtype {dtype}; only F32 is supported")]
    UnsupportedDtype { name: String, dtype: String },
    /// The operation does not exist for this model's architecture.
    #[error("operation '{op}' is not available for a {arch} model")]
    WrongArchitecture { op: &'static str, arch: crate::Arch },
    /// An argument is of the right type but invalid (n = 0, wrong width, NaN, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A size is above its documented limit (shared_schema/wire/limits.json).
    #[error("{what} is {value}, above the limit of {limit}")]
    TooLarge {
        what: &'static str,
        value: usize,
        limit: usize,
    },
    /// `INFER_RS_ISA` names an unknown instruction-set path or one this CPU lacks.
    #[error("INFER_RS_ISA={requested}: {reason}")]
    UnsupportedIsa { requested: String, reason: String },
    /// The tensor library failed on valid input.
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    /// A watched generation was stopped between two tokens (`Gpt::generate_watched`).
    #[error("generation stopped after {tokens} new tokens: {reason}")]
    Stopped { tokens: usize, reason: StopReason },
}

/// Why a watched generation stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The request's deadline passed.
    Deadline,
    /// Nobody waits for the result any more (the calling process died).
    CallerGone,
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deadline => "the deadline passed",
            Self::CallerGone => "the caller is gone",
        })
    }
}

/// The engine's result: a value or an [`InferError`].
pub type Result<T> = std::result::Result<T, InferError>;
