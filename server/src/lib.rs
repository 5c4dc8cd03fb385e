//! The Glimpse HTTP server: a JSON API over a photo library and the host of
//! the web page, on actix-web.
//!
//! [`AppState`] holds what requests share — the library (behind a lock; an
//! in-process indexer may share it), the model (warm for the life of the
//! process), a query-encoder thread that batches queries arriving together
//! (model calls never run on actix's workers), options and metrics.
//! [`create_app`] builds the actix `App` from it (tests run it in-process);
//! [`run`] binds, serves until Ctrl-C/SIGTERM, and saves the library.
//! Routes and their JSON are described by [`OPENAPI`] (served at
//! `/api/openapi.json`); errors are `{"error": {"code", "message"}}` with the
//! status from the one table in [`ErrorCode::status`].
//!
//! It does not index (the indexer crate does, on the thread
//! [`start_watcher`] starts), decode or embed by itself, and it serves files
//! only by photo id — never by a path taken from a request.
#![warn(missing_docs)]

mod api;
#[cfg(test)]
mod api_tests;
mod encoder;
mod error;
mod metrics;
mod middleware;
mod relevance;
mod state;
mod ui;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, DefaultHeaders};
use actix_web::{web, App, HttpServer};

pub use api::search::{DEFAULT_K, MAX_DEPTH, MAX_K, MAX_RELEVANT};
pub use api::status::OPENAPI;
pub use error::{ApiError, ErrorCode, ServerError};
pub use middleware::TOKEN_COOKIE;
pub use relevance::{threshold, MIN_SAMPLE, PROFILE_SAMPLE, WEAK_Z};
pub use state::{
    AppState, IndexingStatus, ServeOptions, DEFAULT_BIND, DEFAULT_MAX_UPLOAD_BYTES,
    DEFAULT_MAX_UPLOAD_PIXELS,
};
pub use watch::start_watcher;

async fn not_found(request: actix_web::HttpRequest) -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no such endpoint: {} {}; see /api/openapi.json",
            request.method(),
            request.path().chars().take(120).collect::<String>()
        ),
    ))
}

/// The application: routes, middleware (token check, metrics, security
/// headers) and JSON errors for malformed parameters, over `state`.
pub fn create_app(
    state: AppState,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(state))
        .app_data(web::QueryConfig::default().error_handler(|e, _| {
            ApiError::bad_parameter(format!("bad query parameter: {e}")).into()
        }))
        .app_data(
            web::PathConfig::default()
                .error_handler(|e, _| ApiError::bad_parameter(format!("bad path: {e}")).into()),
        )
        .configure(api::routes)
        .configure(ui::routes)
        .default_service(web::to(not_found))
        .wrap(from_fn(middleware::require_token))
        .wrap(
            DefaultHeaders::new()
                .add(("X-Content-Type-Options", "nosniff"))
                .add(("Referrer-Policy", "no-referrer"))
                .add(("X-Frame-Options", "DENY")),
        )
        .wrap(from_fn(middleware::record_metrics))
}

/// Serves `state` on `state`'s bind address until the process is asked to
/// stop (Ctrl-C, SIGTERM), watching `watch`'s folders meanwhile if given;
/// then stops the watcher and saves the library's indexes. `on_listening`
/// gets the bound addresses (useful with port 0).
pub fn run(
    state: AppState,
    watch: Option<glimpse_indexer::IndexOptions>,
    on_listening: impl FnOnce(&[SocketAddr]),
) -> Result<(), ServerError> {
    state.options.check()?;
    let bind = state.options.bind.clone();
    let workers = state.options.workers.max(1);
    let cancel = Arc::new(AtomicBool::new(false));
    let watcher = match watch {
        Some(options) => Some(start_watcher(&state, options, cancel.clone())?),
        None => None,
    };
    let app_state = state.clone();
    let served = actix_web::rt::System::new().block_on(async move {
        let server = HttpServer::new(move || create_app(app_state.clone()))
            .workers(workers)
            .bind(&bind)
            .map_err(|source| ServerError::Bind {
                bind: bind.clone(),
                source,
            })?;
        on_listening(&server.addrs());
        server.run().await.map_err(ServerError::Runtime)
    });
    cancel.store(true, Ordering::SeqCst);
    if let Some(handle) = watcher {
        let _ = handle.join();
    }
    state.library().save_derived()?;
    served
}
