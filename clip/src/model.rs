//! The whole CLIP: two towers, two projections and the temperature.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::ClipConfig;
use crate::layers::Linear;
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
        })
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
        let n = eot.iter().map(|p| p + 1).max().unwrap_or(1);
        let mut flat = Vec::with_capacity(ids.len() * n);
        for seq in ids {
            flat.extend(seq.iter().take(n).copied());
            flat.extend(std::iter::repeat_n(0u32, n.saturating_sub(seq.len())));
        }
        let device = self.logit_scale.device();
        let ids = Tensor::from_vec(flat, (ids.len(), n), device)?;
        let out = self.text_model.forward(&ids, &eot, None, false)?;
        self.text_projection.forward(&out.pooled)
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
