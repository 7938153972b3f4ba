//! How one dense layer's output is split among the threads of rayon's pool when the
//! batch gives more than two threads work: a grid of row blocks by column groups, at
//! most one cell per thread. A cell is a contiguous run of rows, a multiple of the
//! micro-kernel's height (so rows fall into the same micro-kernel tiles as on one
//! thread and every value is computed with the same arithmetic), by a contiguous run
//! of column tiles. Rows are split first (each cell then reads only its rows of x),
//! columns only when there are fewer row blocks than threads.

use std::ops::Range;

/// A cell spans at least this many micro-kernel row tiles, so that each weight panel
/// it streams is reused over several of them.
const MIN_ROW_TILES: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    rows: usize,
    tiles: usize,
    /// Rows per block (the last may be shorter), a multiple of the kernel's height.
    row_block: usize,
    row_parts: usize,
    col_parts: usize,
}

impl Grid {
    /// The grid of `rows` x `tiles` column tiles for `threads` threads, with row blocks
    /// a multiple of `mr` rows.
    pub fn new(rows: usize, tiles: usize, mr: usize, threads: usize) -> Self {
        let row_tiles = rows.div_ceil(mr).max(1);
        let wanted = threads.min(row_tiles.div_ceil(MIN_ROW_TILES)).max(1);
        let row_block = row_tiles.div_ceil(wanted) * mr;
        let row_parts = rows.div_ceil(row_block).max(1);
        Self {
            rows,
            tiles,
            row_block,
            row_parts,
            col_parts: (threads / row_parts).clamp(1, tiles.max(1)),
        }
    }

    pub fn cells(&self) -> usize {
        self.row_parts * self.col_parts
    }

    /// The rows and the column tiles of cell `i` (< `cells()`); column groups differ in
    /// size by at most one tile.
    pub fn cell(&self, i: usize) -> (Range<usize>, Range<usize>) {
        let (r, c) = (i / self.col_parts, i % self.col_parts);
        let rows = r * self.row_block..((r + 1) * self.row_block).min(self.rows);
        let tiles = c * self.tiles / self.col_parts..(c + 1) * self.tiles / self.col_parts;
        (rows, tiles)
    }
}

#[cfg(test)]
mod tests {
    use super::Grid;

    #[test]
    fn cells_cover_the_output_once_in_kernel_aligned_row_blocks() {
        for rows in [1, 5, 6, 63, 64, 100, 128, 1000, 4096] {
            for tiles in [1, 2, 13, 49] {
                for threads in [1, 2, 3, 4, 7, 16, 64] {
                    let grid = Grid::new(rows, tiles, 6, threads);
                    assert!(grid.cells() >= 1 && grid.cells() <= threads.max(1));
                    let mut seen = vec![0u8; rows * tiles];
                    for i in 0..grid.cells() {
                        let (r, t) = grid.cell(i);
                        assert!(r.start % 6 == 0 && !r.is_empty() && !t.is_empty());
                        for row in r {
                            for tile in t.clone() {
                                seen[row * tiles + tile] += 1;
                            }
                        }
                    }
                    let case = format!("{rows} rows, {tiles} tiles, {threads} threads");
                    assert!(seen.iter().all(|&n| n == 1), "{case}");
                }
            }
        }
    }

    #[test]
    fn many_rows_split_by_rows_few_rows_also_by_columns() {
        let grid = Grid::new(1000, 49, 6, 16);
        assert_eq!((grid.row_parts, grid.col_parts), (16, 1));
        let grid = Grid::new(100, 49, 6, 16);
        assert_eq!((grid.row_parts, grid.col_parts), (5, 3));
    }
}
