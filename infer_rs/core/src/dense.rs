//! Fused dense layers for the small MLPs (the VAE and the WGAN generator):
//! y = act(x W^T + b), with W^T packed once at load time.
//!
//! Why not Candle's matmul here: at these sizes (20..784 wide, 1..1000 rows) its
//! generic GEMM, separate bias add and scalar tanh/sigmoid cost more than the math
//! (see the README's benchmark). This module does one pass per layer:
//! - a register-blocked micro-kernel per instruction set, chosen by `crate::isa`:
//!   AVX2/FMA 6x16 (12 ymm accumulators; each k step loads two vectors of W^T,
//!   broadcasts six x values and issues twelve FMAs), AVX-512 6x32 (12 zmm
//!   accumulators, or 1x128 for a single row), and a portable fallback of the same
//!   arithmetic;
//! - bias folded into the accumulators' start, the activation applied to the block
//!   while it is still in cache, with a vectorisable exp-based tanh and sigmoid;
//! - two threads splitting a layer through a spinning helper (`pair`): one hand-off
//!   per call for few rows, one per layer for many, where both claim runs of rows
//!   (when W fits a core's L2) or of columns until none is left;
//! - with more than two threads and at least `POOL_MIN_ROWS` rows, each layer split
//!   into a grid of row blocks and column groups over rayon's pool (`grid`).

use crate::error::Result;
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

/// The threads a call may use: the size of rayon's pool (RAYON_NUM_THREADS, else one
/// per core), or of the pool the caller runs in (`rayon::ThreadPool::install`).
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
    /// y is not zero-filled first: the tiles write each of its cells once.
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
        // tile) cell of the rows * padded_out values is written, once.
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

    /// The given column tiles of every row.
    fn tiles(&self, x: &[f32], ldx: usize, rows: usize, tiles: Range<usize>, y: SharedOut) {
        assert!(x.len() >= (rows - 1) * ldx + self.in_dim && y.len >= rows * self.padded_out);
        match self.isa {
            // SAFETY: the path was checked against the CPU at construction; the assert
            // bounds every access.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::tiles(self, x, ldx, rows, tiles, y) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::tiles(self, x, ldx, rows, tiles, y) },
            _ => tiles_with(self, x, ldx, rows, tiles, y, kernel_portable),
        }
    }
}

/// acc[r][j] += sum_k x[r * ldx + k] * panel[k * NR + j] for r < m, j < NR.
type Kernel = fn(&[f32], usize, usize, usize, &[f32], &mut [[f32; NR]; MR]);

/// The tile loop shared by every instruction set: bias into the accumulators, the
/// micro-kernel, the activation, one store per tile row.
#[inline(always)]
fn tiles_with(
    layer: &Dense,
    x: &[f32],
    ldx: usize,
    rows: usize,
    tiles: Range<usize>,
    y: SharedOut,
    kernel: Kernel,
) {
    let (ldy, k) = (layer.padded_out, layer.in_dim);
    for tile in tiles {
        let col = tile * NR;
        let panel = &layer.panels[tile * k * NR..(tile + 1) * k * NR];
        let mut row = 0;
        while row < rows {
            let m = MR.min(rows - row);
            let mut acc = [[0f32; NR]; MR];
            for r in acc.iter_mut().take(m) {
                r.copy_from_slice(&layer.bias[col..col + NR]);
            }
            kernel(&x[row * ldx..], ldx, m, k, panel, &mut acc);
            for (r, values) in acc.iter_mut().take(m).enumerate() {
                activate(values, layer.act);
                // SAFETY: each (row, column tile) cell is written by exactly one thread:
                // threads own disjoint column ranges or disjoint rows (`grid`).
                unsafe { y.write((row + r) * ldy + col, values) };
            }
            row += m;
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

// SAFETY: see `tiles_with`: writers touch disjoint ranges, and the buffer
// outlives the `SharedOut::filled` call whose threads share it.
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

    /// Reads back a tile row this thread wrote (a running sum between k blocks).
    ///
    /// # Safety
    /// As for `write`.
    unsafe fn read(self, at: usize, values: &mut [f32; NR]) {
        debug_assert!(at + NR <= self.len, "tile past the end of the output");
        std::ptr::copy_nonoverlapping(self.ptr.add(at), values.as_mut_ptr(), NR);
    }

    /// # Safety
    /// `at + NR <= len` (`Dense::tiles` checks the whole output once per call), and no
    /// other thread writes `at..at + NR` concurrently.
    unsafe fn write(self, at: usize, values: &[f32; NR]) {
        debug_assert!(at + NR <= self.len, "tile past the end of the output");
        std::ptr::copy_nonoverlapping(values.as_ptr(), self.ptr.add(at), NR);
    }
}

fn kernel_portable(
    x: &[f32],
    ldx: usize,
    m: usize,
    k: usize,
    panel: &[f32],
    acc: &mut [[f32; NR]; MR],
) {
    for (r, acc_row) in acc.iter_mut().enumerate().take(m) {
        for kk in 0..k {
            let a = x[r * ldx + kk];
            let w = &panel[kk * NR..(kk + 1) * NR];
            for j in 0..NR {
                acc_row[j] = a.mul_add(w[j], acc_row[j]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{tiles_with, Dense, SharedOut, MR, NR};
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
        tiles_with(layer, x, ldx, rows, tiles, y, |x, ldx, m, k, panel, acc| {
            // SAFETY: this closure runs inside `tiles`, where AVX2/FMA are enabled;
            // `Dense::tiles` checked the bounds of x, and a panel holds k * NR values.
            unsafe { kernel(x, ldx, m, k, panel, acc) }
        });
    }

    /// The 6x16 micro-kernel: 12 accumulators in ymm registers; per k, two loads of the
    /// panel, m broadcasts of x and 2m FMAs.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel(
        x: &[f32],
        ldx: usize,
        m: usize,
        k: usize,
        panel: &[f32],
        acc: &mut [[f32; NR]; MR],
    ) {
        let mut c = [[_mm256_setzero_ps(); 2]; MR];
        for r in 0..m {
            c[r][0] = _mm256_loadu_ps(acc[r].as_ptr());
            c[r][1] = _mm256_loadu_ps(acc[r].as_ptr().add(8));
        }
        let xp = x.as_ptr();
        let wp = panel.as_ptr();
        macro_rules! rows {
            ($($r:literal)*) => {
                for kk in 0..k {
                    let w0 = _mm256_loadu_ps(wp.add(kk * NR));
                    let w1 = _mm256_loadu_ps(wp.add(kk * NR + 8));
                    $(
                        let a = _mm256_broadcast_ss(&*xp.add($r * ldx + kk));
                        c[$r][0] = _mm256_fmadd_ps(a, w0, c[$r][0]);
                        c[$r][1] = _mm256_fmadd_ps(a, w1, c[$r][1]);
                    )*
                }
            };
        }
        if m == 1 {
            return row_kernel(xp, k, wp, acc);
        }
        match m {
            6 => rows!(0 1 2 3 4 5),
            5 => rows!(0 1 2 3 4),
            4 => rows!(0 1 2 3),
            3 => rows!(0 1 2),
            2 => rows!(0 1),
            _ => rows!(0),
        }
        for r in 0..m {
            _mm256_storeu_ps(acc[r].as_mut_ptr(), c[r][0]);
            _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), c[r][1]);
        }
    }

    /// One row: with two accumulators the FMA latency (4 cycles) would bound the loop,
    /// so four interleaved k phases keep eight independent chains in flight, summed at
    /// the end.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn row_kernel(xp: *const f32, k: usize, wp: *const f32, acc: &mut [[f32; NR]; MR]) {
        let mut c = [[_mm256_setzero_ps(); 2]; 4];
        c[0][0] = _mm256_loadu_ps(acc[0].as_ptr());
        c[0][1] = _mm256_loadu_ps(acc[0].as_ptr().add(8));
        let full = k - k % 4;
        let mut kk = 0;
        while kk < full {
            for (p, cp) in c.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*xp.add(kk + p));
                cp[0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wp.add((kk + p) * NR)), cp[0]);
                cp[1] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wp.add((kk + p) * NR + 8)), cp[1]);
            }
            kk += 4;
        }
        for kk in full..k {
            let a = _mm256_broadcast_ss(&*xp.add(kk));
            c[0][0] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wp.add(kk * NR)), c[0][0]);
            c[0][1] = _mm256_fmadd_ps(a, _mm256_loadu_ps(wp.add(kk * NR + 8)), c[0][1]);
        }
        for (h, out) in acc[0].chunks_exact_mut(8).enumerate() {
            let sum = _mm256_add_ps(
                _mm256_add_ps(c[0][h], c[1][h]),
                _mm256_add_ps(c[2][h], c[3][h]),
            );
            _mm256_storeu_ps(out.as_mut_ptr(), sum);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{activate, Dense, SharedOut, MR, NR};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Most accumulator tiles of NR values one kernel call holds: MR rows by two
    /// panels, or one row by WIDE panels.
    const SLOTS: usize = 12;
    /// Panels one call covers for a single row: eight 16-wide chains keep both FMA
    /// pipes busy, where one row by two panels would wait on FMA latency.
    const WIDE: usize = 8;
    /// A call's rows are cut into chunks of CHUNK_ROWS to 2 x CHUNK_ROWS rows (one chunk
    /// if there are fewer): 2 x CHUNK_ROWS x K_BLOCK values of x (240 KB) fit any L2 of
    /// a core with AVX-512.
    const CHUNK_ROWS: usize = 120;
    /// k per block: two panels' slice, K_BLOCK x 32 values (32 KB), fits a 48 KB L1.
    const K_BLOCK: usize = 256;

    /// The tile loop of the avx512 path: column tiles two at a time (six rows by 32
    /// columns: 12 zmm accumulators), or eight at a time when the call has one row.
    /// Rows are cut into chunks (see CHUNK_ROWS) and k into blocks of K_BLOCK: a chunk's
    /// x block stays in L2 while every tile pair of W passes, and the two panels' slice
    /// of one k block stays in L1 while every row of the chunk passes.
    /// Between k blocks the running sums wait in y. Each output is still one chain of
    /// FMAs in k order from its bias, as on the other paths' multi-row kernel, so any
    /// split of the tiles gives the same bits.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub unsafe fn tiles(
        layer: &Dense,
        x: &[f32],
        ldx: usize,
        rows: usize,
        tiles: Range<usize>,
        y: SharedOut,
    ) {
        let k = layer.in_dim;
        let width = if rows == 1 { WIDE } else { 2 };
        // chunks as even as whole row blocks allow: a last chunk of a few rows would
        // pass all of W through L1 for little work
        let chunks = (rows / CHUNK_ROWS).max(1);
        let chunk_rows = rows.div_ceil(chunks).next_multiple_of(MR);
        for chunk in (0..rows).step_by(chunk_rows) {
            let chunk = chunk..rows.min(chunk + chunk_rows);
            for k0 in (0..k).step_by(K_BLOCK) {
                let ks = k0..k.min(k0 + K_BLOCK);
                for tile in tiles.clone().step_by(width) {
                    let group = tile..tiles.end.min(tile + width);
                    block(layer, x, ldx, chunk.clone(), group, ks.clone(), y);
                }
            }
        }
    }

    /// The k steps `ks` of the column tiles `group` for `rows`, MR rows at a time: the
    /// sums start from the bias (first block) or from y, and the last block applies
    /// the activation.
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn block(
        layer: &Dense,
        x: &[f32],
        ldx: usize,
        rows: Range<usize>,
        group: Range<usize>,
        ks: Range<usize>,
        y: SharedOut,
    ) {
        let (ldy, k, g) = (layer.padded_out, layer.in_dim, group.len());
        let (first, last) = (ks.start == 0, ks.end == k);
        let panels = layer.panels[(group.start * k + ks.start) * NR..].as_ptr();
        for row in rows.clone().step_by(MR) {
            let m = MR.min(rows.end - row);
            let mut acc = [[0f32; NR]; SLOTS];
            for r in 0..m {
                for (p, tile) in group.clone().enumerate() {
                    let at = (row + r) * ldy + tile * NR;
                    if first {
                        acc[r * g + p].copy_from_slice(&layer.bias[tile * NR..(tile + 1) * NR]);
                    } else {
                        y.read(at, &mut acc[r * g + p]);
                    }
                }
            }
            let xp = x[row * ldx + ks.start..].as_ptr();
            macro_rules! call {
                ($($m:literal, $g:literal);*) => {
                    match (m, g) {
                        $(($m, $g) => kernel::<$m, $g>(xp, ldx, ks.len(), panels, k * NR, &mut acc),)*
                        _ => unreachable!("{m} rows by {g} panels"),
                    }
                };
            }
            call!(6, 2; 5, 2; 4, 2; 3, 2; 2, 2; 1, 2;
                  6, 1; 5, 1; 4, 1; 3, 1; 2, 1; 1, 1;
                  1, 8; 1, 7; 1, 6; 1, 5; 1, 4; 1, 3);
            for r in 0..m {
                for (p, tile) in group.clone().enumerate() {
                    let values = &mut acc[r * g + p];
                    if last {
                        activate(values, layer.act);
                    }
                    // SAFETY: each (row, column tile) cell is written by exactly one
                    // thread: threads own disjoint column ranges or disjoint rows.
                    unsafe { y.write((row + r) * ldy + tile * NR, values) };
                }
            }
        }
    }

    /// M rows by G panels over k steps: M x G zmm accumulators (`acc[r * G + p]`); per
    /// step, G loads of the panels (one per 16 columns, `stride` values apart), M
    /// broadcasts of x and M x G FMAs.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn kernel<const M: usize, const G: usize>(
        x: *const f32,
        ldx: usize,
        k: usize,
        panels: *const f32,
        stride: usize,
        acc: &mut [[f32; NR]; SLOTS],
    ) {
        let mut c = [[_mm512_setzero_ps(); G]; M];
        for r in 0..M {
            for p in 0..G {
                c[r][p] = _mm512_loadu_ps(acc[r * G + p].as_ptr());
            }
        }
        for kk in 0..k {
            let mut w = [_mm512_setzero_ps(); G];
            for (p, w) in w.iter_mut().enumerate() {
                *w = _mm512_loadu_ps(panels.add(p * stride + kk * NR));
            }
            for (r, c) in c.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*x.add(r * ldx + kk));
                for p in 0..G {
                    c[p] = _mm512_fmadd_ps(a, w[p], c[p]);
                }
            }
        }
        for r in 0..M {
            for p in 0..G {
                _mm512_storeu_ps(acc[r * G + p].as_mut_ptr(), c[r][p]);
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

    /// A random layer of `inp` -> `out` (weight, bias) and `rows` input rows.
    fn random_case(rows: usize, inp: usize, out: usize) -> (Tensor, Tensor, Tensor) {
        let dev = Device::Cpu;
        (
            Tensor::randn(0f32, 0.2, (out, inp), &dev).unwrap(),
            Tensor::randn(0f32, 0.2, out, &dev).unwrap(),
            Tensor::randn(0f32, 1.0, (rows, inp), &dev).unwrap(),
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

    /// The pair's column split (2 threads) and the grid over a pool of 3 and 4 threads
    /// (more than the cores of a small machine: oversubscribed is fine) give the
    /// one-thread result bit for bit on every path: every output is the same chain of
    /// FMAs whichever thread, and whichever group of tiles, computes it.
    #[test]
    fn pool_split_equals_one_thread_on_every_path() {
        let pool = |n| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
        };
        let one = pool(1);
        let shapes = [
            (1, 400, 784),
            (7, 33, 130),
            (64, 20, 200),
            (100, 400, 784),
            (257, 200, 40),
            (70, 8, 16),
        ];
        for (rows, inp, out) in shapes {
            let (w, b, x) = random_case(rows, inp, out);
            let x: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            for (path, layer) in variants(&w, &b, Activation::Tanh) {
                let mlp = Mlp::new(vec![layer]);
                let want = one.install(|| mlp.forward(&x, rows));
                for threads in [2, 3, 4] {
                    let got = pool(threads).install(|| mlp.forward(&x, rows));
                    let case = format!("{path} {rows}x{inp}->{out}, {threads} threads");
                    assert!(got == want, "{case}: differs from one thread");
                }
            }
        }
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
