//! Matrix products on bf16 dot-product instructions (AVX512_BF16).
//!
//! Where the CPU has `vdpbf16ps` (AMD Zen 4 and later, Intel Cooper Lake
//! and Sapphire Rapids and later), one instruction multiplies 32 bf16
//! pairs and adds them into 16 f32 sums: twice the multiply-adds of an f32
//! FMA of the same width. [`product`] computes `x · Wᵀ + b` with the inputs
//! rounded to bf16 (round to nearest even, as PyTorch's bf16 autocast
//! does) and every sum kept in f32. Weights are packed once, when a
//! precision is chosen, by [`pack`]: panels of [`NR`] output columns whose
//! bf16 values are interleaved in pairs of consecutive inputs, the layout
//! the instruction reads.
//!
//! This module does nothing on other CPUs: [`available`] says whether it
//! can run, and `QueryWeights` keeps its widening kernels where it cannot.

use rayon::prelude::*;

use crate::kernels::{balanced_row_block, par_filled, tile_shape, tiled_product};

/// Output columns per packed panel: two 16-lane registers.
pub(crate) const NR: usize = 32;
/// Input rows per micro-kernel call: 12 rows × 2 registers = 24
/// accumulators, plus two weight registers and one broadcast (of 32).
const MR: usize = 12;
/// Input pairs per cache block: a panel's block is `KC2 × 64` bytes (8 KiB,
/// in L1), a row block's `MC × KC2 × 4` bytes (24 KiB, in L2).
const KC2: usize = 128;
/// Input rows per row block of a many-row product.
const MC: usize = 48;

/// Whether this CPU runs the bf16 dot-product kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// bf16 bits of `v`, rounded to nearest even (NaN kept a NaN).
fn to_bf16(v: f32) -> u16 {
    half::bf16::from_f32(v).to_bits()
}

/// Packs f32 weights `[n, k]` (PyTorch `[out, in]`) as bf16 panels of
/// [`NR`] columns, each `[k.div_ceil(2)][NR][2]`: for every pair of inputs
/// `(2p, 2p + 1)` the 32 columns' two values side by side. The last panel
/// and an odd `k` are padded with zeros.
pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Vec<u16> {
    let k2 = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    let mut packed = vec![0u16; panels * k2 * NR * 2];
    for (j, row) in w.chunks_exact(k.max(1)).take(n).enumerate() {
        let panel = &mut packed[(j / NR) * k2 * NR * 2..][..k2 * NR * 2];
        let c = j % NR;
        for (i, &v) in row.iter().enumerate() {
            panel[(i / 2) * NR * 2 + c * 2 + i % 2] = to_bf16(v);
        }
    }
    packed
}

/// Bytes of a packed `[n, k]` weight.
pub(crate) fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * k.div_ceil(2) * NR * 2
}

/// `x · Wᵀ + bias` (`[m, n]`, row-major) for `x` `[m, k]` f32 and `W`
/// packed by [`pack`]. The inputs are rounded to bf16; products and the
/// bias are summed in f32. Panics unless [`available`] (callers check).
pub(crate) fn product(
    x: &[f32],
    m: usize,
    k: usize,
    packed: &[u16],
    n: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert!(
        available(),
        "bf16 dot-product kernel on a CPU without AVX512_BF16"
    );
    assert!(x.len() >= m * k && packed.len() >= packed_len(n, k));
    let k2 = k.div_ceil(2);
    let panels = n.div_ceil(NR);
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    // The inputs as bf16 pairs, one u32 per pair, rows padded to `k2`.
    let mut xs = vec![0u32; m * k2];
    xs.par_chunks_mut(k2)
        .zip(x.par_chunks(k.max(1)))
        .for_each(|(dst, src)| to_pairs(src, dst));
    let finish = |rows: &mut [f32]| {
        if let Some(bias) = bias {
            for row in rows.chunks_exact_mut(n) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
    };
    if m > MC && n.is_multiple_of(NR) {
        // A batch: each block of rows written in place against every
        // panel, its bias added while it is in cache.
        let rows_per_block = balanced_row_block(m, MC);
        return par_filled(m * n, rows_per_block * n, |first, block| {
            let rows = block.len() / n;
            let a = &xs[first / n * k2..][..rows * k2];
            tile_product(a, rows, k2, packed, panels, block);
            finish(block);
        });
    }
    // Few rows (a query) split the panels between threads; a batch whose
    // last panel is partial goes by blocks of rows, through tiles.
    let shape = tile_shape(m, panels, MC, MC);
    let mut out = tiled_product(m, n, NR, shape, |r0, rows, q0, count| {
        let mut tile = vec![0f32; rows * count * NR];
        let a = &xs[r0 * k2..(r0 + rows) * k2];
        let b = &packed[q0 * k2 * NR * 2..(q0 + count) * k2 * NR * 2];
        tile_product(a, rows, k2, b, count, &mut tile);
        tile
    });
    finish(&mut out);
    out
}

/// One row of f32 inputs as bf16 pairs (`dst` holds `src.len().div_ceil(2)`
/// pairs; an odd last input is paired with zero).
fn to_pairs(src: &[f32], dst: &mut [u32]) {
    let whole = (src.len() / 32).min(dst.len() / 16);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: callers run only where `available()`; the loop stays within
    // `whole` blocks of 32 inputs and 16 pairs.
    unsafe {
        avx512::to_pairs(&src[..whole * 32], &mut dst[..whole * 16]);
    }
    for (d, pair) in dst[whole * 16..]
        .iter_mut()
        .zip(src[whole * 32..].chunks(2))
    {
        let lo = to_bf16(pair[0]) as u32;
        let hi = pair.get(1).map_or(0, |&v| to_bf16(v)) as u32;
        *d = lo | hi << 16;
    }
}

/// `tile [rows, count·NR] = a [rows, k2 pairs] · panels`, blocked so that a
/// panel's block stays in L1 while the rows' block sits in L2.
fn tile_product(a: &[u32], rows: usize, k2: usize, b: &[u16], count: usize, tile: &mut [f32]) {
    let width = count * NR;
    for p0 in (0..k2).step_by(KC2) {
        let kc = KC2.min(k2 - p0);
        for q in 0..count {
            let panel = &b[(q * k2 + p0) * NR * 2..][..kc * NR * 2];
            for i0 in (0..rows).step_by(MR) {
                let r = MR.min(rows - i0);
                let a_rows = &a[i0 * k2 + p0..];
                let c = &mut tile[i0 * width + q * NR..];
                micro_kernel(r, a_rows, k2, panel, kc, c, width, p0 > 0);
            }
        }
    }
}

/// `c[i][0..NR] (+)= Σ_p a[i][p] · panel[p]` for `r` ≤ [`MR`] rows.
#[allow(clippy::too_many_arguments)]
fn micro_kernel(
    r: usize,
    a: &[u32],
    lda: usize,
    panel: &[u16],
    kc: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    assert!((1..=MR).contains(&r) && kc >= 1);
    assert!(a.len() >= (r - 1) * lda + kc && panel.len() >= kc * NR * 2);
    assert!(c.len() >= (r - 1) * ldc + NR);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `product` checked the CPU's features; the bounds of every
    // pointer the kernel forms were asserted above.
    unsafe {
        use avx512::rows;
        match r {
            12 => rows::<12>(a, lda, panel, kc, c, ldc, accumulate),
            11 => rows::<11>(a, lda, panel, kc, c, ldc, accumulate),
            10 => rows::<10>(a, lda, panel, kc, c, ldc, accumulate),
            9 => rows::<9>(a, lda, panel, kc, c, ldc, accumulate),
            8 => rows::<8>(a, lda, panel, kc, c, ldc, accumulate),
            7 => rows::<7>(a, lda, panel, kc, c, ldc, accumulate),
            6 => rows::<6>(a, lda, panel, kc, c, ldc, accumulate),
            5 => rows::<5>(a, lda, panel, kc, c, ldc, accumulate),
            4 => rows::<4>(a, lda, panel, kc, c, ldc, accumulate),
            3 => rows::<3>(a, lda, panel, kc, c, ldc, accumulate),
            2 => rows::<2>(a, lda, panel, kc, c, ldc, accumulate),
            _ => rows::<1>(a, lda, panel, kc, c, ldc, accumulate),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("available() is false off x86-64")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::NR;
    use std::arch::x86_64::*;

    /// 32 inputs at a time to bf16 (round to nearest even), in order.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn to_pairs(src: &[f32], dst: &mut [u32]) {
        for (s, d) in src.chunks_exact(32).zip(dst.chunks_exact_mut(16)) {
            let lo = _mm512_loadu_ps(s.as_ptr());
            let hi = _mm512_loadu_ps(s.as_ptr().add(16));
            let b: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_storeu_si512(d.as_mut_ptr().cast(), b);
        }
    }

    /// `R` rows × 32 columns: per input pair, two panel registers and one
    /// broadcast pair per row feed 2·R `vdpbf16ps`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn rows<const R: usize>(
        a: &[u32],
        lda: usize,
        panel: &[u16],
        kc: usize,
        c: &mut [f32],
        ldc: usize,
        accumulate: bool,
    ) {
        let ap = a.as_ptr();
        let bp = panel.as_ptr();
        let cp = c.as_mut_ptr();
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        if accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                row[0] = _mm512_loadu_ps(cp.add(i * ldc));
                row[1] = _mm512_loadu_ps(cp.add(i * ldc + 16));
            }
        }
        for p in 0..kc {
            let w = bp.add(p * NR * 2);
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.cast()));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(w.add(32).cast()));
            for (i, row) in acc.iter_mut().enumerate() {
                let x: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*ap.add(i * lda + p) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], x, w0);
                row[1] = _mm512_dpbf16_ps(row[1], x, w1);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            _mm512_storeu_ps(cp.add(i * ldc), row[0]);
            _mm512_storeu_ps(cp.add(i * ldc + 16), row[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;

    fn rounded(v: f32) -> f64 {
        half::bf16::from_bits(to_bf16(v)).to_f32() as f64
    }

    #[test]
    fn products_equal_the_bf16_rounded_definition() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_BF16");
            return;
        }
        // Odd k, partial panels, every micro-kernel height, more than one
        // row block and cache block, both output paths.
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 7, 5),
            (9, 512, 1536),
            (13, 300, 33),
            (200, 771, 70),
            (MC + 5, 2 * KC2 + 3, NR + 1),
            // Whole panels and more rows than a block: written in place.
            (2 * MC + 7, 2 * KC2 + 1, 2 * NR),
        ] {
            let x = values(m * k, (m * 31 + k) as u64);
            let w = values(n * k, (n * 17 + k) as u64);
            let bias = values(n, 5);
            let got = product(&x, m, k, &pack(&w, n, k), n, Some(&bias));
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| rounded(x[i * k + p]) * rounded(w[j * k + p]))
                        .sum::<f64>()
                        + bias[j] as f64;
                    let g = got[i * n + j] as f64;
                    // f32 sums of exact bf16 products: a few ulps of the
                    // sum of magnitudes.
                    let scale: f64 = (0..k)
                        .map(|p| (rounded(x[i * k + p]) * rounded(w[j * k + p])).abs())
                        .sum::<f64>()
                        + 1.0;
                    assert!(
                        (g - want).abs() <= 1e-5 * scale,
                        "[{m}, {k}] · [{n}, {k}]ᵀ at ({i}, {j}): {g} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn packing_pads_odd_inputs_and_partial_panels_with_zeros() {
        let w = values(3 * 5, 1);
        let packed = pack(&w, 3, 5);
        assert_eq!(packed.len(), packed_len(3, 5));
        assert_eq!(packed.len(), 3 * NR * 2);
        // Column 1, inputs 2 and 3 are pair 1; input 4's partner is zero.
        assert_eq!(packed[NR * 2 + 2], to_bf16(w[5 + 2]));
        assert_eq!(packed[NR * 2 + 3], to_bf16(w[5 + 3]));
        assert_eq!(packed[2 * NR * 2 + 2 * 2 + 1], 0);
        assert!(packed[..NR * 2].chunks(2).skip(3).all(|p| p == [0, 0]));
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p glimpse-clip bf16_dot_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bf16_dot_speed() {
        if !available() {
            return;
        }
        for &(m, k, n) in &[
            (1600, 768, 3072),
            (1600, 3072, 768),
            (1600, 768, 2304),
            (9, 512, 2048),
        ] {
            let x = vec![0.5f32; m * k];
            let w = pack(&vec![0.25f32; n * k], n, k);
            product(&x, m, k, &w, n, None);
            let reps = if m > 100 { 5 } else { 500 };
            let t = std::time::Instant::now();
            for _ in 0..reps {
                product(&x, m, k, &w, n, None);
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "[{m},{k}]x[{n},{k}]: {:.2} ms, {:.0} GFLOP/s",
                dt * 1e3,
                2.0 * (m * k * n) as f64 / dt / 1e9
            );
        }
    }
}
