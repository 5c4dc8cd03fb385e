//! A training run on disk: its options, checkpoints (exactly resumable),
//! metrics log, plot, evaluations and the exported model.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use glimpse_clip::{Clip, ClipConfig};
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::eval::{evaluate, ClassSet, EvalReport, RetrievalSet};
use crate::export::{export_model, load_tensors, save_tensors, TokenizerFiles};
use crate::plot::{plot_metrics, MetricsLog};
use crate::train::{StepReport, TrainOptions, Trainer};

/// Version of the checkpoint format written here.
const CHECKPOINT_FORMAT: u32 = 1;

/// What a checkpoint records beside the weights and moments, and what a
/// resumed run must match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointState {
    /// Checkpoint format version.
    pub format: u32,
    /// Steps done when it was saved.
    pub step: usize,
    /// The run's options.
    pub options: TrainOptions,
    /// The model's shape.
    pub config: ClipConfig,
    /// Where the initial weights came from (`scratch` or a model).
    pub init: String,
    /// Digest of the training and held-out pairs.
    pub data_fingerprint: String,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its folder.
    pub dir: PathBuf,
    /// Its state.
    pub state: CheckpointState,
    /// Every weight, HF names.
    pub weights: HashMap<String, candle_core::Tensor>,
    /// The optimiser's moments and step.
    pub optimizer: HashMap<String, candle_core::Tensor>,
}

/// How a run is kept on disk.
#[derive(Clone, Debug)]
pub struct RunSpec {
    /// The output folder: the exported model, `train.json`,
    /// `metrics.jsonl`, `training.svg`, `eval.json`, `checkpoints/`.
    pub out: PathBuf,
    /// Where the initial weights came from.
    pub init: String,
    /// Digest of the data ([`crate::PairSet::fingerprint`]).
    pub data_fingerprint: String,
    /// Save a checkpoint every this many steps (0: only at the end and on
    /// interruption).
    pub save_every: usize,
    /// Evaluate every this many steps (0: only before and after).
    pub eval_every: usize,
    /// Checkpoints kept (the newest); at least 1.
    pub keep_checkpoints: usize,
    /// The tokenizer exported with the model.
    pub tokenizer: TokenizerFiles,
}

/// Held-out data evaluated during a run.
#[derive(Debug)]
pub struct Evaluation {
    /// Held-out pairs.
    pub pairs: RetrievalSet,
    /// A class set for zero-shot accuracy.
    pub classes: Option<ClassSet>,
}

/// Something that happened during [`run`], for progress display.
#[derive(Debug)]
pub enum Event<'a> {
    /// A step finished.
    Step(&'a StepReport),
    /// An evaluation finished (`step` 0 is before training).
    Evaluated {
        /// Steps done.
        step: usize,
        /// The metrics.
        report: &'a EvalReport,
    },
    /// A checkpoint was written.
    Checkpoint {
        /// Steps done.
        step: usize,
        /// Its folder.
        path: &'a Path,
    },
}

/// How [`run`] ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Every step was done and the model exported.
    Finished {
        /// The evaluation before the first step of this run (none when resumed past step 0).
        before: Option<EvalReport>,
        /// The evaluation after the last step.
        after: Option<EvalReport>,
    },
    /// Stopped on request; a checkpoint holds the state.
    Interrupted {
        /// Steps done.
        step: usize,
        /// The checkpoint to resume from.
        checkpoint: PathBuf,
    },
}

fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The newest checkpoint of a run folder, if any.
pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    let entries = std::fs::read_dir(checkpoints_dir(out)).ok()?;
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<usize>().ok()?;
            e.path()
                .join("state.json")
                .is_file()
                .then_some((step, e.path()))
        })
        .max_by_key(|(step, _)| *step)
        .map(|(_, p)| p)
}

/// Reads a checkpoint folder.
pub fn read_checkpoint(dir: &Path) -> Result<Checkpoint, TrainError> {
    let bad = |reason: String| TrainError::Resume {
        path: dir.to_path_buf(),
        reason,
    };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(TrainError::io(&state_path))?;
    let state: CheckpointState = serde_json::from_str(&text).map_err(|e| {
        bad(format!(
            "state.json is not valid ({e}); start afresh without --resume or delete the checkpoint"
        ))
    })?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(bad(format!(
            "checkpoint format {} is not {CHECKPOINT_FORMAT}",
            state.format
        )));
    }
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        weights: load_tensors(&dir.join("model.safetensors"))?,
        optimizer: load_tensors(&dir.join("optimizer.safetensors"))?,
        state,
    })
}

/// Checks a checkpoint was made by a run with these options and data;
/// says which differs otherwise.
pub fn check_resumable(
    checkpoint: &Checkpoint,
    options: &TrainOptions,
    config: &ClipConfig,
    data_fingerprint: &str,
) -> Result<(), TrainError> {
    let s = &checkpoint.state;
    let bad = |reason: String| {
        Err(TrainError::Resume {
            path: checkpoint.dir.clone(),
            reason,
        })
    };
    if &s.options != options {
        let was = serde_json::to_string(&s.options).unwrap_or_default();
        let now = serde_json::to_string(options).unwrap_or_default();
        return bad(format!("the options differ (checkpoint: {was}; now: {now}); give the same options, or a new --out to start afresh"));
    }
    if &s.config != config {
        return bad("the model architecture differs".into());
    }
    if s.data_fingerprint != data_fingerprint {
        return bad("the training data differs (other files, rows or split); give the same --data, or a new --out".into());
    }
    if s.step > options.steps {
        return bad(format!(
            "it is at step {} beyond --steps {}",
            s.step, options.steps
        ));
    }
    Ok(())
}

/// Writes a checkpoint of `trainer` (weights, moments, state) into
/// `out/checkpoints/step-NNNNNNN`, via a temporary folder renamed into place,
/// and removes all but the newest `keep`.
pub fn save_checkpoint(trainer: &Trainer, spec: &RunSpec) -> Result<PathBuf, TrainError> {
    let root = checkpoints_dir(&spec.out);
    std::fs::create_dir_all(&root).map_err(TrainError::io(&root))?;
    let name = format!("step-{:07}", trainer.step());
    let final_dir = root.join(&name);
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(TrainError::io(&tmp))?;
    save_tensors(&trainer.model().tensors(), &tmp.join("model.safetensors"))?;
    save_tensors(
        &trainer.optimizer().state()?,
        &tmp.join("optimizer.safetensors"),
    )?;
    let state = CheckpointState {
        format: CHECKPOINT_FORMAT,
        step: trainer.step(),
        options: trainer.options().clone(),
        config: trainer.model().config().clone(),
        init: spec.init.clone(),
        data_fingerprint: spec.data_fingerprint.clone(),
    };
    let json = serde_json::to_string_pretty(&state).unwrap_or_default();
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, json).map_err(TrainError::io(&state_path))?;
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).map_err(TrainError::io(&final_dir))?;
    }
    std::fs::rename(&tmp, &final_dir).map_err(TrainError::io(&final_dir))?;
    // Prune older checkpoints.
    let mut all: Vec<(usize, PathBuf)> = std::fs::read_dir(&root)
        .map_err(TrainError::io(&root))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            Some((n.strip_prefix("step-")?.parse().ok()?, e.path()))
        })
        .collect();
    all.sort();
    let keep = spec.keep_checkpoints.max(1);
    if all.len() > keep {
        for (_, old) in &all[..all.len() - keep] {
            let _ = std::fs::remove_dir_all(old);
        }
    }
    Ok(final_dir)
}

/// Evaluates the trainer's current weights.
pub fn evaluate_trainer(
    trainer: &Trainer,
    evaluation: &Evaluation,
    tokenizer: &TokenizerFiles,
) -> Result<EvalReport, TrainError> {
    let clip = Clip::from_model(
        trainer.model().inference_model()?,
        tokenizer.build()?,
        trainer.preprocess().clone(),
        "training run",
    );
    evaluate(&clip, &evaluation.pairs, evaluation.classes.as_ref())
}

/// Runs `trainer` to its last step: logs every step to `metrics.jsonl`,
/// evaluates before, every `eval_every` steps and after, saves checkpoints
/// every `save_every` steps, redraws `training.svg`, and exports the
/// model into `out` at the end. When `stop` becomes true (Ctrl-C) it saves
/// a checkpoint after the current step and returns.
pub fn run(
    trainer: &mut Trainer,
    spec: &RunSpec,
    evaluation: Option<&Evaluation>,
    stop: &AtomicBool,
    on_event: &mut dyn FnMut(Event<'_>),
) -> Result<Outcome, TrainError> {
    std::fs::create_dir_all(&spec.out).map_err(TrainError::io(&spec.out))?;
    let mut log = MetricsLog::open(&spec.out.join("metrics.jsonl"), trainer.step())?;
    let total = trainer.options().steps;
    let mut before = None;
    if let Some(ev) = evaluation {
        if trainer.step() == 0 {
            let report = evaluate_trainer(trainer, ev, &spec.tokenizer)?;
            log.eval(0, &report)?;
            on_event(Event::Evaluated {
                step: 0,
                report: &report,
            });
            before = Some(report);
        }
    }
    let mut after = None;
    while trainer.step() < total {
        let report = trainer.train_step()?;
        log.step(&report)?;
        on_event(Event::Step(&report));
        let step = trainer.step();
        let last = step == total;
        if let Some(ev) = evaluation {
            if last || (spec.eval_every > 0 && step.is_multiple_of(spec.eval_every)) {
                let r = evaluate_trainer(trainer, ev, &spec.tokenizer)?;
                log.eval(step, &r)?;
                on_event(Event::Evaluated { step, report: &r });
                if last {
                    after = Some(r);
                }
                plot_metrics(&log, &spec.out.join("training.svg"))?;
            }
        }
        let interrupted = stop.load(Ordering::SeqCst);
        if last || interrupted || (spec.save_every > 0 && step.is_multiple_of(spec.save_every)) {
            let path = save_checkpoint(trainer, spec)?;
            on_event(Event::Checkpoint { step, path: &path });
            if interrupted && !last {
                plot_metrics(&log, &spec.out.join("training.svg"))?;
                return Ok(Outcome::Interrupted {
                    step,
                    checkpoint: path,
                });
            }
        }
    }
    plot_metrics(&log, &spec.out.join("training.svg"))?;
    export_model(
        &spec.out,
        &trainer.model().tensors(),
        trainer.model().config(),
        trainer.preprocess(),
        &spec.tokenizer,
    )?;
    let summary = serde_json::json!({"before": before, "after": after, "steps": total});
    let path = spec.out.join("eval.json");
    let mut f = std::fs::File::create(&path).map_err(TrainError::io(&path))?;
    writeln!(
        f,
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    )
    .map_err(TrainError::io(&path))?;
    Ok(Outcome::Finished { before, after })
}
