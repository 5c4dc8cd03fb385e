//! A large PNG decoded row by row straight into its reduced image, for
//! [`decode_bytes_reduced`](crate::decode_bytes_reduced).
//!
//! What it is for: the `image` crate decodes a PNG into one full-size
//! buffer (zeroed first), which the decoder then converts to RGB (another
//! full-size buffer) and averages down — three passes over megabytes that
//! no longer fit in cache. Here each row, as the `png` crate inflates and
//! unfilters it, is converted and added to the column sums of its band, so
//! the only full-size data is the compressed file: a 1920x1440 RGBA
//! wallpaper needs one row of memory instead of 19 MB. It is not much
//! faster (inflating and unfiltering dominate). The pixels are exactly
//! those of the full-size path (same codec settings as `image`'s PNG
//! decoder, same conversion, same averaging).
//!
//! It does not handle interlaced PNGs (their rows come in seven passes),
//! nor report errors: it declines (`None`) and the caller decodes the file
//! the usual way, which reports whatever is wrong with it.

use std::io::Cursor;

use glimpse_config::AlphaMode;
use image::RgbImage;
use png::{BitDepth, ColorType, Transformations};

use crate::reduce::AreaReducer;
use crate::rgb::{row_into_rgb8, RowLayout};

/// `bytes` (a PNG of `width` x `height`) reduced by `r`, with the alpha
/// handled per `alpha`, and whether it had alpha; `None` where this path
/// declines (interlaced, a size other than announced, any decoding error).
/// `max_bytes` caps the codec's allocations, as for the `image` decoder.
pub(crate) fn decode_reduced(
    bytes: &[u8],
    (width, height): (u32, u32),
    r: u32,
    alpha: AlphaMode,
    max_bytes: u64,
) -> Option<(RgbImage, bool)> {
    let limits = png::Limits {
        bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
    };
    let mut decoder = png::Decoder::new_with_limits(Cursor::new(bytes), limits);
    // As `image`'s PNG decoder sets it up: the same chunks read, bit depths
    // below 8 and palettes expanded, 16-bit kept.
    decoder.set_ignore_text_chunk(false);
    decoder.set_transformations(Transformations::EXPAND);
    let mut reader = decoder.read_info().ok()?;
    let info = reader.info();
    if info.interlaced || (info.width, info.height) != (width, height) {
        return None;
    }
    let layout = match reader.output_color_type() {
        (color, depth @ (BitDepth::Eight | BitDepth::Sixteen)) => RowLayout {
            channels: match color {
                ColorType::Grayscale => 1,
                ColorType::GrayscaleAlpha => 2,
                ColorType::Rgb => 3,
                ColorType::Rgba => 4,
                ColorType::Indexed => return None,
            },
            wide: depth == BitDepth::Sixteen,
        },
        _ => return None,
    };
    let row_len = usize::try_from(width).ok()?.checked_mul(3)?;
    let mut rgb = vec![0u8; row_len];
    let mut reducer = AreaReducer::new(width, height, r);
    let mut rows = 0u32;
    while let Some(row) = reader.next_row().ok()? {
        if rows == height {
            return None;
        }
        row_into_rgb8(row.data(), layout, alpha, &mut rgb);
        reducer.add_row(&rgb);
        rows += 1;
    }
    (rows == height).then(|| (reducer.finish(), layout.has_alpha()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::area_reduce;
    use crate::rgb::into_rgb8;
    use image::ImageFormat;

    /// A PNG of `w` x `h` pseudo-random samples (every value and every
    /// alpha occur) in `color` at `depth`; palettes get a tRNS chunk.
    fn png(w: u32, h: u32, color: ColorType, depth: BitDepth, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        };
        let samples = match color {
            ColorType::Grayscale | ColorType::Indexed => 1,
            ColorType::GrayscaleAlpha => 2,
            ColorType::Rgb => 3,
            ColorType::Rgba => 4,
        };
        let bits = samples * depth as usize;
        let row_bytes = (w as usize * bits).div_ceil(8);
        let data: Vec<u8> = (0..row_bytes * h as usize).map(|_| next()).collect();
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, w, h);
        encoder.set_color(color);
        encoder.set_depth(depth);
        if color == ColorType::Indexed {
            let entries = 1usize << (depth as usize);
            encoder.set_palette((0..entries * 3).map(|_| next()).collect::<Vec<u8>>());
            encoder.set_trns((0..entries / 2).map(|_| next()).collect::<Vec<u8>>());
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&data).unwrap();
        writer.finish().unwrap();
        out
    }

    /// The full-size path: the `image` crate's decode, converted, averaged.
    fn full_then_reduced(bytes: &[u8], r: u32, alpha: AlphaMode) -> (RgbImage, bool) {
        let image = image::load_from_memory_with_format(bytes, ImageFormat::Png).unwrap();
        let had_alpha = image.color().has_alpha();
        (area_reduce(into_rgb8(image, alpha), r), had_alpha)
    }

    #[test]
    fn every_layout_gives_the_full_size_paths_pixels() {
        use BitDepth::{Eight, One, Sixteen, Two};
        let layouts = [
            (ColorType::Grayscale, One),
            (ColorType::Grayscale, Eight),
            (ColorType::Grayscale, Sixteen),
            (ColorType::GrayscaleAlpha, Eight),
            (ColorType::GrayscaleAlpha, Sixteen),
            (ColorType::Rgb, Eight),
            (ColorType::Rgb, Sixteen),
            (ColorType::Rgba, Eight),
            (ColorType::Rgba, Sixteen),
            (ColorType::Indexed, Two),
            (ColorType::Indexed, Eight),
        ];
        for (i, (color, depth)) in layouts.into_iter().enumerate() {
            for (w, h) in [(61, 47), (16, 16), (1, 9)] {
                let bytes = png(w, h, color, depth, i as u32 * 1000 + w);
                for r in [2, 4, 8] {
                    for alpha in [AlphaMode::Drop, AlphaMode::White] {
                        let ours = decode_reduced(&bytes, (w, h), r, alpha, u64::MAX);
                        assert_eq!(
                            ours,
                            Some(full_then_reduced(&bytes, r, alpha)),
                            "{color:?} {depth:?} {w}x{h} / {r} {alpha:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let bytes = png(40, 30, ColorType::Rgba, BitDepth::Eight, 5);
        let ok = |b: &[u8], size| decode_reduced(b, size, 2, AlphaMode::White, u64::MAX);
        assert!(ok(&bytes, (40, 30)).is_some());
        // Not the size the caller read from the header.
        assert_eq!(ok(&bytes, (40, 31)), None);
        // Truncated: the caller's full decode reports it.
        assert_eq!(ok(&bytes[..bytes.len() - 40], (40, 30)), None);
        assert_eq!(ok(&bytes[..20], (40, 30)), None);
        // Over the allocation cap.
        assert_eq!(
            decode_reduced(&bytes, (40, 30), 2, AlphaMode::White, 100),
            None
        );
        // Interlaced (Adam7).
        let interlaced = std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/png/pngtest-interlaced.png"),
        )
        .unwrap();
        assert_eq!(ok(&interlaced, (91, 69)), None);
    }
}
