//! The one error type of this crate.

use std::io;
use std::path::{Path, PathBuf};

/// Why walking, reading metadata or making a thumbnail failed.
///
/// Variants are either **user errors** — something about the files or the
/// settings the person can fix (a missing or unreadable file, a bad glob) —
/// or **internal errors** (a bug in Glimpse or a library it uses); see
/// [`IndexError::is_user_error`]. Every user error that concerns a file names
/// it ([`IndexError::path`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IndexError {
    /// A root folder or a photo does not exist (any more).
    #[error("{}: no such file or folder; check the path (it may have been moved or deleted)", .path.display())]
    NotFound {
        /// The path asked for.
        path: PathBuf,
    },
    /// A file or folder exists but could not be read: no permission, a
    /// symlink loop, an I/O error.
    #[error("cannot read {}: {source}", .path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// An include or exclude pattern is not a valid glob.
    #[error("invalid {list} pattern '{pattern}': {source}")]
    BadGlob {
        /// `"include"` or `"exclude"`.
        list: &'static str,
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        source: globset::Error,
    },
    /// A thumbnail size outside 1..=65535 pixels (a JPEG side is 16-bit)
    /// was asked for.
    #[error("the thumbnail size must be 1 to 65535 pixels (got {side})")]
    BadThumbnailSize {
        /// The size asked for.
        side: u32,
    },
    /// The library could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] glimpse_store::StoreError),
    /// The model failed to embed a batch.
    #[error("embedding failed: {0}")]
    Model(#[from] glimpse_clip::ClipError),
    /// Something that cannot happen did: a bug in Glimpse or in a library it
    /// uses. `what` says which step failed.
    #[error("internal error while {what}: {message}; this is a bug, please report it")]
    Internal {
        /// The step that failed, e.g. `"encoding a thumbnail"`.
        what: &'static str,
        /// The library's message.
        message: String,
    },
}

impl IndexError {
    /// Whether the error is about the user's files or settings (as opposed
    /// to a bug): a missing or unreadable file, a bad pattern, a bad size.
    pub fn is_user_error(&self) -> bool {
        match self {
            Self::Internal { .. } | Self::Model(_) => false,
            Self::Store(e) => e.is_user_error(),
            _ => true,
        }
    }

    /// The file or folder the error is about, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::NotFound { path } | Self::Io { path, .. } => Some(path),
            Self::BadGlob { .. }
            | Self::BadThumbnailSize { .. }
            | Self::Store(_)
            | Self::Model(_)
            | Self::Internal { .. } => None,
        }
    }

    /// Classifies an I/O error on `path`: "not found" gets its own variant.
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::NotFound {
            Self::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            Self::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    }

    /// An error from the directory walk, which names the entry it failed on
    /// when it knows it (otherwise `fallback`, the root being walked).
    pub(crate) fn walk(err: walkdir::Error, fallback: &Path) -> Self {
        let path = err.path().unwrap_or(fallback).to_path_buf();
        Self::io(&path, io::Error::from(err))
    }

    /// An internal error: `what` failed with `message`.
    pub(crate) fn internal(what: &'static str, message: impl ToString) -> Self {
        Self::Internal {
            what,
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_its_own_variant_and_names_the_path() {
        let e = IndexError::io(
            Path::new("/photos/gone.jpg"),
            io::Error::from(io::ErrorKind::NotFound),
        );
        assert!(matches!(e, IndexError::NotFound { .. }), "{e:?}");
        assert!(e.is_user_error());
        assert_eq!(e.path(), Some(Path::new("/photos/gone.jpg")));
        assert!(
            e.to_string().starts_with("/photos/gone.jpg: no such file"),
            "{e}"
        );

        let e = IndexError::io(
            Path::new("/photos/locked"),
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(matches!(e, IndexError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains("/photos/locked"), "{e}");
    }

    #[test]
    fn internal_errors_are_not_user_errors() {
        let e = IndexError::internal("encoding a thumbnail", "out of cheese");
        assert!(!e.is_user_error());
        assert_eq!(e.path(), None);
        assert_eq!(
            e.to_string(),
            "internal error while encoding a thumbnail: out of cheese; this is a bug, please report it"
        );
        assert!(IndexError::BadThumbnailSize { side: 0 }.is_user_error());
    }
}
