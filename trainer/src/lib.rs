//! Contrastive (symmetric InfoNCE) pretraining, fine-tuning and evaluation
//! of Glimpse's CLIP on (image, caption) pairs.
//!
//! The pieces follow a run's data flow: [`read_pairs`] reads JSONL, CSV/TSV
//! or folders with caption sidecars into a [`PairSet`] (training and
//! held-out pairs, bad rows counted); [`TrainData::prepare`] decodes the
//! images once (composited onto white, like the indexer) and tokenises the
//! captions; [`TrainableModel`] builds the model from scratch (seeded,
//! open_clip's initialisation) or from a checkpoint, with LiT-style
//! [`Locking`]; a [`Trainer`] does steps — seeded batch order and
//! random-resized-crop augmentation, the [`contrastive_loss`] (optionally
//! in micro-batches with the same gradient), grouped [`AdamW`], the
//! [`cosine_lr`] schedule, clipping and the temperature clamp; [`run`]
//! keeps it on disk — checkpoints that resume exactly, `metrics.jsonl`,
//! `training.svg`, evaluations before/during/after ([`evaluate`]:
//! recall@k both ways, zero-shot accuracy with prompt ensembling) — and
//! [`export_model`] writes a Hugging Face `CLIPModel` directory that
//! Glimpse and transformers load.
//!
//! It does not parse command lines or draw progress bars (the `glimpse`
//! binary does), and it trains on the CPU only.
#![warn(missing_docs)]

mod data;
mod error;
mod eval;
mod export;
mod images;
mod loss;
mod optim;
mod plot;
mod run;
mod train;
mod weights;

pub use data::{read_pairs, DataOptions, Pair, PairSet, SkipReason, SkipReport};
pub use error::TrainError;
pub use eval::{
    evaluate, zero_shot, ClassSet, EvalReport, Recall, RetrievalSet, ZeroShot, PROMPTS,
};
pub use export::{export_model, preprocessor_json, TokenizerFiles};
pub use images::{CropAugment, ImageSet};
pub use loss::{contrastive_loss, MAX_LOGIT_SCALE};
pub use optim::{clip_grad_norm, cosine_lr, decays, AdamW, AdamWConfig};
pub use plot::{plot_metrics, MetricsLog};
pub use run::{
    check_resumable, evaluate_trainer, latest_checkpoint, read_checkpoint, run, save_checkpoint,
    Checkpoint, CheckpointState, Evaluation, Event, Outcome, RunSpec,
};
pub use train::{CropAugmentOptions, StepReport, TrainData, TrainOptions, Trainer};
pub use weights::{Locking, TrainableModel};
