//! One module per subcommand.

pub mod classify;
pub mod embed;
pub mod library;
pub mod serve;
pub mod tokenize;
pub mod train;

use std::path::Path;

use anyhow::Context;
use glimpse_clip::Clip;
use glimpse_config::ModelSpec;

use crate::ImageOptions;

/// Loads the model a command names; returns it with its preprocessing
/// recipe, the user's image options applied.
pub fn load_model(
    spec: &ModelSpec,
    opts: &ImageOptions,
) -> anyhow::Result<(Clip, glimpse_config::PreprocessConfig)> {
    let mut clip = Clip::load(spec).with_context(|| format!("loading model '{}'", spec.name))?;
    clip.set_query_precision(opts.precision)
        .context("preparing the reduced-precision text weights")?;
    clip.set_image_precision(opts.precision)
        .context("preparing the reduced-precision image weights")?;
    let mut pre = clip.preprocess().clone();
    pre.alpha = opts.alpha;
    pre.max_pixels = opts.max_pixels;
    Ok((clip, pre))
}

/// Decodes and preprocesses one image file for the model.
pub fn image_pixels(
    path: &Path,
    pre: &glimpse_config::PreprocessConfig,
) -> anyhow::Result<Vec<f32>> {
    let img = glimpse_decoder::decode_path(path, pre)?;
    Ok(glimpse_decoder::to_pixels(&img.rgb, pre))
}

/// Prints a line on stdout; when the reader has gone (`glimpse search … |
/// head`), exits quietly instead of panicking on the broken pipe.
pub fn print_line(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}
