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

/// Recall@10 of the scan (`SearchMethod::Exact`: 4-bit sketch pass, int8
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
            let mut truth: Vec<(f32, u64)> = all
                .iter()
                .map(|(id, e)| (e.iter().zip(q).map(|(a, b)| a * b).sum(), *id))
                .collect();
            truth.sort_by(|a, b| b.0.total_cmp(&a.0));
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

fn vectors(n: usize, with_graph: bool) -> serde_json::Value {
    let dim = 512;
    let dir = tempfile::tempdir().expect("temp dir");
    let identity = ModelIdentity {
        name: "bench/random".into(),
        fingerprint: "bench".into(),
        dim,
        preprocess: "bench".into(),
    };
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
    }
    println!("{}", serde_json::Value::Object(report));
}
