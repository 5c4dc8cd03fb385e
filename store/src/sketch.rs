//! 2-bit sketches of the embeddings: the first pass of a large scan.
//!
//! A scan of a large library is bound by memory bandwidth: 100k int8 rows
//! are 52 MB read per query. The sketch keeps each row again at 2 bits
//! (128 bytes for 512-d, a quarter of the int8 row), so the first pass
//! reads a quarter as much; its best candidates (thousands: see
//! `sketch_candidates` in `vectors.rs`) are then scored with the int8 rows
//! (see `VectorSet::top_k`), and the best of those exactly (f32, by the
//! library's search).
//!
//! Before quantising, every vector goes through a fixed random rotation —
//! random signs, then a Walsh–Hadamard transform over blocks of a power of
//! two — which leaves every dot product unchanged (`Hq · Hx = q · x`) but
//! spreads a vector's weight evenly over its components, so that they are
//! all alike (near Gaussian) and four levels per component serve them all.
//! Without it a few large components (CLIP embeddings have some) would set
//! the row's step and leave the others with one level.
//!
//! A row's code for component `y` is `clamp(floor(y / step), -2, 1) + 2`
//! in 0..=3 (`step` = the rotated row's root mean square, near the best
//! uniform 4-level step for Gaussian values), standing for `(code − 1.5) ·
//! step`. The estimate of `q · x` is then rescaled per row by `|y|² / (y ·
//! ŷ)` (`ŷ` the codes' values; RaBitQ's correction), which takes out the
//! codes' systematic shrinking of each row (in a simulation of the spectral
//! library of `benches/library.rs`, recall of the true top 10 within the
//! first 512 candidates went from 0.9755 to 0.981); that factor is folded
//! into the row's stored step.
//!
//! Four codes share a byte: in each block of 256 components, byte `j`
//! holds components `j`, `64 + j`, `128 + j` and `192 + j` in its bit
//! pairs from the lowest, so a 64-byte load splits into four 64-lane
//! vectors with a shift and an AND each. The query is rotated too and held
//! as int8; the dot product of the codes is exact in integers (`vpdpbusd`
//! where the CPU has AVX512_VNNI, a portable loop otherwise, equal to it).
//!
//! What this does not do: it is not stored (sketches are rebuilt from the
//! vectors when a library opens) and it only ranks: its estimates never
//! reach a result.

use crate::vectors::quantize;

/// Components per packed block: 64 bytes of four 2-bit codes.
const BLOCK: usize = 256;

/// Bytes of one packed block.
const BLOCK_BYTES: usize = BLOCK / 4;

/// Rows per kernel call (`code_dots`) within [`Sketcher::dots`]: their
/// integer sums stay on the stack.
const DOTS_BLOCK: usize = 256;

/// The largest Walsh–Hadamard block (the rotation works on blocks of the
/// largest power of two dividing the padded dimension, up to this).
const MAX_ROTATION: usize = 1024;

/// Rotates and quantises vectors of one dimension to 2-bit sketches.
pub(crate) struct Sketcher {
    dim: usize,
    /// `dim` rounded up to whole [`BLOCK`]s.
    padded: usize,
    /// Walsh–Hadamard block size (a power of two dividing `padded`).
    rotation: usize,
    /// ±1 per padded component, applied before the transform.
    signs: Vec<f32>,
}

/// A query prepared for [`Sketcher::dots`]: the rotated query as int8
/// codes (`q ≈ scale · code`) and the sum of its codes.
pub(crate) struct SketchQuery {
    codes: Vec<i8>,
    scale: f32,
    sum: i32,
}

impl Sketcher {
    /// A sketcher for `dim`-d vectors (deterministic: the same signs for
    /// every library and every run).
    pub(crate) fn new(dim: usize) -> Self {
        let padded = dim.div_ceil(BLOCK).max(1) * BLOCK;
        let mut rotation = BLOCK;
        while rotation * 2 <= MAX_ROTATION && padded.is_multiple_of(rotation * 2) {
            rotation *= 2;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let signs = (0..padded)
            .map(|_| {
                // splitmix64
                state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                if (z ^ (z >> 31)) & 1 == 0 {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        Self {
            dim,
            padded,
            rotation,
            signs,
        }
    }

    /// Bytes of one row's sketch.
    pub(crate) fn row_bytes(&self) -> usize {
        self.padded / 4
    }

    /// `vector` (of `dim` values) rotated: padded with zeros, signs
    /// applied, then an orthonormal Walsh–Hadamard transform per block.
    fn rotate(&self, vector: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; self.padded];
        for ((y, x), s) in y
            .iter_mut()
            .zip(&vector[..self.dim.min(vector.len())])
            .zip(&self.signs)
        {
            *y = x * s;
        }
        let norm = 1.0 / (self.rotation as f32).sqrt();
        for block in y.chunks_exact_mut(self.rotation) {
            // The first four stages within each run of 16 (fixed sizes the
            // compiler unrolls), then the wide ones, which vectorise.
            for run in block.chunks_exact_mut(16) {
                let run: &mut [f32; 16] = run.try_into().expect("16 values");
                for h in [1, 2, 4, 8] {
                    for i in 0..16 {
                        if i & h == 0 {
                            let (a, b) = (run[i], run[i + h]);
                            run[i] = a + b;
                            run[i + h] = a - b;
                        }
                    }
                }
            }
            let mut h = 16;
            while h < block.len() {
                for pair in block.chunks_exact_mut(2 * h) {
                    let (a, b) = pair.split_at_mut(h);
                    for (a, b) in a.iter_mut().zip(b.iter_mut()) {
                        let (x, y) = (*a, *b);
                        *a = x + y;
                        *b = x - y;
                    }
                }
                h *= 2;
            }
            block.iter_mut().for_each(|v| *v *= norm);
        }
        y
    }

    /// Writes the sketch of `vector` into `out` ([`row_bytes`](Self::row_bytes)
    /// bytes) and returns its step, corrected as the module describes (0
    /// for a zero or non-finite vector, whose estimates are then all 0).
    pub(crate) fn encode(&self, vector: &[f32], out: &mut [u8]) -> f32 {
        let y = self.rotate(vector);
        let squares: f32 = y.iter().map(|v| v * v).sum();
        if squares == 0.0 || !squares.is_finite() {
            out.fill(0);
            return 0.0;
        }
        let step = (squares / y.len() as f32).sqrt();
        let inv = 1.0 / step;
        // `v · inv + 2` truncated is `floor(v / step) + 2` where it is
        // positive (a cast rounds towards zero, and `floor` would be a libm
        // call on the baseline x86-64 target); below 0 the clamp makes it 0.
        let code = |v: f32| ((v * inv + 2.0).max(0.0) as u32).min(3) as u8;
        let mut along = 0f32;
        for (bytes, values) in out.chunks_exact_mut(BLOCK_BYTES).zip(y.chunks_exact(BLOCK)) {
            for (j, b) in bytes.iter_mut().enumerate() {
                let mut byte = 0u8;
                for part in 0..4 {
                    let v = values[part * BLOCK_BYTES + j];
                    let c = code(v);
                    along += v * (f32::from(c) - 1.5);
                    byte |= c << (2 * part);
                }
                *b = byte;
            }
        }
        // `y · ŷ = step · along` > 0: every value's level has its sign (but
        // for values within ~1e-7·step below 0, which the addition rounds
        // up to level 0.5: a negligible term).
        squares / along
    }

    /// `query` prepared for [`dots`](Self::dots); `None` for a zero or
    /// non-finite query (nothing to rank by).
    pub(crate) fn query(&self, query: &[f32]) -> Option<SketchQuery> {
        let y = self.rotate(query);
        let mut codes = vec![0i8; y.len()];
        let scale = quantize(&y, &mut codes);
        if scale == 0.0 {
            return None;
        }
        let sum = codes.iter().map(|c| i32::from(*c)).sum();
        Some(SketchQuery { codes, scale, sum })
    }

    /// The estimated `query · row` of each row of `sketches`
    /// ([`row_bytes`](Self::row_bytes) per row) with its step in `steps`,
    /// into `out`.
    pub(crate) fn dots(
        &self,
        query: &SketchQuery,
        sketches: &[u8],
        steps: &[f32],
        out: &mut [f32],
    ) {
        let row_bytes = self.row_bytes();
        let rows = out.len().min(steps.len()).min(sketches.len() / row_bytes);
        // On the stack, a block at a time: no allocation per call, and the
        // sums are read back while still in L1.
        let mut sums = [0i32; DOTS_BLOCK];
        let half = 0.5 * query.scale;
        for start in (0..rows).step_by(DOTS_BLOCK) {
            let len = DOTS_BLOCK.min(rows - start);
            let sums = &mut sums[..len];
            code_dots(
                &query.codes,
                &sketches[start * row_bytes..][..len * row_bytes],
                sums,
            );
            // Σ q·(code − 1.5)·step = step · (Σ q·code − 1.5 Σ q), in halves
            // to stay in integers.
            let (out, steps) = (&mut out[start..start + len], &steps[start..start + len]);
            for ((o, s), step) in out.iter_mut().zip(sums.iter()).zip(steps) {
                *o = half * step * (2 * s - 3 * query.sum) as f32;
            }
        }
    }
}

/// `Σ q · code` for each row of 2-bit `sketches` (`q.len() / 4` bytes per
/// row, laid out as the module describes), into `out`: the AVX512_VNNI
/// kernel where the CPU has it, else the portable loop (equal results).
fn code_dots(q: &[i8], sketches: &[u8], out: &mut [i32]) {
    #[cfg(target_arch = "x86_64")]
    if vnni() {
        // SAFETY: `vnni` checked the CPU's features; the kernel reads only
        // inside the slices (asserted there).
        unsafe { avx512::code_dots(q, sketches, out) };
        return;
    }
    code_dots_portable(q, sketches, out);
}

/// Whether this CPU has AVX512F, AVX512BW and AVX512_VNNI (checked once):
/// what this crate's integer dot-product kernels need.
#[cfg(target_arch = "x86_64")]
pub(crate) fn vnni() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    })
}

/// [`code_dots`] in plain Rust: the definition the kernel is tested
/// against.
fn code_dots_portable(q: &[i8], sketches: &[u8], out: &mut [i32]) {
    let row_bytes = q.len() / 4;
    for (o, row) in out.iter_mut().zip(sketches.chunks_exact(row_bytes.max(1))) {
        let mut sum = 0i32;
        for (bytes, qs) in row.chunks_exact(BLOCK_BYTES).zip(q.chunks_exact(BLOCK)) {
            for (j, b) in bytes.iter().enumerate() {
                for part in 0..4 {
                    let code = i32::from((b >> (2 * part)) & 3);
                    sum += code * i32::from(qs[part * BLOCK_BYTES + j]);
                }
            }
        }
        *o = sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{BLOCK, BLOCK_BYTES};
    use std::arch::x86_64::*;

    /// Rows at once: independent accumulator chains that hide the
    /// `vpdpbusd` latency.
    const ROWS: usize = 4;

    /// Bytes ahead of each load that the kernel asks the cache for: the
    /// scan reads 13 MB per query for 100k photos, and the next rows are
    /// requested while these are multiplied.
    const PREFETCH: usize = 2048;

    /// One 64-byte block of a row against the query's four 64-code parts
    /// `q`: the four bit pairs of each byte, each against its part.
    #[inline(always)]
    unsafe fn block(acc: __m512i, v: __m512i, q: &[__m512i; 4]) -> __m512i {
        let mask = _mm512_set1_epi8(3);
        let c0 = _mm512_and_si512(v, mask);
        let c1 = _mm512_and_si512(_mm512_srli_epi16::<2>(v), mask);
        let c2 = _mm512_and_si512(_mm512_srli_epi16::<4>(v), mask);
        let c3 = _mm512_and_si512(_mm512_srli_epi16::<6>(v), mask);
        let acc = _mm512_dpbusd_epi32(acc, c0, q[0]);
        let acc = _mm512_dpbusd_epi32(acc, c1, q[1]);
        let acc = _mm512_dpbusd_epi32(acc, c2, q[2]);
        _mm512_dpbusd_epi32(acc, c3, q[3])
    }

    /// [`super::code_dots_portable`] with `vpdpbusd`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn code_dots(q: &[i8], sketches: &[u8], out: &mut [i32]) {
        let blocks = q.len() / BLOCK;
        let row_bytes = blocks * BLOCK_BYTES;
        let rows = out.len().min(sketches.len() / row_bytes.max(1));
        assert!(q.len() == blocks * BLOCK && sketches.len() >= rows * row_bytes);
        let qp = q.as_ptr();
        // SAFETY: query loads read `[BLOCK·b + 64·p, +64)` with `BLOCK·(b+1)
        // ≤ q.len()`; row `r + i` reads bytes `[(r+i)·row_bytes, +row_bytes)`
        // with `r + i < rows`, inside `sketches`. Prefetches may point
        // anywhere.
        unsafe {
            let query = |b: usize| -> [__m512i; 4] {
                std::array::from_fn(|p| _mm512_loadu_si512(qp.add(b * BLOCK + 64 * p).cast()))
            };
            let mut r = 0;
            while r + ROWS <= rows {
                let mut acc = [_mm512_setzero_si512(); ROWS];
                for b in 0..blocks {
                    let q = query(b);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let p = sketches.as_ptr().add((r + i) * row_bytes + b * BLOCK_BYTES);
                        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH).cast());
                        *acc = block(*acc, _mm512_loadu_si512(p.cast()), &q);
                    }
                }
                for (i, acc) in acc.iter().enumerate() {
                    out[r + i] = _mm512_reduce_add_epi32(*acc);
                }
                r += ROWS;
            }
            while r < rows {
                let mut acc = _mm512_setzero_si512();
                for b in 0..blocks {
                    let p = sketches.as_ptr().add(r * row_bytes + b * BLOCK_BYTES);
                    acc = block(acc, _mm512_loadu_si512(p.cast()), &query(b));
                }
                out[r] = _mm512_reduce_add_epi32(acc);
                r += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rand_vec(state: &mut u64, dim: usize) -> Vec<f32> {
        (0..dim)
            .map(|_| {
                *state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((*state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
            })
            .collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn rotation_keeps_dot_products_and_spreads_large_components() {
        for dim in [512, 768, 100] {
            let s = Sketcher::new(dim);
            assert!(s.padded >= dim && s.padded.is_multiple_of(BLOCK));
            assert!(s.padded.is_multiple_of(s.rotation));
            let mut state = dim as u64;
            let (a, b) = (rand_vec(&mut state, dim), rand_vec(&mut state, dim));
            let (ra, rb) = (s.rotate(&a), s.rotate(&b));
            assert!((dot(&ra, &rb) - dot(&a, &b)).abs() < 1e-4, "dim {dim}");
            // One large component is spread over the whole block.
            let mut spike = vec![0f32; dim];
            spike[3] = 1.0;
            let r = s.rotate(&spike);
            let max = r.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!((max - 1.0 / (s.rotation as f32).sqrt()).abs() < 1e-6);
        }
        assert_eq!(Sketcher::new(512).rotation, 512);
        assert_eq!(Sketcher::new(768).rotation, 256);
    }

    #[test]
    fn kernel_equals_the_portable_definition() {
        for dim in [128, 512, 768] {
            let s = Sketcher::new(dim);
            let mut state = 5 + dim as u64;
            let rows = 37; // not a multiple of the kernel's row group
            let mut sketches = vec![0u8; rows * s.row_bytes()];
            for row in sketches.chunks_exact_mut(s.row_bytes()) {
                s.encode(&rand_vec(&mut state, dim), row);
            }
            // Extreme codes too: all 0 and all 3.
            sketches[..s.row_bytes()].fill(0);
            sketches[s.row_bytes()..2 * s.row_bytes()].fill(0xff);
            let query = s.query(&rand_vec(&mut state, dim)).unwrap();
            let mut want = vec![0i32; rows];
            code_dots_portable(&query.codes, &sketches, &mut want);
            let mut got = vec![0i32; rows];
            code_dots(&query.codes, &sketches, &mut got);
            assert_eq!(got, want, "dim {dim}");
            // The definition itself, from unpacked codes.
            let row = &sketches[2 * s.row_bytes()..3 * s.row_bytes()];
            let codes = unpack(&s, row);
            let direct: i32 = codes
                .iter()
                .zip(&query.codes)
                .map(|(c, q)| c * i32::from(*q))
                .sum();
            assert_eq!(want[2], direct);
            let all_three: i32 = query.codes.iter().map(|q| 3 * i32::from(*q)).sum();
            assert_eq!((want[0], want[1]), (0, all_three));
        }
    }

    /// A row's codes in component order (the layout the module describes).
    fn unpack(s: &Sketcher, row: &[u8]) -> Vec<i32> {
        let mut codes = vec![0i32; s.padded];
        for (b, chunk) in row.chunks_exact(BLOCK_BYTES).enumerate() {
            for (j, byte) in chunk.iter().enumerate() {
                for part in 0..4 {
                    codes[b * BLOCK + part * BLOCK_BYTES + j] = i32::from((byte >> (2 * part)) & 3);
                }
            }
        }
        codes
    }

    #[test]
    fn codes_are_the_rotated_values_levels() {
        // Each code is the level of its rotated value (`floor(y / rms)`,
        // clamped to -2..=1), and the step is the rms corrected by
        // |y|² / (y · ŷ).
        let s = Sketcher::new(512);
        let mut state = 77;
        let v = rand_vec(&mut state, 512);
        let mut row = vec![0u8; s.row_bytes()];
        let step = s.encode(&v, &mut row);
        let y = s.rotate(&v);
        let rms = (dot(&y, &y) / y.len() as f32).sqrt();
        let codes = unpack(&s, &row);
        let mut along = 0f32;
        for (c, y) in codes.iter().zip(&y) {
            let level = (y / rms).floor().clamp(-2.0, 1.0) as i32 + 2;
            assert_eq!(*c, level, "{y} / {rms}");
            along += y * (*c as f32 - 1.5);
        }
        assert!(codes.contains(&0) && codes.contains(&3));
        let want = dot(&y, &y) / along;
        assert!((step - want).abs() <= 1e-5 * want, "{step} vs {want}");
    }

    #[test]
    fn estimates_are_close_to_the_dot_product() {
        let dim = 512;
        let s = Sketcher::new(dim);
        let mut state = 9;
        let unit = |v: Vec<f32>| {
            let n = dot(&v, &v).sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        // More rows than one kernel block (`DOTS_BLOCK`), and a partial last.
        let vectors: Vec<Vec<f32>> = (0..2 * DOTS_BLOCK + 88)
            .map(|_| unit(rand_vec(&mut state, dim)))
            .collect();
        let mut sketches = vec![0u8; vectors.len() * s.row_bytes()];
        let steps: Vec<f32> = vectors
            .iter()
            .zip(sketches.chunks_exact_mut(s.row_bytes()))
            .map(|(v, out)| s.encode(v, out))
            .collect();
        let q = unit(rand_vec(&mut state, dim));
        let mut est = vec![0f32; vectors.len()];
        s.dots(&s.query(&q).unwrap(), &sketches, &steps, &mut est);
        // 2-bit rows of 512 random components: the error of an estimate is
        // about sqrt(0.12 / 512) ≈ 0.015 of a unit vector's norm.
        let errors: Vec<f32> = vectors
            .iter()
            .zip(&est)
            .map(|(v, e)| (dot(v, &q) - e).abs())
            .collect();
        let rms = (errors.iter().map(|e| e * e).sum::<f32>() / errors.len() as f32).sqrt();
        let max = errors.iter().fold(0f32, |m, e| m.max(*e));
        assert!(rms < 0.02 && max < 0.07, "rms {rms}, max {max}");
        // Zero and non-finite vectors: step 0, estimate 0; no query.
        let mut out = vec![0u8; s.row_bytes()];
        assert_eq!(s.encode(&vec![0.0; dim], &mut out), 0.0);
        assert_eq!(s.encode(&vec![f32::NAN; dim], &mut out), 0.0);
        assert!(s.query(&vec![0.0; dim]).is_none());
    }
}
