//! Causal self-attention of the GPT over a preallocated KV cache.
//!
//! Each layer's cache holds `capacity` (= block_size) positions, allocated once per
//! generation and written in place: a decode step copies one position's keys and
//! values, so T steps cost O(T) copies, not the O(T^2) of growing tensors.
//!
//! A prefill attends in blocks of `QB` queries per head, so that each key and value
//! loaded serves every query of the block, with the sums of a block held in LANES-wide
//! accumulators (one zmm or two ymm registers each, once compiled for AVX-512 or
//! AVX2) and every product added by a fused multiply-add, on every path. Rows of keys
//! and values are padded to a multiple of LANES with zeros, so every loop runs whole
//! vectors. A query is computed with the same arithmetic in any block, so a decode
//! step (a block of one) gives the values a prefill of the same positions gives.

use crate::activation::exp_nonpositive;
use crate::isa::Isa;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::Mutex;

/// Vector width the loops are written for: 16 f32 lanes, one AVX-512 register or two
/// AVX2 registers.
const LANES: usize = 16;
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
    /// Per head: its working memory, locked by the one thread that runs the head.
    heads: Vec<Mutex<HeadWork>>,
}

/// One head's working memory, kept from call to call.
struct HeadWork {
    scratch: Scratch,
    /// The head's output (t, head_dim).
    out: Vec<f32>,
}

/// Working memory of one block of queries.
struct Scratch {
    /// The block's queries transposed: (head_dim, QB).
    queries: Vec<f32>,
    /// Scores, then softmax weights: (QB, positions).
    scores: Vec<f32>,
    /// The weights transposed: (positions, QB).
    weights: Vec<f32>,
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
            heads: (0..n_head)
                .map(|_| {
                    Mutex::new(HeadWork {
                        scratch: Scratch {
                            queries: vec![0.0; head_dim * QB],
                            scores: vec![0.0; QB * shape.positions],
                            weights: vec![0.0; shape.positions * QB],
                        },
                        out: vec![0.0; capacity * head_dim],
                    })
                })
                .collect(),
        }
    }

    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
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
    /// positions len..len + t, then return y (t - from, C) for the queries of rows
    /// from..t: for each head,
    /// y_i = sum_j softmax_j(q_i . k_j / sqrt(head_dim)) v_j over positions j <= len + i.
    /// With `heads_in_parallel`, several queries run the heads in parallel; else (and
    /// for one query) they run in turn on the caller.
    pub fn attend(
        &mut self,
        layer: usize,
        qkv: &[f32],
        t: usize,
        from: usize,
        isa: Isa,
        heads_in_parallel: bool,
    ) -> Vec<f32> {
        let (shape, start) = (self.shape, self.len);
        assert!(start + t <= shape.capacity && qkv.len() == t * 3 * shape.width() && from < t);
        self.layers[layer].store(shape, qkv, t, start);
        let cache = &self.layers[layer];
        let queries = from..t;
        let run = |h: usize| {
            let mut work = self.heads[h].lock().unwrap_or_else(|e| e.into_inner());
            let HeadWork { scratch, out } = &mut *work;
            let head = Head::new(cache, shape, h);
            #[cfg(target_arch = "x86_64")]
            match isa {
                // SAFETY: a path is only chosen on a CPU that has it.
                Isa::Avx512 => {
                    return unsafe {
                        avx512::attend(&head, qkv, queries.clone(), start, scratch, out)
                    }
                }
                Isa::Avx2 => {
                    return unsafe {
                        avx2::attend(&head, qkv, queries.clone(), start, scratch, out)
                    }
                }
                Isa::Portable => {}
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = isa; // off x86 the portable path is the only one
            attend_with(&head, qkv, queries.clone(), start, scratch, out);
        };
        if heads_in_parallel && t - from > 1 {
            for_each_in_parallel(shape.n_head, &run);
        } else {
            (0..shape.n_head).for_each(run);
        }
        // y[i - from, h * hs + d] = out_h[i, d]
        let (c, hs) = (shape.width(), shape.head_dim);
        let mut y = vec![0f32; (t - from) * c];
        for (h, work) in self.heads.iter_mut().enumerate() {
            let out = &work.get_mut().unwrap_or_else(|e| e.into_inner()).out;
            let rows = out.chunks_exact(hs).skip(from);
            for (row, o) in y.chunks_exact_mut(c).zip(rows) {
                row[h * hs..][..hs].copy_from_slice(o);
            }
        }
        y
    }
}

/// One sequence's `KvCache::attend` call in `attend_each`.
pub struct Attend<'a> {
    /// The sequence's cache.
    pub cache: &'a mut KvCache,
    /// Its t rows of [q, k, v].
    pub qkv: &'a [f32],
    /// Rows, and the first row whose output is needed.
    pub t: usize,
    pub from: usize,
}

/// `KvCache::attend` for each call, in order, in `layer`: with several calls (sequences
/// of a decoding batch) the calls share the threads and each runs its heads in turn;
/// a lone call runs its heads in parallel. The arithmetic of every output is the same
/// either way.
pub fn attend_each(calls: &mut [Attend], layer: usize, isa: Isa) -> Vec<Vec<f32>> {
    if let [one] = calls {
        return vec![one.cache.attend(layer, one.qkv, one.t, one.from, isa, true)];
    }
    let calls: Vec<Mutex<&mut Attend>> = calls.iter_mut().map(Mutex::new).collect();
    let outputs: Vec<Mutex<Vec<f32>>> = calls.iter().map(|_| Mutex::new(Vec::new())).collect();
    for_each_in_parallel(calls.len(), &|i| {
        let mut call = calls[i].lock().unwrap_or_else(|e| e.into_inner());
        let Attend {
            cache,
            qkv,
            t,
            from,
        } = &mut **call;
        let y = cache.attend(layer, qkv, *t, *from, isa, false);
        *outputs[i].lock().unwrap_or_else(|e| e.into_inner()) = y;
    });
    outputs
        .into_iter()
        .map(|y| y.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect()
}

/// job(0), ..., job(n - 1) over the threads a call may use: on the caller for one, the
/// `pair` for two, rayon's pool for more.
fn for_each_in_parallel(n: usize, job: &(dyn Fn(usize) + Sync)) {
    match rayon::current_num_threads() {
        0 | 1 => (0..n).for_each(job),
        2 => crate::pair::share(n, 1, &|jobs| jobs.for_each(job)),
        _ => (0..n).into_par_iter().for_each(job),
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
        let rows = || qkv.chunks_exact(3 * c).take(t);
        // keys_t[h hs + d][pos] = key d of head h at pos, which is column c + h hs + d of
        // qkv: one row of keys_t at a time, so the writes run along memory
        for (e, keys) in self.keys_t.chunks_exact_mut(shape.positions).enumerate() {
            for (key, row) in keys[start..start + t].iter_mut().zip(rows()) {
                *key = row[c + e];
            }
        }
        for (i, row) in rows().enumerate() {
            for h in 0..shape.n_head {
                let at = (h * shape.capacity + start + i) * shape.dims;
                self.values[at..at + hs].copy_from_slice(&row[2 * c + h * hs..][..hs]);
            }
        }
    }
}

/// One head of `KvCache::attend` into rows `queries` of `out` (t, head_dim), inlined
/// into each instruction set's wrapper: blocks of QB queries, then the rest one by one.
#[inline(always)]
fn attend_with(
    head: &Head,
    qkv: &[f32],
    queries: Range<usize>,
    start: usize,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    let mut first = queries.start;
    while first + QB <= queries.end {
        head.block::<QB>(qkv, start + first, first, scratch, out);
        first += QB;
    }
    for i in first..queries.end {
        head.block::<1>(qkv, start + i, i, scratch, out);
    }
}

/// One head of one layer's cache.
struct Head<'a> {
    shape: Shape,
    /// (head_dim, positions)
    keys_t: &'a [f32],
    /// (capacity, dims)
    values: &'a [f32],
    /// Where the head's columns start in a row of q.
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

    /// Rows row..row + B of the head's output y (t, head_dim) for the queries of the same rows of qkv, the first at
    /// position `pos`: query q sees keys 0..=pos + q (the causal mask). Every query
    /// gets the arithmetic it gets in a block of one: positions it cannot see add
    /// exact zeros.
    #[inline(always)]
    fn block<const B: usize>(
        &self,
        qkv: &[f32],
        pos: usize,
        row: usize,
        scratch: &mut Scratch,
        y: &mut [f32],
    ) {
        let (c, hs, ld) = (
            self.shape.width(),
            self.shape.head_dim,
            self.shape.positions,
        );
        let n = (pos + B).div_ceil(LANES) * LANES;
        let (queries, _) = scratch.queries[..hs * B].as_chunks_mut::<B>();
        for q in 0..B {
            let query = &qkv[(row + q) * 3 * c + self.column..][..hs];
            for (qt, &v) in queries.iter_mut().zip(query) {
                qt[q] = v;
            }
        }
        let scores = &mut scratch.scores;
        self.scores(queries, n, scores);
        let kept = n.min(self.shape.capacity); // positions past the capacity get p = 0
        let (weights, _) = scratch.weights[..kept * B].as_chunks_mut::<B>();
        for q in 0..B {
            let p = &mut scores[q * ld..][..n];
            softmax(p, pos + q + 1, self.scale);
            for (w, &p) in weights.iter_mut().zip(p.iter()) {
                w[q] = p;
            }
        }
        let out: [usize; B] = std::array::from_fn(|q| (row + q) * hs);
        self.values(weights, &out, y);
    }

    /// s[q][j] = sum_d queries[d][q] k_dj for j < n (a multiple of LANES), summed over
    /// d in order. A lone query (a decode step) has one chain of FMAs per LANES
    /// positions, which would wait on FMA latency: it runs up to four chains side by
    /// side (`spans`), each still summed over d in order, so the bits are those of a
    /// block.
    #[inline(always)]
    fn scores<const B: usize>(&self, queries: &[[f32; B]], n: usize, s: &mut [f32]) {
        if B == 1 {
            let [fours, twos, ones] = spans(0..n);
            self.scores_of::<B, 4>(queries, fours, s);
            self.scores_of::<B, 2>(queries, twos, s);
            self.scores_of::<B, 1>(queries, ones, s);
        } else {
            self.scores_of::<B, 1>(queries, 0..n, s);
        }
    }

    /// `scores` for positions `js` (whole groups of G x LANES), G groups of LANES at once.
    #[inline(always)]
    fn scores_of<const B: usize, const G: usize>(
        &self,
        queries: &[[f32; B]],
        js: Range<usize>,
        s: &mut [f32],
    ) {
        let ld = self.shape.positions;
        for j in js.step_by(G * LANES) {
            let mut acc = [[[0f32; LANES]; B]; G];
            for (keys, qd) in self.keys_t.chunks_exact(ld).zip(queries) {
                for (g, acc) in acc.iter_mut().enumerate() {
                    let k: &Lanes = keys[j + g * LANES..][..LANES].try_into().expect("LANES");
                    for (acc, &q) in acc.iter_mut().zip(qd) {
                        for l in 0..LANES {
                            acc[l] = q.mul_add(k[l], acc[l]);
                        }
                    }
                }
            }
            for (g, acc) in acc.iter().enumerate() {
                for (q, acc) in acc.iter().enumerate() {
                    s[q * ld + j + g * LANES..][..LANES].copy_from_slice(acc);
                }
            }
        }
    }

    /// y[out[q] + d] = sum_j weights[j][q] v_jd for d < head_dim, summed over j in
    /// order; a lone query's LANES-wide groups of d side by side, as in `scores`.
    #[inline(always)]
    fn values<const B: usize>(&self, weights: &[[f32; B]], out: &[usize; B], y: &mut [f32]) {
        let dims = self.shape.dims;
        if B == 1 {
            let [fours, twos, ones] = spans(0..dims);
            self.values_of::<B, 4>(weights, out, fours, y);
            self.values_of::<B, 2>(weights, out, twos, y);
            self.values_of::<B, 1>(weights, out, ones, y);
        } else {
            self.values_of::<B, 1>(weights, out, 0..dims, y);
        }
    }

    /// `values` for the dimensions `ds` (whole groups of G x LANES), G groups at once.
    #[inline(always)]
    fn values_of<const B: usize, const G: usize>(
        &self,
        weights: &[[f32; B]],
        out: &[usize; B],
        ds: Range<usize>,
        y: &mut [f32],
    ) {
        let dims = self.shape.dims;
        for d in ds.step_by(G * LANES) {
            let mut acc = [[[0f32; LANES]; B]; G];
            for (values, pj) in self.values.chunks_exact(dims).zip(weights) {
                for (g, acc) in acc.iter_mut().enumerate() {
                    let v: &Lanes = values[d + g * LANES..][..LANES].try_into().expect("LANES");
                    for (acc, &p) in acc.iter_mut().zip(pj) {
                        for l in 0..LANES {
                            acc[l] = p.mul_add(v[l], acc[l]);
                        }
                    }
                }
            }
            for (g, acc) in acc.iter().enumerate() {
                let at = d + g * LANES;
                let width = LANES.min(self.shape.head_dim.saturating_sub(at));
                for (acc, &row) in acc.iter().zip(out) {
                    y[row + at..][..width].copy_from_slice(&acc[..width]);
                }
            }
        }
    }
}

/// A range of whole LANES groups cut into runs taken four groups at a time, then two,
/// then one: a lone query's independent FMA chains side by side.
fn spans(range: Range<usize>) -> [Range<usize>; 3] {
    let len = range.end - range.start;
    let fours = range.start + len / (4 * LANES) * (4 * LANES);
    let twos = fours + (range.end - fours) / (2 * LANES) * (2 * LANES);
    [range.start..fours, fours..twos, twos..range.end]
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
    use super::{attend_with, Head, Scratch};
    use std::ops::Range;

    /// `attend_with` compiled with AVX2/FMA: a loop over LANES runs as two vectors,
    /// and each mul_add as one FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn attend(
        head: &Head,
        qkv: &[f32],
        queries: Range<usize>,
        start: usize,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) {
        attend_with(head, qkv, queries, start, scratch, out);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{attend_with, Head, Scratch};
    use std::ops::Range;

    /// `attend_with` compiled with AVX-512F: a loop over LANES runs as one vector.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn attend(
        head: &Head,
        qkv: &[f32],
        queries: Range<usize>,
        start: usize,
        scratch: &mut Scratch,
        out: &mut [f32],
    ) {
        attend_with(head, qkv, queries, start, scratch, out);
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
    /// and capacity are not multiples of the vector width, on every path of this CPU
    /// (each bit for bit equal to the portable path), with the heads on one, two (the
    /// pair) and three threads (rayon's pool).
    #[test]
    fn blocks_and_steps_equal_the_definition() {
        let pools: Vec<_> = (1..=3)
            .map(|n| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .unwrap()
            })
            .collect();
        for (n_head, hs, cap) in [(2, 8, 16), (3, 12, 13), (4, 32, 40), (1, 5, 7)] {
            let c = n_head * hs;
            let qkv = Rng::new(cap as u64).normals(cap * 3 * c);
            let want = reference(&qkv, n_head, hs, cap);
            // the first path's outputs per prefill: every other path must match its bits
            let mut first: Vec<Vec<f32>> = Vec::new();
            let paths = Isa::ALL.into_iter().filter(|isa| isa.supported());
            for (isa, pool) in paths.flat_map(|isa| pools.iter().map(move |p| (isa, p))) {
                let threads = pool.current_num_threads();
                pool.install(|| {
                    for prefill in 1..=cap {
                        let mut cache = KvCache::new(1, n_head, hs, cap);
                        let mut got =
                            cache.attend(0, &qkv[..prefill * 3 * c], prefill, 0, isa, true);
                        // the last query alone, as generation asks of the last layer
                        let mut alone = KvCache::new(1, n_head, hs, cap);
                        let last = alone.attend(
                            0,
                            &qkv[..prefill * 3 * c],
                            prefill,
                            prefill - 1,
                            isa,
                            true,
                        );
                        assert!(
                            last[..] == got[(prefill - 1) * c..],
                            "{isa}: last query alone"
                        );
                        cache.advance(prefill);
                        for i in prefill..cap {
                            got.extend(cache.attend(
                                0,
                                &qkv[i * 3 * c..][..3 * c],
                                1,
                                0,
                                isa,
                                true,
                            ));
                            cache.advance(1);
                        }
                        let worst = got
                            .iter()
                            .zip(&want)
                            .map(|(&g, &w)| (g as f64 - w).abs())
                            .fold(0f64, f64::max);
                        let case =
                            format!("{isa}, {threads} threads, {n_head}x{hs}, prefill {prefill}");
                        assert!(worst < 1e-5, "{case}: {worst}");
                        match first.get(prefill - 1) {
                            Some(bits) => assert!(*bits == got, "{case}: differs from portable"),
                            None => first.push(got),
                        }
                    }
                });
            }
        }
    }
}
