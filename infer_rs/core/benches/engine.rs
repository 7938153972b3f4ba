//! Criterion benches of the engine on randomly initialised models of the trained sizes:
//! VAE decode (784-400-200-20) at batch 1, 100 and 1000, WGAN generate at batch 100,
//! and GPT (4 layers, 4 heads, 128 wide): one 128-token forward (the prefill that
//! every step past the block repeats) and greedy generation of 127 tokens.
//! `cargo bench -p infer_core`; RAYON_NUM_THREADS sets the threads, INFER_RS_ISA the
//! instruction-set path.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use infer_core::internals::Rng;
use infer_core::{Arch, Model, Rows, Sampling};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::HashMap;
use std::path::PathBuf;

/// Write a model of `arch` with N(0, 0.05) weights of the manifest's shapes for `config`.
fn write_model(arch: Arch, config: serde_json::Value) -> PathBuf {
    let shapes = infer_core::internals::expected_shapes(arch, &config).expect("manifest");
    let mut rng = Rng::new(1);
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let count: usize = shape.iter().product();
            let bytes = rng
                .normals(count)
                .iter()
                .flat_map(|v| (v * 0.05).to_le_bytes())
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).expect("view"),
            )
        })
        .collect();
    let meta = HashMap::from([
        ("arch".to_string(), arch.to_string()),
        ("schema_version".to_string(), "1".to_string()),
        ("config".to_string(), config.to_string()),
    ]);
    let path = std::env::temp_dir().join(format!(
        "infer_core_bench_{arch}_{}.safetensors",
        std::process::id()
    ));
    safetensors::serialize_to_file(views, Some(meta), &path).expect("write");
    path
}

fn mlps(c: &mut Criterion) {
    println!(
        "isa {} (INFER_RS_ISA forces one), threads {}",
        infer_core::isa().expect("INFER_RS_ISA"),
        rayon::current_num_threads()
    );
    let vae = Model::load(write_model(
        Arch::Vae,
        serde_json::json!({"x_dim": 784, "hidden": [400, 200], "z_dim": 20, "n_classes": 0,
                           "likelihood": "gaussian", "beta": 1.0, "kl_anneal_steps": 0}),
    ))
    .expect("vae");
    let mut group = c.benchmark_group("vae_decode");
    for batch in [1usize, 100, 1000] {
        let z = Rng::new(2).normals(batch * 20);
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_with_input(BenchmarkId::from_parameter(batch), &z, |b, z| {
            b.iter(|| vae.decode(Rows { data: z, width: 20 }).expect("decode"))
        });
    }
    group.finish();

    let wgan = Model::load(write_model(
        Arch::Wgan,
        serde_json::json!({"z_dim": 100, "g_hidden": [256, 512], "d_hidden": [512, 256], "x_dim": 784,
                           "gp_lambda": 10.0, "n_critic": 5, "betas": [0.5, 0.9],
                           "spectral_norm": false, "leak": 0.2}),
    ))
    .expect("wgan");
    c.bench_function("wgan_generate/100", |b| {
        b.iter(|| wgan.generate(100, 3).expect("generate"))
    });
}

fn gpt(c: &mut Criterion) {
    let vocab: String = (32u8..97).map(char::from).collect();
    let gpt = Model::load(write_model(
        Arch::Gpt,
        serde_json::json!({"vocab": vocab, "block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128,
                           "dropout": 0.0, "pre_ln": true}),
    ))
    .expect("gpt");
    let Model::Gpt(net) = &gpt else {
        unreachable!("written as a GPT")
    };
    let window: Vec<u32> = (0..128).map(|i| i % 60).collect();
    c.bench_function("gpt_prefill/128", |b| {
        b.iter(|| net.logits(&window).expect("logits"))
    });
    let mut group = c.benchmark_group("gpt_generate");
    group.sample_size(20).throughput(Throughput::Elements(127));
    group.bench_function("greedy_127_tokens", |b| {
        b.iter(|| {
            gpt.generate_text("A", 127, Sampling::greedy())
                .expect("generate")
        })
    });
    group.finish();
}

criterion_group!(benches, mlps, gpt);
criterion_main!(benches);
