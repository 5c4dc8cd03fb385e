//! Area-averaging reduction by a whole factor, for images that no codec
//! reduced while decoding (PNG, TIFF, BMP, GIF, JPEGs the exact decoder
//! declines, animated WebPs and those libwebp declines, WebPs with alpha
//! kept under `AlphaMode::Drop`).
//!
//! What it is for: a large image's model pixels and thumbnail are both
//! resized from the decoded image, and those resizes cost in proportion to
//! its size (a 1920x1280 PNG: ~2.5 ms for the pixels, ~2.2 ms for the
//! thumbnail, more than the reduction itself). Averaging `r` x `r` blocks
//! first is what the reduced JPEG and WebP decodes already do (libjpeg's
//! scaled IDCT, libwebp's area-averaging rescaler), with the same output
//! size, `ceil(width / r)` x `ceil(height / r)`.

use image::RgbImage;

/// `image` reduced by `r` (1 returns it unchanged): every output sample is
/// the rounded mean of its `r` x `r` block of input samples, the blocks at
/// the right and bottom edges cut to what the image has (so their mean is
/// over fewer samples).
pub(crate) fn area_reduce(image: RgbImage, r: u32) -> RgbImage {
    let (width, height) = image.dimensions();
    if r <= 1 || width == 0 || height == 0 {
        return image;
    }
    let (r, w, h) = (r as usize, width as usize, height as usize);
    let (out_w, out_h) = (w.div_ceil(r), h.div_ceil(r));
    let src: &[u8] = image.as_raw();
    let mut out = vec![0u8; out_w * out_h * 3];
    // Column sums of one band of up to `r` rows: a block sums at most
    // r * r * 255, far inside u32 for the factors used (2, 4, 8).
    debug_assert!(r <= 8, "area_reduce by {r}");
    let mut sums = vec![0u32; w * 3];
    for (band, out_row) in src.chunks(r * w * 3).zip(out.chunks_exact_mut(out_w * 3)) {
        sums.fill(0);
        let rows = band.len() / (w * 3);
        for row in band.chunks_exact(w * 3) {
            for (sum, &v) in sums.iter_mut().zip(row) {
                *sum += u32::from(v);
            }
        }
        for (block, px) in sums.chunks(r * 3).zip(out_row.chunks_exact_mut(3)) {
            let n = (block.len() / 3 * rows) as u32;
            let mut acc = [0u32; 3];
            for p in block.chunks_exact(3) {
                acc[0] += p[0];
                acc[1] += p[1];
                acc[2] += p[2];
            }
            for (o, a) in px.iter_mut().zip(acc) {
                *o = ((a + n / 2) / n) as u8;
            }
        }
    }
    RgbImage::from_raw(out_w as u32, out_h as u32, out).unwrap_or(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, one output sample at a time.
    fn naive(image: &RgbImage, r: u32) -> RgbImage {
        let (w, h) = image.dimensions();
        RgbImage::from_fn(w.div_ceil(r), h.div_ceil(r), |x, y| {
            let mut sum = [0u32; 3];
            let mut n = 0;
            for yy in y * r..((y + 1) * r).min(h) {
                for xx in x * r..((x + 1) * r).min(w) {
                    let p = image.get_pixel(xx, yy);
                    for c in 0..3 {
                        sum[c] += u32::from(p[c]);
                    }
                    n += 1;
                }
            }
            image::Rgb(sum.map(|s| ((s + n / 2) / n) as u8))
        })
    }

    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        RgbImage::from_fn(w, h, |_, _| {
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            };
            image::Rgb([next(), next(), next()])
        })
    }

    #[test]
    fn matches_the_definition_including_cut_edge_blocks() {
        for (w, h) in [(16, 16), (17, 9), (1, 30), (30, 1), (3, 3), (61, 47)] {
            for r in [2, 4, 8] {
                let image = noise(w, h, w * 100 + h + r);
                let ours = area_reduce(image.clone(), r);
                assert_eq!(ours.dimensions(), (w.div_ceil(r), h.div_ceil(r)));
                assert_eq!(ours, naive(&image, r), "{w}x{h} / {r}");
            }
        }
    }

    #[test]
    fn extremes_and_identity() {
        let white = RgbImage::from_pixel(20, 13, image::Rgb([255, 255, 255]));
        assert_eq!(
            area_reduce(white, 8),
            RgbImage::from_pixel(3, 2, image::Rgb([255; 3]))
        );
        let image = noise(5, 7, 3);
        assert_eq!(area_reduce(image.clone(), 1), image);
        assert_eq!(area_reduce(RgbImage::new(0, 0), 4).dimensions(), (0, 0));
    }
}
