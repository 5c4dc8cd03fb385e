//! Still WebP images through libwebp — the library Pillow decodes WebP
//! with, so the pixels are the reference's by construction — built from
//! source by `libwebp-sys` (C, SSE2). About 2.3x faster than the `image`
//! crate's pure-Rust decoder (`image-webp`) on lossy photos, whose output
//! is also Pillow's (checked by the tests below against Pillow's decodes).
//! It can also decode reduced (libwebp's own area-averaging rescaler, run
//! on the decoded rows before colour conversion), for the indexer's large
//! photos.
//!
//! Animated files, and anything libwebp rejects, are declined (`None`): the
//! caller then uses the `image` crate, which decodes the first frame and
//! reports damage with a message.

use image::{DynamicImage, RgbImage, RgbaImage};
use libwebp_sys as sys;

/// Decodes a still WebP whose header (read by the `image` crate) says it
/// is `width` x `height`, as RGBA when libwebp says it has alpha (not
/// premultiplied, as Pillow's) and as RGB otherwise, at `1 / reduction` of
/// its size (`ceil(width / reduction)` x `ceil(height / reduction)`, as a
/// reduced JPEG; 1 is the full size, Pillow's pixels exactly) — except
/// that an image with alpha is decoded at full size unless
/// `reduce_with_alpha`: libwebp's rescaler premultiplies by alpha, which
/// loses the colour stored under transparent pixels (what
/// `AlphaMode::Drop` shows). Returns the image and the reduction used, or
/// `None` when libwebp declines or disagrees about the size.
pub(crate) fn decode(
    data: &[u8],
    (width, height): (u32, u32),
    reduction: u32,
    reduce_with_alpha: bool,
) -> Option<(DynamicImage, u32)> {
    // SAFETY: `features` is plain data that libwebp fills in, reading
    // `data` within `data.len()`.
    let features = unsafe {
        let mut features: sys::WebPBitstreamFeatures = std::mem::zeroed();
        let status = sys::WebPGetFeatures(data.as_ptr(), data.len(), &mut features);
        (status == sys::VP8StatusCode::VP8_STATUS_OK).then_some(features)?
    };
    if features.has_animation != 0
        || i64::from(features.width) != i64::from(width)
        || i64::from(features.height) != i64::from(height)
    {
        return None;
    }
    let alpha = features.has_alpha != 0;
    let reduction = if alpha && !reduce_with_alpha {
        1
    } else {
        reduction.max(1)
    };
    let (out_width, out_height) = (width.div_ceil(reduction), height.div_ceil(reduction));
    let channels = if alpha { 4 } else { 3 };
    let stride = usize::try_from(out_width).ok()?.checked_mul(channels)?;
    let len = stride.checked_mul(usize::try_from(out_height).ok()?)?;
    let mut pixels = Vec::new();
    pixels.try_reserve_exact(len).ok()?;
    pixels.resize(len, 0u8);

    // SAFETY: `config` is initialised by libwebp before use; libwebp reads
    // `data` within `data.len()` and writes the decoded rows into `pixels`
    // within `size` bytes at `stride` (external memory: it allocates and
    // keeps nothing, so nothing is freed and `pixels` is ours afterwards).
    let decoded = unsafe {
        let mut config: sys::WebPDecoderConfig = std::mem::zeroed();
        if !sys::WebPInitDecoderConfig(&mut config) {
            return None;
        }
        config.input = features;
        if reduction > 1 {
            config.options.use_scaling = 1;
            config.options.scaled_width = i32::try_from(out_width).ok()?;
            config.options.scaled_height = i32::try_from(out_height).ok()?;
        }
        config.output.colorspace = if alpha {
            sys::WEBP_CSP_MODE::MODE_RGBA
        } else {
            sys::WEBP_CSP_MODE::MODE_RGB
        };
        config.output.is_external_memory = 1;
        config.output.u.RGBA = sys::WebPRGBABuffer {
            rgba: pixels.as_mut_ptr(),
            stride: i32::try_from(stride).ok()?,
            size: pixels.len(),
        };
        sys::WebPDecode(data.as_ptr(), data.len(), &mut config) == sys::VP8StatusCode::VP8_STATUS_OK
    };
    if !decoded {
        return None;
    }
    let image = if alpha {
        DynamicImage::ImageRgba8(RgbaImage::from_raw(out_width, out_height, pixels)?)
    } else {
        DynamicImage::ImageRgb8(RgbImage::from_raw(out_width, out_height, pixels)?)
    };
    Some((image, reduction))
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_config::PreprocessConfig;
    use std::path::PathBuf;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/webp")
            .join(name)
    }

    fn pillow(name: &str) -> DynamicImage {
        image::open(fixture(&format!("{name}.pillow.png"))).unwrap()
    }

    /// Still files (lossy, lossy with alpha, lossless with alpha) decode
    /// exactly as Pillow decodes them, and exactly as the `image` crate
    /// (the fallback) does.
    #[test]
    fn still_images_match_pillow_exactly() {
        for name in ["lossy", "lossy_alpha", "lossless_alpha"] {
            let data = std::fs::read(fixture(&format!("{name}.webp"))).unwrap();
            let alpha = name.contains("alpha");
            let (ours, _) = decode(&data, (203, 151), 1, true)
                .unwrap_or_else(|| panic!("{name}: libwebp declined"));
            assert_eq!(ours.color().has_alpha(), alpha, "{name}");
            assert_eq!(ours.as_bytes(), pillow(name).as_bytes(), "{name} vs Pillow");
            let image_webp = image::load_from_memory(&data).unwrap();
            assert_eq!(
                ours.as_bytes(),
                image_webp.as_bytes(),
                "{name} vs image-webp"
            );
        }
    }

    /// Through `decode_bytes`: the same pixels (alpha composited on white
    /// as the `image` crate's decode would be) and `had_alpha` set.
    #[test]
    fn decode_bytes_uses_it_with_alpha_handling_unchanged() {
        let cfg = PreprocessConfig::openai(224);
        let data = std::fs::read(fixture("lossy_alpha.webp")).unwrap();
        let decoded = crate::decode_bytes(&data, &cfg).unwrap();
        assert!(decoded.had_alpha);
        let expected = crate::rgb::into_rgb8(pillow("lossy_alpha"), cfg.alpha);
        assert_eq!(decoded.rgb, expected);
    }

    /// An animation is declined and decoded by the `image` crate (its first
    /// frame, as Pillow opens it); a truncated file is declined and then
    /// reported as corrupt.
    #[test]
    fn animations_and_damaged_files_go_to_the_fallback() {
        let cfg = PreprocessConfig::openai(224);
        let animated = std::fs::read(fixture("animated.webp")).unwrap();
        assert!(decode(&animated, (203, 151), 1, true).is_none());
        let first = crate::decode_bytes(&animated, &cfg).unwrap();
        assert_eq!(first.rgb.as_raw(), pillow("animated").as_bytes());

        let truncated = std::fs::read(fixture("truncated.webp")).unwrap();
        assert!(decode(&truncated, (203, 151), 1, true).is_none());
        let err = crate::decode_bytes(&truncated, &cfg).unwrap_err();
        assert!(matches!(err, crate::DecodeError::Corrupt { .. }), "{err:?}");
        // A header that disagrees with the data is declined, not trusted.
        let lossy = std::fs::read(fixture("lossy.webp")).unwrap();
        assert!(decode(&lossy, (204, 151), 1, true).is_none());
        assert!(decode(&[], (1, 1), 1, true).is_none());
    }

    /// A reduced decode has the reduced JPEG's size and stays close to the
    /// full decode averaged over the same blocks (libwebp's rescaler
    /// averages areas, in YUV); `decode_bytes_reduced` uses it for a WebP
    /// large enough and says so in `reduction`.
    #[test]
    fn reduced_decodes_average_the_full_decode() {
        for name in ["lossy", "lossy_alpha", "lossless_alpha"] {
            let data = std::fs::read(fixture(&format!("{name}.webp"))).unwrap();
            let full = decode(&data, (203, 151), 1, true).unwrap().0.into_rgba8();
            for r in [2u32, 4, 8] {
                let (reduced, used) = decode(&data, (203, 151), r, true)
                    .unwrap_or_else(|| panic!("{name} at 1/{r}: declined"));
                assert_eq!(used, r);
                let reduced = reduced.into_rgba8();
                assert_eq!(
                    reduced.dimensions(),
                    (203u32.div_ceil(r), 151u32.div_ceil(r))
                );
                // Each pixel composited onto white (what the model sees by
                // default: the colour under a transparent pixel is
                // arbitrary, and libwebp's rescaler premultiplies it away),
                // against the full decode's mean over its whole r x r block.
                let on_white = |p: &image::Rgba<u8>, c: usize| {
                    let a = f64::from(p[3]) / 255.0;
                    f64::from(p[c]) * a + 255.0 * (1.0 - a)
                };
                let (mut diff, mut n) = (0f64, 0f64);
                for by in 0..151 / r {
                    for bx in 0..203 / r {
                        for c in 0..3 {
                            let mut sum = 0f64;
                            for y in by * r..(by + 1) * r {
                                for x in bx * r..(bx + 1) * r {
                                    sum += on_white(full.get_pixel(x, y), c);
                                }
                            }
                            let mean = sum / f64::from(r * r);
                            diff += (mean - on_white(reduced.get_pixel(bx, by), c)).abs();
                            n += 1.0;
                        }
                    }
                }
                let mean_diff = diff / n;
                // Measured 1.4-4.6 levels: chroma is rescaled from the
                // half-size planes without the full decode's upsampling
                // filter, and 203 / 26 is not a whole 8 at 1/8.
                assert!(mean_diff < 6.0, "{name} at 1/{r}: mean diff {mean_diff}");
            }
        }
        let cfg = PreprocessConfig::openai(224);
        let data = std::fs::read(fixture("lossy.webp")).unwrap();
        let reduced = crate::decode_bytes_reduced(&data, &cfg, 64).unwrap();
        assert_eq!(
            (reduced.reduction, reduced.rgb.dimensions()),
            (2, (102, 76))
        );
        assert_eq!((reduced.source_width, reduced.source_height), (203, 151));
        let not_reduced = crate::decode_bytes_reduced(&data, &cfg, 100).unwrap();
        assert_eq!(not_reduced.reduction, 1);
        assert_eq!(not_reduced.rgb.as_raw(), pillow("lossy").as_bytes());
    }

    /// With alpha, libwebp reduces only when the colour under transparent
    /// pixels does not matter: under `--alpha drop` (the reference's recipe,
    /// which shows it) the full-size decode, exactly Pillow's, is averaged
    /// down after the alpha is dropped, keeping that colour.
    #[test]
    fn images_with_alpha_are_reduced_by_libwebp_only_when_alpha_is_composited() {
        let data = std::fs::read(fixture("lossless_alpha.webp")).unwrap();
        let (image, used) = decode(&data, (203, 151), 4, false).unwrap();
        assert_eq!((used, image.width()), (1, 203));
        assert_eq!(image.as_bytes(), pillow("lossless_alpha").as_bytes());
        // Composited onto white, libwebp's rescaler does the reducing.
        let (reduced, used) = decode(&data, (203, 151), 4, true).unwrap();
        assert_eq!((used, reduced.width()), (4, 51));

        let mut drop = PreprocessConfig::openai(224);
        drop.alpha = glimpse_config::AlphaMode::Drop;
        let decoded = crate::decode_bytes_reduced(&data, &drop, 32).unwrap();
        assert_eq!(decoded.reduction, 4);
        let full = crate::rgb::into_rgb8(pillow("lossless_alpha"), drop.alpha);
        assert_eq!(decoded.rgb, crate::reduce::area_reduce(full, 4));
        let white = PreprocessConfig::openai(224);
        assert_eq!(
            crate::decode_bytes_reduced(&data, &white, 32)
                .unwrap()
                .reduction,
            4
        );
        // Opaque files are reduced whatever the mode.
        let opaque = std::fs::read(fixture("lossy.webp")).unwrap();
        assert_eq!(
            crate::decode_bytes_reduced(&opaque, &drop, 32)
                .unwrap()
                .reduction,
            4
        );
    }
}
