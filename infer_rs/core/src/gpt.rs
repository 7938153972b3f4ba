//! Character-level decoder-only Transformer (Radford et al., 2019; Vaswani et al., 2017,
//! <https://arxiv.org/abs/1706.03762>), as trained by `train/models/gpt.py`.
//! Tensor paths follow GPT-2: `transformer.wte`, `transformer.wpe`, `transformer.h.{i}.*`,
//! `transformer.ln_f`; the output head is tied to `transformer.wte`.
//!
//! KV cache: exact while the sequence fits in `block_size`. Past it, every position of
//! the window shifts, so each further step re-prefills the last `block_size` tokens; the
//! tokens are the same as without a cache, as in `train/`.

use crate::error::{InferError, Result};
use crate::limits::{MAX_NEW_TOKENS, MAX_PROMPT_CHARS, MAX_TEMPERATURE, MIN_TEMPERATURE};
use crate::rng::Rng;
use candle_core::{DType, Device, Tensor};
use candle_nn::{layer_norm, linear, LayerNorm, Linear, Module, VarBuilder};
use serde::{Deserialize, Serialize};

const LN_EPS: f64 = 1e-5;

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
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            top_k: None,
            seed: 0,
        }
    }
}

/// Keys and values of the positions seen so far, per layer: (1, n_head, T, head_dim).
type KvCache = Vec<Option<(Tensor, Tensor)>>;

struct CausalSelfAttention {
    c_attn: Linear,
    c_proj: Linear,
    n_head: usize,
}

impl CausalSelfAttention {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            c_attn: linear(cfg.n_embd, 3 * cfg.n_embd, vb.pp("c_attn"))?,
            c_proj: linear(cfg.n_embd, cfg.n_embd, vb.pp("c_proj"))?,
            n_head: cfg.n_head,
        })
    }

    /// softmax(Q K^T / sqrt(d) + M) V, M = -inf where a query would see a later key.
    fn forward(&self, x: &Tensor, cache: &mut Option<(Tensor, Tensor)>) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let hs = c / self.n_head;
        let qkv = self.c_attn.forward(x)?; // (B, T, 3C)
        let heads = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(2, i * c, c)?
                .reshape((b, t, self.n_head, hs))?
                .transpose(1, 2)?
                .contiguous()?) // (B, nh, T, hs)
        };
        let (q, mut k, mut v) = (heads(0)?, heads(1)?, heads(2)?);
        if let Some((past_k, past_v)) = cache.as_ref() {
            k = Tensor::cat(&[past_k, &k], 2)?;
            v = Tensor::cat(&[past_v, &v], 2)?;
        }
        let past = k.dim(2)? - t;
        let mut att = (q.matmul(&k.t()?)? / (hs as f64).sqrt())?; // (B, nh, T, P + T)
        if t > 1 {
            att = att.broadcast_add(&causal_mask(t, past)?)?;
        }
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, c))?;
        *cache = Some((k, v));
        Ok(self.c_proj.forward(&y)?)
    }
}

/// (T, P + T) additive mask: 0 where key j <= P + i, -inf after.
fn causal_mask(t: usize, past: usize) -> Result<Tensor> {
    let data: Vec<f32> = (0..t)
        .flat_map(|i| {
            (0..past + t).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(data, (t, past + t), &Device::Cpu)?)
}

struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            c_fc: linear(cfg.n_embd, 4 * cfg.n_embd, vb.pp("c_fc"))?,
            c_proj: linear(4 * cfg.n_embd, cfg.n_embd, vb.pp("c_proj"))?,
        })
    }

    /// c_proj(GELU(c_fc(x))), GELU in its exact erf form.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.c_proj.forward(&self.c_fc.forward(x)?.gelu_erf()?)?)
    }
}

struct Block {
    ln_1: LayerNorm,
    attn: CausalSelfAttention,
    ln_2: LayerNorm,
    mlp: Mlp,
    pre_ln: bool,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            ln_1: layer_norm(cfg.n_embd, LN_EPS, vb.pp("ln_1"))?,
            attn: CausalSelfAttention::load(vb.pp("attn"), cfg)?,
            ln_2: layer_norm(cfg.n_embd, LN_EPS, vb.pp("ln_2"))?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
            pre_ln: cfg.pre_ln,
        })
    }

    /// pre-LN: x + attn(ln_1(x)), then + mlp(ln_2(x)); post-LN: ln_1(x + attn(x)), ln_2(x + mlp(x)).
    fn forward(&self, x: &Tensor, cache: &mut Option<(Tensor, Tensor)>) -> Result<Tensor> {
        if self.pre_ln {
            let x = (x + self.attn.forward(&self.ln_1.forward(x)?, cache)?)?;
            return Ok((&x + self.mlp.forward(&self.ln_2.forward(&x)?)?)?);
        }
        let x = self.ln_1.forward(&(x + self.attn.forward(x, cache)?)?)?;
        Ok(self.ln_2.forward(&(&x + self.mlp.forward(&x)?)?)?)
    }
}

pub struct Gpt {
    pub cfg: Config,
    vocab: Vec<char>,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
}

impl Gpt {
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
        Ok(Self {
            wte: vb_t.pp("wte").get((vocab.len(), cfg.n_embd), "weight")?,
            wpe: vb_t.pp("wpe").get((cfg.block_size, cfg.n_embd), "weight")?,
            ln_f: layer_norm(cfg.n_embd, LN_EPS, vb_t.pp("ln_f"))?,
            blocks,
            vocab,
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

    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter_map(|&i| self.vocab.get(i as usize))
            .collect()
    }

    /// Logits (T, vocab) of tokens that follow the cached positions.
    fn forward(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let start = cache
            .first()
            .and_then(|c| c.as_ref())
            .map_or(Ok(0), |(k, _)| k.dim(2))?;
        let t = ids.len();
        let idx = Tensor::new(ids, &Device::Cpu)?;
        let x = self
            .wte
            .index_select(&idx, 0)?
            .add(&self.wpe.narrow(0, start, t)?)?;
        let mut x = x.unsqueeze(0)?; // (1, T, C)
        for (block, layer_cache) in self.blocks.iter().zip(cache.iter_mut()) {
            x = block.forward(&x, layer_cache)?;
        }
        let x = self.ln_f.forward(&x)?.squeeze(0)?; // (T, C)
        Ok(x.matmul(&self.wte.t()?)?) // tied head: (T, vocab)
    }

    fn empty_cache(&self) -> KvCache {
        vec![None; self.blocks.len()]
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
        crate::batch::Matrix::from_tensor(&self.forward(ids, &mut self.empty_cache())?)
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
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
        self.check_ids(prompt)?;
        check_sampling(max_new_tokens, sampling, self.vocab.len())?;
        let mut rng = Rng::new(sampling.seed);
        let mut ids = prompt.to_vec();
        let mut cache = self.empty_cache();
        let mut cached = false;
        for _ in 0..max_new_tokens {
            let fits = ids.len() <= self.cfg.block_size;
            let logits = if fits && cached {
                self.forward(&ids[ids.len() - 1..], &mut cache)?
            } else {
                // prefill, or re-prefill a window that slid past block_size
                cache = self.empty_cache();
                let window = &ids[ids.len().saturating_sub(self.cfg.block_size)..];
                self.forward(window, &mut cache)?
            };
            cached = fits;
            let last = logits
                .get(logits.dim(0)? - 1)?
                .to_dtype(DType::F32)?
                .to_vec1::<f32>()?;
            ids.push(pick_next_token(&last, sampling, &mut rng));
        }
        Ok(ids)
    }

    /// `prompt` followed by up to `max_new_tokens` generated characters.
    pub fn generate_text(
        &self,
        prompt: &str,
        max_new_tokens: usize,
        sampling: Sampling,
    ) -> Result<String> {
        let chars = prompt.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(InferError::TooLarge {
                what: "prompt length",
                value: chars,
                limit: MAX_PROMPT_CHARS,
            });
        }
        let ids = self.generate(&self.encode(prompt)?, max_new_tokens, sampling)?;
        Ok(self.decode(&ids))
    }
}

fn check_sampling(max_new_tokens: usize, s: Sampling, vocab: usize) -> Result<()> {
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
fn pick_next_token(logits: &[f32], s: Sampling, rng: &mut Rng) -> u32 {
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

    #[test]
    fn mask_hides_later_keys_only() {
        let m = causal_mask(2, 1).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(m[0], vec![0.0, 0.0, f32::NEG_INFINITY]);
        assert_eq!(m[1], vec![0.0, 0.0, 0.0]);
    }
}
