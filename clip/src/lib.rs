//! CLIP (Radford et al. 2021) on candle, owned by Glimpse.
//!
//! [`ClipModel`] is the network — a ViT image tower and a causal text tower
//! projected into one space — written so that it matches HF transformers'
//! `CLIPModel` numerically *and* is differentiable end to end (its LayerNorm
//! and softmax have backward passes, which candle's fused kernels lack), so
//! the trainer uses the same code. [`Clip`] bundles a model loaded from
//! detached weights with its tokenizer and preprocessing recipe: it is what
//! turns texts and pixels into normalised embeddings. [`ModelFiles`] reads
//! a model directory in the Hugging Face or OpenCLIP layout, converting names
//! on load and naming any missing or mis-shaped tensor; [`resolve_model`]
//! fetches a hub repository into the standard cache.
//!
//! This crate does not decode images (`glimpse-decoder` turns files into
//! pixels) and does not train (`glimpse-trainer` does, on [`ClipModel`]).
#![warn(missing_docs)]

mod allocator;
mod attention;
mod autograd;
mod bf16_dot;
mod checkpoint;
mod config;
mod embedder;
mod error;
mod hub;
mod int8_dot;
mod kernels;
mod layers;
mod model;
mod precision;
mod team;
mod text;
mod vision;

pub use allocator::{release_freed_memory, retain_freed_memory};
pub use checkpoint::{Layout, ModelFiles};
pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
pub use embedder::{default_device, Clip, PrecisionCheck, AUTO_MIN_COSINE};
pub use error::ClipError;
pub use hub::{resolve_model, resolve_model_with, HubOptions};
pub use layers::{
    Attention, Encoder, EncoderLayer, EncoderShape, FusedRows, LayerNorm, Linear, Mlp,
};
pub use model::ClipModel;
pub use precision::{Precision, QueryWeights};
pub use text::{l2_normalize, TextOutput, TextTransformer};
pub use vision::{VisionOutput, VisionTransformer};

#[cfg(test)]
mod reference_tests;

#[cfg(test)]
mod test_util {
    use candle_core::Tensor;

    /// Deterministic values in [-1, 1) (xorshift of `seed`), for the
    /// kernels' tests.
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Largest absolute element-wise difference of two same-shaped tensors.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }
}
