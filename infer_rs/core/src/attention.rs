//! Causal self-attention of the GPT over a preallocated KV cache.
//!
//! Each layer's cache holds `capacity` (= block_size) positions, allocated once per
//! generation and written in place: a decode step copies one position's keys and
//! values, so T steps cost O(T) copies, not the O(T^2) of growing tensors.

use crate::dense::exp_nonpositive;
use crate::isa::Isa;

/// Keys and values of one layer, per head.
pub struct LayerCache {
    /// (n_head, head_dim, capacity): keys transposed, so that one query's scores over
    /// all positions are sums of contiguous rows (vectorised over positions).
    keys_t: Vec<f32>,
    /// (n_head, capacity, head_dim).
    values: Vec<f32>,
}

/// The cache of every layer, and how many positions it holds.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    len: usize,
    shape: Shape,
}

#[derive(Clone, Copy)]
struct Shape {
    n_head: usize,
    head_dim: usize,
    capacity: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, n_head: usize, head_dim: usize, capacity: usize) -> Self {
        let size = n_head * head_dim * capacity;
        Self {
            layers: (0..n_layer)
                .map(|_| LayerCache {
                    keys_t: vec![0.0; size],
                    values: vec![0.0; size],
                })
                .collect(),
            len: 0,
            shape: Shape {
                n_head,
                head_dim,
                capacity,
            },
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget every position (the buffers are kept).
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Mark `t` more positions cached, once every layer has stored them.
    pub fn advance(&mut self, t: usize) {
        self.len += t;
        assert!(
            self.len <= self.shape.capacity,
            "KV cache past its capacity"
        );
    }

    /// Store the keys and values of `t` new rows of `qkv` (t, 3C) in `layer` at
    /// positions len..len + t, then return y (t, C): for each head,
    /// y_i = sum_j softmax_j(q_i . k_j / sqrt(head_dim)) v_j over positions j <= len + i.
    pub fn attend(&mut self, layer: usize, qkv: &[f32], t: usize, isa: Isa) -> Vec<f32> {
        let (shape, start) = (self.shape, self.len);
        assert!(start + t <= shape.capacity && qkv.len() == t * 3 * shape.width());
        let cache = &mut self.layers[layer];
        cache.store(shape, qkv, t, start);
        let mut y = vec![0f32; t * shape.width()];
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Portable {
            // SAFETY: the avx2 and avx512 paths are only chosen on CPUs that have AVX2.
            unsafe { avx2::attend(cache, shape, qkv, t, start, &mut y) };
            return y;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = isa; // off x86 the portable path is the only one
        attend_with(cache, shape, qkv, t, start, &mut y);
        y
    }
}

impl Shape {
    fn width(self) -> usize {
        self.n_head * self.head_dim
    }
}

impl LayerCache {
    /// Copy the keys and values of rows 0..t of qkv to positions start..start + t.
    fn store(&mut self, shape: Shape, qkv: &[f32], t: usize, start: usize) {
        let (c, hs, cap) = (shape.width(), shape.head_dim, shape.capacity);
        for (i, row) in qkv.chunks_exact(3 * c).take(t).enumerate() {
            let pos = start + i;
            for h in 0..shape.n_head {
                let key = &row[c + h * hs..c + (h + 1) * hs];
                for (d, &k) in key.iter().enumerate() {
                    self.keys_t[(h * hs + d) * cap + pos] = k;
                }
                let at = (h * cap + pos) * hs;
                self.values[at..at + hs].copy_from_slice(&row[2 * c + h * hs..][..hs]);
            }
        }
    }
}

/// The attention of `KvCache::attend`, inlined into each instruction set's wrapper.
#[inline(always)]
fn attend_with(
    cache: &LayerCache,
    shape: Shape,
    qkv: &[f32],
    t: usize,
    start: usize,
    y: &mut [f32],
) {
    let (c, hs, cap) = (shape.width(), shape.head_dim, shape.capacity);
    let scale = 1.0 / (hs as f32).sqrt();
    let mut scores = vec![0f32; start + t];
    for i in 0..t {
        let n = start + i + 1; // the causal mask: keys 0..=start + i
        for h in 0..shape.n_head {
            let q = &qkv[i * 3 * c + h * hs..][..hs];
            let s = &mut scores[..n];
            s.fill(0.0);
            // s_j = sum_d q_d k_dj, row by row of K^T
            for (d, &qd) in q.iter().enumerate() {
                let keys = &cache.keys_t[(h * hs + d) * cap..][..n];
                for (sj, &k) in s.iter_mut().zip(keys) {
                    *sj += qd * k;
                }
            }
            // p_j = exp(s_j scale - max) / sum_k exp(s_k scale - max), y = sum_j p_j v_j
            let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v * scale));
            for sj in s.iter_mut() {
                *sj = exp_nonpositive(*sj * scale - max);
            }
            let total: f32 = s.iter().sum();
            s.iter_mut().for_each(|p| *p /= total);
            let out = &mut y[i * c + h * hs..][..hs];
            let values = &cache.values[h * cap * hs..];
            for (j, &p) in s.iter().enumerate() {
                for (o, &v) in out.iter_mut().zip(&values[j * hs..(j + 1) * hs]) {
                    *o += p * v;
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{attend_with, LayerCache, Shape};

    /// `attend_with` compiled with AVX2/FMA, so its loops over positions and over
    /// head dimensions run eight lanes wide.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend(
        cache: &LayerCache,
        shape: Shape,
        qkv: &[f32],
        t: usize,
        start: usize,
        y: &mut [f32],
    ) {
        attend_with(cache, shape, qkv, t, start, y);
    }
}
