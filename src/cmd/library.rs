//! `glimpse index`, `search`, `status` and `failures`: the photo library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use glimpse_clip::{Clip, Precision, PrecisionCheck};
use glimpse_config::{ModelSpec, DEFAULT_MODEL};
use glimpse_indexer::{
    index_library, model_identity, IndexOptions, IndexSummary, Progress, WalkOptions,
};
use glimpse_store::{
    combine_terms, format_date, parse_query, Filters, Library, SearchMethod, SearchRequest,
    StoreError,
};
use serde_json::json;

use crate::exit::InputError;

/// The env variable naming the library folder.
pub const ENV_LIBRARY: &str = "GLIMPSE_LIBRARY";

/// `--library`, else `$GLIMPSE_LIBRARY`, else the platform data folder.
pub fn library_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir);
    }
    dirs::data_dir()
        .map(|d| d.join("glimpse").join("library"))
        .ok_or_else(|| {
            InputError(
                "no data folder is known for this user; pass --library DIR or set GLIMPSE_LIBRARY"
                    .into(),
            )
            .into()
        })
}

/// The model a library was made with, as a spec (`name@revision` split).
pub(crate) fn spec_of(name: &str) -> ModelSpec {
    if !Path::new(name).exists() {
        if let Some((model, revision)) = name.rsplit_once('@') {
            return ModelSpec {
                name: model.to_string(),
                revision: Some(revision.to_string()),
            };
        }
    }
    ModelSpec {
        name: name.to_string(),
        revision: None,
    }
}

/// Loads a model; a local folder is recorded by its absolute path, so the
/// library finds it again from any working directory.
pub(crate) fn load_clip(spec: &ModelSpec) -> anyhow::Result<Clip> {
    let mut spec = spec.clone();
    if let Ok(absolute) = std::fs::canonicalize(&spec.name) {
        if absolute.is_dir() {
            spec.name = absolute.to_string_lossy().into_owned();
        }
    }
    let spec = &spec;
    Clip::load(spec).with_context(|| format!("loading model '{}'", spec.name))
}

/// Sets the precision of text queries and image embedding, saying on
/// stderr what was chosen and how close to fp32 it stayed.
pub(crate) fn set_precision(clip: &mut Clip, precision: Precision) -> anyhow::Result<()> {
    clip.set_query_precision(precision)
        .context("preparing the reduced-precision text weights")?;
    clip.set_image_precision(precision)
        .context("preparing the reduced-precision image weights")?;
    report_precision("text queries", clip.query_precision_check(), precision);
    report_precision("images", clip.image_precision_check(), precision);
    Ok(())
}

/// Sets the precision of image embedding only (indexing embeds no text).
fn set_image_precision(clip: &mut Clip, precision: Precision) -> anyhow::Result<()> {
    clip.set_image_precision(precision)
        .context("preparing the reduced-precision image weights")?;
    // Silent when images stay fp32: an index run's stderr is for progress.
    if let Some(check) = clip.image_precision_check() {
        report_precision("images", Some(check), precision);
    }
    Ok(())
}

/// One stderr line on what a tower runs on and how close to fp32 it stayed.
fn report_precision(what: &str, check: Option<&PrecisionCheck>, asked: Precision) {
    match check {
        Some(check) => eprintln!(
            "{what}: {} weights ({}), cosine to fp32 ≥ {:.5}",
            check.precision,
            megabytes(check.bytes),
            check.min_cosine
        ),
        None if asked != Precision::Fp32 => {
            eprintln!("{what}: fp32 weights (auto: the fastest here that stays within tolerance)")
        }
        None => {}
    }
}

/// `38 MB`, or `0.2 MB` for small models.
fn megabytes(bytes: usize) -> String {
    let mb = bytes as f64 / 1e6;
    if mb >= 10.0 {
        format!("{mb:.0} MB")
    } else {
        format!("{mb:.1} MB")
    }
}

/// Set by Ctrl-C: runs stop after committing what they have.
fn cancel_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let handler_flag = flag.clone();
    // A second handler cannot be installed (tests call twice): ignore.
    let _ = ctrlc::set_handler(move || {
        if handler_flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping: committing what is done (Ctrl-C again to quit at once)");
    });
    flag
}

/// Refuses photo folders that do not exist (`flag`: how the user gave them,
/// e.g. `"--watch "`).
pub(crate) fn check_roots(roots: &[PathBuf], flag: &str) -> anyhow::Result<()> {
    for root in roots {
        if !root.exists() {
            return Err(InputError(format!(
                "{flag}{}: no such folder; check the path to your photos",
                root.display()
            ))
            .into());
        }
    }
    Ok(())
}

/// The model for the library at `dir`: `given`, else the library's own,
/// else — when a new library may be made there — the default model.
pub(crate) fn choose_model(
    dir: &Path,
    given: Option<&ModelSpec>,
    may_create: bool,
) -> anyhow::Result<ModelSpec> {
    let existing = match Library::open(dir) {
        Ok(library) => Some(library.header().model.name.clone()),
        Err(StoreError::NoLibrary { .. }) if may_create => None,
        Err(e) => return Err(e.into()),
    };
    Ok(match (given, existing) {
        (Some(spec), _) => spec.clone(),
        (None, Some(name)) => spec_of(&name),
        (None, None) => ModelSpec {
            name: DEFAULT_MODEL.to_string(),
            revision: None,
        },
    })
}

/// Arguments of `glimpse index`.
pub struct IndexArgs {
    /// Folders (or files) to index.
    pub roots: Vec<PathBuf>,
    /// `--library`.
    pub library: Option<PathBuf>,
    /// `--model`, when given.
    pub model: Option<ModelSpec>,
    /// Globs.
    pub include: Vec<String>,
    /// Globs.
    pub exclude: Vec<String>,
    /// Walk hidden folders.
    pub hidden: bool,
    /// Images per model call.
    pub batch_size: usize,
    /// Re-embed everything with the given model.
    pub reembed: bool,
    /// Keep watching.
    pub watch: bool,
    /// Print a JSON summary.
    pub json: bool,
    /// Commit cadence.
    pub commit_every: usize,
    /// `--precision` of image embedding.
    pub precision: Precision,
    /// `--exact-decode`: every image at full size (no reduced decoding, no
    /// averaging down).
    pub exact_decode: bool,
}

/// `glimpse index`.
pub fn index(args: IndexArgs) -> anyhow::Result<()> {
    let dir = library_dir(args.library)?;
    check_roots(&args.roots, "")?;
    let spec = choose_model(&dir, args.model.as_ref(), true)?;
    let mut clip = load_clip(&spec)?;
    let identity = model_identity(&clip);
    let mut library = Library::open_or_create(&dir, &identity, args.reembed)?;
    // Every photo, also with the library's own model (after changing
    // --exact-decode or --precision).
    if args.reembed {
        library.reset_model(&identity)?;
    }
    // After the library accepted the model: the precision changes no
    // identity (embeddings stay within cosine 0.999 of fp32).
    if args.precision != Precision::Fp32 {
        set_image_precision(&mut clip, args.precision)?;
    }
    let options = IndexOptions {
        walk: WalkOptions {
            roots: args.roots.clone(),
            include: args.include,
            exclude: args.exclude,
            include_hidden: args.hidden,
        },
        batch_size: args.batch_size.max(1),
        commit_every: args.commit_every.max(1),
        reduce_large_images: !args.exact_decode,
        ..IndexOptions::default()
    };
    let library = Mutex::new(library);
    let cancel = cancel_flag();
    let reporter = Reporter::new(args.json);
    if !args.watch {
        let summary = index_library(&library, &clip, &options, &|p| reporter.report(p), &cancel)?;
        reporter.finish();
        print_summary(&summary, args.json, &dir);
        return Ok(());
    }
    if !args.json {
        eprintln!(
            "watching {} for changes (Ctrl-C to stop)",
            args.roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    glimpse_indexer::watch(
        &library,
        &clip,
        &options,
        &|p| reporter.report(p),
        &cancel,
        &|s| {
            reporter.finish();
            print_summary(s, args.json, &dir)
        },
        &|e| eprintln!("error: {e} (still watching)"),
    )?;
    Ok(())
}

fn print_summary(s: &IndexSummary, json: bool, dir: &Path) {
    if json {
        crate::cmd::print_line(serde_json::to_string(s).unwrap_or_default());
    } else {
        eprintln!(
            "{} indexed, {} unchanged, {} updated, {} moved, {} removed, {} failed in {:.1} s \
             (library: {})",
            s.indexed,
            s.unchanged,
            s.updated,
            s.moved,
            s.removed,
            s.failed,
            s.seconds,
            dir.display()
        );
        if s.failed > 0 {
            eprintln!("see `glimpse failures` for what failed and why");
        }
    }
}

/// A progress bar on a terminal, a line every few seconds otherwise;
/// nothing with `--json` (stdout is for the summary; stderr stays quiet).
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    last_line: Mutex<Instant>,
    total: Mutex<u64>,
}

impl Reporter {
    fn new(json: bool) -> Self {
        let tty = std::io::stderr().is_terminal();
        let bar = (tty && !json).then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} photos  {per_sec}  ETA {eta}  {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        Self {
            bar,
            plain: !tty && !json,
            last_line: Mutex::new(Instant::now()),
            total: Mutex::new(0),
        }
    }

    fn report(&self, progress: Progress<'_>) {
        match progress {
            Progress::Planned { files, to_process } => {
                if let Ok(mut t) = self.total.lock() {
                    *t = to_process;
                }
                if let Some(bar) = &self.bar {
                    bar.set_length(to_process);
                    bar.set_message(format!("{files} files found"));
                } else if self.plain {
                    eprintln!("{files} image files found, {to_process} new or changed");
                }
            }
            Progress::Processed { done, summary, .. } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done);
                    if summary.failed > 0 {
                        bar.set_message(format!("{} failed", summary.failed));
                    }
                } else if self.plain {
                    let Ok(mut last) = self.last_line.lock() else {
                        return;
                    };
                    if last.elapsed() >= Duration::from_secs(5) {
                        *last = Instant::now();
                        let total = self.total.lock().map_or(0, |t| *t);
                        eprintln!(
                            "{done}/{total} processed: {} indexed, {} updated, {} moved, {} failed",
                            summary.indexed, summary.updated, summary.moved, summary.failed
                        );
                    }
                }
            }
            Progress::Saving => {
                if let Some(bar) = &self.bar {
                    bar.set_message("saving the indexes");
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Arguments of `glimpse search`.
pub struct SearchArgs {
    /// The query words (weighted terms allowed).
    pub query: Vec<String>,
    /// Image query.
    pub like: Option<PathBuf>,
    /// `--library`.
    pub library: Option<PathBuf>,
    /// `--model` override.
    pub model: Option<ModelSpec>,
    /// `--precision` of the query.
    pub precision: Precision,
    /// Results.
    pub k: usize,
    /// Paging.
    pub offset: usize,
    /// Filters.
    pub after: Option<String>,
    /// Filters.
    pub before: Option<String>,
    /// Filters.
    pub folder: Option<PathBuf>,
    /// Filters.
    pub camera: Option<String>,
    /// Exact / graph / auto.
    pub method: SearchMethod,
    /// JSON output.
    pub json: bool,
}

/// `glimpse search`.
pub fn search(args: SearchArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = library_dir(args.library)?;
    let mut library = Library::open(&dir)?;
    let spec = args
        .model
        .clone()
        .unwrap_or_else(|| spec_of(&library.header().model.name));
    let mut clip = load_clip(&spec)?;
    library.check_model(&model_identity(&clip))?;
    if args.precision != Precision::Fp32 {
        set_precision(&mut clip, args.precision)?;
    }
    let text = args.query.join(" ");
    let mut weighted: Vec<(f32, Vec<f32>)> = Vec::new();
    let mut keywords = String::new();
    if !text.trim().is_empty() {
        let terms = parse_query(&text)?;
        let texts: Vec<&str> = terms.iter().map(|t| t.text.as_str()).collect();
        let vectors = clip.embed_texts(&texts, false)?;
        for (term, vector) in terms.iter().zip(vectors) {
            weighted.push((term.weight, vector));
            if term.weight > 0.0 {
                keywords.push_str(&term.text);
                keywords.push(' ');
            }
        }
    }
    let mut exclude = None;
    if let Some(path) = &args.like {
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| InputError(format!("{}: {e}", path.display())))?;
        let indexed = match canonical.to_str() {
            Some(p) => library.photo_by_path(p)?,
            None => None,
        };
        let vector = match indexed
            .as_ref()
            .map(|r| library.embedding(r.id))
            .transpose()?
        {
            Some(Some(vector)) => vector,
            _ => {
                let img = glimpse_decoder::decode_path(&canonical, clip.preprocess())?;
                let pixels = glimpse_decoder::to_pixels(&img.rgb, clip.preprocess());
                clip.embed_pixels(&[pixels], false)?.remove(0)
            }
        };
        exclude = indexed.map(|r| r.id);
        weighted.push((1.0, vector));
    }
    if weighted.is_empty() {
        return Err(InputError(
            "nothing to search for: give a text (glimpse search \"dog on a beach\") or --like PHOTO"
                .into(),
        )
        .into());
    }
    let filters = Filters {
        after: args
            .after
            .as_deref()
            .map(|d| parse_date(d, "--after"))
            .transpose()?,
        before: args
            .before
            .as_deref()
            .map(|d| parse_date(d, "--before"))
            .transpose()?,
        folder: args
            .folder
            .as_ref()
            .map(|f| {
                std::fs::canonicalize(f)
                    .map(|p| p.to_string_lossy().into_owned())
                    .map_err(|e| InputError(format!("--folder {}: {e}", f.display())))
            })
            .transpose()?,
        camera: args.camera.clone(),
    };
    let request = SearchRequest {
        vector: combine_terms(&weighted)?,
        keywords,
        filters,
        k: args.k,
        offset: args.offset,
        method: args.method,
        exclude,
    };
    let results = library.search(&request)?;
    let took_ms = started.elapsed().as_secs_f64() * 1e3;
    if args.json {
        let hits: Vec<_> = results
            .hits
            .iter()
            .map(|h| {
                json!({
                    "id": h.id,
                    "path": h.record.path,
                    "score": h.score,
                    "taken_at": h.record.meta.taken_at,
                    "camera": h.record.meta.camera(),
                    "width": h.record.meta.width,
                    "height": h.record.meta.height,
                    "keyword_match": h.keyword_rank.is_some(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({"results": hits, "method": results.method, "candidates": results.candidates,
                   "took_ms": took_ms, "model": library.header().model.name})
        );
    } else {
        if results.hits.is_empty() {
            eprintln!("no photos match (the library has {} photos)", library.len());
        }
        for h in &results.hits {
            crate::cmd::print_line(format!(
                "{:.3}  {}  {}",
                h.score,
                format_date(h.record.meta.taken_at),
                h.record.path
            ));
        }
    }
    Ok(())
}

/// `glimpse status`.
pub fn status(library: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let dir = library_dir(library)?;
    let mut library = Library::open(&dir)?;
    let stats = library.stats()?;
    let problem = library.verify()?;
    let header = library.header();
    if json {
        println!(
            "{}",
            json!({"library": dir, "model": header.model, "schema_version": header.schema_version,
                   "stats": stats, "consistent": problem.is_none()})
        );
        return Ok(());
    }
    println!("library    {}", dir.display());
    println!(
        "model      {} ({}-d, weights {})",
        header.model.name, header.model.dim, header.model.fingerprint
    );
    println!("photos     {} ({} embedded)", stats.photos, stats.embedded);
    let failed: u64 = stats.failures.values().sum();
    println!("failures   {failed}");
    for (kind, n) in &stats.failures {
        println!("  {kind:<20} {n}");
    }
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "on disk    database {:.1} MB, thumbnails {:.1} MB, vector graph {:.1} MB, keywords {:.1} MB",
        mb(stats.bytes_database),
        mb(stats.bytes_thumbnails),
        mb(stats.bytes_graph),
        mb(stats.bytes_keywords)
    );
    match problem {
        None => println!("indexes    consistent (generation {})", stats.generation),
        Some(p) => println!("indexes    INCONSISTENT: {p}"),
    }
    Ok(())
}

/// `glimpse failures`.
pub fn failures(library: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let dir = library_dir(library)?;
    let library = Library::open(&dir)?;
    for failure in library.failures() {
        let f = failure?;
        if json {
            crate::cmd::print_line(serde_json::to_string(&f)?);
        } else {
            crate::cmd::print_line(format!(
                "{:<18} {}\n    {}",
                f.kind.as_str(),
                f.path,
                f.message
            ));
        }
    }
    Ok(())
}

/// A date flag as Unix seconds (see [`glimpse_store::parse_date`]).
pub fn parse_date(text: &str, flag: &str) -> anyhow::Result<i64> {
    glimpse_store::parse_date(text).ok_or_else(|| {
        InputError(format!(
            "{flag} '{text}' is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"
        ))
        .into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_date_flag_names_the_flag_and_the_format() {
        assert_eq!(parse_date("1970-01-02", "--after").unwrap(), 86_400);
        let e = parse_date("yesterday", "--before").unwrap_err().to_string();
        assert!(
            e.contains("--before 'yesterday'") && e.contains("YYYY-MM-DD"),
            "{e}"
        );
    }
}
