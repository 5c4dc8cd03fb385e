//! Scaled dot-product attention for inference on the CPU: every head of
//! every sequence as two small matrix products on the register-blocked f32
//! panel kernel of [`crate::kernels`] (queries × keys, then probabilities ×
//! values), with a vectorised softmax between them, multi-threaded over the
//! sequences of a batch (or over the heads of one long sequence).
//!
//! candle's composition (permute the q/k/v heads into place, a batched
//! product, softmax, a second product, permute back) spends most of its time
//! copying and runs largely on one thread: at batch 16 of the int8 image
//! tower the second core sat idle for a third of the batch. Training keeps
//! `autograd::attention`, whose backward pass recomputes the probabilities
//! the same way it computed them forward; this module has no backward pass.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::{exp, f32_slice, panel_product, PANEL};

/// Which keys each query sees: an additive mask on the scores (0 to keep,
/// -inf to hide).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Mask<'a> {
    /// Every key.
    None,
    /// `[n, n]`, the same for every sequence (a causal mask).
    Shared(&'a [f32]),
    /// `[b, n, n]`, one per sequence (causal with padding hidden).
    PerSequence(&'a [f32]),
}

impl<'a> Mask<'a> {
    /// The `[n, n]` mask of sequence `s`.
    fn of(self, s: usize, n: usize) -> Option<&'a [f32]> {
        match self {
            Mask::None => None,
            Mask::Shared(m) => Some(&m[..n * n]),
            Mask::PerSequence(m) => Some(&m[s * n * n..][..n * n]),
        }
    }

    /// Values this mask must hold for `b` sequences of `n` tokens.
    fn len(self, b: usize, n: usize) -> usize {
        match self {
            Mask::None => 0,
            Mask::Shared(_) => n * n,
            Mask::PerSequence(_) => b * n * n,
        }
    }

    fn values(self) -> &'a [f32] {
        match self {
            Mask::None => &[],
            Mask::Shared(m) | Mask::PerSequence(m) => m,
        }
    }
}

/// Below this many multiply-adds per sequence (`n² · d`), the heads of a
/// lone sequence run on one thread: a text query's ~10 tokens take a few
/// microseconds, less than handing the heads to another thread.
const PARALLEL_HEADS_MIN_WORK: usize = 1 << 18;

/// `out` (`[b, n, heads·hd]`) = softmax(q kᵀ / √hd + mask) v for each head
/// of each of the `b` sequences of `qkv` (`[b, n, 3·heads·hd]`: the q, k
/// and v projections side by side, each `heads × hd` wide).
///
/// # Panics
/// If `qkv` is not `b × n` rows of a width `3 · heads · hd`, or `out` or the
/// mask holds fewer values than these shapes say (callers check).
pub(crate) fn attention(
    qkv: &[f32],
    b: usize,
    n: usize,
    heads: usize,
    mask: Mask,
    out: &mut [f32],
) {
    let Some((d, hd)) = widths(qkv, b, n, heads, mask, out.len()) else {
        return;
    };
    let d3 = 3 * d;
    let out = &mut out[..b * n * d];
    if b > 1 || n * n * d < PARALLEL_HEADS_MIN_WORK {
        let sequence = |(s, o): (usize, &mut [f32])| {
            let mut scratch = Scratch::new(n, hd);
            let mut head_out = vec![0f32; n * hd];
            for h in 0..heads {
                let x = &qkv[s * n * d3..][..n * d3];
                head(x, n, d, h, hd, mask.of(s, n), &mut scratch, &mut head_out);
                scatter(&head_out, n, d, h, hd, o);
            }
        };
        if b > 1 {
            // One task per sequence, as in `kernels::par_filled`.
            out.par_chunks_mut(n * d)
                .enumerate()
                .with_max_len(1)
                .for_each(sequence);
        } else {
            sequence((0, out));
        }
        return;
    }
    // One long sequence (an image query): its heads in parallel.
    let heads_out: Vec<Vec<f32>> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let mut head_out = vec![0f32; n * hd];
            head(
                qkv,
                n,
                d,
                h,
                hd,
                mask.of(0, n),
                &mut Scratch::new(n, hd),
                &mut head_out,
            );
            head_out
        })
        .collect();
    for (h, head_out) in heads_out.iter().enumerate() {
        scatter(head_out, n, d, h, hd, out);
    }
}

/// The model width `d` and head width `hd` of an attention over `qkv`
/// (`[b, n, 3d]`), `None` when there is nothing to compute.
///
/// # Panics
/// As [`attention`]: shapes that do not fit (callers check).
fn widths(
    qkv: &[f32],
    b: usize,
    n: usize,
    heads: usize,
    mask: Mask,
    out_len: usize,
) -> Option<(usize, usize)> {
    let d3 = qkv.len().checked_div(b * n).unwrap_or(0);
    assert_eq!(qkv.len(), b * n * d3, "attention: {b} × {n} rows");
    let d = d3 / 3;
    assert!(
        heads > 0 && d.is_multiple_of(heads) && d3 == 3 * d,
        "attention: width {d3}, {heads} heads"
    );
    assert!(out_len >= b * n * d && mask.values().len() >= mask.len(b, n));
    (b > 0 && n > 0 && d > 0).then_some((d, d / heads))
}

/// [`attention`] as one step of a [`Team`](crate::team::Team): one chunk
/// per head of each sequence. The values are [`attention`]'s, bit for bit
/// (the same `head` per head and sequence).
///
/// # Panics
/// As [`attention`].
pub(crate) fn attention_in_team(
    team: &crate::team::Team,
    qkv: &[f32],
    b: usize,
    n: usize,
    heads: usize,
    mask: Mask,
    out: &mut [f32],
) {
    let Some((d, hd)) = widths(qkv, b, n, heads, mask, out.len()) else {
        return;
    };
    let d3 = 3 * d;
    let shared = crate::team::SharedSlice::new(&mut out[..b * n * d]);
    team.run(b * heads, &|chunk| {
        let (s, h) = (chunk / heads, chunk % heads);
        // This thread's scratch, reused while the shape stays (`head`
        // writes every value before reading it).
        let mut scratch = HEAD_SCRATCH
            .with(|c| c.borrow_mut().take())
            .filter(|(shape, _, _)| *shape == (n, hd))
            .unwrap_or_else(|| ((n, hd), Scratch::new(n, hd), vec![0f32; n * hd]));
        let (_, work, head_out) = &mut scratch;
        let x = &qkv[s * n * d3..][..n * d3];
        head(x, n, d, h, hd, mask.of(s, n), work, head_out);
        for (t, values) in head_out.chunks_exact(hd).enumerate() {
            // SAFETY: chunk (s, h) alone writes head h's columns of
            // sequence s's rows.
            unsafe { shared.range((s * n + t) * d + h * hd, hd) }.copy_from_slice(values);
        }
        HEAD_SCRATCH.with(|c| *c.borrow_mut() = Some(scratch));
    });
}

/// A scratch of one shape (`n`, `hd`) and one head's output, kept per
/// thread by [`attention_in_team`].
type HeadScratch = ((usize, usize), Scratch, Vec<f32>);

thread_local! {
    static HEAD_SCRATCH: std::cell::RefCell<Option<HeadScratch>> = const { std::cell::RefCell::new(None) };
}

/// Copies head `h`'s `n × hd` output into its columns of the `n × d` rows.
fn scatter(head_out: &[f32], n: usize, d: usize, h: usize, hd: usize, rows: &mut [f32]) {
    for t in 0..n {
        rows[t * d + h * hd..][..hd].copy_from_slice(&head_out[t * hd..][..hd]);
    }
}

/// Working memory of one head: its queries, one packed panel, the
/// probabilities and one product tile.
struct Scratch {
    /// Keys padded to whole panels.
    keys: usize,
    q: Vec<f32>,
    panel: Vec<f32>,
    probs: Vec<f32>,
    tile: Vec<f32>,
}

impl Scratch {
    fn new(n: usize, hd: usize) -> Self {
        let keys = n.div_ceil(PANEL) * PANEL;
        Self {
            keys,
            q: vec![0f32; n * hd],
            panel: vec![0f32; hd.max(keys) * PANEL],
            probs: vec![0f32; n * keys],
            tile: vec![0f32; n * PANEL],
        }
    }
}

/// One head of one sequence `x` (`n × 3d`) into `out` (`n × hd`).
#[allow(clippy::too_many_arguments)]
fn head(
    x: &[f32],
    n: usize,
    d: usize,
    h: usize,
    hd: usize,
    mask: Option<&[f32]>,
    s: &mut Scratch,
    out: &mut [f32],
) {
    let (d3, keys) = (3 * d, s.keys);
    let scale = (hd as f32).powf(-0.5);
    for t in 0..n {
        s.q[t * hd..][..hd].copy_from_slice(&x[t * d3 + h * hd..][..hd]);
    }
    // Scores: the queries against PANEL keys at a time (a panel is the
    // keys' transpose, `hd × PANEL`; keys past `n` are zero).
    for g in 0..keys / PANEL {
        let panel = &mut s.panel[..hd * PANEL];
        for jj in 0..PANEL {
            let j = g * PANEL + jj;
            for c in 0..hd {
                panel[c * PANEL + jj] = if j < n {
                    x[j * d3 + d + h * hd + c]
                } else {
                    0.0
                };
            }
        }
        panel_product(&s.q, n, hd, panel, &mut s.tile);
        for t in 0..n {
            s.probs[t * keys + g * PANEL..][..PANEL].copy_from_slice(&s.tile[t * PANEL..][..PANEL]);
        }
    }
    for t in 0..n {
        let row = &mut s.probs[t * keys..][..keys];
        softmax_row(&mut row[..n], scale, mask.map(|m| &m[t * n..][..n]));
        row[n..].fill(0.0);
    }
    // Output: the probabilities against PANEL value columns at a time
    // (`keys × PANEL`; rows past `n` and columns past `hd` are zero).
    for g in 0..hd.div_ceil(PANEL) {
        let panel = &mut s.panel[..keys * PANEL];
        let cols = PANEL.min(hd - g * PANEL);
        panel.fill(0.0);
        for j in 0..n {
            panel[j * PANEL..][..cols]
                .copy_from_slice(&x[j * d3 + 2 * d + h * hd + g * PANEL..][..cols]);
        }
        panel_product(&s.probs, n, keys, panel, &mut s.tile);
        for t in 0..n {
            out[t * hd + g * PANEL..][..cols].copy_from_slice(&s.tile[t * PANEL..][..cols]);
        }
    }
}

/// `row = softmax(row · scale + mask)` in place.
fn softmax_row(row: &mut [f32], scale: f32, mask: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the twin is compiled for.
        unsafe { softmax_row_avx2(row, scale, mask) };
        return;
    }
    softmax_row_generic(row, scale, mask)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(row: &mut [f32], scale: f32, mask: Option<&[f32]>) {
    softmax_row_generic(row, scale, mask)
}

/// Each pass a plain map (vectorised) but the max and the sum, which are
/// short sequential folds.
#[inline(always)]
fn softmax_row_generic(row: &mut [f32], scale: f32, mask: Option<&[f32]>) {
    match mask {
        Some(m) => row.iter_mut().zip(m).for_each(|(v, m)| *v = *v * scale + m),
        None => row.iter_mut().for_each(|v| *v *= scale),
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    // A hidden key (-inf) weighs exactly 0, as in candle's softmax (`exp`
    // clamps its argument, which would leave ~1e-38): then a padded text
    // embeds as it does alone.
    row.iter_mut().for_each(|v| {
        *v = if *v == f32::NEG_INFINITY {
            0.0
        } else {
            exp(*v - max)
        }
    });
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// [`attention`] of a `[b, n, 3d]` tensor, `mask` `[n, n]` or `[b, 1, n,
/// n]`; no gradient.
pub(crate) fn attention_tensor(
    qkv: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, n, d3) = qkv.dims3()?;
    if heads == 0 || d3 % (3 * heads) != 0 {
        candle_core::bail!("attention: width {d3} is not 3 × {heads} heads")
    }
    let mask = MaskValues::of(mask, b, n)?;
    qkv.contiguous()?
        .apply_op1_no_bwd(&AttentionOp { heads, mask })
}

/// An attention mask tensor's values, checked against the shape it is for.
#[derive(Debug, Default)]
pub(crate) struct MaskValues {
    values: Vec<f32>,
    /// One `[n, n]` per sequence (else one for all, or none when empty).
    per_sequence: bool,
}

impl MaskValues {
    /// The values of `mask` for `b` sequences of `n` tokens: `[n, n]` or
    /// `[1, 1, n, n]` (shared by all) or `[b, 1, n, n]` (one per sequence).
    pub(crate) fn of(mask: Option<&Tensor>, b: usize, n: usize) -> Result<Self> {
        let Some(m) = mask else {
            return Ok(Self::default());
        };
        let per_sequence = match m.dims() {
            [a, c] if *a == n && *c == n => false,
            [1, 1, c, e] if *c == n && *e == n => false,
            [a, 1, c, e] if *a == b && *c == n && *e == n => true,
            dims => candle_core::bail!(
                "attention mask {dims:?} for {b} sequences of {n} tokens: it must be \
                 [{n}, {n}], [1, 1, {n}, {n}] or [{b}, 1, {n}, {n}]"
            ),
        };
        let values = m.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(Self {
            values,
            per_sequence,
        })
    }

    /// The mask as [`attention`] takes it.
    pub(crate) fn as_mask(&self) -> Mask<'_> {
        match (self.values.is_empty(), self.per_sequence) {
            (true, _) => Mask::None,
            (false, false) => Mask::Shared(&self.values),
            (false, true) => Mask::PerSequence(&self.values),
        }
    }
}

struct AttentionOp {
    heads: usize,
    mask: MaskValues,
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "glimpse-inference-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32_slice(storage, layout, "attention")?;
        let (b, n, d3) = layout.shape().dims3()?;
        let mask = self.mask.as_mask();
        let mut out = vec![0f32; b * n * d3 / 3];
        crate::kernels::on_pool(|| attention(qkv, b, n, self.heads, mask, &mut out));
        Ok((CpuStorage::F32(out), Shape::from((b, n, d3 / 3))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::values;

    /// The definition, one score at a time in f64.
    fn reference(qkv: &[f32], b: usize, n: usize, heads: usize, mask: Mask) -> Vec<f32> {
        let d = qkv.len() / (b * n * 3);
        let hd = d / heads;
        let scale = (hd as f64).powf(-0.5);
        let mut out = vec![0f32; b * n * d];
        for s in 0..b {
            let x = |t: usize, c: usize| qkv[(s * n + t) * 3 * d + c] as f64;
            for h in 0..heads {
                for t in 0..n {
                    let scores: Vec<f64> = (0..n)
                        .map(|j| {
                            let dot: f64 = (0..hd)
                                .map(|c| x(t, h * hd + c) * x(j, d + h * hd + c))
                                .sum();
                            dot * scale + mask.of(s, n).map_or(0.0, |m| m[t * n + j] as f64)
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|v| (v - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..hd {
                        let v: f64 = (0..n).map(|j| e[j] / sum * x(j, 2 * d + h * hd + c)).sum();
                        out[(s * n + t) * d + h * hd + c] = v as f32;
                    }
                }
            }
        }
        out
    }

    fn causal(n: usize) -> Vec<f32> {
        (0..n * n)
            .map(|i| {
                if i % n > i / n {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect()
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 2e-5 * (1.0 + w.abs()),
                "{what}: [{i}] {g} vs {w}"
            );
        }
    }

    #[test]
    fn matches_the_definition_for_every_mask_and_shape() {
        // Sequence lengths around whole panels, head widths that are and
        // are not multiples of a panel, one sequence (heads in parallel
        // when long) and several.
        for &(b, n, heads, hd) in &[
            (1, 1, 1, 4),
            (1, 7, 2, 8),
            (3, 16, 2, 16),
            (2, 17, 3, 20),
            (1, 50, 12, 64),
            (4, 33, 4, 64),
        ] {
            let d = heads * hd;
            let qkv = values(b * n * 3 * d, (b * 1000 + n * 10 + heads) as u64);
            let shared = causal(n);
            let per_sequence: Vec<f32> = (0..b)
                .flat_map(|s| {
                    // Causal, and the last `s` keys hidden as padding
                    // (the first key always stays visible).
                    let keep = n.saturating_sub(s).max(1);
                    (0..n * n).map(move |i| {
                        let (t, j) = (i / n, i % n);
                        if j > t || j >= keep {
                            f32::NEG_INFINITY
                        } else {
                            0.0
                        }
                    })
                })
                .collect();
            for mask in [
                Mask::None,
                Mask::Shared(&shared),
                Mask::PerSequence(&per_sequence),
            ] {
                let mut got = vec![f32::NAN; b * n * d];
                attention(&qkv, b, n, heads, mask, &mut got);
                let what = format!("b {b} n {n} heads {heads} hd {hd} {mask:?}")
                    .chars()
                    .take(60)
                    .collect::<String>();
                assert_close(&got, &reference(&qkv, b, n, heads, mask), &what);
            }
        }
    }

    #[test]
    fn a_sequence_attends_alike_alone_and_in_a_batch() {
        let (n, heads, hd) = (50, 12, 64);
        let d = heads * hd;
        let qkv = values(3 * n * 3 * d, 7);
        let mut batch = vec![0f32; 3 * n * d];
        attention(&qkv, 3, n, heads, Mask::None, &mut batch);
        for s in 0..3 {
            let mut alone = vec![0f32; n * d];
            attention(
                &qkv[s * n * 3 * d..][..n * 3 * d],
                1,
                n,
                heads,
                Mask::None,
                &mut alone,
            );
            assert_eq!(alone, batch[s * n * d..][..n * d], "sequence {s}");
        }
    }

    #[test]
    fn a_padded_sequence_attends_as_it_does_alone() {
        // A text padded to a batch's length (its padding keys hidden) gives
        // its tokens the same outputs as the text alone, bit for bit: a
        // hidden key weighs exactly 0.
        let (n, pad, heads, hd) = (19, 5, 2, 24);
        let (d, real) = (heads * hd, n - pad);
        let qkv = values(n * 3 * d, 11);
        let padded: Vec<f32> = (0..n * n)
            .map(|i| {
                if i % n > i / n || i % n >= real {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mut got = vec![0f32; n * d];
        attention(&qkv, 1, n, heads, Mask::PerSequence(&padded), &mut got);
        let mut alone = vec![0f32; real * d];
        attention(
            &qkv[..real * 3 * d],
            1,
            real,
            heads,
            Mask::Shared(&causal(real)),
            &mut alone,
        );
        assert_eq!(got[..real * d], alone[..]);
        let mut row = [0.5, f32::NEG_INFINITY, -1.0, f32::NEG_INFINITY];
        softmax_row(&mut row, 1.0, None);
        assert_eq!((row[1], row[3]), (0.0, 0.0), "{row:?}");
        assert!((row[0] + row[2] - 1.0).abs() < 1e-6, "{row:?}");
    }

    #[test]
    fn the_tensor_op_checks_the_mask_shape() {
        let dev = candle_core::Device::Cpu;
        let qkv = Tensor::new(values(2 * 5 * 12, 3), &dev)
            .unwrap()
            .reshape((2, 5, 12))
            .unwrap();
        let bad = Tensor::zeros((5, 4), DType::F32, &dev).unwrap();
        let err = attention_tensor(&qkv, 2, Some(&bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("attention mask"), "{err}");
        let ok = Tensor::zeros((2, 1, 5, 5), DType::F32, &dev).unwrap();
        assert_eq!(
            attention_tensor(&qkv, 2, Some(&ok)).unwrap().dims(),
            [2, 5, 4]
        );
    }
}
