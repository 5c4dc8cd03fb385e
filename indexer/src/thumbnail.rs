//! Small JPEG previews, made from the photo already decoded for embedding.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use glimpse_decoder::RgbImage;
use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

use crate::error::IndexError;

/// The default longest side of a thumbnail, in pixels.
pub const DEFAULT_THUMBNAIL_SIDE: u32 = 256;

/// JPEG quality of thumbnails (1–100).
pub const THUMBNAIL_QUALITY: u8 = 80;

/// `Ok` for a thumbnail side [`make_thumbnail`] accepts: 1 to 65535
/// pixels (a JPEG's sides are 16-bit).
pub(crate) fn check_thumbnail_side(side: u32) -> Result<(), IndexError> {
    if side == 0 || side > u32::from(u16::MAX) {
        return Err(IndexError::BadThumbnailSize { side });
    }
    Ok(())
}

/// The size of a thumbnail of a `width` × `height` image whose longer side
/// is at most `max_side`: the aspect ratio kept (rounded to whole pixels, at
/// least 1), never enlarged.
pub fn thumbnail_size(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let long = width.max(height);
    if long <= max_side {
        return (width, height);
    }
    let scale = |side: u32| -> u32 {
        let scaled =
            (u64::from(side) * u64::from(max_side) + u64::from(long) / 2) / u64::from(long);
        u32::try_from(scaled).unwrap_or(max_side).clamp(1, max_side)
    };
    (scale(width), scale(height))
}

/// Encodes a thumbnail of `image` — pass the upright pixels of a
/// `glimpse_decoder::DecodedImage` (`&decoded.rgb`), so that a photo is
/// decoded once for both its embedding and its thumbnail.
///
/// The image is scaled down so that its longer side is at most `max_side`
/// ([`DEFAULT_THUMBNAIL_SIDE`] is 256), never up, with a Lanczos3 filter
/// (`fast_image_resize`, SIMD), and encoded as a baseline 4:2:0 JPEG at
/// quality [`THUMBNAIL_QUALITY`] (`jpeg-encoder`, SIMD: several times
/// faster than the `image` crate's encoder, same size and error). JPEG rather
/// than WebP because the pure-Rust encoders only write lossless WebP, about
/// ten times larger for photos, and every browser shows JPEG. Thumbnails are opaque: the decoder has already
/// composited any alpha.
///
/// Fails with [`IndexError::BadThumbnailSize`] for `max_side` 0 or over
/// 65535; the other errors are internal.
pub fn make_thumbnail(image: &RgbImage, max_side: u32) -> Result<Vec<u8>, IndexError> {
    check_thumbnail_side(max_side)?;
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(IndexError::internal(
            "making a thumbnail",
            format!("the decoded image is {width}x{height}"),
        ));
    }
    let (thumb_width, thumb_height) = thumbnail_size(width, height, max_side);
    let resized;
    let pixels: &[u8] = if (thumb_width, thumb_height) == (width, height) {
        image.as_raw()
    } else {
        let src = ImageRef::new(width, height, image.as_raw(), PixelType::U8x3)
            .map_err(|e| IndexError::internal("making a thumbnail", e))?;
        let mut dst = Image::new(thumb_width, thumb_height, PixelType::U8x3);
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3));
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|e| IndexError::internal("resizing a thumbnail", e))?;
        resized = dst.into_vec();
        &resized
    };
    // At most `max_side`, so within a JPEG's 16-bit sides.
    let (Ok(jpeg_width), Ok(jpeg_height)) =
        (u16::try_from(thumb_width), u16::try_from(thumb_height))
    else {
        return Err(IndexError::internal(
            "encoding a thumbnail",
            format!("{thumb_width}x{thumb_height} is too large for a JPEG"),
        ));
    };
    let mut jpeg = Vec::new();
    let mut encoder = Encoder::new(&mut jpeg, THUMBNAIL_QUALITY);
    // Chroma at half resolution, as in most photo apps' thumbnails (and
    // Pillow's JPEG default): on the shared photos 15 % fewer bytes and 40 %
    // less encoding time than 4:4:4, for a mean error of 1.32 levels
    // instead of 0.96.
    encoder.set_sampling_factor(SamplingFactor::F_2_2);
    encoder
        .encode(pixels, jpeg_width, jpeg_height, ColorType::Rgb)
        .map_err(|e| IndexError::internal("encoding a thumbnail", e))?;
    Ok(jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use glimpse_config::PreprocessConfig;
    use glimpse_decoder::{decode_bytes, decode_path};
    use std::path::{Path, PathBuf};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    fn decode_jpeg(bytes: &[u8]) -> RgbImage {
        let decoded = decode_bytes(bytes, &PreprocessConfig::openai(224)).expect("a valid JPEG");
        assert_eq!(decoded.format, glimpse_decoder::ImageFormat::Jpeg);
        decoded.rgb
    }

    /// Mean absolute difference per channel between `a` and `b` (same size).
    fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn sizes_keep_the_aspect_and_never_enlarge() {
        assert_eq!(thumbnail_size(400, 300, 256), (256, 192));
        assert_eq!(thumbnail_size(91, 150, 256), (91, 150));
        assert_eq!(thumbnail_size(256, 10, 256), (256, 10));
        assert_eq!(thumbnail_size(6000, 4000, 256), (256, 171)); // 170.67
        assert_eq!(thumbnail_size(10_000, 3, 256), (256, 1)); // 0.08 -> at least 1
        assert_eq!(thumbnail_size(301, 187, 100), (100, 62)); // 62.1
        assert_eq!(thumbnail_size(u32::MAX, u32::MAX, 256), (256, 256));
    }

    #[test]
    fn rotated_photo_gives_an_upright_downscaled_jpeg() {
        // exiv2-nikon-d70.jpg is stored 150x91 with orientation 6
        // (exiftool), so the upright image is 91x150.
        let decoded = decode_path(
            fixture("photos/exiv2-nikon-d70.jpg"),
            &PreprocessConfig::openai(224),
        )
        .expect("decodes");
        assert_eq!(decoded.rgb.dimensions(), (91, 150));
        let jpeg = make_thumbnail(&decoded.rgb, 64).expect("thumbnail");
        let thumb = decode_jpeg(&jpeg);
        assert_eq!(thumb.dimensions(), (39, 64)); // 91 * 64 / 150 = 38.8

        // The thumbnail looks like the photo: compare with the photo
        // downscaled by an independent filter (the image crate's
        // Catmull-Rom), allowing for JPEG loss (on these 39x64 pixels of
        // fine colour detail: 5.3 levels with full-resolution chroma, 6.4
        // with the 4:2:0 chroma thumbnails have).
        let reference = image::imageops::resize(
            &decoded.rgb,
            39,
            64,
            image::imageops::FilterType::CatmullRom,
        );
        let diff = mean_abs_diff(&thumb, &reference);
        assert!(diff < 7.5, "mean abs diff {diff}");
    }

    #[test]
    fn small_images_are_not_enlarged_and_default_size_is_256() {
        let decoded = decode_path(
            fixture("clip-tiny-hf/images/img7_photo_301x187.jpg"),
            &PreprocessConfig::openai(224),
        )
        .expect("decodes");
        let thumb =
            decode_jpeg(&make_thumbnail(&decoded.rgb, DEFAULT_THUMBNAIL_SIDE).expect("thumb"));
        assert_eq!(thumb.dimensions(), (256, 159)); // 187 * 256 / 301 = 159.04

        let small = decode_path(
            fixture("clip-tiny-hf/images/img5_small_17x23.jpg"),
            &PreprocessConfig::openai(224),
        )
        .expect("decodes");
        let jpeg = make_thumbnail(&small.rgb, DEFAULT_THUMBNAIL_SIDE).expect("thumb");
        let thumb = decode_jpeg(&jpeg);
        assert_eq!(thumb.dimensions(), (17, 23));
        // Unresized, so the only change is JPEG loss: on 17x23 pixels of
        // fine detail, quality 80 costs about 8 levels.
        let diff = mean_abs_diff(&thumb, &small.rgb);
        assert!(diff < 12.0, "mean abs diff {diff}");
    }

    #[test]
    fn transparent_png_thumbnail_is_opaque_on_white() {
        // The decoder composites alpha onto white (PreprocessConfig::openai);
        // the thumbnail, made from its output, is a plain RGB JPEG.
        let decoded = decode_path(
            fixture("clip-tiny-hf/images/img4_rgba_180x261.png"),
            &PreprocessConfig::openai(224),
        )
        .expect("decodes");
        assert!(decoded.had_alpha);
        let jpeg = make_thumbnail(&decoded.rgb, 128).expect("thumbnail");
        assert!(jpeg.starts_with(&[0xff, 0xd8, 0xff]), "a JPEG");
        assert_eq!(decode_jpeg(&jpeg).dimensions(), (88, 128)); // 180 * 128 / 261 = 88.3
    }

    #[test]
    fn zero_size_is_a_user_error() {
        let image = RgbImage::new(4, 4);
        let err = make_thumbnail(&image, 0).expect_err("0 px");
        assert!(matches!(err, IndexError::BadThumbnailSize { side: 0 }));
        assert!(err.is_user_error());
        let err = make_thumbnail(&image, 65_536).expect_err("over a JPEG's sides");
        assert!(matches!(err, IndexError::BadThumbnailSize { side: 65_536 }));
        assert!(err.to_string().contains("1 to 65535"), "{err}");
        assert!(make_thumbnail(&image, 65_535).is_ok());
        let err = make_thumbnail(&RgbImage::new(0, 0), 16).expect_err("empty");
        assert!(!err.is_user_error());
    }
}
