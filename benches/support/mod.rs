//! Helpers shared by the benchmarks: synthetic CLIP-like libraries,
//! indexing runs and memory readings.
#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use glimpse_clip::Clip;
use glimpse_indexer::{index_library, model_identity, IndexOptions, IndexSummary, WalkOptions};
use glimpse_store::{Change, Library, PhotoMetadata, PhotoRecord, TakenAtSource};

/// `glimpse index`'s default options for the folder `photos`.
pub fn index_options(photos: &Path) -> IndexOptions {
    IndexOptions {
        walk: WalkOptions {
            roots: vec![photos.to_path_buf()],
            ..WalkOptions::default()
        },
        ..IndexOptions::default()
    }
}

/// Indexes `photos` with `clip` into a fresh library `runs` times (a
/// second run finds nothing changed), with `glimpse index`'s pipeline and
/// default options; the summary of each run.
pub fn index_photos(clip: &Clip, photos: &Path, runs: usize) -> Vec<IndexSummary> {
    index_photos_with(clip, &index_options(photos), runs)
}

/// [`index_photos`] with `options` (whose roots say what is indexed).
pub fn index_photos_with(clip: &Clip, options: &IndexOptions, runs: usize) -> Vec<IndexSummary> {
    let dir = tempfile::tempdir().expect("temp dir");
    let library = Mutex::new(
        Library::open_or_create(dir.path(), &model_identity(clip), false).expect("library"),
    );
    let options = options.clone();
    let cancel = AtomicBool::new(false);
    (0..runs)
        .map(|_| index_library(&library, clip, &options, &|_| {}, &cancel).expect("index"))
        .collect()
}

/// What both benchmarks report of an indexing run.
pub fn index_report(run: &IndexSummary) -> serde_json::Map<String, serde_json::Value> {
    let files = run.indexed + run.failed + run.unchanged;
    let mut report = serde_json::Map::new();
    report.insert("files".into(), files.into());
    report.insert("indexed".into(), run.indexed.into());
    report.insert("failed".into(), run.failed.into());
    report.insert("seconds".into(), run.seconds.into());
    report.insert("files_per_s".into(), (files as f64 / run.seconds).into());
    report.insert(
        "indexed_per_s".into(),
        (run.indexed as f64 / run.seconds).into(),
    );
    report
}

/// A `/proc/self/status` memory field (`VmHWM`: peak RSS, `VmRSS`: now), in kB.
pub fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// CPU time of the calling thread so far, in seconds (Linux
/// `/proc/thread-self/schedstat`, nanosecond resolution); `None` elsewhere.
pub fn thread_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 * 1e-9)
}

/// CPU time of the whole process so far (user + system, all threads), in
/// seconds (Linux `/proc/self/stat`, in clock ticks of 10 ms); `None`
/// elsewhere.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 here.
    Some((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// A deterministic pseudo-random generator.
pub struct Rng(pub u64);
impl Rng {
    /// Uniform in [-1, 1).
    pub fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// `v` scaled to unit length.
pub fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// CLIP-like: clusters of varying tightness around 256 centres.
pub fn clip_like(rng: &mut Rng, centres: &[Vec<f32>], i: usize) -> Vec<f32> {
    let c = &centres[(i * 7919) % centres.len()];
    let spread = 0.03 + 0.05 * ((i % 5) as f32);
    unit(c.iter().map(|x| x + spread * rng.next()).collect())
}

/// `count` unit vectors of `dim` around random centres.
pub fn centres(rng: &mut Rng, count: usize, dim: usize) -> Vec<Vec<f32>> {
    (0..count)
        .map(|_| unit((0..dim).map(|_| rng.next()).collect()))
        .collect()
}

/// Commits `n` photos with CLIP-like embeddings around `centres` (in
/// batches of 5,000), spread over 100 folders, three cameras and a few
/// years of dates.
pub fn fill_library(library: &mut Library, n: usize, rng: &mut Rng, centres: &[Vec<f32>]) {
    fill_library_with(library, n, |j| clip_like(rng, centres, j));
}

/// [`fill_library`] with photo `j`'s embedding from `embedding(j)`.
pub fn fill_library_with(
    library: &mut Library,
    n: usize,
    mut embedding: impl FnMut(usize) -> Vec<f32>,
) {
    let mut i = 0;
    while i < n {
        let end = (i + 5_000).min(n);
        let changes = (i..end)
            .map(|j| Change::Put {
                record: Box::new(PhotoRecord {
                    id: 0,
                    path: format!("/photos/{}/IMG_{j:06}.jpg", j % 100),
                    size: 3_000_000,
                    mtime_ns: j as i64,
                    meta: PhotoMetadata {
                        taken_at: 1_500_000_000 + j as i64 * 600,
                        taken_at_offset_minutes: None,
                        taken_at_source: TakenAtSource::Exif,
                        camera_make: Some(["Canon", "NIKON", "Apple"][j % 3].into()),
                        camera_model: None,
                        lens: None,
                        gps: None,
                        orientation: 1,
                        width: Some(4000),
                        height: Some(3000),
                        bytes: 3_000_000,
                        blake3: format!("{j:064x}"),
                        mime: "image/jpeg".into(),
                    },
                    has_thumbnail: false,
                    indexed_at: 0,
                }),
                embedding: Some(embedding(j)),
                thumbnail: None,
            })
            .collect();
        library.commit(changes).expect("commit");
        i = end;
    }
}
