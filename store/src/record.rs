//! What the library keeps about each photo and each file that failed.

use serde::{Deserialize, Serialize};

/// Where [`PhotoMetadata::taken_at`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TakenAtSource {
    /// The EXIF `DateTimeOriginal`, or failing that `DateTime`.
    Exif,
    /// No usable EXIF date: the file's modification time.
    FileMtime,
}

/// Everything the library keeps about one photo file besides its embedding.
///
/// Missing or corrupt EXIF is normal (screenshots, edited files, scans) and
/// leaves the EXIF fields empty; only an unreadable file is an error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhotoMetadata {
    /// When the photo was taken, in seconds since 1970-01-01 00:00:00 UTC
    /// (negative before). An integer rather than a date string so that date
    /// filters are plain comparisons.
    ///
    /// EXIF dates are wall-clock times. When the file records its UTC offset
    /// (`OffsetTimeOriginal`, or `OffsetTime` for `DateTime`) the value is
    /// true UTC and [`taken_at_offset_minutes`](Self::taken_at_offset_minutes)
    /// holds the offset; otherwise the wall-clock time is stored *as if* it
    /// were UTC ("UTC-ish": off by the photographer's time zone, but the
    /// date and hour a person remembers). From the file's modification time
    /// it is true UTC.
    pub taken_at: i64,
    /// The UTC offset recorded with the EXIF date, in minutes east of UTC
    /// (`-300` for `-05:00`), if the file has one.
    pub taken_at_offset_minutes: Option<i16>,
    /// Whether `taken_at` came from EXIF or from the file's mtime.
    pub taken_at_source: TakenAtSource,
    /// EXIF `Make`, trimmed of NULs and spaces (`"Canon"`).
    pub camera_make: Option<String>,
    /// EXIF `Model`, trimmed (`"Canon PowerShot S5 IS"`).
    pub camera_model: Option<String>,
    /// EXIF `LensModel`, trimmed (maker-note lens names are not read).
    pub lens: Option<String>,
    /// `(latitude, longitude)` in decimal degrees, south and west negative.
    /// `None` without GPS tags, with invalid ones, or with exactly `(0, 0)`
    /// (what devices write when they have no fix).
    pub gps: Option<(f64, f64)>,
    /// EXIF orientation, 1 to 8 (1 when absent or invalid); the decoder
    /// applies it, so thumbnails and embeddings are upright.
    pub orientation: u16,
    /// Width of the upright image (after the orientation: swapped with the
    /// height for orientations 5 to 8), from the image header. `None` for
    /// unsupported formats (HEIC, raw) and unreadable headers.
    pub width: Option<u32>,
    /// Height of the upright image; see [`width`](Self::width).
    pub height: Option<u32>,
    /// Size of the file in bytes (as hashed).
    pub bytes: u64,
    /// BLAKE3 hash of the whole file, 64 lower-case hex digits: identifies
    /// the photo across moves and renames.
    pub blake3: String,
    /// MIME type sniffed from the content (`"image/jpeg"`, `"image/heif"`,
    /// …), `"application/octet-stream"` when unknown.
    pub mime: String,
}

impl PhotoMetadata {
    /// `"Make Model"` as people say it: the model alone when it already
    /// starts with the make (`"Canon Canon EOS 5D"` reads badly), `None`
    /// when neither is known.
    pub fn camera(&self) -> Option<String> {
        match (&self.camera_make, &self.camera_model) {
            (Some(make), Some(model)) => {
                if model.to_lowercase().starts_with(&make.to_lowercase()) {
                    Some(model.clone())
                } else {
                    Some(format!("{make} {model}"))
                }
            }
            (Some(one), None) | (None, Some(one)) => Some(one.clone()),
            (None, None) => None,
        }
    }
}

/// One indexed photo: the stable id, where the file is, what was seen of it
/// (size and modification time, to skip unchanged files with one `stat`),
/// and its metadata. The embedding is stored beside it, not in it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhotoRecord {
    /// Stable id: kept across edits, moves and renames of the file.
    pub id: u64,
    /// Absolute path of the file, as walked.
    pub path: String,
    /// File size in bytes when it was indexed.
    pub size: u64,
    /// File modification time when it was indexed, nanoseconds since the
    /// Unix epoch.
    pub mtime_ns: i64,
    /// What was read from the file.
    pub meta: PhotoMetadata,
    /// Whether a thumbnail is stored for it.
    pub has_thumbnail: bool,
    /// When the record was last written, seconds since the Unix epoch.
    pub indexed_at: i64,
}

impl PhotoRecord {
    /// The folder holding the file (the path up to its last `/`).
    pub fn folder(&self) -> &str {
        match self.path.rfind(std::path::MAIN_SEPARATOR) {
            Some(0) => std::path::MAIN_SEPARATOR_STR,
            Some(i) => &self.path[..i],
            None => "",
        }
    }

    /// The file name (the path after its last `/`).
    pub fn file_name(&self) -> &str {
        match self.path.rfind(std::path::MAIN_SEPARATOR) {
            Some(i) => &self.path[i + 1..],
            None => &self.path,
        }
    }
}

/// Why a file is not in the library. Used to group failures in
/// `glimpse status` and to decide what is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// A format Glimpse does not decode (HEIC, AVIF, camera raw) in this
    /// build: recorded, not an error.
    UnsupportedFormat,
    /// The content is damaged, truncated or not an image.
    Corrupt,
    /// More pixels than the decompression-bomb guard allows.
    TooLarge,
    /// The file could not be read (permissions, I/O error, vanished).
    Unreadable,
    /// The path cannot be stored (not valid UTF-8).
    BadPath,
    /// A bug in Glimpse or a library it uses.
    Internal,
}

impl FailureKind {
    /// A short stable name (`"unsupported_format"`, …) for output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedFormat => "unsupported_format",
            Self::Corrupt => "corrupt",
            Self::TooLarge => "too_large",
            Self::Unreadable => "unreadable",
            Self::BadPath => "bad_path",
            Self::Internal => "internal",
        }
    }
}

/// A file that could not be indexed. It is retried only when its size or
/// modification time changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The file (lossy UTF-8 for display when the name is not UTF-8).
    pub path: String,
    /// The class of failure.
    pub kind: FailureKind,
    /// The full message, naming the file and what to do.
    pub message: String,
    /// How many runs tried this version of the file (or any version).
    pub attempts: u32,
    /// Size of the file when it failed.
    pub size: u64,
    /// Modification time of the file when it failed (ns since the epoch).
    pub mtime_ns: i64,
    /// When it last failed, seconds since the Unix epoch.
    pub failed_at: i64,
}
