//! Differentiable fused operations for training: LayerNorm, softmax, the
//! MLP activations and adding a bias (or position embedding) to every row,
//! each one pass forward and one pass backward over plain rows.
//!
//! Composed from candle's generic operations these are correct but slow on
//! the CPU: a bias's gradient is a sum over the leading dimensions, which
//! candle computes with two integer divisions per element, and a LayerNorm
//! is ten operations, each allocating and each with its own backward pass.
//! Training a small CLIP spent most of its backward pass there. The tests
//! check every gradient against the composed operations.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::config::Activation;
use crate::kernels::{activation_backward, axpy, dot, exp, f32_slice as slice, ActOp};

/// `f_avx2(args)` (`f` compiled for AVX2+FMA) when the CPU has them, else
/// `f(args)` (the baseline build).
macro_rules! dispatch_avx2 {
    ($f:ident, $f_avx2:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                // SAFETY: the CPU has the features the twin is compiled for.
                unsafe { $f_avx2($($arg),*) }
            } else {
                $f($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $f($($arg),*)
        }
    }};
}

/// Rows handed to one thread at a time.
const ROWS_PER_TASK: usize = 64;

/// The f32 values of a tensor, in row-major order.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// `x + b` with `b` (of `k` values) added to every `k`-long row of `x`:
/// a bias (`k` = width) or a position embedding (`k` = tokens × width).
pub fn add_rows(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, AddRows)
}

/// `x` `[batch, tokens, width]` plus a position embedding `[tokens, width]`:
/// the fused [`add_rows`] when a gradient is needed, candle's broadcast
/// otherwise (inference keeps its tested path).
pub fn add_positions(x: &Tensor, positions: &Tensor) -> Result<Tensor> {
    let tracking = x.track_op() || positions.track_op();
    if !tracking || !crate::layers::on_cpu_f32(x) {
        return x.broadcast_add(positions);
    }
    let (b, n, d) = x.dims3()?;
    add_rows(&x.reshape((b, n * d))?, &positions.reshape(n * d)?)?.reshape((b, n, d))
}

struct AddRows;

impl CustomOp2 for AddRows {
    fn name(&self) -> &'static str {
        "glimpse-add-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (slice(s1, l1, "add_rows")?, slice(s2, l2, "add_rows")?);
        let k = b.len();
        if k == 0 || x.len() % k != 0 {
            candle_core::bail!("add_rows: {} values do not split into rows of {k}", x.len())
        }
        let mut out = x.to_vec();
        out.par_chunks_mut(k)
            .for_each(|row| row.iter_mut().zip(b).for_each(|(o, v)| *o += v));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = values(grad)?;
        let k = b.elem_count();
        let sums = column_sums(&g, k);
        Ok((
            Some(grad.clone()),
            Some(Tensor::from_vec(sums, b.shape(), b.device())?),
        ))
    }
}

/// Sums of the `k` columns of `rows` (row-major, `k` wide), in parallel
/// over blocks of rows, in a fixed order (deterministic).
fn column_sums(rows: &[f32], k: usize) -> Vec<f32> {
    let block = (ROWS_PER_TASK * k).max(k);
    let partial: Vec<Vec<f32>> = rows
        .par_chunks(block)
        .map(|chunk| {
            let mut acc = vec![0f32; k];
            for row in chunk.chunks_exact(k) {
                acc.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
            acc
        })
        .collect();
    let mut out = vec![0f32; k];
    for p in partial {
        out.iter_mut().zip(&p).for_each(|(o, v)| *o += v);
    }
    out
}

/// LayerNorm over the last dimension with gain `w` and bias `b`.
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&w.contiguous()?, &b.contiguous()?, LayerNormOp { eps })
}

struct LayerNormOp {
    eps: f32,
}

/// Mean and 1/std of one row.
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = row.iter().sum::<f32>() / d;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d;
    (mean, 1.0 / (var + eps).sqrt())
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "glimpse-layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "layer_norm")?;
        let (w, b) = (slice(s2, l2, "layer_norm")?, slice(s3, l3, "layer_norm")?);
        let d = w.len();
        if d == 0 || b.len() != d || x.len() % d != 0 {
            candle_core::bail!("layer_norm: input rows do not match the gain's {d} values")
        }
        let mut out = vec![0f32; x.len()];
        let eps = self.eps;
        out.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (o, row) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let (mean, rstd) = moments(row, eps);
                    for (((o, v), g), b) in o.iter_mut().zip(row).zip(w).zip(b) {
                        *o = (v - mean) * rstd * g + b;
                    }
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (xv, wv, g) = (values(x)?, values(w)?, values(grad)?);
        let d = wv.len();
        let eps = self.eps;
        let mut dx = vec![0f32; xv.len()];
        // Per block of rows: dx, and partial sums of dw (g·x̂) and db (g).
        let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(d * ROWS_PER_TASK)
            .zip(xv.par_chunks(d * ROWS_PER_TASK))
            .zip(g.par_chunks(d * ROWS_PER_TASK))
            .map(|((dx, x), g)| {
                let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
                let mut xhat = vec![0f32; d];
                for ((dx, row), g) in dx
                    .chunks_exact_mut(d)
                    .zip(x.chunks_exact(d))
                    .zip(g.chunks_exact(d))
                {
                    let (mean, rstd) = moments(row, eps);
                    let (mut sum_dy, mut sum_dy_xhat) = (0f32, 0f32);
                    for i in 0..d {
                        xhat[i] = (row[i] - mean) * rstd;
                        let dy = g[i] * wv[i];
                        sum_dy += dy;
                        sum_dy_xhat += dy * xhat[i];
                        dw[i] += g[i] * xhat[i];
                        db[i] += g[i];
                    }
                    let (m1, m2) = (sum_dy / d as f32, sum_dy_xhat / d as f32);
                    for i in 0..d {
                        dx[i] = rstd * (g[i] * wv[i] - m1 - xhat[i] * m2);
                    }
                }
                (dw, db)
            })
            .collect();
        let (mut dw, mut db) = (vec![0f32; d], vec![0f32; d]);
        for (pw, pb) in partial {
            dw.iter_mut().zip(&pw).for_each(|(a, v)| *a += v);
            db.iter_mut().zip(&pb).for_each(|(a, v)| *a += v);
        }
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, b.shape(), b.device())?),
        ))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxOp)
}

struct SoftmaxOp;

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        "glimpse-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, "softmax")?;
        let d = *layout.shape().dims().last().unwrap_or(&1);
        if d == 0 {
            return Ok((CpuStorage::F32(Vec::new()), layout.shape().clone()));
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(x.par_chunks(d * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                for (o, row) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for (o, v) in o.iter_mut().zip(row) {
                        *o = exp(v - max);
                        sum += *o;
                    }
                    o.iter_mut().for_each(|v| *v /= sum);
                }
            });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (y, g) = (values(res)?, values(grad)?);
        let d = arg.dims().last().copied().unwrap_or(1).max(1);
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(d * ROWS_PER_TASK)
            .zip(y.par_chunks(d * ROWS_PER_TASK))
            .zip(g.par_chunks(d * ROWS_PER_TASK))
            .for_each(|((dx, y), g)| {
                for ((dx, y), g) in dx
                    .chunks_exact_mut(d)
                    .zip(y.chunks_exact(d))
                    .zip(g.chunks_exact(d))
                {
                    let dot: f32 = y.iter().zip(g).map(|(a, b)| a * b).sum();
                    for ((o, y), g) in dx.iter_mut().zip(y).zip(g) {
                        *o = y * (g - dot);
                    }
                }
            });
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Scaled dot-product attention, differentiable, in one pass per sequence
/// each way: `qkv` `[b, n, 3·heads·hd]` (q, k and v side by side, each
/// `heads × hd` wide, as the fused projection makes them) to
/// `[b, n, heads·hd]`, causal or not. The backward pass recomputes the
/// probabilities (at most `n × n` per head) instead of keeping them, and
/// writes the gradient of `qkv` directly — where candle's composition
/// (permute, per-head batched matmuls, mask, softmax, and their backward
/// passes) builds a dozen tensors per layer.
pub fn attention(qkv: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    let (_, _, d3) = qkv.dims3()?;
    if heads == 0 || d3 % (3 * heads) != 0 {
        candle_core::bail!("attention: width {d3} is not 3 × {heads} heads")
    }
    qkv.contiguous()?.apply_op1(AttentionOp { heads, causal })
}

#[derive(Clone, Copy)]
struct AttentionOp {
    heads: usize,
    causal: bool,
}

impl AttentionOp {
    /// The geometry of one sequence of `n` tokens, width `d`.
    fn sequence(&self, n: usize, d: usize) -> SequenceShape {
        SequenceShape {
            n,
            d,
            heads: self.heads,
            causal: self.causal,
        }
    }
}

impl CustomOp1 for AttentionOp {
    fn name(&self) -> &'static str {
        "glimpse-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(storage, layout, "attention")?;
        let (b, n, d3) = layout.shape().dims3()?;
        let d = d3 / 3;
        let mut out = vec![0f32; b * n * d];
        if n > 0 && d > 0 {
            let shape = self.sequence(n, d);
            out.par_chunks_mut(n * d)
                .zip(x.par_chunks(n * d3))
                .for_each(|(o, x)| {
                    let mut p = vec![0f32; n * n];
                    dispatch_avx2!(
                        attention_forward,
                        attention_forward_avx2(shape, x, o, &mut p)
                    );
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, n, d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad, &AttentionGrad(*self))?,
        ))
    }
}

/// The gradient of [`attention`] with respect to `qkv`, from `qkv` and the
/// output's gradient (probabilities recomputed per head).
struct AttentionGrad(AttentionOp);

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "glimpse-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "attention gradient")?;
        let g = slice(s2, l2, "attention gradient")?;
        let (b, n, d3) = l1.shape().dims3()?;
        let d = d3 / 3;
        if l2.shape().dims() != [b, n, d] {
            candle_core::bail!("attention gradient: {:?} for {:?}", l2.shape(), l1.shape())
        }
        let mut dx = vec![0f32; b * n * d3];
        if n > 0 && d > 0 {
            let shape = self.0.sequence(n, d);
            dx.par_chunks_mut(n * d3)
                .zip(x.par_chunks(n * d3))
                .zip(g.par_chunks(n * d))
                .for_each(|((dx, x), g)| {
                    let mut p = vec![0f32; n * n];
                    let mut ds = vec![0f32; n * n];
                    dispatch_avx2!(
                        attention_backward,
                        attention_backward_avx2(shape, x, g, dx, &mut p, &mut ds)
                    );
                });
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// One sequence's attention geometry: `n` tokens, width `d` (`heads`
/// heads of `d / heads`), causal or not.
#[derive(Clone, Copy)]
struct SequenceShape {
    n: usize,
    d: usize,
    heads: usize,
    causal: bool,
}

impl SequenceShape {
    /// Keys token `t` attends to.
    #[inline(always)]
    fn keys(&self, t: usize) -> usize {
        if self.causal {
            t + 1
        } else {
            self.n
        }
    }
}

/// `p` (`n × n`, row `t` over keys `0..keys(t)`, zero after) = softmax of
/// the scaled scores of head `h` of one sequence `x` (`n × 3d`).
#[inline(always)]
fn probabilities(s: SequenceShape, x: &[f32], h: usize, p: &mut [f32]) {
    let (n, d) = (s.n, s.d);
    let hd = d / s.heads;
    let scale = (hd as f32).powf(-0.5);
    for t in 0..n {
        let q = &x[t * 3 * d + h * hd..][..hd];
        let keys = s.keys(t);
        let row = &mut p[t * n..(t + 1) * n];
        let mut max = f32::NEG_INFINITY;
        for (j, r) in row.iter_mut().enumerate().take(keys) {
            *r = scale * dot(q, &x[j * 3 * d + d + h * hd..][..hd]);
            max = max.max(*r);
        }
        let mut sum = 0f32;
        for r in row.iter_mut().take(keys) {
            *r = exp(*r - max);
            sum += *r;
        }
        let inv = 1.0 / sum;
        for r in row.iter_mut().take(keys) {
            *r *= inv;
        }
        row[keys..].fill(0.0);
    }
}

/// The attention output `o` (`n × d`) of one sequence `x` (`n × 3d`).
#[inline(always)]
fn attention_forward(s: SequenceShape, x: &[f32], o: &mut [f32], p: &mut [f32]) {
    let (n, d) = (s.n, s.d);
    let hd = d / s.heads;
    for h in 0..s.heads {
        probabilities(s, x, h, p);
        for t in 0..n {
            let o = &mut o[t * d + h * hd..][..hd];
            for (j, &pj) in p[t * n..][..s.keys(t)].iter().enumerate() {
                axpy(o, pj, &x[j * 3 * d + 2 * d + h * hd..][..hd]);
            }
        }
    }
}

/// The gradient `dx` (`n × 3d`, zeroed) of one sequence `x` given the
/// output's gradient `g` (`n × d`).
#[inline(always)]
fn attention_backward(
    s: SequenceShape,
    x: &[f32],
    g: &[f32],
    dx: &mut [f32],
    p: &mut [f32],
    ds: &mut [f32],
) {
    let (n, d) = (s.n, s.d);
    let (d3, hd) = (3 * d, d / s.heads);
    let scale = (hd as f32).powf(-0.5);
    for h in 0..s.heads {
        probabilities(s, x, h, p);
        let (qo, ko, vo) = (h * hd, d + h * hd, 2 * d + h * hd);
        // dS = P ⊙ (dP − rowsum(P ⊙ dP)), dP = dO · Vᵀ; dV = Pᵀ · dO.
        for t in 0..n {
            let go = &g[t * d + h * hd..][..hd];
            let keys = s.keys(t);
            let mut rowdot = 0f32;
            for j in 0..keys {
                let dp = dot(go, &x[j * d3 + vo..][..hd]);
                ds[t * n + j] = dp;
                rowdot += p[t * n + j] * dp;
            }
            for j in 0..keys {
                let pj = p[t * n + j];
                ds[t * n + j] = pj * (ds[t * n + j] - rowdot) * scale;
                axpy(&mut dx[j * d3 + vo..][..hd], pj, go);
            }
        }
        // dQ = dS · K, dK = dSᵀ · Q (scale folded into dS).
        for t in 0..n {
            for j in 0..s.keys(t) {
                let sc = ds[t * n + j];
                if sc == 0.0 {
                    continue;
                }
                let (q, k) = (t * d3 + qo, j * d3 + ko);
                axpy(&mut dx[q..][..hd], sc, &x[k..][..hd]);
                axpy(&mut dx[k..][..hd], sc, &x[q..][..hd]);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_forward_avx2(s: SequenceShape, x: &[f32], o: &mut [f32], p: &mut [f32]) {
    attention_forward(s, x, o, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attention_backward_avx2(
    s: SequenceShape,
    x: &[f32],
    g: &[f32],
    dx: &mut [f32],
    p: &mut [f32],
    ds: &mut [f32],
) {
    attention_backward(s, x, g, dx, p, ds)
}

/// An MLP activation with its derivative (the inference kernel's forward
/// pass, [`crate::kernels`]' `ActOp`, plus [`activation_grad`]).
pub fn activation(x: &Tensor, act: Activation) -> Result<Tensor> {
    x.contiguous()?.apply_op1(ActOp(act))
}

/// The gradient of an activation at `x` given the output's gradient.
pub(crate) fn activation_grad(act: Activation, x: &Tensor, grad: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2_no_bwd(&grad.contiguous()?, &ActivationGrad(act))
}

/// `g · act'(x)` from the two tensors' storage in one vectorised pass.
struct ActivationGrad(Activation);

impl CustomOp2 for ActivationGrad {
    fn name(&self) -> &'static str {
        "glimpse-activation-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "activation gradient")?;
        let g = slice(s2, l2, "activation gradient")?;
        if x.len() != g.len() {
            candle_core::bail!("activation gradient: {:?} vs {:?}", l1.shape(), l2.shape())
        }
        let mut dx = vec![0f32; x.len()];
        let act = self.0;
        dx.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .zip(g.par_chunks(1 << 14))
            .for_each(|((dx, x), g)| activation_backward(act, x, g, dx));
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let d = crate::test_util::max_abs_diff(a, b);
        let scale = b
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .max(1.0);
        assert!(d <= tol * scale, "max diff {d} (scale {scale})");
    }

    fn check(
        f_fused: impl Fn(&[Tensor]) -> Tensor,
        f_composed: impl Fn(&[Tensor]) -> Tensor,
        shapes: &[&[usize]],
    ) {
        let dev = Device::Cpu;
        let vars: Vec<Var> = shapes
            .iter()
            .map(|s| Var::from_tensor(&Tensor::randn(0f32, 1.5, *s, &dev).unwrap()).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let a = f_fused(&ts);
        let b = f_composed(&ts);
        close(&a, &b, 1e-5);
        let w = Tensor::randn(0f32, 1.0, a.shape(), &dev).unwrap();
        let ga = (&a * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * &w).unwrap().sum_all().unwrap().backward().unwrap();
        for v in &vars {
            close(
                ga.get(v.as_tensor()).unwrap(),
                gb.get(v.as_tensor()).unwrap(),
                1e-4,
            );
        }
    }

    #[test]
    fn add_rows_matches_broadcast_add() {
        check(
            |t| add_rows(&t[0], &t[1]).unwrap(),
            |t| t[0].broadcast_add(&t[1]).unwrap(),
            &[&[5, 130, 33], &[33]],
        );
        // A position embedding: rows of tokens × width.
        check(
            |t| {
                add_rows(&t[0].reshape((4, 21)).unwrap(), &t[1].reshape(21).unwrap())
                    .unwrap()
                    .reshape((4, 7, 3))
                    .unwrap()
            },
            |t| t[0].broadcast_add(&t[1]).unwrap(),
            &[&[4, 7, 3], &[7, 3]],
        );
    }

    #[test]
    fn layer_norm_matches_the_composition() {
        let composed = |t: &[Tensor]| {
            let x = &t[0];
            let n = x.dim(D::Minus1).unwrap() as f64;
            let mean = (x.sum_keepdim(D::Minus1).unwrap() / n).unwrap();
            let c = x.broadcast_sub(&mean).unwrap();
            let var = (c.sqr().unwrap().sum_keepdim(D::Minus1).unwrap() / n).unwrap();
            let normed = c
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap();
            normed
                .broadcast_mul(&t[1])
                .unwrap()
                .broadcast_add(&t[2])
                .unwrap()
        };
        check(
            |t| layer_norm(&t[0], &t[1], &t[2], 1e-5).unwrap(),
            composed,
            &[&[3, 70, 48], &[48], &[48]],
        );
    }

    #[test]
    fn attention_matches_the_composition() {
        // q, k, v side by side; heads of 4; causal and not.
        let (b, n, heads, hd) = (3, 9, 2, 4);
        let d = heads * hd;
        for causal in [false, true] {
            let composed = |t: &[Tensor]| {
                let qkv = t[0]
                    .reshape((b, n, 3, heads, hd))
                    .unwrap()
                    .permute((2, 0, 3, 1, 4))
                    .unwrap();
                let q =
                    (qkv.get(0).unwrap().contiguous().unwrap() * (hd as f64).powf(-0.5)).unwrap();
                let k = qkv.get(1).unwrap().contiguous().unwrap();
                let v = qkv.get(2).unwrap().contiguous().unwrap();
                let mut scores = q.matmul(&k.t().unwrap()).unwrap();
                if causal {
                    let mask = crate::text::causal_mask(n, &Device::Cpu).unwrap();
                    scores = scores.broadcast_add(&mask).unwrap();
                }
                let p = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
                p.matmul(&v)
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .reshape((b, n, d))
                    .unwrap()
            };
            check(
                |t| attention(&t[0], heads, causal).unwrap(),
                composed,
                &[&[b, n, 3 * d]],
            );
        }
        assert!(attention(
            &Tensor::zeros((1, 2, 9), DType::F32, &Device::Cpu).unwrap(),
            2,
            false
        )
        .is_err());
    }

    #[test]
    fn softmax_matches_candle() {
        check(
            |t| softmax_last_dim(&t[0]).unwrap(),
            |t| candle_nn::ops::softmax(&t[0], D::Minus1).unwrap(),
            &[&[2, 3, 17, 17]],
        );
    }

    #[test]
    fn activations_match_candle() {
        check(
            |t| activation(&t[0], Activation::QuickGelu).unwrap(),
            |t| (&t[0] * candle_nn::ops::sigmoid(&(&t[0] * 1.702).unwrap()).unwrap()).unwrap(),
            &[&[9, 301]],
        );
        check(
            |t| activation(&t[0], Activation::Gelu).unwrap(),
            |t| t[0].gelu_erf().unwrap(),
            &[&[9, 301]],
        );
        check(
            |t| activation(&t[0], Activation::GeluTanh).unwrap(),
            |t| t[0].gelu().unwrap(),
            &[&[9, 301]],
        );
    }
}
