//! Reading a model directory: layout detection, config, weights (converted
//! from OpenCLIP naming on load) and preprocessing recipe, all validated
//! with messages that name the file and the tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use glimpse_config::{PreprocessConfig, OPENAI_MEAN, OPENAI_STD};

use crate::config::ClipConfig;
use crate::error::ClipError;

/// How a checkpoint names its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// HF transformers `CLIPModel`: `config.json` + `model.safetensors`.
    HuggingFace,
    /// OpenAI / OpenCLIP naming: `open_clip_config.json` + `open_clip_model.safetensors`.
    OpenClip,
}

/// The files of one model directory.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// The directory.
    pub dir: PathBuf,
    /// Which naming its weights use.
    pub layout: Layout,
    /// `config.json` or `open_clip_config.json`.
    pub config: PathBuf,
    /// The safetensors weights.
    pub weights: PathBuf,
}

impl ModelFiles {
    /// Finds the model files in `dir` (HF layout first, then OpenCLIP, also
    /// in an `open_clip/` subdirectory).
    pub fn detect(dir: &Path) -> Result<Self, ClipError> {
        if !dir.exists() {
            return Err(ClipError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such model directory (give a directory holding config.json + model.safetensors, or a hub id like openai/clip-vit-base-patch32)",
                ),
            });
        }
        if !dir.is_dir() {
            return Err(ClipError::NoWeights {
                dir: dir.to_path_buf(),
            });
        }
        let hf = (dir.join("config.json"), dir.join("model.safetensors"));
        if hf.0.is_file() && hf.1.is_file() {
            return Ok(Self {
                dir: dir.to_path_buf(),
                layout: Layout::HuggingFace,
                config: hf.0,
                weights: hf.1,
            });
        }
        for d in [dir.to_path_buf(), dir.join("open_clip")] {
            let oc = (
                d.join("open_clip_config.json"),
                d.join("open_clip_model.safetensors"),
            );
            if oc.0.is_file() && oc.1.is_file() {
                return Ok(Self {
                    dir: d,
                    layout: Layout::OpenClip,
                    config: oc.0,
                    weights: oc.1,
                });
            }
        }
        if dir.join("pytorch_model.bin").is_file()
            || dir.join("open_clip_pytorch_model.bin").is_file()
        {
            return Err(ClipError::PickleOnly {
                what: dir.display().to_string(),
            });
        }
        Err(ClipError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// Reads and validates the model configuration.
    pub fn config(&self) -> Result<ClipConfig, ClipError> {
        let text = read_text(&self.config)?;
        let name = self.config.display().to_string();
        match self.layout {
            Layout::HuggingFace => ClipConfig::from_hf_json(&text, &name),
            Layout::OpenClip => ClipConfig::from_open_clip_json(&text, &name),
        }
    }

    /// Reads the preprocessing recipe: `preprocessor_config.json` (HF) or the
    /// `preprocess_cfg` of `open_clip_config.json`; OpenAI's mean/std at the
    /// model's image size when the directory has none.
    pub fn preprocess(&self, cfg: &ClipConfig) -> Result<PreprocessConfig, ClipError> {
        let size = cfg.vision_config.image_size;
        let mut out = PreprocessConfig::openai(size);
        let (path, keys) = match self.layout {
            Layout::HuggingFace => (
                self.dir.join("preprocessor_config.json"),
                ("image_mean", "image_std"),
            ),
            Layout::OpenClip => (self.config.clone(), ("mean", "std")),
        };
        if !path.is_file() {
            return Ok(out);
        }
        let bad = |reason: String| ClipError::BadConfig {
            path: path.display().to_string(),
            reason,
        };
        let v: serde_json::Value =
            serde_json::from_str(&read_text(&path)?).map_err(|e| bad(e.to_string()))?;
        let v = if self.layout == Layout::OpenClip {
            match v.get("preprocess_cfg") {
                Some(p) => p.clone(),
                None => return Ok(out),
            }
        } else {
            v
        };
        let triple = |key: &str, default: [f32; 3]| -> Result<[f32; 3], ClipError> {
            match v.get(key) {
                None => Ok(default),
                Some(x) => {
                    let xs: Vec<f32> = serde_json::from_value(x.clone())
                        .map_err(|e| bad(format!("{key}: {e}")))?;
                    match xs.as_slice() {
                        [a, b, c] => Ok([*a, *b, *c]),
                        _ => Err(bad(format!("{key} must have 3 values, has {}", xs.len()))),
                    }
                }
            }
        };
        out.mean = triple(keys.0, OPENAI_MEAN)?;
        out.std = triple(keys.1, OPENAI_STD)?;
        if out.std.iter().any(|s| *s <= 0.0) {
            return Err(bad("std values must be positive".into()));
        }
        // The sizes the recipe resizes and crops to must be the model's input size.
        let sizes: Vec<(&str, Option<u64>)> = match self.layout {
            Layout::HuggingFace => vec![
                (
                    "size.shortest_edge",
                    v.pointer("/size/shortest_edge").and_then(|x| x.as_u64()),
                ),
                (
                    "crop_size.height",
                    v.pointer("/crop_size/height").and_then(|x| x.as_u64()),
                ),
                (
                    "crop_size.width",
                    v.pointer("/crop_size/width").and_then(|x| x.as_u64()),
                ),
            ],
            Layout::OpenClip => vec![("size", v.get("size").and_then(|x| x.as_u64()))],
        };
        for (key, value) in sizes {
            if let Some(s) = value {
                if s as usize != size {
                    return Err(bad(format!(
                        "{key} is {s} but the model's image_size is {size}; Glimpse resizes the shortest side to the input size and centre-crops"
                    )));
                }
            }
        }
        Ok(out)
    }

    /// Loads every weight, converted to HF names and f32 on `device`, and
    /// checks each against `cfg`: a missing or mis-shaped tensor is an error
    /// naming it — nothing is ever substituted.
    pub fn weights(
        &self,
        cfg: &ClipConfig,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>, ClipError> {
        let path = self.weights.display().to_string();
        let bad = |reason: String| ClipError::BadWeights {
            path: path.clone(),
            reason,
        };
        // SAFETY: the file is mapped read-only and copied into tensors before
        // this function returns; a file truncated meanwhile fails the copy.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(&self.weights) }
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
        let load = |name: &str| -> Result<Tensor, ClipError> {
            st.load(name, device)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| bad(format!("tensor '{name}' cannot be read ({e})")))
        };
        let mut map = HashMap::new();
        match self.layout {
            Layout::HuggingFace => {
                for (name, _) in cfg.expected_tensors() {
                    if names.iter().any(|n| n == &name) {
                        map.insert(name.clone(), load(&name)?);
                    }
                }
            }
            Layout::OpenClip => {
                for name in &names {
                    for (hf_name, tensor) in
                        open_clip_to_hf(name, load(name)?, cfg).map_err(&bad)?
                    {
                        map.insert(hf_name, tensor);
                    }
                }
            }
        }
        validate(&map, cfg, self.layout).map_err(bad)?;
        Ok(map)
    }
}

fn read_text(path: &Path) -> Result<String, ClipError> {
    std::fs::read_to_string(path).map_err(|source| ClipError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Checks that `map` holds every tensor of `cfg` with the right shape.
fn validate(map: &HashMap<String, Tensor>, cfg: &ClipConfig, layout: Layout) -> Result<(), String> {
    for (name, shape) in cfg.expected_tensors() {
        let shown = match layout {
            Layout::HuggingFace => name.clone(),
            Layout::OpenClip => format!("{name} (HF name; converted from OpenCLIP naming)"),
        };
        match map.get(&name) {
            None => return Err(format!("missing tensor '{shown}' (expected shape {shape:?}); the file is incomplete or not a CLIP of this config")),
            Some(t) if t.dims() != shape.as_slice() => {
                return Err(format!(
                    "tensor '{shown}' has shape {:?} but the config implies {shape:?}",
                    t.dims()
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Converts one OpenCLIP tensor to its HF name(s): fused `in_proj` is split
/// into q/k/v, `proj` matrices (used as `x @ proj`) are transposed, buffers
/// such as `attn_mask` are dropped.
fn open_clip_to_hf(
    name: &str,
    t: Tensor,
    cfg: &ClipConfig,
) -> Result<Vec<(String, Tensor)>, String> {
    let err = |e: candle_core::Error| format!("tensor '{name}': {e}");
    let simple = |hf: String| Ok(vec![(hf, t.clone())]);
    let (tower, rest) = match name.strip_prefix("visual.") {
        Some(r) => ("vision_model", r),
        None => ("text_model", name),
    };
    match (tower, rest) {
        ("vision_model", "conv1.weight") => {
            simple("vision_model.embeddings.patch_embedding.weight".into())
        }
        ("vision_model", "class_embedding") => {
            simple("vision_model.embeddings.class_embedding".into())
        }
        ("vision_model", "positional_embedding") => {
            simple("vision_model.embeddings.position_embedding.weight".into())
        }
        ("vision_model", "proj") => Ok(vec![(
            "visual_projection.weight".into(),
            t.t().and_then(|x| x.contiguous()).map_err(err)?,
        )]),
        ("text_model", "text_projection") => Ok(vec![(
            "text_projection.weight".into(),
            t.t().and_then(|x| x.contiguous()).map_err(err)?,
        )]),
        ("text_model", "logit_scale") => simple("logit_scale".into()),
        ("text_model", "token_embedding.weight") => {
            simple("text_model.embeddings.token_embedding.weight".into())
        }
        ("text_model", "positional_embedding") => {
            simple("text_model.embeddings.position_embedding.weight".into())
        }
        ("text_model", "attn_mask") => Ok(vec![]),
        (_, r) => {
            let ln = |s: &str| match s {
                "ln_pre" if tower == "vision_model" => Some("pre_layrnorm"),
                "ln_post" if tower == "vision_model" => Some("post_layernorm"),
                "ln_final" if tower == "text_model" => Some("final_layer_norm"),
                _ => None,
            };
            if let Some((ln_name, param)) = r.split_once('.') {
                if let Some(hf) = ln(ln_name) {
                    return simple(format!("{tower}.{hf}.{param}"));
                }
            }
            let Some(block) = r.strip_prefix("transformer.resblocks.") else {
                return Ok(vec![]); // unknown extras are ignored; missing ones are caught by validate
            };
            let Some((idx, part)) = block.split_once('.') else {
                return Ok(vec![]);
            };
            let base = format!("{tower}.encoder.layers.{idx}");
            let mapped = match part {
                "ln_1.weight" => "layer_norm1.weight",
                "ln_1.bias" => "layer_norm1.bias",
                "ln_2.weight" => "layer_norm2.weight",
                "ln_2.bias" => "layer_norm2.bias",
                "mlp.c_fc.weight" => "mlp.fc1.weight",
                "mlp.c_fc.bias" => "mlp.fc1.bias",
                "mlp.c_proj.weight" => "mlp.fc2.weight",
                "mlp.c_proj.bias" => "mlp.fc2.bias",
                "attn.out_proj.weight" => "self_attn.out_proj.weight",
                "attn.out_proj.bias" => "self_attn.out_proj.bias",
                "attn.in_proj_weight" | "attn.in_proj_bias" => {
                    let d = if tower == "vision_model" {
                        cfg.vision_config.hidden_size
                    } else {
                        cfg.text_config.hidden_size
                    };
                    if t.dim(0).map_err(err)? != 3 * d {
                        return Err(format!(
                            "tensor '{name}' has shape {:?}, expected first dimension 3 x {d}",
                            t.dims()
                        ));
                    }
                    let kind = if part.ends_with("weight") {
                        "weight"
                    } else {
                        "bias"
                    };
                    return ["q_proj", "k_proj", "v_proj"]
                        .iter()
                        .enumerate()
                        .map(|(i, p)| {
                            let part = t
                                .narrow(0, i * d, d)
                                .and_then(|x| x.contiguous())
                                .map_err(err)?;
                            Ok((format!("{base}.self_attn.{p}.{kind}"), part))
                        })
                        .collect();
                }
                _ => return Ok(vec![]),
            };
            simple(format!("{base}.{mapped}"))
        }
    }
}
