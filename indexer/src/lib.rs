//! The Glimpse photo library, first pieces: finding photos, reading what
//! the index records about each, and making thumbnails. A [`Walker`] walks
//! the root folders of [`WalkOptions`] (include/exclude globs, hidden files,
//! symlinks kept inside their root, errors yielded as items) and yields a
//! [`WalkEntry`] per image file, its [`FileKind`] judged by extension:
//! [`ImageKind`] for the formats Glimpse decodes, "unsupported" for HEIC,
//! AVIF, camera raw and the like. [`read_metadata`] returns a
//! [`PhotoMetadata`] — date taken (EXIF via `kamadak-exif`, else the file's
//! mtime, flagged by [`TakenAtSource`]), camera, lens, GPS, orientation,
//! upright pixel size from the header, byte size, BLAKE3 content hash and
//! MIME type. [`make_thumbnail`] turns the upright pixels the decoder made
//! for embedding into a small JPEG. Every failure is an [`IndexError`].
//!
//! [`index_library`] runs it all against a `glimpse_store::Library`:
//! walk, plan what changed (size + mtime, then hash), read each new or
//! changed file once (hash, EXIF, decode, thumbnail) on worker threads,
//! embed in batches, and commit in walk order; moves and copies reuse the
//! stored embedding, deletions are removed. [`watch`] repeats it when the
//! file system changes. HEIC/AVIF and raw files are recorded as
//! unsupported, not decoded. Searching is the store's job, not this crate's.
#![warn(missing_docs)]

mod error;
mod metadata;
mod run;
mod thumbnail;
mod walk;
mod watch;

pub use error::IndexError;
pub use glimpse_store::{PhotoMetadata, TakenAtSource};
pub use metadata::{read_metadata, read_metadata_bytes, read_metadata_path};
pub use run::{index_library, model_identity, IndexOptions, IndexSummary, Progress, WINDOW};
pub use thumbnail::{make_thumbnail, thumbnail_size, DEFAULT_THUMBNAIL_SIDE, THUMBNAIL_QUALITY};
pub use walk::{FileKind, ImageKind, WalkEntry, WalkOptions, Walker};
pub use watch::{watch, DEBOUNCE};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Walks the shared photo collection and reads the metadata of every
    /// file found, printing counts. Run with
    /// `cargo test -p glimpse-indexer -- --ignored --nocapture`.
    #[test]
    #[ignore = "needs ../shared/data/photos (453 files); a survey, not a check"]
    fn survey_shared_photos() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/photos");
        let root = if root.is_dir() {
            root
        } else {
            Path::new("/work/shared/data/photos").to_path_buf()
        };
        assert!(root.is_dir(), "no photo collection at {}", root.display());
        let start = std::time::Instant::now();
        let walker = Walker::new(WalkOptions {
            roots: vec![root],
            ..WalkOptions::default()
        })
        .expect("walker");
        let (mut supported, mut unsupported, mut walk_errors) = (0, 0, 0);
        let (mut metadata_ok, mut metadata_errors) = (0, 0);
        let (mut exif_dates, mut gps, mut sized, mut bytes) = (0, 0, 0, 0u64);
        let mut unsupported_by_ext = std::collections::BTreeMap::<String, usize>::new();
        for item in walker {
            let entry = match item {
                Ok(entry) => entry,
                Err(e) => {
                    walk_errors += 1;
                    println!("walk error: {e}");
                    continue;
                }
            };
            match &entry.kind {
                FileKind::Supported(_) => supported += 1,
                FileKind::Unsupported(ext) => {
                    unsupported += 1;
                    *unsupported_by_ext.entry(ext.clone()).or_default() += 1;
                }
            }
            match read_metadata(&entry) {
                Ok(m) => {
                    metadata_ok += 1;
                    bytes += m.bytes;
                    exif_dates += usize::from(m.taken_at_source == TakenAtSource::Exif);
                    gps += usize::from(m.gps.is_some());
                    sized += usize::from(m.width.is_some());
                }
                Err(e) => {
                    metadata_errors += 1;
                    println!("metadata error: {e}");
                }
            }
        }
        println!(
            "survey: {supported} supported, {unsupported} unsupported {unsupported_by_ext:?}, \
             {walk_errors} walk errors; metadata: {metadata_ok} read ({exif_dates} with an EXIF \
             date, {gps} with GPS, {sized} with a pixel size, {bytes} bytes hashed), \
             {metadata_errors} errors; {:.2} s",
            start.elapsed().as_secs_f64()
        );
        assert!(supported > 0);
    }
}
