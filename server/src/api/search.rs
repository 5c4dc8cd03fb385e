//! `GET /api/search` (text), `POST /api/search/image` (an uploaded photo)
//! and `GET /api/photos/{id}/similar` ("more like this").

use std::time::Instant;

use actix_multipart::Multipart;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use glimpse_store::{combine_terms, parse_date, parse_query, Filters, SearchMethod, SearchRequest};
use serde::{Deserialize, Serialize};

use super::{blocking, photo_id, PhotoJson};
use crate::error::{ApiError, ErrorCode};
use crate::relevance::{threshold, PROFILE_SAMPLE};
use crate::state::AppState;

/// Results per page unless `k` says otherwise.
pub const DEFAULT_K: usize = 50;
/// The most results one page may ask for.
pub const MAX_K: usize = 500;
/// The deepest page (`offset + k`) a search may reach.
pub const MAX_DEPTH: usize = 10_000;
/// `sort=date` orders the relevant set: at most this many results.
pub const MAX_RELEVANT: usize = 1000;

/// Query parameters shared by the three searches.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SearchParams {
    q: Option<String>,
    k: Option<usize>,
    offset: Option<usize>,
    after: Option<String>,
    before: Option<String>,
    folder: Option<String>,
    camera: Option<String>,
    sort: Option<String>,
    method: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Sort {
    Relevance,
    Date,
}

/// The parts of a search every kind shares, checked.
struct Page {
    filters: Filters,
    k: usize,
    offset: usize,
    sort: Sort,
    method: SearchMethod,
}

impl SearchParams {
    fn page(&self) -> Result<Page, ApiError> {
        let k = self.k.unwrap_or(DEFAULT_K);
        if k == 0 || k > MAX_K {
            return Err(ApiError::bad_parameter(format!(
                "k={k}: ask for 1 to {MAX_K} results per page"
            )));
        }
        let offset = self.offset.unwrap_or(0);
        if offset + k > MAX_DEPTH {
            return Err(ApiError::bad_parameter(format!(
                "offset={offset}: results beyond the first {MAX_DEPTH} are not served; refine \
                 the query or add filters"
            )));
        }
        let date = |value: &Option<String>, name: &str| -> Result<Option<i64>, ApiError> {
            match value.as_deref().map(str::trim) {
                None | Some("") => Ok(None),
                Some(text) => parse_date(text).map(Some).ok_or_else(|| {
                    ApiError::bad_parameter(format!(
                        "{name}='{text}' is not a date; use YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS]"
                    ))
                }),
            }
        };
        let nonempty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let sort = match self.sort.as_deref() {
            None | Some("") | Some("relevance") => Sort::Relevance,
            Some("date") => Sort::Date,
            Some(other) => {
                return Err(ApiError::bad_parameter(format!(
                    "sort='{other}': use relevance or date"
                )))
            }
        };
        let method = match self.method.as_deref() {
            None | Some("") | Some("auto") => SearchMethod::Auto,
            Some("exact") => SearchMethod::Exact,
            Some("graph") => SearchMethod::Graph,
            Some(other) => {
                return Err(ApiError::bad_parameter(format!(
                    "method='{other}': use auto, exact or graph"
                )))
            }
        };
        Ok(Page {
            filters: Filters {
                after: date(&self.after, "after")?,
                before: date(&self.before, "before")?,
                folder: nonempty(&self.folder),
                camera: nonempty(&self.camera),
            },
            k,
            offset,
            sort,
            method,
        })
    }
}

/// One result.
#[derive(Serialize)]
struct Hit {
    #[serde(flatten)]
    photo: PhotoJson,
    /// Cosine similarity to the query.
    score: f32,
    /// Below the query's relevance cutoff (see `relevance`).
    weak: bool,
    /// The query's words matched the file name, folder or camera.
    keyword_match: bool,
}

/// The answer of every search.
#[derive(Serialize)]
struct SearchResponse {
    results: Vec<Hit>,
    took_ms: f64,
    model: String,
    sort: Sort,
    method: SearchMethod,
    /// Photos that passed the filters.
    candidates: usize,
    /// The relevance cutoff used (`null`: library too small to judge).
    threshold: Option<f32>,
    /// The offset of the next page, `null` when there is none.
    next_offset: Option<usize>,
}

/// Searches with `vector`, marks weak results, and shapes the page. Blocking.
fn run(
    state: &AppState,
    vector: Vec<f32>,
    keywords: String,
    page: Page,
    exclude: Option<u64>,
    started: Instant,
) -> Result<SearchResponse, ApiError> {
    let search_started = Instant::now();
    let mut library = state.library();
    let cut = threshold(library.score_profile(&vector, PROFILE_SAMPLE)?);
    let (k, offset) = match page.sort {
        Sort::Relevance => (page.k, page.offset),
        Sort::Date => (MAX_RELEVANT, 0),
    };
    let found = library.search(&SearchRequest {
        vector,
        keywords,
        filters: page.filters,
        k,
        offset,
        method: page.method,
        exclude,
    })?;
    let model = library.header().model.name.clone();
    drop(library);
    state.metrics.observe_search(search_started.elapsed());
    let mut hits: Vec<Hit> = found
        .hits
        .into_iter()
        .map(|h| Hit {
            photo: PhotoJson::of(&h.record),
            score: h.score,
            weak: h.keyword_rank.is_none() && cut.is_some_and(|t| h.score < t),
            keyword_match: h.keyword_rank.is_some(),
        })
        .collect();
    let next_offset = match page.sort {
        Sort::Relevance => (hits.len() == page.k).then_some(page.offset + page.k),
        Sort::Date => {
            hits.retain(|h| !h.weak);
            // Newest first; ties by id so pages never overlap.
            hits.sort_by(|a, b| {
                b.photo
                    .taken_at
                    .cmp(&a.photo.taken_at)
                    .then(a.photo.id.cmp(&b.photo.id))
            });
            let total = hits.len();
            hits = hits.into_iter().skip(page.offset).take(page.k).collect();
            (page.offset + page.k < total).then_some(page.offset + page.k)
        }
    };
    Ok(SearchResponse {
        results: hits,
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        model,
        sort: page.sort,
        method: found.method,
        candidates: found.candidates,
        threshold: cut,
        next_offset,
    })
}

/// `GET /api/search?q=…`: weighted terms as on the command line
/// (`2:golden retriever -people`).
pub(crate) async fn text(
    state: web::Data<AppState>,
    params: web::Query<SearchParams>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let q = params.q.as_deref().unwrap_or("").trim().to_string();
    if q.is_empty() {
        return Err(ApiError::new(
            ErrorCode::EmptyQuery,
            "the query is empty; describe what the photos show, e.g. q=dog on a beach",
        ));
    }
    let page = params.page()?;
    let terms = parse_query(&q)?;
    let texts: Vec<String> = terms.iter().map(|t| t.text.clone()).collect();
    let vectors = state.encoder.texts(texts).await?;
    let weighted: Vec<(f32, Vec<f32>)> = terms.iter().map(|t| t.weight).zip(vectors).collect();
    let vector = combine_terms(&weighted)?;
    let keywords = terms
        .iter()
        .filter(|t| t.weight > 0.0)
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let state = state.into_inner();
    let response = blocking(move || run(&state, vector, keywords, page, None, started)).await?;
    Ok(HttpResponse::Ok().json(response))
}

/// `GET /api/photos/{id}/similar`: photos like an indexed one (it is left out).
pub(crate) async fn similar(
    state: web::Data<AppState>,
    id: web::Path<String>,
    params: web::Query<SearchParams>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let id = photo_id(&id)?;
    let page = params.page()?;
    let state = state.into_inner();
    let response = blocking(move || {
        let vector = {
            let library = state.library();
            if library.photo(id)?.is_none() {
                return Err(ApiError::unknown_photo(id));
            }
            library.embedding(id)?.ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownPhoto,
                    format!("photo {id} has no embedding yet; it is still being indexed"),
                )
            })?
        };
        run(&state, vector, String::new(), page, Some(id), started)
    })
    .await?;
    Ok(HttpResponse::Ok().json(response))
}

/// `POST /api/search/image`: multipart form, the photo in field `image`.
pub(crate) async fn image(
    state: web::Data<AppState>,
    request: HttpRequest,
    params: web::Query<SearchParams>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let page = params.page()?;
    let limit = state.options.max_upload_bytes;
    let too_large = || {
        ApiError::new(
            ErrorCode::UploadTooLarge,
            format!(
                "the upload is larger than the server accepts ({} MiB); send a smaller image",
                limit / (1024 * 1024)
            ),
        )
    };
    // Refuse early when the client says how big it is.
    let declared = request
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit + 64 * 1024) {
        return Err(too_large());
    }
    let mut form = Multipart::new(request.headers(), payload);
    let mut bytes: Option<Vec<u8>> = None;
    while let Some(field) = form.next().await {
        let mut field = field.map_err(|e| bad_upload(&e.to_string()))?;
        let name = field.name().unwrap_or_default().to_string();
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| bad_upload(&e.to_string()))?;
            if data.len() + chunk.len() > limit {
                return Err(too_large());
            }
            data.extend_from_slice(&chunk);
        }
        if name == "image" {
            bytes = Some(data);
        }
    }
    let bytes = bytes.ok_or_else(|| bad_upload("the form has no field named 'image'"))?;
    let mut preprocess = state.clip.preprocess().clone();
    preprocess.max_pixels = state.options.max_upload_pixels;
    let pixels = blocking(move || {
        let image = glimpse_decoder::decode_bytes(&bytes, &preprocess)?;
        Ok(glimpse_decoder::to_pixels(&image.rgb, &preprocess))
    })
    .await?;
    let vector = state.encoder.image(pixels).await?;
    let state = state.into_inner();
    let response =
        blocking(move || run(&state, vector, String::new(), page, None, started)).await?;
    Ok(HttpResponse::Ok().json(response))
}

fn bad_upload(detail: &str) -> ApiError {
    ApiError::new(
        ErrorCode::BadUpload,
        format!(
            "the upload is not a multipart form with the photo in a field named 'image' \
             ({detail})"
        ),
    )
}
