//! How the threads share one layer's call. With `parallel` and at least
//! PARALLEL_MIN_MACS multiply-adds:
//! - with more than two threads allowed and worth using (PARALLEL_MIN_MACS each) and
//!   many rows, a grid of row blocks and column groups over rayon's pool (`Grid`);
//! - else the rows (when W fits a core's L2) or the column tiles, cut into runs that the
//!   two threads of `crate::pair` claim one by one until none is left.
//!
//! A call of few rows to a whole chain of layers forks once instead (`forks_once`).

use super::grid::Grid;
use super::pack::Packed;
use super::tiles::MR;

/// Below this many multiply-adds a layer runs on one thread: the hand-off costs more.
/// A layer split over the pool gives each thread at least this many.
const PARALLEL_MIN_MACS: usize = 1 << 15;
/// Runs of rows or of column tiles a layer split over the pair is cut into, for the two
/// threads to claim one by one.
const PAIR_RUNS: usize = 8;
/// Up to this many rows, a call to a chain of layers forks once (see `Mlp::forward`).
const SMALL_BATCH_ROWS: usize = 8;
/// From this many rows on, a layer with more than two threads allowed is split over
/// rayon's pool, and one with two may have its rows split over the pair
/// (`pair_splits_rows`); below, the pair splits the columns.
const POOL_MIN_ROWS: usize = 64;

/// The threads a call may use: the size of rayon's pool (`crate::set_threads`, else
/// RAYON_NUM_THREADS, else one per core), or of the pool the caller runs in
/// (`rayon::ThreadPool::install`).
fn threads() -> usize {
    rayon::current_num_threads()
}

/// How one layer's call is shared.
pub(super) enum Split {
    /// One thread computes every tile.
    Alone,
    /// The cells of a grid over rayon's pool.
    Pool(Grid),
    /// Runs of `run` rows (whole row blocks) over the pair.
    PairRows { run: usize },
    /// Runs of `run` column tiles over the pair.
    PairTiles { run: usize },
}

/// The split of a call of `rows` rows to `w`; `parallel` false keeps it on one thread.
pub(super) fn split(w: &Packed, rows: usize, parallel: bool) -> Split {
    let macs = rows * w.in_dim * w.padded_out;
    let tiles = w.tile_count();
    let threads = if parallel && macs >= PARALLEL_MIN_MACS {
        threads()
    } else {
        1
    };
    // the pool's threads worth using: at least PARALLEL_MIN_MACS multiply-adds each
    let cells = threads.min(macs / PARALLEL_MIN_MACS);
    if threads > 2 && cells > 2 && rows >= POOL_MIN_ROWS {
        Split::Pool(Grid::new(rows, tiles, MR, cells))
    } else if threads >= 2 && pair_splits_rows(w, rows) {
        Split::PairRows {
            run: rows.div_ceil(PAIR_RUNS).next_multiple_of(MR),
        }
    } else if threads >= 2 && tiles >= 2 {
        // runs of an even number of tiles keep the avx512 kernel's pairs
        Split::PairTiles {
            run: tiles.div_ceil(PAIR_RUNS).next_multiple_of(2),
        }
    } else {
        Split::Alone
    }
}

/// Whether the pair splits this layer's rows rather than its columns: with many rows
/// and panels that fit a core's L2, each thread keeps all of W there and reads only its
/// own rows of x; else each thread keeps half of W and reads all of x.
fn pair_splits_rows(w: &Packed, rows: usize) -> bool {
    rows >= POOL_MIN_ROWS && w.panel_bytes() <= crate::cpu::l2_bytes()
}

/// Whether a call of `rows` rows to a chain whose last layer has `last_tiles` column
/// tiles forks once for the whole chain, each thread taking half of the last layer.
pub(super) fn forks_once(rows: usize, last_tiles: usize) -> bool {
    rows <= SMALL_BATCH_ROWS && last_tiles >= 2 && threads() >= 2
}
