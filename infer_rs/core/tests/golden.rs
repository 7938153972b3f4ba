//! The golden vectors of shared_schema/golden/: outputs PyTorch computed on tiny seeded
//! models, reproduced by the engine within the float32 reassociation tolerance stored
//! beside each output (train/golden.py derives it), and identical greedy tokens.

mod common;

use infer_core::{Model, Rows, Sampling};
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::PathBuf;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared_schema/golden")
}

/// The tensors of NAME.golden.safetensors, as (shape, values), and the tolerance of each
/// float output.
struct Golden {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
    tolerance: HashMap<String, f64>,
}

impl std::ops::Index<&str> for Golden {
    type Output = (Vec<usize>, Vec<f64>);
    fn index(&self, key: &str) -> &Self::Output {
        &self.tensors[key]
    }
}

impl Golden {
    /// Asserts that `got` is the output `key` within its stored tolerance.
    fn assert_close(&self, got: &[f32], key: &str) {
        let want = &self.tensors[key].1;
        let tol = self.tolerance[key];
        assert_eq!(got.len(), want.len(), "{key}: length");
        let worst = got
            .iter()
            .zip(want)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        assert!(worst <= tol, "{key}: max abs diff {worst:e} > {tol:e}");
    }
}

fn vectors(name: &str) -> Golden {
    let bytes = std::fs::read(golden_dir().join(format!("{name}.golden.safetensors"))).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let tolerance = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("tolerance"))
        .map(|json| serde_json::from_str(json).unwrap())
        .expect("golden metadata holds a tolerance");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(key, view)| {
            let values: Vec<f64> = match view.dtype() {
                safetensors::Dtype::F32 => view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("unexpected dtype {other:?}"),
            };
            (key, (view.shape().to_vec(), values))
        })
        .collect();
    Golden { tensors, tolerance }
}

fn model(name: &str) -> Model {
    Model::load(golden_dir().join(format!("{name}.safetensors"))).unwrap()
}

/// A golden (shape, values) pair as engine input; the values are leaked, as a test may.
fn rows(tensor: &(Vec<usize>, Vec<f64>)) -> Rows<'static> {
    let data: Vec<f32> = tensor.1.iter().map(|&x| x as f32).collect();
    Rows {
        data: Vec::leak(data),
        width: tensor.0[1],
    }
}

#[test]
fn vae_decode_and_encode() {
    let v = vectors("vae_tiny");
    let m = model("vae_tiny");
    let out = m.decode(rows(&v["decode.z"])).unwrap();
    assert_eq!(vec![out.rows, out.cols], v["decode.x"].0);
    v.assert_close(&out.data, "decode.x");
    let (mu, logvar) = m.encode(rows(&v["encode.x"])).unwrap();
    v.assert_close(&mu.data, "encode.mu");
    v.assert_close(&logvar.data, "encode.logvar");
}

#[test]
fn wgan_generate_from_z() {
    let v = vectors("wgan_tiny");
    let out = model("wgan_tiny").decode(rows(&v["generate.z"])).unwrap();
    assert_eq!(vec![out.rows, out.cols], v["generate.x"].0);
    v.assert_close(&out.data, "generate.x");
}

fn check_gpt(name: &str) {
    let v = vectors(name);
    let Model::Gpt(gpt) = model(name) else {
        panic!("{name} is not a GPT")
    };
    let prompt: Vec<u32> = v["prompt.ids"].1.iter().map(|&x| x as u32).collect();
    let logits = gpt.logits(&prompt).unwrap();
    v.assert_close(&logits.data, "prompt.logits");
    for key in ["greedy_within_block.ids", "greedy_past_block.ids"] {
        let want: Vec<u32> = v[key].1.iter().map(|&x| x as u32).collect();
        let got = gpt
            .generate(&prompt, want.len() - prompt.len(), Sampling::greedy())
            .unwrap();
        assert_eq!(
            got,
            want,
            "{name} {key}: {:?} vs {:?}",
            gpt.decode(&got),
            gpt.decode(&want)
        );
    }
}

#[test]
fn gpt_pre_ln_logits_and_greedy_tokens() {
    check_gpt("gpt_tiny");
}

#[test]
fn gpt_post_ln_logits_and_greedy_tokens() {
    check_gpt("gpt_tiny_post_ln");
}

#[test]
fn same_seed_same_output() {
    let m = model("vae_tiny");
    assert_eq!(m.generate(4, 9).unwrap(), m.generate(4, 9).unwrap());
    assert_ne!(m.generate(4, 9).unwrap(), m.generate(4, 10).unwrap());
    let g = model("gpt_tiny");
    let s = Sampling {
        temperature: 0.9,
        top_k: Some(5),
        seed: 3,
    };
    assert_eq!(
        g.generate_text("hi", 30, s).unwrap(),
        g.generate_text("hi", 30, s).unwrap()
    );
}

#[test]
fn batched_calls_equal_single_calls() {
    // A batch may take another kernel than a single call, so the two agree within the
    // reassociation tolerance of the same output, not bit for bit.
    for (name, output) in [("vae_tiny", "decode.x"), ("wgan_tiny", "generate.x")] {
        let tol = vectors(name).tolerance[output] as f32;
        let m = model(name);
        let requests = [(3, 1), (0, 2), (1, 3), (7, 4), (5000, 5)];
        let batched = m.generate_batch(&requests);
        assert_eq!(batched.len(), requests.len());
        for ((n, seed), got) in requests.iter().zip(&batched) {
            match (m.generate(*n, *seed), got) {
                (Ok(want), Ok(got)) => {
                    assert_eq!((want.rows, want.cols), (got.rows, got.cols));
                    let worst = want
                        .data
                        .iter()
                        .zip(&got.data)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(worst <= tol, "{name} n={n}: {worst} > {tol}");
                }
                (Err(want), Err(got)) => assert_eq!(want.to_string(), got.to_string()),
                (want, got) => panic!("{name} n={n}: {want:?} vs {got:?}"),
            }
        }
    }
}

/// A batch large enough to be split over rayon's pool gives the one-thread result
/// within the golden tolerance of the same output. Runs in child processes with
/// RAYON_NUM_THREADS=3 and 4 (more threads than a small machine's cores is fine), each
/// comparing its pool's result with the same call in a pool of one thread.
#[test]
fn pool_split_equals_one_thread() {
    const THREADS: &str = "RAYON_NUM_THREADS";
    let Ok(threads) = std::env::var(THREADS) else {
        for threads in ["3", "4"] {
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .env(THREADS, threads)
                .args(["--exact", "pool_split_equals_one_thread", "--quiet"])
                .output()
                .unwrap();
            assert!(
                child.status.success(),
                "{THREADS}={threads}:\n{}{}",
                String::from_utf8_lossy(&child.stdout),
                String::from_utf8_lossy(&child.stderr)
            );
        }
        return;
    };
    if threads.parse::<usize>().unwrap_or(0) <= 2 {
        return; // the pool split needs more than two threads
    }
    assert_eq!(rayon::current_num_threads().to_string(), threads);
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let rows = infer_core::limits::MAX_BATCH; // the tiny models need many rows to split
    for (name, output) in [("vae_tiny", "decode.x"), ("wgan_tiny", "generate.x")] {
        let tol = vectors(name).tolerance[output] as f32;
        let m = model(name);
        let got = m.generate(rows, 7).unwrap();
        let want = one.install(|| m.generate(rows, 7)).unwrap();
        let worst = got
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= tol, "{name}, {threads} threads: {worst} > {tol}");
    }
}

/// Every test of this file again in a child process per instruction-set path the CPU
/// has (INFER_RS_ISA forces it); the paths it lacks are named on stderr. In a child,
/// this test only checks that the forced path is the one in use.
#[test]
fn every_isa_path_of_this_cpu_reproduces_the_golden_vectors() {
    common::rerun_on_every_isa_path("golden");
}

#[test]
fn a_forced_path_the_cpu_lacks_refuses_to_load() {
    if std::env::var_os(infer_core::isa::ENV_VAR).is_some() {
        return; // a child of the test above
    }
    let lacking = infer_core::Isa::ALL
        .into_iter()
        .find(|isa| !isa.supported());
    let Some(isa) = lacking else {
        return; // this CPU has every path
    };
    let child = std::process::Command::new(std::env::current_exe().unwrap())
        .env(infer_core::isa::ENV_VAR, isa.name())
        .args(["--exact", "wgan_generate_from_z"])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&child.stdout);
    assert!(!child.status.success());
    let refusal = format!("UnsupportedIsa {{ requested: \"{isa}\", reason: \"this CPU lacks");
    assert!(out.contains(&refusal), "{out}");
}

#[test]
fn a_watched_generation_stops_between_tokens_when_told() {
    let Model::Gpt(gpt) = model("gpt_tiny") else {
        panic!("gpt_tiny is not a GPT")
    };
    let prompt = gpt.encode("hi").unwrap();
    let stop_at_three = |new: &[u32]| (new.len() == 3).then_some(infer_core::StopReason::Deadline);
    let err = gpt
        .generate_watched(&prompt, 10, Sampling::greedy(), &stop_at_three)
        .unwrap_err();
    assert!(matches!(
        err,
        infer_core::InferError::Stopped {
            tokens: 3,
            reason: infer_core::StopReason::Deadline
        }
    ));
    assert_eq!(
        err.to_string(),
        "generation stopped after 3 new tokens: the deadline passed"
    );
    // a watcher that never stops changes nothing
    assert_eq!(
        gpt.generate_watched(&prompt, 10, Sampling::greedy(), &|_| None)
            .unwrap(),
        gpt.generate(&prompt, 10, Sampling::greedy()).unwrap()
    );
}
