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
    let mut reducer = AreaReducer::new(width, height, r);
    for row in image.as_raw().chunks_exact(width as usize * 3) {
        reducer.add_row(row);
    }
    reducer.finish()
}

/// [`area_reduce`] fed one RGB row at a time, so that a codec that
/// streams rows (PNG) never holds the full-size image: only the column
/// sums of the current band of `r` rows and the reduced output.
pub(crate) struct AreaReducer {
    width: usize,
    r: usize,
    /// Column sums of the band so far: at most 8 * 255, so u16 (half the
    /// memory traffic of u32, twice the lanes).
    sums: Vec<u16>,
    /// Rows added to the current band.
    rows: usize,
    out: Vec<u8>,
    out_size: (u32, u32),
}

impl AreaReducer {
    /// A reducer of a `width` x `height` image by `r`, 2 to 8 (1 passes
    /// rows through).
    pub(crate) fn new(width: u32, height: u32, r: u32) -> Self {
        // The u16 sums hold a band of at most 8 rows (8 * 255 = 2040) and
        // a block of at most 8 columns of them (16320).
        assert!((1..=8).contains(&r), "area reduction by {r}");
        let out_size = (width.div_ceil(r), height.div_ceil(r));
        AreaReducer {
            width: width as usize,
            r: r as usize,
            sums: vec![0; width as usize * 3],
            rows: 0,
            out: Vec::with_capacity(out_size.0 as usize * out_size.1 as usize * 3),
            out_size,
        }
    }

    /// Adds the next row (`width` RGB pixels); a shorter or longer row is
    /// an internal error (debug builds assert).
    pub(crate) fn add_row(&mut self, row: &[u8]) {
        debug_assert_eq!(row.len(), self.width * 3);
        crate::avx2::dispatch!(
            add_row_into,
            add_row_into_avx2(&mut self.sums, row, self.rows == 0)
        );
        self.rows += 1;
        if self.rows == self.r {
            self.emit_band();
        }
    }

    /// One output row from the band's column sums.
    fn emit_band(&mut self) {
        match self.r {
            2 => self.emit_band_of::<2>(),
            4 => self.emit_band_of::<4>(),
            8 => self.emit_band_of::<8>(),
            _ => self.emit_band_of::<0>(),
        }
        self.rows = 0;
    }

    /// [`Self::emit_band`] for blocks `R` pixels wide (0: `self.r`, any),
    /// so that the common factors' loops are unrolled.
    #[inline(always)]
    fn emit_band_of<const R: usize>(&mut self) {
        let r = if R == 0 { self.r } else { R };
        let rows = self.rows;
        let start = self.out.len();
        self.out.resize(start + self.width.div_ceil(r) * 3, 0);
        let out = &mut self.out[start..];
        let mut blocks = self.sums.chunks_exact(r * 3);
        let full_block = Reciprocal::new(r * rows);
        for (block, o) in (&mut blocks).zip(out.chunks_exact_mut(3)) {
            o.copy_from_slice(&channel_sums(block).map(|a| full_block.rounded(a) as u8));
        }
        let rest = blocks.remainder();
        if !rest.is_empty() {
            let divide = Reciprocal::new(rest.len() / 3 * rows);
            let last = out.len() - 3;
            out[last..].copy_from_slice(&channel_sums(rest).map(|a| divide.rounded(a) as u8));
        }
    }

    /// The reduced image (a last band of fewer than `r` rows averaged over
    /// the rows it has). Fewer rows than announced leave the rest black.
    pub(crate) fn finish(mut self) -> RgbImage {
        if self.rows > 0 {
            self.emit_band();
        }
        let (w, h) = self.out_size;
        self.out.resize(w as usize * h as usize * 3, 0);
        RgbImage::from_raw(w, h, self.out).expect("sized to the reduced image above")
    }
}

/// The R, G and B totals of a block's column sums (RGB triples).
#[inline(always)]
fn channel_sums(block: &[u16]) -> [u32; 3] {
    let mut acc = [0u32; 3];
    for p in block.chunks_exact(3) {
        acc[0] += u32::from(p[0]);
        acc[1] += u32::from(p[1]);
        acc[2] += u32::from(p[2]);
    }
    acc
}

/// `sums = row` (`first`) or `sums += row`, widened to u16.
#[inline(always)]
fn add_row_into(sums: &mut [u16], row: &[u8], first: bool) {
    if first {
        for (sum, &v) in sums.iter_mut().zip(row) {
            *sum = u16::from(v);
        }
    } else {
        for (sum, &v) in sums.iter_mut().zip(row) {
            *sum += u16::from(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn add_row_into_avx2(sums: &mut [u16], row: &[u8], first: bool) {
    add_row_into(sums, row, first)
}

/// Rounded division of a block's sum by its sample count `n` (1 to 64) as
/// a multiplication: a band's output row divides every sum, and a `div`
/// per sample was most of the reducer's time.
#[derive(Clone, Copy)]
struct Reciprocal {
    n: u32,
    /// `ceil(2^32 / n)`.
    m: u64,
}

impl Reciprocal {
    fn new(n: usize) -> Self {
        debug_assert!((1..=64).contains(&n), "a block of {n} samples");
        let n = n as u32;
        Reciprocal {
            n,
            m: (1u64 << 32).div_ceil(u64::from(n)),
        }
    }

    /// `(sum + n / 2) / n`. Exact: with `x = sum + n / 2` and
    /// `m = (2^32 + e) / n` (`0 <= e < n`), `x * m / 2^32` exceeds `x / n`
    /// by `x * e / (n * 2^32) < 1 / n` (as `x < 2^32 / n`), which never
    /// reaches the next integer.
    #[inline(always)]
    fn rounded(self, sum: u32) -> u32 {
        ((u64::from(sum + self.n / 2) * self.m) >> 32) as u32
    }
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
            // 2, 4 and 8 as reductions choose them; 3 and 5 through the
            // loop for any factor.
            for r in [2, 3, 4, 5, 8] {
                let image = noise(w, h, w * 100 + h + r);
                let ours = area_reduce(image.clone(), r);
                assert_eq!(ours.dimensions(), (w.div_ceil(r), h.div_ceil(r)));
                assert_eq!(ours, naive(&image, r), "{w}x{h} / {r}");
            }
        }
    }

    #[test]
    fn reciprocal_division_is_exact_for_every_block_sum() {
        for n in 1..=64usize {
            let divide = Reciprocal::new(n);
            let n32 = n as u32;
            for sum in 0..=n32 * 255 {
                assert_eq!(divide.rounded(sum), (sum + n32 / 2) / n32, "{sum} / {n}");
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
