//! Server load benchmark (issue #4): prints one JSON report.
//!
//! Builds a library of N photos (default 10,000; `--n`) with CLIP-like
//! embeddings of the model's dimension, serves it with `glimpse_server`
//! on a loopback port (in this process, as `glimpse serve` would), and runs
//! C concurrent clients (default 8; `--clients`) for D seconds (default 30;
//! `--seconds`), each sending text searches from a list of 5–10 word queries
//! (`GET /api/search?q=…&k=50`) over keep-alive connections, with text
//! queries at `--precision` (default auto, as `glimpse serve`). Reports
//! requests/s, latency p50/p90/p99/max and errors (anything but 200).
//!
//! The model is the tiny fixture unless `GLIMPSE_BENCH_VITB32` names a
//! ViT-B/32 folder (HF layout) — then the text tower costs what it costs
//! with the real architecture. The query cache is defeated by numbering
//! every query, so each request runs the model.
//!
//! `cargo bench --bench server -- [--n N] [--clients C] [--seconds D]`

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use glimpse_clip::{Clip, Precision};
use glimpse_indexer::model_identity;
use glimpse_server::{AppState, ServeOptions};
use glimpse_store::Library;
use serde_json::json;

mod support;
use support::{centres, fill_library, status_kb, Rng};

const QUERIES: [&str; 12] = [
    "kids building a sandcastle at sunset",
    "a dog running on the beach",
    "birthday cake with candles on a table",
    "snowy mountains under a clear blue sky",
    "a red car parked in a narrow street",
    "people dancing at a wedding party",
    "a cat sleeping on a sofa by the window",
    "city skyline at night with bright lights",
    "a bowl of fresh fruit on a kitchen counter",
    "children playing football in the park",
    "an old stone bridge over a river",
    "a family picnic under a big tree",
];

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn main() {
    // As the `glimpse` binary runs.
    glimpse_clip::retain_freed_memory();
    let n = arg("--n", 10_000);
    let clients = arg("--clients", 8);
    let seconds = arg("--seconds", 30);
    let model = std::env::var("GLIMPSE_BENCH_VITB32")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip-tiny-hf")
        });
    // Queries at the precision `glimpse serve` uses by default (auto), or
    // `--precision fp32|bf16|int8`.
    let args: Vec<String> = std::env::args().collect();
    let precision: Precision = args
        .iter()
        .position(|a| a == "--precision")
        .and_then(|i| args.get(i + 1))
        .map_or("auto", |s| s.as_str())
        .parse()
        .expect("--precision fp32|bf16|int8|auto");
    let mut clip = Clip::load_dir(&model, &candle_core::Device::Cpu).expect("model loads");
    clip.set_query_precision(precision)
        .expect("reduced-precision weights");
    let query_precision = clip.query_precision().name();
    let clip = Arc::new(clip);
    let dir = tempfile::tempdir().expect("temp dir");
    let built = Instant::now();
    {
        let mut library =
            Library::open_or_create(dir.path(), &model_identity(&clip), false).expect("library");
        let mut rng = Rng(7);
        let centres = centres(&mut rng, 256, clip.embedding_dim());
        fill_library(&mut library, n, &mut rng, &centres);
        library.save_derived().expect("save");
    }
    eprintln!(
        "library of {n} built in {:.1} s",
        built.elapsed().as_secs_f64()
    );
    let library = Library::open(dir.path()).expect("open");
    let options = ServeOptions {
        bind: "127.0.0.1:0".into(),
        ..ServeOptions::default()
    };
    let state = AppState::new(library, clip, options).expect("state");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        glimpse_server::run(state, None, |addrs| {
            let _ = tx.send(addrs[0]);
        })
        .expect("server runs");
    });
    let addr = rx.recv().expect("server listening");
    let base = format!("http://{addr}");

    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (stop, counter, latencies, errors, base) = (
                stop.clone(),
                counter.clone(),
                latencies.clone(),
                errors.clone(),
                base.clone(),
            );
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(30))
                    .build();
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let i = counter.fetch_add(1, Ordering::Relaxed);
                    // A number makes every query new (no cache hits).
                    let q = format!("{} {i}", QUERIES[i % QUERIES.len()]);
                    let t = Instant::now();
                    let ok = agent
                        .get(&format!("{base}/api/search"))
                        .query("q", &q)
                        .query("k", "50")
                        .call()
                        .ok()
                        .filter(|r| r.status() == 200)
                        .and_then(|r| r.into_string().ok())
                        .is_some_and(|body| body.contains("\"results\""));
                    mine.push(t.elapsed().as_secs_f64() * 1000.0);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                latencies.lock().expect("latencies").extend(mine);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds as u64));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = latencies.lock().expect("latencies").clone();
    all.sort_by(f64::total_cmp);
    let report = json!({
        "benchmark": "server",
        "model": model.display().to_string(),
        "query_precision": query_precision,
        "photos": n,
        "clients": clients,
        "seconds": elapsed,
        "requests": all.len(),
        "requests_per_s": all.len() as f64 / elapsed,
        "latency_ms": {
            "p50": percentile(&all, 0.50),
            "p90": percentile(&all, 0.90),
            "p99": percentile(&all, 0.99),
            "max": all.last().copied().unwrap_or(0.0),
        },
        "errors": errors.load(Ordering::Relaxed),
        "peak_rss_mb": status_kb("VmHWM:") as f64 / 1024.0,
    });
    println!("{report}");
}
