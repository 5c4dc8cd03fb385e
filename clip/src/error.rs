//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a CLIP. User errors (a
/// bad path, a bad checkpoint, no network) carry the thing that failed and
/// what to do; `Tensor` is an internal error from candle.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A directory holds no model in any layout Glimpse knows.
    #[error("{dir} holds no CLIP weights: expected config.json + model.safetensors (Hugging Face layout) or open_clip_config.json + open_clip_model.safetensors (OpenCLIP layout)")]
    NoWeights {
        /// The directory.
        dir: PathBuf,
    },
    /// A model with only PyTorch pickles, which Glimpse does not execute.
    #[error("{what} has only pytorch_model.bin (a PyTorch pickle, which Glimpse does not load): use a revision with model.safetensors (for openai/clip-vit-base-patch32: --revision refs/pr/15), or convert it with `python -c \"from transformers import CLIPModel; CLIPModel.from_pretrained('X').save_pretrained('DIR')\"`")]
    PickleOnly {
        /// The directory or repository.
        what: String,
    },
    /// A config file that is not valid or describes an unsupported model.
    #[error("bad model config {path}: {reason}")]
    BadConfig {
        /// The config file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A weights file that is unreadable, lacks a tensor or has one of the wrong shape.
    #[error("bad weights {path}: {reason}")]
    BadWeights {
        /// The weights file.
        path: String,
        /// What is wrong (names the tensor).
        reason: String,
    },
    /// Input the model cannot take (e.g. a token id beyond the vocabulary).
    #[error("invalid input: {0}")]
    BadInput(String),
    /// A model could not be fetched from the Hugging Face hub.
    #[error("cannot download {repo} (revision {revision}) from {endpoint}: {reason}")]
    Download {
        /// The repository id.
        repo: String,
        /// The revision asked for.
        revision: String,
        /// The hub address used.
        endpoint: String,
        /// What went wrong and what to do.
        reason: String,
    },
    /// The tokenizer files of a model directory are bad.
    #[error(transparent)]
    Tokenizer(#[from] glimpse_tokenizer::TokenizerError),
    /// An internal tensor error (a bug, or out of memory).
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
}
