//! `glimpse train` and `glimpse eval` on a generated captioned dataset:
//! train the tiny architecture, evaluate the export, load it everywhere,
//! fine-tune it with the image tower locked, and refuse bad input.

use std::path::Path;

use std::process::Output;

use crate::{glimpse, json_lines, ok_stdout, run};

/// Asserts a failure with `code` whose last stderr line is the error and
/// names every `needle` (training prints progress notes before it).
fn assert_fails(out: &Output, code: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err
        .trim_end()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    assert!(
        last.starts_with("error: "),
        "the last line is not the error: {err}"
    );
    for n in needles {
        assert!(last.contains(n), "error lacks {n:?}: {last}");
    }
    last
}

const COLOURS: [(&str, [u8; 3]); 3] = [
    ("red", [220, 30, 30]),
    ("green", [30, 180, 40]),
    ("blue", [30, 60, 220]),
];
const SHAPES: [&str; 2] = ["square", "circle"];

/// A CSV of coloured shapes (open_clip's `filepath,title` columns), some
/// with transparent backgrounds, the last two per caption marked `test`,
/// plus a class file of the test images.
fn dataset(dir: &Path) {
    let mut csv = String::from("filepath,title,split\n");
    let mut classes = String::new();
    for (colour, rgb) in COLOURS {
        for shape in SHAPES {
            for k in 0..6u32 {
                let r = 8 + (k as i32 % 4);
                let (cx, cy) = (16 + (k as i32 * 5) % 12, 18 + (k as i32 * 7) % 10);
                let img = image::RgbaImage::from_fn(40, 40, |x, y| {
                    let (dx, dy) = (x as i32 - cx, y as i32 - cy);
                    let inside = if shape == "square" {
                        dx.abs() <= r && dy.abs() <= r
                    } else {
                        dx * dx + dy * dy <= r * r
                    };
                    match (inside, k % 2) {
                        (true, _) => image::Rgba([rgb[0], rgb[1], rgb[2], 255]),
                        (false, 0) => image::Rgba([0, 0, 0, 0]),
                        (false, _) => image::Rgba([235, 235, 235, 255]),
                    }
                });
                let name = format!("img/{colour}-{shape}-{k}.png");
                img.save(dir.join(&name)).unwrap();
                let split = if k >= 4 { "test" } else { "train" };
                csv.push_str(&format!("{name},a {colour} {shape},{split}\n"));
                if k >= 4 {
                    classes.push_str(&format!(
                        "{{\"image\": \"{name}\", \"label\": \"{colour} {shape}\"}}\n"
                    ));
                }
            }
        }
    }
    std::fs::write(dir.join("pairs.csv"), csv).unwrap();
    std::fs::write(dir.join("classes.jsonl"), classes).unwrap();
}

fn in_unit(v: &serde_json::Value) -> f64 {
    let x = v.as_f64().expect("a number");
    assert!((0.0..=1.0).contains(&x), "{x} is not a fraction");
    x
}

#[test]
fn train_eval_fine_tune_and_load_the_export() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("img")).unwrap();
    dataset(dir.path());
    let data = dir.path().join("pairs.csv");
    let classes = dir.path().join("classes.jsonl");
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut c = glimpse();
        c.arg("train")
            .arg("--data")
            .arg(&data)
            .arg("--classes")
            .arg(&classes);
        c.args([
            "--arch",
            "tiny",
            "--batch-size",
            "12",
            "--warmup",
            "5",
            "--json",
        ]);
        c.args(extra);
        c
    };
    let summary = &json_lines(&ok_stdout(&run(train(&[
        "--steps",
        "40",
        "--save-every",
        "20",
        "--lr",
        "2e-3",
    ])
    .arg("--out")
    .arg(&out))))[0];
    for file in [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "vocab.json",
        "merges.txt",
        "metrics.jsonl",
        "training.svg",
        "eval.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let after = &summary["after"];
    assert!(summary["before"].is_object());

    // `glimpse eval` of the export gives the run's final evaluation.
    let eval = run(glimpse()
        .args(["eval", "--json", "--model"])
        .arg(&out)
        .arg("--data")
        .arg(&data)
        .arg("--classes")
        .arg(&classes));
    let report = &json_lines(&ok_stdout(&eval))[0];
    assert_eq!(report["n"], 12);
    for direction in ["text_to_image", "image_to_text"] {
        for k in ["r@1", "r@5", "r@10"] {
            let got = in_unit(&report[direction][k]);
            let during = in_unit(&after[direction][k]);
            assert!(
                (got - during).abs() < 1e-9,
                "{direction} {k}: {got} vs {during} during training"
            );
        }
    }
    assert_eq!(report["zero_shot"]["classes"], 6);
    assert_eq!(report["zero_shot"]["n"], 12);
    in_unit(&report["zero_shot"]["top1"]);
    assert!(in_unit(&report["zero_shot"]["top5"]) >= in_unit(&report["zero_shot"]["top1"]));

    // The export is a model like any other.
    let image = dir.path().join("img/red-circle-0.png");
    let embed = |model: &Path| {
        let o = run(glimpse()
            .args(["embed", "--model"])
            .arg(model)
            .arg("--image")
            .arg(&image)
            .args(["--text", "a red circle"]));
        json_lines(&ok_stdout(&o))
    };
    let base = embed(&out);
    assert_eq!(base.len(), 2);

    // Fine-tuning locks the image tower by default: image embeddings stay,
    // text embeddings move; metrics before and after are reported.
    let tuned = dir.path().join("tuned");
    let ft = &json_lines(&ok_stdout(&run(train(&["--steps", "6", "--lr", "1e-3"])
        .arg("--init")
        .arg(&out)
        .arg("--out")
        .arg(&tuned))))[0];
    assert_eq!(
        ft["before"], *after,
        "fine-tuning's 'before' is the base model's evaluation"
    );
    let moved = embed(&tuned);
    assert_eq!(
        moved[0]["embedding"], base[0]["embedding"],
        "the locked image tower changed"
    );
    assert_ne!(
        moved[1]["embedding"], base[1]["embedding"],
        "the text tower did not train"
    );

    // A second run into the same folder must say --resume; resuming a
    // finished run with other options names the difference.
    let again = run(train(&["--steps", "40", "--lr", "2e-3"])
        .arg("--out")
        .arg(&out));
    assert_fails(&again, 3, &["already holds a run", "--resume"]);
    let other = run(train(&["--steps", "41", "--lr", "2e-3", "--resume"])
        .arg("--out")
        .arg(&out));
    assert_fails(&other, 3, &["options differ"]);
}

#[test]
fn bad_training_input_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let missing = run(glimpse()
        .args(["train", "--steps", "5", "--data"])
        .arg(dir.path().join("nope.jsonl"))
        .arg("--out")
        .arg(&out));
    assert_fails(&missing, 3, &["nope.jsonl"]);
    std::fs::write(
        dir.path().join("pairs.jsonl"),
        "{\"image\": \"gone.png\", \"text\": \"x\"}\nnot json\n",
    )
    .unwrap();
    let data = dir.path().join("pairs.jsonl");
    let empty = run(glimpse()
        .args(["train", "--steps", "5", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out));
    let err = assert_fails(&empty, 3, &["training pairs"]);
    assert!(!err.contains("panicked"));
    let strict = run(glimpse()
        .args(["train", "--strict", "--steps", "5", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out));
    assert_fails(&strict, 3, &["pairs.jsonl:1", "gone.png"]);
    let arch = run(glimpse()
        .args(["train", "--arch", "huge", "--steps", "5", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out));
    assert_fails(&arch, 3, &["unknown architecture 'huge'", "tiny, small"]);
    let batch = run(glimpse()
        .args(["train", "--batch-size", "1", "--steps", "5", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out));
    assert_fails(&batch, 2, &["--batch-size"]);
    let resume = run(glimpse()
        .args(["train", "--resume", "--steps", "5", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&out));
    assert_fails(&resume, 3, &["no checkpoint"]);
}
