//! Model speed on the CPU: image embeddings/s at batch 1, 8 and 32 and
//! single text-query latency, for a random-weight ViT-B/32 built with the
//! real shapes (pretrained weights cannot be downloaded here; speed does not
//! depend on the values). Prints one JSON report.
//!
//! `cargo bench --bench model` (add `-- --quick` for fewer repetitions,
//! `--query-only` or `--images-only` for one half). Images and queries are
//! timed and compared with fp32 (minimum cosine over 8 images / five probe
//! texts) for each precision of the weights (fp32, bf16, int8).

use std::collections::HashMap;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use glimpse_clip::{ClipConfig, ClipModel, Precision};
use glimpse_tokenizer::Tokenizer;

fn random_model(cfg: &ClipConfig) -> ClipModel {
    let dev = Device::Cpu;
    let tensors: HashMap<String, Tensor> = cfg
        .expected_tensors()
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
        .collect();
    ClipModel::new(cfg, VarBuilder::from_tensors(tensors, DType::F32, &dev)).unwrap()
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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let gflops = matmul_gflops();
    let cfg = ClipConfig::vit_b_32();
    let mut model = random_model(&cfg);
    let s = cfg.vision_config.image_size;
    let query_only = std::env::args().any(|a| a == "--query-only");
    let mut images = serde_json::Map::new();
    let images_only = std::env::args().any(|a| a == "--images-only");
    let batches: &[usize] = if query_only {
        &[]
    } else if images_only {
        &[32]
    } else {
        &[1, 8, 32]
    };
    // Images per precision of the vision tower's weights: one model per
    // precision (clones share the f32 weights), timed in turn batch after
    // batch so that the machine's drift hits all alike; the smallest cosine
    // to fp32 over a batch of 8.
    let precisions = [Precision::Fp32, Precision::Bf16, Precision::Int8];
    let models: Vec<ClipModel> = precisions
        .iter()
        .map(|&p| {
            let mut m = model.clone();
            m.set_image_precision(p).unwrap();
            m
        })
        .collect();
    let probe = Tensor::randn(0f32, 1.0, (8, 3, s, s), &Device::Cpu).unwrap();
    let mut images_by_precision = serde_json::Map::new();
    let mut rates = vec![serde_json::Map::new(); precisions.len()];
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
            r.insert(
                format!("batch_{batch}"),
                serde_json::json!(median(&mut samples)),
            );
        }
    }
    if !batches.is_empty() {
        let reference = models[0].image_features(&probe).unwrap();
        for ((p, m), mut r) in precisions.iter().zip(&models).zip(rates) {
            let got = m.image_features(&probe).unwrap();
            let min_cosine = (0..8)
                .map(|i| {
                    let a = normalised(&reference.get(i).unwrap());
                    let b = normalised(&got.get(i).unwrap());
                    a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
                })
                .fold(1f32, f32::min);
            if *p == Precision::Fp32 {
                images = r.clone();
            }
            r.insert("min_cosine_to_fp32".into(), serde_json::json!(min_cosine));
            images_by_precision.insert(p.name().into(), r.into());
        }
    }
    drop(models);

    let b32 = images
        .get("batch_32")
        .and_then(|v| v.as_f64())
        .unwrap_or(0.0);
    let baseline = serde_json::json!({
        "matmul_gflops": gflops,
        "batch_32_model_gflops": b32 * VIT_B_32_GFLOP,
        "batch_32_fraction_of_matmul_rate": b32 * VIT_B_32_GFLOP / gflops,
    });
    if images_only {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"image_embeddings_per_s": images_by_precision, "baseline": baseline})
            )
            .unwrap()
        );
        return;
    }
    let tokenizer = Tokenizer::clip();
    let query = "a dog running on the beach";
    let ids = tokenizer.tokenize_unpadded(query, 77).unwrap();
    // Queries for the cosine check: short and long, different words.
    let probes: Vec<Vec<u32>> = [
        query,
        "kids building a sandcastle at sunset",
        "red car",
        "a black and white photo of an old lighthouse on a rocky coast in winter",
        "birthday cake with candles",
    ]
    .iter()
    .map(|t| tokenizer.tokenize_unpadded(t, 77).unwrap())
    .collect();
    let reference: Vec<Vec<f32>> = probes
        .iter()
        .map(|p| normalised(&model.text_features(std::slice::from_ref(p)).unwrap()))
        .collect();
    let runs = if quick { 20 } else { 200 };
    let mut queries = serde_json::Map::new();
    for precision in [Precision::Fp32, Precision::Bf16, Precision::Int8] {
        let copy_bytes = model.set_query_precision(precision).unwrap();
        let min_cosine = probes
            .iter()
            .zip(&reference)
            .map(|(p, want)| {
                let got = normalised(&model.text_features(std::slice::from_ref(p)).unwrap());
                got.iter().zip(want).map(|(a, b)| a * b).sum::<f32>()
            })
            .fold(1f32, f32::min);
        let mut lat = Vec::with_capacity(runs);
        let mut lat_encode_only = Vec::with_capacity(runs);
        for _ in 0..5 {
            model.text_features(std::slice::from_ref(&ids)).unwrap();
        }
        for _ in 0..runs {
            let t = Instant::now();
            let ids = tokenizer.tokenize_unpadded(query, 77).unwrap();
            let t2 = Instant::now();
            model.text_features(&[ids]).unwrap();
            lat_encode_only.push(t2.elapsed().as_secs_f64() * 1e3);
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        queries.insert(
            precision.name().to_string(),
            serde_json::json!({
                "latency_ms_p50": median(&mut lat),
                "latency_ms_p99": percentile(&mut lat, 0.99),
                "encode_only_ms_p50": median(&mut lat_encode_only),
                "min_cosine_to_fp32": min_cosine,
                "weight_copy_mb": copy_bytes as f64 / 1e6,
            }),
        );
    }
    let report = serde_json::json!({
        "model": "random-weight ViT-B/32 (openai/clip-vit-base-patch32 shapes)",
        "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "image_embeddings_per_s": images_by_precision,
        "baseline": baseline,
        "query": {"text": query, "tokens": ids.len(), "by_precision": queries},
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}
