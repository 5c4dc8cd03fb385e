//! Matrix products on int8 dot-product instructions (AVX512_VNNI).
//!
//! Where the CPU has `vpdpbusd` (AMD Zen 4 and later, Intel Ice Lake and
//! Cascade Lake and later), one instruction multiplies 64 pairs of bytes
//! and adds them, four at a time, into 16 int32 sums: four times an f32
//! FMA's multiply-adds. [`product`] computes `x · Wᵀ + b` for int8 weights
//! (one f32 scale per output, absmax / 127, as the widening kernel's) by
//! also quantising each input row on the fly: `x_i ≈ s_i · q_i` with `s_i =
//! max|x_i| / 127` and `q_i` int8 (round half to even). The integer sums
//! are exact, so a row's result depends only on that row — never on the
//! rows it is multiplied with — and equals, bit for bit, the definition in
//! the tests: `y_ij = f32(Σ_p q_ip · w_jp) · s_i · scale_j + b_j`.
//!
//! The instruction multiplies unsigned by signed bytes. The weights are
//! stored unsigned, `w + 128`, and the excess `128 · Σ_p q_ip` is taken off
//! each row's sums. Weights are packed once by [`pack`]: panels of [`NR`]
//! output columns, each `[k.div_ceil(4)][NR][4]`, the layout the
//! instruction reads.
//!
//! This module does nothing on other CPUs: [`available`] says whether it
//! can run, and `QueryWeights` keeps its widening kernel (f32 inputs) where
//! it cannot.

use rayon::prelude::*;

use crate::kernels::{balanced_row_block, par_filled, tile_shape, tiled_product};
use crate::team::{SharedSlice, Team};

/// Output columns per packed panel: two 16-lane registers.
pub(crate) const NR: usize = 32;
/// Input rows per micro-kernel call: 12 rows × 2 registers = 24
/// accumulators, plus two weight registers (of 32).
const MR: usize = 12;
/// Input rows per row block of a many-row product (48 rows of 3,072
/// inputs are 144 KiB, in L2 while every panel passes over them).
const MC: usize = 48;

/// Rows up to which [`product_in_team`] runs (a query's, or a few
/// queries'; more rows take [`product`]'s row blocks).
pub(crate) const TEAM_MAX_ROWS: usize = MC;

/// Inputs up to this many values are quantised on the calling thread.
const SERIAL_QUANTISE_MAX: usize = 1 << 16;

/// Whether this CPU runs the int8 dot-product kernel.
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Packs int8 codes `[n, k]` (PyTorch `[out, in]`, code in -127..=127) as
/// unsigned panels of [`NR`] columns, each `[k.div_ceil(4)][NR][4]`: for
/// every group of four inputs the 32 columns' four codes side by side, plus
/// 128. Padding (inputs past `k`, columns past `n`) is code 0.
pub(crate) fn pack(codes: &[i8], n: usize, k: usize) -> Vec<u8> {
    let k4 = k.div_ceil(4);
    let panels = n.div_ceil(NR);
    let mut packed = vec![128u8; panels * k4 * NR * 4];
    for (j, row) in codes.chunks_exact(k.max(1)).take(n).enumerate() {
        let panel = &mut packed[(j / NR) * k4 * NR * 4..][..k4 * NR * 4];
        let c = j % NR;
        for (i, &v) in row.iter().enumerate() {
            panel[(i / 4) * NR * 4 + c * 4 + i % 4] = (i16::from(v) + 128) as u8;
        }
    }
    packed
}

/// Bytes of a packed `[n, k]` weight.
pub(crate) fn packed_len(n: usize, k: usize) -> usize {
    n.div_ceil(NR) * k.div_ceil(4) * NR * 4
}

/// Input rows quantised for the kernel: each row `k.div_ceil(4) * 4` codes
/// (padded with zeros), its scale and the sum of its codes.
#[derive(Default)]
struct QuantisedRows {
    codes: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<i32>,
    stride: usize,
}

/// One row `x ≈ scale · q`: `scale = max|x| / 127`, `q = x · (127 / max|x|)`
/// rounded half to even. An all-zero row has scale 0; a row with a NaN or
/// an infinity gets a NaN scale, so its outputs are NaN as in f32.
fn quantise_row(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let Some(max) = finite_abs_max(x) else {
        q.fill(0);
        return (f32::NAN, 0);
    };
    if max == 0.0 {
        q.fill(0);
        return (0.0, 0);
    }
    let inv = 127.0 / max;
    if !inv.is_finite() {
        // Values below ~4e-37: codes of zero, as for an all-zero row.
        q.fill(0);
        return (0.0, 0);
    }
    #[cfg(target_arch = "x86_64")]
    let (whole, mut sum) = {
        let whole = x.len() / 16 * 16;
        // SAFETY: callers run only where `available()`; both slices hold
        // `whole` values.
        let sum = unsafe { avx512::quantise(&x[..whole], inv, &mut q[..whole]) };
        (whole, sum)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (whole, mut sum) = (0, 0i32);
    for (c, &v) in q[whole..x.len()].iter_mut().zip(&x[whole..]) {
        *c = quantise_value(v, inv);
        sum += i32::from(*c);
    }
    q[x.len()..].fill(0);
    (max / 127.0, sum)
}

/// `max |x|`, or `None` if `x` holds a NaN or an infinity.
fn finite_abs_max(x: &[f32]) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    let (whole, max) = {
        let whole = x.len() / 16 * 16;
        // SAFETY: callers run only where `available()`; the slice holds
        // `whole` values.
        (whole, unsafe { avx512::finite_abs_max(&x[..whole]) }?)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (whole, max) = (0, 0f32);
    let rest = &x[whole..];
    if rest.iter().any(|v| !v.is_finite()) {
        return None;
    }
    Some(rest.iter().fold(max, |m, v| m.max(v.abs())))
}

/// One input's code: `v · inv` rounded half to even, within ±127.
fn quantise_value(v: f32, inv: f32) -> i8 {
    (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// Every row of `x` (`m` rows of `k`) quantised for the kernel.
fn quantise(x: &[f32], m: usize, k: usize) -> QuantisedRows {
    let stride = k.div_ceil(4) * 4;
    let mut codes = vec![0i8; m * stride];
    let mut meta = vec![(0f32, 0i32); m];
    if m * k <= SERIAL_QUANTISE_MAX {
        // A query: a few microseconds, less than waking a thread.
        for ((q, row), meta) in codes
            .chunks_mut(stride.max(1))
            .zip(x.chunks(k.max(1)))
            .zip(meta.iter_mut())
        {
            *meta = quantise_row(row, q);
        }
    } else {
        codes
            .par_chunks_mut(stride.max(1))
            .zip(x.par_chunks(k.max(1)))
            .zip(meta.par_iter_mut())
            .for_each(|((q, row), meta)| *meta = quantise_row(row, q));
    }
    let (scales, sums) = meta.into_iter().unzip();
    QuantisedRows {
        codes,
        scales,
        sums,
        stride,
    }
}

/// What [`product`] and [`product_in_team`] assume: the CPU's features and
/// slices as long as the shapes say (callers check; a panic otherwise).
fn check_arguments(x: &[f32], m: usize, k: usize, packed: &[u8], n: usize, scales: &[f32]) {
    assert!(
        available(),
        "int8 dot-product kernel on a CPU without AVX512_VNNI"
    );
    assert!(x.len() >= m * k && packed.len() >= packed_len(n, k) && scales.len() >= n);
}

/// `x · Wᵀ + bias` (`[m, n]`, row-major) for `x` `[m, k]` f32 and `W`
/// packed by [`pack`] with one scale per output (`scales`, `n` values).
/// Panics unless [`available`] (callers check).
pub(crate) fn product(
    x: &[f32],
    m: usize,
    k: usize,
    packed: &[u8],
    n: usize,
    scales: &[f32],
    bias: Option<&[f32]>,
) -> Vec<f32> {
    check_arguments(x, m, k, packed, n, scales);
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    let panels = n.div_ceil(NR);
    let k4 = k.div_ceil(4);
    // Scales and bias padded to whole panels (padding columns are dropped).
    let mut col_scales = vec![0f32; panels * NR];
    col_scales[..n].copy_from_slice(&scales[..n]);
    let mut col_bias = vec![0f32; panels * NR];
    if let Some(b) = bias {
        col_bias[..n].copy_from_slice(&b[..n]);
    }
    let rows = quantise(x, m, k);
    let panel_len = k4 * NR * 4;
    // `out [rows, count·NR]` (row stride `ldc`) for rows `r0..` and panels
    // `q0..q0 + count`.
    let block = |r0: usize, nrows: usize, q0: usize, count: usize, out: &mut [f32], ldc: usize| {
        for q in q0..q0 + count {
            let panel = &packed[q * panel_len..][..panel_len];
            let cols = (q * NR)..(q + 1) * NR;
            for i0 in (0..nrows).step_by(MR) {
                let r = MR.min(nrows - i0);
                let first = r0 + i0;
                micro_kernel(
                    &rows.codes[first * rows.stride..][..r * rows.stride],
                    rows.stride,
                    &rows.scales[first..first + r],
                    &rows.sums[first..first + r],
                    panel,
                    &col_scales[cols.clone()],
                    &col_bias[cols.clone()],
                    &mut out[i0 * ldc + (q - q0) * NR..],
                    ldc,
                );
            }
        }
    };
    if m > MC && n.is_multiple_of(NR) {
        // A batch: each block of rows written in place against every panel.
        let rows_per_block = balanced_row_block(m, MC);
        return par_filled(m * n, rows_per_block * n, |first, chunk| {
            block(first / n, chunk.len() / n, 0, panels, chunk, n)
        });
    }
    // Few rows (a query) split the panels between threads; a batch whose
    // last panel is partial goes by blocks of rows, through tiles.
    let shape = tile_shape(m, panels, MC, MC);
    tiled_product(m, n, NR, shape, |r0, nrows, q0, count| {
        let mut tile = vec![0f32; nrows * count * NR];
        block(r0, nrows, q0, count, &mut tile, count * NR);
        tile
    })
}

/// Weights a chunk of [`product_in_team`] reads at most: 64 KiB, a few
/// microseconds from memory, so that a query's block (~50 chunks over its
/// four products, 4–16 each) balances between the threads while claiming
/// a chunk costs a few nanoseconds. (16 KiB to 256 KiB measured alike.)
const TEAM_CHUNK_BYTES: usize = 1 << 16;

/// [`product`] as steps of a [`Team`] (for at most [`TEAM_MAX_ROWS`] rows and `n` a
/// multiple of [`NR`]; `None` otherwise, and the caller uses [`product`]):
/// each chunk is a group of panels against every row, and hands each row's
/// share of the result to `write(row, first_column, values)`, which may
/// finish it (an activation, a residual sum) where it lands. The values are
/// those of [`product`], bit for bit.
#[allow(clippy::too_many_arguments)]
pub(crate) fn product_in_team(
    team: &Team,
    x: &[f32],
    m: usize,
    k: usize,
    packed: &[u8],
    n: usize,
    scales: &[f32],
    bias: Option<&[f32]>,
    write: &(dyn Fn(usize, usize, &[f32]) + Sync),
) -> Option<()> {
    if m > TEAM_MAX_ROWS || !n.is_multiple_of(NR) {
        return None;
    }
    check_arguments(x, m, k, packed, n, scales);
    if m == 0 || n == 0 {
        return Some(());
    }
    let zeros;
    let bias = match bias {
        Some(b) => &b[..n],
        None => {
            zeros = vec![0f32; n];
            &zeros[..]
        }
    };
    // Taken out of (and put back into) the thread's slot, so that nothing
    // stays borrowed while the team runs.
    let mut rows = TEAM_ROWS.with(|r| std::mem::take(&mut *r.borrow_mut()));
    quantise_in_team(team, x, m, k, &mut rows);
    let panels = n / NR;
    let panel_len = k.div_ceil(4) * NR * 4;
    let per_chunk =
        (TEAM_CHUNK_BYTES / panel_len).clamp(1, panels.div_ceil(2 * team.threads()).max(1));
    team.run(panels.div_ceil(per_chunk), &|c| {
        let (q0, q1) = (c * per_chunk, ((c + 1) * per_chunk).min(panels));
        let width = (q1 - q0) * NR;
        crate::team::with_scratch(&TEAM_TILE, m * width, |tile| {
            for q in q0..q1 {
                let cols = q * NR..(q + 1) * NR;
                for i0 in (0..m).step_by(MR) {
                    let r = MR.min(m - i0);
                    micro_kernel(
                        &rows.codes[i0 * rows.stride..][..r * rows.stride],
                        rows.stride,
                        &rows.scales[i0..i0 + r],
                        &rows.sums[i0..i0 + r],
                        &packed[q * panel_len..][..panel_len],
                        &scales[cols.clone()],
                        &bias[cols.clone()],
                        &mut tile[i0 * width + (q - q0) * NR..],
                        width,
                    );
                }
            }
            // The micro-kernels wrote every value of the tile.
            for (i, values) in tile.chunks_exact(width).enumerate() {
                write(i, q0 * NR, values);
            }
        })
    });
    TEAM_ROWS.with(|r| *r.borrow_mut() = rows);
    Some(())
}

/// [`quantise`] into `rows` (its buffers reused: a query's ~50 products
/// would otherwise allocate four each), the rows of a large input split
/// between the team.
fn quantise_in_team(team: &Team, x: &[f32], m: usize, k: usize, rows: &mut QuantisedRows) {
    let stride = k.div_ceil(4) * 4;
    rows.stride = stride;
    // Every value is written below (codes past `k` as zeros).
    rows.codes.resize(m * stride, 0);
    rows.scales.resize(m, 0.0);
    rows.sums.resize(m, 0);
    let (codes, scales, sums) = (
        SharedSlice::new(&mut rows.codes[..m * stride]),
        SharedSlice::new(&mut rows.scales[..m]),
        SharedSlice::new(&mut rows.sums[..m]),
    );
    // SAFETY: each call touches row `i` alone.
    let row = |i: usize| unsafe {
        let (scale, sum) = quantise_row(&x[i * k..][..k], codes.range(i * stride, stride));
        scales.range(i, 1)[0] = scale;
        sums.range(i, 1)[0] = sum;
    };
    if m * k <= SERIAL_QUANTISE_MAX {
        // A query: a few microseconds on this thread.
        (0..m).for_each(row);
    } else {
        team.run(m, &row);
    }
}

thread_local! {
    /// The calling thread's quantised inputs of [`product_in_team`], reused.
    static TEAM_ROWS: std::cell::RefCell<QuantisedRows> = std::cell::RefCell::default();
    /// A thread's tile of one [`product_in_team`] chunk, reused.
    static TEAM_TILE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `c[i][0..NR] = f32(Σ_p a[i][p] · w[p] − 128 · sums[i]) · scales[i] ·
/// col_scales + col_bias` for `r` ≤ [`MR`] quantised rows `a` (stride
/// `lda` codes, a multiple of 4) against one packed panel.
#[allow(clippy::too_many_arguments)]
fn micro_kernel(
    a: &[i8],
    lda: usize,
    scales: &[f32],
    sums: &[i32],
    panel: &[u8],
    col_scales: &[f32],
    col_bias: &[f32],
    c: &mut [f32],
    ldc: usize,
) {
    let r = scales.len();
    let k4 = lda / 4;
    assert!((1..=MR).contains(&r) && sums.len() == r && lda.is_multiple_of(4));
    assert!(a.len() >= r * lda && panel.len() >= k4 * NR * 4);
    assert!(col_scales.len() >= NR && col_bias.len() >= NR);
    assert!(c.len() >= (r - 1) * ldc + NR);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `product` checked the CPU's features; the bounds of every
    // pointer the kernel forms were asserted above.
    unsafe {
        use avx512::rows;
        let f = match r {
            12 => rows::<12>,
            11 => rows::<11>,
            10 => rows::<10>,
            9 => rows::<9>,
            8 => rows::<8>,
            7 => rows::<7>,
            6 => rows::<6>,
            5 => rows::<5>,
            4 => rows::<4>,
            3 => rows::<3>,
            2 => rows::<2>,
            _ => rows::<1>,
        };
        f(
            a, lda, scales, sums, panel, k4, col_scales, col_bias, c, ldc,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("available() is false off x86-64")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::NR;
    use std::arch::x86_64::*;

    /// Bytes ahead of the weights being multiplied that [`rows`] asks the
    /// cache for. A query's products read each weight once: without it the
    /// next weights were requested only when needed, so reading (9 GB/s
    /// per core on a 2.5 GHz Xeon) and multiplying (`vpdpbusd`, 2 cycles
    /// there) took turns; 1 KB ahead they overlap (one 2,048 × 512 product
    /// for 9 rows: 130–137 → 108 µs on two threads). Reads past a panel run
    /// into the next one, which is where the kernel goes next.
    const PREFETCH: usize = 1024;

    /// `max |x|` for 16 values at a time, `None` if any is a NaN or an
    /// infinity (`|v| ≤ f32::MAX` is false for both). `x.len()` is a
    /// multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn finite_abs_max(x: &[f32]) -> Option<f32> {
        let limit = _mm512_set1_ps(f32::MAX);
        let mut max = _mm512_setzero_ps();
        let mut finite: u16 = 0xffff;
        for s in x.chunks_exact(16) {
            let v = _mm512_abs_ps(_mm512_loadu_ps(s.as_ptr()));
            finite &= _mm512_cmp_ps_mask::<_CMP_LE_OQ>(v, limit);
            max = _mm512_max_ps(max, v);
        }
        (finite == 0xffff).then(|| _mm512_reduce_max_ps(max))
    }

    /// Codes of `x · inv` (round half to even, clamped to ±127) for 16
    /// values at a time; returns their sum. `x.len()` is a multiple of 16.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub(super) unsafe fn quantise(x: &[f32], inv: f32, q: &mut [i8]) -> i32 {
        let scale = _mm512_set1_ps(inv);
        let (lo, hi) = (_mm512_set1_ps(-127.0), _mm512_set1_ps(127.0));
        let mut sum = _mm512_setzero_si512();
        for (s, d) in x.chunks_exact(16).zip(q.chunks_exact_mut(16)) {
            let v = _mm512_mul_ps(_mm512_loadu_ps(s.as_ptr()), scale);
            let v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            // To nearest, ties to even (as `round_ties_even`), whatever
            // the MXCSR rounding mode.
            let i =
                _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
            sum = _mm512_add_epi32(sum, i);
            _mm_storeu_si128(d.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(i));
        }
        _mm512_reduce_add_epi32(sum)
    }

    /// `R` rows × 32 columns: per group of four inputs, two panel
    /// registers and one broadcast group per row feed 2·R `vpdpbusd`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn rows<const R: usize>(
        a: &[i8],
        lda: usize,
        scales: &[f32],
        sums: &[i32],
        panel: &[u8],
        k4: usize,
        col_scales: &[f32],
        col_bias: &[f32],
        c: &mut [f32],
        ldc: usize,
    ) {
        let ap = a.as_ptr();
        let bp = panel.as_ptr();
        let cp = c.as_mut_ptr();
        let mut acc = [[_mm512_setzero_si512(); 2]; R];
        for p in 0..k4 {
            let w = bp.add(p * NR * 4);
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH).cast());
            _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add(PREFETCH + 64).cast());
            let w0 = _mm512_loadu_si512(w.cast());
            let w1 = _mm512_loadu_si512(w.add(64).cast());
            for (i, row) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(ap.add(i * lda + 4 * p).cast::<i32>().read_unaligned());
                row[0] = _mm512_dpbusd_epi32(row[0], w0, x);
                row[1] = _mm512_dpbusd_epi32(row[1], w1, x);
            }
        }
        let s = [
            _mm512_loadu_ps(col_scales.as_ptr()),
            _mm512_loadu_ps(col_scales.as_ptr().add(16)),
        ];
        let b = [
            _mm512_loadu_ps(col_bias.as_ptr()),
            _mm512_loadu_ps(col_bias.as_ptr().add(16)),
        ];
        for (i, row) in acc.iter().enumerate() {
            let excess = _mm512_set1_epi32(128 * sums[i]);
            let sx = _mm512_set1_ps(scales[i]);
            for h in 0..2 {
                let exact = _mm512_cvtepi32_ps(_mm512_sub_epi32(row[h], excess));
                let y = _mm512_add_ps(_mm512_mul_ps(_mm512_mul_ps(exact, sx), s[h]), b[h]);
                _mm512_storeu_ps(cp.add(i * ldc + 16 * h), y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;

    /// Deterministic codes in -127..=127.
    fn codes(n: usize, seed: u64) -> Vec<i8> {
        values(n, seed)
            .into_iter()
            .map(|v| (v * 127.0).round() as i8)
            .collect()
    }

    /// The definition, one row at a time in scalar code.
    fn definition(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[i8],
        n: usize,
        scales: &[f32],
        bias: &[f32],
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            let row = &x[i * k..][..k];
            let max = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (inv, s) = if max > 0.0 {
                (127.0 / max, max / 127.0)
            } else {
                (0.0, 0.0)
            };
            let q: Vec<i64> = row
                .iter()
                .map(|&v| i64::from(quantise_value(v, inv)))
                .collect();
            for j in 0..n {
                let dot: i64 = (0..k).map(|p| q[p] * i64::from(w[j * k + p])).sum();
                out[i * n + j] = dot as f32 * s * scales[j] + bias[j];
            }
        }
        out
    }

    #[test]
    fn products_equal_the_quantised_definition_bit_for_bit() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX512_VNNI");
            return;
        }
        // k not a multiple of 4 or 16, partial panels, every micro-kernel
        // height, more than one row block, both output paths.
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 7, 5),
            (9, 512, 1536),
            (13, 300, 33),
            (200, 771, 70),
            (MC + 5, 37, NR + 1),
            // Whole panels and more rows than a block: written in place.
            (2 * MC + 7, 2048, 2 * NR),
        ] {
            let x: Vec<f32> = values(m * k, (m * 31 + k) as u64)
                .into_iter()
                .map(|v| v * 3.0)
                .collect();
            let w = codes(n * k, (n * 17 + k) as u64);
            let scales: Vec<f32> = values(n, 3).iter().map(|v| 0.01 + v.abs() * 0.02).collect();
            let bias = values(n, 5);
            let got = product(&x, m, k, &pack(&w, n, k), n, &scales, Some(&bias));
            let want = definition(&x, m, k, &w, n, &scales, &bias);
            for (idx, (g, e)) in got.iter().zip(&want).enumerate() {
                assert_eq!(
                    g.to_bits(),
                    e.to_bits(),
                    "[{m}, {k}] · [{n}, {k}]ᵀ at ({}, {}): {g} vs {e}",
                    idx / n,
                    idx % n
                );
            }
            // Each row alone gives the row of the batch, bit for bit.
            let i = m / 2;
            let alone = product(
                &x[i * k..][..k],
                1,
                k,
                &pack(&w, n, k),
                n,
                &scales,
                Some(&bias),
            );
            assert_eq!(alone, got[i * n..][..n]);
        }
    }

    #[test]
    fn zero_and_non_finite_rows() {
        if !available() {
            return;
        }
        let (k, n) = (20, 3);
        let w = codes(n * k, 9);
        let scales = [0.5f32; 3];
        let bias = [1.0f32, 2.0, 3.0];
        // k = 20: the NaN among the first 16 values (the vector pass), the
        // infinity among the last 4.
        let mut x = vec![0f32; 4 * k];
        x[k + 4] = f32::NAN;
        x[2 * k] = 1.0;
        x[3 * k + 18] = f32::NEG_INFINITY;
        let got = product(&x, 4, k, &pack(&w, n, k), n, &scales, Some(&bias));
        assert_eq!(&got[..3], &bias, "an all-zero row gives the bias");
        assert!(got[3..6].iter().all(|v| v.is_nan()), "{got:?}");
        assert!(got[6..9].iter().all(|v| v.is_finite()));
        assert!(got[9..].iter().all(|v| v.is_nan()), "{got:?}");
        // A row too small for `127 / max` to be finite counts as zero.
        let tiny = [1e-38f32; 20];
        let got = product(&tiny, 1, k, &pack(&w, n, k), n, &scales, Some(&bias));
        assert_eq!(got, bias);
        assert_eq!(finite_abs_max(&[1.0; 16].map(|v: f32| v * 2.0)), Some(2.0));
        let mut big = [0.5f32; 32];
        big[7] = f32::INFINITY;
        assert_eq!(finite_abs_max(&big), None);
        big[7] = -3.0;
        assert_eq!(finite_abs_max(&big), Some(3.0));
    }

    #[test]
    fn packing_adds_128_and_pads_with_code_zero() {
        let w = codes(3 * 5, 1);
        let packed = pack(&w, 3, 5);
        assert_eq!(packed.len(), packed_len(3, 5));
        assert_eq!(packed.len(), 2 * NR * 4);
        // Column 1, inputs 0..4 are group 0; input 4 starts group 1.
        assert_eq!(packed[4 + 2], (i16::from(w[5 + 2]) + 128) as u8);
        assert_eq!(packed[NR * 4 + 4], (i16::from(w[5 + 4]) + 128) as u8);
        assert_eq!(packed[NR * 4 + 4 + 1], 128);
        assert!(packed[3 * 4..NR * 4].iter().all(|&b| b == 128));
    }

    #[test]
    fn team_products_equal_the_plain_products_bit_for_bit() {
        if !available() {
            return;
        }
        for threads in 1..=3 {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for &(m, k, n) in &[
                (1, 512, 2048),
                (9, 512, 1536),
                (13, 2048, 512),
                (48, 64, 96),
                (5, 70, 32),
            ] {
                let x = values(m * k, (m * k + n) as u64);
                let codes = codes(n * k, n as u64);
                let w = pack(&codes, n, k);
                let scales: Vec<f32> = values(n, 7).iter().map(|v| 0.01 + v.abs() * 0.01).collect();
                let bias = values(n, 8);
                for bias in [None, Some(&bias[..])] {
                    let want = product(&x, m, k, &w, n, &scales, bias);
                    let got = std::sync::Mutex::new(vec![f32::NAN; m * n]);
                    let written = std::sync::atomic::AtomicUsize::new(0);
                    pool.install(|| {
                        crate::team::with_team(|team| {
                            product_in_team(team, &x, m, k, &w, n, &scales, bias, &|i, c, v| {
                                got.lock().unwrap()[i * n + c..][..v.len()].copy_from_slice(v);
                                written.fetch_add(v.len(), std::sync::atomic::Ordering::SeqCst);
                            })
                        })
                    })
                    .unwrap();
                    assert_eq!(written.into_inner(), m * n, "each value written once");
                    let got = got.into_inner().unwrap();
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "[{m}, {k}] x [{n}, {k}], {threads} threads"
                    );
                }
            }
            // More rows than a team product takes, or a partial panel: none.
            let (x, w) = (vec![0.5f32; 49 * 64], pack(&vec![1i8; 32 * 64], 32, 64));
            pool.install(|| {
                crate::team::with_team(|team| {
                    assert!(product_in_team(
                        team,
                        &x,
                        49,
                        64,
                        &w,
                        32,
                        &[1.0; 32],
                        None,
                        &|_, _, _| ()
                    )
                    .is_none());
                    assert!(product_in_team(
                        team,
                        &x,
                        9,
                        64,
                        &w,
                        31,
                        &[1.0; 32],
                        None,
                        &|_, _, _| ()
                    )
                    .is_none());
                })
            });
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p glimpse-clip int8_dot_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn int8_dot_speed() {
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
            let w = pack(&vec![3i8; n * k], n, k);
            let scales = vec![0.01f32; n];
            product(&x, m, k, &w, n, &scales, None);
            let reps = if m > 100 { 5 } else { 500 };
            let t = std::time::Instant::now();
            for _ in 0..reps {
                product(&x, m, k, &w, n, &scales, None);
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "[{m},{k}]x[{n},{k}]: {:.2} ms, {:.0} GOP/s",
                dt * 1e3,
                2.0 * (m * k * n) as f64 / dt / 1e9
            );
        }
    }
}
