//! A loaded model of any architecture, and the operations each one offers.

use crate::arch::Arch;
use crate::artifact::Artifact;
use crate::batch::{Matrix, Rows};
use crate::error::{InferError, Result};
use crate::gpt::{Gpt, Sampling};
use crate::vae::Vae;
use crate::wgan::Generator;
use std::path::Path;

/// A model loaded from a file of `train/`, of one of the three architectures.
pub enum Model {
    /// A variational autoencoder: generate, decode, encode, reconstruct.
    Vae(Vae),
    /// A WGAN-GP generator: generate, decode.
    Wgan(Generator),
    /// A char-level GPT: logits, generate_text.
    Gpt(Gpt),
}

impl Model {
    /// Load and check a file exported by `train/`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let artifact = Artifact::read(path.as_ref())?;
        let vb = artifact.var_builder();
        match artifact.arch {
            Arch::Vae => Ok(Self::Vae(Vae::load(vb, artifact.typed_config()?)?)),
            Arch::Wgan => Ok(Self::Wgan(Generator::load(vb, artifact.typed_config()?)?)),
            Arch::Gpt => Ok(Self::Gpt(Gpt::load(vb, artifact.typed_config()?)?)),
        }
    }

    /// Load the VAE at `path` and generate n images from `seed`: the one-call API of the
    /// bindings, refusing a file of another architecture.
    pub fn vae_generate(path: impl AsRef<Path>, n: usize, seed: u64) -> Result<Matrix> {
        let model = Self::load(path)?;
        match model {
            Self::Vae(m) => m.decoder.generate(n, seed),
            other => other.unavailable("vae_generate"),
        }
    }

    /// The architecture of the loaded file.
    pub fn arch(&self) -> Arch {
        match self {
            Self::Vae(_) => Arch::Vae,
            Self::Wgan(_) => Arch::Wgan,
            Self::Gpt(_) => Arch::Gpt,
        }
    }

    /// Multiply-adds per row of an image operation (generate, decode, encode): what a
    /// caller weighs to run a small batch inline rather than on a worker thread. `None`
    /// for the GPT, whose cost grows with the text.
    pub fn macs_per_row(&self) -> Option<usize> {
        match self {
            Self::Vae(m) => Some(m.macs_per_row()),
            Self::Wgan(m) => Some(m.decoder.macs_per_row()),
            Self::Gpt(_) => None,
        }
    }

    /// The config from the file's metadata, as JSON.
    pub fn config_json(&self) -> String {
        let json = match self {
            Self::Vae(m) => serde_json::to_string(&m.cfg),
            Self::Wgan(m) => serde_json::to_string(&m.cfg),
            Self::Gpt(m) => serde_json::to_string(&m.cfg),
        };
        json.unwrap_or_default() // plain structs of numbers and strings always serialize
    }

    fn unavailable<T>(&self, op: &'static str) -> Result<T> {
        Err(InferError::WrongArchitecture {
            op,
            arch: self.arch(),
        })
    }

    /// n images from `seed`: VAE in [0, 1], WGAN in [-1, 1].
    pub fn generate(&self, n: usize, seed: u64) -> Result<Matrix> {
        match self {
            Self::Vae(Vae { decoder, .. }) | Self::Wgan(Generator { decoder, .. }) => {
                decoder.generate(n, seed)
            }
            Self::Gpt(_) => self.unavailable("generate"),
        }
    }

    /// Images from latent rows z of width z_dim.
    pub fn decode(&self, z: Rows) -> Result<Matrix> {
        match self {
            Self::Vae(Vae { decoder, .. }) | Self::Wgan(Generator { decoder, .. }) => {
                decoder.decode(z, None)
            }
            Self::Gpt(_) => self.unavailable("decode"),
        }
    }

    /// The VAE posterior (mu, logvar) of image rows x.
    pub fn encode(&self, x: Rows) -> Result<(Matrix, Matrix)> {
        match self {
            Self::Vae(m) => m.encode(x, None),
            _ => self.unavailable("encode"),
        }
    }

    /// Next-token logits (T, vocab) at every position of `prompt` (at most block_size).
    pub fn logits(&self, prompt: &str) -> Result<Matrix> {
        match self {
            Self::Gpt(m) => m.logits(&m.encode(prompt)?),
            _ => self.unavailable("logits"),
        }
    }

    /// decode(mu(x)) for VAE image rows x: the posterior mean's reconstruction.
    pub fn reconstruct(&self, x: Rows) -> Result<Matrix> {
        match self {
            Self::Vae(m) => m.reconstruct(x, None),
            _ => self.unavailable("reconstruct"),
        }
    }

    /// Many generate requests (n, seed) through one pass of the network.
    pub fn generate_batch(&self, requests: &[(usize, u64)]) -> Vec<Result<Matrix>> {
        match self {
            Self::Vae(Vae { decoder, .. }) | Self::Wgan(Generator { decoder, .. }) => {
                decoder.generate_batch(requests)
            }
            Self::Gpt(_) => requests
                .iter()
                .map(|_| self.unavailable("generate"))
                .collect(),
        }
    }

    /// Many decode inputs through one pass of the network.
    pub fn decode_batch(&self, inputs: &[Rows]) -> Vec<Result<Matrix>> {
        match self {
            Self::Vae(Vae { decoder, .. }) | Self::Wgan(Generator { decoder, .. }) => {
                decoder.decode_batch(inputs)
            }
            Self::Gpt(_) => inputs.iter().map(|_| self.unavailable("decode")).collect(),
        }
    }

    /// Up to `max_new_tokens` characters continuing `prompt`, picked by `sampling`.
    pub fn generate_text(
        &self,
        prompt: &str,
        max_new_tokens: usize,
        sampling: Sampling,
    ) -> Result<String> {
        self.generate_text_watched(prompt, max_new_tokens, sampling, &|_| None)
    }

    /// `generate_text`, stopped between tokens when `watch` says so (see
    /// `Gpt::generate_watched`).
    pub fn generate_text_watched(
        &self,
        prompt: &str,
        max_new_tokens: usize,
        sampling: Sampling,
        watch: &dyn Fn(&[u32]) -> Option<crate::StopReason>,
    ) -> Result<String> {
        match self {
            Self::Gpt(m) => m.generate_text_watched(prompt, max_new_tokens, sampling, watch),
            _ => self.unavailable("generate_text"),
        }
    }

    /// Many texts at once: each (prompt, max_new_tokens, sampling) continued as
    /// `generate_text` would continue it alone, generated together in a decoding batch
    /// of `limits` (`crate::decoding`). Every request is checked before any runs.
    pub fn generate_texts(
        &self,
        requests: &[(&str, usize, Sampling)],
        limits: crate::Limits,
    ) -> Result<Vec<String>> {
        let Self::Gpt(m) = self else {
            return self.unavailable("generate_texts");
        };
        let ids = requests
            .iter()
            .map(|&(prompt, n, sampling)| Ok((m.prompt_ids(prompt)?, n, sampling)))
            .collect::<Result<Vec<_>>>()?;
        let out = m.generate_many(&ids, limits)?;
        Ok(out.iter().map(|ids| m.decode(ids)).collect())
    }

    /// The GPT itself, for step-wise decoding (`Gpt::decoding_batch`).
    pub fn gpt(&self) -> Result<&Gpt> {
        match self {
            Self::Gpt(m) => Ok(m),
            _ => self.unavailable("decoding_batch"),
        }
    }

    /// The text of token ids (one character each: the vocabulary is a string).
    pub fn decode_tokens(&self, ids: &[u32]) -> Result<String> {
        match self {
            Self::Gpt(m) => Ok(m.decode(ids)),
            _ => self.unavailable("decode_tokens"),
        }
    }
}
