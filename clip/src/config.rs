//! Model shapes: the HF `CLIPConfig` schema, OpenCLIP's `open_clip_config.json`, and presets.

use serde::{Deserialize, Serialize};

use crate::error::ClipError;

/// The MLP activation of a transformer block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI's original CLIP activation.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact GELU, `x * Φ(x)` (HF `gelu`).
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU (HF `gelu_new` / `gelu_pytorch_tanh`).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new", alias = "gelu_fast")]
    GeluTanh,
}

/// Shape of the text tower (HF `CLIPTextConfig`; defaults are HF's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    /// Number of BPE tokens.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Context length (77 for CLIP).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Id of the end-of-text token the text is pooled at. HF's legacy value 2
    /// means "pool at the largest id", which is the same for CLIP's vocabulary.
    pub eos_token_id: u32,
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

/// Shape of the vision tower (HF `CLIPVisionConfig`; defaults are HF's).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP's hidden layer.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Number of attention heads (must divide `hidden_size`).
    pub num_attention_heads: usize,
    /// Input colour channels.
    pub num_channels: usize,
    /// Side of the square input image, in pixels.
    pub image_size: usize,
    /// Side of a square patch, in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl VisionConfig {
    /// Patches along one side of the image.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens in the vision sequence: one per patch plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }
}

/// A whole CLIP: both towers and the shared embedding space. Serialises to
/// (and reads from) the HF `config.json` schema, so exported models load in
/// HF transformers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    /// The text tower.
    #[serde(default)]
    pub text_config: TextConfig,
    /// The vision tower.
    #[serde(default)]
    pub vision_config: VisionConfig,
    /// Dimension of the shared embedding space.
    #[serde(default = "default_projection_dim")]
    pub projection_dim: usize,
    /// Initial value of the learnable log-temperature (ln(1/0.07) = 2.6592).
    #[serde(default = "default_logit_scale_init")]
    pub logit_scale_init_value: f64,
}

fn default_projection_dim() -> usize {
    512
}
fn default_logit_scale_init() -> f64 {
    2.6592
}

impl ClipConfig {
    /// OpenAI's ViT-B/32 (`openai/clip-vit-base-patch32`): the real shapes.
    pub fn vit_b_32() -> Self {
        Self {
            text_config: TextConfig::default(),
            vision_config: VisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: default_logit_scale_init(),
        }
    }

    /// Parses an HF `config.json` (`CLIPConfig`). `source` names the file in errors.
    pub fn from_hf_json(json: &str, source: &str) -> Result<Self, ClipError> {
        let cfg: Self = serde_json::from_str(json).map_err(|e| ClipError::BadConfig {
            path: source.to_string(),
            reason: e.to_string(),
        })?;
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// Parses OpenCLIP's `open_clip_config.json` (`{"model_cfg": {...}}`),
    /// refusing variants this implementation does not have (timm or HF text
    /// towers, attentional pooling, ...) rather than guessing.
    pub fn from_open_clip_json(json: &str, source: &str) -> Result<Self, ClipError> {
        let bad = |reason: String| ClipError::BadConfig {
            path: source.to_string(),
            reason,
        };
        let root: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        let m = root.get("model_cfg").unwrap_or(&root);
        let (v, t) = match (m.get("vision_cfg"), m.get("text_cfg")) {
            (Some(v), Some(t)) => (v, t),
            _ => {
                return Err(bad(
                    "missing model_cfg.vision_cfg or model_cfg.text_cfg".into()
                ))
            }
        };
        for (tower, cfg, keys) in [
            (
                "vision_cfg",
                v,
                &[
                    "timm_model_name",
                    "attentional_pool",
                    "no_ln_pre",
                    "final_ln_after_pool",
                    "output_tokens",
                    "ls_init_value",
                    "patch_dropout",
                ][..],
            ),
            (
                "text_cfg",
                t,
                &["hf_model_name", "ls_init_value", "no_causal_mask"][..],
            ),
        ] {
            for k in keys {
                if cfg.get(*k).is_some_and(|x| !x.is_null() && x != false) {
                    return Err(bad(format!(
                        "{tower}.{k} is set: this OpenCLIP variant is not supported (only the standard ViT + text transformer)"
                    )));
                }
            }
        }
        for (tower, cfg, key, ok) in [
            ("vision_cfg", v, "pool_type", "tok"),
            ("text_cfg", t, "pool_type", "argmax"),
        ] {
            if let Some(p) = cfg.get(key).and_then(|x| x.as_str()) {
                if p != ok {
                    return Err(bad(format!(
                        "{tower}.{key} = '{p}' is not supported (only '{ok}')"
                    )));
                }
            }
        }
        let num =
            |c: &serde_json::Value, k: &str, default: Option<f64>| -> Result<f64, ClipError> {
                match c.get(k).and_then(|x| x.as_f64()) {
                    Some(x) => Ok(x),
                    None => default.ok_or_else(|| bad(format!("missing number '{k}'"))),
                }
            };
        let act = if m
            .get("quick_gelu")
            .and_then(|x| x.as_bool())
            .unwrap_or(false)
        {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        };
        let v_width = num(v, "width", Some(768.0))? as usize;
        let head_width = num(v, "head_width", Some(64.0))? as usize;
        let t_width = num(t, "width", Some(512.0))? as usize;
        let cfg = Self {
            vision_config: VisionConfig {
                hidden_size: v_width,
                intermediate_size: (v_width as f64 * num(v, "mlp_ratio", Some(4.0))?) as usize,
                num_hidden_layers: num(v, "layers", Some(12.0))? as usize,
                num_attention_heads: v_width / head_width.max(1),
                num_channels: 3,
                image_size: num(v, "image_size", Some(224.0))? as usize,
                patch_size: num(v, "patch_size", Some(16.0))? as usize,
                hidden_act: act,
                layer_norm_eps: 1e-5,
            },
            text_config: TextConfig {
                vocab_size: num(t, "vocab_size", Some(49408.0))? as usize,
                hidden_size: t_width,
                intermediate_size: (t_width as f64 * num(t, "mlp_ratio", Some(4.0))?) as usize,
                num_hidden_layers: num(t, "layers", Some(12.0))? as usize,
                num_attention_heads: num(t, "heads", Some(8.0))? as usize,
                max_position_embeddings: num(t, "context_length", Some(77.0))? as usize,
                hidden_act: act,
                layer_norm_eps: 1e-5,
                eos_token_id: 49407,
            },
            projection_dim: num(m, "embed_dim", None)? as usize,
            logit_scale_init_value: default_logit_scale_init(),
        };
        cfg.validate(source)?;
        Ok(cfg)
    }

    /// The HF `config.json` text for this configuration.
    pub fn to_hf_json(&self) -> String {
        let mut v = serde_json::to_value(self).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("architectures".into(), serde_json::json!(["CLIPModel"]));
            o.insert("model_type".into(), "clip".into());
            if let Some(t) = o.get_mut("text_config").and_then(|t| t.as_object_mut()) {
                t.insert("model_type".into(), "clip_text_model".into());
                t.insert("bos_token_id".into(), 49406.into());
                t.insert("pad_token_id".into(), 1.into());
                t.insert("projection_dim".into(), self.projection_dim.into());
            }
            if let Some(t) = o.get_mut("vision_config").and_then(|t| t.as_object_mut()) {
                t.insert("model_type".into(), "clip_vision_model".into());
                t.insert("projection_dim".into(), self.projection_dim.into());
            }
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }

    /// Checks the sizes are consistent (no zero sizes, heads divide widths,
    /// patches tile the image).
    pub fn validate(&self, source: &str) -> Result<(), ClipError> {
        let bad = |reason: String| {
            Err(ClipError::BadConfig {
                path: source.to_string(),
                reason,
            })
        };
        let (t, v) = (&self.text_config, &self.vision_config);
        for (name, x) in [
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.num_channels", v.num_channels),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
            ("projection_dim", self.projection_dim),
        ] {
            if x == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if t.hidden_size % t.num_attention_heads != 0 {
            return bad(format!(
                "text hidden_size {} is not divisible by num_attention_heads {}",
                t.hidden_size, t.num_attention_heads
            ));
        }
        if v.hidden_size % v.num_attention_heads != 0 {
            return bad(format!(
                "vision hidden_size {} is not divisible by num_attention_heads {}",
                v.hidden_size, v.num_attention_heads
            ));
        }
        if v.image_size % v.patch_size != 0 {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if t.max_position_embeddings < 2 {
            return bad("text context must hold at least [SOT, EOT]".into());
        }
        Ok(())
    }

    /// Every tensor an HF-layout checkpoint of this shape must contain, with
    /// its shape, in HF naming. Used to validate checkpoints with a clear
    /// message before building the model, and by the trainer to create them.
    pub fn expected_tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let (t, v) = (&self.text_config, &self.vision_config);
        let tower = |out: &mut Vec<(String, Vec<usize>)>, p: &str, d: usize, i: usize, n: usize| {
            for l in 0..n {
                let b = format!("{p}.encoder.layers.{l}");
                for x in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                    out.push((format!("{b}.self_attn.{x}.weight"), vec![d, d]));
                    out.push((format!("{b}.self_attn.{x}.bias"), vec![d]));
                }
                for x in ["layer_norm1", "layer_norm2"] {
                    out.push((format!("{b}.{x}.weight"), vec![d]));
                    out.push((format!("{b}.{x}.bias"), vec![d]));
                }
                out.push((format!("{b}.mlp.fc1.weight"), vec![i, d]));
                out.push((format!("{b}.mlp.fc1.bias"), vec![i]));
                out.push((format!("{b}.mlp.fc2.weight"), vec![d, i]));
                out.push((format!("{b}.mlp.fc2.bias"), vec![d]));
            }
        };
        let td = t.hidden_size;
        out.push((
            "text_model.embeddings.token_embedding.weight".into(),
            vec![t.vocab_size, td],
        ));
        out.push((
            "text_model.embeddings.position_embedding.weight".into(),
            vec![t.max_position_embeddings, td],
        ));
        tower(
            &mut out,
            "text_model",
            td,
            t.intermediate_size,
            t.num_hidden_layers,
        );
        out.push(("text_model.final_layer_norm.weight".into(), vec![td]));
        out.push(("text_model.final_layer_norm.bias".into(), vec![td]));
        let vd = v.hidden_size;
        out.push(("vision_model.embeddings.class_embedding".into(), vec![vd]));
        out.push((
            "vision_model.embeddings.patch_embedding.weight".into(),
            vec![vd, v.num_channels, v.patch_size, v.patch_size],
        ));
        out.push((
            "vision_model.embeddings.position_embedding.weight".into(),
            vec![v.num_positions(), vd],
        ));
        out.push(("vision_model.pre_layrnorm.weight".into(), vec![vd]));
        out.push(("vision_model.pre_layrnorm.bias".into(), vec![vd]));
        tower(
            &mut out,
            "vision_model",
            vd,
            v.intermediate_size,
            v.num_hidden_layers,
        );
        out.push(("vision_model.post_layernorm.weight".into(), vec![vd]));
        out.push(("vision_model.post_layernorm.bias".into(), vec![vd]));
        out.push((
            "visual_projection.weight".into(),
            vec![self.projection_dim, vd],
        ));
        out.push((
            "text_projection.weight".into(),
            vec![self.projection_dim, td],
        ));
        out.push(("logit_scale".into(), vec![]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_defaults_are_vit_b_32() {
        let cfg = ClipConfig::from_hf_json("{}", "x").unwrap();
        assert_eq!(cfg, ClipConfig::vit_b_32());
        assert_eq!(cfg.vision_config.num_positions(), 50);
    }

    #[test]
    fn gelu_and_sizes_are_read() {
        let json = r#"{"projection_dim": 16, "text_config": {"hidden_size": 48, "num_attention_heads": 3,
            "hidden_act": "gelu", "num_hidden_layers": 1, "intermediate_size": 96},
            "vision_config": {"hidden_size": 40, "num_attention_heads": 5, "hidden_act": "gelu",
            "image_size": 30, "patch_size": 10, "intermediate_size": 80, "num_hidden_layers": 3}}"#;
        let cfg = ClipConfig::from_hf_json(json, "x").unwrap();
        assert_eq!(cfg.text_config.hidden_act, Activation::Gelu);
        assert_eq!(cfg.vision_config.num_positions(), 10);
        let back = ClipConfig::from_hf_json(&cfg.to_hf_json(), "y").unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn inconsistent_sizes_are_refused_with_the_reason() {
        let e = ClipConfig::from_hf_json(
            r#"{"vision_config": {"image_size": 225, "patch_size": 32}}"#,
            "config.json",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("config.json") && e.contains("patch_size"), "{e}");
        let e = ClipConfig::from_hf_json(r#"{"text_config": {"hidden_act": "relu"}}"#, "c")
            .unwrap_err()
            .to_string();
        assert!(e.contains("relu"), "{e}");
    }

    #[test]
    fn open_clip_variants_are_refused() {
        let json = r#"{"model_cfg": {"embed_dim": 32, "vision_cfg": {"timm_model_name": "x"}, "text_cfg": {}}}"#;
        let e = ClipConfig::from_open_clip_json(json, "oc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("timm_model_name"), "{e}");
    }
}
