//! The cache-blocked tile loop, written once for every instruction set: it cuts a
//! call's rows and W's k steps into blocks that stay in cache and hands each block to
//! the path's micro-kernel (`super::lanes`), then applies the activation to the block
//! while it is still in cache.

use super::out::SharedOut;
use super::pack::NR;
use super::Dense;
use std::ops::Range;

/// Rows per micro-kernel tile.
pub(super) const MR: usize = 6;

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
pub(super) struct Group {
    pub several: usize,
    pub single: usize,
}

/// Where the running sums of one kernel call start and end: for row r and tile p, the
/// NR sums start from `start + r * start_ld + p * NR` (the bias, with `start_ld` 0, or
/// y) and are stored at `end + r * ld + p * NR` in y.
#[derive(Clone, Copy)]
pub(super) struct Sums {
    pub start: *const f32,
    pub start_ld: usize,
    pub end: *mut f32,
    pub ld: usize,
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
pub(super) fn blocked<K>(
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
    let k = layer.w.in_dim;
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
    let w = &layer.w;
    let (ldy, k, g) = (w.padded_out, w.in_dim, group.len());
    let panels = &w.panels[(group.start * k + ks.start) * NR..];
    let bias = w.bias[group.start * NR..group.end * NR].as_ptr();
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
                layer.act.apply(values);
            }
        }
    }
}
