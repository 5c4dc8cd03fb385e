//! CPU kernels for inference, where candle's generic ops are slow: fused
//! MLP activations (one vectorised, multi-threaded pass instead of three
//! single-threaded ones) and a matrix product for few rows (a text query),
//! which streams each weight row once instead of packing the whole matrix.
//!
//! These have no backward pass; the layers call them only when no gradient
//! is needed (`!Tensor::track_op()`), and the fixture tests check them
//! against the reference like every other path. The training side borrows
//! three element kernels from here: the activation's derivative
//! (`activation_backward`) and the `dot` / `axpy` helpers of the fused
//! attention in `autograd`.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::config::Activation;

/// The f32 values a custom op's contiguous input holds, or an error naming
/// the op (`what`) for any other dtype or a strided layout.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what} takes f32")
    };
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("{what} takes contiguous tensors")
    };
    Ok(&data[a..b])
}

/// A vector of `len` values written by `fill(first, chunk)` for chunks of
/// `chunk` values (the last may be shorter) in parallel, `first` the
/// chunk's offset. Each chunk is zeroed by its own thread just before
/// `fill` sees it: an output zeroed up front (`vec![0.0; len]`) is a
/// single-threaded memset of the whole buffer — for an int8 image batch,
/// tens of megabytes per block, about a sixth of the batch's time, while
/// the other core waits.
///
/// Every chunk is a task of its own (rayon would otherwise run a few
/// chunks per task in sequence): when another process's thread — the
/// indexer's decoders — takes one core, the other thread takes the
/// remaining chunks instead of waiting at the end for a preempted run of
/// them (indexing: 0.77-0.79 -> 0.80-0.82x the model alone in alternating
/// runs, the model alone unchanged).
pub(crate) fn par_filled(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let chunk = chunk.max(1);
    let mut out: Vec<f32> = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk)
        .enumerate()
        .with_max_len(1)
        .for_each(|(i, values)| {
            values.fill(std::mem::MaybeUninit::new(0.0));
            // SAFETY: every element was just initialised, and
            // `MaybeUninit<f32>` has the layout of `f32`.
            let values =
                unsafe { &mut *(values as *mut [std::mem::MaybeUninit<f32>] as *mut [f32]) };
            fill(i * chunk, values);
        });
    // SAFETY: the chunks cover `0..len` and each was initialised above.
    unsafe { out.set_len(len) };
    out
}

/// `a + b` element-wise (same shape), in one multi-threaded pass: the
/// residual connections of inference (candle's addition runs on one
/// thread).
pub fn add_no_grad(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dims() != b.dims() {
        candle_core::bail!("add: shapes {:?} and {:?} differ", a.dims(), b.dims())
    }
    a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &AddOp)
}

struct AddOp;

impl CustomOp2 for AddOp {
    fn name(&self) -> &'static str {
        "glimpse-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (f32_slice(s1, l1, "add")?, f32_slice(s2, l2, "add")?);
        let out = on_pool(|| {
            par_filled(a.len(), 1 << 14, |first, out| {
                let (a, b) = (&a[first..][..out.len()], &b[first..][..out.len()]);
                out.iter_mut()
                    .zip(a.iter().zip(b))
                    .for_each(|(o, (a, b))| *o = a + b);
            })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Inputs with at most this many rows use [`small_matmul_t`].
pub const SMALL_M: usize = 16;

/// `act(x)` in one pass (f32, any layout made contiguous).
pub fn fused_activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ActOp(act))
}

/// `x · wᵀ` for `x` `[m, k]` with few rows and `w` `[n, k]`, both f32.
pub fn small_matmul_t(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&w.contiguous()?, &SmallMatmulT)
}

/// An activation in one vectorised, multi-threaded pass; differentiable
/// through `apply_op1` (see `autograd::activation`).
pub(crate) struct ActOp(pub(crate) Activation);

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        "glimpse-fused-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = f32_slice(storage, layout, "fused activation")?;
        let dst = on_pool(|| activate_parallel(self.0, src));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        crate::autograd::activation_grad(self.0, arg, grad).map(Some)
    }
}

/// `act(x)` for every value of `x`, in chunks shared by rayon's threads:
/// at least two per thread down to [`MIN_ACTIVATION_CHUNK`] values, so that
/// even one text query's MLP (9 × 2,048 values) is split between them.
pub(crate) fn activate_parallel(act: Activation, x: &[f32]) -> Vec<f32> {
    let chunk = (x.len() / (2 * rayon::current_num_threads())).clamp(MIN_ACTIVATION_CHUNK, 1 << 14);
    par_filled(x.len(), chunk, |first, d| {
        activate(act, &x[first..][..d.len()], d)
    })
}

/// The smallest chunk [`activate_parallel`] hands to a thread (a few
/// microseconds of work: a query's MLP splits in two, not in nine).
const MIN_ACTIVATION_CHUNK: usize = 2048;

struct SmallMatmulT;

impl CustomOp2 for SmallMatmulT {
    fn name(&self) -> &'static str {
        "glimpse-small-matmul-t"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (
            f32_slice(s1, l1, "small matmul")?,
            f32_slice(s2, l2, "small matmul")?,
        );
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("small matmul: [{m}, {k}] · [{n}, {k2}]ᵀ")
        }
        let out = few_rows_times_weights(x, m, k, w);
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

// ---- element kernels, compiled twice: AVX2+FMA (picked at run time) and baseline.

pub(crate) fn activate(act: Activation, s: &[f32], d: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { activate_avx2(act, s, d) };
        return;
    }
    activate_generic(act, s, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activate_avx2(act: Activation, s: &[f32], d: &mut [f32]) {
    activate_generic(act, s, d)
}

#[inline(always)]
fn activate_generic(act: Activation, s: &[f32], d: &mut [f32]) {
    match act {
        Activation::QuickGelu => {
            for (o, &x) in d.iter_mut().zip(s) {
                *o = x / (1.0 + exp(-1.702 * x));
            }
        }
        Activation::Gelu => {
            for (o, &x) in d.iter_mut().zip(s) {
                *o = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2/pi)
            for (o, &x) in d.iter_mut().zip(s) {
                let u = C * (x + 0.044_715 * x * x * x);
                let tanh = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
                *o = 0.5 * x * (1.0 + tanh);
            }
        }
    }
}

/// `dx = g · act'(x)`, element by element (the activation's backward pass).
pub(crate) fn activation_backward(act: Activation, x: &[f32], g: &[f32], dx: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { activation_backward_avx2(act, x, g, dx) };
        return;
    }
    activation_backward_generic(act, x, g, dx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activation_backward_avx2(act: Activation, x: &[f32], g: &[f32], dx: &mut [f32]) {
    activation_backward_generic(act, x, g, dx)
}

#[inline(always)]
fn activation_backward_generic(act: Activation, x: &[f32], g: &[f32], dx: &mut [f32]) {
    // One loop per activation (not a `match` per element) so each vectorises.
    let rows = dx.iter_mut().zip(x).zip(g);
    match act {
        Activation::QuickGelu => {
            for ((o, &x), &g) in rows {
                let s = 1.0 / (1.0 + exp(-1.702 * x));
                *o = g * (s + 1.702 * x * s * (1.0 - s));
            }
        }
        Activation::Gelu => {
            for ((o, &x), &g) in rows {
                let cdf = 0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
                let pdf = exp(-0.5 * x * x) * 0.398_942_3; // 1/sqrt(2π)
                *o = g * (cdf + x * pdf);
            }
        }
        Activation::GeluTanh => {
            const C: f32 = 0.797_884_6; // sqrt(2/π)
            for ((o, &x), &g) in rows {
                let inner = C * (x + 0.044_715 * x * x * x);
                let t = 1.0 - 2.0 / (exp(2.0 * inner) + 1.0);
                *o = g
                    * (0.5 * (1.0 + t)
                        + 0.5 * x * (1.0 - t * t) * C * (1.0 + 3.0 * 0.044_715 * x * x));
            }
        }
    }
}

/// Partial sums per lane in [`lane_sum`] and [`dot`].
const LANES: usize = 16;

/// `Σ f(v)` over `values` in [`LANES`] interleaved partial sums (then the
/// lanes in order, then the remainder), so that it vectorises as [`dot`]
/// does: the fused text block's LayerNorm.
#[inline(always)]
pub(crate) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// `Σ a[i]·b[i]` over the shorter slice, with sixteen independent partial
/// sums so that it vectorises (a plain `sum()` of products is a serial
/// chain of scalar additions). Inlined into the AVX2-compiled callers.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let mut tail = 0f32;
    for (x, y) in ac.remainder().iter().zip(bc.remainder()) {
        tail += x * y;
    }
    let mut acc = [0f32; LANES];
    for (x, y) in ac.zip(bc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let mut half = [0f32; 8];
    for i in 0..8 {
        half[i] = acc[i] + acc[i + 8];
    }
    ((half[0] + half[4]) + (half[1] + half[5])) + ((half[2] + half[6]) + (half[3] + half[7])) + tail
}

/// `o += s · v` over the shorter slice.
#[inline(always)]
pub(crate) fn axpy(o: &mut [f32], s: f32, v: &[f32]) {
    o.iter_mut().zip(v).for_each(|(o, v)| *o += s * v);
}

/// An element type the few-row kernel streams weights in: `f32`, bf16 bits
/// (`u16`) or int8 codes with a per-row scale. Each is widened to f32 in
/// registers; the sums are f32.
pub(crate) trait WeightElem: Copy + Send + Sync + 'static {
    /// The value as f32 (before any per-row scale).
    fn to_f32(self) -> f32;

    /// Eight consecutive elements widened to f32.
    ///
    /// # Safety
    /// `p` must point at eight readable elements and the CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256;

    /// Sixteen consecutive elements widened to f32.
    ///
    /// # Safety
    /// `p` must point at sixteen readable elements and the CPU must have
    /// AVX-512F.
    #[cfg(target_arch = "x86_64")]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512;
}

impl WeightElem for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        std::arch::x86_64::_mm256_loadu_ps(p)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        std::arch::x86_64::_mm512_loadu_ps(p)
    }
}

/// bf16: the high half of an f32's bits.
impl WeightElem for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let h = _mm_loadu_si128(p.cast());
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let h = _mm256_loadu_si256(p.cast());
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }
}

impl WeightElem for i8 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self as f32
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        let b = _mm_loadl_epi64(p.cast());
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))
    }

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> std::arch::x86_64::__m512 {
        use std::arch::x86_64::*;
        let b = _mm_loadu_si128(p.cast());
        _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))
    }
}

/// `x · wᵀ` (`[m, n]`, row-major) for `x` `[m, k]` and weights `w` `[n, k]`
/// in any [`WeightElem`] (unpacked; the fp32 query path). Weight rows are
/// split among threads in contiguous shares, each streamed from memory once
/// whatever `m` is.
pub(crate) fn few_rows_times_weights<T: WeightElem>(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[T],
) -> Vec<f32> {
    let n = w.len().checked_div(k).unwrap_or(0);
    let mut out_t = vec![0f32; n * m];
    if m == 0 || n == 0 {
        return out_t;
    }
    // A few long contiguous shares (each streamed in order, which the
    // prefetch keeps ahead of), enough of them to balance two threads.
    let rows_per_task = n.div_ceil(4 * rayon::current_num_threads()).max(32);
    out_t
        .par_chunks_mut(rows_per_task * m)
        .enumerate()
        .for_each(|(block, out)| {
            let first = block * rows_per_task;
            let rows = out.len() / m;
            rows_times_weights(x, m, k, &w[first * k..(first + rows) * k], out);
        });
    let mut out = vec![0f32; m * n];
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = out_t[j * m + i];
        }
    }
    out
}

/// Output columns per packed panel (two AVX2 vectors).
pub(crate) const PANEL: usize = 16;

/// Packs `[n, k]` weights (PyTorch `[out, in]`) into panels of [`PANEL`]
/// output columns, each `[k][PANEL]` contiguous (the last one zero-padded),
/// so that a product streams each panel once, in order.
pub(crate) fn pack_panels<T: Copy + Default>(w: &[T], n: usize, k: usize) -> Vec<T> {
    let panels = n.div_ceil(PANEL);
    let mut packed = vec![T::default(); panels * k * PANEL];
    for (j, row) in w.chunks_exact(k.max(1)).take(n).enumerate() {
        let (q, c) = (j / PANEL, j % PANEL);
        let panel = &mut packed[q * k * PANEL..(q + 1) * k * PANEL];
        for (p, &v) in row.iter().enumerate() {
            panel[p * PANEL + c] = v;
        }
    }
    packed
}

/// `x · wᵀ · diag(scales) + bias` (`[m, n]`, row-major) for `x` `[m, k]`
/// and weights packed by [`pack_panels`]. Work is cut into tiles of rows ×
/// panels: few rows (a query) → every row against a contiguous share of the
/// panels per thread, so each weight is read once; many rows (a batch) →
/// blocks of rows small enough to stay in L2 against all panels.
pub(crate) fn rows_times_panels<T: WeightElem>(
    x: &[f32],
    m: usize,
    k: usize,
    packed: &[T],
    n: usize,
    scales: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    // A batch: about 128 KiB of input rows per tile, a multiple of the
    // kernel's 6.
    let batch_rows = (32 * 1024 / k.max(1)).max(6) / 6 * 6;
    let shape = tile_shape(m, n.div_ceil(PANEL), SMALL_M, batch_rows);
    let mut out = tiled_product(m, n, PANEL, shape, |r0, rows, q0, count| {
        let mut tile = vec![0f32; count * rows * PANEL];
        let xs = &x[r0 * k..(r0 + rows) * k];
        // A batch makes many passes over each panel: widen it once. A
        // query makes one or two: widening in registers is cheaper.
        let mut wide = if m > SMALL_M {
            vec![0f32; k * PANEL]
        } else {
            Vec::new()
        };
        for (i, o) in tile.chunks_exact_mut(rows * PANEL).enumerate() {
            let q = q0 + i;
            let panel = &packed[q * k * PANEL..(q + 1) * k * PANEL];
            if wide.is_empty() {
                panel_product(xs, rows, k, panel, o);
            } else {
                wide.iter_mut()
                    .zip(panel)
                    .for_each(|(w, p)| *w = p.to_f32());
                panel_product(xs, rows, k, &wide, o);
            }
        }
        // `[count][rows][PANEL]` → `[rows][count·PANEL]`.
        let mut rows_major = vec![0f32; tile.len()];
        for (i, block) in tile.chunks_exact(rows * PANEL).enumerate() {
            for (r, src) in block.chunks_exact(PANEL).enumerate() {
                rows_major[r * count * PANEL + i * PANEL..][..PANEL].copy_from_slice(src);
            }
        }
        rows_major
    });
    for row in out.chunks_exact_mut(n) {
        if let Some(scales) = scales {
            row.iter_mut().zip(scales).for_each(|(v, s)| *v *= s);
        }
        if let Some(bias) = bias {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    }
    out
}

/// The tile plumbing of the panel kernels (here and in `bf16_dot`): cuts
/// an `[m, n]` product into tiles of `row_block` rows × `panel_group`
/// panels of `nr` columns, computes them in parallel with
/// `tile(r0, rows, q0, count)` — which returns the tile's `[rows][count·nr]`
/// values — and copies them into a row-major `[m, n]`, dropping the last
/// panel's padding.
pub(crate) fn tiled_product(
    m: usize,
    n: usize,
    nr: usize,
    (row_block, panel_group): (usize, usize),
    tile: impl Fn(usize, usize, usize, usize) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let panels = n.div_ceil(nr);
    let mut out = vec![0f32; m * n];
    let tiles: Vec<(usize, usize)> = (0..m)
        .step_by(row_block)
        .flat_map(|r0| (0..panels).step_by(panel_group).map(move |q0| (r0, q0)))
        .collect();
    let results: Vec<Vec<f32>> = tiles
        .par_iter()
        .map(|&(r0, q0)| tile(r0, row_block.min(m - r0), q0, panel_group.min(panels - q0)))
        .collect();
    for (&(r0, q0), values) in tiles.iter().zip(&results) {
        let rows = row_block.min(m - r0);
        let width = values.len() / rows;
        let j0 = q0 * nr;
        let cols = width.min(n - j0);
        for r in 0..rows {
            out[(r0 + r) * n + j0..][..cols].copy_from_slice(&values[r * width..][..cols]);
        }
    }
    out
}

/// Rows per block when `m` rows are split into blocks of at most
/// `max_block` for the threads: a whole number of blocks per thread, all
/// the same size but the last, which may be smaller by less than one row
/// per block (one image's 50 rows in blocks of 48 left one thread with 48
/// rows and the other with 2; now 25 and 25).
pub(crate) fn balanced_row_block(m: usize, max_block: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let blocks = threads * m.div_ceil(threads * max_block.max(1));
    m.div_ceil(blocks.max(1)).max(1)
}

/// Tiles for a product of `m` rows over `panels` panels: few rows (a
/// query) → all rows against a share of the panels per thread, so that each
/// weight is read once; else blocks of `row_block` rows against every panel.
pub(crate) fn tile_shape(m: usize, panels: usize, few: usize, row_block: usize) -> (usize, usize) {
    if m <= few {
        (m, panels.div_ceil(2 * rayon::current_num_threads()).max(1))
    } else {
        (row_block, panels)
    }
}

/// Runs `f` on a thread of rayon's pool (in place when already on one).
///
/// A parallel loop started from outside the pool is handed to the pool
/// while the caller sleeps until it is done: two thread wake-ups per loop.
/// A text query runs ~50 small products, each a parallel loop, so from
/// outside the pool it spends ~1.5 ms of ~5 ms waking threads; from a pool
/// thread each loop starts at once on the calling thread while the other
/// joins in.
pub(crate) fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

/// `out[i * PANEL + c] = x_i · panel[.., c]` for one packed panel.
pub(crate) fn panel_product<T: WeightElem>(
    x: &[f32],
    m: usize,
    k: usize,
    panel: &[T],
    out: &mut [f32],
) {
    assert!(x.len() >= m * k && panel.len() >= k * PANEL && out.len() >= m * PANEL);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: as below; a panel row is one 512-bit vector.
        unsafe { avx512::panel_product(x, m, k, panel, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for;
        // the slice lengths were checked above.
        unsafe { avx2::panel_product(x, m, k, panel, out) };
        return;
    }
    out.fill(0.0);
    for i in 0..m {
        for p in 0..k {
            let xv = x[i * k + p];
            for c in 0..PANEL {
                out[i * PANEL + c] = xv.mul_add(panel[p * PANEL + c].to_f32(), out[i * PANEL + c]);
            }
        }
    }
}

/// `out[j * m + i] = x_i · w_j` for the `m` rows of `x` and every row of `w`
/// (both row-major with `k` columns).
fn rows_times_weights<T: WeightElem>(x: &[f32], m: usize, k: usize, w: &[T], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for;
        // slice bounds are checked inside.
        unsafe { avx2::rows_times_weights(x, m, k, w, out) };
        return;
    }
    for (j, wr) in w.chunks_exact(k).enumerate() {
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            out[j * m + i] = xr
                .iter()
                .zip(wr)
                .fold(0f32, |acc, (a, b)| a.mul_add(b.to_f32(), acc));
        }
    }
}

/// The panel kernel with one 512-bit register per panel row: twice the
/// columns per instruction of the AVX2 kernel, and up to 12 rows share each
/// widened weight vector (a query's tokens in one pass).
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{WeightElem, PANEL};
    use std::arch::x86_64::*;

    /// `out[i * PANEL + c] = x_i · panel[.., c]`.
    ///
    /// # Safety
    /// The CPU must have AVX-512F; `x` holds `m * k` values, `panel`
    /// `k * PANEL`, `out` `m * PANEL`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn panel_product<T: WeightElem>(
        x: &[f32],
        m: usize,
        k: usize,
        panel: &[T],
        out: &mut [f32],
    ) {
        let mut i = 0;
        while i < m {
            let r = (m - i).min(12);
            match r {
                12 => rows::<T, 12>(x, k, panel, out, i),
                11 => rows::<T, 11>(x, k, panel, out, i),
                10 => rows::<T, 10>(x, k, panel, out, i),
                9 => rows::<T, 9>(x, k, panel, out, i),
                8 => rows::<T, 8>(x, k, panel, out, i),
                7 => rows::<T, 7>(x, k, panel, out, i),
                6 => rows::<T, 6>(x, k, panel, out, i),
                5 => rows::<T, 5>(x, k, panel, out, i),
                4 => rows::<T, 4>(x, k, panel, out, i),
                3 => rows::<T, 3>(x, k, panel, out, i),
                2 => rows::<T, 2>(x, k, panel, out, i),
                _ => rows::<T, 1>(x, k, panel, out, i),
            }
            i += r;
        }
    }

    #[inline(always)]
    unsafe fn rows<T: WeightElem, const R: usize>(
        x: &[f32],
        k: usize,
        panel: &[T],
        out: &mut [f32],
        i0: usize,
    ) {
        let xp = x.as_ptr().add(i0 * k);
        let wp = panel.as_ptr();
        let mut acc = [_mm512_setzero_ps(); R];
        for p in 0..k {
            let w = T::load16(wp.add(p * PANEL));
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*xp.add(r * k + p)), w, *a);
            }
        }
        let op = out.as_mut_ptr().add(i0 * PANEL);
        for (r, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(op.add(r * PANEL), *a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::WeightElem;
    use std::arch::x86_64::*;

    /// How far ahead of the rows being multiplied their successors are
    /// prefetched.
    const PREFETCH_AHEAD: usize = 4096;

    /// Register-blocked: up to 4 input rows × 2 weight rows per pass over
    /// `k` (6 loads per 8 fused multiply-adds), smaller blocks at the edges.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_times_weights<T: WeightElem>(
        x: &[f32],
        m: usize,
        k: usize,
        w: &[T],
        out: &mut [f32],
    ) {
        let n = w.len() / k;
        assert!(x.len() >= m * k && out.len() >= n * m);
        // Weight rows are short streams (0.5–8 KiB) that the hardware
        // prefetchers pick up too late; ask for the bytes a few blocks ahead.
        let bytes = std::mem::size_of_val(w);
        let base = w.as_ptr().cast::<i8>();
        let row_bytes = k * std::mem::size_of::<T>();
        let mut j = 0;
        while j < n {
            let c = if j + 2 <= n { 2 } else { 1 };
            let from = ((j + c) * row_bytes + PREFETCH_AHEAD).min(bytes);
            let to = ((j + 2 * c) * row_bytes + PREFETCH_AHEAD).min(bytes);
            let mut at = from & !63;
            while at < to {
                _mm_prefetch::<_MM_HINT_T0>(base.add(at));
                at += 64;
            }
            let mut i = 0;
            while i < m {
                let r = (m - i).min(4);
                match (r, c) {
                    (4, 2) => block::<T, 4, 2>(x, k, w, out, m, i, j),
                    (4, _) => block::<T, 4, 1>(x, k, w, out, m, i, j),
                    (3, 2) => block::<T, 3, 2>(x, k, w, out, m, i, j),
                    (3, _) => block::<T, 3, 1>(x, k, w, out, m, i, j),
                    (2, 2) => block::<T, 2, 2>(x, k, w, out, m, i, j),
                    (2, _) => block::<T, 2, 1>(x, k, w, out, m, i, j),
                    (_, 2) => block::<T, 1, 2>(x, k, w, out, m, i, j),
                    _ => block::<T, 1, 1>(x, k, w, out, m, i, j),
                }
                i += r;
            }
            j += c;
        }
    }

    /// One packed panel times up to six rows at a time: per step of `k`,
    /// two weight vectors (widened once) and one broadcast per row feed
    /// 2·R independent multiply-adds (12 accumulators + 3 registers: no
    /// spills).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn panel_product<T: WeightElem>(
        x: &[f32],
        m: usize,
        k: usize,
        panel: &[T],
        out: &mut [f32],
    ) {
        let mut i = 0;
        while i < m {
            let r = (m - i).min(6);
            match r {
                6 => panel_rows::<T, 6>(x, k, panel, out, i),
                5 => panel_rows::<T, 5>(x, k, panel, out, i),
                4 => panel_rows::<T, 4>(x, k, panel, out, i),
                3 => panel_rows::<T, 3>(x, k, panel, out, i),
                2 => panel_rows::<T, 2>(x, k, panel, out, i),
                _ => panel_rows::<T, 1>(x, k, panel, out, i),
            }
            i += r;
        }
    }

    #[inline(always)]
    unsafe fn panel_rows<T: WeightElem, const R: usize>(
        x: &[f32],
        k: usize,
        panel: &[T],
        out: &mut [f32],
        i0: usize,
    ) {
        let xp = x.as_ptr().add(i0 * k);
        let wp = panel.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        for p in 0..k {
            let w = wp.add(p * super::PANEL);
            let w0 = T::load8(w);
            let w1 = T::load8(w.add(8));
            for (r, a) in acc.iter_mut().enumerate() {
                let xb = _mm256_broadcast_ss(&*xp.add(r * k + p));
                a[0] = _mm256_fmadd_ps(xb, w0, a[0]);
                a[1] = _mm256_fmadd_ps(xb, w1, a[1]);
            }
        }
        let op = out.as_mut_ptr().add(i0 * super::PANEL);
        for (r, a) in acc.iter().enumerate() {
            for (c, v) in a.iter().enumerate() {
                _mm256_storeu_ps(op.add(r * super::PANEL + c * 8), *v);
            }
        }
    }

    /// Sum of the eight lanes.
    #[inline(always)]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[inline(always)]
    unsafe fn block<T: WeightElem, const R: usize, const C: usize>(
        x: &[f32],
        k: usize,
        w: &[T],
        out: &mut [f32],
        m: usize,
        i0: usize,
        j0: usize,
    ) {
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        let mut acc = [[_mm256_setzero_ps(); C]; R];
        let mut p = 0;
        while p + 8 <= k {
            let mut wv = [_mm256_setzero_ps(); C];
            for (c, v) in wv.iter_mut().enumerate() {
                *v = T::load8(wp.add((j0 + c) * k + p));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let xv = _mm256_loadu_ps(xp.add((i0 + r) * k + p));
                for (c, a) in row.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(xv, wv[c], *a);
                }
            }
            p += 8;
        }
        for (r, row) in acc.iter().enumerate() {
            for (c, a) in row.iter().enumerate() {
                let mut sum = hsum(*a);
                for q in p..k {
                    sum = (*xp.add((i0 + r) * k + q))
                        .mul_add((*wp.add((j0 + c) * k + q)).to_f32(), sum);
                }
                out[(j0 + c) * m + i0 + r] = sum;
            }
        }
    }
}

/// `e^x` to about 2 ulp, branch-free and without float-to-int conversions
/// (Rust's `as` saturates, which LLVM compiles to scalar compares) so that
/// loops over it vectorise: `x = n ln 2 + r` (Cody–Waite, two-part ln 2),
/// `e^x = 2^n e^r` with a degree-7 polynomial for `e^r` on [-0.35, 0.35].
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // n = round(x / ln 2) by adding 1.5·2^23, which leaves n in the low
    // bits of the sum's mantissa (|n| ≤ 127); the first constant of the
    // reduction has 9 significant bits, so `n · c1` is exact and
    // `x - n · c1` loses nothing.
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + SHIFT;
    let n = shifted - SHIFT;
    let bits = shifted.to_bits().wrapping_sub(SHIFT.to_bits());
    let r = (x - n * 0.693_359_4) + n * 2.121_944_4e-4;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(bits.wrapping_add(127) << 23)
}

/// Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7).
#[inline(always)]
pub(crate) fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The parallel activation equals the one-pass activation bit for bit
    /// at every length around its chunk sizes (one query's MLP, a batch's).
    #[test]
    fn parallel_activation_equals_one_pass() {
        for len in [
            0usize,
            1,
            2047,
            2048,
            2049,
            9 * 2048,
            40_000,
            (1 << 14) * 3 + 5,
        ] {
            let x: Vec<f32> = crate::test_util::values(len, len as u64 + 1)
                .iter()
                .map(|v| v * 6.0)
                .collect();
            for act in [
                Activation::QuickGelu,
                Activation::Gelu,
                Activation::GeluTanh,
            ] {
                let mut want = vec![0f32; len];
                activate(act, &x, &mut want);
                let got = activate_parallel(act, &x);
                assert_eq!(
                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{act:?}, {len} values"
                );
            }
        }
    }

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let e = exp(x);
            let r = (x as f64).exp() as f32;
            assert!(((e - r) / r).abs() < 3e-7, "exp({x}) = {e}, want {r}");
        }
        // erf reference values (Python math.erf).
        for (x, want) in [
            (0.0f32, 0.0f32),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (-2.0, -0.995_322_3),
            (3.5, 0.999_999_3),
        ] {
            assert!(
                (erf(x) - want).abs() < 3e-7,
                "erf({x}) = {}, want {want}",
                erf(x)
            );
        }
    }

    #[test]
    fn fused_activations_match_candle() {
        let x = Tensor::randn(0f32, 3.0, (7, 301), &Device::Cpu).unwrap();
        let pairs = [
            (
                Activation::QuickGelu,
                (&x * candle_nn::ops::sigmoid(&(&x * 1.702).unwrap()).unwrap()).unwrap(),
            ),
            (Activation::Gelu, x.gelu_erf().unwrap()),
            (Activation::GeluTanh, x.gelu().unwrap()),
        ];
        for (act, want) in pairs {
            let got = fused_activation(&x, act).unwrap();
            let d = crate::test_util::max_abs_diff(&got, &want);
            assert!(d < 2e-6, "{act:?}: {d}");
        }
    }

    #[test]
    fn dot_matches_the_definition_at_every_tail_length() {
        let a: Vec<f32> = (0..70)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.13)
            .collect();
        let b: Vec<f32> = (0..70)
            .map(|i| ((i * 17 % 29) as f32 - 14.0) * 0.07)
            .collect();
        for n in 0..70 {
            let want: f64 = (0..n).map(|i| a[i] as f64 * b[i] as f64).sum();
            let got = dot(&a[..n], &b[..n]) as f64;
            assert!((got - want).abs() < 1e-4, "n = {n}: {got} vs {want}");
        }
    }

    /// The panel kernels (AVX-512 and AVX2, whichever the CPU has) against
    /// the definition, for every row count up to two full 12-row blocks and
    /// a tail, with int8 and bf16 weights.
    #[test]
    fn panel_kernels_match_the_definition_at_every_row_count() {
        fn check<T: WeightElem + Default>(w: &[T], k: usize) {
            let x: Vec<f32> = (0..30 * k)
                .map(|i| ((i * 31 % 47) as f32 - 23.0) * 0.05)
                .collect();
            for m in 1..=30 {
                let want: Vec<f64> = (0..m * PANEL)
                    .map(|o| {
                        let (i, c) = (o / PANEL, o % PANEL);
                        (0..k)
                            .map(|p| x[i * k + p] as f64 * w[p * PANEL + c].to_f32() as f64)
                            .sum()
                    })
                    .collect();
                let mut kernels: Vec<(&str, Vec<f32>)> = Vec::new();
                let mut out = vec![0f32; m * PANEL];
                panel_product(&x, m, k, w, &mut out);
                kernels.push(("dispatched", out));
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    let mut out = vec![0f32; m * PANEL];
                    // SAFETY: the CPU has AVX2 and FMA; lengths as required.
                    unsafe { avx2::panel_product(&x, m, k, w, &mut out) };
                    kernels.push(("avx2", out));
                }
                for (name, got) in kernels {
                    for (o, (g, w)) in got.iter().zip(&want).enumerate() {
                        let tol = 1e-4 * (1.0 + w.abs());
                        assert!(
                            (*g as f64 - w).abs() < tol,
                            "{name} m={m} out {o}: {g} vs {w}"
                        );
                    }
                }
            }
        }
        let k = 37;
        let int8: Vec<i8> = (0..k * PANEL)
            .map(|i| ((i * 13 % 255) as i32 - 127) as i8)
            .collect();
        check(&int8, k);
        let bf16: Vec<u16> = (0..k * PANEL)
            .map(|i| half::bf16::from_f32(((i * 7 % 19) as f32 - 9.0) * 0.1).to_bits())
            .collect();
        check(&bf16, k);
    }

    #[test]
    fn activation_backward_builds_agree() {
        // The run-time-dispatched build (AVX2 here) against the baseline one.
        let x: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.017).collect();
        let g: Vec<f32> = (0..1001).map(|i| ((i % 7) as f32 - 3.0) * 0.5).collect();
        for act in [
            Activation::QuickGelu,
            Activation::Gelu,
            Activation::GeluTanh,
        ] {
            let (mut fast, mut base) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            activation_backward(act, &x, &g, &mut fast);
            activation_backward_generic(act, &x, &g, &mut base);
            for (f, b) in fast.iter().zip(&base) {
                assert!(
                    (f - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{act:?}: {f} vs {b}"
                );
            }
        }
    }

    #[test]
    fn small_matmul_matches_candle() {
        for (m, k, n) in [
            (1, 64, 33),
            (7, 512, 100),
            (16, 77, 65),
            (5, 40, 3),
            (4, 8, 2),
        ] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let got = small_matmul_t(&x, &w).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let d = crate::test_util::max_abs_diff(&got, &want);
            assert!(d < 1e-4, "{m}x{k}x{n}: {d}");
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use candle_core::Device;

    /// `cargo test --release -p glimpse-clip kernel_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn kernel_speed() {
        let x = Tensor::randn(0f32, 1.0, (8, 512), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (2048, 512), &Device::Cpu).unwrap();
        for _ in 0..3 {
            small_matmul_t(&x, &w).unwrap();
        }
        let t = std::time::Instant::now();
        let n = 200;
        for _ in 0..n {
            small_matmul_t(&x, &w).unwrap();
        }
        let dt = t.elapsed().as_secs_f64() / n as f64;
        println!(
            "small_matmul 8x512 · 2048x512ᵀ: {:.3} ms, {:.1} GB/s of weights",
            dt * 1e3,
            4.0 * 2048.0 * 512.0 / dt / 1e9
        );
        let t = std::time::Instant::now();
        for _ in 0..n {
            x.matmul(&w.t().unwrap()).unwrap();
        }
        let dt = t.elapsed().as_secs_f64() / n as f64;
        println!("candle matmul: {:.3} ms", dt * 1e3);
        // 160 MB of weights: from DRAM, as in a real query.
        let ws: Vec<Tensor> = (0..40)
            .map(|_| Tensor::randn(0f32, 1.0, (2048, 512), &Device::Cpu).unwrap())
            .collect();
        let t = std::time::Instant::now();
        for _ in 0..5 {
            for w in &ws {
                small_matmul_t(&x, w).unwrap();
            }
        }
        let dt = t.elapsed().as_secs_f64() / 200.0;
        println!(
            "from DRAM: {:.3} ms, {:.1} GB/s",
            dt * 1e3,
            4.0 * 2048.0 * 512.0 / dt / 1e9
        );
        let t = std::time::Instant::now();
        for _ in 0..5 {
            for w in &ws {
                x.matmul(&w.t().unwrap()).unwrap();
            }
        }
        let dt = t.elapsed().as_secs_f64() / 200.0;
        println!(
            "candle from DRAM: {:.3} ms, {:.1} GB/s",
            dt * 1e3,
            4.0 * 2048.0 * 512.0 / dt / 1e9
        );
    }
}
