//! Character-level decoder-only Transformer (Radford et al., 2019; Vaswani et al., 2017,
//! <https://arxiv.org/abs/1706.03762>), as trained by `train/models/gpt.py`.
//! Tensor paths follow GPT-2: `transformer.wte`, `transformer.wpe`, `transformer.h.{i}.*`,
//! `transformer.ln_f`; the output head is tied to `transformer.wte`.
//!
//! KV cache: exact while the sequence fits in `block_size`. Past it, every position of
//! the window shifts, so each further step re-prefills the last `block_size` tokens; the
//! tokens are the same as without a cache, as in `train/`.

use crate::activation::Activation;
use crate::attention::{attend_each, Attend, KvCache};
use crate::decoding::Limits;
use crate::dense::{Dense, Mlp};
use crate::error::{InferError, Result, StopReason};
use crate::isa::Isa;
use crate::limits::{MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_TEMPERATURE, MIN_TEMPERATURE};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

const LN_EPS: f32 = 1e-5;

/// The config stored in the file's metadata (`shared_schema/configs/gpt.schema.json`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The characters; token id = index (in Unicode code points).
    pub vocab: String,
    /// Longest context, in tokens.
    pub block_size: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Residual-stream width.
    pub n_embd: usize,
    /// Dropout; training only.
    pub dropout: f64,
    /// LayerNorm before each sublayer (true) or after the residual sum (false).
    pub pre_ln: bool,
}

/// How to pick each next token.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 is greedy (argmax); otherwise logits are divided by it before the softmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (ties at the k-th kept); None keeps all.
    pub top_k: Option<usize>,
    /// Seed of the draws; unused when greedy.
    pub seed: u64,
}

impl Sampling {
    /// Argmax at every step.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            seed: 0,
        }
    }
}

/// y = (x - mean) / sqrt(var + eps) * weight + bias over each row (biased variance).
struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

impl LayerNorm {
    fn load(vb: VarBuilder, width: usize) -> Result<Self> {
        Ok(Self {
            weight: vb.get(width, "weight")?.to_vec1()?,
            bias: vb.get(width, "bias")?.to_vec1()?,
        })
    }

    fn forward(&self, x: &[f32]) -> Vec<f32> {
        let c = self.weight.len();
        let mut out = vec![0f32; x.len()];
        for (row, y) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
            let mean = lane_sum(row, |v| v) / c as f32;
            // two passes: the centred sum of squares loses nothing to cancellation
            let var = lane_sum(row, |v| (v - mean) * (v - mean)) / c as f32;
            let inv = 1.0 / (var + LN_EPS).sqrt();
            for (((y, &v), &w), &b) in y.iter_mut().zip(row).zip(&self.weight).zip(&self.bias) {
                *y = (v - mean) * inv * w + b;
            }
        }
        out
    }
}

/// sum_i f(row_i) in eight interleaved partial sums (vectorisable, unlike one
/// sequential float sum), added at the end.
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    let mut lanes = [0f32; 8];
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The linear layer at `vb` (PyTorch layout) with `act` fused.
fn dense(vb: VarBuilder, in_dim: usize, out_dim: usize, act: Activation) -> Result<Dense> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    Dense::new(&weight, &vb.get(out_dim, "bias")?, act)
}

/// x + f(x), summed into f(x)'s buffer.
fn residual(mut fx: Vec<f32>, x: &[f32]) -> Vec<f32> {
    fx.iter_mut().zip(x).for_each(|(a, b)| *a += b);
    fx
}

struct Block {
    ln_1: LayerNorm,
    /// x -> [q, k, v] (3C)
    c_attn: Mlp,
    /// attention output -> C
    attn_proj: Mlp,
    ln_2: LayerNorm,
    /// c_proj(GELU(c_fc(x))), GELU in its exact erf form, fused into c_fc.
    mlp: Mlp,
    pre_ln: bool,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        let c = cfg.n_embd;
        let (attn, mlp) = (vb.pp("attn"), vb.pp("mlp"));
        Ok(Self {
            ln_1: LayerNorm::load(vb.pp("ln_1"), c)?,
            c_attn: Mlp::new(vec![dense(
                attn.pp("c_attn"),
                c,
                3 * c,
                Activation::Identity,
            )?]),
            attn_proj: Mlp::new(vec![dense(attn.pp("c_proj"), c, c, Activation::Identity)?]),
            ln_2: LayerNorm::load(vb.pp("ln_2"), c)?,
            mlp: Mlp::new(vec![
                dense(mlp.pp("c_fc"), c, 4 * c, Activation::Gelu)?,
                dense(mlp.pp("c_proj"), 4 * c, c, Activation::Identity)?,
            ]),
            pre_ln: cfg.pre_ln,
        })
    }

    /// c_proj(softmax(Q K^T / sqrt(d) + M) V) with [Q, K, V] = c_attn(x), M = -inf where
    /// a query would see a later key, for each part's rows from..t (every row's keys
    /// and values are cached in its part's cache). The dense layers run over the rows of
    /// every part at once; attention runs per part, against its own cache.
    fn attention(&self, x: &[f32], parts: &mut [Part], layer: usize, isa: Isa) -> Vec<f32> {
        let total: usize = parts.iter().map(|p| p.t).sum();
        let qkv = self.c_attn.forward(x, total);
        let width = qkv.len() / total;
        let mut at = 0;
        let mut calls: Vec<Attend> = parts
            .iter_mut()
            .map(|part| {
                let rows = &qkv[at * width..(at + part.t) * width];
                at += part.t;
                Attend {
                    cache: &mut *part.cache,
                    qkv: rows,
                    t: part.t,
                    from: part.from,
                }
            })
            .collect();
        let y = attend_each(&mut calls, layer, isa).concat();
        self.attn_proj
            .forward(&y, parts.iter().map(Part::rows).sum())
    }

    /// Rows from..t of the block's output, for each part's t rows of x (stacked).
    /// pre-LN: x + attn(ln_1(x)), then + mlp(ln_2(x)); post-LN: ln_1(x + attn(x)), ln_2(x + mlp(x)).
    fn forward(&self, x: &[f32], parts: &mut [Part], layer: usize, isa: Isa) -> Vec<f32> {
        let rows: usize = parts.iter().map(Part::rows).sum();
        let tail = tails(x, parts);
        if self.pre_ln {
            let x = residual(
                self.attention(&self.ln_1.forward(x), parts, layer, isa),
                &tail,
            );
            return residual(self.mlp.forward(&self.ln_2.forward(&x), rows), &x);
        }
        let x = self
            .ln_1
            .forward(&residual(self.attention(x, parts, layer, isa), &tail));
        self.ln_2.forward(&residual(self.mlp.forward(&x, rows), &x))
    }
}

/// One sequence's share of a forward pass: t rows after its cached positions, of which
/// rows from..t go on, written to its own cache.
pub(crate) struct Part<'a> {
    pub cache: &'a mut KvCache,
    pub t: usize,
    pub from: usize,
}

impl Part<'_> {
    fn rows(&self) -> usize {
        self.t - self.from
    }
}

/// Rows from..t of each part of x (stacked), for the residual sum.
fn tails<'x>(x: &'x [f32], parts: &[Part]) -> std::borrow::Cow<'x, [f32]> {
    if parts.iter().all(|p| p.from == 0) {
        return std::borrow::Cow::Borrowed(x);
    }
    let c = x.len() / parts.iter().map(|p| p.t).sum::<usize>();
    let (mut tail, mut at) = (Vec::new(), 0);
    for p in parts {
        tail.extend_from_slice(&x[(at + p.from) * c..(at + p.t) * c]);
        at += p.t;
    }
    std::borrow::Cow::Owned(tail)
}

/// The char-level GPT: embeddings, pre-norm blocks, final norm, tied head.
pub struct Gpt {
    /// The config from the file's metadata.
    pub cfg: Config,
    vocab: Vec<char>,
    /// Token and position embeddings, row-major (vocab, C) and (block_size, C).
    wte: Vec<f32>,
    wpe: Vec<f32>,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    /// The tied output head: logits = x wte^T.
    head: Mlp,
    isa: Isa,
}

impl Gpt {
    /// The weights at `transformer.*` in `vb`, with the sizes of `cfg`.
    pub fn load(vb: VarBuilder, cfg: Config) -> Result<Self> {
        if cfg.n_head == 0 || !cfg.n_embd.is_multiple_of(cfg.n_head) {
            return Err(InferError::InvalidArgument(format!(
                "n_embd {} is not divisible by n_head {}",
                cfg.n_embd, cfg.n_head
            )));
        }
        let vocab: Vec<char> = cfg.vocab.chars().collect();
        let vb_t = vb.pp("transformer");
        let blocks = (0..cfg.n_layer)
            .map(|i| Block::load(vb_t.pp("h").pp(i), &cfg))
            .collect::<Result<_>>()?;
        let wte = vb_t.pp("wte").get((vocab.len(), cfg.n_embd), "weight")?;
        let no_bias = Tensor::zeros(vocab.len(), DType::F32, &Device::Cpu)?;
        Ok(Self {
            head: Mlp::new(vec![Dense::new(&wte, &no_bias, Activation::Identity)?]),
            wte: wte.flatten_all()?.to_vec1()?,
            wpe: vb_t
                .pp("wpe")
                .get((cfg.block_size, cfg.n_embd), "weight")?
                .flatten_all()?
                .to_vec1()?,
            ln_f: LayerNorm::load(vb_t.pp("ln_f"), cfg.n_embd)?,
            blocks,
            vocab,
            isa: crate::isa()?,
            cfg,
        })
    }

    /// Token ids of `text`, refusing characters outside the vocabulary.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        text.chars()
            .map(|c| {
                self.vocab
                    .iter()
                    .position(|&v| v == c)
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        InferError::InvalidArgument(format!(
                            "character {c:?} is not in the model's vocabulary"
                        ))
                    })
            })
            .collect()
    }

    /// The text of token ids; an id outside the vocabulary is skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter_map(|&i| self.vocab.get(i as usize))
            .collect()
    }

    /// The final hidden states ln_f(x) of the tokens fed to each part, stacked: each
    /// part's `ids` follow its cached positions. With `last_only`, only the last token's
    /// row of each part (all generation needs: the last block then computes one row per
    /// part past its keys and values, about a fifth of a re-prefill's work saved). Every
    /// cache then holds its part's tokens. Each row's values do not depend on the other
    /// parts: the dense layers give every output one chain of FMAs whatever the rows
    /// beside it, and attention reads only its own cache.
    pub(crate) fn forward(
        &self,
        feeds: &mut [(&[u32], &mut KvCache)],
        last_only: bool,
    ) -> Vec<f32> {
        let c = self.cfg.n_embd;
        // x_i = wte[id_i] + wpe[start + i]
        let mut x = Vec::with_capacity(feeds.iter().map(|f| f.0.len()).sum::<usize>() * c);
        for (ids, cache) in feeds.iter() {
            let start = cache.len();
            for (i, &id) in ids.iter().enumerate() {
                let token = &self.wte[id as usize * c..][..c];
                let position = &self.wpe[(start + i) * c..][..c];
                x.extend(token.iter().zip(position).map(|(a, b)| a + b));
            }
        }
        let n = self.blocks.len();
        for (layer, block) in self.blocks.iter().enumerate() {
            let last = last_only && layer + 1 == n;
            let mut parts: Vec<Part> = feeds
                .iter_mut()
                .map(|(ids, cache)| Part {
                    cache,
                    t: ids.len(),
                    from: if last { ids.len() - 1 } else { 0 },
                })
                .collect();
            x = block.forward(&x, &mut parts, layer, self.isa);
        }
        for (ids, cache) in feeds.iter_mut() {
            cache.advance(ids.len());
        }
        self.ln_f.forward(&x)
    }

    pub(crate) fn empty_cache(&self) -> KvCache {
        let cfg = &self.cfg;
        KvCache::new(
            cfg.n_layer,
            cfg.n_head,
            cfg.n_embd / cfg.n_head,
            cfg.block_size,
        )
    }

    /// Next-token logits at every position of `ids` (at most block_size tokens).
    pub fn logits(&self, ids: &[u32]) -> Result<crate::batch::Matrix> {
        self.check_ids(ids)?;
        if ids.len() > self.cfg.block_size {
            return Err(InferError::TooLarge {
                what: "sequence length",
                value: ids.len(),
                limit: self.cfg.block_size,
            });
        }
        let hidden = self.forward(&mut [(ids, &mut self.empty_cache())], false);
        Ok(crate::batch::Matrix {
            rows: ids.len(),
            cols: self.vocab.len(),
            data: self.head.forward(&hidden, ids.len()),
        })
    }

    pub(crate) fn check_ids(&self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Err(InferError::InvalidArgument("the prompt is empty".into()));
        }
        match ids.iter().find(|&&i| i as usize >= self.vocab.len()) {
            Some(bad) => Err(InferError::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.vocab.len()
            ))),
            None => Ok(()),
        }
    }

    /// Append `max_new_tokens` tokens to `prompt` with the KV cache; returns all ids.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampling: Sampling,
    ) -> Result<Vec<u32>> {
        self.generate_watched(prompt, max_new_tokens, sampling, &|_| None)
    }

    /// `generate`, asking `watch(the new ids so far)` before each new token whether to
    /// stop: a `Some(reason)` ends the call with `InferError::Stopped`. A service uses it
    /// to drop work whose deadline passed or whose caller is gone, between two tokens,
    /// and to stream the tokens out as they come. A decoding batch of one
    /// ([`crate::decoding`]), its prompt prefilled in one step.
    pub fn generate_watched(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampling: Sampling,
        watch: &dyn Fn(&[u32]) -> Option<StopReason>,
    ) -> Result<Vec<u32>> {
        let block = self.cfg.block_size;
        let alone = Limits {
            max_sequences: 1,
            max_cached_tokens: block,
            prefill_chunk: block,
        };
        let mut batch = self.decoding_batch(alone)?;
        self.join(&mut batch, prompt, max_new_tokens, sampling)?;
        let mut new = Vec::with_capacity(max_new_tokens);
        while new.len() < max_new_tokens {
            if let Some(reason) = watch(&new) {
                return Err(InferError::Stopped {
                    tokens: new.len(),
                    reason,
                });
            }
            new.extend(self.step(&mut batch)?.into_iter().map(|e| e.token));
        }
        Ok([prompt, &new].concat())
    }

    /// Logits (rows, vocab) of final hidden states: the tied head.
    pub(crate) fn head_logits(&self, hidden: &[f32], rows: usize) -> Vec<f32> {
        self.head.forward(hidden, rows)
    }

    /// Entries in the vocabulary.
    pub(crate) fn vocab_len(&self) -> usize {
        self.vocab.len()
    }

    /// `prompt` followed by up to `max_new_tokens` generated characters, stopped between
    /// tokens when `watch` says so (see `generate_watched`).
    pub fn generate_text_watched(
        &self,
        prompt: &str,
        max_new_tokens: usize,
        sampling: Sampling,
        watch: &dyn Fn(&[u32]) -> Option<StopReason>,
    ) -> Result<String> {
        let ids =
            self.generate_watched(&self.prompt_ids(prompt)?, max_new_tokens, sampling, watch)?;
        Ok(self.decode(&ids))
    }

    /// The token ids of a prompt, refusing one longer than `MAX_PROMPT_CHARS` or with
    /// characters outside the vocabulary.
    pub fn prompt_ids(&self, prompt: &str) -> Result<Vec<u32>> {
        let chars = prompt.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(InferError::TooLarge {
                what: "prompt length",
                value: chars,
                limit: MAX_PROMPT_CHARS,
            });
        }
        self.encode(prompt)
    }
}

pub(crate) fn check_sampling(max_new_tokens: usize, s: Sampling, vocab: usize) -> Result<()> {
    if max_new_tokens == 0 {
        return Err(InferError::InvalidArgument(
            "max_new_tokens must be at least 1".into(),
        ));
    }
    if max_new_tokens > MAX_NEW_TOKENS {
        return Err(InferError::TooLarge {
            what: "max_new_tokens",
            value: max_new_tokens,
            limit: MAX_NEW_TOKENS,
        });
    }
    if !s.temperature.is_finite() || s.temperature < 0.0 {
        return Err(InferError::InvalidArgument(format!(
            "temperature must be a finite number >= 0, got {}",
            s.temperature
        )));
    }
    if s.temperature > 0.0 && s.temperature < MIN_TEMPERATURE {
        return Err(InferError::InvalidArgument(format!(
            "temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, got {}",
            s.temperature
        )));
    }
    if s.temperature > MAX_TEMPERATURE {
        return Err(InferError::InvalidArgument(format!(
            "temperature {} is above the limit of {MAX_TEMPERATURE}",
            s.temperature
        )));
    }
    match s.top_k {
        Some(0) => Err(InferError::InvalidArgument(
            "top_k must be at least 1".into(),
        )),
        Some(k) if k > vocab => Err(InferError::InvalidArgument(format!(
            "top_k {k} is larger than the vocabulary of {vocab}"
        ))),
        _ => Ok(()),
    }
}

/// argmax if temperature is 0; else a draw from softmax(logits / temperature) over the
/// top_k logits (every logit tied with the k-th is kept, as `torch.topk` masking does).
pub(crate) fn pick_next_token(logits: &[f32], s: Sampling, rng: &mut Rng) -> u32 {
    if s.temperature == 0.0 {
        // first maximum, as torch.argmax
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let scaled: Vec<f32> = logits.iter().map(|&v| v / s.temperature).collect();
    let threshold = match s.top_k {
        Some(k) if k < scaled.len() => {
            let mut sorted = scaled.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            sorted[k - 1]
        }
        _ => f32::NEG_INFINITY,
    };
    let max = scaled.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = scaled
        .iter()
        .map(|&v| {
            if v >= threshold {
                ((v - max) as f64).exp()
            } else {
                0.0
            }
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut u = rng.uniform() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i as u32;
        }
        u -= w;
    }
    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        let mut rng = Rng::new(0);
        assert_eq!(
            pick_next_token(&[0.0, 3.0, 3.0, 1.0], Sampling::greedy(), &mut rng),
            1
        );
    }

    #[test]
    fn top_k_draws_only_from_the_k_best() {
        let mut rng = Rng::new(1);
        let s = Sampling {
            temperature: 1.0,
            top_k: Some(2),
            seed: 1,
        };
        let logits = [0.0, 5.0, 4.0, -1.0, 3.0];
        let drawn: std::collections::BTreeSet<u32> = (0..500)
            .map(|_| pick_next_token(&logits, s, &mut rng))
            .collect();
        assert_eq!(drawn, [1, 2].into_iter().collect());
    }
}
