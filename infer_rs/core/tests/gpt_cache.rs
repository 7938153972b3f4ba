//! Generation with the KV cache picks the same tokens as recomputing the whole window
//! (at most block_size tokens) for every step, within the block and past it.

use infer_core::{Model, Sampling};
use std::path::PathBuf;

#[test]
fn cached_generation_equals_uncached() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared_schema/golden/gpt_tiny.safetensors");
    let Model::Gpt(gpt) = Model::load(path).unwrap() else {
        panic!("not a GPT")
    };
    let block = gpt.cfg.block_size;
    let prompt = gpt.encode("hi ").unwrap();
    let cached = gpt
        .generate(&prompt, 3 * block, Sampling::greedy())
        .unwrap();
    let mut ids = prompt.clone();
    while ids.len() < cached.len() {
        let window = &ids[ids.len().saturating_sub(block)..];
        let logits = gpt.logits(window).unwrap();
        let last = &logits.data[(logits.rows - 1) * logits.cols..];
        let best = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        ids.push(best as u32);
    }
    assert_eq!(cached, ids);
}
