//! The web page: `index.html` at `/` and `/status` (the page's two views),
//! its files under `/assets/`, from the `glimpse-web-ui` crate.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::error::{ApiError, ErrorCode};

/// What the page may load: only this server (no CDN, no inline scripts).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' blob: data:; \
     style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; \
     frame-ancestors 'none'; base-uri 'none'";

fn serve(path: &str, request: &HttpRequest) -> Result<HttpResponse, ApiError> {
    let asset = glimpse_web_ui::asset(path).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!(
                "no page file named '{}'",
                path.chars().take(80).collect::<String>()
            ),
        )
    })?;
    let etag = format!("\"{}\"", asset.hash);
    if let Some(cached) = crate::api::not_modified(request, &etag) {
        return Ok(cached);
    }
    Ok(HttpResponse::Ok()
        .content_type(asset.mime)
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .body(asset.bytes.into_owned()))
}

async fn index(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve("index.html", &request)
}

async fn asset(file: web::Path<String>, request: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve(&file, &request)
}

async fn favicon(request: HttpRequest) -> Result<HttpResponse, ApiError> {
    serve("favicon.svg", &request)
}

/// Registers the page's routes.
pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/status", web::get().to(index))
        .route("/favicon.ico", web::get().to(favicon))
        .route("/assets/{file}", web::get().to(asset));
}
