//! `glimpse index --watch`: watch the roots (the `notify` crate), run once,
//! then run again, incrementally, whenever changes settle. The watch starts
//! before the first run, so nothing changed during that run is missed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use glimpse_clip::Clip;
use glimpse_store::Library;
use notify::{RecursiveMode, Watcher};

use crate::error::IndexError;
use crate::run::{index_library, IndexOptions, IndexSummary, Progress};

/// How long the file system must stay quiet before a run starts, so that a
/// copy of many files (or one large file) is picked up once, complete.
pub const DEBOUNCE: Duration = Duration::from_millis(1500);

/// Watches the roots of `options`, indexes them, and reindexes after each
/// burst of changes until `cancel` is set. Each run's summary goes to `on_run`, each
/// failed run's error to `on_error` — a failed run (a disk hiccup, a
/// locked file) does not stop the watch. Returns an error only when the
/// roots cannot be watched at all.
pub fn watch(
    library: &Mutex<Library>,
    clip: &Clip,
    options: &IndexOptions,
    progress: &(dyn Fn(Progress<'_>) + Sync),
    cancel: &AtomicBool,
    on_run: &dyn Fn(&IndexSummary),
    on_error: &dyn Fn(&IndexError),
) -> Result<(), IndexError> {
    let (tx, rx) = mpsc::channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if !event.kind.is_access() {
                let _ = tx.send(());
            }
        }
    })
    .map_err(|e| IndexError::internal("starting the file watcher", e))?;
    for root in &options.walk.roots {
        watcher
            .watch(root, RecursiveMode::Recursive)
            .map_err(|e| match e.kind {
                notify::ErrorKind::PathNotFound => IndexError::NotFound { path: root.clone() },
                _ => IndexError::Io {
                    path: root.clone(),
                    source: std::io::Error::other(e.to_string()),
                },
            })?;
    }
    match index_library(library, clip, options, progress, cancel) {
        Ok(summary) => on_run(&summary),
        Err(e) => on_error(&e),
    }
    while !cancel.load(Ordering::Relaxed) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(()) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Debounce: wait for a quiet spell.
        let mut last = Instant::now();
        while last.elapsed() < DEBOUNCE && !cancel.load(Ordering::Relaxed) {
            if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
                last = Instant::now();
            }
        }
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        match index_library(library, clip, options, progress, cancel) {
            Ok(summary) => on_run(&summary),
            Err(e) => on_error(&e),
        }
    }
    Ok(())
}
