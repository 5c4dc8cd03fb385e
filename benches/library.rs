//! Library benchmark (issue #3): prints one JSON report.
//!
//! - `indexing`: files/s indexing a photo folder (default `../shared/data/photos`,
//!   or `GLIMPSE_BENCH_PHOTOS`) with the tiny fixture model and, when
//!   `GLIMPSE_BENCH_VITB32` names a ViT-B/32 folder, with that model; peak RSS.
//! - `vectors`: a library of N CLIP-like 512-d vectors (default 100,000;
//!   `--n`): build time (commits + graph), startup time (open + warm up),
//!   recall@10 of the graph against the exact scan, recall@10 of the scan
//!   against exact f32 brute force (queries near photos and weak,
//!   text-like ones), queries/s of both, and RAM per photo of the loaded
//!   vectors.
//! - `spectral`: the scan's recall@10 and time on a harder library of N
//!   vectors with a CLIP-like spectrum (see [`Spectral`]), where the scores
//!   of a text-like query's best thousand photos lie within a few
//!   hundredths: on the clustered vectors above even a 1-bit sketch finds
//!   the top 10, so they cannot tell sketches apart.
//!
//! `cargo bench --bench library -- [--n N] [--skip-indexing] [--skip-vectors]
//! [--no-graph]` (`--no-graph`: no graph recall or timings, so no graph is
//! built for libraries the exact scan serves).

use std::path::{Path, PathBuf};
use std::time::Instant;

use glimpse_clip::Clip;
use glimpse_store::{Library, ModelIdentity, SearchMethod, SearchRequest, GRAPH_EF};
use serde_json::json;

mod support;
use support::{clip_like, status_kb, Rng};

fn index_folder(model: &Path, photos: &Path) -> serde_json::Value {
    let clip = Clip::load_dir(model, &candle_core::Device::Cpu).expect("model loads");
    let runs = support::index_photos(&clip, photos, 2);
    let mut report = support::index_report(&runs[0]);
    report.insert("model".into(), json!(model.display().to_string()));
    report.insert("second_run_seconds".into(), json!(runs[1].seconds));
    report.insert("second_run_unchanged".into(), json!(runs[1].unchanged));
    report.into()
}

/// Recall@10 of the scan (`SearchMethod::Exact`: 2-bit sketch pass, int8
/// rows, exact f32 re-scoring) against the exact f32 ranking of every
/// embedding in `library`: for `near` queries (CLIP-like points, as the
/// timings use) and for as many weak, text-like ones (a centre plus heavy
/// noise), with the mean cosine of their best photo.
fn scan_recall(
    library: &mut Library,
    near: &[Vec<f32>],
    rng: &mut Rng,
    centres: &[Vec<f32>],
) -> serde_json::Value {
    let records: Vec<u64> = library.photos().map(|r| r.expect("photo").id).collect();
    let all: Vec<(u64, Vec<f32>)> = records
        .into_iter()
        .filter_map(|id| library.embedding(id).expect("embedding").map(|e| (id, e)))
        .collect();
    let weak: Vec<Vec<f32>> = (0..near.len())
        .map(|i| {
            let c = &centres[(i * 37) % centres.len()];
            support::unit(c.iter().map(|x| x + 0.15 * rng.next()).collect())
        })
        .collect();
    let mut recall = |queries: &[Vec<f32>]| {
        let (mut found, mut best) = (0usize, 0f64);
        for q in queries {
            let truth = exact_ranking(&all, q);
            best += f64::from(truth[0].0);
            let request = SearchRequest {
                vector: q.clone(),
                k: 10,
                method: SearchMethod::Exact,
                ..SearchRequest::default()
            };
            let hits = library.search(&request).expect("search").hits;
            found += truth[..10]
                .iter()
                .filter(|(_, id)| hits.iter().any(|h| h.id == *id))
                .count();
        }
        let n = queries.len() as f64;
        json!({"recall": found as f64 / (10.0 * n), "best_cosine_mean": best / n})
    };
    json!({ "near_queries": recall(near), "weak_queries": recall(&weak) })
}

/// `(score, id)` of every embedding in `all` for `q`, best first: the exact
/// f32 ranking recall is measured against.
fn exact_ranking(all: &[(u64, Vec<f32>)], q: &[f32]) -> Vec<(f32, u64)> {
    let mut ranking: Vec<(f32, u64)> = all
        .iter()
        .map(|(id, e)| (e.iter().zip(q).map(|(a, b)| a * b).sum(), *id))
        .collect();
    ranking.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranking
}

/// The model identity of a synthetic library (no model made its vectors).
fn bench_identity(name: &str, dim: usize) -> ModelIdentity {
    ModelIdentity {
        name: name.into(),
        fingerprint: "bench".into(),
        dim,
        preprocess: "bench".into(),
    }
}

fn vectors(n: usize, with_graph: bool) -> serde_json::Value {
    let dim = 512;
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = bench_identity("bench/random", dim);
    let mut rng = Rng(42);
    let centres = support::centres(&mut rng, 256, dim);
    let started = Instant::now();
    {
        let mut library = Library::open_or_create(dir.path(), &identity, false).expect("library");
        support::fill_library(&mut library, n, &mut rng, &centres);
        let commits = started.elapsed().as_secs_f64();
        let graph_started = Instant::now();
        library.save_derived().expect("save");
        eprintln!(
            "built {n} vectors: commits {commits:.1} s, graph + keywords {:.1} s",
            graph_started.elapsed().as_secs_f64()
        );
    }
    let build_seconds = started.elapsed().as_secs_f64();

    let rss_before = status_kb("VmRSS:");
    let started = Instant::now();
    let mut library = Library::open(dir.path()).expect("open");
    let open_ms = started.elapsed().as_secs_f64() * 1e3;
    library.warm_up().expect("warm up");
    let startup_ms = started.elapsed().as_secs_f64() * 1e3;
    let rss_after = status_kb("VmRSS:");
    let vector_bytes = library.vector_ram_bytes().expect("vectors");

    let queries: Vec<Vec<f32>> = (0..200)
        .map(|i| clip_like(&mut rng, &centres, n + i * 13))
        .collect();
    let (mut found, mut total) = (0usize, 0usize);
    for q in queries.iter().filter(|_| with_graph) {
        let (exact, approx) = library.compare_methods(q, 10, GRAPH_EF).expect("compare");
        total += exact.len();
        found += exact.iter().filter(|id| approx.contains(id)).count();
    }
    let time_method = |library: &mut Library, method: SearchMethod| {
        let mut times = Vec::new();
        for q in &queries {
            let request = SearchRequest {
                vector: q.clone(),
                k: 10,
                method,
                ..SearchRequest::default()
            };
            let t = Instant::now();
            let results = library.search(&request).expect("search");
            times.push(t.elapsed().as_secs_f64() * 1e3);
            assert_eq!(results.hits.len(), 10);
        }
        times.sort_by(f64::total_cmp);
        (times[times.len() / 2], times[times.len() * 99 / 100])
    };
    let (exact_p50, exact_p99) = time_method(&mut library, SearchMethod::Exact);
    let rss_after_exact = status_kb("VmRSS:");
    let (graph_p50, graph_p99) = if with_graph {
        time_method(&mut library, SearchMethod::Graph)
    } else {
        (f64::NAN, f64::NAN)
    };
    let rss_after_graph = status_kb("VmRSS:");
    let scan_recall = scan_recall(&mut library, &queries[..50], &mut rng, &centres);
    let per_photo = |kb: u64| (kb.saturating_sub(rss_before) * 1024) as f64 / n as f64;
    json!({
        "n": n,
        "dim": dim,
        "build_seconds": build_seconds,
        "open_ms": open_ms,
        "startup_ms": startup_ms,
        "recall_at_10": if with_graph { json!(found as f64 / total as f64) } else { json!(null) },
        "graph_ef": GRAPH_EF,
        "exact_ms_p50": exact_p50,
        "exact_ms_p99": exact_p99,
        "exact_qps": 1e3 / exact_p50,
        "scan_recall_at_10": scan_recall,
        "graph_ms_p50": if with_graph { json!(graph_p50) } else { json!(null) },
        "graph_ms_p99": if with_graph { json!(graph_p99) } else { json!(null) },
        "vector_bytes_per_photo": vector_bytes as f64 / n as f64,
        "rss_bytes_per_photo_after_warm_up": per_photo(rss_after),
        "rss_bytes_per_photo_after_exact_queries": per_photo(rss_after_exact),
        "rss_bytes_per_photo_with_graph": if with_graph { json!(per_photo(rss_after_graph)) } else { json!(null) },
    })
}

/// Unit vectors with a CLIP-like shape: a common direction (mean cosine
/// between two vectors ≈ 0.5, as between CLIP image embeddings) plus a
/// Gaussian part whose variance along the `j`-th of a random orthonormal
/// basis falls as `1 / (j + 1)` (a power-law spectrum); queries are
/// text-like: a target vector at weight 0.3, a shared "modality" direction
/// and noise, so that the best photo's cosine is ≈ 0.3 and the 1,000th's
/// ≈ 0.23.
struct Spectral {
    mean: Vec<f32>,
    basis: Vec<Vec<f32>>,
    text: Vec<f32>,
}

impl Spectral {
    fn new(rng: &mut Rng, dim: usize) -> Self {
        // Gram–Schmidt of random vectors, in f64.
        let mut basis: Vec<Vec<f64>> = Vec::with_capacity(dim);
        while basis.len() < dim {
            let mut v: Vec<f64> = (0..dim).map(|_| f64::from(gaussian(rng))).collect();
            for b in &basis {
                let d: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
                v.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
            }
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            if norm > 1e-6 {
                basis.push(v.into_iter().map(|x| x / norm).collect());
            }
        }
        let basis = basis
            .into_iter()
            .map(|b| b.into_iter().map(|x| x as f32).collect())
            .collect();
        let mean = support::unit((0..dim).map(|_| gaussian(rng)).collect());
        let text: Vec<f32> = (0..dim).map(|_| gaussian(rng)).collect();
        let along: f32 = text.iter().zip(&mean).map(|(t, m)| t * m).sum();
        let text = support::unit(text.iter().zip(&mean).map(|(t, m)| t - along * m).collect());
        Self { mean, basis, text }
    }

    fn photo(&self, rng: &mut Rng) -> Vec<f32> {
        let dim = self.mean.len();
        let mut v = vec![0f32; dim];
        for (j, b) in self.basis.iter().enumerate() {
            let z = gaussian(rng) / ((j + 1) as f32).sqrt();
            v.iter_mut().zip(b).for_each(|(x, y)| *x += z * y);
        }
        let v = support::unit(v);
        support::unit(
            self.mean
                .iter()
                .zip(&v)
                .map(|(m, x)| 0.7 * m + 0.71 * x)
                .collect(),
        )
    }

    fn query(&self, rng: &mut Rng, target: &[f32]) -> Vec<f32> {
        let noise = support::unit((0..target.len()).map(|_| gaussian(rng)).collect());
        support::unit(
            target
                .iter()
                .zip(&self.text)
                .zip(&noise)
                .map(|((t, m), z)| 0.3 * t + 0.5 * m + 0.81 * z)
                .collect(),
        )
    }
}

/// A standard normal value (Box–Muller).
fn gaussian(rng: &mut Rng) -> f32 {
    let u1 = (rng.next() * 0.5 + 0.5).max(1e-7);
    let u2 = rng.next() * 0.5 + 0.5;
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// The scan's recall@10 and p50 on a library of `n` [`Spectral`] vectors.
fn spectral(n: usize) -> serde_json::Value {
    let dim = 512;
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = bench_identity("bench/spectral", dim);
    let mut rng = Rng(7);
    let shape = Spectral::new(&mut rng, dim);
    let mut targets = Vec::new();
    {
        let mut library = Library::open_or_create(dir.path(), &identity, false).expect("library");
        support::fill_library_with(&mut library, n, |j| {
            let v = shape.photo(&mut rng);
            if j % (n / 100).max(1) == 0 {
                targets.push(v.clone());
            }
            v
        });
        library.save_derived().expect("save");
    }
    let mut library = Library::open(dir.path()).expect("open");
    library.warm_up().expect("warm up");
    let all: Vec<(u64, Vec<f32>)> = library
        .photos()
        .map(|r| r.expect("photo").id)
        .collect::<Vec<_>>()
        .into_iter()
        .filter_map(|id| library.embedding(id).expect("embedding").map(|e| (id, e)))
        .collect();
    let queries: Vec<Vec<f32>> = targets.iter().map(|t| shape.query(&mut rng, t)).collect();
    let (mut found, mut best, mut thousandth, mut times) = (0usize, 0f64, 0f64, Vec::new());
    for q in &queries {
        let truth = exact_ranking(&all, q);
        best += f64::from(truth[0].0);
        thousandth += f64::from(truth[999.min(truth.len() - 1)].0);
        let request = SearchRequest {
            vector: q.clone(),
            k: 10,
            method: SearchMethod::Exact,
            ..SearchRequest::default()
        };
        let t = Instant::now();
        let hits = library.search(&request).expect("search").hits;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        found += truth[..10]
            .iter()
            .filter(|(_, id)| hits.iter().any(|h| h.id == *id))
            .count();
    }
    times.sort_by(f64::total_cmp);
    let count = queries.len() as f64;
    let pairs = all.len().min(400) / 2;
    let pairwise = (0..pairs)
        .map(|i| {
            let (a, b) = (&all[2 * i].1, &all[2 * i + 1].1);
            f64::from(a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
        })
        .sum::<f64>()
        / pairs.max(1) as f64;
    json!({
        "n": n,
        "sketch_pass": n >= 32_768,
        "queries": queries.len(),
        "scan_recall_at_10": found as f64 / (10.0 * count),
        "best_cosine_mean": best / count,
        "thousandth_cosine_mean": thousandth / count,
        "mean_pairwise_cosine": pairwise,
        "exact_ms_p50": times[times.len() / 2],
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let n = args
        .iter()
        .position(|a| a == "--n")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut report = serde_json::Map::new();
    if !flag("--skip-indexing") {
        let photos = std::env::var_os("GLIMPSE_BENCH_PHOTOS")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../shared/data/photos"));
        let mut runs = vec![index_folder(
            &root.join("tests/fixtures/clip-tiny-hf"),
            &photos,
        )];
        if let Some(vitb32) = std::env::var_os("GLIMPSE_BENCH_VITB32") {
            runs.push(index_folder(Path::new(&vitb32), &photos));
        }
        report.insert("indexing".into(), json!(runs));
        report.insert("indexing_peak_rss_kb".into(), json!(status_kb("VmHWM:")));
    }
    if !flag("--skip-vectors") {
        report.insert("vectors".into(), vectors(n, !flag("--no-graph")));
        // Recall@10 needs more than 10 photos; below 32,768 (the store's
        // `SKETCH_MIN_ROWS`) the scan reads no sketches, so the part says so.
        if n >= 1_000 {
            report.insert("spectral".into(), spectral(n));
        }
    }
    println!("{}", serde_json::Value::Object(report));
}
