//! The one error type of this crate.

use std::fmt;
use std::path::{Path, PathBuf};

/// Why a photo could not be decoded. Every message names the file (or says
/// "image bytes" when decoding from memory), what failed, and what to do.
///
/// An indexer typically logs the message and skips the photo; the variant
/// tells it whether to retry (`Io`), ignore quietly (`UnknownFormat` for a
/// stray text file) or report a damaged photo (`Corrupt`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The path does not exist.
    #[error("image file not found: {}; check the path", .path.display())]
    NotFound {
        /// The path asked for.
        path: PathBuf,
    },
    /// The path exists but could not be read (a directory, no permission, an
    /// I/O error).
    #[error("cannot read image file {}: {source}", .path.display())]
    Io {
        /// The path asked for.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file or buffer holds zero bytes.
    #[error("{}: the file is empty (0 bytes); it was probably truncated while copying", Origin(.path))]
    Empty {
        /// The file, when decoding a path.
        path: Option<PathBuf>,
    },
    /// The content is not any image format Glimpse recognises (e.g. a text
    /// file).
    #[error("{}: not a recognised image format (starts with {first_bytes}); supported formats are JPEG, PNG, WebP, GIF, TIFF and BMP", Origin(.path))]
    UnknownFormat {
        /// The file, when decoding a path.
        path: Option<PathBuf>,
        /// The first bytes of the content, in hex, to help identify it.
        first_bytes: String,
    },
    /// A recognised format (or a feature of one) that this build cannot
    /// decode, e.g. HEIC or AVIF.
    #[error("{}: {format} is not supported in this build of Glimpse ({detail}); convert the photo to JPEG or PNG to index it", Origin(.path))]
    Unsupported {
        /// The file, when decoding a path.
        path: Option<PathBuf>,
        /// The format, e.g. `"HEIC/HEIF"`, or the variant of a supported
        /// one, e.g. `"this kind of TIFF"`.
        format: String,
        /// What exactly is unsupported.
        detail: String,
    },
    /// The data is damaged or truncated; `message` is the codec's own
    /// explanation.
    #[error("{}: corrupt or truncated {format} image: {message}", Origin(.path))]
    Corrupt {
        /// The file, when decoding a path.
        path: Option<PathBuf>,
        /// The format the content claims to be (`"image"` if unknown).
        format: &'static str,
        /// The decoder's message.
        message: String,
    },
    /// The header announces more pixels than `PreprocessConfig::max_pixels`
    /// allows: refused before decoding, as a possible decompression bomb.
    #[error("{}: image is {width}x{height} = {} pixels, more than the limit of {limit} (refused as a possible decompression bomb); raise the pixel limit (`--max-pixels`) to accept it", Origin(.path), u64::from(*.width) * u64::from(*.height))]
    TooManyPixels {
        /// The file, when decoding a path.
        path: Option<PathBuf>,
        /// Width announced by the header.
        width: u32,
        /// Height announced by the header.
        height: u32,
        /// The limit in force (`max_pixels`).
        limit: u64,
    },
}

impl DecodeError {
    /// The file the error is about, if a path was decoded.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::NotFound { path } | Self::Io { path, .. } => Some(path),
            Self::Empty { path }
            | Self::UnknownFormat { path, .. }
            | Self::Unsupported { path, .. }
            | Self::Corrupt { path, .. }
            | Self::TooManyPixels { path, .. } => path.as_deref(),
        }
    }

    /// Attaches `path` to an error made while decoding bytes.
    pub(crate) fn with_path(mut self, file: &Path) -> Self {
        match &mut self {
            Self::NotFound { .. } | Self::Io { .. } => {}
            Self::Empty { path }
            | Self::UnknownFormat { path, .. }
            | Self::Unsupported { path, .. }
            | Self::Corrupt { path, .. }
            | Self::TooManyPixels { path, .. } => *path = Some(file.to_path_buf()),
        }
        self
    }
}

/// Displays where the image came from: the path, or "image bytes".
struct Origin<'a>(&'a Option<PathBuf>);

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("image bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_path_and_the_fix() {
        let e = DecodeError::TooManyPixels {
            path: None,
            width: 100_000,
            height: 100_000,
            limit: 178_956_970,
        }
        .with_path(Path::new("/photos/bomb.png"));
        let msg = e.to_string();
        assert!(msg.contains("/photos/bomb.png"), "{msg}");
        assert!(msg.contains("100000x100000"), "{msg}");
        assert!(msg.contains("10000000000 pixels"), "{msg}");
        assert!(msg.contains("--max-pixels"), "{msg}");
        assert_eq!(e.path(), Some(Path::new("/photos/bomb.png")));

        let e = DecodeError::Corrupt {
            path: None,
            format: "JPEG",
            message: "unexpected end of file".into(),
        };
        assert!(e.to_string().starts_with("image bytes: corrupt"), "{e}");
        assert_eq!(e.path(), None);
    }
}
