//! The crate's errors: [`ServerError`] for starting the server, [`ApiError`]
//! for one request — with the one table ([`ErrorCode::status`]) that maps
//! error codes to HTTP statuses.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use glimpse_decoder::DecodeError;
use glimpse_store::StoreError;
use serde::Serialize;

/// Why the server could not start (or stopped).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding beyond loopback without a token would publish the photos.
    #[error(
        "refusing to listen on {bind} without a token: anyone who can reach this address could \
         see your photos; pass --token SECRET (or set GLIMPSE_TOKEN), or bind to 127.0.0.1"
    )]
    TokenRequired {
        /// The address asked for.
        bind: String,
    },
    /// The bind address is not `host:port`.
    #[error("--bind '{bind}' is not an address; use HOST:PORT, e.g. 127.0.0.1:7860")]
    BadBind {
        /// What was given.
        bind: String,
    },
    /// The address could not be bound (in use, no permission).
    #[error("cannot listen on {bind}: {source}; pick another port with --bind")]
    Bind {
        /// The address.
        bind: String,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The library cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The folders to watch cannot be watched.
    #[error(transparent)]
    Index(#[from] glimpse_indexer::IndexError),
    /// The server's runtime failed.
    #[error("the HTTP server failed: {0}")]
    Runtime(std::io::Error),
}

/// What kind of failure a request met; stable strings for clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// A query parameter or path segment is malformed.
    BadParameter,
    /// The query text is empty.
    EmptyQuery,
    /// The query text cannot be used (weights cancel out, …).
    BadQuery,
    /// No token, or the wrong one.
    Unauthorized,
    /// No such route.
    NotFound,
    /// No photo with this id.
    UnknownPhoto,
    /// The photo's file is gone or was replaced since it was indexed.
    FileUnavailable,
    /// The photo has no thumbnail (its format could not be decoded).
    NoThumbnail,
    /// The upload is larger than the limit.
    UploadTooLarge,
    /// The upload is not a multipart form with an `image` field.
    BadUpload,
    /// The uploaded image has more pixels than the limit.
    TooManyPixels,
    /// The uploaded file is not an image Glimpse can decode.
    UndecodableImage,
    /// The library cannot be read.
    LibraryUnavailable,
    /// A bug or a failing disk.
    Internal,
}

impl ErrorCode {
    /// The HTTP status of each code: the one place they are mapped.
    pub fn status(self) -> StatusCode {
        match self {
            Self::BadParameter | Self::EmptyQuery | Self::BadQuery | Self::BadUpload => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::NotFound | Self::UnknownPhoto | Self::FileUnavailable | Self::NoThumbnail => {
                StatusCode::NOT_FOUND
            }
            Self::UploadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyPixels | Self::UndecodableImage => StatusCode::UNPROCESSABLE_ENTITY,
            Self::LibraryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A failed request: answered as `{"error": {"code", "message"}}` with the
/// code's status. Messages say what failed and what to do; they never hold
/// a stack trace.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

impl ApiError {
    /// An error of `code` with `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A malformed parameter.
    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadParameter, message)
    }

    /// An internal failure; the details go to the server's log, not the client.
    pub fn internal(context: &str, detail: impl std::fmt::Display) -> Self {
        log_error(&format!("{context}: {detail}"));
        Self::new(
            ErrorCode::Internal,
            format!("{context} failed on the server; its log has the details"),
        )
    }

    /// An unknown photo id.
    pub fn unknown_photo(id: u64) -> Self {
        Self::new(
            ErrorCode::UnknownPhoto,
            format!("no photo with id {id} in the library (it may have been removed)"),
        )
    }
}

/// The server's log line for a failure (stderr).
pub(crate) fn log_error(message: &str) {
    eprintln!("glimpse serve: error: {message}");
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: ErrorCode,
    message: &'a str,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if self.code == ErrorCode::Unauthorized {
            response.insert_header(("WWW-Authenticate", "Bearer realm=\"glimpse\""));
        }
        response.json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        })
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadQuery(m) => Self::new(ErrorCode::BadQuery, m),
            StoreError::UnknownPhoto(id) => Self::unknown_photo(id),
            e if e.is_user_error() => Self::new(ErrorCode::LibraryUnavailable, e.to_string()),
            e => Self::internal("reading the library", e),
        }
    }
}

impl From<DecodeError> for ApiError {
    fn from(e: DecodeError) -> Self {
        match e {
            DecodeError::TooManyPixels {
                width,
                height,
                limit,
                ..
            } => Self::new(
                ErrorCode::TooManyPixels,
                format!(
                    "the image is {width}x{height} pixels, more than the server accepts \
                     ({limit} pixels); send a smaller image"
                ),
            ),
            e => Self::new(
                ErrorCode::UndecodableImage,
                format!("the uploaded file cannot be used: {e}"),
            ),
        }
    }
}

impl From<glimpse_clip::ClipError> for ApiError {
    fn from(e: glimpse_clip::ClipError) -> Self {
        Self::internal("running the model", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_a_client_or_server_status_and_a_snake_case_name() {
        use ErrorCode::*;
        for code in [
            BadParameter,
            EmptyQuery,
            BadQuery,
            Unauthorized,
            NotFound,
            UnknownPhoto,
            FileUnavailable,
            NoThumbnail,
            UploadTooLarge,
            BadUpload,
            TooManyPixels,
            UndecodableImage,
            LibraryUnavailable,
            Internal,
        ] {
            let status = code.status();
            assert!(status.is_client_error() || status.is_server_error());
            let name = serde_json::to_string(&code).unwrap();
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '_' || c == '"'));
        }
        assert_eq!(UploadTooLarge.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(TooManyPixels.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let e = ApiError::internal("reading the library", "/secret/path: disk on fire");
        assert!(!e.message.contains("/secret"));
        assert_eq!(e.code.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
