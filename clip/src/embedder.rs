//! [`Clip`]: a loaded model with its tokenizer and preprocessing recipe —
//! what the CLI, indexer and server hold to turn texts and pixels into
//! normalised embeddings.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_config::{ModelSpec, PreprocessConfig};
use glimpse_tokenizer::Tokenizer;

use crate::checkpoint::{Layout, ModelFiles};
use crate::config::ClipConfig;
use crate::error::ClipError;
use crate::hub::resolve_model;
use crate::model::ClipModel;
use crate::text::l2_normalize;

/// A CLIP ready for inference, from detached weights (no autograd graph).
pub struct Clip {
    model: ClipModel,
    tokenizer: Tokenizer,
    preprocess: PreprocessConfig,
    layout: Layout,
    name: String,
    fingerprint: String,
    device: Device,
}

impl std::fmt::Debug for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clip")
            .field("name", &self.name)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Clip {
    /// Loads the model a [`ModelSpec`] names (directory or hub id) on the CPU.
    pub fn load(spec: &ModelSpec) -> Result<Self, ClipError> {
        let dir = resolve_model(spec)?;
        let mut clip = Self::load_dir(&dir, &Device::Cpu)?;
        clip.name = match &spec.revision {
            Some(revision) => format!("{}@{revision}", spec.name),
            None => spec.name.clone(),
        };
        Ok(clip)
    }

    /// Loads a model directory in either layout on `device`.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self, ClipError> {
        let files = ModelFiles::detect(dir)?;
        let config = files.config()?;
        let preprocess = files.preprocess(&config)?;
        let weights = files.weights(&config, device)?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, device);
        let model = ClipModel::new(&config, vb)?;
        let (vocab, merges) = (files.dir.join("vocab.json"), files.dir.join("merges.txt"));
        let tokenizer =
            if files.layout == Layout::HuggingFace && vocab.is_file() && merges.is_file() {
                Tokenizer::from_files(&vocab, &merges)?
            } else {
                Tokenizer::clip()
            };
        if tokenizer.vocab_size() > config.text_config.vocab_size {
            return Err(ClipError::BadConfig {
                path: files.config.display().to_string(),
                reason: format!(
                    "the tokenizer has {} tokens but the text model only {}",
                    tokenizer.vocab_size(),
                    config.text_config.vocab_size
                ),
            });
        }
        let fingerprint = fingerprint(&files)?;
        Ok(Self {
            model,
            tokenizer,
            preprocess,
            fingerprint,
            layout: files.layout,
            name: dir.display().to_string(),
            device: device.clone(),
        })
    }

    /// The model's name as given (a directory or hub id).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A digest of the configuration and weights (BLAKE3 over the config
    /// file, the weights' size and 32 samples of 64 KiB spread over the
    /// weights file): two models differ in it even under one name, and
    /// computing it costs milliseconds, not a read of the whole file.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A digest of how images are prepared for this model (size, mean, std,
    /// alpha): embeddings made with different preprocessing are not
    /// comparable. The pixel limit is left out (it changes no embedding).
    pub fn preprocess_fingerprint(&self) -> String {
        let p = &self.preprocess;
        format!(
            "size={} mean={:?} std={:?} alpha={:?}",
            p.image_size, p.mean, p.std, p.alpha
        )
    }

    /// The checkpoint layout it was loaded from.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The network.
    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    /// The model's shapes.
    pub fn config(&self) -> &ClipConfig {
        self.model.config()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// How images must be turned into pixels for this model.
    pub fn preprocess(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Dimension of the embeddings.
    pub fn embedding_dim(&self) -> usize {
        self.config().projection_dim
    }

    /// Token ids for `text`, up to and including its end-of-text token.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, ClipError> {
        Ok(self
            .tokenizer
            .tokenize_unpadded(text, self.model.text_model().context_length())?)
    }

    /// Embeddings of `texts` (L2-normalised unless `raw`), one row per text.
    pub fn embed_texts(&self, texts: &[&str], raw: bool) -> Result<Vec<Vec<f32>>, ClipError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let ids = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>, _>>()?;
        let features = self.model.text_features(&ids)?;
        rows(&features, raw)
    }

    /// Embeddings of preprocessed images (each `3 * size * size` values in
    /// CHW order, as `glimpse-decoder` makes them), one row per image.
    pub fn embed_pixels(&self, images: &[Vec<f32>], raw: bool) -> Result<Vec<Vec<f32>>, ClipError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.config().vision_config.image_size;
        let c = self.config().vision_config.num_channels;
        let per = c * s * s;
        let mut flat = Vec::with_capacity(images.len() * per);
        for (i, img) in images.iter().enumerate() {
            if img.len() != per {
                return Err(ClipError::BadInput(format!(
                    "image {i} has {} values, the model takes {c}x{s}x{s} = {per}",
                    img.len()
                )));
            }
            flat.extend_from_slice(img);
        }
        let pixels = Tensor::from_vec(flat, (images.len(), c, s, s), &self.device)?;
        let features = self.model.image_features(&pixels)?;
        rows(&features, raw)
    }
}

fn rows(features: &Tensor, raw: bool) -> Result<Vec<Vec<f32>>, ClipError> {
    let t = if raw {
        features.clone()
    } else {
        l2_normalize(features)?
    };
    Ok(t.to_dtype(DType::F32)?.to_vec2::<f32>()?)
}

/// See [`Clip::fingerprint`].
fn fingerprint(files: &ModelFiles) -> Result<String, ClipError> {
    use std::io::{Read, Seek, SeekFrom};
    const SAMPLES: u64 = 32;
    const SAMPLE_BYTES: u64 = 64 << 10;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ClipError::Io {
            path: path.clone(),
            source,
        }
    };
    let mut hasher = blake3::Hasher::new();
    hasher.update(&std::fs::read(&files.config).map_err(io(&files.config))?);
    let mut weights = std::fs::File::open(&files.weights).map_err(io(&files.weights))?;
    let size = weights.metadata().map_err(io(&files.weights))?.len();
    hasher.update(&size.to_le_bytes());
    let mut buffer = vec![0u8; SAMPLE_BYTES as usize];
    let stride = (size / SAMPLES).max(SAMPLE_BYTES);
    let mut offset = 0;
    while offset < size {
        weights
            .seek(SeekFrom::Start(offset))
            .map_err(io(&files.weights))?;
        let n = (&mut weights)
            .take(SAMPLE_BYTES)
            .read(&mut buffer)
            .map_err(io(&files.weights))?;
        hasher.update(&buffer[..n]);
        offset += stride;
    }
    Ok(hasher.finalize().to_hex()[..32].to_string())
}
