//! Pillow-exact bicubic resizing and HF-style centre cropping.
//!
//! The resampler is a port of Pillow's `ImagingResample` (`Resample.c`) for
//! 8-bit images: separable convolution with the bicubic kernel (`a = -0.5`,
//! support 2, widened by the downscale factor), coefficients normalised in
//! `f64` then turned into 22-bit fixed point (`PRECISION_BITS = 32 - 8 - 2`),
//! horizontal pass first, each pass rounding and clipping to `u8`. The
//! result is bit-identical to `Image.resize((w, h), Image.BICUBIC)`.
//!
//! `fast_image_resize` is not used for this: its Pillow-SIMD-style kernels
//! keep coefficients in 16 bits, so it differs from Pillow by up to 2
//! levels when downscaling and up to 12 when upscaling on the reference
//! images (measured in `tests/reference.rs`).

use std::borrow::Cow;
use std::ops::Range;

use image::RgbImage;

/// Fixed-point precision of the coefficients (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;
/// Support of the bicubic kernel at scale 1.
const BICUBIC_SUPPORT: f64 = 2.0;

/// Pillow's `bicubic_filter` with `a = -0.5`.
#[inline]
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point convolution weights for a range of output positions along one
/// axis.
struct Coefficients {
    /// Per output position: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` weights per output position (only the first `taps` are used).
    weights: Vec<i32>,
    /// Stride of `weights`.
    ksize: usize,
}

impl Coefficients {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for an axis of
    /// `in_size` input samples resized to `out_size`, restricted to the
    /// output positions `wanted` (the values are those of the full resize).
    fn new(in_size: usize, out_size: u64, wanted: Range<u64>) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = BICUBIC_SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let n = (wanted.end - wanted.start) as usize;
        let mut bounds = Vec::with_capacity(n);
        let mut weights = vec![0i32; n * ksize];
        let mut k = vec![0f64; ksize];
        let ss = 1.0 / filterscale;
        for (i, xx) in wanted.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's `(int)` truncates towards zero, as does `as`.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let taps = xmax.saturating_sub(xmin).min(ksize);
            let mut ww = 0.0;
            for (x, kx) in k[..taps].iter_mut().enumerate() {
                let w = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let out = &mut weights[i * ksize..i * ksize + taps];
            for (o, &w) in out.iter_mut().zip(&k[..taps]) {
                let w = if ww != 0.0 { w / ww } else { w };
                let fixed = w * f64::from(1u32 << PRECISION_BITS);
                *o = if w < 0.0 {
                    (-0.5 + fixed) as i32
                } else {
                    (0.5 + fixed) as i32
                };
            }
            bounds.push((xmin, taps));
        }
        Self {
            bounds,
            weights,
            ksize,
        }
    }

    #[inline]
    fn get(&self, i: usize) -> (usize, &[i32]) {
        let (start, taps) = self.bounds[i];
        (start, &self.weights[i * self.ksize..i * self.ksize + taps])
    }

    /// The input range touched by all output positions.
    fn input_span(&self) -> Range<usize> {
        let start = self.bounds.iter().map(|b| b.0).min().unwrap_or(0);
        let end = self.bounds.iter().map(|b| b.0 + b.1).max().unwrap_or(0);
        start..end.max(start)
    }
}

/// Pillow's `clip8`: drop the fraction, clamp to 0..=255.
#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding offset each accumulator starts from.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// A packed RGB8 raster (rows of `width * 3` bytes).
struct Raster<'a> {
    data: Cow<'a, [u8]>,
    width: usize,
}

/// The horizontal pass over `rows` of `src`, producing one output pixel per
/// entry of `coeffs`: `Resample.c`'s loop, or its AVX2 form where the CPU
/// has AVX2 (bit-identical, see [`horizontal_avx2`]).
fn horizontal(src: &[u8], src_width: usize, rows: Range<usize>, coeffs: &Coefficients) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { horizontal_avx2(src, src_width, rows, coeffs) };
    }
    horizontal_scalar(src, src_width, rows, coeffs)
}

/// `Resample.c`'s horizontal pass as written there, one output pixel and
/// one tap at a time.
fn horizontal_scalar(
    src: &[u8],
    src_width: usize,
    rows: Range<usize>,
    coeffs: &Coefficients,
) -> Vec<u8> {
    let out_w = coeffs.bounds.len();
    let mut out = vec![0u8; rows.len() * out_w * 3];
    let stride = src_width * 3;
    for (row_out, y) in out.chunks_exact_mut(out_w * 3).zip(rows) {
        let row = &src[y * stride..(y + 1) * stride];
        for (xx, px_out) in row_out.chunks_exact_mut(3).enumerate() {
            let (start, k) = coeffs.get(xx);
            let px = &row[start * 3..(start + k.len()) * 3];
            let (mut r, mut g, mut b) = (HALF, HALF, HALF);
            for (p, &w) in px.chunks_exact(3).zip(k) {
                r = r.wrapping_add(i32::from(p[0]).wrapping_mul(w));
                g = g.wrapping_add(i32::from(p[1]).wrapping_mul(w));
                b = b.wrapping_add(i32::from(p[2]).wrapping_mul(w));
            }
            px_out[0] = clip8(r);
            px_out[1] = clip8(g);
            px_out[2] = clip8(b);
        }
    }
    out
}

/// The horizontal pass with 8-lane `i32` multiply-adds.
///
/// Each output sample is `HALF + Σ p·w` over its taps, in `i32` as in
/// Pillow. Integer addition is associative (and the exact sum fits an
/// `i32`, as Pillow relies on), so the sum may be taken in any order: each
/// row is split into one `i32` plane per channel, and every output is a
/// dot product of contiguous samples with its weights padded with zeros to
/// a multiple of 8 — bit-identical to [`horizontal_scalar`] (tested).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_avx2(
    src: &[u8],
    src_width: usize,
    rows: Range<usize>,
    coeffs: &Coefficients,
) -> Vec<u8> {
    use std::arch::x86_64::*;
    const LANES: usize = 8;
    let out_w = coeffs.bounds.len();
    let mut out = vec![0u8; rows.len() * out_w * 3];
    if out_w == 0 {
        return out;
    }
    let span = coeffs.input_span();
    let taps = coeffs.ksize.div_ceil(LANES) * LANES;
    let mut weights = vec![0i32; out_w * taps];
    for (xx, w) in weights.chunks_exact_mut(taps).enumerate() {
        let (_, k) = coeffs.get(xx);
        w[..k.len()].copy_from_slice(k);
    }
    // Room for the padded taps of the last output positions.
    let plane_len = span.len() + taps;
    let mut planes = vec![0i32; 3 * plane_len];
    let stride = src_width * 3;
    // The 8 lanes' total (AVX2 is enabled here, so the intrinsics are safe).
    let sum = |v: __m256i| -> i32 {
        let v = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b01_00_11_10));
        let v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0b10_11_00_01));
        _mm_cvtsi128_si32(v)
    };
    for (row_out, y) in out.chunks_exact_mut(out_w * 3).zip(rows) {
        let row = &src[y * stride + span.start * 3..y * stride + span.end * 3];
        let (r_plane, rest) = planes.split_at_mut(plane_len);
        let (g_plane, b_plane) = rest.split_at_mut(plane_len);
        for (((px, r), g), b) in row
            .chunks_exact(3)
            .zip(r_plane.iter_mut())
            .zip(g_plane.iter_mut())
            .zip(b_plane.iter_mut())
        {
            (*r, *g, *b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
        }
        for ((px_out, w), &(start, _)) in row_out
            .chunks_exact_mut(3)
            .zip(weights.chunks_exact(taps))
            .zip(&coeffs.bounds)
        {
            let at = start - span.start;
            let (r, g, b) = (
                &r_plane[at..at + taps],
                &g_plane[at..at + taps],
                &b_plane[at..at + taps],
            );
            let (mut acc_r, mut acc_g, mut acc_b) = (
                _mm256_setzero_si256(),
                _mm256_setzero_si256(),
                _mm256_setzero_si256(),
            );
            for j in (0..taps).step_by(LANES) {
                // SAFETY: `j + 8 <= taps`, the length of all four slices.
                unsafe {
                    let wv = _mm256_loadu_si256(w.as_ptr().add(j).cast());
                    let rv = _mm256_loadu_si256(r.as_ptr().add(j).cast());
                    let gv = _mm256_loadu_si256(g.as_ptr().add(j).cast());
                    let bv = _mm256_loadu_si256(b.as_ptr().add(j).cast());
                    acc_r = _mm256_add_epi32(acc_r, _mm256_mullo_epi32(rv, wv));
                    acc_g = _mm256_add_epi32(acc_g, _mm256_mullo_epi32(gv, wv));
                    acc_b = _mm256_add_epi32(acc_b, _mm256_mullo_epi32(bv, wv));
                }
            }
            px_out[0] = clip8(HALF.wrapping_add(sum(acc_r)));
            px_out[1] = clip8(HALF.wrapping_add(sum(acc_g)));
            px_out[2] = clip8(HALF.wrapping_add(sum(acc_b)));
        }
    }
    out
}

/// The vertical pass: `src` rows are numbered from `first_row` of the
/// coefficients' input axis (AVX2 where the CPU has it, as
/// [`horizontal`]; the same sums in the same order either way).
fn vertical(src: &[u8], width: usize, first_row: usize, coeffs: &Coefficients) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { vertical_avx2(src, width, first_row, coeffs) };
    }
    vertical_rows(src, width, first_row, coeffs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_avx2(
    src: &[u8],
    width: usize,
    first_row: usize,
    coeffs: &Coefficients,
) -> Vec<u8> {
    vertical_rows(src, width, first_row, coeffs)
}

#[inline(always)]
fn vertical_rows(src: &[u8], width: usize, first_row: usize, coeffs: &Coefficients) -> Vec<u8> {
    let row_len = width * 3;
    let out_h = coeffs.bounds.len();
    let mut out = vec![0u8; out_h * row_len];
    let mut acc = vec![0i32; row_len];
    for (yy, row_out) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, k) = coeffs.get(yy);
        acc.fill(HALF);
        for (i, &w) in k.iter().enumerate() {
            let y = start + i - first_row;
            let row = &src[y * row_len..(y + 1) * row_len];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a = a.wrapping_add(i32::from(p).wrapping_mul(w));
            }
        }
        for (o, &a) in row_out.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Copies columns `cols` of rows `rows` out of a raster (used for an axis
/// that keeps its size and so needs no convolution, as in Pillow).
fn window<'a>(src: &'a [u8], width: usize, rows: Range<usize>, cols: Range<usize>) -> Raster<'a> {
    if cols.start == 0 && cols.end == width {
        return Raster {
            data: Cow::Borrowed(&src[rows.start * width * 3..rows.end * width * 3]),
            width,
        };
    }
    let mut out = Vec::with_capacity(rows.len() * cols.len() * 3);
    for y in rows {
        out.extend_from_slice(&src[(y * width + cols.start) * 3..(y * width + cols.end) * 3]);
    }
    Raster {
        data: Cow::Owned(out),
        width: cols.len(),
    }
}

/// Resizes `src` to `out_w` x `out_h` with Pillow's bicubic and returns only
/// the window `cols` x `rows` of the result (packed RGB8, row-major).
///
/// Computing only the window gives exactly the pixels of the full resize
/// followed by a crop, without the work (or the allocation) for the rest.
pub(crate) fn resize_window(
    src: &RgbImage,
    out_w: u64,
    out_h: u64,
    cols: Range<u64>,
    rows: Range<u64>,
) -> Vec<u8> {
    let (in_w, in_h) = (src.width() as usize, src.height() as usize);
    let data: &[u8] = src.as_raw();
    if cols.is_empty() || rows.is_empty() || in_w == 0 || in_h == 0 {
        return Vec::new();
    }
    let need_h = out_w != in_w as u64;
    let need_v = out_h != in_h as u64;

    // Rows of the source that the vertical pass reads.
    let vert = need_v.then(|| Coefficients::new(in_h, out_h, rows.clone()));
    let src_rows = match &vert {
        Some(v) => v.input_span(),
        None => rows.start as usize..rows.end as usize,
    };

    let tmp: Raster<'_> = if need_h {
        let hc = Coefficients::new(in_w, out_w, cols.clone());
        Raster {
            data: Cow::Owned(horizontal(data, in_w, src_rows.clone(), &hc)),
            width: (cols.end - cols.start) as usize,
        }
    } else {
        window(
            data,
            in_w,
            src_rows.clone(),
            cols.start as usize..cols.end as usize,
        )
    };

    match vert {
        Some(v) => vertical(&tmp.data, tmp.width, src_rows.start, &v),
        None => tmp.data.into_owned(),
    }
}

/// The size HF's `CLIPImageProcessor` resizes to: the shortest side becomes
/// `size`, the long side `int(size * long / short)` (truncated, computed in
/// `f64` like Python's true division of the exact integer product), as in
/// transformers' `get_resize_output_image_size`. Returns `(width, height)`;
/// `(0, 0)` for an empty image.
pub fn resized_dimensions(width: u32, height: u32, size: u32) -> (u64, u64) {
    if width == 0 || height == 0 {
        return (0, 0);
    }
    let (short, long) = (width.min(height), width.max(height));
    let s = u64::from(size);
    let new_long = ((s * u64::from(long)) as f64 / f64::from(short)) as u64;
    if width <= height {
        (s, new_long)
    } else {
        (new_long, s)
    }
}

/// Resizes so that the shortest side is `size` pixels (long side per
/// [`resized_dimensions`]) with Pillow's bicubic filter, bit-exactly as
/// `Image.resize((w, h), Image.BICUBIC)` on an 8-bit RGB image. An image
/// already at that size is returned as a copy, like Pillow.
///
/// For preprocessing prefer [`to_pixels`](crate::to_pixels), which only
/// computes the centre crop.
///
/// # Panics
///
/// If the long side would exceed `u32::MAX` (an aspect ratio beyond about
/// 1:19,000,000 at `size` 224).
pub fn resize_shortest_side(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = resized_dimensions(image.width(), image.height(), size);
    let (w32, h32) = (
        u32::try_from(w).expect("resized width fits in u32"),
        u32::try_from(h).expect("resized height fits in u32"),
    );
    let data = resize_window(image, w, h, 0..w, 0..h);
    RgbImage::from_raw(w32, h32, data).unwrap_or_else(|| RgbImage::new(w32, h32))
}

/// Where an axis of `len` pixels lands in a centre crop of `size`: the
/// source range to copy and the offset in the crop it goes to.
///
/// Like HF's `center_crop`: a longer axis is cut from `(len - size) // 2`; a
/// shorter one is zero-padded, placed at `ceil((size - len) / 2)`.
pub(crate) fn crop_axis(len: u64, size: u64) -> (Range<u64>, u64) {
    if len >= size {
        let start = (len - size) / 2;
        (start..start + size, 0)
    } else {
        (0..len, (size - len).div_ceil(2))
    }
}

/// Centre-crops to `size` x `size` like HF's `center_crop`: top
/// `(h - size) // 2`, left `(w - size) // 2`; a side shorter than `size` is
/// padded with black (zeros), the image placed at `ceil((size - side) / 2)`.
pub fn center_crop(image: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = (u64::from(image.width()), u64::from(image.height()));
    let s = u64::from(size);
    let (cols, dx) = crop_axis(w, s);
    let (rows, dy) = crop_axis(h, s);
    let mut out = RgbImage::new(size, size);
    let src: &[u8] = image.as_raw();
    let row_bytes = (cols.end - cols.start) as usize * 3;
    let out_stride = size as usize * 3;
    let buf: &mut [u8] = &mut out;
    for (i, y) in rows.enumerate() {
        let from = (y as usize * w as usize + cols.start as usize) * 3;
        let to = (dy as usize + i) * out_stride + dx as usize * 3;
        buf[to..to + row_bytes].copy_from_slice(&src[from..from + row_bytes]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 pass equals `Resample.c`'s loop (where the CPU has AVX2) for
    /// downscales by up to 40x (many taps, padded to the lanes), upscales,
    /// windows that start and end inside the row, and extreme pixels.
    #[test]
    fn horizontal_pass_equals_the_scalar_definition() {
        for (w, h, out_w, seed) in [
            (4096, 3, 100, 1),
            (640, 4, 224, 2),
            (37, 5, 224, 3),
            (300, 2, 299, 4),
            (9, 3, 2, 5),
        ] {
            let mut img = noise(w, h, seed);
            // Saturated pixels test the clamping.
            for x in 0..w.min(40) {
                img.put_pixel(x, 0, image::Rgb(if x % 2 == 0 { [255; 3] } else { [0; 3] }));
            }
            let (w, h, out_w) = (w as usize, h as usize, out_w as u64);
            for wanted in [0..out_w, out_w / 3..out_w - out_w / 4] {
                let coeffs = Coefficients::new(w, out_w, wanted.clone());
                let expected = horizontal_scalar(img.as_raw(), w, 0..h, &coeffs);
                assert_eq!(
                    horizontal(img.as_raw(), w, 0..h, &coeffs),
                    expected,
                    "{w} -> {out_w} {wanted:?}"
                );
                assert_eq!(
                    horizontal(img.as_raw(), w, 1..h, &coeffs),
                    horizontal_scalar(img.as_raw(), w, 1..h, &coeffs),
                    "{w} -> {out_w} {wanted:?}, from row 1"
                );
            }
        }
    }

    fn noise(w: u32, h: u32, seed: u32) -> RgbImage {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        RgbImage::from_fn(w, h, |_, _| {
            let mut px = [0u8; 3];
            for c in &mut px {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                *c = (s >> 24) as u8;
            }
            image::Rgb(px)
        })
    }

    #[test]
    fn output_size_truncates_like_hf() {
        assert_eq!(resized_dimensions(320, 240, 64), (85, 64));
        assert_eq!(resized_dimensions(180, 261, 64), (64, 92));
        assert_eq!(resized_dimensions(17, 23, 64), (64, 86));
        assert_eq!(resized_dimensions(64, 64, 64), (64, 64));
        assert_eq!(resized_dimensions(0, 10, 64), (0, 0));
    }

    #[test]
    fn kernel_and_coefficients() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert_eq!(bicubic(-0.5), bicubic(0.5));
        // Each output position's fixed-point weights sum to ~1.0.
        for (n, m) in [(100, 37), (37, 100), (5, 1), (1, 5), (1000, 224)] {
            let c = Coefficients::new(n, m, 0..m);
            for i in 0..m as usize {
                let s: i32 = c.get(i).1.iter().sum();
                assert!(
                    (s - (1 << PRECISION_BITS)).abs() <= 8,
                    "{n}->{m} at {i}: {s}"
                );
            }
        }
    }

    #[test]
    fn same_size_is_a_copy_and_constant_stays_constant() {
        let img = noise(13, 7, 1);
        assert_eq!(
            resize_window(&img, 13, 7, 0..13, 0..7),
            img.as_raw().clone()
        );
        let flat = RgbImage::from_pixel(50, 31, image::Rgb([7, 200, 255]));
        let r = resize_shortest_side(&flat, 16);
        assert_eq!(r.dimensions(), (25, 16));
        assert!(r.pixels().all(|p| p.0 == [7, 200, 255]));
        let r = resize_shortest_side(&flat, 97);
        assert!(r.pixels().all(|p| p.0 == [7, 200, 255]));
    }

    #[test]
    fn window_equals_full_resize_then_crop() {
        for (w, h, s) in [
            (120, 77, 32),
            (31, 90, 40),
            (40, 40, 40),
            (40, 41, 40),
            (5, 9, 7),
        ] {
            let img = noise(w, h, w * h);
            let full = resize_shortest_side(&img, s);
            let cropped = center_crop(&full, s);
            let (ow, oh) = resized_dimensions(w, h, s);
            let (cols, _) = crop_axis(ow, u64::from(s));
            let (rows, _) = crop_axis(oh, u64::from(s));
            let win = resize_window(&img, ow, oh, cols, rows);
            assert_eq!(&win, cropped.as_raw(), "{w}x{h} -> {s}");
        }
    }

    #[test]
    fn center_crop_offsets_and_padding() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let c = center_crop(&img, 3);
        assert_eq!(c.get_pixel(0, 0).0, [1, 0, 9]);
        // Padding: a 5x3 image in a 6x6 crop sits at column 1 (ceil(1/2))
        // and row 2 (ceil(3/2)).
        let p = center_crop(&img, 6);
        assert_eq!(p.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(p.get_pixel(1, 2).0, [0, 0, 9]);
        assert_eq!(p.get_pixel(5, 4).0, [4, 2, 9]);
        assert_eq!(p.get_pixel(5, 5).0, [0, 0, 0]);
        assert_eq!(crop_axis(61, 64), (0..61, 2));
    }
}
