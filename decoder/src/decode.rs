//! From a file or a byte buffer to an oriented RGB image, refusing
//! decompression bombs and never panicking.

use std::any::Any;
use std::io::Cursor;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use glimpse_config::{AlphaMode, PreprocessConfig};
use image::error::{ImageError, LimitErrorKind, UnsupportedErrorKind};
use image::metadata::Orientation;
use image::{
    DynamicImage, GenericImageView, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage,
};

use crate::error::DecodeError;
use crate::jpeg;
use crate::png_rows;
use crate::rgb::{has_alpha, into_rgb8, into_rgb8_reduced};
use crate::sniff::{format_name, hex_prefix, sniff, Sniffed};
use crate::webp;

/// Memory the codecs may use beyond the decoded image itself.
const ALLOC_SLACK: u64 = 64 << 20;
/// The most bytes per pixel a codec may hand us before we check the header
/// (16-bit RGBA); used for the allocation limit set before the dimensions
/// are known.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// A decoded photo: upright 8-bit RGB plus what was learnt on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedImage {
    /// The pixels, EXIF orientation already applied and alpha handled per
    /// `PreprocessConfig::alpha`.
    pub rgb: RgbImage,
    /// The container format the content was decoded as.
    pub format: ImageFormat,
    /// Width as stored in the file, before orientation.
    pub source_width: u32,
    /// Height as stored in the file, before orientation.
    pub source_height: u32,
    /// The EXIF orientation that was applied (`NoTransforms` when the file
    /// has none); rotations by 90° swap width and height.
    pub orientation: Orientation,
    /// Whether the source had an alpha channel (composited or dropped).
    pub had_alpha: bool,
    /// By how much the pixels were reduced, while or just after decoding
    /// (1, 2, 4 or 8; see [`decode_bytes_reduced`]); 1 means full size.
    pub reduction: u32,
}

impl DecodedImage {
    /// Width of the upright image.
    pub fn width(&self) -> u32 {
        self.rgb.width()
    }

    /// Height of the upright image.
    pub fn height(&self) -> u32 {
        self.rgb.height()
    }
}

/// Reads and decodes an image file. The format is recognised from the
/// content (the extension is only a fallback when the content is not
/// recognisable). See [`decode_bytes`] for what is done to the pixels.
///
/// Every error names `path`.
pub fn decode_path(
    path: impl AsRef<Path>,
    cfg: &PreprocessConfig,
) -> Result<DecodedImage, DecodeError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            DecodeError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            DecodeError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })?;
    let hint = ImageFormat::from_path(path).ok();
    decode(&bytes, hint, cfg, None).map_err(|e| e.with_path(path))
}

/// Decodes an image held in memory, recognising the format from the content.
///
/// - JPEG, PNG, WebP, GIF (first frame), TIFF and BMP are decoded; HEIC,
///   AVIF, JPEG XL and others are recognised and refused with
///   [`DecodeError::Unsupported`].
/// - The header's `width * height` is checked against `cfg.max_pixels`
///   before any pixel buffer is allocated, and the `image` crate's codecs'
///   allocations are capped (`image::Limits::max_alloc`); libwebp, which
///   has no such cap, needs at most a few bytes per pixel of an image
///   within `max_pixels`.
/// - The EXIF orientation (JPEG, PNG, WebP, TIFF) is applied, so the image
///   is upright. (The HF reference does not do this; for files without an
///   orientation tag the results are identical.)
/// - The pixels become 8-bit RGB with alpha handled per `cfg.alpha`.
/// - A panic inside a codec is caught and reported as
///   [`DecodeError::Corrupt`]: no input makes this function panic.
pub fn decode_bytes(bytes: &[u8], cfg: &PreprocessConfig) -> Result<DecodedImage, DecodeError> {
    decode(bytes, None, cfg, None)
}

/// [`decode_bytes`], except that an image large enough is reduced — by 1/2,
/// 1/4 or 1/8, the most that keeps the shortest side (rounded up, as libjpeg
/// does) at least `min_side` — a JPEG or still WebP while it is decoded,
/// any other image just after (below). A JPEG is reduced in
/// the DCT domain, as libjpeg-turbo does for Pillow's `draft()`, with the
/// same output bit for bit. Entropy decoding still reads every coefficient
/// (except, at 1/8, the AC scans of a progressive file's 1x1-reduced
/// components, which nothing reads: most of such a file), but the inverse
/// DCT, chroma upsampling and colour conversion run on 1/4 to 1/64 of the
/// pixels, and so does whatever resizes the result: for a 12-megapixel
/// photo, decoding plus CLIP preprocessing becomes several times cheaper.
///
/// The pixels are *not* those of a full-size decode followed by a resize:
/// the reduced IDCT averages blocks of 2x2 to 8x8 samples. With `min_side`
/// at the model's input size (`glimpse index` uses that or the thumbnail
/// side, whichever is larger: 256 by default) the preprocessed pixels
/// differ from the reference's by about one 8-bit level on average (see
/// the README's measurements).
/// A still WebP is reduced the same way (1/2, 1/4 or 1/8, same rule) by
/// libwebp's area-averaging rescaler, which skips the colour conversion of
/// the full-size rows — unless it has alpha and `cfg.alpha` is
/// [`AlphaMode::Drop`] (the rescaler premultiplies, losing the colour under
/// transparent pixels that `Drop` shows). Other formats, animated WebPs,
/// WebPs with alpha under `Drop` and JPEGs this crate's exact decoder declines are decoded
/// at full size and then reduced by the same factor, averaging each 2x2 to
/// 8x8 block (after alpha is handled, same output size; a non-interlaced
/// PNG row by row as it is inflated, never held at full size): that saves
/// no decoding, but the model's resize and the thumbnail's then start from a
/// quarter to a sixty-fourth of the pixels. [`DecodedImage::reduction`]
/// says by how much the pixels were reduced.
pub fn decode_bytes_reduced(
    bytes: &[u8],
    cfg: &PreprocessConfig,
    min_side: u32,
) -> Result<DecodedImage, DecodeError> {
    decode(bytes, None, cfg, Some(min_side.max(1)))
}

fn decode(
    bytes: &[u8],
    extension_hint: Option<ImageFormat>,
    cfg: &PreprocessConfig,
    min_side: Option<u32>,
) -> Result<DecodedImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty { path: None });
    }
    let format = match sniff(bytes) {
        Sniffed::Known(format) => format,
        Sniffed::Unsupported { format, detail } => {
            return Err(DecodeError::Unsupported {
                path: None,
                format: format.to_string(),
                detail: detail.to_string(),
            })
        }
        Sniffed::Unknown => match extension_hint {
            Some(format) => format,
            None => {
                return Err(DecodeError::UnknownFormat {
                    path: None,
                    first_bytes: hex_prefix(bytes),
                })
            }
        },
    };
    catch_unwind(AssertUnwindSafe(|| decode_as(bytes, format, cfg, min_side))).unwrap_or_else(
        |panic| {
            Err(DecodeError::Corrupt {
                path: None,
                format: format_name(format),
                message: format!(
                    "the decoder crashed ({}); the file is most likely damaged",
                    panic_message(&panic)
                ),
            })
        },
    )
}

fn panic_message(panic: &Box<dyn Any + Send>) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "panic"
    }
}

fn limits(max_alloc: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_alloc = Some(max_alloc);
    limits
}

fn decode_as(
    bytes: &[u8],
    format: ImageFormat,
    cfg: &PreprocessConfig,
    min_side: Option<u32>,
) -> Result<DecodedImage, DecodeError> {
    let fail = |e| map_image_error(e, format);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    // Before the header is read, allow what the largest permitted image
    // could need (the PNG codec takes its limits at construction).
    let max_alloc = cfg
        .max_pixels
        .saturating_mul(MAX_BYTES_PER_PIXEL)
        .saturating_add(ALLOC_SLACK);
    reader.limits(limits(max_alloc));
    let mut decoder = reader.into_decoder().map_err(fail)?;

    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > cfg.max_pixels {
        return Err(DecodeError::TooManyPixels {
            path: None,
            width,
            height,
            limit: cfg.max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(DecodeError::Corrupt {
            path: None,
            format: format_name(format),
            message: format!("the header says the image is {width}x{height}"),
        });
    }
    // Now that the size is known, cap the codec at twice the decoded image.
    decoder
        .set_limits(limits(
            decoder
                .total_bytes()
                .saturating_mul(2)
                .saturating_add(ALLOC_SLACK),
        ))
        .map_err(fail)?;
    // A malformed EXIF block is no reason to lose the photo.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);

    let wanted = min_side.map_or(1, |min_side| reduction_for((width, height), min_side));
    let exact = if format == ImageFormat::Jpeg {
        reduced_or_full(wanted, |r| {
            libjpeg_turbo_exact(bytes, (width, height), r).map(|image| (image, r))
        })
    } else if format == ImageFormat::WebP {
        // Alpha composited onto white hides the colour that libwebp's
        // rescaler loses under transparent pixels; `Drop` shows it.
        let reduce_with_alpha = cfg.alpha != AlphaMode::Drop;
        reduced_or_full(wanted, |r| {
            webp::decode(bytes, (width, height), r, reduce_with_alpha)
        })
    } else {
        None
    };
    // A large PNG: rows averaged down as they are decoded.
    let streamed = (exact.is_none() && format == ImageFormat::Png && wanted > 1)
        .then(|| png_rows::decode_reduced(bytes, (width, height), wanted, cfg.alpha, max_alloc))
        .flatten();
    let (rgb, had_alpha, reduction) = match streamed {
        Some((rgb, had_alpha)) => (rgb, had_alpha, wanted),
        None => {
            let (image, reduction) = match exact {
                Some(decoded) => decoded,
                None => (DynamicImage::from_decoder(decoder).map_err(fail)?, 1),
            };
            let had_alpha = has_alpha(&image);
            // Decoded at full size where a reduction was asked for:
            // averaged down now (with the alpha handling, in one pass),
            // before orientation, pixels and thumbnail all work on it.
            if reduction == 1 && wanted > 1 {
                (
                    into_rgb8_reduced(image, cfg.alpha, wanted),
                    had_alpha,
                    wanted,
                )
            } else {
                (into_rgb8(image, cfg.alpha), had_alpha, reduction)
            }
        }
    };
    let rgb = if orientation == Orientation::NoTransforms {
        rgb
    } else {
        let mut upright = DynamicImage::ImageRgb8(rgb);
        upright.apply_orientation(orientation);
        upright.into_rgb8()
    };
    Ok(DecodedImage {
        rgb,
        format,
        source_width: width,
        source_height: height,
        orientation,
        had_alpha,
        reduction,
    })
}

/// The largest reduction (1, 2, 4 or 8) that keeps the shortest side
/// of a `(width, height)` image at least `min_side`.
fn reduction_for((width, height): (u32, u32), min_side: u32) -> u32 {
    let shortest = width.min(height);
    [8, 4, 2]
        .into_iter()
        .find(|&r| shortest.div_ceil(r) >= min_side)
        .unwrap_or(1)
}

/// `decode(reduction)` — one of the codecs that reproduce Pillow (this
/// crate's JPEG decoder, libwebp), returning the image and the reduction it
/// made — or, when it declines a reduced decode, `decode(1)`: a variant the
/// reduced path declines may still decode at full size. `None` (a panic
/// counts as declining) sends the caller to the `image` crate's decoder.
fn reduced_or_full(
    reduction: u32,
    decode: impl Fn(u32) -> Option<(DynamicImage, u32)>,
) -> Option<(DynamicImage, u32)> {
    let attempt = |r| catch_unwind(AssertUnwindSafe(|| decode(r))).ok().flatten();
    attempt(reduction).or_else(|| (reduction > 1).then(|| attempt(1)).flatten())
}

/// Decodes a JPEG with the libjpeg-turbo-exact decoder, or `None` when it
/// declines (unsupported variant, damaged data), in which case the `image`
/// crate's decoder is used.
fn libjpeg_turbo_exact(
    bytes: &[u8],
    (width, height): (u32, u32),
    reduction: u32,
) -> Option<DynamicImage> {
    let image = jpeg::decode_reduced(bytes, reduction as usize).ok()?;
    (image.dimensions() == (width.div_ceil(reduction), height.div_ceil(reduction))).then_some(image)
}

fn map_image_error(e: ImageError, format: ImageFormat) -> DecodeError {
    let name = format_name(format);
    let corrupt = |message: String| DecodeError::Corrupt {
        path: None,
        format: name,
        message,
    };
    match e {
        ImageError::Unsupported(u) => {
            let variant = format!("this kind of {name}");
            let (format, detail) = match u.kind() {
                UnsupportedErrorKind::Format(_) => {
                    (name.to_string(), "no decoder for it is compiled in".to_string())
                }
                UnsupportedErrorKind::Color(c) => (variant, format!("colour type {c:?}")),
                UnsupportedErrorKind::GenericFeature(f) => (variant, f),
                _ => (variant, u.to_string()),
            };
            DecodeError::Unsupported {
                path: None,
                format,
                detail,
            }
        }
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::InsufficientMemory => corrupt(format!(
                "decoding it would need more memory than allowed for an image of its size ({l}); the file is probably malformed"
            )),
            _ => corrupt(l.to_string()),
        },
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            corrupt("the data ends unexpectedly (truncated file)".to_string())
        }
        other => corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixels::to_pixels;
    use crate::reduce::area_reduce;
    use glimpse_config::AlphaMode;
    use image::codecs::jpeg::JpegEncoder;
    use image::{Rgb, Rgba, RgbaImage};

    fn cfg() -> PreprocessConfig {
        let mut c = PreprocessConfig::openai(224);
        c.alpha = AlphaMode::Drop;
        c
    }

    fn png_bytes(img: &DynamicImage) -> Vec<u8> {
        let mut buf = Cursor::new(Vec::new());
        img.write_to(&mut buf, ImageFormat::Png).unwrap();
        buf.into_inner()
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    /// A PNG with a valid header announcing `w` x `h` and a few bytes of
    /// (bogus) image data: a decompression bomb's shape.
    fn png_header(w: u32, h: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            out.extend_from_slice(&body);
            out.extend_from_slice(&crc32(&body).to_be_bytes());
        };
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&w.to_be_bytes());
        ihdr.extend_from_slice(&h.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        chunk(b"IHDR", &ihdr);
        chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00]);
        chunk(b"IEND", &[]);
        out
    }

    /// A JPEG of `img` with an EXIF APP1 segment carrying `orientation`.
    fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
        let mut jpeg = Vec::new();
        JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode_image(img)
            .unwrap();
        let mut app1 = vec![0xFF, 0xE1, 0, 34];
        app1.extend_from_slice(b"Exif\0\0II*\0\x08\0\0\0"); // TIFF header, IFD at 8
        app1.extend_from_slice(&[1, 0]); // one entry
        app1.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0]); // Orientation, SHORT, 1
        app1.extend_from_slice(&orientation.to_le_bytes());
        app1.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, next IFD = 0
        assert_eq!(app1.len(), 36);
        jpeg.splice(2..2, app1);
        jpeg
    }

    #[test]
    fn decodes_png_and_reports_metadata() {
        let img = RgbaImage::from_fn(3, 2, |x, y| Rgba([x as u8 * 50, y as u8 * 50, 7, 0]));
        let bytes = png_bytes(&DynamicImage::ImageRgba8(img));
        let d = decode_bytes(&bytes, &cfg()).unwrap();
        assert_eq!((d.width(), d.height()), (3, 2));
        assert_eq!(d.format, ImageFormat::Png);
        assert!(d.had_alpha);
        assert_eq!(d.orientation, Orientation::NoTransforms);
        assert_eq!(d.rgb.get_pixel(2, 1).0, [100, 50, 7]);
        let mut white = cfg();
        white.alpha = AlphaMode::White;
        let d = decode_bytes(&bytes, &white).unwrap();
        assert!(d.rgb.pixels().all(|p| p.0 == [255, 255, 255]));
    }

    #[test]
    fn applies_exif_orientation() {
        // 16x8: left half red, right half blue.
        let img = RgbImage::from_fn(16, 8, |x, _| {
            if x < 8 {
                Rgb([255, 0, 0])
            } else {
                Rgb([0, 0, 255])
            }
        });
        let near = |p: [u8; 3], q: [u8; 3]| p.iter().zip(q).all(|(&a, b)| a.abs_diff(b) < 16);
        let plain = decode_bytes(&jpeg_with_orientation(&img, 1), &cfg()).unwrap();
        assert_eq!((plain.width(), plain.height()), (16, 8));
        // 6 = rotate 90 degrees clockwise: the left half ends up on top.
        let d = decode_bytes(&jpeg_with_orientation(&img, 6), &cfg()).unwrap();
        assert_eq!(d.orientation, Orientation::Rotate90);
        assert_eq!((d.width(), d.height()), (8, 16));
        assert_eq!((d.source_width, d.source_height), (16, 8));
        assert!(
            near(d.rgb.get_pixel(4, 3).0, [255, 0, 0]),
            "{:?}",
            d.rgb.get_pixel(4, 3)
        );
        assert!(near(d.rgb.get_pixel(4, 12).0, [0, 0, 255]));
        // 8 = rotate 270: the left half ends up at the bottom.
        let d = decode_bytes(&jpeg_with_orientation(&img, 8), &cfg()).unwrap();
        assert_eq!((d.width(), d.height()), (8, 16));
        assert!(near(d.rgb.get_pixel(4, 12).0, [255, 0, 0]));
        // 3 = rotate 180, exactly the unrotated pixels reversed.
        let d = decode_bytes(&jpeg_with_orientation(&img, 3), &cfg()).unwrap();
        assert_eq!(d.rgb.get_pixel(0, 0), plain.rgb.get_pixel(15, 7));
    }

    #[test]
    fn refuses_decompression_bombs_before_allocating() {
        let bomb = png_header(100_000, 100_000);
        match decode_bytes(&bomb, &cfg()) {
            Err(DecodeError::TooManyPixels {
                width: 100_000,
                height: 100_000,
                limit,
                ..
            }) => assert_eq!(limit, glimpse_config::PILLOW_MAX_PIXELS),
            other => panic!("{other:?}"),
        }
        // The limit is the config's.
        let mut small = cfg();
        small.max_pixels = 99;
        let bytes = png_bytes(&DynamicImage::ImageRgb8(RgbImage::new(10, 10)));
        assert!(matches!(
            decode_bytes(&bytes, &small),
            Err(DecodeError::TooManyPixels {
                width: 10,
                height: 10,
                limit: 99,
                ..
            })
        ));
        small.max_pixels = 100;
        assert!(decode_bytes(&bytes, &small).is_ok());
        // A header within limits but no pixel data is corrupt, not a panic.
        assert!(matches!(
            decode_bytes(&png_header(1000, 1000), &cfg()),
            Err(DecodeError::Corrupt { format: "PNG", .. })
        ));
    }

    #[test]
    fn corrupt_and_unknown_inputs() {
        assert!(matches!(
            decode_bytes(b"", &cfg()),
            Err(DecodeError::Empty { path: None })
        ));
        assert!(matches!(
            decode_bytes(b"just some text\n", &cfg()),
            Err(DecodeError::UnknownFormat { .. })
        ));
        let jpeg = jpeg_with_orientation(&RgbImage::new(64, 64), 1);
        for cut in [3, 20, 100, jpeg.len() / 2] {
            let e = decode_bytes(&jpeg[..cut], &cfg());
            assert!(
                matches!(e, Err(DecodeError::Corrupt { format: "JPEG", .. })),
                "cut at {cut}: {e:?}"
            );
        }
        let png = png_bytes(&DynamicImage::ImageRgb8(RgbImage::new(64, 64)));
        for cut in [9, 30, png.len() - 13] {
            let e = decode_bytes(&png[..cut], &cfg());
            assert!(
                matches!(e, Err(DecodeError::Corrupt { format: "PNG", .. })),
                "cut at {cut}: {e:?}"
            );
        }
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        let e = decode_bytes(heic, &cfg()).unwrap_err();
        assert!(
            e.to_string()
                .contains("HEIC/HEIF is not supported in this build"),
            "{e}"
        );
    }

    #[test]
    fn garbage_never_panics() {
        // Random mutations of valid files, through every codec.
        let img = RgbImage::from_fn(20, 13, |x, y| Rgb([x as u8 * 9, y as u8 * 17, 99]));
        let mut seeds = Vec::new();
        for format in [
            ImageFormat::Png,
            ImageFormat::Gif,
            ImageFormat::Bmp,
            ImageFormat::Tiff,
            ImageFormat::WebP,
        ] {
            let mut buf = Cursor::new(Vec::new());
            DynamicImage::ImageRgb8(img.clone())
                .write_to(&mut buf, format)
                .unwrap();
            seeds.push(buf.into_inner());
        }
        seeds.push(jpeg_with_orientation(&img, 6));
        let mut s = 0x9E37_79B9u32;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            s
        };
        for seed in &seeds {
            for _ in 0..200 {
                let mut b = seed.clone();
                for _ in 0..1 + next() % 8 {
                    let i = next() as usize % b.len();
                    b[i] = next() as u8;
                }
                if next() % 4 == 0 {
                    b.truncate(next() as usize % b.len());
                }
                let _ = decode_bytes(&b, &cfg());
            }
        }
    }

    #[test]
    fn path_errors() {
        let missing = Path::new("/definitely/not/here.jpg");
        let e = decode_path(missing, &cfg()).unwrap_err();
        assert!(matches!(e, DecodeError::NotFound { .. }));
        assert!(e.to_string().contains("/definitely/not/here.jpg"), "{e}");

        let dir = std::env::temp_dir();
        let e = decode_path(&dir, &cfg()).unwrap_err();
        assert!(matches!(e, DecodeError::Io { .. }), "{e:?}");
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");

        let tmp = dir.join(format!("glimpse-decoder-test-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let empty = tmp.join("empty.jpg");
        std::fs::write(&empty, b"").unwrap();
        let e = decode_path(&empty, &cfg()).unwrap_err();
        assert!(matches!(e, DecodeError::Empty { .. }));
        assert!(e.to_string().contains("empty.jpg"), "{e}");

        let text = tmp.join("notes.txt");
        std::fs::write(&text, b"hello, not an image").unwrap();
        let e = decode_path(&text, &cfg()).unwrap_err();
        assert!(matches!(e, DecodeError::UnknownFormat { .. }), "{e:?}");
        assert!(e.to_string().contains("notes.txt"), "{e}");

        // Text named like a JPEG: the extension makes the JPEG codec try.
        let fake = tmp.join("fake.jpg");
        std::fs::write(&fake, b"hello, not an image").unwrap();
        let e = decode_path(&fake, &cfg()).unwrap_err();
        assert!(
            matches!(e, DecodeError::Corrupt { format: "JPEG", .. }),
            "{e:?}"
        );

        // A PNG named .jpg decodes as the PNG it is.
        let png = tmp.join("really-a-png.jpg");
        std::fs::write(
            &png,
            png_bytes(&DynamicImage::ImageRgb8(RgbImage::new(2, 2))),
        )
        .unwrap();
        assert_eq!(decode_path(&png, &cfg()).unwrap().format, ImageFormat::Png);
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn gif_first_frame() {
        use image::codecs::gif::GifEncoder;
        use image::{Delay, Frame};
        let mut bytes = Vec::new();
        {
            let mut enc = GifEncoder::new(&mut bytes);
            for v in [10u8, 200] {
                let f = Frame::from_parts(
                    RgbaImage::from_pixel(4, 3, Rgba([v, v, v, 255])),
                    0,
                    0,
                    Delay::from_numer_denom_ms(100, 1),
                );
                enc.encode_frame(f).unwrap();
            }
        }
        let d = decode_bytes(&bytes, &cfg()).unwrap();
        assert_eq!(d.format, ImageFormat::Gif);
        assert_eq!((d.width(), d.height()), (4, 3));
        assert!(
            d.rgb.pixels().all(|p| p.0 == [10, 10, 10]),
            "{:?}",
            d.rgb.get_pixel(0, 0)
        );
    }

    fn fixture_photo(name: &str) -> Vec<u8> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn reduction_keeps_the_shortest_side() {
        assert_eq!(reduction_for((1500, 1000), 448), 2);
        assert_eq!(reduction_for((1500, 1000), 224), 4);
        assert_eq!(reduction_for((6000, 4000), 448), 8);
        assert_eq!(reduction_for((1000, 6000), 448), 2);
        assert_eq!(reduction_for((894, 2000), 448), 1);
        assert_eq!(reduction_for((895, 2000), 448), 2);
        assert_eq!(reduction_for((896, 896), 448), 2);
        // ceil(1793 / 4) = 449.
        assert_eq!(reduction_for((1793, 1793), 448), 4);
        assert_eq!(reduction_for((10, 10), 1), 8);
    }

    /// Real photos decoded reduced, then preprocessed, stay close to the
    /// full-size decode's pixels (normalised units: one 8-bit level is
    /// about 0.015); small photos are not reduced.
    #[test]
    fn reduced_decoding_stays_near_the_full_size_pixels() {
        let cfg = cfg();
        for (name, expected) in [
            ("tests/data/large/exiv2-bug876.jpg", (750, 500)),
            ("tests/data/large/mate-FreshFlower.jpg", (800, 602)),
        ] {
            let bytes = fixture_photo(name);
            let full = decode_bytes(&bytes, &cfg).unwrap();
            assert_eq!(full.reduction, 1);
            let reduced = decode_bytes_reduced(&bytes, &cfg, 448).unwrap();
            assert_eq!(reduced.reduction, 2, "{name}");
            assert_eq!(reduced.rgb.dimensions(), expected, "{name}");
            assert_eq!(
                (reduced.source_width, reduced.source_height),
                (full.source_width, full.source_height)
            );
            let (a, b) = (to_pixels(&full.rgb, &cfg), to_pixels(&reduced.rgb, &cfg));
            let diffs: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
            let max = diffs.iter().copied().fold(0f32, f32::max);
            let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
            assert!(max > 0.0, "{name}: reduced decoding changed nothing");
            assert!(max < 0.5 && mean < 0.01, "{name}: max {max}, mean {mean}");
        }
        let small = fixture_photo("../tests/fixtures/photos/skimage-rocket.jpg");
        let d = decode_bytes_reduced(&small, &cfg, 448).unwrap();
        assert_eq!((d.reduction, d.rgb.dimensions()), (1, (640, 427)));
        assert_eq!(d, decode_bytes(&small, &cfg).unwrap());
    }

    /// A large image of a format no codec reduces (PNG) is decoded at full
    /// size and averaged down by the same rule, to the same size a reduced
    /// JPEG has, its model pixels staying near the full size's; with alpha
    /// the averaging comes after the alpha handling.
    #[test]
    fn other_formats_are_averaged_down_after_decoding() {
        let cfg = cfg();
        let photo = decode_bytes(&fixture_photo("tests/data/large/exiv2-bug876.jpg"), &cfg)
            .unwrap()
            .rgb;
        assert_eq!(photo.dimensions(), (1500, 1000));
        let png = png_bytes(&DynamicImage::ImageRgb8(photo.clone()));
        let full = decode_bytes(&png, &cfg).unwrap();
        assert_eq!((full.reduction, &full.rgb), (1, &photo));
        let reduced = decode_bytes_reduced(&png, &cfg, 448).unwrap();
        assert_eq!(reduced.reduction, 2);
        assert_eq!(reduced.rgb, area_reduce(photo.clone(), 2));
        assert_eq!((reduced.source_width, reduced.source_height), (1500, 1000));
        let (a, b) = (to_pixels(&full.rgb, &cfg), to_pixels(&reduced.rgb, &cfg));
        let diffs: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
        let max = diffs.iter().copied().fold(0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        assert!(
            max > 0.0 && max < 0.5 && mean < 0.01,
            "max {max}, mean {mean}"
        );
        // Half-transparent black over white: grey, then averaged.
        let white = PreprocessConfig {
            alpha: AlphaMode::White,
            ..cfg.clone()
        };
        let rgba = RgbaImage::from_pixel(1000, 600, image::Rgba([0, 0, 0, 128]));
        let d =
            decode_bytes_reduced(&png_bytes(&DynamicImage::ImageRgba8(rgba)), &white, 224).unwrap();
        assert_eq!(
            (d.reduction, d.rgb.dimensions(), d.had_alpha),
            (2, (500, 300), true)
        );
        assert!(
            d.rgb.pixels().all(|p| p.0 == [127, 127, 127]),
            "{:?}",
            d.rgb.get_pixel(0, 0)
        );
        // A damaged large PNG fails as it does at full size.
        let cut = &png[..png.len() / 2];
        assert_eq!(
            decode_bytes_reduced(cut, &cfg, 448)
                .unwrap_err()
                .to_string(),
            decode_bytes(cut, &cfg).unwrap_err().to_string()
        );
        // Small images stay as they are.
        let small = png_bytes(&DynamicImage::ImageRgb8(RgbImage::new(400, 300)));
        assert_eq!(
            decode_bytes_reduced(&small, &cfg, 224).unwrap().reduction,
            1
        );
    }
}
