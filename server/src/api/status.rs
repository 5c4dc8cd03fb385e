//! `GET /api/status`, `/api/facets`, `/api/openapi.json`, `/healthz` and
//! `/metrics`.

use std::sync::Arc;

use actix_web::{web, HttpResponse};
use glimpse_store::LibraryStats;
use serde::Serialize;

use super::blocking;
use crate::error::ApiError;
use crate::state::{AppState, IndexingStatus};

/// The OpenAPI 3 description of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

#[derive(Serialize)]
struct ModelJson {
    name: String,
    dim: usize,
    fingerprint: String,
    /// Weights text queries run on (`fp32`, `bf16`, `int8`).
    query_precision: &'static str,
    /// Smallest cosine to fp32 on the probe sentences (absent for fp32).
    query_min_cosine: Option<f32>,
    /// Weights uploaded photos (and `--watch` indexing) are embedded with.
    image_precision: &'static str,
    /// Smallest cosine to fp32 on the probe images (absent for fp32).
    image_min_cosine: Option<f32>,
}

#[derive(Serialize)]
struct StatusJson {
    library: String,
    model: ModelJson,
    stats: LibraryStats,
    indexing: IndexingStatus,
    uptime_s: f64,
    version: &'static str,
}

/// `GET /api/status`: counts, model, generation, indexing progress.
pub(crate) async fn status(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let body = blocking(move || {
        let library = state.library();
        let header = library.header();
        let model = ModelJson {
            name: header.model.name.clone(),
            dim: header.model.dim,
            fingerprint: header.model.fingerprint.clone(),
            query_precision: state.clip.query_precision().name(),
            query_min_cosine: state.clip.query_precision_check().map(|c| c.min_cosine),
            image_precision: state.clip.image_precision().name(),
            image_min_cosine: state.clip.image_precision_check().map(|c| c.min_cosine),
        };
        let stats = library.stats()?;
        let dir = library.dir().display().to_string();
        drop(library);
        Ok(StatusJson {
            library: dir,
            model,
            stats,
            indexing: state.indexing().clone(),
            uptime_s: state.started.elapsed().as_secs_f64(),
            version: env!("CARGO_PKG_VERSION"),
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /api/facets`: folders, cameras and the date range, for filter
/// menus; computed once per library generation.
pub(crate) async fn facets(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let facets = blocking(move || {
        let library = state.library();
        let generation = library.generation();
        let mut cache = state
            .facets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((g, facets)) = cache.as_ref() {
            if *g == generation {
                return Ok(facets.clone());
            }
        }
        let facets = Arc::new(library.facets()?);
        *cache = Some((generation, facets.clone()));
        Ok(facets)
    })
    .await?;
    Ok(HttpResponse::Ok().json(&*facets))
}

/// `GET /api/openapi.json`.
pub(crate) async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// `GET /healthz`: the process answers and the library lock can be taken.
pub(crate) async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let photos = blocking(move || Ok(state.library().len())).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ok", "photos": photos})))
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let text = blocking(move || {
        let mut library = state.library();
        let (photos, generation) = (library.len(), library.generation());
        let bytes = library.vector_ram_bytes()?;
        drop(library);
        state.metrics.set_library(photos, generation, bytes);
        Ok(state.metrics.render())
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text))
}
