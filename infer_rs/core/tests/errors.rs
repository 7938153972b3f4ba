//! Every error variant, reached through files and arguments a user could give; and a
//! fuzz-style sweep over random and mutated files that must give errors, never panics.

use infer_core::{InferError, Model, Rows, Sampling};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::PathBuf;

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../../shared_schema/golden/{name}.safetensors"))
}

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("infer_core_{tag}_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Re-serialize the VAE golden file after `edit` changes its tensors or metadata.
fn edited_vae(
    edit: impl FnOnce(&mut Vec<(String, Dtype, Vec<usize>, Vec<u8>)>, &mut HashMap<String, String>),
) -> Vec<u8> {
    let bytes = std::fs::read(golden("vae_tiny")).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    edit(&mut tensors, &mut meta);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
}

fn load_err(scratch: &Scratch, name: &str, bytes: &[u8]) -> InferError {
    match Model::load(scratch.write(name, bytes)) {
        Ok(_) => panic!("{name} loaded"),
        Err(e) => e,
    }
}

#[test]
fn file_errors_name_the_problem() {
    let s = Scratch::new("files");
    assert!(matches!(
        Model::load(s.0.join("absent.safetensors")),
        Err(InferError::Io { .. })
    ));
    let good = std::fs::read(golden("vae_tiny")).unwrap();

    let e = load_err(&s, "truncated", &good[..good.len() - 7]);
    assert!(matches!(e, InferError::Corrupt { .. }), "{e}");
    let e = load_err(&s, "short_header", &good[..5]);
    assert!(matches!(e, InferError::Corrupt { .. }), "{e}");
    let mut wrong_len = good.clone();
    wrong_len[..8].copy_from_slice(&(good.len() as u64 * 2).to_le_bytes());
    let e = load_err(&s, "wrong_header_length", &wrong_len);
    assert!(matches!(e, InferError::Corrupt { .. }), "{e}");

    let e = load_err(&s, "no_arch", &edited_vae(|_, m| drop(m.remove("arch"))));
    assert!(
        matches!(e, InferError::MissingMetadata { key: "arch", .. }),
        "{e}"
    );
    let e = load_err(
        &s,
        "arch",
        &edited_vae(|_, m| drop(m.insert("arch".into(), "diffusion".into()))),
    );
    assert!(
        matches!(e, InferError::UnknownArchitecture { ref arch } if arch == "diffusion"),
        "{e}"
    );
    let e = load_err(
        &s,
        "version",
        &edited_vae(|_, m| drop(m.insert("schema_version".into(), "9".into()))),
    );
    assert!(
        matches!(e, InferError::UnsupportedSchemaVersion { .. }),
        "{e}"
    );
    let e = load_err(
        &s,
        "config",
        &edited_vae(|_, m| drop(m.insert("config".into(), "{not json".into()))),
    );
    assert!(
        matches!(e, InferError::BadMetadata { key: "config", .. }),
        "{e}"
    );

    let e = load_err(
        &s,
        "missing",
        &edited_vae(|t, _| t.retain(|x| x.0 != "decoder.out.bias")),
    );
    assert!(
        matches!(e, InferError::TensorNotFound { ref name } if name == "decoder.out.bias"),
        "{e}"
    );
    let e = load_err(
        &s,
        "extra",
        &edited_vae(|t, _| t.push(("critic.fc1.weight".into(), Dtype::F32, vec![1], vec![0; 4]))),
    );
    assert!(matches!(e, InferError::UnexpectedTensor { .. }), "{e}");
    let e = load_err(
        &s,
        "shape",
        &edited_vae(|t, _| {
            let bias = t.iter_mut().find(|x| x.0 == "decoder.out.bias").unwrap();
            bias.2 = vec![4, 4];
        }),
    );
    assert!(
        matches!(e, InferError::ShapeMismatch { ref expected, ref got, .. } if expected == &[16] && got == &[4, 4]),
        "{e}"
    );
    let e = load_err(
        &s,
        "dtype",
        &edited_vae(|t, _| {
            let bias = t.iter_mut().find(|x| x.0 == "decoder.out.bias").unwrap();
            bias.1 = Dtype::I32;
        }),
    );
    assert!(matches!(e, InferError::UnsupportedDtype { .. }), "{e}");
}

#[test]
fn argument_errors_name_the_problem() {
    let vae = Model::load(golden("vae_tiny")).unwrap();
    assert!(matches!(
        vae.generate(0, 1),
        Err(InferError::InvalidArgument(_))
    ));
    assert!(matches!(
        vae.generate(4097, 1),
        Err(InferError::TooLarge { limit: 4096, .. })
    ));
    assert!(matches!(
        vae.decode(Rows {
            data: &[0.0; 5],
            width: 4
        }),
        Err(InferError::InvalidArgument(_))
    ));
    let e = vae
        .decode(Rows {
            data: &[0.0; 20],
            width: 5,
        })
        .unwrap_err();
    assert!(
        e.to_string().contains("width 5, the model takes width 4"),
        "{e}"
    );
    let nan = [0.0, f32::NAN, 0.0, 0.0];
    let e = vae
        .decode(Rows {
            data: &nan,
            width: 4,
        })
        .unwrap_err();
    assert!(e.to_string().contains("z[0][1] is NaN"), "{e}");
    assert!(matches!(
        vae.generate_text("a", 1, Sampling::greedy()),
        Err(InferError::WrongArchitecture { .. })
    ));

    let gpt = Model::load(golden("gpt_tiny")).unwrap();
    let greedy = Sampling::greedy();
    assert!(matches!(
        gpt.generate_text("", 5, greedy),
        Err(InferError::InvalidArgument(_))
    ));
    let e = gpt.generate_text("hi Z", 5, greedy).unwrap_err();
    assert!(
        e.to_string()
            .contains("'Z' is not in the model's vocabulary"),
        "{e}"
    );
    assert!(matches!(
        gpt.generate_text("hi", 0, greedy),
        Err(InferError::InvalidArgument(_))
    ));
    assert!(matches!(
        gpt.generate_text("hi", 1025, greedy),
        Err(InferError::TooLarge { .. })
    ));
    let hot = Sampling {
        temperature: -1.0,
        ..greedy
    };
    assert!(matches!(
        gpt.generate_text("hi", 5, hot),
        Err(InferError::InvalidArgument(_))
    ));
    let wide = Sampling {
        temperature: 1.0,
        top_k: Some(1000),
        seed: 0,
    };
    assert!(matches!(
        gpt.generate_text("hi", 5, wide),
        Err(InferError::InvalidArgument(_))
    ));
    assert!(matches!(
        gpt.decode(Rows {
            data: &[0.0; 4],
            width: 4
        }),
        Err(InferError::WrongArchitecture { .. })
    ));
}

/// A deterministic sweep: random files and golden files with bytes flipped, cut or
/// inserted. Each load must return (Ok or Err); a panic fails the test.
#[test]
fn random_and_mutated_files_never_panic() {
    let s = Scratch::new("fuzz");
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let originals: Vec<Vec<u8>> = ["vae_tiny", "wgan_tiny", "gpt_tiny"]
        .iter()
        .map(|n| std::fs::read(golden(n)).unwrap())
        .collect();
    let mut errors = 0;
    for case in 0..600 {
        let bytes = match case % 4 {
            0 => (0..(next() % 512) as usize).map(|_| next() as u8).collect(),
            1 => {
                let mut b = originals[case % 3].clone();
                for _ in 0..1 + next() % 8 {
                    let at = (next() as usize) % b.len();
                    b[at] ^= 1 << (next() % 8);
                }
                b
            }
            2 => {
                let b = &originals[case % 3];
                b[..(next() as usize) % b.len()].to_vec()
            }
            _ => {
                let mut b = originals[case % 3].clone();
                let at = 8 + (next() as usize) % 200;
                b.insert(at.min(b.len()), next() as u8);
                b
            }
        };
        if Model::load(s.write("case.safetensors", &bytes)).is_err() {
            errors += 1;
        }
    }
    assert!(
        errors > 300,
        "only {errors} of 600 broken files were refused"
    );
}
