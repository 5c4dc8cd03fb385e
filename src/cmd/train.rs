//! `glimpse train` and `glimpse eval`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use glimpse_clip::{resolve_model, Clip, ClipConfig, ModelFiles};
use glimpse_config::{ModelSpec, PreprocessConfig};
use glimpse_trainer::{
    check_resumable, evaluate, latest_checkpoint, read_checkpoint, read_pairs, ClassSet,
    DataOptions, EvalReport, Evaluation, Event, Locking, Outcome, PairSet, RetrievalSet, RunSpec,
    SkipReport, TokenizerFiles, TrainData, TrainOptions, TrainableModel, Trainer,
};

use crate::cmd::print_line;
use crate::exit::InputError;

/// Where pairs come from (shared by `train` and `eval`).
#[derive(clap::Args, Debug, Clone)]
pub struct DataArgs {
    /// Pairs: a .jsonl file ({"image", "text"}), a .csv/.tsv file, or a folder of images with .txt
    /// captions beside them (repeatable). Rows whose `split` is test/val are held out.
    #[arg(long, required = true, action = clap::ArgAction::Append)]
    data: Vec<PathBuf>,
    /// Folder relative image paths are read from (default: the data file's folder).
    #[arg(long)]
    images_root: Option<PathBuf>,
    /// Key/column of the image path (default: image for JSONL, filepath for CSV/TSV).
    #[arg(long)]
    image_key: Option<String>,
    /// Key/column of the caption (default: text for JSONL, title for CSV/TSV).
    #[arg(long)]
    text_key: Option<String>,
    /// Share of pairs held out for validation when no row has a `split` (deterministic).
    #[arg(long, default_value_t = 0.1)]
    val_fraction: f64,
    /// Fail on the first bad row instead of skipping and counting it.
    #[arg(long)]
    strict: bool,
    /// Zero-shot class set: JSONL {"image", "label"} (rows marked split "train" are left out).
    #[arg(long)]
    classes: Option<PathBuf>,
}

/// `glimpse train`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Output folder: the trained model (HF layout), metrics.jsonl, training.svg, eval.json, checkpoints/.
    #[arg(long)]
    out: PathBuf,
    /// `scratch`, or a model to fine-tune (a directory or hub id).
    #[arg(long, default_value = "scratch")]
    init: String,
    /// Architecture for --init scratch: tiny, small, vit-b-32, vit-b-16, vit-l-14, or an HF config.json.
    #[arg(long, default_value = "small")]
    arch: String,
    /// Optimiser steps.
    #[arg(long, conflicts_with = "epochs")]
    steps: Option<usize>,
    /// Passes over the training pairs (instead of --steps).
    #[arg(long)]
    epochs: Option<usize>,
    /// Pairs per step (the contrastive batch).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Split each batch into forward passes of this many pairs to save memory (same gradient).
    #[arg(long)]
    micro_batch: Option<usize>,
    /// Peak learning rate (default: 5e-4 from scratch, 1e-5 when fine-tuning).
    #[arg(long)]
    lr: Option<f64>,
    /// Warm-up steps (default: 100, or a tenth of the steps if fewer).
    #[arg(long)]
    warmup: Option<usize>,
    /// AdamW weight decay (not applied to biases, norms, the class embedding, the temperature).
    #[arg(long, default_value_t = 0.2)]
    weight_decay: f64,
    /// Clip the global gradient norm to this.
    #[arg(long)]
    grad_clip_norm: Option<f64>,
    /// Seed of the initialisation, data order and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Lock the image tower (LiT). The default when fine-tuning; see --no-lock-image.
    #[arg(long, overrides_with = "no_lock_image")]
    lock_image: bool,
    /// Train the image tower too when fine-tuning.
    #[arg(long)]
    no_lock_image: bool,
    /// Lock the text tower.
    #[arg(long)]
    lock_text: bool,
    /// With a locked image tower, train its last N groups (1 = head, 2 = head + last block…).
    #[arg(long, default_value_t = 0)]
    unlocked_image_groups: usize,
    /// With a locked text tower, train its last N groups.
    #[arg(long, default_value_t = 0)]
    unlocked_text_groups: usize,
    /// Continue the run in --out from its newest checkpoint (same options and data).
    #[arg(long)]
    resume: bool,
    /// Save a checkpoint every N steps (0: only at the end and on Ctrl-C).
    #[arg(long, default_value_t = 500)]
    save_every: usize,
    /// Evaluate on the held-out pairs every N steps (0: only before and after).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Checkpoints kept.
    #[arg(long, default_value_t = 2)]
    keep_checkpoints: usize,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

/// `glimpse eval`'s options.
#[derive(clap::Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(flatten)]
    data: DataArgs,
    /// Model to evaluate (a directory or hub id).
    #[arg(long, env = glimpse_config::ENV_MODEL, default_value = glimpse_config::DEFAULT_MODEL)]
    model: String,
    /// Evaluate on every pair, not only the held-out ones.
    #[arg(long)]
    all: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn read_data(args: &DataArgs) -> anyhow::Result<PairSet> {
    let opts = DataOptions {
        images_root: args.images_root.clone(),
        image_key: args.image_key.clone(),
        text_key: args.text_key.clone(),
        strict: args.strict,
        validation_fraction: args.val_fraction,
    };
    let set = read_pairs(&args.data, &opts)?;
    report_skipped("rows", &set.skipped);
    Ok(set)
}

fn report_skipped(what: &str, skipped: &SkipReport) {
    if skipped.total() > 0 {
        eprintln!("skipped {} {what}:", skipped.total());
        for line in skipped.lines() {
            eprintln!("  {line}");
        }
    }
}

fn model_dir(name: &str) -> anyhow::Result<PathBuf> {
    let spec = ModelSpec {
        name: name.to_string(),
        revision: None,
    };
    resolve_model(&spec).with_context(|| format!("finding model '{name}'"))
}

fn architecture(arch: &str) -> anyhow::Result<ClipConfig> {
    if let Some(a) = glimpse_config::architecture(arch) {
        return Ok(ClipConfig::from_hf_json(a.config_json, a.name)?);
    }
    let path = Path::new(arch);
    if path.is_file() {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(ClipConfig::from_hf_json(
            &text,
            &path.display().to_string(),
        )?);
    }
    let names: Vec<&str> = glimpse_config::ARCHITECTURES
        .iter()
        .map(|a| a.name)
        .collect();
    Err(InputError(format!(
        "unknown architecture '{arch}': use one of {} or the path of an HF config.json",
        names.join(", ")
    ))
    .into())
}

fn print_report(label: &str, r: &EvalReport) {
    let z = r
        .zero_shot
        .map(|z| {
            format!(
                ", zero-shot top-1 {:.1} % / top-5 {:.1} % ({} images, {} classes)",
                100.0 * z.top1,
                100.0 * z.top5,
                z.n,
                z.classes
            )
        })
        .unwrap_or_default();
    eprintln!(
        "{label}: text→image R@1 {:.1} / R@5 {:.1} / R@10 {:.1} %, image→text R@1 {:.1} / R@5 {:.1} / R@10 {:.1} % on {} pairs{z}",
        100.0 * r.text_to_image.r1,
        100.0 * r.text_to_image.r5,
        100.0 * r.text_to_image.r10,
        100.0 * r.image_to_text.r1,
        100.0 * r.image_to_text.r5,
        100.0 * r.image_to_text.r10,
        r.n
    );
}

/// `glimpse train`.
pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let scratch = args.init == "scratch";
    let (config, initial, preprocess, tokenizer) = if scratch {
        let config = architecture(&args.arch)?;
        let pre = PreprocessConfig::openai(config.vision_config.image_size);
        (config, None, pre, TokenizerFiles::Clip)
    } else {
        let dir = model_dir(&args.init)?;
        let files = ModelFiles::detect(&dir)?;
        let config = files.config()?;
        let pre = files.preprocess(&config)?;
        let weights = files.weights(&config, &candle_core::Device::Cpu)?;
        (
            config,
            Some(weights),
            pre,
            TokenizerFiles::of_model_dir(&files.dir),
        )
    };
    let lock_image = if scratch {
        args.lock_image
    } else {
        !args.no_lock_image
    };
    let locking = Locking {
        image: lock_image.then_some(args.unlocked_image_groups),
        text: args.lock_text.then_some(args.unlocked_text_groups),
    };
    let pairs = read_data(&args.data)?;
    eprintln!(
        "{} training pairs, {} held out ({})",
        pairs.train.len(),
        pairs.held_out.len(),
        if pairs.split_from_data {
            "split from the data"
        } else {
            "deterministic split"
        }
    );
    let tok = tokenizer.build()?;
    let context = config.text_config.max_position_embeddings;
    let bar = indicatif::ProgressBar::new(pairs.train.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("decoding {bar:30} {pos}/{len} images {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = bar.clone();
    let (data, undecodable) =
        TrainData::prepare(&pairs.train, &tok, context, &preprocess, &move |n| {
            progress.set_position(n as u64)
        })?;
    bar.finish_and_clear();
    report_skipped("training images", &undecodable);
    let evaluation = if pairs.held_out.is_empty() {
        eprintln!("no held-out pairs: nothing to evaluate on (add rows with \"split\": \"test\" or raise --val-fraction)");
        None
    } else {
        let (held_out, skipped) = RetrievalSet::load(&pairs.held_out, &preprocess)?;
        report_skipped("held-out images", &skipped);
        let classes = match &args.data.classes {
            Some(path) => {
                let (set, skipped) =
                    ClassSet::read(path, args.data.images_root.as_deref(), &preprocess)?;
                report_skipped("class-set rows", &skipped);
                Some(set)
            }
            None => None,
        };
        (!held_out.is_empty()).then_some(Evaluation {
            pairs: held_out,
            classes,
        })
    };
    let steps = match (args.steps, args.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => e * (data.len() / args.batch_size.max(1)).max(1),
        (None, None) => return Err(InputError("give --steps N or --epochs N".into()).into()),
    };
    let options = TrainOptions {
        steps,
        batch_size: args.batch_size,
        micro_batch: args.micro_batch,
        lr: args.lr.unwrap_or(if scratch { 5e-4 } else { 1e-5 }),
        warmup: args.warmup.unwrap_or(100.min(steps / 10)),
        adamw: glimpse_trainer::AdamWConfig {
            weight_decay: args.weight_decay,
            ..Default::default()
        },
        grad_clip_norm: args.grad_clip_norm,
        seed: args.seed,
        augment: Default::default(),
        locking,
    };
    options.validate()?;
    let spec = RunSpec {
        out: args.out.clone(),
        init: if scratch {
            format!("scratch:{}", args.arch)
        } else {
            args.init.clone()
        },
        data_fingerprint: pairs.fingerprint(),
        save_every: args.save_every,
        eval_every: args.eval_every,
        keep_checkpoints: args.keep_checkpoints,
        tokenizer,
    };
    let mut resumed_from = None;
    let (weights, restore) = if args.resume {
        let dir = latest_checkpoint(&args.out).ok_or_else(|| {
            InputError(format!(
                "--resume: no checkpoint in {}/checkpoints (start without --resume)",
                args.out.display()
            ))
        })?;
        let ckpt = read_checkpoint(&dir)?;
        check_resumable(&ckpt, &options, &config, &spec.data_fingerprint)?;
        resumed_from = Some(dir);
        (Some(ckpt.weights), Some((ckpt.state.step, ckpt.optimizer)))
    } else {
        if latest_checkpoint(&args.out).is_some() {
            return Err(InputError(format!(
                "{} already holds a run: add --resume to continue it, or choose another --out",
                args.out.display()
            ))
            .into());
        }
        (initial, None)
    };
    let model = TrainableModel::new(&config, weights, options.locking, options.seed)?;
    let (trainable, locked) = model.parameter_counts();
    let mut trainer = Trainer::new(model, data, preprocess, options)?;
    if let Some((step, state)) = restore {
        trainer.restore(step, &state).map_err(|reason| {
            InputError(format!(
                "the checkpoint's optimiser state cannot be used: {reason}"
            ))
        })?;
        eprintln!(
            "resuming at step {step} from {}",
            resumed_from.as_deref().unwrap_or(Path::new("?")).display()
        );
    }
    eprintln!(
        "training {:.1} M parameters ({:.1} M locked) for {steps} steps of {} pairs",
        trainable as f64 / 1e6,
        locked as f64 / 1e6,
        trainer.options().batch_size
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit without a checkpoint)…");
    });
    let bar = indicatif::ProgressBar::new(steps as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.step() as u64);
    let batch = trainer.options().batch_size as f64;
    let outcome = glimpse_trainer::run(
        &mut trainer,
        &spec,
        evaluation.as_ref(),
        &stop,
        &mut |event| match event {
            Event::Step(r) => {
                bar.set_position(r.step as u64);
                bar.set_message(format!(
                    "loss {:.3} lr {:.1e} T {:.1} {:.0} pairs/s",
                    r.loss,
                    r.lr,
                    r.scale,
                    batch / r.seconds.max(1e-9)
                ));
            }
            Event::Evaluated { step, report } => {
                bar.suspend(|| print_report(&format!("step {step}"), report))
            }
            Event::Checkpoint { .. } => {}
        },
    )?;
    bar.finish_and_clear();
    match outcome {
        Outcome::Interrupted { step, checkpoint } => {
            eprintln!(
                "stopped at step {step}; checkpoint {}: continue with the same command plus --resume",
                checkpoint.display()
            );
            Ok(())
        }
        Outcome::Finished { before, after } => {
            if let Some(b) = &before {
                print_report("before", b);
            }
            if let Some(a) = &after {
                print_report("after", a);
            }
            eprintln!(
                "model written to {} (use it with --model {})",
                args.out.display(),
                args.out.display()
            );
            if args.json {
                print_line(
                    serde_json::json!({"out": args.out, "steps": steps, "before": before, "after": after}),
                );
            }
            Ok(())
        }
    }
}

/// `glimpse eval`.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let dir = model_dir(&args.model)?;
    let clip = Clip::load_dir(&dir, &candle_core::Device::Cpu)
        .with_context(|| format!("loading model '{}'", args.model))?;
    let pairs = read_data(&args.data)?;
    let chosen = if args.all {
        pairs
            .train
            .iter()
            .chain(&pairs.held_out)
            .cloned()
            .collect::<Vec<_>>()
    } else {
        pairs.held_out.clone()
    };
    if chosen.is_empty() {
        return Err(InputError(
            "no held-out pairs to evaluate on: mark rows with \"split\": \"test\", raise --val-fraction, or pass --all".into(),
        )
        .into());
    }
    let pre = clip.preprocess().clone();
    let (set, skipped) = RetrievalSet::load(&chosen, &pre)?;
    report_skipped("images", &skipped);
    let classes = match &args.data.classes {
        Some(path) => {
            let (set, skipped) = ClassSet::read(path, args.data.images_root.as_deref(), &pre)?;
            report_skipped("class-set rows", &skipped);
            Some(set)
        }
        None => None,
    };
    let report = evaluate(&clip, &set, classes.as_ref())?;
    if args.json {
        print_line(serde_json::to_string(&report)?);
    } else {
        print_report(&args.model, &report);
    }
    Ok(())
}
