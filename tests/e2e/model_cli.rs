//! `glimpse tokenize`, `embed` and `classify` on the fixture model and its
//! real image files, against the reference outputs; and their errors.

use std::collections::HashMap;
use std::io::Write;
use std::process::Stdio;

use candle_core::{DType, Device, Tensor};

use crate::{assert_fails, fixtures, glimpse, json_lines, ok_stdout, run, tiny_model};

fn expected() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny_model().join("expected.safetensors"), &Device::Cpu).unwrap()
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(tiny_model().join("expected_meta.json")).unwrap())
        .unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

fn vector(v: &serde_json::Value) -> Vec<f32> {
    v["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

fn tokenize(input: &[u8]) -> std::process::Output {
    let mut child = glimpse()
        .arg("tokenize")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn tokenize_gives_the_reference_ids_for_all_cases() {
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    let mut input = Vec::new();
    for c in cases {
        serde_json::to_writer(
            &mut input,
            &serde_json::json!({"text": c["text"], "extra": 1}),
        )
        .unwrap();
        input.push(b'\n');
    }
    let out = json_lines(&ok_stdout(&tokenize(&input)));
    assert_eq!(out.len(), cases.len());
    let mismatches: Vec<String> = cases
        .iter()
        .zip(&out)
        .filter(|(c, o)| c["ids"] != o["ids"] || c["text"] != o["text"])
        .map(|(c, _)| format!("{} {}: {:?}", c["id"], c["category"], c["text"]))
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} mismatches: {mismatches:#?}",
        mismatches.len()
    );
}

#[test]
fn tokenize_rejects_bad_lines_with_their_number() {
    let out = tokenize(b"{\"text\": \"ok\"}\n\xff\xfe not utf8\n");
    assert_fails(&out, 3, &["line 2", "UTF-8"]);
    let out = tokenize(b"{\"text\": \"ok\"}\nnot json\n");
    assert_fails(&out, 3, &["line 2", "not JSON"]);
    let out = tokenize(b"{\"txt\": \"ok\"}\n");
    assert_fails(&out, 3, &["line 1", "\"text\""]);
    let out = run(glimpse().args(["tokenize", "--context-length", "1"]));
    assert_fails(&out, 3, &["context"]);
}

#[test]
fn embed_matches_the_reference_in_both_layouts() {
    let exp = expected();
    let meta = meta();
    let captions: Vec<String> = meta["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    let files: Vec<String> = meta["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["file"].as_str().unwrap().to_string())
        .collect();
    let text_ref = rows(&exp["text_embeds"]);
    let text_raw_ref = rows(&exp["text_embeds_unnorm"]);
    let image_ref = rows(&exp["image_embeds"]);
    for dir in [tiny_model(), tiny_model().join("open_clip")] {
        for raw in [false, true] {
            // Interleave texts and images to check the output order.
            let mut cmd = glimpse();
            cmd.args(["embed", "--alpha", "drop", "--model"]).arg(&dir);
            for (c, f) in captions.iter().zip(&files) {
                cmd.args(["--text", c.as_str(), "--image"])
                    .arg(tiny_model().join(f));
            }
            if raw {
                cmd.arg("--raw");
            }
            let lines = json_lines(&ok_stdout(&run(&mut cmd)));
            assert_eq!(lines.len(), 16);
            for i in 0..8 {
                let (t, im) = (&lines[2 * i], &lines[2 * i + 1]);
                assert_eq!(t["kind"], "text");
                assert_eq!(t["input"], captions[i].as_str());
                assert_eq!(im["kind"], "image");
                assert!(im["input"].as_str().unwrap().ends_with(&files[i]));
                let reference = if raw { &text_raw_ref[i] } else { &text_ref[i] };
                let d = max_abs(&vector(t), reference);
                assert!(d <= 1e-4, "{dir:?} text {i} raw={raw}: {d}");
                let c = cosine(&vector(im), &image_ref[i]);
                assert!(
                    c >= 0.9999,
                    "{dir:?} image {} from its file: cosine {c}",
                    files[i]
                );
            }
        }
    }
}

#[test]
fn transparent_images_are_composited_onto_white_by_default() {
    let img = tiny_model().join("images/img4_rgba_180x261.png");
    let opaque = tiny_model().join("images/img0_gradient_320x240.png");
    let embed = |alpha: &str| {
        let out = run(glimpse()
            .args(["embed", "--alpha", alpha, "--model"])
            .arg(tiny_model())
            .arg("--image")
            .arg(&img)
            .arg("--image")
            .arg(&opaque));
        json_lines(&ok_stdout(&out))
            .iter()
            .map(vector)
            .collect::<Vec<_>>()
    };
    let (white, dropped) = (embed("white"), embed("drop"));
    assert!(
        max_abs(&white[0], &dropped[0]) > 1e-3,
        "alpha changes the RGBA image"
    );
    assert_eq!(white[1], dropped[1], "and nothing else");
    let out = run(glimpse().args(["embed", "--alpha", "pink", "--text", "x"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown alpha mode 'pink'"));
}

#[test]
fn classify_ranks_labels_by_ensembled_prompt_similarity() {
    let img = tiny_model().join("images/img7_photo_301x187.jpg");
    let templates = ["a photo of a {}.", "a drawing of a {}."];
    let labels = ["cat", "dog", "tree", "car", "house", "boat"];
    let mut cmd = glimpse();
    cmd.args(["classify", "--json", "--model"])
        .arg(tiny_model())
        .arg("--labels")
        .arg(labels.join(","));
    for t in templates {
        cmd.args(["--template", t]);
    }
    cmd.arg(&img);
    let out = json_lines(&ok_stdout(&run(&mut cmd)));
    let top = out[0]["top"].as_array().unwrap();
    assert_eq!(top.len(), 5);

    // Recompute from `glimpse embed`: mean of normalised template embeddings,
    // renormalised; softmax of 100 x cosine (the fixture's logit scale).
    let mut e = glimpse();
    e.args(["embed", "--model"])
        .arg(tiny_model())
        .arg("--image")
        .arg(&img);
    for l in labels {
        for t in templates {
            e.args(["--text", &t.replace("{}", l)]);
        }
    }
    let lines = json_lines(&ok_stdout(&run(&mut e)));
    let image = vector(&lines[0]);
    let logits: Vec<f32> = labels
        .iter()
        .enumerate()
        .map(|(i, _)| {
            let a = vector(&lines[1 + 2 * i]);
            let b = vector(&lines[2 + 2 * i]);
            let mean: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x + y) / 2.0).collect();
            100.0 * cosine(&mean, &image)
        })
        .collect();
    let max = logits.iter().cloned().fold(f32::MIN, f32::max);
    let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let mut expected: Vec<(usize, f32)> = logits
        .iter()
        .map(|l| (l - max).exp() / z)
        .enumerate()
        .collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (got, (i, p)) in top.iter().zip(&expected) {
        assert_eq!(got["label"], labels[*i]);
        assert!((got["probability"].as_f64().unwrap() as f32 - p).abs() < 1e-3);
    }
    // The table form names the image.
    let table = ok_stdout(&run(glimpse()
        .args(["classify", "--model"])
        .arg(tiny_model())
        .args(["--labels", "cat,dog"])
        .arg(&img)));
    assert!(table.contains("img7_photo_301x187.jpg") && table.contains('%'));
}

#[test]
fn reduced_precision_embeddings_stay_within_tolerance() {
    let exp = rows(&expected()["text_embeds"]);
    let captions: Vec<String> = meta()["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    for precision in ["int8", "bf16", "auto"] {
        let mut cmd = glimpse();
        cmd.args(["embed", "--precision", precision, "--model"])
            .arg(tiny_model());
        for c in &captions {
            cmd.args(["--text", c]);
        }
        let lines = json_lines(&ok_stdout(&run(&mut cmd)));
        assert_eq!(lines.len(), captions.len());
        for (line, want) in lines.iter().zip(&exp) {
            let c = cosine(&vector(line), want);
            assert!(c >= 0.999, "{precision}: cosine {c} for {}", line["input"]);
        }
    }
    let out = run(glimpse()
        .args(["embed", "--precision", "fp16", "--model"])
        .arg(tiny_model())
        .args(["--text", "x"]));
    // A usage error, in clap's format (exit 2).
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown precision \"fp16\": use one of fp32, bf16, int8, auto"),
        "{err}"
    );
}

#[test]
fn empty_text_is_a_valid_query() {
    let out = run(glimpse()
        .args(["embed", "--model"])
        .arg(tiny_model())
        .args(["--text", ""]));
    let exp = rows(&expected()["text_embeds"]);
    let caption_index = meta()["captions"]
        .as_array()
        .unwrap()
        .iter()
        .position(|c| c == "")
        .unwrap();
    let got = vector(&json_lines(&ok_stdout(&out))[0]);
    assert!(max_abs(&got, &exp[caption_index]) < 1e-4);
}

#[test]
fn bad_inputs_fail_with_one_line_and_the_right_code() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let embed = |args: &[&std::ffi::OsStr]| {
        let mut c = glimpse();
        c.args(["embed", "--model"]).arg(&model).args(args);
        run(&mut c)
    };
    let missing = tmp.path().join("missing.jpg");
    assert_fails(
        &embed(&["--image".as_ref(), missing.as_os_str()]),
        3,
        &["missing.jpg"],
    );
    let corrupt = tmp.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    assert_fails(
        &embed(&["--image".as_ref(), corrupt.as_os_str()]),
        3,
        &["corrupt.jpg"],
    );
    let bytes = std::fs::read(tiny_model().join("images/img7_photo_301x187.jpg")).unwrap();
    let truncated = tmp.path().join("truncated.jpg");
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let out = embed(&["--image".as_ref(), truncated.as_os_str()]);
    assert!(
        out.status.code() == Some(3) || out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_fails(&embed(&[]), 3, &["nothing to embed"]);
    let big = tiny_model().join("images/img0_gradient_320x240.png");
    let out = embed(&[
        "--max-pixels".as_ref(),
        "1000".as_ref(),
        "--image".as_ref(),
        big.as_os_str(),
    ]);
    assert_fails(
        &out,
        3,
        &["img0_gradient_320x240.png", "320x240", "--max-pixels"],
    );
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
        assert_fails(&embed(&["--text".as_ref(), bad]), 3, &["--text", "UTF-8"]);
    }
    // Model problems: exit code 4.
    let empty = tmp.path().join("empty-model");
    std::fs::create_dir(&empty).unwrap();
    let out = run(glimpse()
        .args(["embed", "--text", "x", "--model"])
        .arg(&empty));
    assert_fails(
        &out,
        4,
        &["empty-model", "no CLIP weights", "model.safetensors"],
    );
    let out = run(glimpse()
        .args(["embed", "--text", "x", "--model"])
        .arg(tmp.path().join("nope")));
    assert_fails(&out, 4, &["nope", "no such model directory"]);
    let bad_shape = tmp.path().join("bad-shape");
    std::fs::create_dir(&bad_shape).unwrap();
    for f in ["config.json", "vocab.json", "merges.txt"] {
        std::fs::copy(model.join(f), bad_shape.join(f)).unwrap();
    }
    let mut t =
        candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    let w = t["text_projection.weight"]
        .t()
        .unwrap()
        .contiguous()
        .unwrap();
    t.insert("text_projection.weight".into(), w);
    candle_core::safetensors::save(&t, bad_shape.join("model.safetensors")).unwrap();
    let out = run(glimpse()
        .args(["embed", "--text", "x", "--model"])
        .arg(&bad_shape));
    assert_fails(&out, 4, &["text_projection.weight", "[64, 32]", "[32, 64]"]);
    // A command-line mistake: exit code 2 (clap).
    let out = run(glimpse().args(["embed", "--bogus"]));
    assert_eq!(out.status.code(), Some(2));
}
