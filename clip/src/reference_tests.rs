//! The model against HF transformers' outputs on the random-weight fixture
//! (`tests/fixtures/clip-tiny-hf`, see its PROVENANCE.md), in both layouts,
//! plus loading failures and a GELU model of another shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use crate::{l2_normalize, Clip, ClipConfig, ClipError, ClipModel, Layout};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/clip-tiny-hf")
}

struct Expected {
    tensors: HashMap<String, Tensor>,
    tolerances: serde_json::Value,
}

impl Expected {
    fn load() -> Self {
        Self::load_on(&Device::Cpu)
    }

    fn load_on(device: &Device) -> Self {
        let dir = fixture_dir();
        let tensors =
            candle_core::safetensors::load(dir.join("expected.safetensors"), device).unwrap();
        let meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected_meta.json")).unwrap())
                .unwrap();
        Self {
            tensors,
            tolerances: meta["tolerances"].clone(),
        }
    }

    fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture lacks {name}"))
    }

    fn tol(&self, key: &str) -> f32 {
        self.tolerances[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no tolerance {key}")) as f32
    }

    fn ids(&self, name: &str) -> Vec<Vec<u32>> {
        self.get(name)
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    }
}

/// The fixture's captions, in the order of its expected outputs.
fn captions() -> Vec<String> {
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture_dir().join("expected_meta.json")).unwrap(),
    )
    .unwrap();
    meta["captions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn check(what: &str, ours: &Tensor, theirs: &Tensor, tol: f32) {
    let d = max_abs(ours, theirs);
    eprintln!("{what}: max abs diff {d:e} (tolerance {tol:e})");
    assert!(d <= tol, "{what}: max abs diff {d} > tolerance {tol}");
}

fn check_layout(dir: &Path, layout: Layout) {
    check_layout_on(dir, layout, &Device::Cpu);
}

/// Every stage of both towers against the reference, with the model and the
/// reference tensors on `device`.
fn check_layout_on(dir: &Path, layout: Layout, device: &Device) {
    let exp = Expected::load_on(device);
    let clip = Clip::load_dir(dir, device).unwrap();
    assert_eq!(clip.layout(), layout);
    let model = clip.model();

    // Vision, from the stored pixel values.
    let pixels = exp.get("pixel_values");
    let v = model.vision_outputs(pixels, true).unwrap();
    let tol_h = exp.tol("vision_pooler_output");
    for (i, h) in v.hidden_states.iter().enumerate() {
        check(
            &format!("vision hidden state {i}"),
            &h.get(0).unwrap(),
            exp.get(&format!("vision_hidden_states_img0.{i}")),
            tol_h,
        );
    }
    check(
        "vision last_hidden_state",
        &v.last_hidden_state,
        exp.get("vision_last_hidden_state"),
        tol_h,
    );
    check(
        "vision pooler_output",
        &v.pooled,
        exp.get("vision_pooler_output"),
        tol_h,
    );
    let img_raw = model.project_image(&v.pooled).unwrap();
    check(
        "image_embeds_unnorm",
        &img_raw,
        exp.get("image_embeds_unnorm"),
        exp.tol("image_embeds_unnorm"),
    );
    let img = l2_normalize(&img_raw).unwrap();
    check(
        "image_embeds",
        &img,
        exp.get("image_embeds"),
        exp.tol("image_embeds"),
    );
    // The public entry point gives the same.
    check(
        "image_features",
        &model.image_features(pixels).unwrap(),
        &img_raw,
        0.0,
    );

    // Text, full 77-token sequences with HF's padding and attention mask.
    let ids = exp.get("input_ids").to_dtype(DType::U32).unwrap();
    let eot = model
        .text_model()
        .eot_positions(&exp.ids("input_ids"))
        .unwrap();
    let expected_eot: Vec<usize> = exp
        .get("eot_index")
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec1::<u32>()
        .unwrap()
        .into_iter()
        .map(|x| x as usize)
        .collect();
    assert_eq!(eot, expected_eot);
    let mask = exp.get("attention_mask");
    let t = model.text_outputs(&ids, &eot, Some(mask), true).unwrap();
    let tol_t = exp.tol("text_pooler_output");
    for (i, h) in t.hidden_states.iter().enumerate() {
        check(
            &format!("text hidden state {i}"),
            &h.get(0).unwrap(),
            exp.get(&format!("text_hidden_states_txt0.{i}")),
            tol_t,
        );
    }
    check(
        "text last_hidden_state",
        &t.last_hidden_state,
        exp.get("text_last_hidden_state"),
        tol_t,
    );
    check(
        "text pooler_output",
        &t.pooled,
        exp.get("text_pooler_output"),
        tol_t,
    );
    let txt_raw = model.project_text(&t.pooled).unwrap();
    check(
        "text_embeds_unnorm",
        &txt_raw,
        exp.get("text_embeds_unnorm"),
        exp.tol("text_embeds_unnorm"),
    );
    let txt = l2_normalize(&txt_raw).unwrap();
    check(
        "text_embeds",
        &txt,
        exp.get("text_embeds"),
        exp.tol("text_embeds"),
    );

    // Encoding only up to EOT (the query path) gives the same embeddings, with
    // either padding convention.
    for name in ["input_ids", "input_ids_open_clip"] {
        let short = model.text_features(&exp.ids(name)).unwrap();
        check(
            &format!("text_features({name})"),
            &short,
            exp.get("text_embeds_unnorm"),
            exp.tol("text_embeds_unnorm"),
        );
    }

    let logits = model.logits(&img, &txt).unwrap();
    check(
        "logits_per_image",
        &logits,
        exp.get("logits_per_image"),
        exp.tol("logits_per_image"),
    );
    check(
        "logits_per_text",
        &logits.t().unwrap(),
        exp.get("logits_per_text"),
        exp.tol("logits_per_image"),
    );
}

#[test]
fn hf_layout_matches_reference() {
    check_layout(&fixture_dir(), Layout::HuggingFace);
}

#[test]
fn open_clip_layout_matches_reference() {
    check_layout(&fixture_dir().join("open_clip"), Layout::OpenClip);
}

/// The same checks on the GPU of a `cuda` build (candle's CUDA kernels, fp32),
/// plus texts through `Clip::embed_texts` and images through
/// `Clip::embed_pixels` as the indexer and server call them. Without a GPU it
/// is skipped, unless `GLIMPSE_REQUIRE_GPU=1` makes that a failure.
#[cfg(feature = "cuda")]
#[test]
fn both_layouts_match_reference_on_the_gpu() {
    let device = crate::default_device();
    if device.is_cpu() {
        assert!(
            std::env::var_os("GLIMPSE_REQUIRE_GPU").is_none(),
            "GLIMPSE_REQUIRE_GPU is set but no CUDA GPU (or CUDA library) was found"
        );
        eprintln!("no CUDA GPU: skipped");
        return;
    }
    check_layout_on(&fixture_dir(), Layout::HuggingFace, &device);
    check_layout_on(&fixture_dir().join("open_clip"), Layout::OpenClip, &device);
    let exp = Expected::load();
    let clip = Clip::load_dir(&fixture_dir(), &device).unwrap();
    let captions = captions();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    let texts = clip.embed_texts(&captions, false).unwrap();
    check(
        "embed_texts on the GPU",
        &Tensor::new(texts, &Device::Cpu).unwrap(),
        exp.get("text_embeds"),
        exp.tol("text_embeds"),
    );
    let pixels = exp.get("pixel_values");
    let images: Vec<Vec<f32>> = (0..pixels.dim(0).unwrap())
        .map(|i| {
            pixels
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    let embedded = clip.embed_pixels(&images, false).unwrap();
    check(
        "embed_pixels on the GPU",
        &Tensor::new(embedded, &Device::Cpu).unwrap(),
        exp.get("image_embeds"),
        exp.tol("image_embeds"),
    );
    // bf16 on the tensor cores (what `auto` takes on a GPU): every int8 or
    // bf16 request is bf16 there, within cosine 0.999 of the reference.
    let mut clip = clip;
    for precision in [crate::Precision::Auto, crate::Precision::Int8] {
        clip.set_query_precision(precision).unwrap();
        clip.set_image_precision(precision).unwrap();
        assert_eq!(clip.query_precision(), crate::Precision::Bf16);
        assert_eq!(clip.image_precision(), crate::Precision::Bf16);
        let texts = clip.embed_texts(&captions, false).unwrap();
        let images = clip.embed_pixels(&images, false).unwrap();
        for (what, got, want) in [
            ("text", texts, exp.get("text_embeds")),
            ("image", images, exp.get("image_embeds")),
        ] {
            for (i, row) in got.iter().enumerate() {
                let want = want.get(i).unwrap().to_vec1::<f32>().unwrap();
                let cosine: f32 = row.iter().zip(&want).map(|(a, b)| a * b).sum();
                eprintln!("bf16 {what} {i}: cosine {cosine}");
                assert!(cosine >= 0.999, "bf16 {what} {i}: cosine {cosine}");
            }
        }
    }
}

#[test]
fn tokenizer_and_text_path_match_reference_ids() {
    let exp = Expected::load();
    let clip = Clip::load_dir(&fixture_dir(), &Device::Cpu).unwrap();
    let captions = captions();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    for (cap, reference) in captions.iter().zip(exp.ids("input_ids_open_clip")) {
        let ours = clip.tokenize(cap).unwrap();
        assert_eq!(ours[..], reference[..ours.len()], "caption {cap:?}");
    }
    let embs = clip.embed_texts(&captions, false).unwrap();
    let ours = Tensor::new(embs, &Device::Cpu).unwrap();
    check(
        "embed_texts",
        &ours,
        exp.get("text_embeds"),
        exp.tol("text_embeds"),
    );
    // One at a time, as a query is run: short texts take the few-row kernel.
    for (i, cap) in captions.iter().enumerate() {
        let one = clip.embed_texts(&[cap], false).unwrap();
        let ours = Tensor::new(one, &Device::Cpu).unwrap();
        let theirs = exp.get("text_embeds").narrow(0, i, 1).unwrap();
        check(
            &format!("query {cap:?}"),
            &ours,
            &theirs,
            exp.tol("text_embeds"),
        );
    }
}

/// Writes `tensors` + `config` as an HF-layout model directory.
fn write_model(dir: &Path, cfg: &ClipConfig, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_hf_json()).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

fn fixture_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join("model.safetensors"), &Device::Cpu).unwrap()
}

fn load_err(dir: &Path) -> String {
    Clip::load_dir(dir, &Device::Cpu).unwrap_err().to_string()
}

#[test]
fn gelu_model_of_another_shape_loads_and_runs() {
    let json = r#"{"projection_dim": 24,
        "text_config": {"vocab_size": 49408, "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
                        "num_attention_heads": 3, "max_position_embeddings": 40, "hidden_act": "gelu"},
        "vision_config": {"hidden_size": 40, "intermediate_size": 120, "num_hidden_layers": 1, "num_attention_heads": 5,
                          "image_size": 48, "patch_size": 12, "hidden_act": "gelu", "layer_norm_eps": 1e-6}}"#;
    let cfg = ClipConfig::from_hf_json(json, "test").unwrap();
    let varmap = VarMap::new();
    let trained = ClipModel::new(
        &cfg,
        VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu),
    )
    .unwrap();
    let tensors: HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    write_model(tmp.path(), &cfg, &tensors);
    let clip = Clip::load_dir(tmp.path(), &Device::Cpu).unwrap();
    assert_eq!(clip.embedding_dim(), 24);
    assert_eq!(clip.preprocess().image_size, 48);

    let pixels = Tensor::randn(0f32, 1.0, (2, 3, 48, 48), &Device::Cpu).unwrap();
    let a = clip.model().image_features(&pixels).unwrap();
    let b = trained.image_features(&pixels).unwrap();
    check("reloaded gelu image features", &a, &b, 1e-5);
    let e = clip.embed_texts(&["a red square", ""], false).unwrap();
    assert_eq!(e.len(), 2);
    assert!(e
        .iter()
        .all(|v| v.len() == 24 && v.iter().all(|x| x.is_finite())));
    // The activation is really GELU: the same weights read as QuickGELU differ.
    let mut quick = cfg.clone();
    quick.vision_config.hidden_act = crate::Activation::QuickGelu;
    let q = ClipModel::new(
        &quick,
        VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert!(max_abs(&q.image_features(&pixels).unwrap(), &a) > 1e-4);
}

#[test]
fn missing_or_misshaped_tensor_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = ClipConfig::from_hf_json(
        &std::fs::read_to_string(fixture_dir().join("config.json")).unwrap(),
        "config.json",
    )
    .unwrap();
    let mut t = fixture_tensors();
    t.remove("vision_model.embeddings.class_embedding");
    write_model(&tmp.path().join("missing"), &cfg, &t);
    let e = load_err(&tmp.path().join("missing"));
    assert!(
        e.contains("missing tensor 'vision_model.embeddings.class_embedding'"),
        "{e}"
    );
    assert!(!e.contains('\n'));

    let mut t = fixture_tensors();
    let w = t["visual_projection.weight"]
        .t()
        .unwrap()
        .contiguous()
        .unwrap();
    t.insert("visual_projection.weight".into(), w);
    write_model(&tmp.path().join("shape"), &cfg, &t);
    let e = load_err(&tmp.path().join("shape"));
    assert!(
        e.contains("'visual_projection.weight' has shape [64, 32]") && e.contains("[32, 64]"),
        "{e}"
    );
}

#[test]
fn bad_directories_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let e = load_err(&tmp.path().join("nope"));
    assert!(
        e.contains("nope") && e.contains("no such model directory"),
        "{e}"
    );
    let e = load_err(tmp.path());
    assert!(
        e.contains("holds no CLIP weights") && e.contains("model.safetensors"),
        "{e}"
    );
    std::fs::write(tmp.path().join("pytorch_model.bin"), b"pickle").unwrap();
    let e = load_err(tmp.path());
    assert!(
        e.contains("pytorch_model.bin") && e.contains("refs/pr/15"),
        "{e}"
    );
    let garbage = tmp.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::copy(
        fixture_dir().join("config.json"),
        garbage.join("config.json"),
    )
    .unwrap();
    std::fs::write(garbage.join("model.safetensors"), b"not safetensors at all").unwrap();
    let e = load_err(&garbage);
    assert!(
        e.contains("model.safetensors") && e.contains("not a readable safetensors"),
        "{e}"
    );
    std::fs::write(garbage.join("config.json"), b"{ not json").unwrap();
    let e = load_err(&garbage);
    assert!(
        e.contains("bad model config") && e.contains("config.json"),
        "{e}"
    );
    assert!(matches!(
        Clip::load_dir(&garbage, &Device::Cpu),
        Err(ClipError::BadConfig { .. })
    ));
}

/// The reduced-precision text paths against the reference embeddings of the
/// fixture captions: each within cosine 0.999 (the issue's tolerance), one
/// text at a time and batched giving the same rows, and `auto` choosing a
/// reduced precision only after checking it.
#[test]
fn reduced_precision_text_embeddings_stay_close_to_the_reference() {
    use crate::{Precision, AUTO_MIN_COSINE};
    let exp = Expected::load();
    let captions = captions();
    let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
    let reference = exp.get("text_embeds").to_vec2::<f32>().unwrap();
    for dir in [fixture_dir(), fixture_dir().join("open_clip")] {
        let mut clip = Clip::load_dir(&dir, &Device::Cpu).unwrap();
        for precision in [Precision::Bf16, Precision::Int8] {
            clip.set_query_precision(precision).unwrap();
            assert_eq!(clip.query_precision(), precision);
            let report = clip.query_precision_check().copied().unwrap();
            assert_eq!(report.precision, precision);
            assert!(report.bytes > 0);
            let batched = clip.embed_texts(&captions, false).unwrap();
            for (i, cap) in captions.iter().enumerate() {
                let cosine: f32 = batched[i]
                    .iter()
                    .zip(&reference[i])
                    .map(|(a, b)| a * b)
                    .sum();
                assert!(
                    cosine >= AUTO_MIN_COSINE,
                    "{precision} {cap:?}: cosine {cosine} to the reference"
                );
                let one = clip.embed_texts(&[cap], false).unwrap();
                let d = one[0]
                    .iter()
                    .zip(&batched[i])
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    d < 1e-5,
                    "{precision} {cap:?}: alone vs batched differ by {d}"
                );
            }
        }
        clip.set_query_precision(Precision::Auto).unwrap();
        let report = clip.query_precision_check().copied().unwrap();
        assert_eq!(
            report.precision,
            Precision::Int8,
            "int8 passes the probes here"
        );
        assert!(report.min_cosine >= AUTO_MIN_COSINE);
        clip.set_query_precision(Precision::Fp32).unwrap();
        assert_eq!(clip.query_precision(), Precision::Fp32);
        assert!(clip.query_precision_check().is_none());
        let exact = Tensor::new(clip.embed_texts(&captions, false).unwrap(), &Device::Cpu).unwrap();
        check(
            "fp32 again",
            &exact,
            exp.get("text_embeds"),
            exp.tol("text_embeds"),
        );
    }
}

/// The vision tower on reduced-precision weights against the reference
/// image embeddings of the fixture (cosine ≥ 0.999), then back to fp32.
#[test]
fn reduced_precision_image_embeddings_stay_close_to_the_reference() {
    use crate::Precision;
    let exp = Expected::load();
    let pixels = exp.get("pixel_values");
    let reference = exp.get("image_embeds").to_vec2::<f32>().unwrap();
    let clip = Clip::load_dir(&fixture_dir(), &Device::Cpu).unwrap();
    let mut model = clip.model().clone();
    for precision in [Precision::Bf16, Precision::Int8] {
        assert!(model.set_image_precision(precision).unwrap() > 0);
        let got = l2_normalize(&model.image_features(pixels).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
            let cosine: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!(cosine >= 0.999, "{precision} image {i}: cosine {cosine}");
        }
        // Each image alone and in a batch of 8 (more rows than the few-row
        // paths take): the same arithmetic, so the same embedding (bf16 dot
        // products round their inputs, which would turn any batch-dependent
        // f32 difference into a visible one).
        let n = pixels.dim(0).unwrap();
        let batch = Tensor::cat(&vec![pixels; 8usize.div_ceil(n)], 0).unwrap();
        let batched = l2_normalize(&model.image_features(&batch).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (i, b) in batched.iter().enumerate() {
            let alone = model
                .image_features(&batch.narrow(0, i, 1).unwrap())
                .unwrap();
            let alone = l2_normalize(&alone).unwrap().to_vec2::<f32>().unwrap();
            let d = alone[0]
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                d < 1e-6,
                "{precision} image {i}: alone vs batched differ by {d}"
            );
        }
    }
    assert_eq!(model.set_image_precision(Precision::Fp32).unwrap(), 0);
    let exact = l2_normalize(&model.image_features(pixels).unwrap()).unwrap();
    check(
        "fp32 again",
        &exact,
        exp.get("image_embeds"),
        exp.tol("image_embeds"),
    );
}

/// `Clip::set_image_precision`: `auto` takes int8 where the CPU has int8
/// dot products, bf16 where it has bf16 ones, and keeps fp32 elsewhere
/// (faster for image batches with AVX2 only); int8 is checked on the probe
/// images and the fixture photos' embeddings stay within 0.999 of the
/// reference; fp32 drops the copies.
#[test]
fn image_precision_is_checked_when_set() {
    use crate::{Precision, AUTO_MIN_COSINE};
    let exp = Expected::load();
    let reference = exp.get("image_embeds").to_vec2::<f32>().unwrap();
    let pixels = exp.get("pixel_values");
    let mut clip = Clip::load_dir(&fixture_dir(), &Device::Cpu).unwrap();
    assert_eq!(clip.image_precision(), Precision::Fp32);
    clip.set_image_precision(Precision::Auto).unwrap();
    let fastest = if crate::int8_dot::available() {
        Some(Precision::Int8)
    } else if crate::bf16_dot::available() {
        Some(Precision::Bf16)
    } else {
        None
    };
    if let Some(fastest) = fastest {
        assert_eq!(clip.image_precision(), fastest);
        let report = clip.image_precision_check().copied().unwrap();
        assert!(report.min_cosine >= AUTO_MIN_COSINE);
    } else {
        assert_eq!(clip.image_precision(), Precision::Fp32);
        assert!(clip.image_precision_check().is_none());
    }
    clip.set_image_precision(Precision::Int8).unwrap();
    let report = clip.image_precision_check().copied().unwrap();
    assert_eq!(
        (report.precision, clip.image_precision()),
        (Precision::Int8, Precision::Int8)
    );
    assert!(report.min_cosine >= AUTO_MIN_COSINE && report.bytes > 0);
    let images: Vec<Vec<f32>> = (0..reference.len())
        .map(|i| {
            pixels
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    let got = clip.embed_pixels(&images, false).unwrap();
    for (i, (a, b)) in got.iter().zip(&reference).enumerate() {
        let cosine: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        assert!(cosine >= AUTO_MIN_COSINE, "image {i}: cosine {cosine}");
    }
    clip.set_image_precision(Precision::Bf16).unwrap();
    assert_eq!(clip.image_precision(), Precision::Bf16);
    clip.set_image_precision(Precision::Fp32).unwrap();
    assert!(clip.image_precision_check().is_none());
    let exact = Tensor::new(clip.embed_pixels(&images, false).unwrap(), &Device::Cpu).unwrap();
    check(
        "fp32 again",
        &exact,
        exp.get("image_embeds"),
        exp.tol("image_embeds"),
    );
}

/// The fixture with one outlier channel per block of `tower` (`text_model`
/// or `vision_model`), the same function in f32: `by` per layer scales
/// channel `c` of `producer` (a LayerNorm's weight and bias, or a product's
/// output row and bias) and divides column `c` of each of `consumers` by
/// the same factor.
fn outlier_model(tower: &str, producer: &str, consumers: &[&str], by: f32) -> Clip {
    let base = Clip::load_dir(&fixture_dir(), &Device::Cpu).unwrap();
    let cfg = base.config().clone();
    let mut tensors = fixture_tensors();
    // `columns`: scale column `index` of a `[rows, width]` weight; else
    // entry `index` of a vector or row `index` of a matrix.
    let scale = |t: &Tensor, index: usize, by: f32, columns: bool| -> Tensor {
        let dims = t.dims().to_vec();
        let mut v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let width = *dims.last().unwrap();
        for (i, x) in v.iter_mut().enumerate() {
            let hit = if columns || dims.len() == 1 {
                i % width == index
            } else {
                i / width == index
            };
            if hit {
                *x *= by;
            }
        }
        Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
    };
    let (layers, width) = if tower == "text_model" {
        let t = &cfg.text_config;
        (t.num_hidden_layers, t.hidden_size)
    } else {
        let v = &cfg.vision_config;
        (v.num_hidden_layers, v.hidden_size)
    };
    for layer in 0..layers {
        let prefix = format!("{tower}.encoder.layers.{layer}");
        let channel = (7 * layer + 3) % width;
        for part in ["weight", "bias"] {
            let name = format!("{prefix}.{producer}.{part}");
            let t = scale(&tensors[&name], channel, by, false);
            tensors.insert(name, t);
        }
        for consumer in consumers {
            let name = format!("{prefix}.{consumer}.weight");
            let t = scale(&tensors[&name], channel, 1.0 / by, true);
            tensors.insert(name, t);
        }
    }
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let model = ClipModel::new(&cfg, vb).unwrap();
    let tokenizer = glimpse_tokenizer::Tokenizer::clip();
    Clip::from_model(model, tokenizer, base.preprocess().clone(), "outliers")
}

/// Pretrained transformers have a few LayerNorm channels far larger than
/// the rest (a large weight, small weights reading it), which would crush
/// every other channel of a row quantised to int8 as a whole. The int8
/// dot-product copies of the products a LayerNorm feeds are smoothed (see
/// `layers::smoothed`), so such a checkpoint keeps int8 queries: with a
/// channel 300× the rest before q/k/v and fc1 in every block, int8 stays
/// within cosine 0.999 of fp32 and `auto` takes it.
#[test]
fn int8_queries_survive_layer_norm_outlier_channels() {
    use crate::{Precision, AUTO_MIN_COSINE};
    let mut clip = outlier_model(
        "text_model",
        "layer_norm1",
        &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        300.0,
    );
    clip.set_query_precision(Precision::Auto).unwrap();
    let auto = clip.query_precision_check().copied().unwrap();
    assert_eq!(auto.precision, Precision::Int8);
    assert!(auto.min_cosine >= AUTO_MIN_COSINE, "{}", auto.min_cosine);
    let mut clip = outlier_model("text_model", "layer_norm2", &["mlp.fc1"], 300.0);
    clip.set_query_precision(Precision::Auto).unwrap();
    let auto = clip.query_precision_check().copied().unwrap();
    assert_eq!(auto.precision, Precision::Int8);
    assert!(auto.min_cosine >= AUTO_MIN_COSINE, "{}", auto.min_cosine);
}

/// The load-time check is what guards `auto` where smoothing cannot help:
/// an outlier channel in the attention's output (v's output channel 300×,
/// the output projection's column ÷300: the same function) reaches the
/// output projection with no LayerNorm before it. Int8 dot products then
/// fall below cosine 0.999 and `auto` takes bf16 (rounded relative to each
/// value); an explicit int8 is kept but reports its cosine. (Where the CPU
/// has no int8 dot products, int8 keeps f32 inputs and passes.)
#[test]
fn auto_falls_back_to_bf16_when_int8_inputs_lose_outlier_rows() {
    use crate::{Precision, AUTO_MIN_COSINE};
    let mut clip = outlier_model(
        "text_model",
        "self_attn.v_proj",
        &["self_attn.out_proj"],
        300.0,
    );
    clip.set_query_precision(Precision::Int8).unwrap();
    let int8 = clip.query_precision_check().copied().unwrap();
    assert_eq!(int8.precision, Precision::Int8);
    clip.set_query_precision(Precision::Auto).unwrap();
    let auto = clip.query_precision_check().copied().unwrap();
    if crate::int8_dot::available() {
        assert!(
            int8.min_cosine < AUTO_MIN_COSINE,
            "int8 inputs should lose the outlier rows: {}",
            int8.min_cosine
        );
        assert_eq!(auto.precision, Precision::Bf16);
    } else {
        assert_eq!(auto.precision, Precision::Int8);
    }
    assert!(auto.min_cosine >= AUTO_MIN_COSINE, "{}", auto.min_cosine);
}

/// As [`int8_queries_survive_layer_norm_outlier_channels`] for images: the
/// image tower's int8 dot-product copies are smoothed too, so `auto` keeps
/// int8 images (where the CPU has the instructions) with a LayerNorm channel
/// 300× the rest in every block, within cosine 0.999 of fp32 on the probes
/// and on the fixture's images; and an image alone equals it in a batch.
#[test]
fn int8_images_survive_layer_norm_outlier_channels() {
    use crate::{Precision, AUTO_MIN_COSINE};
    let pixels = Expected::load().get("pixel_values").clone();
    let n = pixels.dim(0).unwrap();
    let images: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            pixels
                .get(i)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        })
        .collect();
    for (producer, consumers) in [
        (
            "layer_norm1",
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"][..],
        ),
        ("layer_norm2", &["mlp.fc1"][..]),
    ] {
        let mut clip = outlier_model("vision_model", producer, consumers, 300.0);
        let exact = clip.embed_pixels(&images, false).unwrap();
        clip.set_image_precision(Precision::Auto).unwrap();
        if !crate::int8_dot::available() {
            continue;
        }
        let check = clip.image_precision_check().copied().unwrap();
        assert_eq!(check.precision, Precision::Int8, "{producer}: {check:?}");
        let got = clip.embed_pixels(&images, false).unwrap();
        for (i, (a, b)) in got.iter().zip(&exact).enumerate() {
            let cosine: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!(cosine >= AUTO_MIN_COSINE, "{producer} image {i}: {cosine}");
            let alone = clip.embed_pixels(&images[i..i + 1], false).unwrap();
            let d = alone[0]
                .iter()
                .zip(a)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(d < 1e-6, "{producer} image {i}: alone vs batched {d}");
        }
    }
}
