//! The instruction set the dense kernels run on, chosen once per process: the best the
//! CPU has, or the one the environment variable `INFER_RS_ISA` names (`portable`,
//! `avx2` or `avx512`). Naming a path this CPU lacks, or an unknown name, is an error
//! (`InferError::UnsupportedIsa`) from every model load, never a silent fallback.
//!
//! - `portable`: plain Rust, the only path of a non-x86 target;
//! - `avx2`: the AVX2/FMA micro-kernel of `dense` (6 rows by 16 columns);
//! - `avx512`: the AVX-512F micro-kernel of `dense` (6 rows by 32 columns, or one row
//!   by 128), at every batch size too.

use crate::error::{InferError, Result};
use std::sync::OnceLock;

/// The environment variable that forces a path.
pub const ENV_VAR: &str = "INFER_RS_ISA";

/// An instruction-set path of the dense kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, vectorised by the compiler only.
    Portable,
    /// AVX2 with FMA.
    Avx2,
    /// AVX-512F for the dense layers (with AVX2/FMA for attention and the activations).
    Avx512,
}

impl Isa {
    /// Every path, from the most to the least widely available.
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    /// The name `INFER_RS_ISA` takes and reports show.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma");
            match self {
                Isa::Portable => true,
                Isa::Avx2 => avx2,
                Isa::Avx512 => avx2 && has!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The CPU features a path needs, for messages.
    fn requirement(self) -> &'static str {
        match self {
            Isa::Portable => "nothing",
            Isa::Avx2 => "AVX2 and FMA",
            Isa::Avx512 => "AVX-512F, AVX2 and FMA",
        }
    }

    /// The fastest path this CPU supports.
    pub fn best() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|isa| isa.supported())
            .unwrap_or(&Isa::Portable)
    }

    /// The path `requested` names (the value of `INFER_RS_ISA`), or the best one when
    /// none is requested; an error for an unknown name or a path this CPU lacks.
    pub fn resolve(requested: Option<&str>) -> Result<Isa> {
        let Some(name) = requested else {
            return Ok(Isa::best());
        };
        let refuse = |reason: String| InferError::UnsupportedIsa {
            requested: name.to_string(),
            reason,
        };
        let isa = Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == name)
            .ok_or_else(|| refuse("expected one of portable, avx2, avx512".into()))?;
        if !isa.supported() {
            return Err(refuse(format!("this CPU lacks {}", isa.requirement())));
        }
        Ok(isa)
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The path of this process: the one `INFER_RS_ISA` names if it is set, else the best
/// the CPU has. The variable is read once, on first use.
pub fn isa() -> Result<Isa> {
    static REQUESTED: OnceLock<Option<String>> = OnceLock::new();
    Isa::resolve(
        REQUESTED
            .get_or_init(|| std::env::var(ENV_VAR).ok())
            .as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_supported_paths_or_clear_errors() {
        assert_eq!(Isa::resolve(None).unwrap(), Isa::best());
        assert!(Isa::best().supported());
        for isa in Isa::ALL {
            match Isa::resolve(Some(isa.name())) {
                Ok(got) => assert!(got == isa && isa.supported()),
                Err(err) => {
                    assert!(!isa.supported());
                    let text = err.to_string();
                    assert!(text.contains("this CPU lacks"), "{text}");
                }
            }
        }
        let err = Isa::resolve(Some("sse9")).unwrap_err().to_string();
        assert_eq!(
            err,
            "INFER_RS_ISA=sse9: expected one of portable, avx2, avx512"
        );
    }
}
