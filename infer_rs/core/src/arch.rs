//! The architectures the engine runs, named as in the files' `arch` metadata.

use crate::error::InferError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A model architecture: the `arch` metadata of an exported file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The variational autoencoder (`train/models/vae.py`).
    Vae,
    /// The WGAN-GP generator (`train/models/wgan.py`).
    Wgan,
    /// The character-level GPT (`train/models/gpt.py`).
    Gpt,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 3] = [Arch::Vae, Arch::Wgan, Arch::Gpt];

    /// The name in the files' metadata and the manifests: "vae", "wgan" or "gpt".
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Vae => "vae",
            Arch::Wgan => "wgan",
            Arch::Gpt => "gpt",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = InferError;

    fn from_str(name: &str) -> Result<Self, InferError> {
        Arch::ALL
            .into_iter()
            .find(|arch| arch.name() == name)
            .ok_or_else(|| InferError::UnknownArchitecture { arch: name.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for arch in Arch::ALL {
            assert_eq!(arch.to_string().parse::<Arch>().unwrap(), arch);
            let json = serde_json::to_string(&arch).unwrap();
            assert_eq!(json, format!("\"{arch}\""));
            assert_eq!(serde_json::from_str::<Arch>(&json).unwrap(), arch);
        }
        let err = "diffusion".parse::<Arch>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown architecture 'diffusion'; expected one of vae, wgan, gpt"
        );
    }
}
