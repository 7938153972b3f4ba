//! Reading an exported `.safetensors`: memory-map it, check its metadata and every tensor
//! against the shared manifest, and hand the weights to a model as a `VarBuilder`.

use crate::arch::Arch;
use crate::error::{InferError, Result};
use crate::manifest::expected_shapes;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The schema version of `shared_schema/` this engine reads.
pub const SCHEMA_VERSION: u32 = 1;

/// A checked file: its architecture, config and weights.
pub struct Artifact {
    pub path: PathBuf,
    pub arch: Arch,
    pub config: Value,
    pub tensors: HashMap<String, Tensor>,
}

impl Artifact {
    pub fn read(path: &Path) -> Result<Self> {
        let io = |source| InferError::Io {
            path: path.to_owned(),
            source,
        };
        if path.is_dir() {
            let kind = std::io::ErrorKind::IsADirectory;
            return Err(io(std::io::Error::new(
                kind,
                "a directory, not a .safetensors file",
            )));
        }
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: the map is read-only and dropped before this function returns; the
        // tensors below are copies. A file truncated by another process while mapped
        // could still fault, as with any mmap reader.
        let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let corrupt = |reason: String| InferError::Corrupt {
            path: path.to_owned(),
            reason,
        };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let st = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        let get = |key: &'static str| {
            meta.get(key).ok_or_else(|| InferError::MissingMetadata {
                path: path.to_owned(),
                key,
            })
        };
        let arch: Arch = get("arch")?.parse()?;
        let version = get("schema_version")?;
        if version.parse::<u32>() != Ok(SCHEMA_VERSION) {
            return Err(InferError::UnsupportedSchemaVersion {
                found: version.clone(),
                supported: SCHEMA_VERSION,
            });
        }
        let bad_config = |reason: String| InferError::BadMetadata {
            path: path.to_owned(),
            key: "config",
            reason,
        };
        let config: Value =
            serde_json::from_str(get("config")?).map_err(|e| bad_config(e.to_string()))?;
        let expected = expected_shapes(arch, &config).map_err(bad_config)?;

        let mut tensors = HashMap::new();
        for (name, shape) in &expected {
            let view = st
                .tensor(name)
                .map_err(|_| InferError::TensorNotFound { name: name.clone() })?;
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(InferError::UnsupportedDtype {
                    name: name.clone(),
                    dtype: format!("{:?}", view.dtype()),
                });
            }
            if view.shape() != shape.as_slice() {
                return Err(InferError::ShapeMismatch {
                    name: name.clone(),
                    expected: shape.clone(),
                    got: view.shape().to_vec(),
                });
            }
            let tensor = Tensor::from_raw_buffer(view.data(), DType::F32, shape, &Device::Cpu)?;
            tensors.insert(name.clone(), tensor);
        }
        if let Some(extra) = st.names().into_iter().find(|n| !expected.contains_key(*n)) {
            return Err(InferError::UnexpectedTensor {
                name: extra.to_string(),
                arch,
            });
        }
        Ok(Self {
            path: path.to_owned(),
            arch,
            config,
            tensors,
        })
    }

    /// Parse the config into the model's typed config, naming the file on failure.
    pub fn typed_config<C: serde::de::DeserializeOwned>(&self) -> Result<C> {
        serde_json::from_value(self.config.clone()).map_err(|e| InferError::BadMetadata {
            path: self.path.clone(),
            key: "config",
            reason: e.to_string(),
        })
    }

    pub fn var_builder(&self) -> VarBuilder<'static> {
        VarBuilder::from_tensors(self.tensors.clone(), DType::F32, &Device::Cpu)
    }
}
