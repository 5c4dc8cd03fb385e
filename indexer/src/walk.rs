//! Finding the photos under the library's root folders.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use glimpse_decoder::ImageFormat;
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::IndexError;

/// What to walk and what to skip.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// The folders to walk (a file is accepted too and yields itself). Each
    /// is made absolute and canonical first; a root that is missing or
    /// unreadable is reported as an error item and the others are walked.
    pub roots: Vec<PathBuf>,
    /// If not empty, only files matching at least one of these globs are
    /// yielded. See [`Walker`] for how patterns match.
    pub include: Vec<String>,
    /// Files and folders matching any of these globs are skipped (a folder
    /// with everything in it).
    pub exclude: Vec<String>,
    /// Whether to enter hidden folders and yield hidden files (names
    /// starting with `.`). The roots themselves are always walked.
    pub include_hidden: bool,
}

/// An image format Glimpse decodes (see `glimpse-decoder`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// JPEG (`.jpg`, `.jpeg`, `.jpe`, `.jfif`).
    Jpeg,
    /// PNG (`.png`).
    Png,
    /// WebP (`.webp`).
    WebP,
    /// GIF, first frame (`.gif`).
    Gif,
    /// TIFF (`.tif`, `.tiff`).
    Tiff,
    /// BMP (`.bmp`, `.dib`).
    Bmp,
}

impl ImageKind {
    /// The format for a lower-case file extension, if Glimpse decodes it.
    pub fn from_extension(ext: &str) -> Option<Self> {
        Some(match ext {
            "jpg" | "jpeg" | "jpe" | "jfif" => Self::Jpeg,
            "png" => Self::Png,
            "webp" => Self::WebP,
            "gif" => Self::Gif,
            "tif" | "tiff" => Self::Tiff,
            "bmp" | "dib" => Self::Bmp,
            _ => return None,
        })
    }

    /// The format's MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Self::Jpeg => "image/jpeg",
            Self::Png => "image/png",
            Self::WebP => "image/webp",
            Self::Gif => "image/gif",
            Self::Tiff => "image/tiff",
            Self::Bmp => "image/bmp",
        }
    }

    /// The `image` crate's name for the format.
    pub fn image_format(self) -> ImageFormat {
        match self {
            Self::Jpeg => ImageFormat::Jpeg,
            Self::Png => ImageFormat::Png,
            Self::WebP => ImageFormat::WebP,
            Self::Gif => ImageFormat::Gif,
            Self::Tiff => ImageFormat::Tiff,
            Self::Bmp => ImageFormat::Bmp,
        }
    }
}

/// Image formats that are recognised by their extension but not decoded by
/// this build: HEIC/HEIF, AVIF, JPEG XL, JPEG 2000, camera raw files and a
/// few others. Lower-case.
#[rustfmt::skip]
const UNSUPPORTED_EXTENSIONS: &[&str] = &[
    // HEIF family, JPEG XL, JPEG 2000.
    "heic", "heif", "hif", "avif", "jxl", "jp2", "j2k", "jpf", "jpx", "jpm",
    // Camera raw (DNG and the makers' own formats).
    "dng", "cr2", "cr3", "crw", "nef", "nrw", "arw", "srf", "sr2", "raf", "rw2", "raw", "rwl",
    "orf", "pef", "ptx", "srw", "x3f", "3fr", "fff", "iiq", "erf", "kdc", "dcr", "mrw", "mos",
    "mef", "gpr",
    // Other image formats the decoder does not handle.
    "psd", "svg", "ico", "ppm", "pgm", "pbm", "pnm", "tga", "exr", "hdr", "qoi", "dds",
];

/// What the walker found at a path, judged by its extension
/// (case-insensitively); the decoder checks the content later.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A format Glimpse decodes.
    Supported(ImageKind),
    /// A recognised image format this build does not decode (HEIC, AVIF,
    /// camera raw, …), with its lower-case extension. Recorded, not an
    /// error.
    Unsupported(String),
}

impl FileKind {
    /// The kind of file `path` names by its extension, or `None` when it
    /// is not an image at all (a text file, a video, no extension).
    pub fn from_path(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        if let Some(kind) = ImageKind::from_extension(&ext) {
            Some(Self::Supported(kind))
        } else if UNSUPPORTED_EXTENSIONS.contains(&ext.as_str()) {
            Some(Self::Unsupported(ext))
        } else {
            None
        }
    }
}

/// One photo found by the [`Walker`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalkEntry {
    /// Absolute, canonical path of the file (no `.`/`..`, no symlink in
    /// it). A symlink inside a root is reported at its target's path.
    pub path: PathBuf,
    /// The canonical root folder the file was found under (for a root that
    /// is a file, its folder). `path` always starts with it.
    pub root: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time (`UNIX_EPOCH` on a platform that has none).
    pub mtime: SystemTime,
    /// The format, by extension.
    pub kind: FileKind,
}

impl WalkEntry {
    /// The path relative to its root, e.g. `2019/beach/IMG_0001.jpg`.
    pub fn relative(&self) -> &Path {
        self.path.strip_prefix(&self.root).unwrap_or(&self.path)
    }
}

/// Include or exclude globs, compiled.
#[derive(Debug)]
struct Patterns {
    /// Patterns without a `/`: matched against the file or folder name.
    by_name: GlobSet,
    /// Patterns with a `/`: matched against the path relative to the root.
    by_path: GlobSet,
}

impl Patterns {
    fn new(list: &'static str, patterns: &[String]) -> Result<Self, IndexError> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for pattern in patterns {
            let bad = |source| IndexError::BadGlob {
                list,
                pattern: pattern.clone(),
                source,
            };
            let trimmed = pattern.trim_matches('/');
            let glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .case_insensitive(true)
                .backslash_escape(true)
                .build()
                .map_err(bad)?;
            if trimmed.contains('/') {
                by_path.add(glob);
            } else {
                by_name.add(glob);
            }
        }
        Ok(Self {
            by_name: by_name.build().map_err(|source| IndexError::BadGlob {
                list,
                pattern: patterns.join(" "),
                source,
            })?,
            by_path: by_path.build().map_err(|source| IndexError::BadGlob {
                list,
                pattern: patterns.join(" "),
                source,
            })?,
        })
    }

    fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.by_path.is_empty()
    }

    /// Whether `relative` (a path below a root, or a root file's name)
    /// matches any pattern.
    fn matches(&self, relative: &Path) -> bool {
        relative
            .file_name()
            .is_some_and(|name| self.by_name.is_match(name))
            || self.by_path.is_match(relative)
    }
}

/// Identifies a file whatever path reached it, so that it is yielded once.
#[cfg(unix)]
type FileId = (u64, u64);
#[cfg(not(unix))]
type FileId = PathBuf;

#[cfg(unix)]
fn file_id(_path: &Path, metadata: &fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

#[cfg(not(unix))]
fn file_id(path: &Path, _metadata: &fs::Metadata) -> FileId {
    path.to_path_buf()
}

/// The root being walked.
#[derive(Debug)]
struct Current {
    /// Canonical root folder (a root file's folder): where relative paths
    /// start and symlinks must stay.
    base: PathBuf,
    entries: walkdir::IntoIter,
}

/// Walks the roots of [`WalkOptions`] and yields every image file found,
/// one [`WalkEntry`] at a time, in a deterministic order: roots in the
/// order given, and within a root depth-first with names sorted.
///
/// - **Formats** are recognised by extension, case-insensitively:
///   [`FileKind::Supported`] for JPEG, PNG, WebP, GIF, TIFF and BMP;
///   [`FileKind::Unsupported`] for HEIC/HEIF, AVIF, JPEG XL, JPEG 2000,
///   camera raw and a few other image formats (recorded, not errors). Other
///   files (text, video, no extension) are skipped silently.
/// - **Hidden** files and folders (name starting with `.`) are skipped
///   unless [`WalkOptions::include_hidden`].
/// - **Globs** (case-insensitive; `*`, `?`, `[ab]`, `{a,b}`, `**`): a
///   pattern without `/` matches a file or folder *name* at any depth
///   (`*.jpg`, `@eaDir`); a pattern with `/` matches the path relative to
///   the root, `/`-separated, where `*` stops at `/` and `**` crosses
///   folders (`2019/**`, `**/thumbs/*.png`). Excludes prune whole folders;
///   includes apply to files only.
/// - **Symlinks** are never followed into folders, so a symlink loop cannot
///   make the walk hang. A symlink to a file is followed when its target
///   lies inside the same root, and the file is reported at its target's
///   canonical path; one leading outside the root is skipped. Each file is
///   yielded once even when several links (or overlapping roots, or hard
///   links) reach it: the first path in walk order wins. Filters apply to
///   the link's own name and place.
/// - **Errors** (a missing root, a folder without read permission, a
///   dangling or looping symlink whose name looks like an image) are
///   yielded as `Err` items and the walk goes on.
#[derive(Debug)]
pub struct Walker {
    roots: std::vec::IntoIter<PathBuf>,
    include: Patterns,
    exclude: Patterns,
    include_hidden: bool,
    current: Option<Current>,
    walked_roots: HashSet<PathBuf>,
    seen: HashSet<FileId>,
}

impl Walker {
    /// Prepares a walk. Fails only on an invalid glob; problems with the
    /// roots come out of the iteration.
    pub fn new(options: WalkOptions) -> Result<Self, IndexError> {
        Ok(Self {
            include: Patterns::new("include", &options.include)?,
            exclude: Patterns::new("exclude", &options.exclude)?,
            include_hidden: options.include_hidden,
            roots: options.roots.into_iter(),
            current: None,
            walked_roots: HashSet::new(),
            seen: HashSet::new(),
        })
    }

    /// Starts the next root; `Err` for a root that cannot be resolved.
    fn start_root(&mut self, root: &Path) -> Result<(), IndexError> {
        let canonical = fs::canonicalize(root).map_err(|e| IndexError::io(root, e))?;
        if !self.walked_roots.insert(canonical.clone()) {
            return Ok(());
        }
        let base = if canonical.is_dir() {
            canonical.clone()
        } else {
            canonical
                .parent()
                .map_or_else(|| canonical.clone(), Path::to_path_buf)
        };
        let entries = walkdir::WalkDir::new(&canonical)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        self.current = Some(Current { base, entries });
        Ok(())
    }

    /// Stops descending into the folder just yielded by the walk.
    fn skip_current_dir(&mut self) {
        if let Some(current) = self.current.as_mut() {
            current.entries.skip_current_dir();
        }
    }

    /// Whether a file or folder name is hidden and hidden ones are skipped.
    fn skip_hidden(&self, name: &OsStr) -> bool {
        !self.include_hidden && name.as_encoded_bytes().starts_with(b".")
    }
}

impl Iterator for Walker {
    type Item = Result<WalkEntry, IndexError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some(current) = self.current.as_mut() else {
                let root = self.roots.next()?;
                if let Err(e) = self.start_root(&root) {
                    return Some(Err(e));
                }
                continue;
            };
            let entry = match current.entries.next() {
                None => {
                    self.current = None;
                    continue;
                }
                Some(Err(e)) => return Some(Err(IndexError::walk(e, &current.base))),
                Some(Ok(entry)) => entry,
            };
            let base = current.base.clone();
            let is_root = entry.depth() == 0;
            let file_type = entry.file_type();

            if !is_root && self.skip_hidden(entry.file_name()) {
                if file_type.is_dir() {
                    self.skip_current_dir();
                }
                continue;
            }
            let relative = entry.path().strip_prefix(&base).unwrap_or(entry.path());
            if file_type.is_dir() {
                if !is_root && self.exclude.matches(relative) {
                    self.skip_current_dir();
                }
                continue;
            }
            // Only names that look like images go further.
            if FileKind::from_path(entry.path()).is_none() {
                continue;
            }
            if self.exclude.matches(relative)
                || (!self.include.is_empty() && !self.include.matches(relative))
            {
                continue;
            }
            let (path, metadata) = if file_type.is_symlink() {
                let target = match fs::canonicalize(entry.path()) {
                    Ok(target) => target,
                    // Dangling or looping: the link itself is unreadable.
                    Err(e) => return Some(Err(IndexError::io(entry.path(), e))),
                };
                if !target.starts_with(&base) {
                    continue;
                }
                match fs::metadata(&target) {
                    Ok(metadata) if metadata.is_file() => (target, metadata),
                    Ok(_) => continue,
                    Err(e) => return Some(Err(IndexError::io(&target, e))),
                }
            } else if file_type.is_file() {
                match entry.metadata() {
                    Ok(metadata) => (entry.into_path(), metadata),
                    Err(e) => return Some(Err(IndexError::walk(e, &base))),
                }
            } else {
                // Sockets, pipes, devices.
                continue;
            };
            // By the target's extension: a link `a.jpg -> b.heic` is a HEIC.
            let Some(kind) = FileKind::from_path(&path) else {
                continue;
            };
            if !self.seen.insert(file_id(&path, &metadata)) {
                continue;
            }
            return Some(Ok(WalkEntry {
                path,
                root: base,
                size: metadata.len(),
                mtime: metadata.modified().unwrap_or(UNIX_EPOCH),
                kind,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Creates `relative` under `dir` (folders too) holding a few bytes.
    fn touch(dir: &Path, relative: &str) -> PathBuf {
        let path = dir.join(relative);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        let mut f = fs::File::create(&path).expect("create");
        f.write_all(b"not really an image").expect("write");
        path
    }

    fn options(root: &Path) -> WalkOptions {
        WalkOptions {
            roots: vec![root.to_path_buf()],
            ..WalkOptions::default()
        }
    }

    /// Walks and returns the relative paths found (with `/`), panicking on
    /// any error item.
    fn walk_ok(options: WalkOptions) -> Vec<String> {
        Walker::new(options)
            .expect("valid options")
            .map(|item| {
                let entry = item.expect("no walk error");
                entry.relative().to_string_lossy().replace('\\', "/")
            })
            .collect()
    }

    #[test]
    fn extensions_are_recognised_case_insensitively() {
        let kind = |name: &str| FileKind::from_path(Path::new(name));
        assert_eq!(
            kind("a/IMG_0001.JPG"),
            Some(FileKind::Supported(ImageKind::Jpeg))
        );
        assert_eq!(kind("x.jpeg"), Some(FileKind::Supported(ImageKind::Jpeg)));
        assert_eq!(kind("x.Png"), Some(FileKind::Supported(ImageKind::Png)));
        assert_eq!(kind("x.webp"), Some(FileKind::Supported(ImageKind::WebP)));
        assert_eq!(kind("x.gif"), Some(FileKind::Supported(ImageKind::Gif)));
        assert_eq!(kind("x.TIF"), Some(FileKind::Supported(ImageKind::Tiff)));
        assert_eq!(kind("x.bmp"), Some(FileKind::Supported(ImageKind::Bmp)));
        assert_eq!(kind("x.HEIC"), Some(FileKind::Unsupported("heic".into())));
        assert_eq!(kind("x.avif"), Some(FileKind::Unsupported("avif".into())));
        assert_eq!(kind("x.CR3"), Some(FileKind::Unsupported("cr3".into())));
        assert_eq!(kind("x.dng"), Some(FileKind::Unsupported("dng".into())));
        assert_eq!(kind("notes.txt"), None);
        assert_eq!(kind("README"), None);
        assert_eq!(kind(".jpg"), None, "a dot file has no extension");
        assert_eq!(ImageKind::Jpeg.mime(), "image/jpeg");
        assert_eq!(ImageKind::WebP.image_format(), ImageFormat::WebP);
    }

    #[test]
    fn yields_images_sorted_with_size_mtime_and_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(root, "b.jpg");
        touch(root, "a/z.PNG");
        touch(root, "a/y.heic");
        touch(root, "a/notes.txt");
        touch(root, "c.CR2");
        let entries: Vec<WalkEntry> = Walker::new(options(root))
            .expect("walker")
            .collect::<Result<_, _>>()
            .expect("no errors");
        let names: Vec<_> = entries
            .iter()
            .map(|e| e.relative().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["a/y.heic", "a/z.PNG", "b.jpg", "c.CR2"]);
        let canonical_root = fs::canonicalize(root).expect("canonical");
        for e in &entries {
            assert!(e.path.is_absolute());
            assert_eq!(e.root, canonical_root);
            assert_eq!(e.size, b"not really an image".len() as u64);
            assert_eq!(
                e.mtime,
                fs::metadata(&e.path)
                    .expect("stat")
                    .modified()
                    .expect("mtime")
            );
        }
        assert_eq!(entries[0].kind, FileKind::Unsupported("heic".into()));
        assert_eq!(entries[1].kind, FileKind::Supported(ImageKind::Png));
        assert_eq!(entries[3].kind, FileKind::Unsupported("cr2".into()));
    }

    #[test]
    fn hidden_files_and_folders_are_skipped_unless_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join(".photos"); // a hidden root is still walked
        touch(&root, "visible.jpg");
        touch(&root, ".hidden.jpg");
        touch(&root, ".thumbnails/t.jpg");
        touch(&root, "album/.cache/c.jpg");
        assert_eq!(walk_ok(options(&root)), ["visible.jpg"]);
        let all = walk_ok(WalkOptions {
            include_hidden: true,
            ..options(&root)
        });
        assert_eq!(
            all,
            [
                ".hidden.jpg",
                ".thumbnails/t.jpg",
                "album/.cache/c.jpg",
                "visible.jpg"
            ]
        );
    }

    #[test]
    fn include_and_exclude_globs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for f in [
            "2019/beach/a.jpg",
            "2019/beach/b.png",
            "2019/@eaDir/a.jpg",
            "2020/c.JPG",
            "2020/private/d.jpg",
            "e.jpg",
        ] {
            touch(root, f);
        }
        let walk = |include: &[&str], exclude: &[&str]| {
            walk_ok(WalkOptions {
                include: include.iter().map(|s| s.to_string()).collect(),
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
                ..options(root)
            })
        };
        // A name pattern matches at any depth, case-insensitively.
        assert_eq!(
            walk(&["*.jpg"], &[]),
            [
                "2019/@eaDir/a.jpg",
                "2019/beach/a.jpg",
                "2020/c.JPG",
                "2020/private/d.jpg",
                "e.jpg"
            ]
        );
        // A folder name excluded prunes it wherever it is.
        assert_eq!(
            walk(&[], &["@eaDir", "private"]),
            [
                "2019/beach/a.jpg",
                "2019/beach/b.png",
                "2020/c.JPG",
                "e.jpg"
            ]
        );
        // Path patterns are relative to the root; `*` stops at `/`.
        assert_eq!(walk(&["2019/*"], &[]), Vec::<String>::new());
        assert_eq!(
            walk(&["2019/**"], &["**/@eaDir/**"]),
            ["2019/beach/a.jpg", "2019/beach/b.png"]
        );
        assert_eq!(walk(&["/e.jpg"], &[]), ["e.jpg"]);
        assert_eq!(
            walk(&["*.{png,jpg}"], &["2020/**", "2019/@eaDir"]),
            ["2019/beach/a.jpg", "2019/beach/b.png", "e.jpg"]
        );

        let err = Walker::new(WalkOptions {
            exclude: vec!["[unclosed".into()],
            ..options(root)
        })
        .expect_err("bad glob");
        assert!(matches!(
            err,
            IndexError::BadGlob {
                list: "exclude",
                ..
            }
        ));
        assert!(err.to_string().contains("[unclosed"), "{err}");
        assert!(err.is_user_error());
    }

    #[test]
    fn missing_root_is_an_error_item_and_other_roots_are_walked() {
        let dir = tempfile::tempdir().expect("tempdir");
        touch(dir.path(), "a.jpg");
        let missing = dir.path().join("nope");
        let items: Vec<_> = Walker::new(WalkOptions {
            roots: vec![missing.clone(), dir.path().to_path_buf()],
            ..WalkOptions::default()
        })
        .expect("walker")
        .collect();
        assert_eq!(items.len(), 2, "{items:?}");
        match &items[0] {
            Err(e @ IndexError::NotFound { path }) => {
                assert_eq!(path, &missing);
                assert!(e.is_user_error());
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
        assert!(items[1].as_ref().is_ok_and(|e| e.path.ends_with("a.jpg")));
    }

    #[test]
    fn a_root_that_is_a_file_yields_itself_and_duplicate_roots_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = touch(dir.path(), "one.webp");
        let entries: Vec<WalkEntry> = Walker::new(WalkOptions {
            roots: vec![file.clone(), dir.path().to_path_buf(), file.clone()],
            ..WalkOptions::default()
        })
        .expect("walker")
        .collect::<Result<_, _>>()
        .expect("no errors");
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].relative(), Path::new("one.webp"));
        assert_eq!(entries[0].kind, FileKind::Supported(ImageKind::WebP));
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_loops_and_links_out_of_the_root() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        touch(&root, "album/real.jpg");
        touch(&outside, "secret.jpg");
        // A folder link back up: a loop if it were followed.
        symlink(&root, root.join("album/loop")).expect("symlink");
        symlink("..", root.join("album/up")).expect("symlink");
        // Links leaving the root, to a folder and to a file.
        symlink(&outside, root.join("out")).expect("symlink");
        symlink(outside.join("secret.jpg"), root.join("secret-link.jpg")).expect("symlink");
        // A link to a file inside the root, and a chain to the same file.
        symlink("album/real.jpg", root.join("favourite.jpg")).expect("symlink");
        symlink("favourite.jpg", root.join("favourite2.jpg")).expect("symlink");
        // A looping file link and a dangling one.
        symlink("self.jpg", root.join("self.jpg")).expect("symlink");
        symlink("nothing-here.jpg", root.join("dangling.jpg")).expect("symlink");
        symlink("nothing-here", root.join("dangling-not-an-image")).expect("symlink");

        let items: Vec<_> = Walker::new(options(&root)).expect("walker").collect();
        let ok: Vec<_> = items.iter().filter_map(|i| i.as_ref().ok()).collect();
        let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        // The real file once, at its own path; nothing from outside.
        assert_eq!(ok.len(), 1, "{items:?}");
        assert_eq!(
            ok[0].path,
            fs::canonicalize(root.join("album/real.jpg")).expect("canonical")
        );
        // The looping and the dangling link (named like images) are errors.
        let mut error_paths: Vec<_> = errors.iter().filter_map(|e| e.path()).collect();
        error_paths.sort();
        assert_eq!(
            error_paths,
            [
                root.join("dangling.jpg").as_path(),
                root.join("self.jpg").as_path()
            ],
            "{errors:?}"
        );
        assert!(errors.iter().all(|e| e.is_user_error()));

        // The first path in walk order wins: the link here comes before the
        // folder, and it is reported at the target path anyway.
        let root2 = dir.path().join("root2");
        touch(&root2, "z/photo.png");
        symlink("z/photo.png", root2.join("a-link.png")).expect("symlink");
        let found = walk_ok(options(&root2));
        assert_eq!(found, ["z/photo.png"]);
    }

    #[cfg(unix)]
    #[test]
    fn unreadable_folders_are_error_items_and_the_walk_goes_on() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        touch(root, "a.jpg");
        touch(root, "locked/inside.jpg");
        touch(root, "z.jpg");
        let locked = root.join("locked");
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).expect("chmod");
        // Root (and some sandboxes) can read anything: then the folder is
        // simply walked, and that is what we check instead.
        let permissions_bite = fs::read_dir(&locked).is_err();

        let items: Vec<_> = Walker::new(options(root)).expect("walker").collect();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).expect("chmod back");

        let ok: Vec<_> = items
            .iter()
            .filter_map(|i| i.as_ref().ok())
            .map(|e| e.relative().to_string_lossy().into_owned())
            .collect();
        let errors: Vec<_> = items.iter().filter_map(|i| i.as_ref().err()).collect();
        if permissions_bite {
            assert_eq!(ok, ["a.jpg", "z.jpg"], "{items:?}");
            assert_eq!(errors.len(), 1, "{items:?}");
            let e = errors[0];
            assert!(matches!(e, IndexError::Io { .. }), "{e:?}");
            assert_eq!(e.path(), Some(locked.as_path()));
            assert!(e.to_string().contains("ermission denied"), "{e}");
        } else {
            eprintln!(
                "running with permissions that ignore chmod 000 (root?): checked walking only"
            );
            assert_eq!(ok, ["a.jpg", "locked/inside.jpg", "z.jpg"], "{items:?}");
            assert!(errors.is_empty(), "{errors:?}");
        }
    }
}
