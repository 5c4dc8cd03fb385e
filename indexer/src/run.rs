//! One indexing run: walk the roots, work out what changed since the last
//! run, decode and embed what must be, and commit it all in walk order.
//!
//! ```text
//! walk (stat only) → plan ──jobs──▶ N readers/decoders ──▶ embedder (batches) ──▶ writer
//!                                  (read once: hash, EXIF,                       (reorders by
//!                                   decode, resize, thumbnail)                    walk order,
//!                                                                                 commits)
//! ```
//!
//! Channels are bounded and the planner keeps at most [`WINDOW`] files in
//! flight, so memory stays flat whatever the library size. The writer
//! commits in walk order, so ids are assigned in walk order: a run that is
//! killed and restarted ends with the same ids as one that was not.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use glimpse_clip::Clip;
use glimpse_config::PreprocessConfig;
use glimpse_decoder::{decode_bytes, decode_bytes_reduced, to_pixels, DecodeError, DecodedImage};
use glimpse_store::{
    failure_record, Change, FailureKind, FailureRecord, Library, ModelIdentity, PhotoMetadata,
    PhotoRecord, TakenAtSource,
};
use serde::Serialize;

use crate::error::IndexError;
use crate::metadata::read_metadata_bytes;
use crate::thumbnail::{check_thumbnail_side, make_thumbnail, DEFAULT_THUMBNAIL_SIDE};
use crate::walk::{FileKind, WalkEntry, WalkOptions, Walker};

/// At most this many files are between the planner and the writer.
pub const WINDOW: u64 = 128;

/// The longest a partial batch waits for images still being decoded.
const PARTIAL_BATCH_WAIT: Duration = Duration::from_secs(2);

/// How an indexing run behaves.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// What to walk.
    pub walk: WalkOptions,
    /// Images per model call.
    pub batch_size: usize,
    /// Reader/decoder threads.
    pub workers: usize,
    /// Longest side of thumbnails, in pixels.
    pub thumbnail_side: u32,
    /// Reduce large images by 1/2, 1/4 or 1/8 — JPEGs and still WebPs
    /// while decoding them (JPEGs in the DCT, WebPs in libwebp's rescaler),
    /// other formats by averaging blocks just after (see
    /// `glimpse_decoder::decode_bytes_reduced`) — keeping the shortest side
    /// at least the model's input size and at least the thumbnail side.
    /// Several times cheaper for camera photos (at 1/8 a progressive JPEG's
    /// AC scans are not even read), and the model's resize and the
    /// thumbnail's start from fewer pixels; the model's input pixels then differ
    /// from the reference's full-size decode by about one 8-bit level on
    /// average. `false` decodes every image at full size, bit for bit as
    /// the reference does.
    pub reduce_large_images: bool,
    /// Commit after this many files (and at least every two seconds).
    pub commit_every: usize,
}

impl IndexOptions {
    /// The shortest side an image may be reduced to while decoding for a
    /// model preprocessing with `preprocess` (see
    /// [`IndexOptions::reduce_large_images`]), or `None` when images are
    /// decoded at full size.
    pub fn reduced_min_side(&self, preprocess: &PreprocessConfig) -> Option<u32> {
        let model_side = u32::try_from(preprocess.image_size).unwrap_or(u32::MAX);
        self.reduce_large_images
            .then(|| model_side.max(self.thumbnail_side))
    }

    /// Decodes a file's `bytes` as `glimpse index` does for a model
    /// preprocessing with `preprocess`: large images reduced
    /// when [`IndexOptions::reduce_large_images`] is set (see
    /// [`IndexOptions::reduced_min_side`]), everything else at full size.
    pub fn decode(
        &self,
        bytes: &[u8],
        preprocess: &PreprocessConfig,
    ) -> Result<DecodedImage, DecodeError> {
        match self.reduced_min_side(preprocess) {
            Some(min_side) => decode_bytes_reduced(bytes, preprocess, min_side),
            None => decode_bytes(bytes, preprocess),
        }
    }
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            walk: WalkOptions::default(),
            batch_size: 16,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            thumbnail_side: DEFAULT_THUMBNAIL_SIDE,
            reduce_large_images: true,
            commit_every: 64,
        }
    }
}

/// What a run did, as printed by `glimpse index --json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IndexSummary {
    /// New photos added.
    pub indexed: u64,
    /// Files that had not changed (including earlier failures that did not
    /// change either: they are not retried).
    pub unchanged: u64,
    /// Photos whose file changed, re-embedded under the same id.
    pub updated: u64,
    /// Photos whose file moved or was renamed (same content), kept with
    /// their id and embedding.
    pub moved: u64,
    /// Photos whose file is gone, removed from the library.
    pub removed: u64,
    /// Files that could not be indexed in this run (see `glimpse failures`).
    pub failed: u64,
    /// Wall-clock time of the run.
    pub seconds: f64,
}

/// Progress reports of a run, for a progress bar or log lines.
#[derive(Clone, Debug)]
pub enum Progress<'a> {
    /// The walk found this many image files; `to_process` need reading.
    Planned {
        /// Image files found.
        files: u64,
        /// Files that are new or changed.
        to_process: u64,
    },
    /// One more file was handled (in walk order).
    Processed {
        /// Files handled so far out of `to_process`.
        done: u64,
        /// The file.
        path: &'a Path,
        /// Counts so far.
        summary: &'a IndexSummary,
    },
    /// Saving the derived indexes (graph, keywords).
    Saving,
}

/// The identity the library records for `clip`'s embeddings.
pub fn model_identity(clip: &Clip) -> ModelIdentity {
    ModelIdentity {
        name: clip.name().to_string(),
        fingerprint: clip.fingerprint().to_string(),
        dim: clip.embedding_dim(),
        preprocess: clip.preprocess_fingerprint(),
    }
}

/// A file the planner found new or changed.
#[derive(Clone, Debug)]
struct Job {
    seq: u64,
    entry: WalkEntry,
    path: String,
    existing: Option<PhotoRecord>,
    existing_embedded: bool,
    earlier_failure: Option<FailureRecord>,
}

/// What a reader made of a job.
enum Outcome {
    /// Same content as the record at this path: only size/mtime changed.
    Touched,
    /// Content the library already has (a move, a copy, or an edit back to
    /// another photo's content): no need to decode.
    Known(PhotoMetadata),
    /// Decoded, waiting for the model.
    Decoded {
        meta: PhotoMetadata,
        pixels: Vec<f32>,
        thumbnail: Option<Vec<u8>>,
    },
    /// Embedded.
    Embedded {
        meta: PhotoMetadata,
        embedding: Vec<f32>,
        thumbnail: Option<Vec<u8>>,
    },
    Failed(FailureKind, String),
}

struct Done {
    job: Job,
    outcome: Outcome,
}

fn mtime_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Whether `path` lies under one of `roots` (or is one).
fn under_roots(path: &str, roots: &[String]) -> bool {
    roots.iter().any(|root| {
        path == root
            || path.strip_prefix(root.as_str()).is_some_and(|rest| {
                rest.starts_with(std::path::MAIN_SEPARATOR)
                    || root.ends_with(std::path::MAIN_SEPARATOR)
            })
    })
}

/// Indexes the roots of `options` into `library` with `clip`: see the
/// module documentation. Stops early (committing what is done) when
/// `cancel` is set. The library must have been opened for `clip`'s model.
/// It is locked per operation, never for the whole run, so a server that
/// shares it keeps answering searches meanwhile (and sees photos arrive).
pub fn index_library(
    library: &Mutex<Library>,
    clip: &Clip,
    options: &IndexOptions,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    cancel: &AtomicBool,
) -> Result<IndexSummary, IndexError> {
    let start = Instant::now();
    // Once, up front: a thumbnail side no photo could get would otherwise
    // leave every photo without a thumbnail and no word said.
    check_thumbnail_side(options.thumbnail_side)?;
    lock(library).check_model(&model_identity(clip))?;
    let mut summary = IndexSummary::default();
    let mut changes: Vec<Change> = Vec::new();

    // 1. Walk (a stat per file) and plan.
    let roots: Vec<String> = options
        .walk
        .roots
        .iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .map(|r| r.to_string_lossy().into_owned())
        .collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut jobs = Vec::new();
    let mut files = 0u64;
    for item in Walker::new(options.walk.clone())? {
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                // An unreadable folder or a dangling link: recorded under
                // its path so `glimpse failures` shows it.
                let path = e
                    .path()
                    .map_or_else(String::new, |p| p.to_string_lossy().into_owned());
                if !path.is_empty() && seen.insert(path.clone()) {
                    let earlier = lock(library).failure(&path)?;
                    changes.push(Change::Fail(failure_record(
                        &path,
                        FailureKind::Unreadable,
                        e.to_string(),
                        0,
                        0,
                        earlier.as_ref(),
                    )));
                    summary.failed += 1;
                }
                continue;
            }
        };
        files += 1;
        let Some(path) = entry.path.to_str().map(str::to_string) else {
            let shown = entry.path.to_string_lossy().into_owned();
            seen.insert(shown.clone());
            let earlier = lock(library).failure(&shown)?;
            if earlier.is_none() {
                changes.push(Change::Fail(failure_record(
                    &shown,
                    FailureKind::BadPath,
                    format!(
                        "{shown}: the file name is not valid UTF-8; rename the file to index it"
                    ),
                    entry.size,
                    mtime_ns(entry.mtime),
                    None,
                )));
                summary.failed += 1;
            } else {
                summary.unchanged += 1;
            }
            continue;
        };
        seen.insert(path.clone());
        let size = entry.size;
        let mtime = mtime_ns(entry.mtime);
        let existing = lock(library).photo_by_path(&path)?;
        let existing_embedded = match &existing {
            Some(record) => lock(library).has_embedding(record.id)?,
            None => false,
        };
        if let Some(record) = &existing {
            if record.size == size && record.mtime_ns == mtime && existing_embedded {
                summary.unchanged += 1;
                continue;
            }
        }
        let earlier_failure = lock(library).failure(&path)?;
        if let Some(failure) = &earlier_failure {
            if existing.is_none() && failure.size == size && failure.mtime_ns == mtime {
                summary.unchanged += 1;
                continue;
            }
        }
        jobs.push(Job {
            seq: 0,
            entry,
            path,
            existing,
            existing_embedded,
            earlier_failure,
        });
    }
    for (seq, job) in jobs.iter_mut().enumerate() {
        job.seq = seq as u64;
    }
    progress(Progress::Planned {
        files,
        to_process: jobs.len() as u64,
    });

    // 2. Photos under the roots whose path was not seen: moved or deleted.
    let mut missing: BTreeMap<u64, PhotoRecord> = BTreeMap::new();
    for record in lock(library).photos() {
        let record = record?;
        if under_roots(&record.path, &roots) && !seen.contains(&record.path) {
            missing.insert(record.id, record);
        }
    }
    let mut missing_by_hash: HashMap<String, Vec<u64>> = HashMap::new();
    for record in missing.values() {
        missing_by_hash
            .entry(record.meta.blake3.clone())
            .or_default()
            .push(record.id);
    }
    let known_hashes: HashSet<String> = lock(library).hashes()?.into_iter().collect();

    // 3. Read, decode, embed, commit; files whose known content turns out
    //    to be unusable (no embedding to copy) go round again, decoded.
    let mut writer = Writer {
        library,
        changes,
        summary,
        missing,
        missing_by_hash,
        last_commit: Instant::now(),
        commit_every: options.commit_every.max(1),
        redo: Vec::new(),
        done: 0,
    };
    run_jobs(
        &mut writer,
        clip,
        options,
        jobs,
        &known_hashes,
        progress,
        cancel,
    )?;
    let redo = std::mem::take(&mut writer.redo);
    if !redo.is_empty() && !cancel.load(Ordering::Relaxed) {
        let mut redo = redo;
        for (seq, job) in redo.iter_mut().enumerate() {
            job.seq = seq as u64;
        }
        run_jobs(
            &mut writer,
            clip,
            options,
            redo,
            &HashSet::new(),
            progress,
            cancel,
        )?;
    }

    // 4. What is still missing was deleted; failures of vanished files go.
    if !cancel.load(Ordering::Relaxed) {
        let gone: Vec<u64> = writer.missing.keys().copied().collect();
        for id in gone {
            writer.changes.push(Change::Remove(id));
            writer.summary.removed += 1;
            writer.maybe_commit(true)?;
        }
        let stale: Vec<String> = writer
            .library
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures()
            .filter_map(Result::ok)
            .map(|f| f.path)
            .filter(|p| under_roots(p, &roots) && !seen.contains(p))
            .collect();
        for path in stale {
            writer.changes.push(Change::ClearFailure(path));
        }
    }
    writer.commit()?;
    progress(Progress::Saving);
    lock(writer.library).save_derived()?;
    let mut summary = writer.summary;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

/// The library, locked for one operation: a search (a server sharing the
/// library) may run between any two. A panic elsewhere cannot leave the
/// library half-changed (every change is one atomic commit), so a poisoned
/// lock is taken over.
fn lock(library: &Mutex<Library>) -> MutexGuard<'_, Library> {
    library.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writer: the only code that changes the library during a run.
struct Writer<'l> {
    library: &'l Mutex<Library>,
    changes: Vec<Change>,
    summary: IndexSummary,
    missing: BTreeMap<u64, PhotoRecord>,
    missing_by_hash: HashMap<String, Vec<u64>>,
    last_commit: Instant,
    commit_every: usize,
    redo: Vec<Job>,
    done: u64,
}

impl Writer<'_> {
    fn commit(&mut self) -> Result<(), IndexError> {
        if !self.changes.is_empty() {
            lock(self.library).commit(std::mem::take(&mut self.changes))?;
        }
        self.last_commit = Instant::now();
        Ok(())
    }

    fn maybe_commit(&mut self, quiet: bool) -> Result<(), IndexError> {
        let _ = quiet;
        if self.changes.len() >= self.commit_every
            || self.last_commit.elapsed() > Duration::from_secs(2)
        {
            self.commit()?;
        }
        Ok(())
    }

    /// A photo of the library with this content and an embedding, to copy.
    fn source_for(&self, blake3: &str, not: Option<u64>) -> Result<Option<u64>, IndexError> {
        let ids = lock(self.library).ids_by_hash(blake3)?;
        for id in ids {
            if Some(id) != not && lock(self.library).has_embedding(id)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    fn record_for(&self, job: &Job, meta: PhotoMetadata, has_thumbnail: bool) -> PhotoRecord {
        PhotoRecord {
            id: job.existing.as_ref().map_or(0, |r| r.id),
            path: job.path.clone(),
            size: job.entry.size,
            mtime_ns: mtime_ns(job.entry.mtime),
            meta,
            has_thumbnail,
            indexed_at: now_seconds(),
        }
    }

    fn handle(&mut self, done: Done) -> Result<(), IndexError> {
        let Done { job, outcome } = done;
        match outcome {
            Outcome::Touched => {
                let mut record = job.existing.clone().expect("touched implies a record");
                record.size = job.entry.size;
                record.mtime_ns = mtime_ns(job.entry.mtime);
                self.changes.push(Change::Put {
                    record: Box::new(record),
                    embedding: None,
                    thumbnail: None,
                });
                self.summary.unchanged += 1;
            }
            Outcome::Known(meta) => {
                let claimed = match &job.existing {
                    Some(_) => None,
                    None => self
                        .missing_by_hash
                        .get_mut(&meta.blake3)
                        .and_then(Vec::pop),
                };
                if let Some(id) = claimed {
                    // Moved or renamed: same id, same embedding.
                    let mut record = self
                        .missing
                        .remove(&id)
                        .expect("missing ids are in the map");
                    record.path = job.path.clone();
                    record.size = job.entry.size;
                    record.mtime_ns = mtime_ns(job.entry.mtime);
                    if record.meta.taken_at_source == TakenAtSource::FileMtime {
                        record.meta.taken_at = meta.taken_at;
                    }
                    self.changes.push(Change::Put {
                        record: Box::new(record),
                        embedding: None,
                        thumbnail: None,
                    });
                    self.summary.moved += 1;
                } else if let Some(source) =
                    self.source_for(&meta.blake3, job.existing.as_ref().map(|r| r.id))?
                {
                    // A copy (or an edit that made it equal to another
                    // photo): reuse that photo's embedding and thumbnail.
                    let embedding = lock(self.library).embedding(source)?;
                    let thumbnail = std::fs::read(lock(self.library).thumbnail_path(source)).ok();
                    let mut record = self.record_for(&job, meta, false);
                    if let Some(source) = lock(self.library).photo(source)? {
                        record.meta.width = source.meta.width;
                        record.meta.height = source.meta.height;
                    }
                    if job.existing.is_some() {
                        self.summary.updated += 1;
                    } else {
                        self.summary.indexed += 1;
                    }
                    self.changes.push(Change::Put {
                        record: Box::new(record),
                        embedding,
                        thumbnail,
                    });
                } else {
                    self.redo.push(job);
                    return Ok(());
                }
            }
            Outcome::Embedded {
                meta,
                embedding,
                thumbnail,
            } => {
                let record = self.record_for(&job, meta, false);
                if job.existing.is_some() {
                    self.summary.updated += 1;
                } else {
                    self.summary.indexed += 1;
                }
                self.changes.push(Change::Put {
                    record: Box::new(record),
                    embedding: Some(embedding),
                    thumbnail,
                });
            }
            Outcome::Decoded { .. } => {
                return Err(IndexError::internal(
                    "indexing",
                    "a decoded image reached the writer without an embedding",
                ));
            }
            Outcome::Failed(kind, message) => {
                if let Some(record) = &job.existing {
                    // The file changed into something that cannot be
                    // indexed: the old record no longer describes it.
                    self.changes.push(Change::Remove(record.id));
                }
                self.changes.push(Change::Fail(failure_record(
                    &job.path,
                    kind,
                    message,
                    job.entry.size,
                    mtime_ns(job.entry.mtime),
                    job.earlier_failure.as_ref(),
                )));
                self.summary.failed += 1;
            }
        }
        Ok(())
    }
}

/// Runs `jobs` through the readers, the embedder and the writer.
fn run_jobs(
    writer: &mut Writer<'_>,
    clip: &Clip,
    options: &IndexOptions,
    jobs: Vec<Job>,
    known_hashes: &HashSet<String>,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    cancel: &AtomicBool,
) -> Result<(), IndexError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let handled = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // Files the readers/decoders are working on right now.
    let decoding = AtomicUsize::new(0);
    let workers = options.workers.max(1);
    let (job_tx, job_rx) = bounded::<Job>(workers * 2);
    let (decoded_tx, decoded_rx) = bounded::<Done>(options.batch_size.max(1) * 2);
    let (done_tx, done_rx) = bounded::<Done>(WINDOW as usize);
    let stop = || cancel.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed);

    std::thread::scope(|scope| -> Result<(), IndexError> {
        // Planner: feeds jobs, at most WINDOW ahead of the writer.
        let handled_ref = &handled;
        let stop_ref = &stop;
        scope.spawn(move || {
            for job in jobs {
                while job.seq >= handled_ref.load(Ordering::Acquire) + WINDOW {
                    if stop_ref() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                if stop_ref() || job_tx.send(job).is_err() {
                    return;
                }
            }
        });
        // Readers/decoders.
        let decoding = &decoding;
        for _ in 0..workers {
            let job_rx = job_rx.clone();
            let decoded_tx = decoded_tx.clone();
            scope.spawn(move || {
                for job in job_rx {
                    decoding.fetch_add(1, Ordering::AcqRel);
                    let outcome = read_and_decode(&job, clip, options, known_hashes);
                    let sent = decoded_tx.send(Done { job, outcome });
                    decoding.fetch_sub(1, Ordering::AcqRel);
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
        drop(job_rx);
        drop(decoded_tx);
        // Embedder.
        let batch_size = options.batch_size.max(1);
        let embedder =
            scope.spawn(move || embed_stage(clip, batch_size, decoded_rx, done_tx, decoding));

        // Writer (this thread): in walk order.
        let mut reorder: BTreeMap<u64, Done> = BTreeMap::new();
        let mut next = 0u64;
        let mut result = Ok(());
        for done in &done_rx {
            reorder.insert(done.job.seq, done);
            while let Some(done) = reorder.remove(&next) {
                next += 1;
                let path = done.job.entry.path.clone();
                if let Err(e) = writer
                    .handle(done)
                    .and_then(|()| writer.maybe_commit(false))
                {
                    result = Err(e);
                    break;
                }
                writer.done += 1;
                handled.store(next, Ordering::Release);
                progress(Progress::Processed {
                    done: writer.done,
                    path: &path,
                    summary: &writer.summary,
                });
            }
            if result.is_err() || cancel.load(Ordering::Relaxed) {
                break;
            }
        }
        if result.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        drop(done_rx);
        let embedded = embedder
            .join()
            .map_err(|_| IndexError::internal("embedding", "the embedding thread panicked"))?;
        result?;
        embedded?;
        writer.commit()
    })
}

/// Batches decoded images through the model; everything else passes on.
///
/// A partial batch waits while readers are still decoding (per image, a
/// batch of 2 costs the model about twice what a batch of 16 does) and goes
/// to the model once they are idle, or after `PARTIAL_BATCH_WAIT`.
fn embed_stage(
    clip: &Clip,
    batch_size: usize,
    decoded_rx: Receiver<Done>,
    done_tx: Sender<Done>,
    decoding: &AtomicUsize,
) -> Result<(), IndexError> {
    let mut batch: Vec<Done> = Vec::with_capacity(batch_size);
    let flush = |batch: &mut Vec<Done>| -> Result<bool, IndexError> {
        if batch.is_empty() {
            return Ok(true);
        }
        let pixels: Vec<Vec<f32>> = batch
            .iter_mut()
            .map(|d| match &mut d.outcome {
                Outcome::Decoded { pixels, .. } => std::mem::take(pixels),
                _ => Vec::new(),
            })
            .collect();
        let embeddings = clip.embed_pixels(&pixels, false)?;
        for (mut done, embedding) in batch.drain(..).zip(embeddings) {
            if let Outcome::Decoded {
                meta, thumbnail, ..
            } = done.outcome
            {
                done.outcome = Outcome::Embedded {
                    meta,
                    embedding,
                    thumbnail,
                };
            }
            if done_tx.send(done).is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    };
    let mut oldest = Instant::now();
    loop {
        let next = if batch.is_empty() {
            decoded_rx
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            decoded_rx.recv_timeout(Duration::from_millis(30))
        };
        match next {
            Ok(done) => {
                if matches!(done.outcome, Outcome::Decoded { .. }) {
                    if batch.is_empty() {
                        oldest = Instant::now();
                    }
                    batch.push(done);
                    if batch.len() >= batch_size && !flush(&mut batch)? {
                        return Ok(());
                    }
                } else if done_tx.send(done).is_err() {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let more_coming = decoding.load(Ordering::Acquire) > 0;
                if (!more_coming || oldest.elapsed() >= PARTIAL_BATCH_WAIT) && !flush(&mut batch)? {
                    return Ok(());
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                flush(&mut batch)?;
                return Ok(());
            }
        }
    }
}

/// Reads a file once and makes everything the writer needs from it.
fn read_and_decode(
    job: &Job,
    clip: &Clip,
    options: &IndexOptions,
    known_hashes: &HashSet<String>,
) -> Outcome {
    let path = &job.entry.path;
    let content = match std::fs::read(path) {
        Ok(content) => content,
        Err(e) => {
            return Outcome::Failed(FailureKind::Unreadable, IndexError::io(path, e).to_string())
        }
    };
    let meta = read_metadata_bytes(&content, job.entry.mtime, Some(&job.entry.kind));
    if let Some(record) = &job.existing {
        if record.meta.blake3 == meta.blake3 && job.existing_embedded {
            return Outcome::Touched;
        }
    }
    if known_hashes.contains(&meta.blake3)
        && job
            .existing
            .as_ref()
            .is_none_or(|r| r.meta.blake3 != meta.blake3)
    {
        return Outcome::Known(meta);
    }
    if let FileKind::Unsupported(ext) = &job.entry.kind {
        return Outcome::Failed(
            FailureKind::UnsupportedFormat,
            format!(
                "{}: .{ext} files cannot be decoded by this build of glimpse; the file is \
                 recorded and skipped (convert it to JPEG to index it)",
                path.display()
            ),
        );
    }
    let cfg = clip.preprocess();
    let decoded = match options.decode(&content, cfg) {
        Ok(decoded) => decoded,
        Err(e) => return Outcome::Failed(failure_kind(&e), format!("{}: {e}", path.display())),
    };
    drop(content);
    let pixels = to_pixels(&decoded.rgb, cfg);
    let thumbnail = make_thumbnail(&decoded.rgb, options.thumbnail_side).ok();
    Outcome::Decoded {
        meta,
        pixels,
        thumbnail,
    }
}

fn failure_kind(e: &DecodeError) -> FailureKind {
    match e {
        DecodeError::NotFound { .. } | DecodeError::Io { .. } => FailureKind::Unreadable,
        DecodeError::Unsupported { .. } => FailureKind::UnsupportedFormat,
        DecodeError::TooManyPixels { .. } => FailureKind::TooLarge,
        _ => FailureKind::Corrupt,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_clip::default_device;
    use std::path::PathBuf;

    /// A thumbnail side no JPEG can have is refused before anything is
    /// read or written, naming the size.
    #[test]
    fn a_bad_thumbnail_side_is_refused_up_front() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let clip = Clip::load_dir(&repo.join("tests/fixtures/clip-tiny-hf"), &default_device())
            .expect("the tiny fixture model");
        let dir = tempfile::tempdir().unwrap();
        let library =
            Mutex::new(Library::open_or_create(dir.path(), &model_identity(&clip), false).unwrap());
        for side in [0, 65_536] {
            let options = IndexOptions {
                walk: WalkOptions {
                    roots: vec![repo.join("tests/fixtures/photos")],
                    ..WalkOptions::default()
                },
                thumbnail_side: side,
                ..IndexOptions::default()
            };
            let cancel = AtomicBool::new(false);
            let err = index_library(&library, &clip, &options, &|_| {}, &cancel).unwrap_err();
            assert!(
                matches!(err, IndexError::BadThumbnailSize { side: s } if s == side),
                "{err:?}"
            );
            assert!(err.is_user_error());
        }
        assert_eq!(lock(&library).len(), 0);
    }
}
