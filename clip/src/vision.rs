//! The vision tower: patch embedding, class token, pre-LN transformer,
//! post-LayerNorm of the class token.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::config::VisionConfig;
use crate::layers::{Encoder, EncoderShape, FusedRows, LayerNorm, Linear};

/// Outputs of the vision tower for a batch of images.
#[derive(Debug)]
pub struct VisionOutput {
    /// `[batch, patches + 1, dim]`, the last block's output (HF `last_hidden_state`).
    pub last_hidden_state: Tensor,
    /// `[batch, dim]`: the class token after `post_layernorm` (HF `pooler_output`).
    pub pooled: Tensor,
    /// With `keep_hidden`: the pre-LayerNormed embeddings and each block's output.
    pub hidden_states: Vec<Tensor>,
}

/// `vision_model.*` of an HF `CLIPModel`.
#[derive(Clone, Debug)]
pub struct VisionTransformer {
    /// The `[dim, channels, patch, patch]` patch embedding as a
    /// `[dim, channels·patch²]` linear layer over flattened patches (a
    /// convolution whose stride equals its kernel), so that the patch
    /// product takes the reduced-precision copies like every other product
    /// (with bf16 dot products its inputs are rounded too, and an image's
    /// embedding does not depend on the size of its batch).
    patch_projection: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    cfg: VisionConfig,
}

impl VisionTransformer {
    /// Loads the tower under `vb` (`vision_model`).
    pub fn new(cfg: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let p = cfg.patch_size;
        let emb = vb.pp("embeddings");
        let fan_in = (cfg.num_channels * p * p) as f64;
        let patch_embedding = emb.pp("patch_embedding").get_with_hints(
            (d, cfg.num_channels, p, p),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: fan_in.powf(-0.5),
            },
        )?;
        let scale = (d as f64).powf(-0.5);
        let class_embedding = emb.get_with_hints(
            d,
            "class_embedding",
            Init::Randn {
                mean: 0.0,
                stdev: scale,
            },
        )?;
        let position_embedding = emb.pp("position_embedding").get_with_hints(
            (cfg.num_positions(), d),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: scale,
            },
        )?;
        let shape = EncoderShape {
            dim: d,
            inner: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
            act: cfg.hidden_act,
            eps: cfg.layer_norm_eps,
        };
        let patch_projection = Linear::from_parts(
            patch_embedding.reshape((d, cfg.num_channels * p * p))?,
            None,
        );
        Ok(Self {
            patch_projection,
            class_embedding,
            position_embedding,
            pre_layrnorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(&shape, vb.pp("encoder"))?,
            post_layernorm: LayerNorm::new(d, cfg.layer_norm_eps, vb.pp("post_layernorm"))?,
            cfg: cfg.clone(),
        })
    }

    /// Runs the tower on `pixels` `[batch, channels, size, size]`.
    /// Keeps reduced-precision copies of the encoder's weights (see
    /// [`crate::Precision`]); returns their bytes.
    pub fn set_precision(&mut self, precision: crate::Precision) -> Result<usize> {
        self.patch_projection.set_query_precision(precision)?;
        Ok(self
            .encoder
            .set_query_precision(precision, FusedRows::Few)?
            + self.patch_projection.query_bytes())
    }

    /// Runs the tower.
    pub fn forward(&self, pixels: &Tensor, keep_hidden: bool) -> Result<VisionOutput> {
        let (b, c, h, w) = pixels.dims4()?;
        let (s, p) = (self.cfg.image_size, self.cfg.patch_size);
        if c != self.cfg.num_channels || h != s || w != s {
            candle_core::bail!(
                "pixel tensor is {b}x{c}x{h}x{w}, the model takes Bx{}x{s}x{s}",
                self.cfg.num_channels
            )
        }
        let g = s / p;
        let d = self.cfg.hidden_size;
        let patches = pixels
            .reshape((b, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b * g * g, c * p * p))?;
        let x = self
            .patch_projection
            .forward(&patches)?
            .reshape((b, g * g, d))?;
        let cls = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = crate::autograd::add_positions(
            &Tensor::cat(&[&cls, &x], 1)?,
            &self.position_embedding,
        )?;
        let x = self.pre_layrnorm.forward(&x)?;
        let (last, hidden_states) = self.encoder.forward(&x, None, keep_hidden)?;
        let pooled = self
            .post_layernorm
            .forward(&last.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(VisionOutput {
            last_hidden_state: last,
            pooled,
            hidden_states,
        })
    }
}
