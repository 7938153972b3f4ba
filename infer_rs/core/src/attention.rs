//! Causal self-attention of the GPT over a preallocated KV cache.
//!
//! Each layer's cache holds `capacity` (= block_size) positions, allocated once per
//! generation and written in place: a decode step copies one position's keys and
//! values, so T steps cost O(T) copies, not the O(T^2) of growing tensors.
//!
//! A prefill attends in blocks of `QB` queries per head, so that each key and value
//! loaded serves every query of the block, with the sums of a block held in LANES-wide
//! accumulators (vector registers once compiled for AVX2). Rows of keys and values are
//! padded to a multiple of LANES with zeros, so every loop runs whole vectors. A query
//! is computed with the same arithmetic in any block, so a decode step (a block of
//! one) gives the values a prefill of the same positions gives.

use crate::dense::exp_nonpositive;
use crate::isa::Isa;

/// Vector width the loops are written for (8 f32 lanes of an AVX2 register).
const LANES: usize = 8;
/// Queries per block.
const QB: usize = 4;

type Lanes = [f32; LANES];

/// Keys and values of one layer, per head.
pub struct LayerCache {
    /// (n_head, head_dim, positions): keys transposed, so that the scores of a query
    /// over consecutive positions are sums of contiguous rows.
    keys_t: Vec<f32>,
    /// (n_head, capacity, dims): each position's values, zero past head_dim.
    values: Vec<f32>,
}

/// The cache of every layer, and how many positions it holds.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    len: usize,
    shape: Shape,
    /// The scores of one block of queries: QB rows of `positions` values.
    scores: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Shape {
    n_head: usize,
    head_dim: usize,
    capacity: usize,
    /// capacity rounded up to a multiple of LANES: the row length of keys_t.
    positions: usize,
    /// head_dim rounded up to a multiple of LANES: the row length of values.
    dims: usize,
}

impl KvCache {
    pub fn new(n_layer: usize, n_head: usize, head_dim: usize, capacity: usize) -> Self {
        let shape = Shape {
            n_head,
            head_dim,
            capacity,
            positions: capacity.div_ceil(LANES) * LANES,
            dims: head_dim.div_ceil(LANES) * LANES,
        };
        Self {
            layers: (0..n_layer)
                .map(|_| LayerCache {
                    keys_t: vec![0.0; n_head * head_dim * shape.positions],
                    values: vec![0.0; n_head * capacity * shape.dims],
                })
                .collect(),
            len: 0,
            shape,
            scores: vec![0.0; QB * shape.positions],
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
        let scores = &mut self.scores;
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Portable {
            // SAFETY: the avx2 and avx512 paths are only chosen on CPUs that have AVX2.
            unsafe { avx2::attend(cache, shape, qkv, t, start, scores, &mut y) };
            return y;
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = isa; // off x86 the portable path is the only one
        attend_with(cache, shape, qkv, t, start, scores, &mut y);
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
        let (c, hs) = (shape.width(), shape.head_dim);
        for (i, row) in qkv.chunks_exact(3 * c).take(t).enumerate() {
            let pos = start + i;
            for h in 0..shape.n_head {
                let key = &row[c + h * hs..][..hs];
                for (d, &k) in key.iter().enumerate() {
                    self.keys_t[(h * hs + d) * shape.positions + pos] = k;
                }
                let at = (h * shape.capacity + pos) * shape.dims;
                self.values[at..at + hs].copy_from_slice(&row[2 * c + h * hs..][..hs]);
            }
        }
    }
}

/// The attention of `KvCache::attend`, inlined into each instruction set's wrapper:
/// per head, blocks of QB queries, then the rest one by one.
#[inline(always)]
fn attend_with(
    cache: &LayerCache,
    shape: Shape,
    qkv: &[f32],
    t: usize,
    start: usize,
    scores: &mut [f32],
    y: &mut [f32],
) {
    for h in 0..shape.n_head {
        let head = Head::new(cache, shape, h);
        let mut first = 0;
        while first + QB <= t {
            head.block::<QB>(qkv, start + first, first, scores, y);
            first += QB;
        }
        for i in first..t {
            head.block::<1>(qkv, start + i, i, scores, y);
        }
    }
}

/// One head of one layer's cache.
struct Head<'a> {
    shape: Shape,
    /// (head_dim, positions)
    keys_t: &'a [f32],
    /// (capacity, dims)
    values: &'a [f32],
    /// Where the head's columns start in a row of q (and of y).
    column: usize,
    /// 1 / sqrt(head_dim)
    scale: f32,
}

impl<'a> Head<'a> {
    fn new(cache: &'a LayerCache, shape: Shape, h: usize) -> Self {
        let (hs, ld) = (shape.head_dim, shape.positions);
        let values = shape.capacity * shape.dims;
        Self {
            shape,
            keys_t: &cache.keys_t[h * hs * ld..][..hs * ld],
            values: &cache.values[h * values..][..values],
            column: h * hs,
            scale: 1.0 / (hs as f32).sqrt(),
        }
    }

    /// Rows row..row + B of y for the queries of the same rows of qkv, the first at
    /// position `pos`: query q sees keys 0..=pos + q (the causal mask). Every query
    /// gets the arithmetic it gets in a block of one: positions it cannot see add
    /// exact zeros.
    #[inline(always)]
    fn block<const B: usize>(
        &self,
        qkv: &[f32],
        pos: usize,
        row: usize,
        scores: &mut [f32],
        y: &mut [f32],
    ) {
        let (c, hs, ld) = (
            self.shape.width(),
            self.shape.head_dim,
            self.shape.positions,
        );
        let n = (pos + B).div_ceil(LANES) * LANES;
        let queries: [&[f32]; B] =
            std::array::from_fn(|q| &qkv[(row + q) * 3 * c + self.column..][..hs]);
        self.scores(&queries, n, scores);
        for q in 0..B {
            softmax(&mut scores[q * ld..][..n], pos + q + 1, self.scale);
        }
        let out: [usize; B] = std::array::from_fn(|q| (row + q) * c + self.column);
        self.values(n, scores, &out, y);
    }

    /// s[q][j] = sum_d queries[q]_d k_dj for j < n (a multiple of LANES), summed over d
    /// in order.
    #[inline(always)]
    fn scores<const B: usize>(&self, queries: &[&[f32]; B], n: usize, s: &mut [f32]) {
        let ld = self.shape.positions;
        for j in (0..n).step_by(LANES) {
            let mut acc = [[0f32; LANES]; B];
            for d in 0..self.shape.head_dim {
                let k: &Lanes = self.keys_t[d * ld + j..][..LANES]
                    .try_into()
                    .expect("LANES");
                for (acc, q) in acc.iter_mut().zip(queries) {
                    let qd = q[d];
                    for l in 0..LANES {
                        acc[l] += qd * k[l];
                    }
                }
            }
            for (q, acc) in acc.iter().enumerate() {
                s[q * ld + j..][..LANES].copy_from_slice(acc);
            }
        }
    }

    /// y[out[q] + d] = sum_j p[q][j] v_jd for d < head_dim, summed over j < n in order.
    #[inline(always)]
    fn values<const B: usize>(&self, n: usize, p: &[f32], out: &[usize; B], y: &mut [f32]) {
        let (dims, ld) = (self.shape.dims, self.shape.positions);
        let n = n.min(self.shape.capacity); // positions past the capacity have p = 0
        for d in (0..dims).step_by(LANES) {
            let mut acc = [[0f32; LANES]; B];
            for j in 0..n {
                let v: &Lanes = self.values[j * dims + d..][..LANES]
                    .try_into()
                    .expect("LANES");
                for (q, acc) in acc.iter_mut().enumerate() {
                    let pj = p[q * ld + j];
                    for l in 0..LANES {
                        acc[l] += pj * v[l];
                    }
                }
            }
            let width = LANES.min(self.shape.head_dim - d);
            for (acc, &at) in acc.iter().zip(out) {
                y[at + d..][..width].copy_from_slice(&acc[..width]);
            }
        }
    }
}

/// p_j = exp(s_j scale - m) / sum_{k < seen} exp(s_k scale - m) with m = max_k s_k scale,
/// for j < seen; 0 for seen <= j < s.len().
#[inline(always)]
fn softmax(s: &mut [f32], seen: usize, scale: f32) {
    s[seen..].fill(f32::NEG_INFINITY);
    let mut top = [f32::NEG_INFINITY; LANES];
    for chunk in s.chunks_exact(LANES) {
        for l in 0..LANES {
            top[l] = top[l].max(chunk[l]);
        }
    }
    // max_j (s_j scale) = scale max_j s_j: rounding is monotonic and scale > 0
    let max = top.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
    for v in s.iter_mut() {
        *v = exp_nonpositive(*v * scale - max);
    }
    s[seen..].fill(0.0);
    let mut sum = [0f32; LANES];
    for chunk in s.chunks_exact(LANES) {
        for l in 0..LANES {
            sum[l] += chunk[l];
        }
    }
    let total: f32 = sum.iter().sum();
    s.iter_mut().for_each(|p| *p /= total);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{attend_with, LayerCache, Shape};

    /// `attend_with` compiled with AVX2/FMA, so its loops over LANES run as vectors.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend(
        cache: &LayerCache,
        shape: Shape,
        qkv: &[f32],
        t: usize,
        start: usize,
        scores: &mut [f32],
        y: &mut [f32],
    ) {
        attend_with(cache, shape, qkv, t, start, scores, y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// softmax(q k^T / sqrt(hs)) v in f64, one query at a time.
    fn reference(qkv: &[f32], n_head: usize, hs: usize, t: usize) -> Vec<f64> {
        let c = n_head * hs;
        let mut y = vec![0f64; t * c];
        for h in 0..n_head {
            for i in 0..t {
                let dot = |j: usize| {
                    (0..hs)
                        .map(|d| {
                            qkv[i * 3 * c + h * hs + d] as f64
                                * qkv[j * 3 * c + c + h * hs + d] as f64
                        })
                        .sum::<f64>()
                        / (hs as f64).sqrt()
                };
                let s: Vec<f64> = (0..=i).map(dot).collect();
                let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                let total: f64 = e.iter().sum();
                for (j, e) in e.iter().enumerate() {
                    for d in 0..hs {
                        y[i * c + h * hs + d] +=
                            e / total * qkv[j * 3 * c + 2 * c + h * hs + d] as f64;
                    }
                }
            }
        }
        y
    }

    /// Prefills of every length, followed by decode steps, on shapes whose head size
    /// and capacity are not multiples of the vector width, on every path of this CPU.
    #[test]
    fn blocks_and_steps_equal_the_definition() {
        for (n_head, hs, cap) in [(2, 8, 16), (3, 12, 13), (4, 32, 40), (1, 5, 7)] {
            let c = n_head * hs;
            let qkv = Rng::new(cap as u64).normals(cap * 3 * c);
            let want = reference(&qkv, n_head, hs, cap);
            for isa in Isa::ALL.into_iter().filter(|isa| isa.supported()) {
                for prefill in 1..=cap {
                    let mut cache = KvCache::new(1, n_head, hs, cap);
                    let mut got = cache.attend(0, &qkv[..prefill * 3 * c], prefill, isa);
                    cache.advance(prefill);
                    for i in prefill..cap {
                        got.extend(cache.attend(0, &qkv[i * 3 * c..][..3 * c], 1, isa));
                        cache.advance(1);
                    }
                    let worst = got
                        .iter()
                        .zip(&want)
                        .map(|(&g, &w)| (g as f64 - w).abs())
                        .fold(0f64, f64::max);
                    assert!(
                        worst < 1e-5,
                        "{isa} {n_head}x{hs}, prefill {prefill}: {worst}"
                    );
                }
            }
        }
    }
}
