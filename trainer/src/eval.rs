//! Held-out evaluation: text→image and image→text recall@k, and zero-shot
//! classification with prompt ensembling.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use glimpse_clip::Clip;
use glimpse_config::PreprocessConfig;
use serde::{Deserialize, Serialize};

use crate::data::{Pair, SkipReason, SkipReport};
use crate::error::TrainError;
use crate::images::ImageSet;

/// The prompts a class name is put into; their normalised embeddings are
/// averaged into the class's embedding (CLIP's prompt ensembling).
pub const PROMPTS: [&str; 4] = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an illustration of a {}.",
    "a {}.",
];

/// Images embedded per model call during evaluation.
const EVAL_BATCH: usize = 64;

/// Recall at 1, 5 and 10, as fractions in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// Share of queries whose match ranks first.
    #[serde(rename = "r@1")]
    pub r1: f64,
    /// Share whose match is in the top 5.
    #[serde(rename = "r@5")]
    pub r5: f64,
    /// Share whose match is in the top 10.
    #[serde(rename = "r@10")]
    pub r10: f64,
}

/// Zero-shot classification accuracy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ZeroShot {
    /// Number of classes the images are classified among.
    pub classes: usize,
    /// Number of images.
    pub n: usize,
    /// Share classified correctly.
    pub top1: f64,
    /// Share whose class is among the five best.
    pub top5: f64,
}

/// What `glimpse eval --json` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Held-out images.
    pub n: usize,
    /// Each distinct caption finds (one of) its image(s).
    pub text_to_image: Recall,
    /// Each image finds its caption among the distinct captions.
    pub image_to_text: Recall,
    /// Zero-shot accuracy, when a class set was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zero_shot: Option<ZeroShot>,
}

/// Held-out pairs, decoded at the model's input size.
#[derive(Clone, Debug)]
pub struct RetrievalSet {
    images: ImageSet,
    captions: Vec<String>,
}

impl RetrievalSet {
    /// Decodes the pairs' images (as the indexer would: shortest side to
    /// the input size, centre crop); undecodable ones are skipped and counted.
    pub fn load(
        pairs: &[Pair],
        preprocess: &PreprocessConfig,
    ) -> Result<(Self, SkipReport), TrainError> {
        let (images, kept, skipped) =
            ImageSet::load(pairs, preprocess.image_size, preprocess, &|_| {})?;
        let captions = kept.iter().map(|&i| pairs[i].text.clone()).collect();
        Ok((Self { images, captions }, skipped))
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.captions.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }
}

/// Images with class labels, for zero-shot accuracy.
#[derive(Clone, Debug)]
pub struct ClassSet {
    images: ImageSet,
    labels: Vec<usize>,
    classes: Vec<String>,
}

/// One row of a class file.
#[derive(Deserialize)]
struct ClassRow {
    image: String,
    label: String,
    #[serde(default)]
    split: Option<String>,
    #[serde(default)]
    split_in_pairs: Option<String>,
}

impl ClassSet {
    /// Reads a JSONL class file (`{"image": path, "label": name}`, paths
    /// relative to the file or to `images_root`). The classes are every
    /// label in the file; images marked as training images (`split` or
    /// `split_in_pairs` is `train`) are left out, as they may have been
    /// trained on. Bad rows and undecodable images are skipped and counted.
    pub fn read(
        path: &Path,
        images_root: Option<&Path>,
        preprocess: &PreprocessConfig,
    ) -> Result<(Self, SkipReport), TrainError> {
        let text = std::fs::read_to_string(path).map_err(TrainError::io(path))?;
        let base: PathBuf = match images_root {
            Some(r) => r.to_path_buf(),
            None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let mut skipped = SkipReport::default();
        let mut classes = BTreeSet::new();
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<ClassRow>(line) {
                Ok(row) => {
                    classes.insert(row.label.clone());
                    let seen = [&row.split, &row.split_in_pairs]
                        .iter()
                        .any(|s| s.as_deref() == Some("train"));
                    let image = base.join(&row.image);
                    if seen {
                        continue;
                    }
                    if !image.is_file() {
                        skipped.add(
                            SkipReason::MissingImage,
                            format!(
                                "{}:{}: {} not found",
                                path.display(),
                                i + 1,
                                image.display()
                            ),
                        );
                        continue;
                    }
                    rows.push((image, row.label));
                }
                Err(e) => skipped.add(
                    SkipReason::Malformed,
                    format!(
                        "{}:{}: {e} (expected {{\"image\": ..., \"label\": ...}})",
                        path.display(),
                        i + 1
                    ),
                ),
            }
        }
        let classes: Vec<String> = classes.into_iter().collect();
        if classes.len() < 2 || rows.is_empty() {
            return Err(TrainError::BadDataFile {
                path: path.to_path_buf(),
                reason: format!(
                    "a class set needs at least 2 labels and 1 usable image (found {} labels, {} images)",
                    classes.len(),
                    rows.len()
                ),
            });
        }
        let index: HashMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let pairs: Vec<Pair> = rows
            .iter()
            .map(|(image, label)| Pair {
                image: image.clone(),
                text: label.clone(),
            })
            .collect();
        let (images, kept, undecodable) =
            ImageSet::load(&pairs, preprocess.image_size, preprocess, &|_| {})?;
        skipped.merge(&undecodable);
        let labels = kept.iter().map(|&i| index[rows[i].1.as_str()]).collect();
        Ok((
            Self {
                images,
                labels,
                classes,
            },
            skipped,
        ))
    }
}

/// Embeds every image of `set` with `clip`, `EVAL_BATCH` at a time.
fn embed_images(clip: &Clip, set: &ImageSet) -> Result<Vec<Vec<f32>>, TrainError> {
    let s = clip.preprocess().image_size;
    let mut out = Vec::with_capacity(set.len());
    let ids: Vec<usize> = (0..set.len()).collect();
    for chunk in ids.chunks(EVAL_BATCH) {
        let batch: Vec<Vec<f32>> = chunk
            .iter()
            .map(|&i| {
                let mut px = vec![0f32; 3 * s * s];
                set.pixels(i, clip.preprocess(), &mut px);
                px
            })
            .collect();
        out.extend(clip.embed_pixels(&batch, false)?);
    }
    Ok(out)
}

fn embed_texts(clip: &Clip, texts: &[String]) -> Result<Vec<Vec<f32>>, TrainError> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(256) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        out.extend(clip.embed_texts(&refs, false)?);
    }
    Ok(out)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Evaluates `clip` on held-out pairs and, if given, a class set.
pub fn evaluate(
    clip: &Clip,
    set: &RetrievalSet,
    classes: Option<&ClassSet>,
) -> Result<EvalReport, TrainError> {
    if set.is_empty() {
        return Err(TrainError::NotEnoughData(
            "no held-out pairs to evaluate on".into(),
        ));
    }
    if set.images.side() != clip.preprocess().image_size {
        return Err(TrainError::BadOption(format!(
            "the evaluation images were prepared at {} px but the model takes {} px",
            set.images.side(),
            clip.preprocess().image_size
        )));
    }
    let images = embed_images(clip, &set.images)?;
    let unique: Vec<String> = set
        .captions
        .iter()
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: HashMap<&str, usize> = unique
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let texts = embed_texts(clip, &unique)?;
    let truth: Vec<usize> = set.captions.iter().map(|c| index[c.as_str()]).collect();
    let ks = [1usize, 5, 10];
    let mut i2t = [0usize; 3];
    for (img, &gt) in images.iter().zip(&truth) {
        let scores: Vec<f32> = texts.iter().map(|t| dot(img, t)).collect();
        let rank = scores.iter().filter(|&&s| s > scores[gt]).count();
        for (hits, k) in i2t.iter_mut().zip(ks) {
            *hits += usize::from(rank < k);
        }
    }
    let mut t2i = [0usize; 3];
    for (t, text) in texts.iter().enumerate() {
        let scores: Vec<f32> = images.iter().map(|img| dot(img, text)).collect();
        let best = scores
            .iter()
            .zip(&truth)
            .filter(|(_, &g)| g == t)
            .map(|(s, _)| *s)
            .fold(f32::NEG_INFINITY, f32::max);
        let rank = scores
            .iter()
            .zip(&truth)
            .filter(|(s, &g)| g != t && **s > best)
            .count();
        for (hits, k) in t2i.iter_mut().zip(ks) {
            *hits += usize::from(rank < k);
        }
    }
    let recall = |hits: [usize; 3], n: usize| Recall {
        r1: hits[0] as f64 / n as f64,
        r5: hits[1] as f64 / n as f64,
        r10: hits[2] as f64 / n as f64,
    };
    let zero_shot = classes.map(|c| zero_shot(clip, c)).transpose()?;
    Ok(EvalReport {
        n: images.len(),
        text_to_image: recall(t2i, texts.len()),
        image_to_text: recall(i2t, images.len()),
        zero_shot,
    })
}

/// Zero-shot top-1/top-5 accuracy with the [`PROMPTS`] ensemble: each
/// class's embedding is the renormalised mean of its prompts' normalised
/// embeddings (open_clip's `build_zero_shot_classifier`).
pub fn zero_shot(clip: &Clip, set: &ClassSet) -> Result<ZeroShot, TrainError> {
    let mut class_embeddings = Vec::with_capacity(set.classes.len());
    for class in &set.classes {
        let prompts: Vec<String> = PROMPTS.iter().map(|p| p.replace("{}", class)).collect();
        let e = embed_texts(clip, &prompts)?;
        let mut mean = vec![0f32; e[0].len()];
        for row in &e {
            mean.iter_mut()
                .zip(row)
                .for_each(|(m, v)| *m += v / e.len() as f32);
        }
        let norm = dot(&mean, &mean).sqrt().max(1e-12);
        mean.iter_mut().for_each(|m| *m /= norm);
        class_embeddings.push(mean);
    }
    let images = embed_images(clip, &set.images)?;
    let (mut top1, mut top5) = (0usize, 0usize);
    for (img, &label) in images.iter().zip(&set.labels) {
        let scores: Vec<f32> = class_embeddings.iter().map(|c| dot(img, c)).collect();
        let rank = scores.iter().filter(|&&s| s > scores[label]).count();
        top1 += usize::from(rank < 1);
        top5 += usize::from(rank < 5);
    }
    let n = images.len().max(1);
    Ok(ZeroShot {
        classes: set.classes.len(),
        n: images.len(),
        top1: top1 as f64 / n as f64,
        top5: top5 as f64 / n as f64,
    })
}
