//! From an RGB image to the model's input: resize, centre crop, normalise,
//! channel-first `f32`.

use glimpse_config::PreprocessConfig;
use image::RgbImage;

use crate::resize::{crop_axis, resize_window, resized_dimensions};

/// HF's `rescale_factor` (`1/255` as a Python float).
const RESCALE: f64 = 1.0 / 255.0;

/// The normalised value of every byte value, per channel, computed exactly
/// as HF's `CLIPImageProcessor` does in numpy: `rescale` multiplies the
/// `uint8` value by `1/255` in `float64` and casts to `float32`; `normalize`
/// then computes `(x - mean) / std` in `float32` with `mean` and `std` cast
/// to `float32`.
fn lookup_table(cfg: &PreprocessConfig) -> [[f32; 256]; 3] {
    let mut lut = [[0f32; 256]; 3];
    for (c, table) in lut.iter_mut().enumerate() {
        for (v, out) in table.iter_mut().enumerate() {
            let x = (v as f64 * RESCALE) as f32;
            *out = (x - cfg.mean[c]) / cfg.std[c];
        }
    }
    lut
}

/// Turns an RGB image into CLIP input pixels: shortest side resized to
/// `cfg.image_size` with Pillow's bicubic, centre crop, `x / 255`,
/// `(x - mean) / std`; returned channel-first (`[3, S, S]`, row-major) as
/// `3 * S * S` floats. Matches HF transformers' `CLIPImageProcessor` (Pillow
/// backend) to the last bit on the same RGB input.
///
/// Only the cropped window of the resize is computed. `cfg.alpha` and
/// `cfg.max_pixels` are not used here (they apply when decoding).
pub fn to_pixels(image: &RgbImage, cfg: &PreprocessConfig) -> Vec<f32> {
    let s = cfg.image_size;
    let mut out = vec![0f32; 3 * s * s];
    to_pixels_into(image, cfg, &mut out);
    out
}

/// [`to_pixels`] writing into `out` (e.g. one slot of a batch buffer)
/// instead of allocating.
///
/// # Panics
///
/// If `out.len() != 3 * cfg.image_size * cfg.image_size`.
pub fn to_pixels_into(image: &RgbImage, cfg: &PreprocessConfig, out: &mut [f32]) {
    let s = cfg.image_size;
    assert_eq!(
        out.len(),
        3 * s * s,
        "output buffer must hold 3 * image_size^2 floats"
    );
    if s == 0 {
        return;
    }
    let lut = lookup_table(cfg);
    let size = u32::try_from(s).unwrap_or(u32::MAX);
    let (w2, h2) = resized_dimensions(image.width(), image.height(), size);
    let (cols, dx) = crop_axis(w2, s as u64);
    let (rows, dy) = crop_axis(h2, s as u64);
    let (win_w, win_h) = (cols.end - cols.start, rows.end - rows.start);
    let window = resize_window(image, w2, h2, cols, rows);

    let plane = s * s;
    let (r_out, rest) = out.split_at_mut(plane);
    let (g_out, b_out) = rest.split_at_mut(plane);
    if win_w < s as u64 || win_h < s as u64 || window.is_empty() {
        // Zero padding (HF pads the uint8 image with 0 before rescaling).
        r_out.fill(lut[0][0]);
        g_out.fill(lut[1][0]);
        b_out.fill(lut[2][0]);
    }
    if window.is_empty() {
        return;
    }
    let (win_w, dx, dy) = (win_w as usize, dx as usize, dy as usize);
    for (y, row) in window.chunks_exact(win_w * 3).enumerate() {
        let at = (dy + y) * s + dx;
        let (r, g, b) = (
            &mut r_out[at..at + win_w],
            &mut g_out[at..at + win_w],
            &mut b_out[at..at + win_w],
        );
        for (x, p) in row.chunks_exact(3).enumerate() {
            r[x] = lut[0][usize::from(p[0])];
            g[x] = lut[1][usize::from(p[1])];
            b[x] = lut[2][usize::from(p[2])];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_config::PreprocessConfig;

    #[test]
    fn layout_is_channel_first_and_values_follow_the_formula() {
        let cfg = PreprocessConfig::openai(4);
        let img = RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8 * 60, y as u8 * 60, 255]));
        let px = to_pixels(&img, &cfg);
        assert_eq!(px.len(), 48);
        let expect =
            |v: u8, c: usize| ((f64::from(v) * (1.0 / 255.0)) as f32 - cfg.mean[c]) / cfg.std[c];
        assert_eq!(px[1], expect(60, 0)); // R at (x=1, y=0)
        assert_eq!(px[16 + 4], expect(60, 1)); // G at (x=0, y=1)
        assert_eq!(px[32 + 15], expect(255, 2));
    }

    #[test]
    fn degenerate_inputs_do_not_panic() {
        let cfg = PreprocessConfig::openai(8);
        let px = to_pixels(&RgbImage::new(0, 0), &cfg);
        assert_eq!(px.len(), 3 * 64);
        assert_eq!(px[0], -cfg.mean[0] / cfg.std[0]);
        let px = to_pixels(&RgbImage::new(1, 1000), &cfg);
        assert_eq!(px.len(), 3 * 64);
        assert!(to_pixels(&RgbImage::new(3, 3), &PreprocessConfig::openai(0)).is_empty());
    }
}
