//! The JSON API, one module per resource. Handlers are thin: they parse
//! the request, run library and model work off the async workers
//! (`web::block`, the encoder thread) and shape the JSON.

pub(crate) mod photos;
pub(crate) mod search;
pub(crate) mod status;

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use glimpse_store::{format_iso, PhotoRecord};
use serde::Serialize;

use crate::error::ApiError;

/// One photo as the API shows it in result lists and `GET /api/photos/{id}`.
#[derive(Serialize)]
pub(crate) struct PhotoJson {
    pub(crate) id: u64,
    pub(crate) path: String,
    pub(crate) file_name: String,
    pub(crate) folder: String,
    pub(crate) width: Option<u32>,
    pub(crate) height: Option<u32>,
    /// `YYYY-MM-DDTHH:MM:SS` (wall-clock time where the photo was taken).
    pub(crate) taken_at: String,
    /// Where `taken_at` came from: `exif` or `file_mtime`.
    pub(crate) taken_at_source: glimpse_store::TakenAtSource,
    pub(crate) camera: Option<String>,
    pub(crate) thumbnail: Option<String>,
    pub(crate) original: String,
}

impl PhotoJson {
    pub(crate) fn of(record: &PhotoRecord) -> Self {
        let path = std::path::Path::new(&record.path);
        let version = record.meta.blake3.get(..12).unwrap_or_default();
        Self {
            id: record.id,
            path: record.path.clone(),
            file_name: path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            folder: path
                .parent()
                .map_or_else(String::new, |p| p.to_string_lossy().into_owned()),
            width: record.meta.width,
            height: record.meta.height,
            taken_at: format_iso(record.meta.taken_at),
            taken_at_source: record.meta.taken_at_source,
            camera: record.meta.camera(),
            thumbnail: record
                .has_thumbnail
                .then(|| format!("/api/photos/{}/thumbnail?v={version}", record.id)),
            original: format!("/api/photos/{}/original", record.id),
        }
    }
}

/// `304 Not Modified` when the request already holds this `etag`.
pub(crate) fn not_modified(request: &HttpRequest, etag: &str) -> Option<HttpResponse> {
    request
        .headers()
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
        .then(|| {
            HttpResponse::NotModified()
                .insert_header((header::ETAG, etag.to_string()))
                .finish()
        })
}

/// Runs blocking work (library access, decoding) on actix's blocking pool.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
    T: Send + 'static,
{
    web::block(f)
        .await
        .map_err(|e| ApiError::internal("running a library task", e))?
}

/// A photo id from the path: digits only.
pub(crate) fn photo_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>().map_err(|_| {
        ApiError::new(
            crate::error::ErrorCode::UnknownPhoto,
            format!(
                "'{}' is not a photo id; ids are the numbers search results give",
                raw.chars().take(40).collect::<String>()
            ),
        )
    })
}

/// Registers the API routes under `/api`.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/search", web::get().to(search::text))
        .route("/api/search/image", web::post().to(search::image))
        .route("/api/photos/{id}", web::get().to(photos::metadata))
        .route(
            "/api/photos/{id}/thumbnail",
            web::get().to(photos::thumbnail),
        )
        .route("/api/photos/{id}/original", web::get().to(photos::original))
        .route("/api/photos/{id}/similar", web::get().to(search::similar))
        .route("/api/facets", web::get().to(status::facets))
        .route("/api/status", web::get().to(status::status))
        .route("/api/openapi.json", web::get().to(status::openapi))
        .route("/healthz", web::get().to(status::healthz))
        .route("/metrics", web::get().to(status::metrics));
}
