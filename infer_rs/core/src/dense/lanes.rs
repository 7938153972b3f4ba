//! The micro-kernel, written once over a small trait of SIMD lanes, and the trait's
//! three implementations, one per instruction set (`crate::isa`):
//! - `Portable`: plain Rust, a tile row as an array of NR floats;
//! - `Avx2`: a tile row as two 8-lane ymm registers; MR rows by one tile (12 ymm
//!   accumulators: per k step, two loads of W^T, six broadcasts of x, twelve FMAs), or
//!   one row by four tiles;
//! - `Avx512`: a tile row as one 16-lane zmm register; MR rows by two tiles (12 zmm
//!   accumulators), or one row by eight tiles.
//!
//! Every implementation adds each product with one fused multiply-add per lane, so
//! every path gives each output the same chain of roundings.

use super::out::SharedOut;
use super::pack::NR;
use super::tiles::{blocked, Group, Sums};
use super::Dense;
use std::ops::Range;

/// The vector operations of the micro-kernel on one tile row (NR columns), and the
/// kernel shapes a path runs.
///
/// # Safety
/// The operations may be called only on a CPU with the path's features, and `load` and
/// `store` only with pointers valid for NR values.
pub(super) trait Lanes {
    /// The kernel shapes: MR rows by `several` tiles, or one row by `single`.
    const GROUP: Group;
    /// NR running sums.
    type Tile: Copy;
    /// One value of x in every lane.
    type Splat: Copy;
    unsafe fn zero() -> Self::Tile;
    unsafe fn load(p: *const f32) -> Self::Tile;
    unsafe fn splat(v: f32) -> Self::Splat;
    /// c + a w in every lane, rounded once.
    unsafe fn fma(a: Self::Splat, w: Self::Tile, c: Self::Tile) -> Self::Tile;
    unsafe fn store(p: *mut f32, tile: Self::Tile);
}

/// M rows by G tiles over k steps (see `blocked`): M x G tiles of running sums; per
/// step, G tile loads of the panels (`stride` values apart), M splats of x and M x G
/// tile FMAs.
///
/// # Safety
/// The CPU has L's features; x holds M rows (`ldx` apart) of k values, `panels` G
/// panels' k steps, and `sums` is as `blocked` makes it.
#[inline(always)]
unsafe fn kernel<L: Lanes, const M: usize, const G: usize>(
    x: *const f32,
    ldx: usize,
    k: usize,
    panels: *const f32,
    stride: usize,
    sums: Sums,
) {
    let mut c = [[L::zero(); G]; M];
    for (r, c) in c.iter_mut().enumerate() {
        for (p, c) in c.iter_mut().enumerate() {
            *c = L::load(sums.start.add(r * sums.start_ld + p * NR));
        }
    }
    for kk in 0..k {
        let mut w = [L::zero(); G];
        for (p, w) in w.iter_mut().enumerate() {
            *w = L::load(panels.add(p * stride + kk * NR));
        }
        for (r, c) in c.iter_mut().enumerate() {
            let a = L::splat(*x.add(r * ldx + kk));
            for (c, w) in c.iter_mut().zip(&w) {
                *c = L::fma(a, *w, *c);
            }
        }
    }
    for (r, c) in c.iter().enumerate() {
        for (p, c) in c.iter().enumerate() {
            L::store(sums.end.add(r * sums.ld + p * NR), *c);
        }
    }
}

/// A path's tile loop, `$entry`: the shared loop (`blocked`) over `kernel` on
/// `$lanes`, for each listed shape `M, G` (those `$lanes::GROUP` makes), everything
/// compiled with the path's features (`$attr`). The kernel of each shape is a function
/// of its own, `$shaped::<M, G>`, as the kernels were before they shared one body: each
/// path's tile loop then compiles to the instructions it had (by objdump, the same count
/// of every vector instruction on avx512, two vmovups fewer on avx2). Forced inline into
/// the loop instead, the avx512 loop came out at half its size.
macro_rules! path {
    ($lanes:ty, $entry:ident, $shaped:ident, [$(#[$attr:meta])*],
     $($rows:literal, $tiles:literal);*) => {
        /// `kernel` on this path, for one shape.
        ///
        /// # Safety
        /// As `kernel`.
        $(#[$attr])*
        #[inline]
        unsafe fn $shaped<const M: usize, const G: usize>(
            x: *const f32,
            ldx: usize,
            k: usize,
            panels: *const f32,
            stride: usize,
            sums: Sums,
        ) {
            kernel::<$lanes, M, G>(x, ldx, k, panels, stride, sums)
        }

        /// The tile loop on this path.
        ///
        /// # Safety
        /// The CPU has the path's features (checked when the layer was built); the
        /// caller bounds x and the tiles, as `Dense::tiles` does.
        $(#[$attr])*
        pub(in crate::dense) unsafe fn $entry(
            layer: &Dense,
            x: &[f32],
            ldx: usize,
            rows: usize,
            tiles: Range<usize>,
            y: SharedOut,
        ) {
            let kernel = |m, g, x: &[f32], ldx, k, panels: &[f32], stride, sums| {
                let (x, panels) = (x.as_ptr(), panels.as_ptr());
                // SAFETY: the CPU has the path's features (this function's contract);
                // `blocked` hands out slices that hold the m rows of x and the g panels'
                // k steps, and sums within the bias and this thread's tiles of y.
                unsafe {
                    match (m, g) {
                        $(($rows, $tiles) =>
                            $shaped::<$rows, $tiles>(x, ldx, k, panels, stride, sums),)*
                        (m, g) => unreachable!("{m} rows by {g} tiles"),
                    }
                }
            };
            blocked(layer, x, ldx, rows, tiles, y, <$lanes>::GROUP, kernel);
        }
    };
}

/// Plain Rust: the compiler vectorises what it can for the target's baseline.
pub(super) struct Portable;

impl Lanes for Portable {
    /// As the avx2 path's.
    const GROUP: Group = Group {
        several: 1,
        single: 4,
    };
    type Tile = [f32; NR];
    type Splat = f32;

    #[inline(always)]
    unsafe fn zero() -> Self::Tile {
        [0.0; NR]
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::Tile {
        p.cast::<Self::Tile>().read_unaligned()
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> f32 {
        v
    }
    #[inline(always)]
    unsafe fn fma(a: f32, w: Self::Tile, mut c: Self::Tile) -> Self::Tile {
        for (c, w) in c.iter_mut().zip(w) {
            *c = a.mul_add(w, *c);
        }
        c
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, tile: Self::Tile) {
        p.cast::<Self::Tile>().write_unaligned(tile)
    }
}

path!(Portable, tiles_portable, kernel_portable, [],
      6, 1; 5, 1; 4, 1; 3, 1; 2, 1; 1, 1; 1, 4; 1, 3; 1, 2);

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{tiles_avx2, tiles_avx512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{blocked, kernel, Dense, Group, Lanes, SharedOut, Sums};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// AVX2 with FMA: a tile row is two ymm registers.
    pub struct Avx2;

    impl Lanes for Avx2 {
        /// MR rows by one tile (12 ymm accumulators), or one row by four (8 ymm: enough
        /// independent chains for two FMA pipes of 4 cycles' latency).
        const GROUP: Group = Group {
            several: 1,
            single: 4,
        };
        type Tile = [__m256; 2];
        type Splat = __m256;

        #[inline(always)]
        unsafe fn zero() -> Self::Tile {
            [_mm256_setzero_ps(); 2]
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self::Tile {
            [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m256 {
            _mm256_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m256, w: Self::Tile, c: Self::Tile) -> Self::Tile {
            [
                _mm256_fmadd_ps(a, w[0], c[0]),
                _mm256_fmadd_ps(a, w[1], c[1]),
            ]
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, tile: Self::Tile) {
            _mm256_storeu_ps(p, tile[0]);
            _mm256_storeu_ps(p.add(8), tile[1]);
        }
    }

    // the activation's floor, min, max and divisions too as vector instructions
    path!(Avx2, tiles_avx2, kernel_avx2, [#[target_feature(enable = "avx2,fma")]],
          6, 1; 5, 1; 4, 1; 3, 1; 2, 1; 1, 1; 1, 4; 1, 3; 1, 2);

    /// AVX-512F: a tile row is one zmm register.
    pub struct Avx512;

    impl Lanes for Avx512 {
        /// MR rows by two tiles (12 zmm accumulators), or one row by eight (8 zmm:
        /// enough independent chains for two FMA pipes).
        const GROUP: Group = Group {
            several: 2,
            single: 8,
        };
        type Tile = __m512;
        type Splat = __m512;

        #[inline(always)]
        unsafe fn zero() -> __m512 {
            _mm512_setzero_ps()
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> __m512 {
            _mm512_set1_ps(v)
        }
        #[inline(always)]
        unsafe fn fma(a: __m512, w: __m512, c: __m512) -> __m512 {
            _mm512_fmadd_ps(a, w, c)
        }
        #[inline(always)]
        unsafe fn store(p: *mut f32, tile: __m512) {
            _mm512_storeu_ps(p, tile)
        }
    }

    // the activation too on 16-lane vectors
    path!(Avx512, tiles_avx512, kernel_avx512, [#[target_feature(enable = "avx512f,avx2,fma")]],
          6, 2; 5, 2; 4, 2; 3, 2; 2, 2; 1, 2;
          6, 1; 5, 1; 4, 1; 3, 1; 2, 1; 1, 1;
          1, 8; 1, 7; 1, 6; 1, 5; 1, 4; 1, 3);
}
