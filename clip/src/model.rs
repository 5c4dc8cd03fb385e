//! The whole CLIP: two towers, two projections and the temperature.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::ClipConfig;
use crate::layers::Linear;
use crate::precision::Precision;
use crate::text::{TextOutput, TextTransformer};
use crate::vision::{VisionOutput, VisionTransformer};

/// An HF `CLIPModel`: `text_model`, `vision_model`, `text_projection`,
/// `visual_projection` and `logit_scale`, built from any [`VarBuilder`] —
/// detached weights for inference, a `VarMap` for training.
#[derive(Clone, Debug)]
pub struct ClipModel {
    text_model: TextTransformer,
    vision_model: VisionTransformer,
    text_projection: Linear,
    visual_projection: Linear,
    logit_scale: Tensor,
    config: ClipConfig,
    query_precision: Precision,
}

impl ClipModel {
    /// Builds the model; every tensor is read from `vb` under its HF name.
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> Result<Self> {
        let (t, v, e) = (&cfg.text_config, &cfg.vision_config, cfg.projection_dim);
        Ok(Self {
            text_model: TextTransformer::new(t, vb.pp("text_model"))?,
            vision_model: VisionTransformer::new(v, vb.pp("vision_model"))?,
            text_projection: Linear::new(t.hidden_size, e, false, vb.pp("text_projection"))?,
            visual_projection: Linear::new(v.hidden_size, e, false, vb.pp("visual_projection"))?,
            logit_scale: vb.get_with_hints(
                (),
                "logit_scale",
                Init::Const(cfg.logit_scale_init_value),
            )?,
            config: cfg.clone(),
            query_precision: Precision::Fp32,
        })
    }

    /// Makes the text tower (inference only) read reduced-precision copies
    /// of its weights: `bf16` halves and `int8` quarters the bytes a query
    /// streams; `fp32` drops the copies. Returns the bytes the copies take.
    /// No check against fp32 is made here ([`crate::Clip`] makes one).
    pub fn set_query_precision(&mut self, precision: Precision) -> Result<usize> {
        let bytes = self.text_model.set_query_precision(precision)?;
        self.text_projection
            .set_query_precision_f32_inputs(precision)?;
        // A GPU's reduced precision is bf16 (see `Linear::set_query_precision`).
        self.query_precision = match precision {
            _ if self.logit_scale.device().is_cpu() => precision.resolve(),
            Precision::Fp32 => Precision::Fp32,
            _ => Precision::Bf16,
        };
        Ok(bytes + self.text_projection.query_bytes())
    }

    /// Makes the image tower (inference only) read reduced-precision copies
    /// of its weights (the same packed copies as the text tower's); returns
    /// their bytes. No check against fp32 is made here ([`crate::Clip`]
    /// makes one, on probe images).
    pub fn set_image_precision(&mut self, precision: Precision) -> Result<usize> {
        let bytes = self.vision_model.set_precision(precision)?;
        self.visual_projection
            .set_query_precision_f32_inputs(precision)?;
        Ok(bytes + self.visual_projection.query_bytes())
    }

    /// The precision text queries run in (fp32 unless set).
    pub fn query_precision(&self) -> Precision {
        self.query_precision
    }

    /// The shapes this model was built with.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The text tower.
    pub fn text_model(&self) -> &TextTransformer {
        &self.text_model
    }

    /// The learnable log-temperature (a scalar tensor).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// The vision tower's outputs for `pixels` `[batch, 3, size, size]`.
    pub fn vision_outputs(&self, pixels: &Tensor, keep_hidden: bool) -> Result<VisionOutput> {
        self.vision_model.forward(pixels, keep_hidden)
    }

    /// The text tower's outputs for `ids` `[batch, seq]`, pooled at `eot`.
    pub fn text_outputs(
        &self,
        ids: &Tensor,
        eot: &[usize],
        attention_mask: Option<&Tensor>,
        keep_hidden: bool,
    ) -> Result<TextOutput> {
        self.text_model
            .forward(ids, eot, attention_mask, keep_hidden)
    }

    /// Image embeddings before normalisation, `[batch, projection_dim]`.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let out = self.vision_model.forward(pixels, false)?;
        self.visual_projection.forward(&out.pooled)
    }

    /// Text embeddings before normalisation for token sequences of any
    /// lengths (each must contain its EOT token). Each row is run only up to
    /// the longest EOT in the batch: under the causal mask later tokens
    /// cannot change the pooled output, and this is most of a query's cost.
    pub fn text_features(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        self.text_model
            .check_ids(ids)
            .map_err(candle_core::Error::msg)?;
        let eot = self
            .text_model
            .eot_positions(ids)
            .map_err(candle_core::Error::msg)?;
        if self.text_model.is_trainable() {
            let pooled = self.text_model.pooled_packed(ids, &eot)?;
            return self.text_projection.forward(&pooled);
        }
        let n = eot.iter().map(|p| p + 1).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(ids.len() * n);
        for seq in ids {
            flat.extend(seq.iter().take(n).copied());
            flat.extend(std::iter::repeat_n(0u32, n.saturating_sub(seq.len())));
        }
        let device = self.logit_scale.device();
        let ids = Tensor::from_vec(flat, (ids.len(), n), device)?;
        crate::kernels::on_pool(|| {
            let out = self.text_model.forward(&ids, &eot, None, false)?;
            self.text_projection.forward(&out.pooled)
        })
    }

    /// Projects pooled vision features (for callers holding [`VisionOutput`]).
    pub fn project_image(&self, pooled: &Tensor) -> Result<Tensor> {
        self.visual_projection.forward(pooled)
    }

    /// Projects pooled text features (for callers holding [`TextOutput`]).
    pub fn project_text(&self, pooled: &Tensor) -> Result<Tensor> {
        self.text_projection.forward(pooled)
    }

    /// `exp(logit_scale) * image · textᵀ` for normalised embeddings: HF's
    /// `logits_per_image` (its transpose is `logits_per_text`).
    pub fn logits(&self, image_embeds: &Tensor, text_embeds: &Tensor) -> Result<Tensor> {
        let scale = self.logit_scale.to_dtype(DType::F32)?.exp()?;
        image_embeds
            .matmul(&text_embeds.t()?)?
            .broadcast_mul(&scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{l2_normalize, ClipConfig};
    use candle_core::Device;
    use candle_nn::VarMap;

    /// The training path (each caption only up to its own EOT, row-wise
    /// layers on the real tokens) gives the padded computation's result.
    #[test]
    fn packed_text_equals_padded() {
        let json = r#"{"projection_dim": 8,
            "text_config": {"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32,
                            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77},
            "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "image_size": 16, "patch_size": 8}}"#;
        let cfg = ClipConfig::from_hf_json(json, "test").unwrap();
        let varmap = VarMap::new();
        let model = ClipModel::new(
            &cfg,
            VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
        )
        .unwrap();
        assert!(model.text_model().is_trainable());
        let ids = vec![
            vec![49406, 320, 1929, 539, 320, 2368, 49407],
            vec![49406, 49407],
            vec![49406, 4, 5, 49407, 0, 0, 0],
        ];
        let eot = model.text_model().eot_positions(&ids).unwrap();
        let packed = model.text_model().pooled_packed(&ids, &eot).unwrap();
        let flat: Vec<u32> = ids
            .iter()
            .flat_map(|s| s.iter().copied().chain(std::iter::repeat(0)).take(7))
            .collect();
        let grid = Tensor::from_vec(flat, (3, 7), &Device::Cpu).unwrap();
        let padded = model
            .text_model()
            .forward(&grid, &eot, None, false)
            .unwrap()
            .pooled;
        let d = crate::test_util::max_abs_diff(&packed, &padded);
        assert!(d < 1e-5, "{d}");
    }

    /// Every parameter gets a non-zero gradient from a contrastive loss —
    /// the property candle's own CLIP lacks (its fused LayerNorm has no
    /// backward pass, leaving 89 of 142 variables without gradient).
    #[test]
    fn every_parameter_receives_a_gradient() {
        let json = r#"{"projection_dim": 8,
            "text_config": {"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32,
                            "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77},
            "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "image_size": 16, "patch_size": 8}}"#;
        let cfg = ClipConfig::from_hf_json(json, "test").unwrap();
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let model =
            ClipModel::new(&cfg, VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let pixels = Tensor::randn(0f32, 1.0, (3, 3, 16, 16), &dev).unwrap();
        // Each text contains its EOT; the position and token embeddings of
        // every position up to the longest EOT are used.
        let ids = vec![
            vec![49406, 320, 1929, 49407],
            vec![49406, 49407, 0, 0],
            vec![49406, 4, 5, 49407],
        ];
        let img = l2_normalize(&model.image_features(&pixels).unwrap()).unwrap();
        let txt = l2_normalize(&model.text_features(&ids).unwrap()).unwrap();
        let logits = model.logits(&img, &txt).unwrap();
        let labels = Tensor::new(&[0u32, 1, 2], &dev).unwrap();
        let loss = ((candle_nn::loss::cross_entropy(&logits, &labels).unwrap()
            + candle_nn::loss::cross_entropy(&logits.t().unwrap(), &labels).unwrap())
        .unwrap()
            / 2.0)
            .unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        assert_eq!(data.len(), cfg.expected_tensors().len());
        let mut missing = Vec::new();
        for (name, var) in data.iter() {
            let g = grads.get(var.as_tensor());
            let nonzero = g.is_some_and(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            });
            if !nonzero {
                missing.push(name.clone());
            }
        }
        // The token embedding's gradient is non-zero only on the rows used,
        // which is still a non-zero tensor; nothing may be left out.
        assert!(missing.is_empty(), "no gradient for {missing:?}");
    }
}
