//! The contrastive objective: symmetric cross-entropy over the N×N
//! similarity logits of a batch (CLIP's InfoNCE).

use candle_core::{DType, Result, Tensor};

/// Highest temperature scale: the logit scale is clamped so that logits
/// are never multiplied by more than this (`ln 100`).
pub const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// The mean of the image→text and text→image cross-entropies of
/// `exp(logit_scale) · image · textᵀ`, where row `i` of `image` and of
/// `text` (L2-normalised embeddings) are a pair.
pub fn contrastive_loss(image: &Tensor, text: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
    let n = image.dim(0)?;
    let logits = image
        .matmul(&text.t()?)?
        .broadcast_mul(&logit_scale.to_dtype(DType::F32)?.exp()?)?;
    let labels = Tensor::arange(0u32, n as u32, image.device())?;
    let per_image = candle_nn::loss::cross_entropy(&logits, &labels)?;
    let per_text = candle_nn::loss::cross_entropy(&logits.t()?.contiguous()?, &labels)?;
    (per_image + per_text)? / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ce_by_hand(logits: &[Vec<f64>]) -> f64 {
        let n = logits.len();
        let row = |i: usize, l: &dyn Fn(usize, usize) -> f64| {
            let max = (0..n).map(|j| l(i, j)).fold(f64::MIN, f64::max);
            let lse = max + (0..n).map(|j| (l(i, j) - max).exp()).sum::<f64>().ln();
            lse - l(i, i)
        };
        let a: f64 = (0..n).map(|i| row(i, &|i, j| logits[i][j])).sum::<f64>() / n as f64;
        let b: f64 = (0..n).map(|i| row(i, &|i, j| logits[j][i])).sum::<f64>() / n as f64;
        (a + b) / 2.0
    }

    #[test]
    fn equals_the_formula_and_rewards_matching_pairs() {
        let dev = Device::Cpu;
        let img = Tensor::new(&[[1f32, 0.0], [0.6, 0.8], [0.0, 1.0]], &dev).unwrap();
        let txt = Tensor::new(&[[0.8f32, 0.6], [0.6, 0.8], [-0.6, 0.8]], &dev).unwrap();
        let scale = Tensor::new(2.0f32, &dev).unwrap();
        let got = contrastive_loss(&img, &txt, &scale)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let i = img.to_vec2::<f32>().unwrap();
        let t = txt.to_vec2::<f32>().unwrap();
        let s = 2f64.exp();
        let logits: Vec<Vec<f64>> = (0..3)
            .map(|a| {
                (0..3)
                    .map(|b| s * (0..2).map(|k| f64::from(i[a][k] * t[b][k])).sum::<f64>())
                    .collect()
            })
            .collect();
        assert!((f64::from(got) - ce_by_hand(&logits)).abs() < 1e-5, "{got}");
        // Matching pairs give a lower loss than a shuffled batch.
        let shuffled = Tensor::new(&[[0.6f32, 0.8], [-0.6, 0.8], [0.8, 0.6]], &dev).unwrap();
        let worse = contrastive_loss(&img, &shuffled, &scale)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(worse > got);
    }
}
