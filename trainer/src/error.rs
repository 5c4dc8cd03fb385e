//! The one error type of this crate.

use std::path::PathBuf;

/// Why loading data, training, evaluating or exporting failed.
///
/// Variants are **user errors** (bad data files, options, a run directory
/// that does not match the options) or **internal errors** (a tensor
/// operation that failed: a bug); see [`TrainError::is_user_error`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A file or folder could not be read or written.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A data file has a row that cannot be used, and `--strict` was given
    /// (without it such rows are counted and skipped).
    #[error("{}:{line}: {reason} (drop --strict to skip bad rows and count them instead)", .path.display())]
    BadRow {
        /// The data file.
        path: PathBuf,
        /// 1-based line (JSONL) or record (CSV) number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A data file that cannot be read as a whole (unknown format, missing
    /// column).
    #[error("{}: {reason}", .path.display())]
    BadDataFile {
        /// The data file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Too little usable data for what was asked.
    #[error("{0}")]
    NotEnoughData(String),
    /// An option or combination of options that cannot work.
    #[error("{0}")]
    BadOption(String),
    /// A run directory whose checkpoint cannot be resumed with these options.
    #[error("cannot resume from {}: {reason}", .path.display())]
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] glimpse_clip::ClipError),
    /// A tensor operation failed: a bug in Glimpse or candle.
    #[error("internal error while {what}: {message}; this is a bug, please report it")]
    Internal {
        /// The step that failed.
        what: &'static str,
        /// The library's message.
        message: String,
    },
}

impl TrainError {
    /// Whether the person running Glimpse can fix this (data, options,
    /// files) rather than it being a bug.
    pub fn is_user_error(&self) -> bool {
        match self {
            Self::Model(e) => !matches!(e, glimpse_clip::ClipError::Tensor(_)),
            Self::Internal { .. } => false,
            _ => true,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn internal(what: &'static str) -> impl FnOnce(candle_core::Error) -> Self {
        move |e| Self::Internal {
            what,
            message: e.to_string(),
        }
    }
}
