//! Contrastive (symmetric InfoNCE) pretraining, fine-tuning and evaluation
//! of Glimpse's CLIP on (image, caption) pairs.
//!
//! Not built yet: this crate fixes its place in the dependency graph (it
//! trains `glimpse_clip::ClipModel`, which is differentiable end to end for
//! this purpose). Its contents arrive with the trainer issue (#5).
#![warn(missing_docs)]
