//! `glimpse embed`: embeddings of texts and images as JSON lines.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::ArgMatches;
use glimpse_config::ModelSpec;

use super::{image_pixels, load_model};
use crate::exit::InputError;

/// One input of `glimpse embed`, in command-line order.
#[derive(Debug)]
pub enum Input {
    /// A text given with `--text`.
    Text(String),
    /// An image file given with `--image`.
    Image(PathBuf),
}

/// Interleaves `--text` and `--image` values in the order they were given.
pub fn input_order(
    m: &ArgMatches,
    texts: &[OsString],
    images: &[PathBuf],
) -> anyhow::Result<Vec<Input>> {
    let mut all: Vec<(usize, Input)> = Vec::new();
    let text_idx: Vec<usize> = m
        .indices_of("text")
        .map(|i| i.collect())
        .unwrap_or_default();
    for (pos, t) in text_idx.iter().zip(texts) {
        let s = t.to_str().ok_or_else(|| {
            InputError(format!(
                "--text {}: not valid UTF-8; pass text as UTF-8",
                t.to_string_lossy()
            ))
        })?;
        all.push((*pos, Input::Text(s.to_string())));
    }
    let image_idx: Vec<usize> = m
        .indices_of("image")
        .map(|i| i.collect())
        .unwrap_or_default();
    for (pos, p) in image_idx.iter().zip(images) {
        all.push((*pos, Input::Image(p.clone())));
    }
    if all.is_empty() {
        return Err(
            InputError("nothing to embed: give --text TEXT and/or --image PATH".into()).into(),
        );
    }
    all.sort_by_key(|(pos, _)| *pos);
    Ok(all.into_iter().map(|(_, i)| i).collect())
}

/// Embeds every input and prints one JSON line each.
pub fn run(
    spec: &ModelSpec,
    opts: &crate::ImageOptions,
    inputs: Vec<Input>,
    raw: bool,
) -> anyhow::Result<()> {
    // The model's recipe decides the pixels, so it loads first; then every
    // image is decoded before anything is printed.
    let (clip, pre) = load_model(spec, opts)?;
    let mut pixels = Vec::new();
    for input in &inputs {
        if let Input::Image(p) = input {
            pixels.push(image_pixels(p, &pre).with_context(|| format!("image {}", p.display()))?);
        }
    }
    let texts: Vec<&str> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Text(t) => Some(t.as_str()),
            Input::Image(_) => None,
        })
        .collect();
    let text_emb = clip.embed_texts(&texts, raw)?;
    let mut image_emb = Vec::with_capacity(pixels.len());
    for chunk in pixels.chunks(16) {
        image_emb.extend(clip.embed_pixels(chunk, raw)?);
    }
    let (mut ti, mut ii) = (text_emb.into_iter(), image_emb.into_iter());
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for input in &inputs {
        let line = match input {
            Input::Text(t) => {
                serde_json::json!({"kind": "text", "input": t, "embedding": ti.next()})
            }
            Input::Image(p) => {
                serde_json::json!({"kind": "image", "input": p.display().to_string(), "embedding": ii.next()})
            }
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
