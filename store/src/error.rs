//! The one error type of this crate.

use std::path::PathBuf;

/// Why opening, reading, writing or searching the library failed.
///
/// **User errors** ([`StoreError::is_user_error`]) are things the person can
/// fix: a library made with another model, one that another process has
/// open, a damaged database (rebuild it), a bad query. The rest are
/// internal (a bug, or the disk failing under us).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The library was built with a different model (or preprocessing);
    /// mixing embeddings from two models would give meaningless results.
    #[error(
        "the library at {} was indexed with model {library} ({library_dim}-d), not {requested} \
         ({requested_dim}-d); run `glimpse index --reembed` to re-embed every photo with the new \
         model, or pass the library's model with --model",
        .dir.display()
    )]
    ModelMismatch {
        /// The library folder.
        dir: PathBuf,
        /// The model id recorded in the library.
        library: String,
        /// Its embedding dimension.
        library_dim: usize,
        /// The model id asked for.
        requested: String,
        /// Its embedding dimension.
        requested_dim: usize,
    },
    /// Another process (an indexer, a server) has the library open.
    #[error(
        "the library at {} is in use by another glimpse process (an indexer or a server); stop \
         it or wait for it to finish, then try again",
        .dir.display()
    )]
    Locked {
        /// The library folder.
        dir: PathBuf,
    },
    /// The database cannot be opened or read back: damaged by a disk
    /// problem or written by an incompatible version.
    #[error(
        "the library database at {} cannot be read ({message}); the library is derived from your \
         photos, so it can be rebuilt: move the folder away (or delete it) and run `glimpse \
         index` again",
        .dir.display()
    )]
    Corrupt {
        /// The library folder.
        dir: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The library was written by a newer Glimpse.
    #[error(
        "the library at {} has schema version {found}, newer than this glimpse understands \
         ({supported}); upgrade glimpse, or rebuild the library with `glimpse index` into a new \
         --library folder",
        .dir.display()
    )]
    NewerSchema {
        /// The library folder.
        dir: PathBuf,
        /// The version on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// There is no library yet where one was expected.
    #[error(
        "no library at {}; index some photos first: `glimpse index DIR` (or pass --library / set \
         GLIMPSE_LIBRARY to where the library is)",
        .dir.display()
    )]
    NoLibrary {
        /// The folder looked in.
        dir: PathBuf,
    },
    /// A search asked for something that cannot be answered.
    #[error("{0}")]
    BadQuery(String),
    /// No photo has this id.
    #[error("no photo with id {0} in the library")]
    UnknownPhoto(u64),
    /// A vector of the wrong length was given.
    #[error("a {got}-d vector was given to a library of {expected}-d embeddings")]
    WrongDimension {
        /// The library's dimension.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// The disk failed under us (full, read-only, I/O error).
    #[error("cannot write to the library at {}: {source}", .dir.display())]
    Io {
        /// The library folder (or file).
        dir: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// Something that cannot happen did.
    #[error("internal error while {what}: {message}; this is a bug, please report it")]
    Internal {
        /// The step that failed.
        what: &'static str,
        /// The library's message.
        message: String,
    },
}

impl StoreError {
    /// Whether the person can fix it (as opposed to a bug or a failing disk).
    pub fn is_user_error(&self) -> bool {
        !matches!(self, Self::Internal { .. } | Self::Io { .. })
    }

    pub(crate) fn internal(what: &'static str, message: impl std::fmt::Display) -> Self {
        Self::Internal {
            what,
            message: message.to_string(),
        }
    }
}
