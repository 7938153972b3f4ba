//! Fused dense layers for the small MLPs (the VAE, the WGAN generator) and the GPT:
//! y = act(x W^T + b), with W^T packed once at load time.
//!
//! Why not Candle's matmul here: at these sizes (20..784 wide, 1..1000 rows) its
//! generic GEMM, separate bias add and scalar tanh/sigmoid cost more than the math
//! (see docs/benchmarks.md). This module does one pass per layer, in parts:
//! - `pack`: W^T in panels of NR columns, the bias padded to whole panels;
//! - `tiles`: the cache-blocked tile loop, written once for every instruction set, with
//!   the bias folded into the accumulators' start and the activation
//!   (`crate::activation`) applied to a block while it is still in cache;
//! - `lanes`: the register-blocked micro-kernel, written once over a trait of SIMD lanes
//!   that each instruction set implements (portable, AVX2/FMA, AVX-512F);
//! - `threads`: how the threads share a layer (the pair of `crate::pair`, or a `grid`
//!   over rayon's pool);
//! - `out`: the output buffer those threads share.
//!
//! Every output is one chain of FMAs in k order from its bias, whichever path, thread
//! and group of tiles computes it: every path and split gives the same bits.

mod grid;
mod lanes;
mod out;
mod pack;
mod threads;
mod tiles;

use crate::activation::Activation;
use crate::error::Result;
use crate::isa::Isa;
use candle_core::Tensor;
use out::SharedOut;
use pack::Packed;
use rayon::prelude::*;
use std::borrow::Cow;
use std::ops::Range;
use threads::Split;

/// One layer: its packed weights, its activation and its instruction-set path.
pub struct Dense {
    w: Packed,
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
        Ok(Self {
            w: Packed::new(weight, bias)?,
            act,
            isa,
        })
    }

    /// y (rows, padded_out) = act(x W^T + b) for x (rows, in_dim) with row stride `ldx`,
    /// shared among the threads as `threads::split` decides (never with `parallel`
    /// false). y is not zero-filled first: the first k block of the tiles writes each of
    /// its cells before anything reads it.
    fn forward(&self, x: &[f32], ldx: usize, rows: usize, parallel: bool) -> Vec<f32> {
        let (tiles, ldy) = (self.w.tile_count(), self.w.padded_out);
        // SAFETY: each split covers every row and every column tile, so each (row,
        // tile) cell of the rows * padded_out values is written, by one thread.
        unsafe {
            SharedOut::filled(rows * ldy, |out| {
                match threads::split(&self.w, rows, parallel) {
                    Split::Pool(grid) => {
                        (0..grid.cells()).into_par_iter().for_each(|cell| {
                            let (rows, tiles) = grid.cell(cell);
                            let x = &x[rows.start * ldx..];
                            self.tiles(x, ldx, rows.len(), tiles, out.rows_from(rows.start, ldy));
                        });
                    }
                    Split::PairRows { run } => crate::pair::share(rows, run, &|range| {
                        let out = out.rows_from(range.start, ldy);
                        self.tiles(&x[range.start * ldx..], ldx, range.len(), 0..tiles, out)
                    }),
                    Split::PairTiles { run } => crate::pair::share(tiles, run, &|range| {
                        self.tiles(x, ldx, rows, range, out)
                    }),
                    Split::Alone => self.tiles(x, ldx, rows, 0..tiles, out),
                }
            })
        }
    }

    /// The given column tiles of every row, on the layer's path. (y's bounds are checked
    /// where its tiles are taken, `SharedOut::tiles`.)
    fn tiles(&self, x: &[f32], ldx: usize, rows: usize, tiles: Range<usize>, y: SharedOut) {
        assert!(x.len() >= (rows - 1) * ldx + self.w.in_dim && tiles.end <= self.w.tile_count());
        // SAFETY: the path was checked against the CPU at construction; the assert
        // bounds x and the tiles, `SharedOut::tiles` every block's part of y.
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => lanes::tiles_avx512(self, x, ldx, rows, tiles, y),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => lanes::tiles_avx2(self, x, ldx, rows, tiles, y),
                _ => lanes::tiles_portable(self, x, ldx, rows, tiles, y),
            }
        }
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
        self.layers.first().map_or(0, |l| l.w.in_dim)
    }

    /// Multiply-adds per input row: the sum of in_dim * out_dim over the layers.
    pub fn macs_per_row(&self) -> usize {
        self.layers.iter().map(|l| l.w.in_dim * l.w.out_dim).sum()
    }

    /// The output (rows, out_dim) row-major for x (rows, in_dim) row-major.
    ///
    /// Few rows (`threads::forks_once`): one hand-off to the spinning helper of `pair`
    /// for the whole call. Both threads run the early layers in full (cheap, and their
    /// weights fit both cores' caches) and each runs half of the last, widest layer,
    /// which then stays in that core's L2 from call to call.
    /// More rows: layer by layer, each split over the threads when large enough
    /// (`Dense::forward`).
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let Some((last, body)) = self.layers.split_last() else {
            return x.to_vec();
        };
        if rows == 0 {
            return Vec::new();
        }
        let (tiles, ldy) = (last.w.tile_count(), last.w.padded_out);
        let output = if threads::forks_once(rows, tiles) {
            // SAFETY: the two parts write the tiles 0..tiles / 2 and tiles / 2..tiles of
            // every row.
            unsafe {
                SharedOut::filled(rows * ldy, |out| {
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
        if ldy == last.w.out_dim {
            return output;
        }
        let mut narrow = Vec::with_capacity(rows * last.w.out_dim);
        for row in output.chunks_exact(ldy) {
            narrow.extend_from_slice(&row[..last.w.out_dim]);
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
            ld = layer.w.padded_out;
        }
        (input, ld)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
