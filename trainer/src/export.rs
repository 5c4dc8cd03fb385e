//! Writing a trained model as a Hugging Face `CLIPModel` directory, which
//! `glimpse embed/index/serve --model DIR` and transformers'
//! `CLIPModel.from_pretrained(DIR)` load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use glimpse_clip::ClipConfig;
use glimpse_config::PreprocessConfig;
use glimpse_tokenizer::Tokenizer;

use crate::error::TrainError;

/// Where a model's tokenizer comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerFiles {
    /// CLIP's own vocabulary (embedded in Glimpse).
    Clip,
    /// A model directory's `vocab.json` and `merges.txt`.
    Files {
        /// `vocab.json`.
        vocab: PathBuf,
        /// `merges.txt`.
        merges: PathBuf,
    },
}

impl TokenizerFiles {
    /// The tokenizer files of a model directory, or CLIP's when it has none.
    pub fn of_model_dir(dir: &Path) -> Self {
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        if vocab.is_file() && merges.is_file() {
            Self::Files { vocab, merges }
        } else {
            Self::Clip
        }
    }

    /// Builds the tokenizer.
    pub fn build(&self) -> Result<Tokenizer, TrainError> {
        match self {
            Self::Clip => Ok(Tokenizer::clip()),
            Self::Files { vocab, merges } => Tokenizer::from_files(vocab, merges)
                .map_err(|e| TrainError::Model(glimpse_clip::ClipError::from(e))),
        }
    }

    fn write_to(&self, dir: &Path) -> Result<(), TrainError> {
        match self {
            Self::Clip => {
                let (vocab, merges) = Tokenizer::clip_files();
                write(&dir.join("vocab.json"), vocab.as_bytes())?;
                write(&dir.join("merges.txt"), merges.as_bytes())
            }
            Self::Files { vocab, merges } => {
                for (from, name) in [(vocab, "vocab.json"), (merges, "merges.txt")] {
                    let to = dir.join(name);
                    if from != &to {
                        std::fs::copy(from, &to).map_err(TrainError::io(&to))?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), TrainError> {
    std::fs::write(path, bytes).map_err(TrainError::io(path))
}

/// HF's `preprocessor_config.json` for `preprocess` (`CLIPImageProcessor`:
/// shortest side to the input size, bicubic, centre crop, mean/std).
pub fn preprocessor_json(preprocess: &PreprocessConfig) -> String {
    let s = preprocess.image_size;
    let v = serde_json::json!({
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "CLIPProcessor",
        "do_resize": true,
        "size": {"shortest_edge": s},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": s, "width": s},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": preprocess.mean,
        "image_std": preprocess.std,
        "do_convert_rgb": true,
    });
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// Writes `config.json`, `model.safetensors` (every tensor under its HF
/// name), `preprocessor_config.json`, `vocab.json` and `merges.txt` into
/// `dir`, the weights through a temporary file renamed into place.
pub fn export_model(
    dir: &Path,
    tensors: &HashMap<String, Tensor>,
    config: &ClipConfig,
    preprocess: &PreprocessConfig,
    tokenizer: &TokenizerFiles,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(TrainError::io(dir))?;
    save_tensors(tensors, &dir.join("model.safetensors"))?;
    write(&dir.join("config.json"), config.to_hf_json().as_bytes())?;
    write(
        &dir.join("preprocessor_config.json"),
        preprocessor_json(preprocess).as_bytes(),
    )?;
    tokenizer.write_to(dir)
}

/// Saves tensors as safetensors, atomically (temporary file, then rename).
pub(crate) fn save_tensors(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<(), TrainError> {
    let tmp = path.with_extension("safetensors.tmp");
    candle_core::safetensors::save(tensors, &tmp).map_err(|e| TrainError::Io {
        path: tmp.clone(),
        source: std::io::Error::other(e.to_string()),
    })?;
    std::fs::rename(&tmp, path).map_err(TrainError::io(path))
}

/// Loads a safetensors file written by [`save_tensors`].
pub(crate) fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>, TrainError> {
    candle_core::safetensors::load(path, &candle_core::Device::Cpu).map_err(|e| TrainError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}
