//! `glimpse serve --watch`: the indexer's watch loop on a thread of the
//! server process, sharing the server's library (sled allows one process
//! per library, so the two cannot be separate processes) and its model.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread::JoinHandle;

use glimpse_indexer::{IndexOptions, Progress};

use crate::error::{log_error, ServerError};
use crate::state::AppState;

/// Starts watching `options`' roots on a new thread; it stops when `cancel`
/// is set. Progress shows in `GET /api/status`.
pub fn start_watcher(
    state: &AppState,
    options: IndexOptions,
    cancel: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, ServerError> {
    {
        let mut status = state.indexing();
        status.watching = true;
        status.roots = options.walk.roots.clone();
        status.state = "scanning";
    }
    let state = state.clone();
    std::thread::Builder::new()
        .name("glimpse-watcher".into())
        .spawn(move || {
            let library = state.shared_library();
            let clip = state.clip();
            let progress = |p: Progress<'_>| {
                let mut status = state.indexing();
                match p {
                    Progress::Planned { to_process, .. } => {
                        status.state = "indexing";
                        status.total = to_process;
                        status.done = 0;
                    }
                    Progress::Processed { done, .. } => status.done = done,
                    Progress::Saving => status.state = "saving",
                }
            };
            let result = glimpse_indexer::watch(
                &library,
                &clip,
                &options,
                &progress,
                &cancel,
                &|summary| {
                    let mut status = state.indexing();
                    status.state = "idle";
                    status.runs += 1;
                    status.last_run = Some(summary.clone());
                    status.last_error = None;
                },
                &|e| {
                    log_error(&format!("indexing: {e} (still watching)"));
                    let mut status = state.indexing();
                    status.state = "idle";
                    status.runs += 1;
                    status.last_error = Some(e.to_string());
                },
            );
            if let Err(e) = result {
                log_error(&format!("cannot watch the photo folders: {e}"));
                let mut status = state.indexing();
                status.watching = false;
                status.state = "idle";
                status.last_error = Some(e.to_string());
            }
        })
        .map_err(|e| ServerError::Runtime(std::io::Error::other(e)))
}
