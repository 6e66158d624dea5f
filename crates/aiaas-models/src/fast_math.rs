//! Element-wise math for the encoder, written so that the compiler vectorizes it: no branches,
//! no calls into libm (whose `expf`/`erff` are scalar), reductions spread over independent lanes.
//! `vectorized` runs a loop with the widest instruction set the CPU has (AVX-512, AVX2 or the
//! portable baseline), detected at run time.

/// Runs `f` compiled for the best SIMD level this CPU supports. The closure must be marked
/// `#[inline(always)]`, or it is compiled apart from the dispatch, for the baseline only.
#[inline(always)]
pub fn vectorized<R>(f: impl FnOnce() -> R) -> R {
    pulp::Arch::new().dispatch(f)
}

/// 1.5 · 2²³: adding and subtracting it rounds an f32 of magnitude below 2²² to the nearest
/// integer without a call to `roundf` (which does not vectorize on the baseline target).
const ROUNDING: f32 = 12_582_912.0;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in two so that `n · ln 2` is exact in the high part (Cody–Waite reduction).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// eˣ with a relative error below 2·10⁻⁷ (Cephes' polynomial); inputs are clamped to the
/// range where the result is a normal float.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUNDING;
    let n = shifted - ROUNDING;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2ⁿ built from `shifted`'s bits, whose low bits hold n: `n as i32` would be a saturating
    // conversion, which the compiler does one lane at a time.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDING.to_bits());
    y * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// `x.round()` (halves away from zero) for |x| < 2²³, in operations that vectorize
/// (`f32::round` is a library call on x86).
#[inline(always)]
pub fn round(x: f32) -> f32 {
    let whole = x.trunc();
    // Exact: `x` and `whole` share their exponent or `whole` is zero.
    if (x - whole).abs() >= 0.5 {
        whole + 1f32.copysign(x)
    } else {
        whole
    }
}

/// The error function, |error| < 1.5·10⁻⁷ (Abramowitz & Stegun 7.1.26).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let magnitude = 1.0 - poly * exp(-a * a);
    magnitude.copysign(x)
}

/// BERT's exact GELU, x · Φ(x).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// The sum over 16 independent partial sums, which the compiler keeps in vector lanes.
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for i in 0..16 {
            lanes[i] += chunk[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The dot product of two equally long slices, over 16 lanes like `sum`.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (chunks_a, chunks_b) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = (chunks_a.remainder().iter())
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest value (negative infinity for none), over 16 lanes like `sum`.
#[inline(always)]
pub fn max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let chunks = values.chunks_exact(16);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for chunk in chunks {
        for i in 0..16 {
            lanes[i] = lanes[i].max(chunk[i]);
        }
    }
    // Halving the lanes, rather than a fold, which the compiler keeps one lane at a time.
    for width in [8, 4, 2, 1] {
        for i in 0..width {
            lanes[i] = lanes[i].max(lanes[i + width]);
        }
    }
    lanes[0].max(tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_is_f32_round_to_the_bit() {
        let halves = [0.5f32, 1.5, 2.5, 126.5, 0.499_999_97, 0.500_000_06];
        let sweep = (-300_000..300_000).map(|i| i as f32 * 0.000_437);
        for x in halves.into_iter().flat_map(|h| [h, -h]).chain(sweep) {
            assert_eq!(round(x).to_bits(), x.round().to_bits(), "{x}");
        }
    }

    #[test]
    fn exp_is_accurate_over_the_softmax_range() {
        for i in -8700..=100 {
            let x = i as f32 / 100.0;
            let (ours, exact) = (exp(x) as f64, (x as f64).exp());
            assert!(
                ((ours - exact) / exact).abs() < 3e-7,
                "exp({x}): {ours} vs {exact}"
            );
        }
    }

    #[test]
    fn gelu_matches_candles_libm_gelu() {
        let xs: Vec<f32> = (-1000..=1000).map(|i| i as f32 / 100.0).collect();
        let exact = candle_core::Tensor::new(xs.as_slice(), &candle_core::Device::Cpu)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (x, exact) in xs.iter().zip(exact) {
            assert!(
                (gelu(*x) - exact).abs() < 1e-6,
                "gelu({x}): {} vs {exact}",
                gelu(*x)
            );
        }
    }

    #[test]
    fn sum_and_max_handle_lengths_around_the_lane_count() {
        for n in [1, 15, 16, 17, 32, 33, 384] {
            let values: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let naive: f32 = values.iter().sum();
            assert!((sum(&values) - naive).abs() < 1e-4, "{n}");
            let top = values.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&values), top, "{n}");
        }
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }
}
