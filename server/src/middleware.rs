//! Request middleware: token authentication and request metrics.

use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, ResponseError};

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// The cookie the web UI keeps the token in (so `<img>` requests carry it).
pub const TOKEN_COOKIE: &str = "glimpse_token";

/// Paths anyone may fetch: the page itself (it asks for the token) and the
/// liveness probe. Everything else needs the token when one is set.
fn is_public(path: &str) -> bool {
    matches!(path, "/" | "/status" | "/healthz" | "/favicon.ico") || path.starts_with("/assets/")
}

/// The token the request carries: `Authorization: Bearer …` or the cookie.
fn presented(req: &ServiceRequest) -> Option<String> {
    let headers = req.headers();
    if let Some(bearer) = headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_string());
    }
    headers
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == TOKEN_COOKIE)
        .map(|(_, value)| value.to_string())
}

/// Compares without an early exit, so timing does not reveal the token.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Refuses API requests without the right token (when one is set).
pub(crate) async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let expected = req
        .app_data::<web::Data<AppState>>()
        .and_then(|s| s.options.token.clone())
        .filter(|t| !t.is_empty());
    if let Some(expected) = expected {
        if !is_public(req.path()) {
            let ok = presented(&req).is_some_and(|t| same(&t, &expected));
            if !ok {
                let error = ApiError::new(
                    ErrorCode::Unauthorized,
                    "this server needs its access token: send `Authorization: Bearer TOKEN` \
                     (the page asks for it and keeps it in a cookie)",
                );
                return Ok(req
                    .into_response(error.error_response())
                    .map_into_right_body());
            }
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Counts requests and times them, by route pattern (not raw path, so ids
/// do not multiply the series).
pub(crate) async fn record_metrics(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let method = req.method().to_string();
    let response = next.call(req).await?;
    if let Some(state) = state {
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        state.metrics.observe_request(
            &route,
            &method,
            response.status().as_u16(),
            started.elapsed(),
        );
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_page_and_health_are_public() {
        for public in ["/", "/status", "/healthz", "/assets/app.js"] {
            assert!(is_public(public), "{public}");
        }
        for private in [
            "/api/search",
            "/metrics",
            "/api/photos/1/original",
            "/assets",
        ] {
            assert!(!is_public(private), "{private}");
        }
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "abcd"));
    }
}
