//! Training side by side with open_clip: the `small` architecture from
//! scratch on the Tux Paint + Fluent 3D train split with the reference
//! run's recipe (`../shared/tools/ref/train_baseline.py`: batch 64, seed 0,
//! AdamW 5e-4 (0.9, 0.98, 1e-6), decay 0.2, 100 warm-up steps, cosine,
//! random-resized crop 0.9–1.0 of a 72 px preload, images on white), then
//! recall@1/5/10 both ways on the test split and zero-shot accuracy on the
//! Tux Paint class set. Prints one JSON report with seconds per step
//! (median) and peak RSS.
//!
//! `cargo bench --bench train -- [--steps 500] [--data ../shared/data]
//! [--micro-batch M] [--batch-size B] [--seed S]`. `--steps 20 --no-eval`
//! times steps only.

#[path = "support/mod.rs"]
mod support;

use std::path::PathBuf;
use std::time::Instant;

use glimpse_clip::ClipConfig;
use glimpse_config::PreprocessConfig;
use glimpse_trainer::{
    evaluate_trainer, read_pairs, ClassSet, DataOptions, Evaluation, RetrievalSet, TokenizerFiles,
    TrainData, TrainOptions, TrainableModel, Trainer,
};

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

const USAGE: &str = "usage: train [--steps N] [--batch-size B] [--micro-batch M] [--seed S] \
                     [--data DIR] [--no-eval]";

fn main() {
    // As the `glimpse` binary runs.
    glimpse_clip::retain_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    // Refuse what it does not know rather than train 500 steps on a typo.
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--steps" | "--batch-size" | "--micro-batch" | "--seed" | "--data" => i += 2,
            "--no-eval" | "--bench" => i += 1,
            other => {
                eprintln!("train bench: unknown argument {other:?}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let steps: usize = arg(&args, "--steps").unwrap_or(500);
    let batch: usize = arg(&args, "--batch-size").unwrap_or(64);
    let micro: Option<usize> = arg(&args, "--micro-batch");
    let no_eval = args.iter().any(|a| a == "--no-eval");
    let data: PathBuf = arg(&args, "--data").unwrap_or_else(|| PathBuf::from("../shared/data"));
    let arch = glimpse_config::architecture("small").expect("small architecture");
    let config = ClipConfig::from_hf_json(arch.config_json, "small").expect("config");
    let preprocess = PreprocessConfig::openai(config.vision_config.image_size);

    let started = Instant::now();
    let sources = vec![
        data.join("pairs/tuxpaint/pairs.jsonl"),
        data.join("pairs/emoji/fluent3d/pairs.jsonl"),
    ];
    let opts = DataOptions {
        images_root: Some(data.clone()),
        ..DataOptions::default()
    };
    let pairs = read_pairs(&sources, &opts)
        .expect("reading the pairs (is ../shared/data there? pass --data DIR)");
    let tokenizer = TokenizerFiles::Clip;
    let tok = tokenizer.build().expect("tokenizer");
    let context = config.text_config.max_position_embeddings;
    let (train, skipped) =
        TrainData::prepare(&pairs.train, &tok, context, &preprocess, &|_| {}).expect("train data");
    let evaluation = if no_eval {
        None
    } else {
        let (held_out, _) = RetrievalSet::load(&pairs.held_out, &preprocess).expect("test split");
        let (classes, _) = ClassSet::read(
            &data.join("eval/tuxpaint_classes.jsonl"),
            Some(&data),
            &preprocess,
        )
        .expect("class set");
        Some(Evaluation {
            pairs: held_out,
            classes: Some(classes),
        })
    };
    let preload_s = started.elapsed().as_secs_f64();

    let mut options = TrainOptions::from_scratch(steps);
    options.batch_size = batch;
    options.micro_batch = micro;
    if let Some(seed) = arg(&args, "--seed") {
        options.seed = seed;
    }
    let model = TrainableModel::new(&config, None, options.locking, options.seed).expect("model");
    let (trainable, _) = model.parameter_counts();
    let options_seed = options.seed;
    let mut trainer = Trainer::new(model, train, preprocess, options).expect("trainer");
    let before = evaluation
        .as_ref()
        .map(|e| evaluate_trainer(&trainer, e, &tokenizer).expect("eval"));
    let mut seconds = Vec::with_capacity(steps);
    let mut losses = Vec::with_capacity(steps);
    let loop_start = Instant::now();
    for _ in 0..steps {
        let r = trainer.train_step().expect("step");
        seconds.push(r.seconds);
        losses.push(r.loss);
        if r.step.is_multiple_of(50) || r.step == 1 {
            eprintln!(
                "step {} loss {:.4} lr {:.2e} scale {:.2} step_s {:.3} rss {} MB",
                r.step,
                r.loss,
                r.lr,
                r.scale,
                r.seconds,
                support::status_kb("VmRSS") / 1024
            );
        }
    }
    let loop_s = loop_start.elapsed().as_secs_f64();
    let after = evaluation
        .as_ref()
        .map(|e| evaluate_trainer(&trainer, e, &tokenizer).expect("eval"));
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let tail = &losses[losses.len().saturating_sub(50)..];
    let report = serde_json::json!({
        "arch": "small",
        "trainable_parameters": trainable,
        "steps": steps,
        "batch_size": batch,
        "micro_batch": micro,
        "seed": options_seed,
        "train_pairs": pairs.train.len() - skipped.total(),
        "skipped": skipped.total(),
        "preload_s": preload_s,
        "step_s_median": median,
        "step_s_p10": sorted[sorted.len() / 10],
        "step_s_p90": sorted[sorted.len() * 9 / 10],
        "train_loop_s": loop_s,
        "loss_mean_last_50": tail.iter().sum::<f32>() / tail.len().max(1) as f32,
        "peak_rss_mb": support::status_kb("VmHWM") / 1024,
        "before": before,
        "after": after,
        "reference_open_clip": {
            "source": "../shared/README.md (train_baseline.py; rerun on this machine for the side-by-side)",
            "500_steps": {"t2i_r1": 0.377, "i2t_r1": 0.386, "t2i_r5": 0.540, "i2t_r5": 0.522, "t2i_r10": 0.594, "step_s": 0.444, "peak_rss_mb": 1800}
        }
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
