//! Reading (image, caption) pairs from JSONL, CSV/TSV files and folders
//! with caption sidecars, and splitting them into training and held-out
//! pairs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::TrainError;

/// One usable (image, caption) pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The image file (resolved: relative paths joined to the data file's
    /// folder or `--images-root`).
    pub image: PathBuf,
    /// The caption.
    pub text: String,
}

/// How pair files are read.
#[derive(Clone, Debug)]
pub struct DataOptions {
    /// Folder relative image paths are joined to; by default the folder of
    /// the data file that names them.
    pub images_root: Option<PathBuf>,
    /// Key or column of the image path; default `image` (JSONL) and
    /// `filepath` (CSV/TSV, open_clip's default).
    pub image_key: Option<String>,
    /// Key or column of the caption; default `text` (JSONL) and `title`
    /// (CSV/TSV).
    pub text_key: Option<String>,
    /// Fail on the first bad row instead of counting and skipping it.
    pub strict: bool,
    /// Share of pairs held out for validation when no row has a `split`.
    pub validation_fraction: f64,
}

impl Default for DataOptions {
    fn default() -> Self {
        Self {
            images_root: None,
            image_key: None,
            text_key: None,
            strict: false,
            validation_fraction: 0.1,
        }
    }
}

/// Why a row was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SkipReason {
    /// Not valid JSON / CSV, or the image or caption key is missing.
    Malformed,
    /// The caption is empty or only whitespace.
    EmptyCaption,
    /// The image file does not exist.
    MissingImage,
    /// The image exists but could not be decoded.
    Undecodable,
}

impl SkipReason {
    /// A short description for reports.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Malformed => "malformed row or missing key",
            Self::EmptyCaption => "empty caption",
            Self::MissingImage => "image file not found",
            Self::Undecodable => "image could not be decoded",
        }
    }
}

/// Rows that were skipped, by reason, with the first few examples of each.
#[derive(Clone, Debug, Default)]
pub struct SkipReport {
    counts: BTreeMap<SkipReason, usize>,
    examples: BTreeMap<SkipReason, Vec<String>>,
}

/// Examples kept per reason.
const EXAMPLES: usize = 3;

impl SkipReport {
    /// Counts one skipped row, keeping `example` if it is among the first.
    pub fn add(&mut self, reason: SkipReason, example: String) {
        *self.counts.entry(reason).or_default() += 1;
        let list = self.examples.entry(reason).or_default();
        if list.len() < EXAMPLES {
            list.push(example);
        }
    }

    /// Rows skipped for `reason`.
    pub fn count(&self, reason: SkipReason) -> usize {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    /// Rows skipped in all.
    pub fn total(&self) -> usize {
        self.counts.values().sum()
    }

    /// Adds another report's counts and examples.
    pub fn merge(&mut self, other: &SkipReport) {
        for (reason, examples) in &other.examples {
            for e in examples {
                self.add(*reason, e.clone());
            }
            let extra = other.count(*reason) - examples.len();
            *self.counts.entry(*reason).or_default() += extra;
        }
    }

    /// One line per reason: `3 image file not found (e.g. a.jpg: ...)`.
    pub fn lines(&self) -> Vec<String> {
        self.counts
            .iter()
            .map(|(reason, n)| {
                let examples = self.examples.get(reason).cloned().unwrap_or_default();
                format!("{n} {} (e.g. {})", reason.describe(), examples.join("; "))
            })
            .collect()
    }
}

/// Pairs read from one or more sources, split into training and held-out
/// (validation) pairs.
#[derive(Clone, Debug, Default)]
pub struct PairSet {
    /// Pairs to train on.
    pub train: Vec<Pair>,
    /// Pairs never trained on: rows whose `split` is `test`/`val`/
    /// `validation`, or a deterministic share when no row has a split.
    pub held_out: Vec<Pair>,
    /// What was skipped and why.
    pub skipped: SkipReport,
    /// Whether the split came from the data (`split` keys) rather than
    /// from hashing.
    pub split_from_data: bool,
}

impl PairSet {
    /// A digest of every pair and its side of the split, so that a resumed
    /// run can check it sees the same data.
    pub fn fingerprint(&self) -> String {
        let mut h = blake3::Hasher::new();
        for (side, pairs) in [("train", &self.train), ("held_out", &self.held_out)] {
            h.update(side.as_bytes());
            for p in pairs {
                h.update(p.image.to_string_lossy().as_bytes());
                h.update(&[0]);
                h.update(p.text.as_bytes());
                h.update(&[0]);
            }
        }
        h.finalize().to_hex()[..16].to_string()
    }
}

/// One row as read, before the split.
struct Row {
    pair: Pair,
    /// The `split` value, lower-cased, if the row has one.
    split: Option<String>,
    /// The image path as written, which the hash split uses (stable
    /// across machines, unlike the resolved path).
    key: String,
}

/// Image extensions a folder source considers.
const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "gif", "tif", "tiff", "bmp"];

/// Reads every source — a `.jsonl` file, a `.csv`/`.tsv` file, or a folder
/// of images with `.txt` caption sidecars — and splits the pairs.
///
/// Image files are checked to exist here; whether they decode is checked
/// when they are loaded ([`crate::ImageSet`]).
pub fn read_pairs(sources: &[PathBuf], opts: &DataOptions) -> Result<PairSet, TrainError> {
    if !(0.0..1.0).contains(&opts.validation_fraction) {
        return Err(TrainError::BadOption(format!(
            "the validation fraction must be in [0, 1), got {}",
            opts.validation_fraction
        )));
    }
    if sources.is_empty() {
        return Err(TrainError::BadOption(
            "no data given: pass --data FILE (JSONL, CSV, TSV) or --data FOLDER".into(),
        ));
    }
    let mut rows = Vec::new();
    let mut skipped = SkipReport::default();
    for source in sources {
        let meta = std::fs::metadata(source).map_err(TrainError::io(source))?;
        if meta.is_dir() {
            read_folder(source, opts, &mut rows, &mut skipped)?;
        } else {
            let ext = source
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase);
            match ext.as_deref() {
                Some("jsonl") | Some("json") | Some("ndjson") => {
                    read_jsonl(source, opts, &mut rows, &mut skipped)?
                }
                Some("csv") => read_csv(source, b',', opts, &mut rows, &mut skipped)?,
                Some("tsv") | Some("tab") => read_csv(source, b'\t', opts, &mut rows, &mut skipped)?,
                _ => {
                    return Err(TrainError::BadDataFile {
                        path: source.clone(),
                        reason: "unknown data format: use a .jsonl, .csv or .tsv file, or a folder of images with .txt captions".into(),
                    })
                }
            }
        }
    }
    let split_from_data = rows.iter().any(|r| r.split.is_some());
    let mut set = PairSet {
        skipped,
        split_from_data,
        ..PairSet::default()
    };
    for row in rows {
        let held_out = if split_from_data {
            matches!(
                row.split.as_deref(),
                Some("test") | Some("val") | Some("valid") | Some("validation")
            )
        } else {
            hash_fraction(&row.key) < opts.validation_fraction
        };
        if held_out {
            set.held_out.push(row.pair);
        } else {
            set.train.push(row.pair);
        }
    }
    Ok(set)
}

/// A number in [0, 1) fixed by `key`: the deterministic split.
fn hash_fraction(key: &str) -> f64 {
    let h = blake3::hash(key.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Checks one row and adds it, or counts why not (or fails under `strict`).
#[allow(clippy::too_many_arguments)]
fn accept(
    source: &Path,
    line: usize,
    image: Option<&str>,
    text: Option<&str>,
    split: Option<&str>,
    opts: &DataOptions,
    rows: &mut Vec<Row>,
    skipped: &mut SkipReport,
) -> Result<(), TrainError> {
    let outcome = match (image, text) {
        (None, _) | (_, None) => Err((SkipReason::Malformed, "no image or caption".to_string())),
        (Some(image), _) if image.trim().is_empty() => {
            Err((SkipReason::Malformed, "empty image path".to_string()))
        }
        (Some(_), Some(text)) if text.trim().is_empty() => {
            Err((SkipReason::EmptyCaption, "empty caption".to_string()))
        }
        (Some(image), Some(text)) => {
            let base = match &opts.images_root {
                Some(root) => root.clone(),
                None => source.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            let path = base.join(image);
            if path.is_file() {
                Ok(Row {
                    pair: Pair {
                        image: path,
                        text: text.trim().to_string(),
                    },
                    split: split.map(|s| s.trim().to_ascii_lowercase()),
                    key: image.to_string(),
                })
            } else {
                Err((
                    SkipReason::MissingImage,
                    format!("{} not found", path.display()),
                ))
            }
        }
    };
    match outcome {
        Ok(row) => rows.push(row),
        Err((_, reason)) if opts.strict => {
            return Err(TrainError::BadRow {
                path: source.to_path_buf(),
                line,
                reason,
            })
        }
        Err((why, reason)) => skipped.add(why, format!("{}:{line}: {reason}", source.display())),
    }
    Ok(())
}

fn read_jsonl(
    path: &Path,
    opts: &DataOptions,
    rows: &mut Vec<Row>,
    skipped: &mut SkipReport,
) -> Result<(), TrainError> {
    let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
    let image_key = opts.image_key.as_deref().unwrap_or("image");
    let text_key = opts.text_key.as_deref().unwrap_or("text");
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) if opts.strict => {
                return Err(TrainError::BadRow {
                    path: path.to_path_buf(),
                    line: i + 1,
                    reason: format!("not JSON: {e}"),
                })
            }
            Err(e) => {
                skipped.add(
                    SkipReason::Malformed,
                    format!("{}:{}: not JSON: {e}", path.display(), i + 1),
                );
                continue;
            }
        };
        let get = |k: &str| value.get(k).and_then(|v| v.as_str());
        accept(
            path,
            i + 1,
            get(image_key),
            get(text_key),
            get("split"),
            opts,
            rows,
            skipped,
        )?;
    }
    Ok(())
}

fn read_csv(
    path: &Path,
    delimiter: u8,
    opts: &DataOptions,
    rows: &mut Vec<Row>,
    skipped: &mut SkipReport,
) -> Result<(), TrainError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .flexible(true)
        .from_path(path)
        .map_err(|e| TrainError::BadDataFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let headers = reader
        .headers()
        .map_err(|e| TrainError::BadDataFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?
        .clone();
    let column = |name: &str, option: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| TrainError::BadDataFile {
                path: path.to_path_buf(),
                reason: format!(
                    "no column '{name}' (the columns are: {}); name the right one with {option}",
                    headers.iter().collect::<Vec<_>>().join(", ")
                ),
            })
    };
    let image_col = column(
        opts.image_key.as_deref().unwrap_or("filepath"),
        "--image-key",
    )?;
    let text_col = column(opts.text_key.as_deref().unwrap_or("title"), "--text-key")?;
    let split_col = headers.iter().position(|h| h.trim() == "split");
    for (i, record) in reader.records().enumerate() {
        // Line numbers count the header as line 1.
        let line = i + 2;
        match record {
            Ok(r) => accept(
                path,
                line,
                r.get(image_col),
                r.get(text_col),
                split_col.and_then(|c| r.get(c)),
                opts,
                rows,
                skipped,
            )?,
            Err(e) if opts.strict => {
                return Err(TrainError::BadRow {
                    path: path.to_path_buf(),
                    line,
                    reason: e.to_string(),
                })
            }
            Err(e) => skipped.add(
                SkipReason::Malformed,
                format!("{}:{line}: {e}", path.display()),
            ),
        }
    }
    Ok(())
}

/// A folder: every image with a sidecar caption `NAME.txt` (or
/// `NAME.EXT.txt`) beside it; images without one are counted as skipped.
fn read_folder(
    dir: &Path,
    opts: &DataOptions,
    rows: &mut Vec<Row>,
    skipped: &mut SkipReport,
) -> Result<(), TrainError> {
    let mut images = Vec::new();
    for entry in walkdir::WalkDir::new(dir)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| TrainError::Io {
            path: e.path().unwrap_or(dir).to_path_buf(),
            source: e.into(),
        })?;
        let is_image = entry.file_type().is_file()
            && entry
                .path()
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if is_image {
            images.push(entry.into_path());
        }
    }
    for (i, image) in images.iter().enumerate() {
        let sidecars = [
            image.with_extension("txt"),
            PathBuf::from(format!("{}.txt", image.display())),
        ];
        let caption = sidecars.iter().find(|p| p.is_file());
        let rel = image.strip_prefix(dir).unwrap_or(image);
        let key = rel.to_string_lossy().to_string();
        let text = match caption {
            Some(p) => Some(std::fs::read_to_string(p).map_err(TrainError::io(p))?),
            None => None,
        };
        let Some(text) = text else {
            let reason = format!("{} has no .txt caption beside it", image.display());
            if opts.strict {
                return Err(TrainError::BadRow {
                    path: image.clone(),
                    line: i + 1,
                    reason,
                });
            }
            skipped.add(SkipReason::Malformed, reason);
            continue;
        };
        // Paths here are already resolved; images_root does not apply.
        let opts = DataOptions {
            images_root: Some(dir.to_path_buf()),
            ..opts.clone()
        };
        accept(
            &dir.join("."),
            i + 1,
            Some(&key),
            Some(&text),
            None,
            &opts,
            rows,
            skipped,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn jsonl_rows_split_by_key_and_bad_rows_counted() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "img/a.png");
        touch(dir.path(), "img/b.png");
        touch(dir.path(), "img/c.png");
        let data = dir.path().join("pairs.jsonl");
        std::fs::write(
            &data,
            concat!(
                "{\"image\": \"img/a.png\", \"text\": \"a cat\", \"split\": \"train\", \"extra\": 1}\n",
                "{\"image\": \"img/b.png\", \"text\": \"a dog\", \"split\": \"test\"}\n",
                "{\"image\": \"img/c.png\", \"text\": \"  \"}\n",
                "{\"image\": \"img/missing.png\", \"text\": \"gone\"}\n",
                "not json\n",
                "\n",
                "{\"image\": \"img/c.png\", \"caption\": \"wrong key\"}\n",
            ),
        )
        .unwrap();
        let set = read_pairs(std::slice::from_ref(&data), &DataOptions::default()).unwrap();
        assert!(set.split_from_data);
        assert_eq!(set.train.len(), 1);
        assert_eq!(set.train[0].text, "a cat");
        assert_eq!(set.train[0].image, dir.path().join("img/a.png"));
        assert_eq!(set.held_out.len(), 1);
        assert_eq!(set.skipped.count(SkipReason::EmptyCaption), 1);
        assert_eq!(set.skipped.count(SkipReason::MissingImage), 1);
        assert_eq!(set.skipped.count(SkipReason::Malformed), 2);
        assert_eq!(set.skipped.total(), 4);
        assert!(set
            .skipped
            .lines()
            .iter()
            .any(|l| l.contains("missing.png")));

        let strict = DataOptions {
            strict: true,
            ..DataOptions::default()
        };
        match read_pairs(&[data], &strict) {
            Err(TrainError::BadRow { line, reason, .. }) => {
                assert_eq!(line, 3);
                assert!(reason.contains("empty caption"), "{reason}");
            }
            other => panic!("expected a bad row, got {other:?}"),
        }
    }

    #[test]
    fn csv_and_tsv_with_default_and_named_columns() {
        let dir = tempfile::tempdir().unwrap();
        touch(dir.path(), "a.jpg");
        touch(dir.path(), "b.jpg");
        let csv = dir.path().join("pairs.csv");
        std::fs::write(
            &csv,
            "filepath,title\na.jpg,\"a cat, sleeping\"\nb.jpg,a dog\n",
        )
        .unwrap();
        let set = read_pairs(std::slice::from_ref(&csv), &DataOptions::default()).unwrap();
        assert!(!set.split_from_data);
        let mut texts: Vec<_> = set
            .train
            .iter()
            .chain(&set.held_out)
            .map(|p| p.text.clone())
            .collect();
        texts.sort();
        assert_eq!(texts, ["a cat, sleeping", "a dog"]);

        let tsv = dir.path().join("pairs.tsv");
        std::fs::write(
            &tsv,
            "path\tcaption\tsplit\na.jpg\tred\ttrain\nb.jpg\tblue\tval\n",
        )
        .unwrap();
        let err = read_pairs(std::slice::from_ref(&tsv), &DataOptions::default()).unwrap_err();
        assert!(err.to_string().contains("no column 'filepath'"), "{err}");
        assert!(err.to_string().contains("path, caption, split"), "{err}");
        let named = DataOptions {
            image_key: Some("path".into()),
            text_key: Some("caption".into()),
            ..DataOptions::default()
        };
        let set = read_pairs(&[tsv], &named).unwrap();
        assert_eq!(set.train[0].text, "red");
        assert_eq!(set.held_out[0].text, "blue");
    }

    #[test]
    fn folders_use_sidecars_and_the_hash_split_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..200 {
            touch(dir.path(), &format!("p/{i:03}.png"));
            std::fs::write(
                dir.path().join(format!("p/{i:03}.txt")),
                format!("photo {i}\n"),
            )
            .unwrap();
        }
        touch(dir.path(), "p/uncaptioned.jpg");
        let opts = DataOptions {
            validation_fraction: 0.2,
            ..DataOptions::default()
        };
        let a = read_pairs(&[dir.path().to_path_buf()], &opts).unwrap();
        let b = read_pairs(&[dir.path().to_path_buf()], &opts).unwrap();
        assert_eq!(a.train, b.train);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.train.len() + a.held_out.len(), 200);
        assert!(
            (20..=60).contains(&a.held_out.len()),
            "{}",
            a.held_out.len()
        );
        assert_eq!(a.skipped.count(SkipReason::Malformed), 1);
        assert!(a.train.iter().all(|p| p.text.starts_with("photo ")));
        // No pair is on both sides.
        assert!(a.held_out.iter().all(|p| !a.train.contains(p)));
    }

    #[test]
    fn unknown_formats_and_bad_fractions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = touch(dir.path(), "pairs.parquet");
        let err = read_pairs(&[f], &DataOptions::default()).unwrap_err();
        assert!(err.to_string().contains("unknown data format"), "{err}");
        let err =
            read_pairs(&[dir.path().join("nope.jsonl")], &DataOptions::default()).unwrap_err();
        assert!(err.is_user_error());
        let bad = DataOptions {
            validation_fraction: 1.5,
            ..DataOptions::default()
        };
        assert!(read_pairs(&[dir.path().to_path_buf()], &bad).is_err());
        assert!(read_pairs(&[], &DataOptions::default()).is_err());
    }
}
