//! Batch invariance of the decoding batch: every sequence's tokens and logits equal,
//! bit for bit, those of the same prompt, sampling and seed run alone, over random
//! schedules (joins at random steps, cancels, sequences past the block, greedy and
//! sampled, prefill chunks of every size), on 1 to 4 threads and on every
//! instruction-set path this CPU has. Also: how the batch refuses bad joins and leaves.

mod common;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use infer_core::gpt::{Config, Gpt};
use infer_core::internals::Rng;
use infer_core::{DecodingBatch, Emitted, InferError, Limits, Model, Sampling, SeqId};
use std::collections::HashMap;
use std::path::PathBuf;

fn golden_gpt(name: &str) -> Gpt {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared_schema/golden")
        .join(format!("{name}.safetensors"));
    match Model::load(path).unwrap() {
        Model::Gpt(gpt) => gpt,
        _ => panic!("{name} is not a GPT"),
    }
}

/// A GPT of wider layers than the golden ones, with seeded N(0, 0.3^2) weights: its
/// dense layers run several column groups.
fn random_gpt(n_embd: usize, n_head: usize, block_size: usize) -> Gpt {
    let cfg = Config {
        vocab: "abcdefghijklmnopqrstuvwxyz .,;:!?".into(),
        block_size,
        n_layer: 2,
        n_head,
        n_embd,
        dropout: 0.0,
        pre_ln: true,
    };
    let (c, v) = (cfg.n_embd, cfg.vocab.chars().count());
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("transformer.wte.weight".into(), vec![v, c]),
        ("transformer.wpe.weight".into(), vec![cfg.block_size, c]),
        ("transformer.ln_f.weight".into(), vec![c]),
        ("transformer.ln_f.bias".into(), vec![c]),
    ];
    for i in 0..cfg.n_layer {
        let h = format!("transformer.h.{i}");
        for (name, shape) in [
            ("ln_1.weight", vec![c]),
            ("ln_1.bias", vec![c]),
            ("attn.c_attn.weight", vec![3 * c, c]),
            ("attn.c_attn.bias", vec![3 * c]),
            ("attn.c_proj.weight", vec![c, c]),
            ("attn.c_proj.bias", vec![c]),
            ("ln_2.weight", vec![c]),
            ("ln_2.bias", vec![c]),
            ("mlp.c_fc.weight", vec![4 * c, c]),
            ("mlp.c_fc.bias", vec![4 * c]),
            ("mlp.c_proj.weight", vec![c, 4 * c]),
            ("mlp.c_proj.bias", vec![c]),
        ] {
            shapes.push((format!("{h}.{name}"), shape));
        }
    }
    let mut rng = Rng::new(7);
    let tensors: HashMap<String, Tensor> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let values: Vec<f32> = rng
                .normals(shape.iter().product())
                .into_iter()
                .map(|x| 0.3 * x)
                .collect();
            (name, Tensor::from_vec(values, shape, &Device::Cpu).unwrap())
        })
        .collect();
    Gpt::load(
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        cfg,
    )
    .unwrap()
}

/// One request of a schedule.
#[derive(Clone)]
struct Request {
    prompt: Vec<u32>,
    max_new_tokens: usize,
    sampling: Sampling,
    /// The step at which it asks to join (it waits while the batch is full).
    join_at: usize,
    /// The number of its own tokens after which it is cancelled, if it is.
    leave_after: Option<usize>,
}

fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.uniform() * n as f64) as usize % n
}

fn random_requests(gpt: &Gpt, rng: &mut Rng, count: usize) -> Vec<Request> {
    let (block, vocab) = (gpt.cfg.block_size, gpt.cfg.vocab.chars().count());
    (0..count)
        .map(|_| {
            // up to twice the block: some prompts are past it from the start
            let prompt = (0..1 + below(rng, 2 * block))
                .map(|_| below(rng, vocab) as u32)
                .collect();
            let sampling = if below(rng, 3) == 0 {
                Sampling::greedy()
            } else {
                Sampling {
                    temperature: 0.5 + rng.uniform() as f32,
                    top_k: [None, Some(1), Some(5)][below(rng, 3)],
                    seed: rng.next_u64(),
                }
            };
            let max_new_tokens = 1 + below(rng, 2 * block);
            Request {
                prompt,
                max_new_tokens,
                sampling,
                join_at: below(rng, 12),
                leave_after: (below(rng, 5) == 0).then(|| below(rng, max_new_tokens)),
            }
        })
        .collect()
}

/// The emitted tokens of `request` run alone: a batch of one, its prompt prefilled in
/// one step.
fn alone(gpt: &Gpt, r: &Request) -> Vec<Emitted> {
    let block = gpt.cfg.block_size;
    let limits = Limits {
        max_sequences: 1,
        max_cached_tokens: block,
        prefill_chunk: block,
    };
    let mut batch = gpt.decoding_batch(limits).unwrap();
    gpt.join(&mut batch, &r.prompt, r.max_new_tokens, r.sampling)
        .unwrap();
    let mut out = Vec::new();
    while !batch.is_empty() {
        out.extend(gpt.step(&mut batch).unwrap());
    }
    out
}

/// Runs the schedule in one batch; each request's emitted tokens, in order.
fn together(gpt: &Gpt, requests: &[Request], limits: Limits) -> Vec<Vec<Emitted>> {
    let mut batch: DecodingBatch = gpt.decoding_batch(limits).unwrap();
    let mut ids: Vec<Option<SeqId>> = vec![None; requests.len()];
    let mut out: Vec<Vec<Emitted>> = vec![Vec::new(); requests.len()];
    let mut done = vec![false; requests.len()];
    for step in 0.. {
        for (i, r) in requests.iter().enumerate() {
            if ids[i].is_none() && !done[i] && r.join_at <= step {
                match gpt.join(&mut batch, &r.prompt, r.max_new_tokens, r.sampling) {
                    Ok(id) => ids[i] = Some(id),
                    Err(InferError::TooLarge { .. }) => {} // full: it waits for a later step
                    Err(other) => panic!("join: {other}"),
                }
            }
            if let (Some(id), Some(after)) = (ids[i], r.leave_after) {
                if out[i].len() >= after && !done[i] {
                    let tokens = batch.leave(id).unwrap();
                    assert_eq!(tokens.len(), r.prompt.len() + out[i].len());
                    done[i] = true;
                }
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        for e in gpt.step(&mut batch).unwrap() {
            let i = ids.iter().position(|&id| id == Some(e.id)).unwrap();
            done[i] |= e.finished;
            out[i].push(e);
        }
        assert!(step < 10_000, "the schedule never ends");
    }
    out
}

fn bits(logits: &[f32]) -> Vec<u32> {
    logits.iter().map(|v| v.to_bits()).collect()
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

#[test]
fn every_isa_path_of_this_cpu_keeps_batch_invariance() {
    common::rerun_on_every_isa_path("decoding");
}

/// Random schedules of `count` requests on `gpt` in pools of each of `threads`: every
/// sequence's tokens and logits equal its lone run's, bit for bit.
fn check_schedules(name: &str, gpt: &Gpt, rng: &mut Rng, count: usize, threads: &[usize]) {
    let block = gpt.cfg.block_size;
    for &threads in threads {
        let requests = random_requests(gpt, rng, count);
        let limits = Limits {
            max_sequences: 3 + below(rng, 6),
            max_cached_tokens: 64 * block,
            prefill_chunk: 1 + below(rng, block),
        };
        let (lone, batched) = pool(threads).install(|| {
            let lone: Vec<_> = requests.iter().map(|r| alone(gpt, r)).collect();
            (lone, together(gpt, &requests, limits))
        });
        for (i, (want, got)) in lone.iter().zip(&batched).enumerate() {
            let case = format!("{name}, {threads} threads, {limits:?}, request {i}");
            let r = &requests[i];
            let expected = r.leave_after.map_or(want.len(), |n| n.min(want.len()));
            assert_eq!(got.len(), expected, "{case}: tokens emitted");
            for (step, (w, g)) in want.iter().zip(got).enumerate() {
                assert_eq!(w.token, g.token, "{case}: token {step}");
                assert_eq!(bits(&w.logits), bits(&g.logits), "{case}: logits {step}");
            }
        }
    }
}

#[test]
fn sequences_in_a_batch_equal_their_lone_runs_bit_for_bit() {
    let mut rng = Rng::new(2024);
    for name in ["gpt_tiny", "gpt_tiny_post_ln"] {
        check_schedules(name, &golden_gpt(name), &mut rng, 14, &[1, 2, 3, 4]);
    }
    check_schedules(
        "random C=64, 32 per head",
        &random_gpt(64, 2, 24),
        &mut rng,
        14,
        &[1, 2, 3, 4],
    );
}

/// With heads of 64 dimensions and a block of 72, a lone query's attention runs four
/// groups of positions and of dimensions side by side (`attention::spans`); a prefill
/// block of queries does not. Their bits agree.
#[test]
fn lone_queries_equal_blocks_of_queries_on_wide_heads() {
    let mut rng = Rng::new(99);
    check_schedules(
        "random C=128",
        &random_gpt(128, 2, 72),
        &mut rng,
        6,
        &[1, 2],
    );
}

#[test]
fn generate_is_a_batch_of_one() {
    let gpt = golden_gpt("gpt_tiny");
    let prompt = gpt.encode("hi, bad").unwrap();
    let sampling = Sampling {
        temperature: 0.9,
        top_k: Some(4),
        seed: 11,
    };
    let r = Request {
        prompt: prompt.clone(),
        max_new_tokens: 40,
        sampling,
        join_at: 0,
        leave_after: None,
    };
    let tokens: Vec<u32> = alone(&gpt, &r).into_iter().map(|e| e.token).collect();
    assert_eq!(
        gpt.generate(&prompt, 40, sampling).unwrap(),
        [prompt, tokens].concat()
    );
}

#[test]
fn bad_joins_are_refused_alone_and_the_batch_goes_on() {
    let gpt = golden_gpt("gpt_tiny");
    let limits = Limits {
        max_sequences: 2,
        max_cached_tokens: 64 * gpt.cfg.block_size,
        prefill_chunk: 4,
    };
    let mut batch = gpt.decoding_batch(limits).unwrap();
    let prompt = gpt.encode("hi").unwrap();
    let first = gpt
        .join(&mut batch, &prompt, 5, Sampling::greedy())
        .unwrap();
    let refusals = [
        gpt.join(&mut batch, &[], 5, Sampling::greedy()),
        gpt.join(&mut batch, &[99], 5, Sampling::greedy()),
        gpt.join(&mut batch, &prompt, 0, Sampling::greedy()),
        gpt.join(
            &mut batch,
            &prompt,
            5,
            Sampling {
                temperature: -1.0,
                ..Sampling::greedy()
            },
        ),
    ];
    for refused in refusals {
        assert!(
            matches!(refused, Err(InferError::InvalidArgument(_))),
            "{refused:?}"
        );
    }
    let second = gpt
        .join(&mut batch, &prompt, 5, Sampling::greedy())
        .unwrap();
    match gpt.join(&mut batch, &prompt, 5, Sampling::greedy()) {
        Err(e @ InferError::TooLarge { .. }) => {
            assert!(e.to_string().contains("max_sequences"), "{e}")
        }
        other => panic!("a third join of two allowed: {other:?}"),
    }
    assert_eq!(batch.len(), 2);
    let left = batch.leave(second).unwrap();
    assert_eq!(left, prompt);
    let again = batch.leave(second).unwrap_err().to_string();
    assert!(
        again.contains(&format!("no live sequence {second}")),
        "{again}"
    );
    assert!(batch.leave(12345).is_err());
    let mut tokens = 0;
    while !batch.is_empty() {
        let emitted = gpt.step(&mut batch).unwrap();
        assert!(emitted.iter().all(|e| e.id == first));
        tokens += emitted.len();
    }
    assert_eq!(tokens, 5);
    let cached = Limits {
        max_cached_tokens: gpt.cfg.block_size,
        ..limits
    };
    let mut small = gpt.decoding_batch(cached).unwrap();
    gpt.join(&mut small, &prompt, 5, Sampling::greedy())
        .unwrap();
    let full = gpt
        .join(&mut small, &prompt, 5, Sampling::greedy())
        .unwrap_err();
    assert!(full.to_string().contains("max_cached_tokens"), "{full}");
}

#[test]
fn a_batch_refuses_another_models_calls() {
    let (tiny, wide) = (golden_gpt("gpt_tiny"), random_gpt(64, 4, 24));
    let mut batch = tiny.decoding_batch(Limits::default()).unwrap();
    let err = wide.step(&mut batch).unwrap_err().to_string();
    assert!(err.contains("another model"), "{err}");
}
