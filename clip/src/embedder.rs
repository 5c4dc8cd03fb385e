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
use crate::precision::Precision;
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
    query_check: Option<PrecisionCheck>,
    image_check: Option<PrecisionCheck>,
}

/// The smallest cosine to fp32 that `auto` accepts for query embeddings.
pub const AUTO_MIN_COSINE: f32 = 0.999;

/// Sentences of different lengths and subjects that a reduced-precision
/// query path is checked on when it is set.
const PROBES: [&str; 6] = [
    "a dog running on the beach",
    "kids building a sandcastle at sunset",
    "red car",
    "a black and white photo of an old lighthouse on a rocky coast in winter",
    "birthday cake with candles",
    "",
];

/// The outcome of [`Clip::set_query_precision`]'s or
/// [`Clip::set_image_precision`]'s comparison with fp32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrecisionCheck {
    /// The precision in use.
    pub precision: Precision,
    /// The smallest cosine between a probe's embedding in this precision and
    /// in fp32.
    pub min_cosine: f32,
    /// Bytes of the reduced-precision weight copies.
    pub bytes: usize,
}

/// The device models run on: the first CUDA GPU when this is a `cuda`
/// build, one is present and `GLIMPSE_DEVICE` is not `cpu`; else the CPU.
/// On a GPU the towers run candle's CUDA kernels in fp32 (the CPU's fused
/// kernels and reduced-precision copies are not used there).
///
/// A `cuda` build loads the CUDA libraries (driver, cuBLAS, cuBLASLt,
/// cuRAND, NVRTC) when it first needs them rather than linking them, so the
/// same binary starts on a machine without them and uses the CPU there.
pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    if std::env::var("GLIMPSE_DEVICE").map_or(true, |v| v != "cpu") {
        if let Some(device) = cuda_device() {
            return device;
        }
    }
    Device::Cpu
}

/// The first CUDA GPU, or `None` when a library it needs is missing or no
/// GPU answers. cudarc panics when asked to load a library that is not
/// there, so presence is checked first and any panic is contained.
#[cfg(feature = "cuda")]
fn cuda_device() -> Option<Device> {
    use candle_core::cuda_backend::cudarc;
    // SAFETY: each check only tries to open a shared library by name.
    let present = unsafe {
        cudarc::driver::sys::is_culib_present()
            && cudarc::cublas::sys::is_culib_present()
            && cudarc::cublaslt::sys::is_culib_present()
            && cudarc::curand::sys::is_culib_present()
            && cudarc::nvrtc::sys::is_culib_present()
    };
    if !present {
        return None;
    }
    std::panic::catch_unwind(|| Device::new_cuda(0).ok())
        .ok()
        .flatten()
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
    /// Loads the model a [`ModelSpec`] names (directory or hub id) on the
    /// [`default_device`]: the CPU, or a CUDA GPU in a `cuda` build.
    pub fn load(spec: &ModelSpec) -> Result<Self, ClipError> {
        let dir = resolve_model(spec)?;
        let mut clip = Self::load_dir(&dir, &default_device())?;
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
            query_check: None,
            image_check: None,
        })
    }

    /// Wraps a model built in memory — the trainer's current weights,
    /// detached — with its tokenizer and preprocessing recipe, so that it
    /// embeds exactly as the same weights loaded from disk would. Its
    /// fingerprint names it as in-memory (it is not a file).
    pub fn from_model(
        model: ClipModel,
        tokenizer: Tokenizer,
        preprocess: PreprocessConfig,
        name: &str,
    ) -> Self {
        let device = model.logit_scale().device().clone();
        Self {
            model,
            tokenizer,
            preprocess,
            layout: Layout::HuggingFace,
            name: name.to_string(),
            fingerprint: format!("in-memory:{name}"),
            device,
            query_check: None,
            image_check: None,
        }
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

    /// Makes text queries read reduced-precision copies of the text tower's
    /// weights (see [`Precision`]) and checks them against fp32 on a set of
    /// probe sentences. `Auto` takes int8 if every probe keeps a cosine of at
    /// least [`AUTO_MIN_COSINE`] to its fp32 embedding, else bf16 under the
    /// same test, else fp32 — so a checkpoint whose weights quantise badly
    /// is caught when it loads, not in search results. An explicit choice is
    /// kept whatever the cosine (see [`Clip::query_precision_check`]). On a
    /// GPU every reduced precision is bf16 (tensor cores), checked the same
    /// way.
    pub fn set_query_precision(&mut self, precision: Precision) -> Result<(), ClipError> {
        self.model.set_query_precision(Precision::Fp32)?;
        self.query_check = None;
        let candidates: &[Precision] = match precision.resolve() {
            _ if precision == Precision::Fp32 => return Ok(()),
            // A GPU multiplies in bf16 (int8 copies are a CPU kernel's).
            _ if !self.device.is_cpu() => &[Precision::Bf16],
            Precision::Fp32 => return Ok(()),
            _ if precision == Precision::Auto => &[Precision::Int8, Precision::Bf16],
            Precision::Int8 => &[Precision::Int8],
            _ => &[Precision::Bf16],
        };
        let ids = PROBES
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>, _>>()?;
        let reference = self.probe_embeddings(&ids)?;
        for &candidate in candidates {
            let bytes = self.model.set_query_precision(candidate)?;
            let got = self.probe_embeddings(&ids)?;
            let min_cosine = min_cosine(&reference, &got);
            let check = PrecisionCheck {
                precision: candidate,
                min_cosine,
                bytes,
            };
            if precision != Precision::Auto || min_cosine >= AUTO_MIN_COSINE {
                self.query_check = Some(check);
                return Ok(());
            }
        }
        self.model.set_query_precision(Precision::Fp32)?;
        Ok(())
    }

    /// Normalised embeddings of each probe, one query at a time (the path
    /// the reduced-precision copies serve).
    fn probe_embeddings(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ClipError> {
        ids.iter()
            .map(|one| {
                let f = self.model.text_features(std::slice::from_ref(one))?;
                Ok(rows(&f, false)?.remove(0))
            })
            .collect()
    }

    /// The precision text queries run in (fp32 until
    /// [`Clip::set_query_precision`] picks another).
    pub fn query_precision(&self) -> Precision {
        self.model.query_precision()
    }

    /// How the reduced-precision query path compared with fp32 when it was
    /// set (`None` for fp32).
    pub fn query_precision_check(&self) -> Option<&PrecisionCheck> {
        self.query_check.as_ref()
    }

    /// Makes image embedding read reduced-precision copies of the vision
    /// tower's weights, checked against fp32 on synthetic probe images
    /// (gradients, a checkerboard, rings, stripes). Image batches are bound
    /// by arithmetic, so `Auto` takes the precision with the most
    /// multiply-adds per instruction that keeps every probe within
    /// [`AUTO_MIN_COSINE`] of fp32: int8 where the CPU has int8 dot
    /// products (AVX512_VNNI: AMD Zen 4 and later, Intel Ice Lake and
    /// later; four times an f32 FMA's, inputs quantised per row), else bf16
    /// where it has bf16 dot products (AVX512_BF16: twice), else fp32. With
    /// AVX2 only, the f32 GEMM outruns the kernel that widens bf16/int8
    /// weights (measured interleaved on ViT-B/32 at batch 32: fp32 9.5,
    /// bf16 7.7, int8 7.2 images/s), so `Auto` keeps fp32 there; bf16 and
    /// int8 are there to be measured or chosen for memory. On a GPU the
    /// reduced precision is bf16 (tensor cores, several times fp32's speed
    /// there), taken by `Auto` under the same check. An explicit choice is
    /// kept whatever the cosine. The check is reported by
    /// [`Clip::image_precision_check`].
    pub fn set_image_precision(&mut self, precision: Precision) -> Result<(), ClipError> {
        self.model.set_image_precision(Precision::Fp32)?;
        self.image_check = None;
        let candidates: &[Precision] = match precision {
            Precision::Fp32 => return Ok(()),
            // A GPU multiplies in bf16 on its tensor cores, several times
            // faster than fp32 there, so `Auto` takes it if it passes.
            _ if !self.device.is_cpu() => &[Precision::Bf16],
            Precision::Auto if crate::int8_dot::available() => &[Precision::Int8, Precision::Bf16],
            Precision::Auto if crate::bf16_dot::available() => &[Precision::Bf16],
            Precision::Auto => return Ok(()),
            Precision::Int8 => &[Precision::Int8],
            _ => &[Precision::Bf16],
        };
        let probes = self.probe_images();
        let reference = self.embed_pixels(&probes, false)?;
        for &candidate in candidates {
            // bf16 copies on a CPU without bf16 dot products cannot be
            // faster than fp32: `Auto` skips them.
            if precision == Precision::Auto
                && candidate == Precision::Bf16
                && self.device.is_cpu()
                && !crate::bf16_dot::available()
            {
                continue;
            }
            let bytes = self.model.set_image_precision(candidate)?;
            let got = self.embed_pixels(&probes, false)?;
            let min_cosine = min_cosine(&reference, &got);
            if precision != Precision::Auto || min_cosine >= AUTO_MIN_COSINE {
                self.image_check = Some(PrecisionCheck {
                    precision: candidate,
                    min_cosine,
                    bytes,
                });
                return Ok(());
            }
        }
        self.model.set_image_precision(Precision::Fp32)?;
        Ok(())
    }

    /// The precision images are embedded in (fp32 until
    /// [`Clip::set_image_precision`] picks another).
    pub fn image_precision(&self) -> Precision {
        self.image_check.map_or(Precision::Fp32, |c| c.precision)
    }

    /// How the reduced-precision image path compared with fp32 when it was
    /// set (`None` for fp32).
    pub fn image_precision_check(&self) -> Option<&PrecisionCheck> {
        self.image_check.as_ref()
    }

    /// Four normalised-pixel images with smooth and sharp structure, made
    /// from formulas so the check needs no files.
    fn probe_images(&self) -> Vec<Vec<f32>> {
        let s = self.config().vision_config.image_size;
        let c = self.config().vision_config.num_channels;
        let pattern = |kind: usize, ch: usize, y: usize, x: usize| -> f32 {
            let (u, v) = (x as f32 / s as f32, y as f32 / s as f32);
            let value = match kind {
                0 => [u, v, 1.0 - u][ch % 3],
                1 => (((x / 8) + (y / 8)) % 2) as f32 * [0.9, 0.6, 0.2][ch % 3],
                2 => {
                    let r = ((u - 0.5).powi(2) + (v - 0.4).powi(2)).sqrt();
                    0.5 + 0.5 * (r * 40.0 + ch as f32).sin()
                }
                _ => 0.5 + 0.5 * ((u * 7.0 + v * 3.0) * std::f32::consts::PI + ch as f32).cos(),
            };
            (value - 0.45) / 0.27
        };
        (0..4)
            .map(|kind| {
                let mut img = Vec::with_capacity(c * s * s);
                for ch in 0..c {
                    for y in 0..s {
                        for x in 0..s {
                            img.push(pattern(kind, ch, y, x));
                        }
                    }
                }
                img
            })
            .collect()
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

/// The smallest cosine between paired normalised rows.
fn min_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum::<f32>())
        .fold(1f32, f32::min)
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
