//! What every request handler shares: the library, the query encoder, the
//! options, the metrics and, with `--watch`, the indexer's progress.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use glimpse_clip::Clip;
use glimpse_indexer::{model_identity, IndexSummary};
use glimpse_store::{Facets, Library};
use serde::Serialize;

use crate::encoder::QueryEncoder;
use crate::error::ServerError;
use crate::metrics::Metrics;

/// Default address: loopback only.
pub const DEFAULT_BIND: &str = "127.0.0.1:7860";
/// Default upload limit: 25 MiB.
pub const DEFAULT_MAX_UPLOAD_BYTES: usize = 25 * 1024 * 1024;
/// Default pixel limit of uploaded images: 50 megapixels.
pub const DEFAULT_MAX_UPLOAD_PIXELS: u64 = 50_000_000;

/// How the server behaves; see `glimpse serve --help`.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// `HOST:PORT` to listen on.
    pub bind: String,
    /// When set, every API request must carry it (`Authorization: Bearer`
    /// or the `glimpse_token` cookie). Required off loopback.
    pub token: Option<String>,
    /// Largest accepted upload, in bytes (larger: 413).
    pub max_upload_bytes: usize,
    /// Largest accepted uploaded image, in pixels (larger: 422).
    pub max_upload_pixels: u64,
    /// HTTP worker threads (model calls run on their own thread).
    pub workers: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            bind: DEFAULT_BIND.to_string(),
            token: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_upload_pixels: DEFAULT_MAX_UPLOAD_PIXELS,
            workers: 2,
        }
    }
}

impl ServeOptions {
    /// Refuses an address that is not `host:port`, and one beyond loopback
    /// without a token.
    pub fn check(&self) -> Result<(), ServerError> {
        let bad = || ServerError::BadBind {
            bind: self.bind.clone(),
        };
        let (host, port) = self.bind.rsplit_once(':').ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback && self.token.as_deref().is_none_or(str::is_empty) {
            return Err(ServerError::TokenRequired {
                bind: self.bind.clone(),
            });
        }
        Ok(())
    }
}

/// The library's facets as of a generation (recomputed when it changes).
pub(crate) type FacetsAt = (u64, Arc<Facets>);

/// What the in-process indexer (`glimpse serve --watch`) is doing.
#[derive(Clone, Debug, Default, Serialize)]
pub struct IndexingStatus {
    /// Whether folders are being watched.
    pub watching: bool,
    /// The folders watched.
    pub roots: Vec<PathBuf>,
    /// `"idle"`, `"scanning"`, `"indexing"` or `"saving"`.
    pub state: &'static str,
    /// Files processed in the current run.
    pub done: u64,
    /// Files to process in the current run.
    pub total: u64,
    /// The last finished run.
    pub last_run: Option<IndexSummary>,
    /// The last run's error, if it failed.
    pub last_error: Option<String>,
    /// Runs finished.
    pub runs: u64,
}

/// The state shared by all handlers. Build it with [`AppState::new`], then
/// hand it to [`create_app`](crate::create_app).
#[derive(Clone)]
pub struct AppState {
    pub(crate) library: Arc<Mutex<Library>>,
    pub(crate) clip: Arc<Clip>,
    pub(crate) encoder: QueryEncoder,
    pub(crate) options: Arc<ServeOptions>,
    pub(crate) metrics: Metrics,
    pub(crate) indexing: Arc<Mutex<IndexingStatus>>,
    pub(crate) facets: Arc<Mutex<Option<FacetsAt>>>,
    pub(crate) started: Instant,
}

impl AppState {
    /// Checks that `library` was made with `clip`'s model, loads its vectors
    /// and indexes into memory (so the first query is as fast as the rest),
    /// and starts the query encoder.
    pub fn new(
        mut library: Library,
        clip: Arc<Clip>,
        options: ServeOptions,
    ) -> Result<Self, ServerError> {
        library.check_model(&model_identity(&clip))?;
        library.warm_up()?;
        let metrics = Metrics::new();
        let encoder = QueryEncoder::start(clip.clone(), metrics.clone());
        Ok(Self {
            library: Arc::new(Mutex::new(library)),
            clip,
            encoder,
            options: Arc::new(options),
            metrics,
            indexing: Arc::new(Mutex::new(IndexingStatus {
                state: "idle",
                ..IndexingStatus::default()
            })),
            facets: Arc::new(Mutex::new(None)),
            started: Instant::now(),
        })
    }

    /// The library, locked. A panic while it was held cannot have left it
    /// half-changed (changes are atomic commits), so a poisoned lock is
    /// taken over.
    pub fn library(&self) -> MutexGuard<'_, Library> {
        self.library.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shared library, for the in-process indexer.
    pub fn shared_library(&self) -> Arc<Mutex<Library>> {
        self.library.clone()
    }

    /// The model.
    pub fn clip(&self) -> Arc<Clip> {
        self.clip.clone()
    }

    /// The indexer's progress, updated by the watcher.
    pub fn indexing(&self) -> MutexGuard<'_, IndexingStatus> {
        self.indexing.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_required_off_loopback_and_bad_addresses_are_refused() {
        let with = |bind: &str, token: Option<&str>| ServeOptions {
            bind: bind.into(),
            token: token.map(str::to_string),
            ..ServeOptions::default()
        };
        assert!(with("127.0.0.1:7860", None).check().is_ok());
        assert!(with("localhost:80", None).check().is_ok());
        assert!(with("[::1]:7860", None).check().is_ok());
        let e = with("0.0.0.0:7860", None).check().unwrap_err().to_string();
        assert!(e.contains("--token") && e.contains("0.0.0.0:7860"), "{e}");
        assert!(with("0.0.0.0:7860", Some("")).check().is_err());
        assert!(with("0.0.0.0:7860", Some("s3cret")).check().is_ok());
        for bad in ["7860", "127.0.0.1", "127.0.0.1:port", "127.0.0.1:99999"] {
            assert!(matches!(
                with(bad, None).check(),
                Err(ServerError::BadBind { .. })
            ));
        }
    }
}
