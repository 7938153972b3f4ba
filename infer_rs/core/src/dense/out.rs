//! A layer's output buffer, shared by the threads that compute it.

use super::pack::NR;

/// A raw view of the output buffer shared by the threads of one layer; each writes
/// only its own column tiles of its own rows, so the writes never overlap.
#[derive(Clone, Copy)]
pub(super) struct SharedOut {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: see `super::tiles::block`: writers touch disjoint ranges, and the buffer
// outlives the `SharedOut::filled` call whose threads share it.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A vector of `len` values, filled by `write` through a view of its (not
    /// zero-filled) memory.
    ///
    /// # Safety
    /// `write` must write every one of the `len` values.
    pub unsafe fn filled(len: usize, write: impl FnOnce(SharedOut)) -> Vec<f32> {
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
    pub fn rows_from(self, row: usize, ld: usize) -> Self {
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
    pub fn tiles(self, at: usize, m: usize, g: usize, ld: usize) -> *mut f32 {
        assert!(
            at + (m - 1) * ld + g * NR <= self.len,
            "tiles past the end of the output"
        );
        // SAFETY: within the buffer, by the assert.
        unsafe { self.ptr.add(at) }
    }
}
