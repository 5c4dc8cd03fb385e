//! Exit codes and one-line error messages.

use glimpse_clip::ClipError;
use glimpse_decoder::DecodeError;
use glimpse_indexer::IndexError;
use glimpse_server::ServerError;
use glimpse_store::StoreError;
use glimpse_tokenizer::TokenizerError;
use glimpse_trainer::TrainError;

/// Shown under `--help`.
pub const EXIT_CODES_HELP: &str =
    "Exit codes: 0 success; 1 internal error (a bug: please report it); \
2 bad command line (including a --bind address that cannot be used); 3 bad input (a file, image or text that cannot be used); \
4 model unavailable (not found, bad weights, download failed); \
5 library unavailable (none yet, in use by another process, made with another model, damaged).";

/// A failure caused by what the user gave, not by Glimpse.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The exit code for an error, by its root cause.
pub fn code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<InputError>().is_some()
            || cause.downcast_ref::<DecodeError>().is_some()
            || cause.downcast_ref::<TokenizerError>().is_some()
        {
            return 3;
        }
        if let Some(s) = cause.downcast_ref::<StoreError>() {
            return store_code(s);
        }
        if let Some(e) = cause.downcast_ref::<ServerError>() {
            return match e {
                ServerError::TokenRequired { .. }
                | ServerError::BadBind { .. }
                | ServerError::Bind { .. } => 2,
                ServerError::Store(s) => store_code(s),
                ServerError::Index(IndexError::Store(s)) => store_code(s),
                ServerError::Index(_) => 3,
                _ => 1,
            };
        }
        if let Some(IndexError::Store(s)) = cause.downcast_ref::<IndexError>() {
            return store_code(s);
        }
        if let Some(i) = cause.downcast_ref::<IndexError>() {
            if let IndexError::Model(_) | IndexError::Internal { .. } = i {
                return 1;
            }
            return 3;
        }
        if let Some(t) = cause.downcast_ref::<TrainError>() {
            return match t {
                TrainError::Model(c) => clip_code(c),
                TrainError::BadOption(_) => 2,
                e if e.is_user_error() => 3,
                _ => 1,
            };
        }
        if let Some(c) = cause.downcast_ref::<ClipError>() {
            return clip_code(c);
        }
    }
    1
}

fn clip_code(c: &ClipError) -> u8 {
    match c {
        ClipError::BadInput(_) | ClipError::Tokenizer(_) => 3,
        ClipError::Tensor(_) => 1,
        _ => 4,
    }
}

fn store_code(e: &StoreError) -> u8 {
    match e {
        StoreError::BadQuery(_)
        | StoreError::UnknownPhoto(_)
        | StoreError::WrongDimension { .. } => 3,
        e if e.is_user_error() => 5,
        _ => 1,
    }
}

/// The error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
