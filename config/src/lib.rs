//! Settings shared by every Glimpse crate.
//!
//! This is the bottom of the dependency graph: the model, decoder, indexer,
//! server and trainer crates all read these types, and this crate depends on
//! nothing of Glimpse. It holds plain data — the default model, the built-in model
//! architectures (`architectures/*.json`), the image preprocessing recipe, the environment variables Glimpse honours — and does
//! no I/O of its own beyond reading environment variables.
//!
//! It does *not* parse model files (`glimpse-clip` does) nor decode images
//! (`glimpse-decoder` does).
#![warn(missing_docs)]

mod architectures;
mod model;
mod preprocess;

pub use architectures::{architecture, Architecture, ARCHITECTURES};

pub use model::{ModelSpec, DEFAULT_MODEL, DEFAULT_REVISION, ENV_MODEL};
pub use preprocess::{AlphaMode, PreprocessConfig, OPENAI_MEAN, OPENAI_STD, PILLOW_MAX_PIXELS};
