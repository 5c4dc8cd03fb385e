//! Images of a training or evaluation set, decoded once and kept in memory
//! as small 8-bit squares, and the training augmentation.

use std::sync::atomic::{AtomicUsize, Ordering};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use glimpse_config::PreprocessConfig;
use glimpse_decoder::{center_crop, decode_path, resize_shortest_side};
use rand::Rng;

use crate::data::{Pair, SkipReason, SkipReport};
use crate::error::TrainError;

/// Decoded images, each stored as `side × side` RGB bytes (row-major,
/// interleaved): the shortest side resized to `side` with the reference's
/// bicubic filter, then centre-cropped. Transparent images are composited
/// onto white by the decoder (`PreprocessConfig::alpha`), the same at
/// training, evaluation and indexing time.
#[derive(Clone, Debug)]
pub struct ImageSet {
    side: usize,
    bytes: Vec<u8>,
}

/// The random-resized-crop augmentation: a crop covering `scale` of the
/// image's area with an aspect ratio in `ratio` (log-uniform), resized to
/// the model's input. torchvision's `RandomResizedCrop` algorithm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropAugment {
    /// Smallest and largest share of the area a crop covers.
    pub scale: (f64, f64),
    /// Smallest and largest width/height ratio.
    pub ratio: (f64, f64),
}

impl Default for CropAugment {
    /// open_clip's small-scale recipe: 90–100 % of the area, ratio 3/4–4/3.
    fn default() -> Self {
        Self {
            scale: (0.9, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }
}

/// One image's index and its bytes, or why it could not be decoded.
type Decoded = (usize, Result<Vec<u8>, String>);

impl ImageSet {
    /// Decodes the image of every pair (in parallel) into a `side`-pixel
    /// square. Returns the set, the indices of the pairs whose image
    /// decoded (in order), and the ones that did not, counted as
    /// [`SkipReason::Undecodable`]. `progress` is called with the number
    /// of images done so far.
    pub fn load(
        pairs: &[Pair],
        side: usize,
        preprocess: &PreprocessConfig,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<(Self, Vec<usize>, SkipReport), TrainError> {
        if side == 0 {
            return Err(TrainError::BadOption(
                "image side must be at least 1".into(),
            ));
        }
        let per = side * side * 3;
        let next = AtomicUsize::new(0);
        let done = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(pairs.len().max(1));
        let results: Vec<Vec<Decoded>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        let mut out = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= pairs.len() {
                                break;
                            }
                            out.push((i, square(&pairs[i], side, preprocess)));
                            progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                        }
                        out
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let mut ordered: Vec<Option<Result<Vec<u8>, String>>> = vec![None; pairs.len()];
        for (i, r) in results.into_iter().flatten() {
            ordered[i] = Some(r);
        }
        let mut bytes = Vec::with_capacity(per * pairs.len());
        let mut kept = Vec::with_capacity(pairs.len());
        let mut skipped = SkipReport::default();
        for (i, r) in ordered.into_iter().enumerate() {
            match r {
                Some(Ok(b)) => {
                    bytes.extend_from_slice(&b);
                    kept.push(i);
                }
                Some(Err(reason)) => skipped.add(SkipReason::Undecodable, reason),
                None => skipped.add(
                    SkipReason::Undecodable,
                    format!("{}: the decoding thread failed", pairs[i].image.display()),
                ),
            }
        }
        Ok((Self { side, bytes }, kept, skipped))
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.bytes.len() / (self.side * self.side * 3).max(1)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Side of the stored squares.
    pub fn side(&self) -> usize {
        self.side
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes.len()
    }

    fn raw(&self, i: usize) -> &[u8] {
        let per = self.side * self.side * 3;
        &self.bytes[i * per..(i + 1) * per]
    }

    /// Image `i` as the model's input (channel-first, normalised with the
    /// recipe's mean and std), unchanged: for an evaluation set loaded at
    /// the model's input size this equals what the indexer computes.
    pub fn pixels(&self, i: usize, preprocess: &PreprocessConfig, out: &mut [f32]) {
        normalise(self.raw(i), self.side, preprocess, out);
    }

    /// Image `i` randomly cropped per `augment` and resized (bicubic,
    /// antialiased) to `size`, as the model's input.
    pub fn augmented_pixels(
        &self,
        i: usize,
        size: usize,
        augment: &CropAugment,
        rng: &mut impl Rng,
        preprocess: &PreprocessConfig,
        out: &mut [f32],
    ) -> Result<(), TrainError> {
        let side = self.side as u32;
        let (left, top, w, h) = crop_box(side, side, augment, rng);
        let src = ImageRef::new(side, side, self.raw(i), PixelType::U8x3)
            .map_err(|e| internal("cropping an image", e))?;
        let mut dst = Image::new(size as u32, size as u32, PixelType::U8x3);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::CatmullRom))
            .crop(left as f64, top as f64, w as f64, h as f64);
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|e| internal("resizing a crop", e))?;
        normalise(dst.buffer(), size, preprocess, out);
        Ok(())
    }
}

fn internal(what: &'static str, e: impl std::fmt::Display) -> TrainError {
    TrainError::Internal {
        what,
        message: e.to_string(),
    }
}

/// Decodes one pair's image into a `side` square, or says why not.
fn square(pair: &Pair, side: usize, preprocess: &PreprocessConfig) -> Result<Vec<u8>, String> {
    let decoded = decode_path(&pair.image, preprocess).map_err(|e| e.to_string())?;
    let side32 = u32::try_from(side).map_err(|_| "image side too large".to_string())?;
    let resized = resize_shortest_side(&decoded.rgb, side32);
    Ok(center_crop(&resized, side32).into_raw())
}

/// Interleaved RGB bytes of a `side` square to normalised channel-first floats.
fn normalise(rgb: &[u8], side: usize, preprocess: &PreprocessConfig, out: &mut [f32]) {
    let plane = side * side;
    for c in 0..3 {
        let (mean, std) = (preprocess.mean[c], preprocess.std[c]);
        for (o, px) in out[c * plane..(c + 1) * plane]
            .iter_mut()
            .zip(rgb.chunks_exact(3))
        {
            *o = (f32::from(px[c]) / 255.0 - mean) / std;
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to ten tries at a box
/// of random area and aspect ratio that fits, else the largest centred box
/// whose ratio is within bounds. Returns `(left, top, width, height)`.
fn crop_box(width: u32, height: u32, a: &CropAugment, rng: &mut impl Rng) -> (u32, u32, u32, u32) {
    let area = f64::from(width) * f64::from(height);
    let (log_lo, log_hi) = (a.ratio.0.ln(), a.ratio.1.ln());
    for _ in 0..10 {
        let target = area * rng.random_range(a.scale.0..=a.scale.1);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let w = (target * ratio).sqrt().round();
        let h = (target / ratio).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= f64::from(width) && h <= f64::from(height) {
            let (w, h) = (w as u32, h as u32);
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return (left, top, w, h);
        }
    }
    let in_ratio = f64::from(width) / f64::from(height);
    let (w, h) = if in_ratio < a.ratio.0 {
        (width, (f64::from(width) / a.ratio.0).round() as u32)
    } else if in_ratio > a.ratio.1 {
        ((f64::from(height) * a.ratio.1).round() as u32, height)
    } else {
        (width, height)
    };
    ((width - w) / 2, (height - h) / 2, w, h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_decoder::to_pixels;
    use rand::SeedableRng;

    fn write_png(dir: &std::path::Path, name: &str, w: u32, h: u32, alpha: bool) -> Pair {
        let path = dir.join(name);
        if alpha {
            let img = image::RgbaImage::from_fn(w, h, |x, y| {
                image::Rgba([
                    (x * 7) as u8,
                    (y * 5) as u8,
                    40,
                    if x < w / 2 { 0 } else { 255 },
                ])
            });
            img.save(&path).unwrap();
        } else {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([(x * 3) as u8, (y * 2) as u8, 90])
            });
            img.save(&path).unwrap();
        }
        Pair {
            image: path,
            text: name.into(),
        }
    }

    #[test]
    fn evaluation_pixels_equal_the_indexers() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = vec![
            write_png(dir.path(), "wide.png", 90, 40, false),
            write_png(dir.path(), "alpha.png", 33, 70, true),
        ];
        let cfg = PreprocessConfig::openai(32);
        let (set, kept, skipped) = ImageSet::load(&pairs, 32, &cfg, &|_| {}).unwrap();
        assert_eq!(kept, [0, 1]);
        assert_eq!(skipped.total(), 0);
        for (i, pair) in pairs.iter().enumerate() {
            let decoded = decode_path(&pair.image, &cfg).unwrap();
            let expected = to_pixels(&decoded.rgb, &cfg);
            let mut got = vec![0f32; 3 * 32 * 32];
            set.pixels(i, &cfg, &mut got);
            assert_eq!(got, expected, "image {i}");
        }
        // Transparent pixels became white, not black.
        let mut px = vec![0f32; 3 * 32 * 32];
        set.pixels(1, &cfg, &mut px);
        let white = (1.0 - cfg.mean[0]) / cfg.std[0];
        assert!((px[0] - white).abs() < 1e-6);
    }

    #[test]
    fn undecodable_images_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_png(dir.path(), "good.png", 20, 20, false);
        let bad_path = dir.path().join("bad.png");
        std::fs::write(&bad_path, b"\x89PNG\r\n\x1a\nnot really").unwrap();
        let bad = Pair {
            image: bad_path,
            text: "bad".into(),
        };
        let cfg = PreprocessConfig::openai(16);
        let (set, kept, skipped) =
            ImageSet::load(&[bad, good.clone(), good], 18, &cfg, &|_| {}).unwrap();
        assert_eq!(kept, [1, 2]);
        assert_eq!(set.len(), 2);
        assert_eq!(skipped.count(SkipReason::Undecodable), 1);
        assert!(
            skipped.lines()[0].contains("bad.png"),
            "{:?}",
            skipped.lines()
        );
    }

    #[test]
    fn augmentation_is_seeded_and_stays_close_to_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let pairs = vec![write_png(dir.path(), "a.png", 80, 80, false)];
        let cfg = PreprocessConfig::openai(16);
        let (set, _, _) = ImageSet::load(&pairs, 18, &cfg, &|_| {}).unwrap();
        let aug = CropAugment::default();
        let run = |seed| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut out = vec![0f32; 3 * 16 * 16];
            set.augmented_pixels(0, 16, &aug, &mut rng, &cfg, &mut out)
                .unwrap();
            out
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        assert!(run(3).iter().all(|v| v.is_finite()));
        // Crops stay inside the image and cover 90–100 % of it.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        for _ in 0..200 {
            let (l, t, w, h) = crop_box(72, 72, &aug, &mut rng);
            assert!(l + w <= 72 && t + h <= 72);
            let share = f64::from(w * h) / (72.0 * 72.0);
            assert!((0.85..=1.0).contains(&share), "{share}");
        }
    }
}
