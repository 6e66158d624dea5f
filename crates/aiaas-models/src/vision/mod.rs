//! Image classification: photos decoded and prepared as the networks were trained
//! (`preprocess`), the convolutions of mobile networks (`conv`) and EfficientNet-Lite0
//! (`efficientnet`).

mod conv;
mod efficientnet;
mod jpeg;
mod preprocess;

pub use efficientnet::EfficientNet;
pub use preprocess::{decode, ImageError, ImagePreprocessing, Interpolation, ACCEPTED_FORMATS};

/// Probabilities from logits: exp(x − max) / Σ exp(x − max), in f64 so that the rounding of a
/// thousand small terms does not show.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits.iter().map(|&x| f64::from(x - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / total) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_the_order() {
        let p = softmax(&[1.0, 3.0, 2.0, 9.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[3] > 0.99 && p[1] > p[2] && p[2] > p[0]);
    }
}
