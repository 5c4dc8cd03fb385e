//! End-to-end speed on the CPU (issue #6), as one JSON report, for a
//! random-weight ViT-B/32 built with the real shapes (pretrained weights
//! cannot be downloaded here; speed does not depend on the values):
//!
//! - `image_embeddings_per_s`: images/s at batch 1, 8 and 32 for each
//!   precision of the vision tower's weights (fp32, bf16, int8), timed in
//!   turn batch after batch, with the smallest cosine to fp32 over 8 images;
//! - `query`: one text query — tokenise, encode (to the end-of-text token)
//!   and search a library of N photos (default 100,000 CLIP-like 512-d
//!   vectors) — p50/p99 per query precision, with the encode and search
//!   parts and the smallest cosine to fp32 over five probe texts;
//! - `indexing`: `glimpse index`'s pipeline (walk, read, decode, resize,
//!   embed, thumbnails, commits) on the shared photos, files/s and
//!   embedded images/s, next to the model alone at the indexer's batch size:
//!   three runs (one with `--quick`), each compared with the model alone
//!   timed just before and just after it, and the median of their ratios;
//!   the same with `--exact-decode` (every image at full size); and, for
//!   the images the default run reduces, how far their preprocessed pixels
//!   and embeddings are from the full-size decode's (`reduced_decoding`);
//!   and the CPU budget: what the
//!   readers do besides the model (read, hash, decode, pixels, thumbnail)
//!   in CPU seconds on one thread, next to the process's CPU seconds while
//!   the model runs alone (both for the images the run embedded), the
//!   estimated best ratio to the model alone that this machine's cores
//!   allow, and how close the run came to it (`cpu_budget`);
//! - `memory`: RAM per photo of the N-photo library once loaded for search;
//! - `baseline`: one large f32 matmul's GFLOP/s in the same run, because
//!   this shared machine is noisy and machines differ.
//!
//! `cargo bench --bench speed -- [--quick] [--n N] [--photos DIR]
//! [--images-only | --query-only | --indexing-only | --skip-indexing]`
//!
//! `--gpu` (a `--features cuda` build) reports the GPU instead: the same
//! random ViT-B/32 on the first CUDA GPU, images/s at batch 1 to 256 and one
//! text query's encode time, and the cosines of its embeddings to the same
//! weights on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_clip::{Clip, ClipConfig, ClipModel, Precision};
use glimpse_config::PreprocessConfig;
use glimpse_store::{Library, ModelIdentity, SearchRequest};
use glimpse_tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

mod support;
use support::{status_kb, Rng};

/// Random weights with the shapes `cfg` names, on the CPU.
fn random_tensors(cfg: &ClipConfig) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    cfg.expected_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let t = if name.contains("norm") && name.ends_with("weight") {
                Tensor::ones(shape, DType::F32, &dev)
            } else if shape.is_empty() {
                Tensor::new(4.6052f32, &dev)
            } else {
                Tensor::randn(0f32, 0.02, shape, &dev)
            };
            (name, t.unwrap())
        })
        .collect()
}

/// A model of `tensors` on `dev`.
fn model_on(cfg: &ClipConfig, tensors: &HashMap<String, Tensor>, dev: &Device) -> ClipModel {
    let tensors = tensors
        .iter()
        .map(|(name, t)| (name.clone(), t.to_device(dev).unwrap()))
        .collect();
    ClipModel::new(cfg, VarBuilder::from_tensors(tensors, DType::F32, dev)).unwrap()
}

fn random_model(cfg: &ClipConfig) -> ClipModel {
    model_on(cfg, &random_tensors(cfg), &Device::Cpu)
}

fn normalised(t: &Tensor) -> Vec<f32> {
    let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn percentile(xs: &mut [f64], p: f64) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[((xs.len() as f64 - 1.0) * p).round() as usize]
}

/// GFLOP/s of one large f32 matmul (a ViT-B/32 MLP layer at batch 32) on
/// this machine, measured in the same run: the baseline that makes the
/// model's numbers comparable across noisy or different machines.
fn matmul_gflops() -> f64 {
    let x = Tensor::randn(0f32, 1.0, (1600, 768), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1.0, (768, 3072), &Device::Cpu).unwrap();
    x.matmul(&w).unwrap();
    let mut rates: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            x.matmul(&w).unwrap();
            2.0 * 1600.0 * 768.0 * 3072.0 / t.elapsed().as_secs_f64() / 1e9
        })
        .collect();
    median(&mut rates)
}

/// Multiply-adds ×2 of one ViT-B/32 image embedding (the linear layers and attention).
const VIT_B_32_GFLOP: f64 = 8.8;

/// Command-line switches of the benchmark.
struct Args {
    quick: bool,
    gpu: bool,
    images: bool,
    query: bool,
    indexing: bool,
    library_size: usize,
    photos: PathBuf,
}

impl Args {
    fn parse() -> Self {
        let args: Vec<String> = std::env::args().collect();
        let flag = |name: &str| args.iter().any(|a| a == name);
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let (images_only, query_only) = (flag("--images-only"), flag("--query-only"));
        let indexing_only = flag("--indexing-only");
        Self {
            quick: flag("--quick"),
            gpu: flag("--gpu"),
            images: !query_only && !indexing_only,
            query: !images_only && !indexing_only,
            indexing: !images_only && !query_only && !flag("--skip-indexing"),
            library_size: value("--n").and_then(|v| v.parse().ok()).unwrap_or(100_000),
            photos: value("--photos")
                .or_else(|| std::env::var("GLIMPSE_BENCH_PHOTOS").ok())
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/photos")
                }),
        }
    }
}

/// Images/s per precision of the vision tower at each batch size, and the
/// smallest cosine to fp32 over 8 random images.
fn image_rates(model: &ClipModel, batches: &[usize], quick: bool) -> Map<String, Value> {
    let s = model.config().vision_config.image_size;
    // One model per precision (clones share the f32 weights), timed in turn
    // batch after batch so that the machine's drift hits all alike.
    let precisions = [Precision::Fp32, Precision::Bf16, Precision::Int8];
    let models: Vec<ClipModel> = precisions
        .iter()
        .map(|&p| {
            let mut m = model.clone();
            m.set_image_precision(p).unwrap();
            m
        })
        .collect();
    let mut rates = vec![Map::new(); precisions.len()];
    for &batch in batches {
        let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &Device::Cpu).unwrap();
        for m in &models {
            m.image_features(&pixels).unwrap(); // warm-up
        }
        let reps = if quick { 2 } else { (64 / batch).clamp(3, 16) };
        let mut samples = vec![Vec::new(); models.len()];
        for _ in 0..reps {
            for (m, samples) in models.iter().zip(samples.iter_mut()) {
                let t = Instant::now();
                m.image_features(&pixels).unwrap();
                samples.push(batch as f64 / t.elapsed().as_secs_f64());
            }
        }
        for (r, mut samples) in rates.iter_mut().zip(samples) {
            r.insert(format!("batch_{batch}"), json!(median(&mut samples)));
        }
    }
    let probe = Tensor::randn(0f32, 1.0, (8, 3, s, s), &Device::Cpu).unwrap();
    let reference = models[0].image_features(&probe).unwrap();
    let mut by_precision = Map::new();
    for ((p, m), mut r) in precisions.iter().zip(&models).zip(rates) {
        let got = m.image_features(&probe).unwrap();
        let min_cosine = (0..8)
            .map(|i| {
                let a = normalised(&reference.get(i).unwrap());
                let b = normalised(&got.get(i).unwrap());
                a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
            })
            .fold(1f32, f32::min);
        r.insert("min_cosine_to_fp32".into(), json!(min_cosine));
        by_precision.insert(p.name().into(), r.into());
    }
    by_precision
}

/// A library of `n` photos with CLIP-like 512-d embeddings, opened afresh
/// and warmed up as a server would; with the RAM it takes per photo.
fn synthetic_library(dir: &Path, n: usize) -> (Library, Value) {
    let identity = ModelIdentity {
        name: "bench/random".into(),
        fingerprint: "bench".into(),
        dim: 512,
        preprocess: "bench".into(),
    };
    let mut rng = Rng(42);
    let centres = support::centres(&mut rng, 256, 512);
    {
        let mut library = Library::open_or_create(dir, &identity, false).expect("library");
        support::fill_library(&mut library, n, &mut rng, &centres);
        library.save_derived().expect("save");
    }
    let rss_before = status_kb("VmRSS:");
    let started = Instant::now();
    let mut library = Library::open(dir).expect("open");
    library.warm_up().expect("warm up");
    let startup_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_after = status_kb("VmRSS:");
    let vector_bytes = library.vector_ram_bytes().expect("vectors");
    let memory = json!({
        "photos": n,
        "startup_ms": startup_ms,
        "rss_bytes_per_photo": (rss_after.saturating_sub(rss_before) * 1024) as f64 / n as f64,
        "vector_bytes_per_photo": vector_bytes as f64 / n as f64,
    });
    (library, memory)
}

/// One text query end to end for each query precision: tokenise + encode
/// (`Clip::embed_texts`) + search `library` for the top 10.
fn query_latency(clip: &mut Clip, library: &mut Library, quick: bool) -> Value {
    let query = "kids building a sandcastle at sunset";
    let tokens = clip.tokenize(query).unwrap().len();
    let probes = [
        query,
        "a dog running on the beach",
        "red car",
        "a black and white photo of an old lighthouse on a rocky coast in winter",
        "birthday cake with candles",
    ];
    clip.set_query_precision(Precision::Fp32).unwrap();
    let reference = clip.embed_texts(&probes, false).unwrap();
    let runs = if quick { 20 } else { 200 };
    let mut by_precision = Map::new();
    for precision in [Precision::Fp32, Precision::Bf16, Precision::Int8] {
        clip.set_query_precision(precision).unwrap();
        let min_cosine = probes
            .iter()
            .zip(&reference)
            .map(|(p, want)| {
                let got = &clip.embed_texts(&[*p], false).unwrap()[0];
                got.iter().zip(want).map(|(a, b)| a * b).sum::<f32>()
            })
            .fold(1f32, f32::min);
        let search = |library: &mut Library, vector: Vec<f32>| {
            let request = SearchRequest {
                vector,
                k: 10,
                ..SearchRequest::default()
            };
            let hits = library.search(&request).expect("search").hits;
            assert_eq!(hits.len(), 10);
        };
        for _ in 0..5 {
            let v = clip.embed_texts(&[query], false).unwrap().remove(0);
            search(library, v);
        }
        let (mut total, mut encode, mut search_ms) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            let t = Instant::now();
            let v = clip.embed_texts(&[query], false).unwrap().remove(0);
            let t2 = Instant::now();
            search(library, v);
            let end = Instant::now();
            total.push((end - t).as_secs_f64() * 1e3);
            encode.push((t2 - t).as_secs_f64() * 1e3);
            search_ms.push((end - t2).as_secs_f64() * 1e3);
        }
        by_precision.insert(
            precision.name().into(),
            json!({
                "latency_ms_p50": median(&mut total),
                "latency_ms_p99": percentile(&mut total, 0.99),
                "tokenize_encode_ms_p50": median(&mut encode),
                "search_ms_p50": median(&mut search_ms),
                "search_ms_p99": percentile(&mut search_ms, 0.99),
                "min_cosine_to_fp32": min_cosine,
            }),
        );
    }
    json!({"text": query, "tokens": tokens, "top_k": 10, "by_precision": by_precision})
}

/// `glimpse index`'s pipeline on `photos` with `clip` (default options, the
/// model at its image precision), run three times (once with `quick`),
/// each between two timings of the model alone at the indexer's batch
/// size; the ratio to the model alone is the median of the runs' ratios.
fn indexing(clip: &Clip, photos: &Path, quick: bool) -> Value {
    let batch = support::index_options(photos).batch_size;
    let s = clip.config().vision_config.image_size;
    let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &Device::Cpu).unwrap();
    clip.model().image_features(&pixels).unwrap();
    // This machine's speed drifts by tens of percent between windows of a
    // few seconds, so one pipeline run against one set of model timings
    // gave ratios from 0.84 to 0.96 in one session. Each run is compared
    // with the model alone timed just before and just after it (batch
    // after batch, median); the process's CPU time over these timings is
    // what the model alone uses.
    let mut model_images = 0usize;
    let mut model_cpu = Some(0.0);
    let mut model_alone = || -> Vec<f64> {
        let cpu = support::process_cpu_seconds();
        let rates = (0..if quick { 2 } else { 4 })
            .map(|_| {
                let t = Instant::now();
                clip.model().image_features(&pixels).unwrap();
                model_images += batch;
                batch as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        model_cpu = model_cpu
            .zip(cpu.zip(support::process_cpu_seconds()))
            .map(|(total, (before, after))| total + after - before);
        rates
    };
    let mut all_rates = Vec::new();
    let mut before = model_alone();
    let mut runs = Vec::new();
    for _ in 0..if quick { 1 } else { 3 } {
        let cpu_before = support::process_cpu_seconds();
        let run = support::index_photos(clip, photos, 1).remove(0);
        let pipeline_cpu = cpu_before
            .zip(support::process_cpu_seconds())
            .map(|(before, after)| after - before);
        let after = model_alone();
        let mut around: Vec<f64> = before.iter().chain(&after).copied().collect();
        let ratio = run.indexed as f64 / run.seconds / median(&mut around);
        all_rates.extend(before);
        before = after;
        runs.push((ratio, run, pipeline_cpu));
    }
    all_rates.extend(before);
    let model_rate = median(&mut all_rates);
    // The run with the median ratio stands for all of them.
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let ratios: Vec<f64> = runs.iter().map(|(ratio, ..)| *ratio).collect();
    let (ratio, run, pipeline_cpu) = &runs[runs.len() / 2];
    let exact_options = glimpse_indexer::IndexOptions {
        reduce_large_images: false,
        ..support::index_options(photos)
    };
    let exact = &support::index_photos_with(clip, &exact_options, 1)[0];
    let embedded_per_s = run.indexed as f64 / run.seconds;
    let mut report = support::index_report(run);
    let exact_per_s = exact.indexed as f64 / exact.seconds;
    let mut exact_report = support::index_report(exact);
    exact_report.insert("embedded_images_per_s".into(), json!(exact_per_s));
    exact_report.insert(
        "embedded_over_model_alone".into(),
        json!(exact_per_s / model_rate),
    );
    report.insert("exact_decode".into(), exact_report.into());
    report.insert("reduced_decoding".into(), reduced_decoding(clip, photos));
    // What these cores allow (an estimate): the readers' work fits in the
    // CPU time the model alone leaves idle, or else the run takes at least
    // (model's CPU + readers' CPU) / cores.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let model_cpu = model_cpu.map(|total| total / model_images as f64 * run.indexed as f64);
    let model_wall = run.indexed as f64 / model_rate;
    let reading_cpu = reading_cpu_seconds(clip, photos, quick);
    let bound = model_cpu
        .zip(reading_cpu)
        .map(|(model, reading)| (cores * model_wall / (model + reading)).min(1.0));
    report.insert(
        "cpu_budget".into(),
        json!({
            "cores": cores,
            "reading_cpu_seconds": reading_cpu,
            "model_cpu_seconds": model_cpu,
            "model_wall_seconds": model_wall,
            "bound_over_model_alone": bound,
            "measured_over_bound": bound.map(|b| ratio / b),
            // The whole process during the indexing run: beyond the model's
            // and the readers' CPU, the library's writes (records,
            // thumbnails, keyword index) and what sharing the cores costs.
            "pipeline_cpu_seconds": pipeline_cpu,
            // Cores kept busy: when the pipeline's figure is no higher than
            // the model's alone, the readers' CPU only added to the run
            // (none of it went into the model's idle moments).
            "model_alone_cores_busy": model_cpu.map(|cpu| cpu / model_wall),
            "pipeline_cores_busy": pipeline_cpu.map(|cpu| cpu / run.seconds),
            "pipeline_cpu_beyond_model_and_readers": pipeline_cpu
                .zip(model_cpu.zip(reading_cpu))
                .map(|(all, (model, reading))| all - model - reading),
        }),
    );
    report.insert("photos".into(), json!(photos.display().to_string()));
    report.insert("embedded_images_per_s".into(), json!(embedded_per_s));
    report.insert("model_alone_images_per_s".into(), json!(model_rate));
    report.insert("model_batch_size".into(), json!(batch));
    report.insert("embedded_over_model_alone".into(), json!(ratio));
    report.insert("embedded_over_model_alone_runs".into(), json!(ratios));
    report.into()
}

/// The CPU seconds, on one thread, of what the indexer's readers do for
/// every file under `photos` besides the model: read, metadata and hash,
/// decode (large images reduced), model-input pixels and thumbnail; files of
/// formats the indexer skips are only read and hashed, as there. Median of
/// three passes (one with `--quick`); `None` where the thread's CPU time
/// cannot be read.
fn reading_cpu_seconds(clip: &Clip, photos: &Path, quick: bool) -> Option<f64> {
    let cfg = clip.preprocess();
    let options = support::index_options(photos);
    let entries: Vec<glimpse_indexer::WalkEntry> =
        glimpse_indexer::Walker::new(options.walk.clone())
            .unwrap()
            .flatten()
            .collect();
    let mut passes = Vec::new();
    for _ in 0..if quick { 1 } else { 3 } {
        let start = support::thread_cpu_seconds()?;
        for entry in &entries {
            let Ok(bytes) = std::fs::read(&entry.path) else {
                continue;
            };
            let meta = glimpse_indexer::read_metadata_bytes(&bytes, entry.mtime, Some(&entry.kind));
            std::hint::black_box(meta);
            if matches!(entry.kind, glimpse_indexer::FileKind::Unsupported(_)) {
                continue;
            }
            if let Ok(decoded) = options.decode(&bytes, cfg) {
                let pixels = glimpse_decoder::to_pixels(&decoded.rgb, cfg);
                let thumbnail =
                    glimpse_indexer::make_thumbnail(&decoded.rgb, options.thumbnail_side);
                std::hint::black_box((pixels, thumbnail.ok()));
            }
        }
        passes.push(support::thread_cpu_seconds()? - start);
    }
    Some(median(&mut passes))
}

/// For every image under `photos` that `glimpse index` reduces, while or
/// just after decoding (see `IndexOptions::reduce_large_images`): the model-input pixels and the
/// embedding (`clip`, at its image precision) of the reduced decode next to
/// the full-size decode's — largest and mean absolute pixel difference
/// (normalised units; one 8-bit level ≈ 0.015) and the smallest cosine.
fn reduced_decoding(clip: &Clip, photos: &Path) -> Value {
    let cfg = clip.preprocess();
    let options = support::index_options(photos);
    let min_side = options.reduced_min_side(cfg).expect("reduced by default");
    let walker = glimpse_indexer::Walker::new(options.walk).unwrap();
    let (mut max_diff, mut mean_diffs, mut cosines) = (0f32, Vec::new(), Vec::new());
    let mut by_reduction: HashMap<u32, usize> = HashMap::new();
    for entry in walker.flatten() {
        let Ok(bytes) = std::fs::read(&entry.path) else {
            continue;
        };
        let Ok(reduced) = glimpse_decoder::decode_bytes_reduced(&bytes, cfg, min_side) else {
            continue;
        };
        if reduced.reduction == 1 {
            continue;
        }
        *by_reduction.entry(reduced.reduction).or_default() += 1;
        let full = glimpse_decoder::decode_bytes(&bytes, cfg).unwrap();
        let (a, b) = (
            glimpse_decoder::to_pixels(&full.rgb, cfg),
            glimpse_decoder::to_pixels(&reduced.rgb, cfg),
        );
        let diffs: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
        max_diff = max_diff.max(diffs.iter().copied().fold(0f32, f32::max));
        mean_diffs.push(diffs.iter().sum::<f32>() / diffs.len() as f32);
        let e = clip.embed_pixels(&[a, b], false).unwrap();
        cosines.push(e[0].iter().zip(&e[1]).map(|(x, y)| x * y).sum::<f32>());
    }
    let n = mean_diffs.len();
    json!({
        "photos_reduced": n,
        "by_reduction": by_reduction,
        "min_side": min_side,
        "max_abs_pixel_diff": max_diff,
        "mean_abs_pixel_diff": mean_diffs.iter().sum::<f32>() / n.max(1) as f32,
        "worst_mean_abs_pixel_diff": mean_diffs.iter().copied().fold(0f32, f32::max),
        "min_cosine_to_full_decode": cosines.iter().copied().fold(1f32, f32::min),
        "median_cosine_to_full_decode": (n > 0)
            .then(|| median(&mut cosines.iter().map(|&c| f64::from(c)).collect::<Vec<_>>())),
    })
}

/// Smallest cosine between matching rows of two sets of embeddings.
fn min_row_cosine(a: &Tensor, b: &Tensor) -> f32 {
    (0..a.dim(0).unwrap())
        .map(|i| {
            let x = normalised(&a.get(i).unwrap());
            let y = normalised(&b.get(i).unwrap());
            x.iter().zip(&y).map(|(p, q)| p * q).sum::<f32>()
        })
        .fold(1f32, f32::min)
}

/// `--gpu`: the random ViT-B/32 on the first CUDA GPU (candle's CUDA
/// backend) in fp32 and in bf16 (`--precision bf16`: the linear layers'
/// weights and inputs in bf16 on the tensor cores, the rest f32), against
/// the same weights in fp32 on the CPU.
fn gpu_report(quick: bool) -> Value {
    let gpu = glimpse_clip::default_device();
    if gpu.is_cpu() {
        eprintln!(
            "--gpu: no CUDA GPU found (build with `--features cuda`; the CUDA driver, \
             cuBLAS, cuBLASLt, cuRAND and NVRTC libraries must be loadable; GLIMPSE_DEVICE \
             must not be `cpu`)"
        );
        std::process::exit(2);
    }
    let cfg = ClipConfig::vit_b_32();
    let tensors = random_tensors(&cfg);
    let s = cfg.vision_config.image_size;
    let preprocess = PreprocessConfig::openai(s);
    let cpu_clip = Clip::from_model(
        model_on(&cfg, &tensors, &Device::Cpu),
        Tokenizer::clip(),
        preprocess.clone(),
        "cpu",
    );
    let mut gpu_clip = Clip::from_model(
        model_on(&cfg, &tensors, &gpu),
        Tokenizer::clip(),
        preprocess,
        "gpu",
    );
    let sync = |t: Tensor| t.to_device(&Device::Cpu).unwrap();
    let probe = Tensor::randn(0f32, 1.0, (8, 3, s, s), &Device::Cpu).unwrap();
    let image_reference = cpu_clip.model().image_features(&probe).unwrap();
    let texts = [
        "kids building a sandcastle at sunset",
        "a dog running on the beach",
        "red car",
        "a black and white photo of an old lighthouse on a rocky coast in winter",
    ];
    let text_reference = cpu_clip.embed_texts(&texts, false).unwrap();
    let batch_texts: Vec<&str> = texts.iter().cycle().take(256).copied().collect();

    let mut by_precision = Map::new();
    for precision in [Precision::Fp32, Precision::Bf16] {
        gpu_clip.set_image_precision(precision).unwrap();
        gpu_clip.set_query_precision(precision).unwrap();
        let model = gpu_clip.model();
        let mut images = Map::new();
        for batch in [1usize, 8, 32, 128, 256] {
            let pixels = Tensor::randn(0f32, 1.0, (batch, 3, s, s), &gpu).unwrap();
            for _ in 0..3 {
                sync(model.image_features(&pixels).unwrap());
            }
            let mut rates: Vec<f64> = (0..if quick { 5 } else { 30 })
                .map(|_| {
                    let t = Instant::now();
                    sync(model.image_features(&pixels).unwrap());
                    batch as f64 / t.elapsed().as_secs_f64()
                })
                .collect();
            images.insert(format!("batch_{batch}"), json!(median(&mut rates)));
        }
        let got = sync(
            model
                .image_features(&probe.to_device(&gpu).unwrap())
                .unwrap(),
        );
        images.insert(
            "min_cosine_to_cpu_fp32".into(),
            json!(min_row_cosine(&image_reference, &got)),
        );
        let got = gpu_clip.embed_texts(&texts, false).unwrap();
        let text_cosine = text_reference
            .iter()
            .zip(&got)
            .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
            .fold(1f32, f32::min);
        for _ in 0..5 {
            gpu_clip.embed_texts(&texts[..1], false).unwrap();
        }
        let mut encode: Vec<f64> = (0..if quick { 20 } else { 200 })
            .map(|_| {
                let t = Instant::now();
                gpu_clip.embed_texts(&texts[..1], false).unwrap();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        gpu_clip.embed_texts(&batch_texts, false).unwrap();
        let mut text_rates: Vec<f64> = (0..if quick { 3 } else { 10 })
            .map(|_| {
                let t = Instant::now();
                gpu_clip.embed_texts(&batch_texts, false).unwrap();
                batch_texts.len() as f64 / t.elapsed().as_secs_f64()
            })
            .collect();
        let checks = json!({
            "image": gpu_clip.image_precision_check().map(|c| json!({
                "precision": c.precision.name(), "min_cosine": c.min_cosine, "bytes": c.bytes})),
            "query": gpu_clip.query_precision_check().map(|c| json!({
                "precision": c.precision.name(), "min_cosine": c.min_cosine, "bytes": c.bytes})),
        });
        by_precision.insert(
            precision.name().into(),
            json!({
                "image_embeddings_per_s": images,
                "query": {
                    "text": texts[0],
                    "tokenize_encode_ms_p50": median(&mut encode),
                    "tokenize_encode_ms_p99": percentile(&mut encode, 0.99),
                },
                "texts_min_cosine_to_cpu_fp32": text_cosine,
                "texts_per_s_batch_256": median(&mut text_rates),
                "load_time_checks": checks,
            }),
        );
    }
    json!({"device": format!("{gpu:?}"), "by_precision": by_precision})
}

fn main() {
    let args = Args::parse();
    if args.gpu {
        println!(
            "{}",
            serde_json::to_string_pretty(&gpu_report(args.quick)).unwrap()
        );
        return;
    }
    // The library's RAM is measured first, under glibc's default settings:
    // with freed memory retained (below) RSS growth would count what
    // earlier sections freed and loading reused, or not.
    let dir = tempfile::tempdir().expect("temp dir");
    let mut built = args
        .query
        .then(|| synthetic_library(dir.path(), args.library_size));
    // As the `glimpse` binary runs.
    glimpse_clip::retain_freed_memory();
    let gflops = matmul_gflops();
    let cfg = ClipConfig::vit_b_32();
    let model = random_model(&cfg);
    let mut report = Map::new();
    report.insert(
        "model".into(),
        json!("random-weight ViT-B/32 (openai/clip-vit-base-patch32 shapes)"),
    );
    report.insert(
        "threads".into(),
        json!(std::thread::available_parallelism().map_or(1, |n| n.get())),
    );
    let mut baseline = json!({ "matmul_gflops": gflops });
    if args.images {
        let batches: &[usize] = if args.query { &[1, 8, 32] } else { &[32] };
        let images = image_rates(&model, batches, args.quick);
        if let Some(b32) = images["fp32"].get("batch_32").and_then(Value::as_f64) {
            baseline["batch_32_model_gflops"] = json!(b32 * VIT_B_32_GFLOP);
            baseline["batch_32_fraction_of_matmul_rate"] = json!(b32 * VIT_B_32_GFLOP / gflops);
        }
        report.insert("image_embeddings_per_s".into(), images.into());
    }
    let mut clip = Clip::from_model(
        model,
        Tokenizer::clip(),
        PreprocessConfig::openai(cfg.vision_config.image_size),
        "bench/random-vit-b-32",
    );
    if args.query {
        let (mut library, memory) = built.take().expect("built above");
        report.insert("memory".into(), memory);
        // As `glimpse serve` does once its library is loaded: hand back
        // what the image batches above freed. (A query after those batches
        // was measured 1.2-2.5 ms slower than in a query-only run; this
        // did not reliably close the gap; see the README's Benchmarks.)
        glimpse_clip::release_freed_memory();
        report.insert(
            "query".into(),
            query_latency(&mut clip, &mut library, args.quick),
        );
    }
    if args.indexing {
        clip.set_query_precision(Precision::Fp32).unwrap();
        // As `glimpse index` runs: image precision `auto` (int8 where the
        // CPU has int8 dot products, else bf16 where it has bf16 ones, else
        // fp32).
        clip.set_image_precision(Precision::Auto).unwrap();
        if args.photos.is_dir() {
            let mut run = indexing(&clip, &args.photos, args.quick);
            run["image_precision"] = json!(clip.image_precision().name());
            report.insert("indexing".into(), run);
        } else {
            eprintln!("no photos at {}: indexing skipped", args.photos.display());
        }
    }
    report.insert("baseline".into(), baseline);
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(report)).unwrap()
    );
}
