//! The crate's error type.

use std::path::PathBuf;

/// What can go wrong when building a [`crate::Tokenizer`] or tokenizing with it.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A vocabulary file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// A vocabulary file was read but its content is not valid.
    #[error("invalid {}: {message}", path.display())]
    InvalidFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The requested context length cannot hold the start and end tokens.
    #[error(
        "context length {0} is too small: it must be at least 2, for the start and end tokens"
    )]
    ContextLengthTooSmall(usize),
}
