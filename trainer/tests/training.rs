//! Training end to end on a generated dataset: it learns, every trainable
//! parameter gets a gradient (locked ones none), a resumed run equals a
//! straight one, and the exported model embeds like the in-memory one.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use glimpse_clip::{Clip, ClipConfig};
use glimpse_config::PreprocessConfig;
use glimpse_trainer::{
    latest_checkpoint, read_checkpoint, read_pairs, run, ClassSet, DataOptions, Evaluation,
    Locking, Outcome, PairSet, RetrievalSet, RunSpec, TokenizerFiles, TrainData, TrainOptions,
    TrainableModel, Trainer,
};

const COLOURS: [(&str, [u8; 3]); 4] = [
    ("red", [220, 30, 30]),
    ("green", [30, 180, 40]),
    ("blue", [30, 60, 220]),
    ("yellow", [230, 210, 20]),
];
const SHAPES: [&str; 3] = ["square", "circle", "bar"];

/// A small deterministic generator (the test must not depend on `rand`'s
/// stream across versions).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.next() % (hi - lo)
    }
}

/// Writes `per_caption` images of each coloured shape ("a red circle")
/// with a `pairs.jsonl` whose last two images per caption are `test`.
fn shapes_dataset(dir: &Path, per_caption: usize) -> PathBuf {
    let mut rng = Lcg(42);
    let mut lines = Vec::new();
    for (colour, rgb) in COLOURS {
        for shape in SHAPES {
            for k in 0..per_caption {
                let size = 48u32;
                let r = rng.range(9, 15) as i32;
                let (cx, cy) = (rng.range(15, 33) as i32, rng.range(15, 33) as i32);
                let bg = rng.range(200, 255) as u8;
                let img = image::RgbImage::from_fn(size, size, |x, y| {
                    let (dx, dy) = (x as i32 - cx, y as i32 - cy);
                    let inside = match shape {
                        "square" => dx.abs() <= r && dy.abs() <= r,
                        "circle" => dx * dx + dy * dy <= r * r,
                        _ => dx.abs() <= r && dy.abs() <= r / 3,
                    };
                    if inside {
                        image::Rgb(rgb)
                    } else {
                        image::Rgb([bg, bg, bg])
                    }
                });
                let name = format!("{colour}-{shape}-{k}.png");
                img.save(dir.join(&name)).unwrap();
                let split = if k + 2 >= per_caption {
                    "test"
                } else {
                    "train"
                };
                lines.push(format!(
                    "{{\"image\": \"{name}\", \"text\": \"a {colour} {shape}\", \"split\": \"{split}\"}}"
                ));
            }
        }
    }
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    // The test images as a class set, labelled "red circle" etc.
    let classes: Vec<String> = lines
        .iter()
        .filter(|l| l.contains("\"test\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let label = v["text"]
                .as_str()
                .unwrap()
                .trim_start_matches("a ")
                .to_string();
            serde_json::json!({"image": v["image"], "label": label}).to_string()
        })
        .collect();
    std::fs::write(dir.join("classes.jsonl"), classes.join("\n")).unwrap();
    path
}

fn tiny() -> ClipConfig {
    ClipConfig::from_hf_json(
        glimpse_config::architecture("tiny").unwrap().config_json,
        "tiny",
    )
    .unwrap()
}

struct Setup {
    pairs: PairSet,
    config: ClipConfig,
    preprocess: PreprocessConfig,
}

fn setup(dir: &Path, per_caption: usize) -> Setup {
    let data = shapes_dataset(dir, per_caption);
    let pairs = read_pairs(&[data], &DataOptions::default()).unwrap();
    let config = tiny();
    let preprocess = PreprocessConfig::openai(config.vision_config.image_size);
    Setup {
        pairs,
        config,
        preprocess,
    }
}

fn trainer(
    s: &Setup,
    options: TrainOptions,
    initial: Option<std::collections::HashMap<String, candle_core::Tensor>>,
) -> Trainer {
    let tok = TokenizerFiles::Clip.build().unwrap();
    let context = s.config.text_config.max_position_embeddings;
    let (data, skipped) =
        TrainData::prepare(&s.pairs.train, &tok, context, &s.preprocess, &|_| {}).unwrap();
    assert_eq!(skipped.total(), 0);
    let model = TrainableModel::new(&s.config, initial, options.locking, options.seed).unwrap();
    Trainer::new(model, data, s.preprocess.clone(), options).unwrap()
}

fn spec(out: &Path, s: &Setup) -> RunSpec {
    RunSpec {
        out: out.to_path_buf(),
        init: "scratch:tiny".into(),
        data_fingerprint: s.pairs.fingerprint(),
        save_every: 0,
        eval_every: 0,
        keep_checkpoints: 2,
        tokenizer: TokenizerFiles::Clip,
    }
}

fn options(steps: usize) -> TrainOptions {
    TrainOptions {
        batch_size: 24,
        lr: 2e-3,
        warmup: 20,
        ..TrainOptions::from_scratch(steps)
    }
}

#[test]
fn tiny_model_learns_coloured_shapes_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), 12);
    assert_eq!(s.pairs.held_out.len(), 24);
    let (held_out, _) = RetrievalSet::load(&s.pairs.held_out, &s.preprocess).unwrap();
    let (classes, skipped) =
        ClassSet::read(&dir.path().join("classes.jsonl"), None, &s.preprocess).unwrap();
    assert_eq!(skipped.total(), 0);
    let evaluation = Evaluation {
        pairs: held_out,
        classes: Some(classes),
    };
    let out = dir.path().join("run");
    let mut t = trainer(&s, options(300), None);
    let outcome = run(
        &mut t,
        &spec(&out, &s),
        Some(&evaluation),
        &AtomicBool::new(false),
        &mut |_| {},
    )
    .unwrap();
    let Outcome::Finished { before, after } = outcome else {
        panic!("the run did not finish: {outcome:?}")
    };
    let (before, after) = (before.unwrap(), after.unwrap());
    // 12 distinct captions, 2 test images each: chance R@1 is about 1/12.
    eprintln!("before {before:?}\nafter {after:?}");
    assert!(
        after.text_to_image.r1 >= 0.5,
        "text→image R@1 {}",
        after.text_to_image.r1
    );
    assert!(
        after.image_to_text.r1 >= 0.4,
        "image→text R@1 {}",
        after.image_to_text.r1
    );
    assert!(after.text_to_image.r1 > before.text_to_image.r1 + 0.3);
    // Zero-shot: 12 classes named as in the captions, prompts it never saw.
    let zs = after.zero_shot.unwrap();
    assert_eq!((zs.classes, zs.n), (12, 24));
    assert!(zs.top1 >= 0.3, "zero-shot top-1 {} (chance 1/12)", zs.top1);

    // The run folder: metrics, plot, evaluations, a final checkpoint.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        300
    );
    assert!(std::fs::read_to_string(out.join("training.svg"))
        .unwrap()
        .contains("<svg"));
    assert!(out.join("eval.json").is_file());
    assert!(latest_checkpoint(&out).unwrap().ends_with("step-0000300"));

    // The exported model loads and embeds exactly like the trained weights.
    let loaded = Clip::load_dir(&out, &candle_core::Device::Cpu).unwrap();
    let in_memory = Clip::from_model(
        t.model().inference_model().unwrap(),
        TokenizerFiles::Clip.build().unwrap(),
        s.preprocess.clone(),
        "in memory",
    );
    let texts = ["a red circle", "a blue bar", "something else entirely"];
    let a = loaded.embed_texts(&texts, false).unwrap();
    let b = in_memory.embed_texts(&texts, false).unwrap();
    assert_eq!(a, b);
    let mut px = vec![0f32; 3 * 32 * 32];
    let img = glimpse_decoder::decode_path(&s.pairs.held_out[0].image, &s.preprocess).unwrap();
    px.copy_from_slice(&glimpse_decoder::to_pixels(&img.rgb, &s.preprocess));
    assert_eq!(
        loaded
            .embed_pixels(std::slice::from_ref(&px), false)
            .unwrap(),
        in_memory.embed_pixels(&[px], false).unwrap()
    );
}

#[test]
fn every_trainable_parameter_gets_a_gradient_and_locked_ones_none() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), 4);
    for locking in [
        Locking::default(),
        Locking {
            image: Some(0),
            text: None,
        },
        Locking {
            image: Some(2),
            text: Some(1),
        },
    ] {
        let opts = TrainOptions {
            locking,
            batch_size: 8,
            ..options(10)
        };
        let t = trainer(&s, opts, None);
        let (loss, grads) = t.gradients(0).unwrap();
        assert!(loss.is_finite());
        let mut missing = Vec::new();
        for (name, var) in t.model().trainable() {
            let nonzero = grads.get(var.as_tensor()).is_some_and(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
                    > 0.0
            });
            if !nonzero {
                missing.push(name.clone());
            }
        }
        assert!(
            missing.is_empty(),
            "{locking:?}: no gradient for {missing:?}"
        );
        for (name, tensor) in t.model().locked() {
            assert!(
                grads.get(tensor).is_none(),
                "{locking:?}: locked {name} has a gradient"
            );
        }
        if locking.image == Some(0) {
            assert!(t
                .model()
                .trainable()
                .iter()
                .all(|(n, _)| !n.starts_with("vision_model")));
            assert!(!t.model().locked().is_empty());
        }
    }
}

#[test]
fn micro_batches_give_the_whole_batchs_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), 4);
    let whole = trainer(
        &s,
        TrainOptions {
            batch_size: 12,
            ..options(10)
        },
        None,
    );
    let split = trainer(
        &s,
        TrainOptions {
            batch_size: 12,
            micro_batch: Some(5),
            ..options(10)
        },
        None,
    );
    let (la, ga) = whole.gradients(3).unwrap();
    let (lb, gb) = split.gradients(3).unwrap();
    assert!((la - lb).abs() < 1e-5, "{la} vs {lb}");
    for ((name, va), (_, vb)) in whole
        .model()
        .trainable()
        .iter()
        .zip(split.model().trainable())
    {
        let (a, b) = (
            ga.get(va.as_tensor()).unwrap(),
            gb.get(vb.as_tensor()).unwrap(),
        );
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let scale = a
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1e-3);
        assert!(
            diff <= 1e-4 * scale.max(1.0),
            "{name}: {diff} (scale {scale})"
        );
    }
}

#[test]
fn a_resumed_run_equals_a_straight_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = setup(dir.path(), 4);
    let steps = 12;
    let stop = AtomicBool::new(false);
    // Straight.
    let straight_out = dir.path().join("straight");
    let mut straight = trainer(&s, options(steps), None);
    run(
        &mut straight,
        &spec(&straight_out, &s),
        None,
        &stop,
        &mut |_| {},
    )
    .unwrap();
    // Half, interrupted (as Ctrl-C does), then resumed from the checkpoint.
    let out = dir.path().join("resumed");
    let mut first = trainer(&s, options(steps), None);
    let stop_at_half = AtomicBool::new(false);
    let outcome = run(&mut first, &spec(&out, &s), None, &stop_at_half, &mut |e| {
        if let glimpse_trainer::Event::Step(r) = e {
            if r.step == steps / 2 {
                stop_at_half.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    })
    .unwrap();
    let Outcome::Interrupted { step, checkpoint } = outcome else {
        panic!("expected an interruption, got {outcome:?}")
    };
    assert_eq!(step, steps / 2);
    drop(first);
    let ckpt = read_checkpoint(&checkpoint).unwrap();
    glimpse_trainer::check_resumable(&ckpt, &options(steps), &s.config, &s.pairs.fingerprint())
        .unwrap();
    // A different option is refused, naming what differs.
    let err = glimpse_trainer::check_resumable(
        &ckpt,
        &options(steps + 1),
        &s.config,
        &s.pairs.fingerprint(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("options differ"), "{err}");
    let mut resumed = trainer(&s, options(steps), Some(ckpt.weights));
    resumed.restore(ckpt.state.step, &ckpt.optimizer).unwrap();
    run(&mut resumed, &spec(&out, &s), None, &stop, &mut |_| {}).unwrap();
    let (a, b) = (straight.model().tensors(), resumed.model().tensors());
    assert_eq!(a.len(), b.len());
    for (name, ta) in &a {
        let tb = &b[name];
        let diff = (ta - tb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 1e-6, "{name} differs by {diff}");
    }
    // The resumed run's log has each step once.
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().filter(|l| l.contains("\"loss\"")).count(),
        steps
    );
}
