//! The functions a dense layer applies to x W^T + b, and the exp that they and
//! attention's softmax share. Each is plain float and bit arithmetic, without branches
//! or calls, so a loop over a tile row vectorises whole under the instruction set of
//! the function it is inlined into, and every path computes the same bits.

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

impl Activation {
    /// The activation over one tile row, in place (inlined into each instruction set's
    /// tile loop).
    #[inline(always)]
    pub(crate) fn apply<const N: usize>(self, values: &mut [f32; N]) {
        match self {
            Activation::Tanh => values.iter_mut().for_each(|v| *v = tanh(*v)),
            Activation::Relu => values.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Sigmoid => values.iter_mut().for_each(|v| *v = sigmoid(*v)),
            Activation::Gelu => values.iter_mut().for_each(|v| *v = gelu(*v)),
            Activation::Identity => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

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
}
