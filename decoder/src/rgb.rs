//! Turning whatever the codec produced (grey, palette-expanded, alpha,
//! 16-bit, float) into 8-bit RGB, with the configured alpha handling.

use glimpse_config::AlphaMode;
use image::{DynamicImage, RgbImage};

/// Composites one 8-bit channel value `c` with alpha `a` onto opaque white:
/// `round((a*c + (255-a)*255) / 255)`.
///
/// This is bit-exact with Pillow's
/// `Image.alpha_composite(Image.new("RGBA", size, "white"), im).convert("RGB")`
/// (checked over all 65,536 `(a, c)` pairs in the tests), which is what
/// HF transformers' `convert_to_rgb` does. Ties cannot occur (the numerator
/// is an integer and the denominator odd), so rounding is unambiguous.
///
/// Computed in 16 bits so that loops over pixels vectorise: the numerator
/// is `65152 - a*(255-c)` (at most 65152), and `(x + (x >> 8) + 1) >> 8`
/// is `x / 255` for every `x` up to 65534.
#[inline(always)]
pub(crate) fn over_white(c: u8, a: u8) -> u8 {
    let x = 65152 - u16::from(a) * (255 - u16::from(c));
    ((x + (x >> 8) + 1) >> 8) as u8
}

/// Converts a decoded image into RGB8, consuming it (RGB8 input is returned
/// without a copy).
///
/// - Grey is replicated into R, G and B; palettes were already expanded by
///   the codec.
/// - Alpha: `AlphaMode::Drop` discards it (Pillow's `convert("RGB")`, the
///   reference); `AlphaMode::White` composites onto white with
///   [`over_white`].
/// - 16-bit samples keep their high byte (`v >> 8`), which is what Pillow
///   does when it opens 16-bit RGB/RGBA PNGs (raw modes `RGB;16B`,
///   `RGBA;16B`). For 16-bit greyscale Pillow opens mode `I;16`, whose
///   `convert("RGB")` *clips* values above 255 to white; that corner case is
///   deliberately not reproduced, the high byte is used there as well.
/// - Float images go through the `image` crate's conversion (clamped to
///   [0, 1], scaled to 0..=255).
pub(crate) fn into_rgb8(image: DynamicImage, alpha: AlphaMode) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    // The whole image as one long row of 8-bit samples.
    let eight_bit = |samples: &[u8], channels| {
        let mut out = vec![0u8; samples.len() / channels * 3];
        let layout = RowLayout {
            channels,
            wide: false,
        };
        row_into_rgb8(samples, layout, alpha, &mut out);
        build(w, h, out)
    };
    let high_bytes =
        |samples: &[u16]| -> Vec<u8> { samples.iter().map(|&v| (v >> 8) as u8).collect() };
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        DynamicImage::ImageRgba8(i) => eight_bit(i.as_raw(), 4),
        DynamicImage::ImageLuma8(i) => eight_bit(i.as_raw(), 1),
        DynamicImage::ImageLumaA8(i) => eight_bit(i.as_raw(), 2),
        DynamicImage::ImageRgb16(i) => build(w, h, high_bytes(i.as_raw())),
        DynamicImage::ImageRgba16(i) => eight_bit(&high_bytes(i.as_raw()), 4),
        DynamicImage::ImageLuma16(i) => eight_bit(&high_bytes(i.as_raw()), 1),
        DynamicImage::ImageLumaA16(i) => eight_bit(&high_bytes(i.as_raw()), 2),
        DynamicImage::ImageRgb32F(_) => image.to_rgb8(),
        other => eight_bit(other.to_rgba8().as_raw(), 4),
    }
}

fn build(w: u32, h: u32, data: Vec<u8>) -> RgbImage {
    RgbImage::from_raw(w, h, data).expect("buffer length is width * height * 3 by construction")
}

/// How the samples of one row that a codec streams are laid out: grey,
/// grey + alpha, RGB or RGBA, 8-bit or 16-bit big-endian (as PNG stores
/// them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RowLayout {
    /// Channels per pixel, 1 to 4.
    pub channels: usize,
    /// 16-bit samples (big-endian: the high byte comes first).
    pub wide: bool,
}

impl RowLayout {
    /// Whether the last channel is alpha.
    pub(crate) fn has_alpha(self) -> bool {
        self.channels == 2 || self.channels == 4
    }
}

/// One row of `layout` samples into RGB8 (`dst`: 3 bytes per pixel of
/// `src`), converted as [`into_rgb8`] converts the whole image, pixel for
/// pixel the same: grey replicated, 16-bit samples' high byte, alpha
/// dropped or composited onto white per `alpha`.
pub(crate) fn row_into_rgb8(src: &[u8], layout: RowLayout, alpha: AlphaMode, dst: &mut [u8]) {
    crate::avx2::dispatch!(
        row_into_rgb8_any,
        row_into_rgb8_avx2(src, layout, alpha, dst)
    )
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_into_rgb8_avx2(src: &[u8], layout: RowLayout, alpha: AlphaMode, dst: &mut [u8]) {
    row_into_rgb8_any(src, layout, alpha, dst)
}

/// [`row_into_rgb8`] for whichever target it is inlined into.
#[inline(always)]
fn row_into_rgb8_any(src: &[u8], layout: RowLayout, alpha: AlphaMode, dst: &mut [u8]) {
    match (layout.channels, layout.wide) {
        (1, false) => row_of::<1, 1>(src, alpha, dst),
        (2, false) => row_of::<2, 1>(src, alpha, dst),
        (3, false) => dst.copy_from_slice(&src[..dst.len()]),
        (4, false) => row_of::<4, 1>(src, alpha, dst),
        (1, true) => row_of::<1, 2>(src, alpha, dst),
        (2, true) => row_of::<2, 2>(src, alpha, dst),
        (3, true) => row_of::<3, 2>(src, alpha, dst),
        _ => row_of::<4, 2>(src, alpha, dst),
    }
}

/// [`row_into_rgb8`] for `C` channels of `S` bytes (the first byte is the
/// high one). The loops write into a buffer of the final size through
/// fixed-size chunks (no capacity check per pixel, so they vectorise):
/// ~0.1 s of the shared photos' decoding once went to pushing three bytes
/// at a time.
#[inline(always)]
fn row_of<const C: usize, const S: usize>(src: &[u8], alpha: AlphaMode, dst: &mut [u8]) {
    let pixels = dst.chunks_exact_mut(3).zip(src.chunks_exact(C * S));
    match (C, alpha) {
        (1, _) | (2, AlphaMode::Drop) => {
            for (o, p) in pixels {
                o.copy_from_slice(&[p[0]; 3]);
            }
        }
        (2, AlphaMode::White) => {
            for (o, p) in pixels {
                o.copy_from_slice(&[over_white(p[0], p[S]); 3]);
            }
        }
        (_, AlphaMode::Drop) | (3, _) => {
            for (o, p) in pixels {
                o.copy_from_slice(&[p[0], p[S], p[2 * S]]);
            }
        }
        (_, AlphaMode::White) => {
            for (o, p) in pixels {
                let a = p[3 * S];
                o.copy_from_slice(&[
                    over_white(p[0], a),
                    over_white(p[S], a),
                    over_white(p[2 * S], a),
                ]);
            }
        }
    }
}

/// `image` in RGB8 reduced by `r` — [`into_rgb8`] then
/// [`area_reduce`](crate::reduce::area_reduce), the same pixels — in one
/// pass for 8-bit images, without the full-size RGB copy.
pub(crate) fn into_rgb8_reduced(image: DynamicImage, alpha: AlphaMode, r: u32) -> RgbImage {
    let (w, h) = (image.width(), image.height());
    let (raw, channels): (&[u8], usize) = match &image {
        DynamicImage::ImageLuma8(i) => (i.as_raw(), 1),
        DynamicImage::ImageLumaA8(i) => (i.as_raw(), 2),
        DynamicImage::ImageRgba8(i) => (i.as_raw(), 4),
        _ => return crate::reduce::area_reduce(into_rgb8(image, alpha), r),
    };
    if r <= 1 || w == 0 || h == 0 {
        return into_rgb8(image, alpha);
    }
    let layout = RowLayout {
        channels,
        wide: false,
    };
    let mut reducer = crate::reduce::AreaReducer::new(w, h, r);
    let mut row = vec![0u8; w as usize * 3];
    for src in raw.chunks_exact(w as usize * channels) {
        row_into_rgb8(src, layout, alpha, &mut row);
        reducer.add_row(&row);
    }
    reducer.finish()
}

/// Whether a decoded image carries an alpha channel.
pub(crate) fn has_alpha(image: &DynamicImage) -> bool {
    image.color().has_alpha()
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, LumaA, Rgba};

    /// Pillow's `alpha_composite` integer arithmetic (AlphaComposite.c,
    /// PRECISION_BITS = 7) for a source pixel over an opaque white pixel.
    fn pillow_alpha_composite_over_white(c: u8, a: u8) -> u8 {
        const PB: u32 = 7;
        let (c, a) = (u32::from(c), u32::from(a));
        let blend = 255 * (255 - a);
        let outa255 = a * 255 + blend;
        let coef1 = a * 255 * 255 * (1 << PB) / outa255;
        let coef2 = 255 * (1 << PB) - coef1;
        let tmp = c * coef1 + 255 * coef2 + (0x80 << PB);
        let t = ((tmp >> 8) + tmp) >> 8;
        (t >> PB) as u8
    }

    /// The AVX2 twin converts every layout as the baseline build does.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_twin_converts_as_the_baseline_build() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let src: Vec<u8> = (0..8 * 101u32).map(|i| (i * 97 % 251) as u8).collect();
        for channels in 1..=4 {
            for wide in [false, true] {
                let layout = RowLayout { channels, wide };
                let pixels = src.len() / (channels * if wide { 2 } else { 1 });
                for alpha in [AlphaMode::Drop, AlphaMode::White] {
                    let mut baseline = vec![0u8; pixels * 3];
                    let mut avx2 = vec![1u8; pixels * 3];
                    row_into_rgb8_any(&src, layout, alpha, &mut baseline);
                    // SAFETY: checked above that the CPU has AVX2.
                    unsafe { row_into_rgb8_avx2(&src, layout, alpha, &mut avx2) };
                    assert_eq!(baseline, avx2, "{layout:?} {alpha:?}");
                }
            }
        }
    }

    #[test]
    fn over_white_matches_pillow_alpha_composite_everywhere() {
        for a in 0..=255u8 {
            for c in 0..=255u8 {
                assert_eq!(
                    over_white(c, a),
                    pillow_alpha_composite_over_white(c, a),
                    "c={c} a={a}"
                );
            }
        }
        assert_eq!(over_white(0, 0), 255);
        assert_eq!(over_white(17, 255), 17);
    }

    #[test]
    fn alpha_modes() {
        let img = ImageBuffer::from_fn(2, 1, |x, _| {
            if x == 0 {
                Rgba([10u8, 20, 30, 0])
            } else {
                Rgba([10, 20, 30, 255])
            }
        });
        let d = DynamicImage::ImageRgba8(img);
        let drop = into_rgb8(d.clone(), AlphaMode::Drop);
        assert_eq!(drop.as_raw(), &[10, 20, 30, 10, 20, 30]);
        let white = into_rgb8(d, AlphaMode::White);
        assert_eq!(white.as_raw(), &[255, 255, 255, 10, 20, 30]);

        let la = DynamicImage::ImageLumaA8(ImageBuffer::from_pixel(1, 1, LumaA([0u8, 128])));
        assert_eq!(into_rgb8(la.clone(), AlphaMode::Drop).as_raw(), &[0, 0, 0]);
        assert_eq!(into_rgb8(la, AlphaMode::White).as_raw(), &[127, 127, 127]);
    }

    #[test]
    fn sixteen_bit_keeps_the_high_byte() {
        let img = ImageBuffer::from_pixel(1, 1, image::Rgb([0x12ffu16, 0xff00, 0x0080]));
        let rgb = into_rgb8(DynamicImage::ImageRgb16(img), AlphaMode::Drop);
        assert_eq!(rgb.as_raw(), &[0x12, 0xff, 0x00]);
        let img = ImageBuffer::from_pixel(1, 1, image::Luma([0xabcdu16]));
        let rgb = into_rgb8(DynamicImage::ImageLuma16(img), AlphaMode::White);
        assert_eq!(rgb.as_raw(), &[0xab, 0xab, 0xab]);
    }

    /// A linear congruential generator's 16-bit outputs from `seed`.
    fn pseudo_random(seed: u32) -> impl FnMut() -> u16 {
        let mut state = seed;
        move || {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (state >> 8) as u16
        }
    }

    /// The one-pass conversion and reduction gives what converting and then
    /// reducing gives, for every kind of image.
    #[test]
    fn converting_while_reducing_equals_converting_then_reducing() {
        let mut next = pseudo_random(11);
        let (w, h) = (37u32, 29u32);
        let mut bytes = |n: u32| (0..w * h * n).map(|_| next() as u8).collect::<Vec<u8>>();
        let images = [
            DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, bytes(4)).unwrap()),
            DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, bytes(2)).unwrap()),
            DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, bytes(1)).unwrap()),
            DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, bytes(3)).unwrap()),
            DynamicImage::ImageRgba16(
                ImageBuffer::from_raw(
                    w,
                    h,
                    bytes(8)
                        .chunks(2)
                        .map(|p| u16::from_ne_bytes([p[0], p[1]]))
                        .collect(),
                )
                .unwrap(),
            ),
        ];
        for image in images {
            for mode in [AlphaMode::Drop, AlphaMode::White] {
                for r in [1, 2, 4, 8] {
                    assert_eq!(
                        into_rgb8_reduced(image.clone(), mode, r),
                        crate::reduce::area_reduce(into_rgb8(image.clone(), mode), r),
                        "{:?} {mode:?} / {r}",
                        image.color()
                    );
                }
            }
        }
    }

    /// Every conversion equals its per-pixel definition on pseudo-random
    /// images of odd sizes (all alpha values and channel values occur).
    #[test]
    fn conversions_equal_their_per_pixel_definition() {
        let mut next = pseudo_random(7);
        let (w, h) = (37u32, 29u32);
        let rgba8: Vec<u8> = (0..w * h * 4).map(|_| next() as u8).collect();
        let la8: Vec<u8> = (0..w * h * 2).map(|_| next() as u8).collect();
        let l8: Vec<u8> = (0..w * h).map(|_| next() as u8).collect();
        let rgba16: Vec<u16> = (0..w * h * 4).map(|_| next()).collect();
        for mode in [AlphaMode::Drop, AlphaMode::White] {
            let comp = |c: u8, a: u8| match mode {
                AlphaMode::Drop => c,
                AlphaMode::White => over_white(c, a),
            };
            let image =
                DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, rgba8.clone()).unwrap());
            let expected: Vec<u8> = rgba8
                .chunks(4)
                .flat_map(|p| [comp(p[0], p[3]), comp(p[1], p[3]), comp(p[2], p[3])])
                .collect();
            assert_eq!(into_rgb8(image, mode).as_raw(), &expected, "rgba8 {mode:?}");

            let image =
                DynamicImage::ImageLumaA8(ImageBuffer::from_raw(w, h, la8.clone()).unwrap());
            let expected: Vec<u8> = la8.chunks(2).flat_map(|p| [comp(p[0], p[1]); 3]).collect();
            assert_eq!(into_rgb8(image, mode).as_raw(), &expected, "la8 {mode:?}");

            let image = DynamicImage::ImageLuma8(ImageBuffer::from_raw(w, h, l8.clone()).unwrap());
            let expected: Vec<u8> = l8.iter().flat_map(|&v| [v; 3]).collect();
            assert_eq!(into_rgb8(image, mode).as_raw(), &expected, "l8 {mode:?}");

            let image =
                DynamicImage::ImageRgba16(ImageBuffer::from_raw(w, h, rgba16.clone()).unwrap());
            let hb = |v: u16| (v >> 8) as u8;
            let expected: Vec<u8> = rgba16
                .chunks(4)
                .flat_map(|p| {
                    let a = hb(p[3]);
                    [comp(hb(p[0]), a), comp(hb(p[1]), a), comp(hb(p[2]), a)]
                })
                .collect();
            assert_eq!(
                into_rgb8(image, mode).as_raw(),
                &expected,
                "rgba16 {mode:?}"
            );
        }
    }
}
