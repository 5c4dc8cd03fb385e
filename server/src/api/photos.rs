//! `GET /api/photos/{id}` (metadata), `…/thumbnail` and `…/original`.
//!
//! Files are found by photo id only: the path comes from the library, never
//! from the request, so no request can name a file. The original is served
//! only while its real path (symlinks resolved) is still the indexed one: a
//! photo replaced by a symlink to somewhere else is refused, not followed.

use actix_web::http::header;
use actix_web::mime;
use actix_web::{web, HttpRequest, HttpResponse};
use glimpse_store::PhotoRecord;
use serde::Serialize;

use super::{blocking, photo_id, PhotoJson};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// Everything the library knows about a photo.
#[derive(Serialize)]
struct PhotoDetails {
    #[serde(flatten)]
    photo: PhotoJson,
    size: u64,
    mime: String,
    blake3: String,
    lens: Option<String>,
    /// `[latitude, longitude]`.
    gps: Option<(f64, f64)>,
    /// Minutes east of UTC recorded with the EXIF date.
    taken_at_offset_minutes: Option<i16>,
    orientation: u16,
    /// Unix seconds when it was (last) indexed.
    indexed_at: i64,
}

async fn record(state: &web::Data<AppState>, raw_id: &str) -> Result<PhotoRecord, ApiError> {
    let id = photo_id(raw_id)?;
    let state = state.clone().into_inner();
    blocking(move || {
        state
            .library()
            .photo(id)?
            .ok_or_else(|| ApiError::unknown_photo(id))
    })
    .await
}

/// `GET /api/photos/{id}`.
pub(crate) async fn metadata(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let r = record(&state, &id).await?;
    Ok(HttpResponse::Ok().json(PhotoDetails {
        photo: PhotoJson::of(&r),
        size: r.size,
        mime: r.meta.mime.clone(),
        blake3: r.meta.blake3.clone(),
        lens: r.meta.lens.clone(),
        gps: r.meta.gps,
        taken_at_offset_minutes: r.meta.taken_at_offset_minutes,
        orientation: r.meta.orientation,
        indexed_at: r.indexed_at,
    }))
}

/// `GET /api/photos/{id}/thumbnail`: the library's JPEG (256 px).
pub(crate) async fn thumbnail(
    state: web::Data<AppState>,
    id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let r = record(&state, &id).await?;
    let etag = format!("\"{}\"", r.meta.blake3.get(..16).unwrap_or_default());
    if let Some(cached) = super::not_modified(&request, &etag) {
        return Ok(cached);
    }
    let no_thumbnail = || {
        ApiError::new(
            ErrorCode::NoThumbnail,
            format!(
                "photo {} has no thumbnail (its format could not be decoded when indexed)",
                r.id
            ),
        )
    };
    if !r.has_thumbnail {
        return Err(no_thumbnail());
    }
    let path = state.library().thumbnail_path(r.id);
    let bytes = blocking(move || {
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApiError::new(
                ErrorCode::NoThumbnail,
                "the thumbnail is missing from the library folder; run `glimpse index` to \
                 recreate it",
            ),
            _ => ApiError::internal("reading a thumbnail", e),
        })
    })
    .await?;
    Ok(HttpResponse::Ok()
        .content_type("image/jpeg")
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, "private, max-age=86400"))
        .body(bytes))
}

/// `GET /api/photos/{id}/original`: the photo file itself (with ranges).
pub(crate) async fn original(
    state: web::Data<AppState>,
    id: web::Path<String>,
    request: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let r = record(&state, &id).await?;
    let gone = |why: &str| {
        ApiError::new(
            ErrorCode::FileUnavailable,
            format!(
                "the file of photo {} {why}; run `glimpse index` to bring the library up to date",
                r.id
            ),
        )
    };
    let indexed = std::path::PathBuf::from(&r.path);
    let real = match std::fs::canonicalize(&indexed) {
        Ok(real) => real,
        Err(_) => return Err(gone("is no longer where it was indexed")),
    };
    if real != indexed {
        return Err(gone("now resolves elsewhere (replaced by a link)"));
    }
    let file = actix_files::NamedFile::open(&real)
        .map_err(|_| gone("cannot be opened"))?
        .use_last_modified(true);
    // Only image types are sent as what they are; anything else downloads.
    let mime = r
        .meta
        .mime
        .parse::<mime::Mime>()
        .ok()
        .filter(|m| m.type_() == mime::IMAGE)
        .unwrap_or(mime::APPLICATION_OCTET_STREAM);
    let file = file.set_content_type(mime);
    Ok(file
        .set_content_disposition(header::ContentDisposition {
            disposition: header::DispositionType::Inline,
            parameters: vec![],
        })
        .into_response(&request))
}
