//! Fused dense layers for the small MLPs (the VAE and the WGAN generator):
//! y = act(x W^T + b), with W^T packed once at load time.
//!
//! Why not Candle's matmul here: at these sizes (20..784 wide, 1..1000 rows) its
//! generic GEMM, separate bias add and scalar tanh/sigmoid cost more than the math
//! (see docs/benchmarks.md). This module does one pass per layer:
//! - a register-blocked micro-kernel per instruction set, chosen by `crate::isa`:
//!   AVX2/FMA 6x16 (12 ymm accumulators; each k step loads two vectors of W^T,
//!   broadcasts six x values and issues twelve FMAs, or 1x64 for a single row),
//!   AVX-512 6x32 (12 zmm accumulators, or 1x128 for a single row), and a portable
//!   fallback of the same arithmetic, all under one cache-blocked tile loop
//!   (`blocked`) that gives the same bits on every path;
//! - bias folded into the accumulators' start, the activation applied to the block
//!   while it is still in cache, with a vectorisable exp-based tanh and sigmoid;
//! - two threads splitting a layer through a spinning helper (`pair`): one hand-off
//!   per call for few rows, one per layer for many, where both claim runs of rows
//!   (when W fits a core's L2) or of columns until none is left;
//! - with more than two threads and at least `POOL_MIN_ROWS` rows, each layer split
//!   into a grid of row blocks and column groups over rayon's pool (`grid`).

use crate::error::{InferError, Result};
use crate::grid::Grid;
use crate::isa::Isa;
use candle_core::Tensor;
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;

/// Output columns per micro-kernel tile (two 8-wide vectors).
const NR: usize = 16;
/// Rows per micro-kernel tile.
const MR: usize = 6;
/// Below this many multiply-adds a layer runs on one thread: the hand-off costs more.
/// A layer split over the pool gives each thread at least this many.
const PARALLEL_MIN_MACS: usize = 1 << 15;
/// Runs of rows or of column tiles a layer split over the pair is cut into, for the two
/// threads to claim one by one.
const PAIR_RUNS: usize = 8;
/// Up to this many rows, a call forks once (see `Mlp::forward`).
const SMALL_BATCH_ROWS: usize = 8;
/// From this many rows on, a layer with more than two threads allowed is split over
/// rayon's pool (`grid`), and one with two may have its rows split over the pair
/// (`Dense::pair_splits_rows`); below, the pair splits the columns.
const POOL_MIN_ROWS: usize = 64;

/// The threads a call may use: the size of rayon's pool (`crate::set_threads`, else
/// RAYON_NUM_THREADS, else one per core), or of the pool the caller runs in
/// (`rayon::ThreadPool::install`).
fn threads() -> usize {
    rayon::current_num_threads()
}

fn threads_allowed() -> bool {
    threads() >= 2
}

/// The function a layer applies to W x + b.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// tanh(v).
    Tanh,
    /// max(v, 0).
    Relu,
    /// 1 / (1 + e^-v).
    Sigmoid,
    /// GELU in its exact erf form (the GPT's MLP).
    Gelu,
    /// v unchanged.
    Identity,
}

/// One layer. W^T is packed in panels of NR columns: panel t holds rows k = 0..in_dim
/// of columns t*NR..(t+1)*NR, contiguous, so the kernel streams it front to back;
/// columns past out_dim are zero.
pub struct Dense {
    in_dim: usize,
    out_dim: usize,
    padded_out: usize,
    panels: Vec<f32>,
    bias: Vec<f32>,
    act: Activation,
    isa: Isa,
}

impl Dense {
    /// From a PyTorch-layout weight (out, in) and bias (out), on the process's path
    /// (`crate::isa()`).
    pub fn new(weight: &Tensor, bias: &Tensor, act: Activation) -> Result<Self> {
        Self::with_isa(weight, bias, act, crate::isa()?)
    }

    /// The same on a given path; an error if this CPU lacks it.
    pub fn with_isa(weight: &Tensor, bias: &Tensor, act: Activation, isa: Isa) -> Result<Self> {
        let isa = Isa::resolve(Some(isa.name()))?;
        let (out_dim, in_dim) = weight.dims2()?;
        if in_dim == 0 || out_dim == 0 {
            return Err(InferError::InvalidArgument(format!(
                "a dense layer needs inputs and outputs, got a {out_dim} x {in_dim} weight"
            )));
        }
        let w: Vec<f32> = weight.flatten_all()?.to_vec1()?;
        let padded_out = out_dim.div_ceil(NR) * NR;
        let mut panels = vec![0f32; in_dim * padded_out];
        for o in 0..out_dim {
            let (tile, j) = (o / NR, o % NR);
            for k in 0..in_dim {
                panels[(tile * in_dim + k) * NR + j] = w[o * in_dim + k];
            }
        }
        let mut b: Vec<f32> = bias.to_vec1()?;
        b.resize(padded_out, 0.0);
        Ok(Self {
            in_dim,
            out_dim,
            padded_out,
            panels,
            bias: b,
            act,
            isa,
        })
    }

    /// y (rows, padded_out) = act(x W^T + b) for x (rows, in_dim) with row stride `ldx`.
    /// y is not zero-filled first: the first k block of the tiles writes each of its
    /// cells before anything reads it.
    /// With `parallel` and at least PARALLEL_MIN_MACS multiply-adds: with more than
    /// two threads allowed and worth using (PARALLEL_MIN_MACS each) and many rows, a
    /// grid of row blocks and column groups over rayon's pool; else the rows or the
    /// column tiles (`pair_splits_rows`) shared by the two threads of `pair`.
    fn forward(&self, x: &[f32], ldx: usize, rows: usize, parallel: bool) -> Vec<f32> {
        let macs = rows * self.in_dim * self.padded_out;
        let tiles = self.tile_count();
        let threads = if parallel && macs >= PARALLEL_MIN_MACS {
            threads()
        } else {
            1
        };
        // the pool's threads worth using: at least PARALLEL_MIN_MACS multiply-adds each
        let cells = threads.min(macs / PARALLEL_MIN_MACS);
        // SAFETY: each branch covers every row and every column tile, so each (row,
        // tile) cell of the rows * padded_out values is written, by one thread.
        unsafe {
            SharedOut::filled(rows * self.padded_out, |out| {
                if threads > 2 && cells > 2 && rows >= POOL_MIN_ROWS {
                    let grid = Grid::new(rows, tiles, MR, cells);
                    (0..grid.cells()).into_par_iter().for_each(|cell| {
                        let (rows, tiles) = grid.cell(cell);
                        let x = &x[rows.start * ldx..];
                        let out = out.rows_from(rows.start, self.padded_out);
                        self.tiles(x, ldx, rows.len(), tiles, out);
                    });
                } else if threads >= 2 && self.pair_splits_rows(rows) {
                    // runs of whole row blocks
                    let run = rows.div_ceil(PAIR_RUNS).next_multiple_of(MR);
                    crate::pair::share(rows, run, &|range| {
                        let out = out.rows_from(range.start, self.padded_out);
                        self.tiles(&x[range.start * ldx..], ldx, range.len(), 0..tiles, out)
                    });
                } else if threads >= 2 && tiles >= 2 {
                    // runs of an even number of tiles keep the avx512 kernel's pairs
                    let run = tiles.div_ceil(PAIR_RUNS).next_multiple_of(2);
                    crate::pair::share(tiles, run, &|range| self.tiles(x, ldx, rows, range, out));
                } else {
                    self.tiles(x, ldx, rows, 0..tiles, out);
                }
            })
        }
    }

    /// Whether the pair splits this layer's rows rather than its columns: with many
    /// rows and panels that fit a core's L2, each thread keeps all of W there and reads
    /// only its own rows of x; else each thread keeps half of W and reads all of x.
    fn pair_splits_rows(&self, rows: usize) -> bool {
        let panel_bytes = std::mem::size_of_val(self.panels.as_slice());
        rows >= POOL_MIN_ROWS && panel_bytes <= crate::cpu::l2_bytes()
    }

    fn tile_count(&self) -> usize {
        self.padded_out / NR
    }

    /// The given column tiles of every row. (y's bounds are checked where its tiles are
    /// taken, `SharedOut::tiles`.)
    fn tiles(&self, x: &[f32], ldx: usize, rows: usize, tiles: Range<usize>, y: SharedOut) {
        assert!(x.len() >= (rows - 1) * ldx + self.in_dim && tiles.end <= self.tile_count());
        match self.isa {
            // SAFETY: the path was checked against the CPU at construction; the assert
            // bounds x and the tiles, `SharedOut::tiles` every block's part of y.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::tiles(self, x, ldx, rows, tiles, y) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::tiles(self, x, ldx, rows, tiles, y) },
            _ => {
                let kernel = |m, g, x: &[f32], ldx, k, panels: &[f32], stride, sums| {
                    // SAFETY: `block` makes `sums` as the kernel requires.
                    unsafe { kernel_portable(m, g, x, ldx, k, panels, stride, sums) }
                };
                blocked(self, x, ldx, rows, tiles, y, TILE_GROUP, kernel)
            }
        }
    }
}

/// A call's rows are cut into chunks of CHUNK_ROWS to 2 x CHUNK_ROWS rows (one chunk if
/// there are fewer), and a chunk's block of x, its rows by one k block, stays in a
/// core's L2 while W passes: 120-240 KB with the avx512 path's k blocks of 256, up to
/// 480 KB with the others' 512 (L2: 512 KB on AMD Zen 2 and 3, 1-2 MB on Zen 4 and on
/// Intel Xeons).
const CHUNK_ROWS: usize = 120;
/// The bytes of W a group's slice of one k block takes: it stays in L1 (32 KB or 48 KB
/// per core) while a chunk's rows pass, x's values streaming beside it. So k blocks are
/// 256 steps for the avx512 path's two tiles and 512 for one tile elsewhere; a call of
/// one row, which reuses no slice, is not k-blocked. (On a Zen 3,
/// blocks of 256 on the avx2 path ran a 400-deep layer 3-14% slower than one block of
/// 400, measured against the former unblocked loop in one process.)
const L1_SLICE_BYTES: usize = 32 * 1024;

/// The column tiles one kernel call covers: `several` in a call of several rows (MR at
/// a time), `single` in a call of one row, where more tiles keep more independent FMA
/// chains in flight (one row by one tile would wait on FMA latency).
#[derive(Clone, Copy)]
struct Group {
    several: usize,
    single: usize,
}

/// The groups of the avx2 path: MR rows by one tile (12 ymm accumulators), or one row
/// by four (8 ymm: enough independent chains for two FMA pipes of 4 cycles' latency).
/// The portable path, whose groups change nothing but speed, takes the same.
const TILE_GROUP: Group = Group {
    several: 1,
    single: 4,
};

/// Where the running sums of one kernel call start and end: for row r and tile p, the
/// NR sums start from `start + r * start_ld + p * NR` (the bias, with `start_ld` 0, or
/// y) and are stored at `end + r * ld + p * NR` in y.
#[derive(Clone, Copy)]
struct Sums {
    start: *const f32,
    start_ld: usize,
    end: *mut f32,
    ld: usize,
}

/// The tile loop shared by every instruction set, given its group shape and its
/// micro-kernel: `kernel(m, g, x, ldx, k, panels, stride, sums)` computes, for r < m
/// rows and p < g tiles, start[r][p][j] + sum over kk < k of
/// x[r * ldx + kk] * panels[p * stride + kk * NR + j] into end[r][p][j] (see `Sums`),
/// each sum one FMA chain in kk order.
///
/// Rows are cut into chunks (see CHUNK_ROWS) and k into blocks (see L1_SLICE_BYTES): a
/// chunk's block of x stays in L2 while every group of W's tiles passes, and a group's
/// slice of one k block stays in L1 while every row of the chunk passes. Between k
/// blocks the running sums wait in y. Each output is thus one chain of FMAs in k order
/// from its bias: every path, and any split of the rows or tiles between threads, gives
/// the same bits.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn blocked<K>(
    layer: &Dense,
    x: &[f32],
    ldx: usize,
    rows: usize,
    tiles: Range<usize>,
    y: SharedOut,
    group: Group,
    kernel: K,
) where
    K: Fn(usize, usize, &[f32], usize, usize, &[f32], usize, Sums) + Copy,
{
    let k = layer.in_dim;
    // one row reuses no slice of W: its k is not blocked
    let (width, k_block) = if rows == 1 {
        (group.single, k)
    } else {
        let slice_per_step = group.several * NR * std::mem::size_of::<f32>();
        (group.several, L1_SLICE_BYTES / slice_per_step)
    };
    // chunks as even as whole row blocks allow: a last chunk of a few rows would pass
    // all of W through L1 for little work
    let chunks = (rows / CHUNK_ROWS).max(1);
    let chunk_rows = rows.div_ceil(chunks).next_multiple_of(MR);
    for chunk in (0..rows).step_by(chunk_rows) {
        let chunk = chunk..rows.min(chunk + chunk_rows);
        for k0 in (0..k).step_by(k_block) {
            let ks = k0..k.min(k0 + k_block);
            for tile in tiles.clone().step_by(width) {
                let group = tile..tiles.end.min(tile + width);
                block(layer, x, ldx, chunk.clone(), group, ks.clone(), y, kernel);
            }
        }
    }
}

/// The k steps `ks` of the column tiles `group` for `rows`, MR rows at a time: the sums
/// start from the bias (first block) or from y, and the last block then applies the
/// activation to them in y.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn block<K>(
    layer: &Dense,
    x: &[f32],
    ldx: usize,
    rows: Range<usize>,
    group: Range<usize>,
    ks: Range<usize>,
    y: SharedOut,
    kernel: K,
) where
    K: Fn(usize, usize, &[f32], usize, usize, &[f32], usize, Sums),
{
    let (ldy, k, g) = (layer.padded_out, layer.in_dim, group.len());
    let panels = &layer.panels[(group.start * k + ks.start) * NR..];
    let bias = layer.bias[group.start * NR..group.end * NR].as_ptr();
    for row in rows.clone().step_by(MR) {
        let m = MR.min(rows.end - row);
        let end = y.tiles(row * ldy + group.start * NR, m, g, ldy);
        let sums = if ks.start == 0 {
            Sums {
                start: bias,
                start_ld: 0,
                end,
                ld: ldy,
            }
        } else {
            Sums {
                start: end,
                start_ld: ldy,
                end,
                ld: ldy,
            }
        };
        let xs = &x[row * ldx + ks.start..];
        kernel(m, g, xs, ldx, ks.len(), panels, k * NR, sums);
    }
    if ks.end == k {
        // a pass of its own, after the kernel calls, keeps the activation's constants
        // in registers for the whole block
        let end = y.tiles(rows.start * ldy + group.start * NR, rows.len(), g, ldy);
        for r in 0..rows.len() {
            for p in 0..g {
                // SAFETY: within the tiles `y.tiles` checked, which this thread alone
                // writes, and no reference to them is held elsewhere.
                let values = unsafe { &mut *end.add(r * ldy + p * NR).cast::<[f32; NR]>() };
                activate(values, layer.act);
            }
        }
    }
}

/// A raw view of the output buffer shared by the threads of one layer; each writes
/// only its own column tiles of its own rows, so the writes never overlap.
#[derive(Clone, Copy)]
struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: see `block`: writers touch disjoint ranges, and the buffer outlives the
// `SharedOut::filled` call whose threads share it.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A vector of `len` values, filled by `write` through a view of its (not
    /// zero-filled) memory.
    ///
    /// # Safety
    /// `write` must write every one of the `len` values.
    unsafe fn filled(len: usize, write: impl FnOnce(SharedOut)) -> Vec<f32> {
        let mut y = Vec::with_capacity(len);
        write(Self {
            ptr: y.as_mut_ptr(),
            len,
        });
        // SAFETY: all len values are written, by the caller's contract.
        unsafe { y.set_len(len) };
        y
    }

    /// The view of the rows from `row` on, for rows of `ld` values.
    fn rows_from(self, row: usize, ld: usize) -> Self {
        let skip = row * ld;
        assert!(skip <= self.len, "row {row} past the end of the output");
        // SAFETY: within the buffer, by the assert.
        Self {
            ptr: unsafe { self.ptr.add(skip) },
            len: self.len - skip,
        }
    }

    /// A pointer to `m` rows of `g` tiles of NR values from `at`, rows `ld` apart,
    /// checked to lie within the buffer. Only the thread that owns those cells may
    /// write through it (each cell is written by exactly one thread: threads own
    /// disjoint column ranges or disjoint rows).
    fn tiles(self, at: usize, m: usize, g: usize, ld: usize) -> *mut f32 {
        assert!(
            at + (m - 1) * ld + g * NR <= self.len,
            "tiles past the end of the output"
        );
        // SAFETY: within the buffer, by the assert.
        unsafe { self.ptr.add(at) }
    }
}

/// The micro-kernel in plain Rust (see `blocked`), one output's chain at a time.
///
/// # Safety
/// `sums` as `block` makes it: m rows of g tiles from `start` (initialised: the bias or
/// this thread's sums of the previous k block) and at `end` (this thread's tiles of y).
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_portable(
    m: usize,
    g: usize,
    x: &[f32],
    ldx: usize,
    k: usize,
    panels: &[f32],
    stride: usize,
    sums: Sums,
) {
    for r in 0..m {
        for p in 0..g {
            let mut acc = [0f32; NR];
            // SAFETY: `sums` holds these m x g tiles (the function's contract).
            unsafe {
                let start = sums.start.add(r * sums.start_ld + p * NR);
                std::ptr::copy_nonoverlapping(start, acc.as_mut_ptr(), NR);
            }
            for kk in 0..k {
                let a = x[r * ldx + kk];
                let w = &panels[p * stride + kk * NR..][..NR];
                for (s, w) in acc.iter_mut().zip(w) {
                    *s = a.mul_add(*w, *s);
                }
            }
            // SAFETY: as above.
            unsafe {
                let end = sums.end.add(r * sums.ld + p * NR);
                std::ptr::copy_nonoverlapping(acc.as_ptr(), end, NR);
            }
        }
    }
}

/// Calls `$kernel::<M, G>($args)` for the runtime shape `($m, $g)`, one of the listed
/// `M, G` pairs.
#[cfg(target_arch = "x86_64")]
macro_rules! by_shape {
    ($kernel:ident, ($m:expr, $g:expr), $args:tt, $($rows:literal, $tiles:literal);*) => {
        match ($m, $g) {
            $(($rows, $tiles) => $kernel::<$rows, $tiles> $args,)*
            (m, g) => unreachable!("{m} rows by {g} tiles"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{blocked, Dense, SharedOut, Sums, NR, TILE_GROUP};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// The shared tile loop compiled with AVX2/FMA: the micro-kernel below, and the
    /// activation's floor, min, max and divisions as vector instructions.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tiles(
        layer: &Dense,
        x: &[f32],
        ldx: usize,
        rows: usize,
        tiles: Range<usize>,
        y: SharedOut,
    ) {
        let kernel = |m, g, x: &[f32], ldx, k, panels: &[f32], stride, sums| {
            let (x, panels) = (x.as_ptr(), panels.as_ptr());
            // SAFETY: AVX2/FMA were checked at construction; `blocked` hands out
            // slices that hold the m rows of x and the g panels' k steps, and sums
            // within the bias and this thread's tiles of y.
            unsafe {
                by_shape!(kernel, (m, g), (x, ldx, k, panels, stride, sums),
                          6, 1; 5, 1; 4, 1; 3, 1; 2, 1; 1, 1; 1, 4; 1, 3; 1, 2)
            }
        };
        blocked(layer, x, ldx, rows, tiles, y, TILE_GROUP, kernel);
    }

    /// M rows by G tiles over k steps: 2 x M x G ymm accumulators; per step, 2 x G
    /// loads of the panels (`stride` values apart), M broadcasts of x and 2 x M x G FMAs.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel<const M: usize, const G: usize>(
        x: *const f32,
        ldx: usize,
        k: usize,
        panels: *const f32,
        stride: usize,
        sums: Sums,
    ) {
        let mut c = [[[_mm256_setzero_ps(); 2]; G]; M];
        for (r, c) in c.iter_mut().enumerate() {
            for (p, c) in c.iter_mut().enumerate() {
                for (h, c) in c.iter_mut().enumerate() {
                    *c = _mm256_loadu_ps(sums.start.add(r * sums.start_ld + p * NR + 8 * h));
                }
            }
        }
        for kk in 0..k {
            let mut w = [[_mm256_setzero_ps(); 2]; G];
            for (p, w) in w.iter_mut().enumerate() {
                for (h, w) in w.iter_mut().enumerate() {
                    *w = _mm256_loadu_ps(panels.add(p * stride + kk * NR + 8 * h));
                }
            }
            for (r, c) in c.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*x.add(r * ldx + kk));
                for (c, w) in c.iter_mut().zip(&w) {
                    for (c, w) in c.iter_mut().zip(w) {
                        *c = _mm256_fmadd_ps(a, *w, *c);
                    }
                }
            }
        }
        for (r, c) in c.iter().enumerate() {
            for (p, c) in c.iter().enumerate() {
                for (h, c) in c.iter().enumerate() {
                    _mm256_storeu_ps(sums.end.add(r * sums.ld + p * NR + 8 * h), *c);
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{blocked, Dense, Group, SharedOut, Sums, NR};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// MR rows by two tiles (12 zmm accumulators), or one row by eight (8 zmm: enough
    /// independent chains for two FMA pipes).
    const GROUP: Group = Group {
        several: 2,
        single: 8,
    };

    /// The shared tile loop compiled with AVX-512F: the micro-kernel below, and the
    /// activation on 16-lane vectors.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn tiles(
        layer: &Dense,
        x: &[f32],
        ldx: usize,
        rows: usize,
        tiles: Range<usize>,
        y: SharedOut,
    ) {
        let kernel = |m, g, x: &[f32], ldx, k, panels: &[f32], stride, sums| {
            let (x, panels) = (x.as_ptr(), panels.as_ptr());
            // SAFETY: AVX-512F was checked at construction; `blocked` hands out
            // slices that hold the m rows of x and the g panels' k steps, and sums
            // within the bias and this thread's tiles of y.
            unsafe {
                by_shape!(kernel, (m, g), (x, ldx, k, panels, stride, sums),
                          6, 2; 5, 2; 4, 2; 3, 2; 2, 2; 1, 2;
                          6, 1; 5, 1; 4, 1; 3, 1; 2, 1; 1, 1;
                          1, 8; 1, 7; 1, 6; 1, 5; 1, 4; 1, 3)
            }
        };
        blocked(layer, x, ldx, rows, tiles, y, GROUP, kernel);
    }

    /// M rows by G tiles over k steps: M x G zmm accumulators; per step, G loads of the
    /// panels (one per 16 columns, `stride` values apart), M broadcasts of x and M x G
    /// FMAs.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn kernel<const M: usize, const G: usize>(
        x: *const f32,
        ldx: usize,
        k: usize,
        panels: *const f32,
        stride: usize,
        sums: Sums,
    ) {
        let mut c = [[_mm512_setzero_ps(); G]; M];
        for (r, c) in c.iter_mut().enumerate() {
            for (p, c) in c.iter_mut().enumerate() {
                *c = _mm512_loadu_ps(sums.start.add(r * sums.start_ld + p * NR));
            }
        }
        for kk in 0..k {
            let mut w = [_mm512_setzero_ps(); G];
            for (p, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_ps(panels.add(p * stride + kk * NR));
            }
            for (r, c) in c.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*x.add(r * ldx + kk));
                for (c, w) in c.iter_mut().zip(&w) {
                    *c = _mm512_fmadd_ps(a, *w, *c);
                }
            }
        }
        for (r, c) in c.iter().enumerate() {
            for (p, c) in c.iter().enumerate() {
                _mm512_storeu_ps(sums.end.add(r * sums.ld + p * NR), *c);
            }
        }
    }
}

/// exp(y) for y <= 0 without branches: y = n ln2 + r, |r| <= ln2 / 2,
/// exp(r) by its degree-7 Taylor polynomial (relative error < 2e-8 there), 2^n from
/// the exponent bits. Inputs below -87 (and NaN) are clamped to -87 (exp underflows to
/// ~1e-38). Every step is a plain float or bit operation, so a loop over a tile
/// vectorises whole: 2^n is built by adding 1.5 * 2^23 to the biased exponent n + 127
/// (an integer in 2..=127 here), which leaves that integer in the low mantissa bits,
/// and shifting it into the exponent field; no float-to-int conversion.
#[inline(always)]
pub(crate) fn exp_nonpositive(y: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let y = if y > -87.0 { y } else { -87.0 };
    let n = (y * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (y - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits((n + (127.0 + ROUND)).to_bits() << 23)
}

/// tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|).
#[inline(always)]
fn tanh(x: f32) -> f32 {
    let e = exp_nonpositive(-2.0 * x.abs());
    ((1.0 - e) / (1.0 + e)).copysign(x)
}

/// sigmoid(x) = 1 / (1 + exp(-x)) for x >= 0, exp(x) / (1 + exp(x)) below.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let s = 1.0 / (1.0 + e);
    if x >= 0.0 {
        s
    } else {
        1.0 - s
    }
}

/// erf(x) as the rational function x P(x^2) / Q(x^2) of Eigen's float erf
/// (`generic_fast_erf_float`), with x clamped to [-4, 4], where erf is 1 in f32;
/// error within a few ulp.
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    for c in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_1e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5f32;
    for c in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_4e-3,
        -1.426_474e-2,
    ] {
        q = q * x2 + c;
    }
    x * p / q
}

/// gelu(x) = x / 2 (1 + erf(x / sqrt 2)).
#[inline(always)]
fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The activation over one tile row (inlined into each instruction set's tile loop).
#[inline(always)]
fn activate(values: &mut [f32; NR], act: Activation) {
    match act {
        Activation::Tanh => values.iter_mut().for_each(|v| *v = tanh(*v)),
        Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Sigmoid => values.iter_mut().for_each(|v| *v = sigmoid(*v)),
        Activation::Gelu => values.iter_mut().for_each(|v| *v = gelu(*v)),
        Activation::Identity => {}
    }
}

/// A chain of dense layers run back to back through two scratch buffers.
pub struct Mlp {
    layers: Vec<Dense>,
}

impl Mlp {
    /// The layers, applied in order.
    pub fn new(layers: Vec<Dense>) -> Self {
        Self { layers }
    }

    /// The width of an input row.
    pub fn in_dim(&self) -> usize {
        self.layers.first().map_or(0, |l| l.in_dim)
    }

    /// Multiply-adds per input row: the sum of in_dim * out_dim over the layers.
    pub fn macs_per_row(&self) -> usize {
        self.layers.iter().map(|l| l.in_dim * l.out_dim).sum()
    }

    /// The output (rows, out_dim) row-major for x (rows, in_dim) row-major.
    ///
    /// Few rows: one hand-off to the spinning helper of `pair` for the whole call. Both
    /// threads run the early layers in full (cheap, and their weights fit both cores'
    /// caches) and each runs half of the last, widest layer, which then stays in that
    /// core's L2 from call to call.
    /// More rows: layer by layer, each split over the threads when large enough
    /// (`Dense::forward`).
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let Some((last, body)) = self.layers.split_last() else {
            return x.to_vec();
        };
        if rows == 0 {
            return Vec::new();
        }
        let tiles = last.tile_count();
        let output = if rows <= SMALL_BATCH_ROWS && tiles >= 2 && threads_allowed() {
            // SAFETY: the two parts write the tiles 0..tiles / 2 and tiles / 2..tiles of
            // every row.
            unsafe {
                SharedOut::filled(rows * last.padded_out, |out| {
                    crate::pair::run_pair(&|part| {
                        let (hidden, ld) = self.run(body, x, rows, false);
                        let range = if part == 0 {
                            0..tiles / 2
                        } else {
                            tiles / 2..tiles
                        };
                        last.tiles(&hidden, ld, rows, range, out);
                    })
                })
            }
        } else {
            let (hidden, ld) = self.run(body, x, rows, true);
            last.forward(&hidden, ld, rows, true)
        };
        if last.padded_out == last.out_dim {
            return output;
        }
        let mut narrow = Vec::with_capacity(rows * last.out_dim);
        for row in output.chunks_exact(last.padded_out) {
            narrow.extend_from_slice(&row[..last.out_dim]);
        }
        narrow
    }

    /// `layers` applied to x; returns the activations and their row stride.
    fn run<'a>(
        &self,
        layers: &[Dense],
        x: &'a [f32],
        rows: usize,
        parallel: bool,
    ) -> (Cow<'a, [f32]>, usize) {
        let mut input = Cow::Borrowed(x); // the caller's rows are read in place, not copied
        let mut ld = self.in_dim();
        for layer in layers {
            input = Cow::Owned(layer.forward(&input, ld, rows, parallel));
            ld = layer.padded_out;
        }
        (input, ld)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activations_match_libm() {
        let mut worst = (0f32, 0f32);
        for i in -20_000..=20_000 {
            let x = i as f32 * 1e-3;
            worst.0 = worst.0.max((tanh(x) - x.tanh()).abs());
            worst.1 = worst.1.max((sigmoid(x) - 1.0 / (1.0 + (-x).exp())).abs());
        }
        assert!(worst.0 < 3e-7 && worst.1 < 3e-7, "max abs error {worst:?}");
        assert_eq!(tanh(100.0), 1.0);
        let grid = Tensor::arange(-10_000f32, 10_000.0, &Device::Cpu).unwrap();
        let grid = (grid * 1e-3).unwrap();
        let want: Vec<f32> = grid.gelu_erf().unwrap().to_vec1().unwrap();
        let xs: Vec<f32> = grid.to_vec1().unwrap();
        let worst_gelu = xs
            .iter()
            .zip(&want)
            .map(|(&x, &w)| (gelu(x) - w).abs() / x.abs().max(1.0))
            .fold(0f32, f32::max);
        assert!(worst_gelu < 3e-7, "gelu: error / max(|x|, 1) {worst_gelu}");
        assert_eq!(sigmoid(-200.0), 0.0);
    }

    /// A random layer of `inp` -> `out` (weight, bias) and `rows` input rows, seeded by
    /// the shape, so a failing case fails the same way on every run.
    fn random_case(rows: usize, inp: usize, out: usize) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        let mut rng = crate::rng::Rng::new((rows * 1_000_003 + inp * 1_009 + out) as u64);
        let mut normals = |shape: &[usize], std: f32| {
            let values = rng
                .normals(shape.iter().product())
                .into_iter()
                .map(|v| std * v);
            Tensor::from_vec(values.collect::<Vec<f32>>(), shape, &dev).unwrap()
        };
        (
            normals(&[out, inp], 0.2),
            normals(&[out], 0.2),
            normals(&[rows, inp], 1.0),
        )
    }

    /// The layer on every path this CPU supports.
    fn variants(w: &Tensor, b: &Tensor, act: Activation) -> Vec<(String, Dense)> {
        Isa::ALL
            .into_iter()
            .filter(|isa| isa.supported())
            .map(|isa| (isa.to_string(), Dense::with_isa(w, b, act, isa).unwrap()))
            .collect()
    }

    /// Every path, on one thread, with the pair's row or column split (2 threads) and
    /// with the grid over a pool of 3 and 4 threads (more than the cores of a small
    /// machine: oversubscribed is fine), gives the portable path's one-thread result
    /// bit for bit: every output is the same chain of FMAs from its bias in k order,
    /// whichever kernel, thread and group of tiles computes it, and the activation is
    /// the same IEEE arithmetic on every path.
    #[test]
    fn every_path_and_split_equals_portable_one_thread() {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1);
        let shapes = [
            (1, 400, 784),
            (1, 600, 40),
            (7, 33, 130),
            (64, 20, 200),
            (100, 400, 784),
            (257, 200, 40),
            (250, 520, 48),
            (70, 8, 16),
        ];
        for (rows, inp, out) in shapes {
            let (w, b, x) = random_case(rows, inp, out);
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let portable = Dense::with_isa(&w, &b, Activation::Tanh, Isa::Portable).unwrap();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            let want = bits(&one.install(|| Mlp::new(vec![portable]).forward(&x, rows)));
            for (path, layer) in variants(&w, &b, Activation::Tanh) {
                let mlp = Mlp::new(vec![layer]);
                for threads in [1, 2, 3, 4] {
                    let got = pool(threads).install(|| mlp.forward(&x, rows));
                    let case = format!("{path} {rows}x{inp}->{out}, {threads} threads");
                    assert!(bits(&got) == want, "{case}: differs from portable");
                }
            }
        }
    }

    #[test]
    fn an_empty_layer_is_refused_and_no_rows_give_no_output() {
        let dev = Device::Cpu;
        for (out, inp) in [(3, 0), (0, 3)] {
            let w = Tensor::zeros((out, inp), candle_core::DType::F32, &dev).unwrap();
            let b = Tensor::zeros(out, candle_core::DType::F32, &dev).unwrap();
            let err = Dense::new(&w, &b, Activation::Tanh)
                .err()
                .unwrap()
                .to_string();
            assert!(
                err.contains("a dense layer needs inputs and outputs"),
                "{err}"
            );
        }
        let (w, b, _) = random_case(1, 4, 20);
        let mlp = Mlp::new(vec![Dense::new(&w, &b, Activation::Tanh).unwrap()]);
        assert!(mlp.forward(&[], 0).is_empty());
    }

    #[test]
    fn layer_equals_candle_for_every_row_remainder_on_every_path() {
        for isa in Isa::ALL.into_iter().filter(|isa| !isa.supported()) {
            // straight to stderr: the test harness captures print! of passing tests
            let note = format!("dense: skipped the {isa} path: this CPU lacks it\n");
            std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes()).unwrap();
        }
        let shapes = [
            (1, 20, 200),
            (5, 33, 17),
            (7, 400, 784),
            (13, 3, 40),
            (70, 64, 130),
            (130, 300, 40),
        ];
        for (rows, inp, out) in shapes {
            let (w, b, x) = random_case(rows, inp, out);
            let expected = x
                .matmul(&w.t().unwrap())
                .unwrap()
                .broadcast_add(&b)
                .unwrap()
                .tanh()
                .unwrap();
            let want: Vec<f32> = expected.flatten_all().unwrap().to_vec1().unwrap();
            let input: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for (path, layer) in variants(&w, &b, Activation::Tanh) {
                let got = Mlp::new(vec![layer]).forward(&input, rows);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert_eq!(got.len(), want.len());
                assert!(worst < 1e-5, "{path} {rows}x{inp}->{out}: {worst}");
            }
        }
    }
}
