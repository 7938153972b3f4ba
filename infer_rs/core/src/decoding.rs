//! Many texts generated at once: a decoding batch that sequences join and leave between
//! tokens ("continuous batching", as LLM servers run it).
//!
//! Each [`Gpt::step`] feeds every live sequence what it needs next (one token; a chunk
//! of a joiner's prompt; the whole slid window of a sequence past `block_size`) and runs
//! the rows of all of them through each dense layer at once, one GEMM per layer, while
//! attention runs per sequence against its own KV cache and sampling per sequence with
//! its own RNG.
//!
//! **Batch invariance.** A sequence's tokens and logits are the same, bit for bit,
//! whether it ran alone or among others that joined and left at any step: the dense
//! kernels give every output one chain of FMAs in a fixed order whatever the rows beside
//! it, attention reads only the sequence's own cache and computes a query with the same
//! arithmetic in a block of any size (so a prompt prefilled in chunks gives the values
//! of one prefill), and the RNG is the sequence's own. [`Gpt::generate`] is a batch of
//! one.

use crate::attention::KvCache;
use crate::error::{InferError, Result};
use crate::gpt::{check_sampling, pick_next_token, Gpt, Sampling};
use crate::rng::Rng;

/// A sequence's handle in its batch.
pub type SeqId = u64;

/// The knobs of a decoding batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most sequences live at once.
    pub max_sequences: usize,
    /// Most positions the live sequences' KV caches may hold together; each sequence
    /// reserves `block_size` positions when it joins.
    pub max_cached_tokens: usize,
    /// Most prompt tokens a joiner prefills in one step, so that a long prompt delays
    /// the others' next token by at most one chunk.
    pub prefill_chunk: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sequences: 64,
            max_cached_tokens: 64 * 256,
            prefill_chunk: 64,
        }
    }
}

/// The token one sequence gained in a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Emitted {
    /// The sequence.
    pub id: SeqId,
    /// Its new token.
    pub token: u32,
    /// The logits the token was picked from (one per vocabulary entry).
    pub logits: Vec<f32>,
    /// Whether the sequence has its `max_new_tokens` now; it has left the batch.
    pub finished: bool,
}

/// One live sequence: its tokens so far, its sampling, its cache.
struct Sequence {
    id: SeqId,
    ids: Vec<u32>,
    new_tokens: usize,
    max_new_tokens: usize,
    sampling: Sampling,
    rng: Rng,
    cache: KvCache,
    /// While its first window (the prompt's last `block_size` tokens) is prefilled in
    /// chunks: where that window starts in `ids`.
    prefilling: Option<usize>,
}

/// Sequences decoded together, step by step, by the GPT that made the batch
/// ([`Gpt::decoding_batch`]).
pub struct DecodingBatch {
    limits: Limits,
    live: Vec<Sequence>,
    /// Caches of sequences that left, kept for the next joiners.
    pool: Vec<KvCache>,
    next_id: SeqId,
    /// (n_layer, n_embd, block_size, vocabulary) of the GPT that made the batch.
    shape: (usize, usize, usize, usize),
}

impl DecodingBatch {
    /// Sequences live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no sequence is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// Cancel sequence `id`: it leaves at once, and its cache goes back to the pool.
    /// Returns its tokens so far (prompt and new). An id that is not live (unknown, or
    /// finished) is an error that touches no other sequence.
    pub fn leave(&mut self, id: SeqId) -> Result<Vec<u32>> {
        let at = self.live.iter().position(|s| s.id == id).ok_or_else(|| {
            InferError::InvalidArgument(format!("no live sequence {id} in the batch"))
        })?;
        let seq = self.live.swap_remove(at);
        self.pool.push(seq.cache);
        Ok(seq.ids)
    }
}

impl Gpt {
    fn shape(&self) -> (usize, usize, usize, usize) {
        let cfg = &self.cfg;
        (cfg.n_layer, cfg.n_embd, cfg.block_size, self.vocab_len())
    }

    /// An empty decoding batch for this model.
    pub fn decoding_batch(&self, limits: Limits) -> Result<DecodingBatch> {
        if limits.max_sequences == 0 || limits.prefill_chunk == 0 {
            return Err(InferError::InvalidArgument(
                "a decoding batch needs max_sequences and prefill_chunk of at least 1".into(),
            ));
        }
        if limits.max_cached_tokens < self.cfg.block_size {
            return Err(InferError::InvalidArgument(format!(
                "max_cached_tokens {} cannot hold one sequence's {} positions",
                limits.max_cached_tokens, self.cfg.block_size
            )));
        }
        Ok(DecodingBatch {
            limits,
            live: Vec::new(),
            pool: Vec::new(),
            next_id: 0,
            shape: self.shape(),
        })
    }

    /// Add a sequence that continues `prompt` by `max_new_tokens` tokens drawn as
    /// `sampling` says; it is prefilled from the next step on. Refused, with the batch
    /// untouched, for the reasons `generate` refuses, and when the batch is at one of its
    /// limits (`InferError::TooLarge` naming the limit).
    pub fn join(
        &self,
        batch: &mut DecodingBatch,
        prompt: &[u32],
        max_new_tokens: usize,
        sampling: Sampling,
    ) -> Result<SeqId> {
        self.check_batch(batch)?;
        self.check_ids(prompt)?;
        check_sampling(max_new_tokens, sampling, self.vocab_len())?;
        let live = batch.live.len();
        if live == batch.limits.max_sequences {
            return Err(InferError::TooLarge {
                what: "live sequences (max_sequences)",
                value: live + 1,
                limit: batch.limits.max_sequences,
            });
        }
        let block = self.cfg.block_size;
        if (live + 1) * block > batch.limits.max_cached_tokens {
            return Err(InferError::TooLarge {
                what: "cached positions (max_cached_tokens)",
                value: (live + 1) * block,
                limit: batch.limits.max_cached_tokens,
            });
        }
        let mut cache = batch.pool.pop().unwrap_or_else(|| self.empty_cache());
        cache.clear();
        let id = batch.next_id;
        batch.next_id += 1;
        batch.live.push(Sequence {
            id,
            ids: prompt.to_vec(),
            new_tokens: 0,
            max_new_tokens,
            sampling,
            rng: Rng::new(sampling.seed),
            cache,
            prefilling: Some(prompt.len().saturating_sub(block)),
        });
        Ok(id)
    }

    /// One decoding step for every live sequence: a new token for each one whose prompt
    /// is prefilled (a joiner still prefilling a long prompt gains none this step).
    /// Sequences that reach their `max_new_tokens` leave the batch.
    pub fn step(&self, batch: &mut DecodingBatch) -> Result<Vec<Emitted>> {
        self.check_batch(batch)?;
        let (block, chunk) = (self.cfg.block_size, batch.limits.prefill_chunk);
        // what each sequence is fed, and whether it then picks a token
        let mut feeds = Vec::with_capacity(batch.live.len());
        let mut picks = Vec::with_capacity(batch.live.len());
        for seq in batch.live.iter_mut() {
            let (range, picks_now) = match seq.prefilling {
                Some(start) => {
                    let from = start + seq.cache.len();
                    let to = (from + chunk).min(seq.ids.len());
                    (from..to, to == seq.ids.len())
                }
                None if seq.ids.len() <= block => (seq.ids.len() - 1..seq.ids.len(), true),
                None => {
                    // past the block every position shifts: re-prefill the window whole
                    seq.cache.clear();
                    (seq.ids.len() - block..seq.ids.len(), true)
                }
            };
            picks.push(picks_now);
            feeds.push((&seq.ids[range], &mut seq.cache));
        }
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        let hidden = self.forward(&mut feeds, true);
        drop(feeds);
        // the head over the last rows of the sequences that pick, in one GEMM
        let c = self.cfg.n_embd;
        let rows: Vec<f32> = hidden
            .chunks_exact(c)
            .zip(&picks)
            .filter(|(_, &p)| p)
            .flat_map(|(row, _)| row.iter().copied())
            .collect();
        let logits = self.head_logits(&rows, rows.len() / c);
        let vocab = self.vocab_len();
        let mut emitted = Vec::new();
        let mut logits_rows = logits.chunks_exact(vocab);
        for (seq, picks_now) in batch.live.iter_mut().zip(picks) {
            if !picks_now {
                continue;
            }
            seq.prefilling = None;
            let logits = logits_rows.next().unwrap_or_default().to_vec();
            let token = pick_next_token(&logits, seq.sampling, &mut seq.rng);
            seq.ids.push(token);
            seq.new_tokens += 1;
            emitted.push(Emitted {
                id: seq.id,
                token,
                logits,
                finished: seq.new_tokens == seq.max_new_tokens,
            });
        }
        for done in emitted.iter().filter(|e| e.finished) {
            batch.leave(done.id)?;
        }
        Ok(emitted)
    }

    /// Each request (prompt ids, max_new_tokens, sampling) continued, all generated
    /// together in a decoding batch of `limits`: requests join in order as places free
    /// up. Every request is checked before any runs; each result equals `generate`'s
    /// for the same request.
    pub fn generate_many(
        &self,
        requests: &[(Vec<u32>, usize, Sampling)],
        limits: Limits,
    ) -> Result<Vec<Vec<u32>>> {
        for (prompt, max_new_tokens, sampling) in requests {
            self.check_ids(prompt)?;
            check_sampling(*max_new_tokens, *sampling, self.vocab_len())?;
        }
        let mut batch = self.decoding_batch(limits)?;
        let mut out: Vec<Vec<u32>> = requests.iter().map(|r| r.0.clone()).collect();
        let mut owner = std::collections::HashMap::new();
        let mut waiting = requests.iter().enumerate().peekable();
        while waiting.peek().is_some() || !batch.is_empty() {
            while let Some(&(i, (prompt, max_new_tokens, sampling))) = waiting.peek() {
                match self.join(&mut batch, prompt, *max_new_tokens, *sampling) {
                    Ok(id) => owner.insert(id, i),
                    Err(InferError::TooLarge { .. }) if !batch.is_empty() => break, // full
                    Err(other) => return Err(other),
                };
                waiting.next();
            }
            for e in self.step(&mut batch)? {
                out[owner[&e.id]].push(e.token);
            }
        }
        Ok(out)
    }

    fn check_batch(&self, batch: &DecodingBatch) -> Result<()> {
        if batch.shape == self.shape() {
            Ok(())
        } else {
            Err(InferError::InvalidArgument(
                "the decoding batch was made by another model".into(),
            ))
        }
    }
}
