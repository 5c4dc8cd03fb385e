//! `glimpse classify`: zero-shot classification with prompt ensembling.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use glimpse_clip::Clip;
use glimpse_config::ModelSpec;

use super::{image_pixels, load_model};
use crate::exit::InputError;

/// The template used when none is given (CLIP paper's default prompt).
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// Splits `--labels` values on commas, trimming blanks; refuses an empty set
/// and duplicates.
pub fn parse_labels(values: &[String]) -> Result<Vec<String>, InputError> {
    let mut labels = Vec::new();
    for v in values {
        for l in v.split(',').map(str::trim).filter(|l| !l.is_empty()) {
            if labels.iter().any(|x: &String| x == l) {
                return Err(InputError(format!("label '{l}' is given twice")));
            }
            labels.push(l.to_string());
        }
    }
    if labels.is_empty() {
        return Err(InputError(
            "--labels has no labels: give them comma-separated, e.g. --labels cat,dog".into(),
        ));
    }
    Ok(labels)
}

/// One normalised class embedding per label: the mean of the normalised
/// embeddings of every template filled with the label, renormalised.
pub fn class_embeddings(
    clip: &Clip,
    labels: &[String],
    templates: &[String],
) -> anyhow::Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(labels.len());
    for label in labels {
        let prompts: Vec<String> = templates.iter().map(|t| t.replace("{}", label)).collect();
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let embs = clip.embed_texts(&refs, false)?;
        let mut mean = vec![0f32; clip.embedding_dim()];
        for e in &embs {
            for (m, x) in mean.iter_mut().zip(e) {
                *m += x;
            }
        }
        let norm = mean
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        out.push(mean.into_iter().map(|x| x / norm).collect());
    }
    Ok(out)
}

/// Softmax of `scale * cosine` over classes.
pub fn probabilities(image: &[f32], classes: &[Vec<f32>], scale: f32) -> Vec<f32> {
    let logits: Vec<f32> = classes
        .iter()
        .map(|c| scale * c.iter().zip(image).map(|(a, b)| a * b).sum::<f32>())
        .collect();
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Classifies each image and prints the top classes.
#[allow(clippy::too_many_arguments)]
pub fn run(
    spec: &ModelSpec,
    opts: &crate::ImageOptions,
    labels: &[String],
    templates: &[String],
    top: usize,
    json: bool,
    images: &[PathBuf],
) -> anyhow::Result<()> {
    let labels = parse_labels(labels)?;
    let templates: Vec<String> = if templates.is_empty() {
        vec![DEFAULT_TEMPLATE.to_string()]
    } else {
        templates.to_vec()
    };
    if let Some(t) = templates.iter().find(|t| !t.contains("{}")) {
        return Err(InputError(format!("template '{t}' has no {{}} where the label goes")).into());
    }
    let (clip, pre) = load_model(spec, opts)?;
    let classes = class_embeddings(&clip, &labels, &templates)?;
    let scale = clip
        .model()
        .logit_scale()
        .to_scalar::<f32>()
        .context("reading the model's logit scale")?
        .exp()
        .min(100.0);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for path in images {
        let pixels =
            image_pixels(path, &pre).with_context(|| format!("image {}", path.display()))?;
        let emb = clip.embed_pixels(&[pixels], false)?;
        let probs = probabilities(&emb[0], &classes, scale);
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(top.max(1));
        if json {
            let top: Vec<_> = ranked
                .iter()
                .map(|(i, p)| serde_json::json!({"label": labels[*i], "probability": p}))
                .collect();
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({"image": path.display().to_string(), "top": top}),
            )?;
            writeln!(out)?;
        } else {
            writeln!(out, "{}", path.display())?;
            for (i, p) in ranked {
                writeln!(out, "  {:6.2}%  {}", p * 100.0, labels[i])?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_split_trim_and_reject_bad_sets() {
        let l = parse_labels(&["cat, dog".into(), "bird".into()]).unwrap();
        assert_eq!(l, ["cat", "dog", "bird"]);
        assert!(parse_labels(&[" , ".into()]).is_err());
        assert!(parse_labels(&["cat,cat".into()])
            .unwrap_err()
            .0
            .contains("twice"));
    }

    #[test]
    fn probabilities_sum_to_one_and_rank_by_similarity() {
        let classes = vec![vec![1.0, 0.0], vec![0.0, 1.0]];
        let p = probabilities(&[0.8, 0.6], &classes, 100.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[0] > p[1]);
    }
}
