//! Transformer building blocks shared by both towers, each `new(cfg, vb)`
//! with tensor names that match the HF checkpoint.
//!
//! Every block is differentiable. candle's fused `layer_norm` and
//! `softmax_last_dim` kernels have no backward pass, so they are used only
//! when nothing needs a gradient (`!Tensor::track_op()`), which is the case
//! for inference from detached weights; training takes the composed path.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

use crate::autograd;
use crate::config::Activation;
use std::sync::Arc;

use crate::attention::Mask;
use crate::kernels::{fused_activation, small_matmul_t, SMALL_M};
use crate::precision::{Precision, QueryWeights};
use crate::team::{with_scratch, with_team, SharedSlice, Team};

/// Initialisation used when a layer's weights are created rather than loaded
/// (training from scratch): N(0, std²), as in open_clip.
fn normal(std: f64) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: std,
    }
}

/// Layer normalisation over the last dimension, with a backward pass.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `{prefix}.weight` and `{prefix}.bias` of size `dim`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let tracking = x.track_op() || self.weight.track_op() || self.bias.track_op();
        if !tracking && x.dtype() == DType::F32 {
            let x = x.contiguous()?;
            return candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps as f32);
        }
        if on_cpu_f32(x) {
            return autograd::layer_norm(x, &self.weight, &self.bias, self.eps as f32);
        }
        let n = x.dim(D::Minus1)? as f64;
        let mean = (x.sum_keepdim(D::Minus1)? / n)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / n)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

impl LayerNorm {
    /// Whether its gain is a trainable variable.
    pub(crate) fn is_variable(&self) -> bool {
        self.weight.is_variable()
    }

    /// The gain and bias as plain vectors, for the fused few-row path.
    fn plain(&self) -> Result<PlainLayerNorm> {
        Ok((
            self.weight.to_dtype(DType::F32)?.to_vec1()?,
            self.bias.to_dtype(DType::F32)?.to_vec1()?,
            self.eps as f32,
        ))
    }
}

/// A LayerNorm's weight, bias and epsilon as plain values (the fused block's).
type PlainLayerNorm = (Vec<f32>, Vec<f32>, f32);

/// Whether `x` can take the CPU kernels of this crate (`kernels`,
/// `autograd`, the reduced-precision copies): f32 in CPU memory. Tensors
/// elsewhere (a CUDA GPU) take candle's own ops.
pub(crate) fn on_cpu_f32(x: &Tensor) -> bool {
    x.dtype() == DType::F32 && x.device().is_cpu()
}

/// LayerNorm of each `gain.len()`-wide row of `x` into `out`.
///
/// The sums run in interleaved partial sums ([`crate::kernels::lane_sum`]): a plain `f32` sum is
/// one serial chain of additions (the compiler may not reorder it), which
/// made the text tower's 24 LayerNorms per query cost ~0.4 ms on a 2.5 GHz
/// Xeon; lanes let it vectorise.
fn layer_norm_rows(x: &[f32], gain: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    let d = gain.len();
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mean = crate::kernels::lane_sum(row, |v| v) / d as f32;
        let var = crate::kernels::lane_sum(row, |v| (v - mean) * (v - mean)) / d as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, v), g), b) in o.iter_mut().zip(row).zip(gain).zip(bias) {
            *o = (v - mean) * inv * g + b;
        }
    }
}

/// Softmax over the last dimension: the fused kernel for inference, the
/// differentiable composition when a gradient is needed.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.track_op() && on_cpu_f32(x) {
        autograd::softmax_last_dim(x)
    } else if x.track_op() {
        candle_nn::ops::softmax(x, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(x)
    }
}

/// `y = x Wᵀ + b` over the last dimension (PyTorch `nn.Linear` layout).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// A reduced-precision copy of `weight`, used for every product without
    /// a gradient on the CPU once set (see [`Linear::set_query_precision`]).
    query: Option<Arc<QueryWeights>>,
    /// On a GPU: a bf16 copy of `weight` for every product without a
    /// gradient (tensor cores; cuBLAS sums the products in f32).
    half: Option<Tensor>,
}

impl Linear {
    /// Loads `{prefix}.weight` `[out, in]` and, if `bias`, `{prefix}.bias` `[out]`.
    pub fn new(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let std = (in_dim as f64).powf(-0.5);
        let weight = vb.get_with_hints((out_dim, in_dim), "weight", normal(std))?;
        let bias = if bias {
            Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            query: None,
            half: None,
        })
    }

    /// Builds a layer from tensors already at hand.
    pub fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            query: None,
            half: None,
        }
    }

    /// Keeps a copy of the weight in `precision` for every product without
    /// a gradient (fp32 drops the copy). Only for detached weights: a
    /// trainable layer must not read a stale copy, so it is refused.
    pub fn set_query_precision(&mut self, precision: Precision) -> Result<()> {
        self.set_copy(precision, true)
    }

    /// [`Linear::set_query_precision`] with a copy that keeps its inputs
    /// f32 (never a dot-product layout, which rounds or quantises them):
    /// for the projections after the final LayerNorm, one row per
    /// embedding, where rounding the inputs would gain nothing and lose the
    /// most (that LayerNorm's output is not smoothed).
    pub(crate) fn set_query_precision_f32_inputs(&mut self, precision: Precision) -> Result<()> {
        self.set_copy(precision, false)
    }

    fn set_copy(&mut self, precision: Precision, dot_products: bool) -> Result<()> {
        if self.weight.is_variable() {
            candle_core::bail!("reduced-precision weights are for inference, not training")
        }
        if !self.weight.device().is_cpu() {
            // The packed copies are a CPU kernel's layout. A GPU multiplies
            // in bf16 on its tensor cores instead, for bf16 and int8 alike.
            self.query = None;
            self.half = match precision {
                Precision::Fp32 => None,
                _ => Some(self.weight.to_dtype(DType::BF16)?),
            };
            return Ok(());
        }
        self.query =
            QueryWeights::with_layout(&self.weight, self.bias.as_ref(), precision, dot_products)?
                .map(Arc::new);
        Ok(())
    }

    /// Bytes of the reduced-precision copy, if any.
    pub fn query_bytes(&self) -> usize {
        self.query.as_ref().map_or(0, |q| q.bytes())
            + self.half.as_ref().map_or(0, |h| h.elem_count() * 2)
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The `[out]` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Linear {
    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Inference products with at most this many rows (and more than
/// `SMALL_M`) are computed as `W · xᵀ` (see `Linear::forward`).
const TRANSPOSED_MAX_ROWS: usize = 160;

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let x2 = x.reshape((rows, in_dim))?;
        let fast = rows <= SMALL_M && !x.track_op() && !self.weight.track_op() && on_cpu_f32(x);
        let half = self.half.as_ref().filter(|_| !x.track_op());
        let y = match &self.query {
            // A GPU's bf16 copy: the input rounded to bf16, the output f32.
            _ if half.is_some() => {
                let h = half.expect("checked");
                let y = x2.to_dtype(DType::BF16)?.matmul(&h.t()?)?;
                self.add_bias(y.to_dtype(DType::F32)?)?
            }
            // The reduced-precision copy serves every product without a
            // gradient, whatever the row count, so that a text's embedding
            // does not depend on what it was batched with. It adds the bias.
            Some(q) if !x.track_op() && on_cpu_f32(x) => q.matmul_t(&x2.contiguous()?)?,
            _ if fast => self.add_bias(small_matmul_t(&x2, &self.weight)?)?,
            // gemm packs the right-hand side (all the weights) in every
            // call, which costs as much as the product when there are few
            // rows; as `W · xᵀ` the packed side is the input. ViT-B/32 in
            // fp32, one image (50 rows): 212 → 120 ms; two: 323 → 215 ms;
            // three: 388 → 346 ms; four: no difference.
            _ if rows <= TRANSPOSED_MAX_ROWS
                && !x.track_op()
                && !self.weight.track_op()
                && on_cpu_f32(x) =>
            {
                let y = self.weight.matmul(&x2.t()?)?.t()?.contiguous()?;
                self.add_bias(y)?
            }
            _ => match &self.bias {
                // Training: the bias's gradient is a column sum, which the
                // fused op computes in one pass (see `autograd`).
                Some(b) if on_cpu_f32(x) => autograd::add_rows(&x2.matmul(&self.weight.t()?)?, b)?,
                _ => self.add_bias(x2.matmul(&self.weight.t()?)?)?,
            },
        };
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        y.reshape(out_dims)
    }
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if !x.track_op() && on_cpu_f32(x) {
            return fused_activation(x, *self);
        }
        if on_cpu_f32(x) {
            return autograd::activation(x, *self);
        }
        match self {
            Activation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            Activation::Gelu => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
        }
    }
}

/// The q, k and v projections: separate while trainable (their tensors are
/// the variables), fused into one matmul for inference (detached weights).
#[derive(Clone, Debug)]
enum Qkv {
    Separate(Linear, Linear, Linear),
    Fused(Linear),
}

/// Multi-head self-attention (`self_attn.{q,k,v,out}_proj`).
#[derive(Clone, Debug)]
pub struct Attention {
    qkv: Qkv,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Loads the four projections of a `dim`-wide, `heads`-headed attention.
    pub fn new(dim: usize, heads: usize, vb: VarBuilder) -> Result<Self> {
        let q_proj = Linear::new(dim, dim, true, vb.pp("q_proj"))?;
        let k_proj = Linear::new(dim, dim, true, vb.pp("k_proj"))?;
        let v_proj = Linear::new(dim, dim, true, vb.pp("v_proj"))?;
        let out_proj = Linear::new(dim, dim, true, vb.pp("out_proj"))?;
        let trainable = [&q_proj, &k_proj, &v_proj]
            .iter()
            .any(|l| l.weight.is_variable() || l.bias.as_ref().is_some_and(|b| b.is_variable()));
        // Fusing copies the weights; the separate ones are then dropped, so
        // inference holds each weight once.
        let qkv = if trainable {
            Qkv::Separate(q_proj, k_proj, v_proj)
        } else {
            Qkv::Fused(fuse(&q_proj, &k_proj, &v_proj)?)
        };
        Ok(Self {
            qkv,
            out_proj,
            heads,
            head_dim: dim / heads,
        })
    }

    /// Attention over `x` `[batch, seq, dim]`; `mask` (added to the scores,
    /// `[seq, seq]` or `[batch, 1, seq, seq]`) makes it causal.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        if let (Qkv::Fused(qkv), Some(w_out)) = (&self.qkv, &self.out_proj.half) {
            if let (Some(w_qkv), false) = (&qkv.half, x.track_op()) {
                return self.forward_bf16(x, mask, (qkv, w_qkv), w_out);
            }
        }
        let qkv = self.qkv(x)?;
        let out = if !qkv.track_op() && on_cpu_f32(&qkv) {
            // Inference: the multi-threaded kernel (see `attention`).
            crate::attention::attention_tensor(&qkv, self.heads, mask)?
        } else if mask.is_none() && on_cpu_f32(&qkv) {
            // Training: one fused pass each way (see `autograd::attention`).
            autograd::attention(&qkv, self.heads, false)?
        } else {
            self.attend(&qkv, mask)?
        };
        self.out_proj.forward(&out)
    }

    /// On a GPU with bf16 copies: from the q/k/v product to the output
    /// projection in bf16 — the head permutes, both products (tensor
    /// cores) and the softmax — instead of f32 between two casts.
    fn forward_bf16(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        (qkv, w_qkv): (&Linear, &Tensor),
        w_out: &Tensor,
    ) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let mut h = x
            .reshape((b * n, d))?
            .to_dtype(DType::BF16)?
            .matmul(&w_qkv.t()?)?;
        if let Some(bias) = &qkv.bias {
            h = h.broadcast_add(&bias.to_dtype(DType::BF16)?)?;
        }
        let mask = mask.map(|m| m.to_dtype(DType::BF16)).transpose()?;
        let out = self.attend(&h.reshape((b, n, 3 * d))?, mask.as_ref())?;
        let y = out
            .reshape((b * n, d))?
            .matmul(&w_out.t()?)?
            .to_dtype(DType::F32)?;
        self.out_proj.add_bias(y)?.reshape((b, n, d))
    }

    /// Attention over packed rows (see [`Packing`]): the projections run on
    /// the real tokens only; the scores on the padded `[batch, seq]` grid.
    pub(crate) fn forward_packed(
        &self,
        x: &Tensor,
        packing: &Packing,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let qkv = packing.to_padded(&self.qkv(x)?)?;
        // `mask` is the causal mask (the only one packing allows): training
        // takes the fused causal pass.
        let out = if qkv.track_op() && on_cpu_f32(&qkv) {
            autograd::attention(&qkv, self.heads, true)?
        } else {
            self.attend(&qkv, Some(mask))?
        };
        self.out_proj.forward(&packing.to_packed(&out)?)
    }

    fn qkv(&self, x: &Tensor) -> Result<Tensor> {
        match &self.qkv {
            Qkv::Fused(l) => l.forward(x),
            Qkv::Separate(q, k, v) => fuse(q, k, v)?.forward(x),
        }
    }

    /// Scaled dot-product attention of `qkv` `[b, n, 3d]`, before the
    /// output projection: `[b, n, d]`.
    fn attend(&self, qkv: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d3) = qkv.dims3()?;
        let d = d3 / 3;
        // [b, n, 3, heads, head_dim] -> [3, b, heads, n, head_dim]
        let qkv = qkv
            .reshape((b, n, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))
    }
}

/// Where the real tokens of a batch of causal sequences sit: row-wise
/// layers (LayerNorm, projections, MLP) run on the `rows` real tokens
/// only — for a training batch of captions about half of `batch × seq` —
/// and attention on the padded grid. Under the causal mask a token never
/// sees the padding after it, so the result is the padded computation's.
#[derive(Clone, Debug)]
pub(crate) struct Packing {
    batch: usize,
    seq: usize,
    rows: usize,
    /// For each grid cell, its packed row (or `rows`: a zero row).
    grid_rows: Tensor,
    /// For each packed row, its grid cell.
    packed_cells: Tensor,
}

impl Packing {
    /// The packing of sequences whose last real token is at `last[i]`.
    pub(crate) fn new(last: &[usize], seq: usize, device: &candle_core::Device) -> Result<Self> {
        let batch = last.len();
        let mut grid = vec![0u32; batch * seq];
        let mut cells = Vec::new();
        for (i, &l) in last.iter().enumerate() {
            for p in 0..seq {
                grid[i * seq + p] = if p <= l {
                    cells.push((i * seq + p) as u32);
                    (cells.len() - 1) as u32
                } else {
                    u32::MAX
                };
            }
        }
        let rows = cells.len();
        grid.iter_mut()
            .filter(|g| **g == u32::MAX)
            .for_each(|g| *g = rows as u32);
        Ok(Self {
            batch,
            seq,
            rows,
            grid_rows: Tensor::from_vec(grid, batch * seq, device)?,
            packed_cells: Tensor::from_vec(cells, rows, device)?,
        })
    }

    /// Real tokens.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// `[rows, w]` to `[batch, seq, w]`, padding with zeros.
    pub(crate) fn to_padded(&self, x: &Tensor) -> Result<Tensor> {
        let w = x.dim(1)?;
        let zero = Tensor::zeros((1, w), x.dtype(), x.device())?;
        Tensor::cat(&[x, &zero], 0)?
            .index_select(&self.grid_rows, 0)?
            .reshape((self.batch, self.seq, w))
    }

    /// `[batch, seq, w]` to `[rows, w]`.
    pub(crate) fn to_packed(&self, x: &Tensor) -> Result<Tensor> {
        let w = x.dim(2)?;
        x.reshape((self.batch * self.seq, w))?
            .index_select(&self.packed_cells, 0)
    }
}

impl Attention {
    /// See [`Linear::set_query_precision`]; returns the bytes of the copies.
    pub fn set_query_precision(&mut self, precision: Precision) -> Result<usize> {
        let mut bytes = 0;
        if let Qkv::Fused(l) = &mut self.qkv {
            l.set_query_precision(precision)?;
            bytes += l.query_bytes();
        }
        self.out_proj.set_query_precision(precision)?;
        Ok(bytes + self.out_proj.query_bytes())
    }
}

fn fuse(q: &Linear, k: &Linear, v: &Linear) -> Result<Linear> {
    let w = Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0)?;
    let bias = match (&q.bias, &k.bias, &v.bias) {
        (Some(a), Some(b), Some(c)) => Some(Tensor::cat(&[a, b, c], 0)?),
        _ => None,
    };
    Ok(Linear::from_parts(w, bias))
}

/// The feed-forward block (`mlp.fc1`, activation, `mlp.fc2`).
#[derive(Clone, Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    /// Loads `fc1` `[inner, dim]` and `fc2` `[dim, inner]`.
    pub fn new(dim: usize, inner: usize, act: Activation, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: Linear::new(dim, inner, true, vb.pp("fc1"))?,
            fc2: Linear::new(inner, dim, true, vb.pp("fc2"))?,
            act,
        })
    }
}

impl Mlp {
    /// See [`Linear::set_query_precision`]; returns the bytes of the copies.
    pub fn set_query_precision(&mut self, precision: Precision) -> Result<usize> {
        self.fc1.set_query_precision(precision)?;
        self.fc2.set_query_precision(precision)?;
        Ok(self.fc1.query_bytes() + self.fc2.query_bytes())
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(w1), Some(w2)) = (&self.fc1.half, &self.fc2.half) {
            if !x.track_op() {
                return self.forward_bf16(x, w1, w2);
            }
        }
        self.fc2.forward(&self.act.forward(&self.fc1.forward(x)?)?)
    }
}

impl Mlp {
    /// On a GPU with bf16 copies: the inner activations (4× the width) stay
    /// bf16 from the first product to the second — bias, activation and all
    /// — instead of a round trip through f32 around each product, which
    /// moved three times the memory through candle's element-wise kernels.
    fn forward_bf16(&self, x: &Tensor, w1: &Tensor, w2: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let x2 = x.reshape((x.elem_count() / in_dim.max(1), in_dim))?;
        let mut inner = x2.to_dtype(DType::BF16)?.matmul(&w1.t()?)?;
        if let Some(b) = &self.fc1.bias {
            inner = inner.broadcast_add(&b.to_dtype(DType::BF16)?)?;
        }
        let inner = self.act.forward(&inner)?;
        let y = self
            .fc2
            .add_bias(inner.matmul(&w2.t()?)?.to_dtype(DType::F32)?)?;
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        y.reshape(out_dims)
    }
}

/// Shapes of one transformer stack.
#[derive(Clone, Copy, Debug)]
pub struct EncoderShape {
    /// Residual width.
    pub dim: usize,
    /// MLP width.
    pub inner: usize,
    /// Attention heads.
    pub heads: usize,
    /// Blocks.
    pub layers: usize,
    /// MLP activation.
    pub act: Activation,
    /// LayerNorm epsilon.
    pub eps: f64,
}

/// One pre-norm residual block: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    self_attn: Attention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
    fused: Option<Arc<FusedBlock>>,
    fused_rows: FusedRows,
    /// With int8 dot-product copies: the two LayerNorms rescaled to match
    /// the smoothed copies of the q/k/v and fc1 weights (see `smoothed`),
    /// used wherever those copies are.
    smoothed_norms: Option<(LayerNorm, LayerNorm)>,
}

/// Which inference inputs a block with reduced-precision copies runs as
/// one fused pass over plain rows (see [`EncoderLayer::set_query_precision`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FusedRows {
    /// Inputs of at most 16 rows (a query), and only with
    /// copies that keep their inputs f32: the image tower, whose batches
    /// take the multi-threaded tensor path.
    #[default]
    Few,
    /// Every input, whatever the copies: the text tower. Copies that round
    /// their inputs (bf16 or int8 dot products) then see the same upstream
    /// arithmetic for a text alone and in a batch, so that its embedding
    /// does not depend on the batch.
    Any,
}

/// With [`FusedRows::Few`] (the image tower), inputs of at most this many
/// rows take the fused block; larger ones the tensor path, whose attention
/// is multi-threaded. (Fusing the server's batches of ~80 rows was
/// measured: no gain, the products dominate.) The text tower
/// ([`FusedRows::Any`]) fuses every input.
pub(crate) const FUSED_MAX_ROWS: usize = SMALL_M;

/// One block on reduced-precision copies, run on plain rows (for the inputs
/// [`FusedRows`] names): the same operations as the tensor path (f32
/// LayerNorm, softmax and activation; smoothed LayerNorms with int8
/// dot-product copies), without a tensor per step.
#[derive(Debug)]
struct FusedBlock {
    ln1: PlainLayerNorm,
    qkv: Arc<QueryWeights>,
    out_proj: Arc<QueryWeights>,
    ln2: PlainLayerNorm,
    fc1: Arc<QueryWeights>,
    fc2: Arc<QueryWeights>,
    act: Activation,
    heads: usize,
}

impl FusedBlock {
    /// Whether an input of `m` rows runs as steps of a [`Team`]: when every
    /// product splits there (int8 dot products, few rows). Other copies
    /// split their products through rayon's loops, which a team's spinning
    /// helper would not join.
    fn runs_in_team(&self, m: usize) -> bool {
        [&self.qkv, &self.out_proj, &self.fc1, &self.fc2]
            .iter()
            .all(|w| w.splits_in_team(m))
    }

    /// The block on `b` sequences of `n` rows `x` (`[b·n, d]`, updated in
    /// place) as steps of `team`: the products split by panels, the
    /// attention by heads, the activation and the residual sums done by
    /// the chunk that computes their values. Bit for bit the values of
    /// the rayon path in [`FusedBlock::forward`].
    fn forward_in_team(&self, team: &Team, x: &mut [f32], b: usize, n: usize, mask: Mask) {
        let m = b * n;
        let d = x.len() / m.max(1);
        let (width, inner) = (self.qkv.outputs(), self.fc1.outputs());
        // One reused buffer for the block's three intermediates, each
        // written in full before it is read.
        with_scratch(&BLOCK_SCRATCH, m * (d + width + inner), |buffer| {
            let (h, rest) = buffer.split_at_mut(m * d);
            let (qkv, activated) = rest.split_at_mut(m * width);
            let (g, bias, eps) = &self.ln1;
            layer_norm_rows(x, g, bias, *eps, h);
            {
                let out = SharedSlice::new(qkv);
                // SAFETY (all four writers): a chunk of a product alone writes
                // its columns of each row.
                let write = |i: usize, c: usize, v: &[f32]| {
                    unsafe { out.range(i * width + c, v.len()) }.copy_from_slice(v)
                };
                self.qkv.product_in_team(team, h, m, &write);
            }
            crate::attention::attention_in_team(team, qkv, b, n, self.heads, mask, h);
            let add = |xs: &SharedSlice<f32>, i: usize, c: usize, v: &[f32]| {
                let dst = unsafe { xs.range(i * d + c, v.len()) };
                dst.iter_mut().zip(v).for_each(|(x, a)| *x += a);
            };
            {
                let xs = SharedSlice::new(x);
                self.out_proj
                    .product_in_team(team, h, m, &|i, c, v| add(&xs, i, c, v));
            }
            let (g, bias, eps) = &self.ln2;
            layer_norm_rows(x, g, bias, *eps, h);
            {
                let out = SharedSlice::new(activated);
                let write = |i: usize, c: usize, v: &[f32]| {
                    crate::kernels::activate(self.act, v, unsafe {
                        out.range(i * inner + c, v.len())
                    })
                };
                self.fc1.product_in_team(team, h, m, &write);
            }
            let xs = SharedSlice::new(x);
            self.fc2
                .product_in_team(team, activated, m, &|i, c, v| add(&xs, i, c, v));
        });
    }

    /// `None` unless every product of the block has a copy, and, with
    /// [`FusedRows::Few`], for copies that round their inputs (bf16 or int8
    /// dot products): this block's LayerNorm sums in another order than the
    /// tensor path's (candle's; the attention kernel is the same), a
    /// difference of ~1e-7 that rounding an input can turn into ~1e-3, so an
    /// input would embed differently alone (fused) and in a batch (tensor
    /// path). With [`FusedRows::Any`]
    /// every input is fused, so the question does not arise.
    fn new(layer: &EncoderLayer, rows: FusedRows) -> Result<Option<Self>> {
        let a = &layer.self_attn;
        let (Qkv::Fused(qkv), m) = (&a.qkv, &layer.mlp) else {
            return Ok(None);
        };
        if rows == FusedRows::Few && qkv.query.as_ref().is_some_and(|q| q.rounds_inputs()) {
            return Ok(None);
        }
        let (Some(qkv), Some(out_proj), Some(fc1), Some(fc2)) = (
            qkv.query.clone(),
            a.out_proj.query.clone(),
            m.fc1.query.clone(),
            m.fc2.query.clone(),
        ) else {
            return Ok(None);
        };
        let (ln1, ln2) = layer.norms(true);
        let (ln1, ln2) = (ln1.plain()?, ln2.plain()?);
        Ok(Some(Self {
            ln1,
            qkv,
            out_proj,
            ln2,
            fc1,
            fc2,
            act: m.act,
            heads: a.heads,
        }))
    }

    /// `x` `[b, n, d]`; `mask` as for [`Attention::forward`] (`[n, n]` or
    /// `[b, 1, n, n]`, added to the scores).
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let m = b * n;
        let mut x_rows = x.flatten_all()?.to_vec1::<f32>()?;
        let mask = crate::attention::MaskValues::of(mask, b, n)?;
        if self.runs_in_team(m) && !rayon_path_forced() {
            let mask = mask.as_mask();
            with_team(|team| self.forward_in_team(team, &mut x_rows, b, n, mask));
            return Tensor::from_vec(x_rows, (b, n, d), x.device());
        }
        let mut h = vec![0f32; m * d];
        let (g, bias, eps) = &self.ln1;
        layer_norm_rows(&x_rows, g, bias, *eps, &mut h);
        let qkv = self.qkv.product(&h, m);
        crate::attention::attention(&qkv, b, n, self.heads, mask.as_mask(), &mut h);
        let attn = self.out_proj.product(&h, m);
        x_rows.iter_mut().zip(&attn).for_each(|(x, a)| *x += a);
        let (g, bias, eps) = &self.ln2;
        layer_norm_rows(&x_rows, g, bias, *eps, &mut h);
        let pre = self.fc1.product(&h, m);
        let inner = crate::kernels::activate_parallel(self.act, &pre);
        let mlp = self.fc2.product(&inner, m);
        x_rows.iter_mut().zip(&mlp).for_each(|(x, v)| *x += v);
        Tensor::from_vec(x_rows, (b, n, d), x.device())
    }
}

thread_local! {
    /// The calling thread's buffer for [`FusedBlock::forward_in_team`].
    static BLOCK_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
thread_local! {
    /// Set by tests that compare [`FusedBlock`]'s team path with its rayon
    /// path.
    static FORCE_RAYON_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a test asked for the fused block's rayon path.
fn rayon_path_forced() -> bool {
    #[cfg(test)]
    return FORCE_RAYON_PATH.with(|f| f.get());
    #[cfg(not(test))]
    false
}

/// A LayerNorm and the product it feeds, rescaled per channel for int8
/// inputs: channel `c` of the LayerNorm's output divided by `s_c` and
/// column `c` of the weight multiplied by it — the same function — with
/// `s_c = sqrt(a_c / w_c)`, `a_c = 4|γ_c| + |β_c|` (how large the channel
/// can get: the normalised value is rarely beyond ±4) and `w_c` the
/// column's largest weight.
///
/// Quantising an input row to int8 as a whole gives every channel the step
/// of the largest one. Pretrained transformers have a few LayerNorm
/// channels far larger than the rest (a large `γ_c`, with small weights
/// reading it), which would crush the others to a few levels; moving half
/// of each channel's range (in log scale) into its weights balances the two
/// quantisations (as SmoothQuant does, Xiao et al. 2023, here from the
/// weights alone, without calibration data). Channels of ordinary size get
/// similar factors, which change nothing: a row's scale is its own.
fn smoothed(ln: &LayerNorm, linear: &Linear) -> Result<(LayerNorm, Arc<QueryWeights>)> {
    let (gamma, beta, _) = ln.plain()?;
    let (rows, k) = linear.weight.dims2()?;
    let mut w = linear
        .weight
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut w_max = vec![0f32; k];
    for row in w.chunks_exact(k.max(1)) {
        for (m, v) in w_max.iter_mut().zip(row) {
            *m = m.max(v.abs());
        }
    }
    let factors: Vec<f32> = (0..k)
        .map(|c| {
            let a = 4.0 * gamma[c].abs() + beta[c].abs();
            let s = (a / w_max[c]).sqrt();
            if s.is_finite() && s > 0.0 {
                s
            } else {
                1.0
            }
        })
        .collect();
    for row in w.chunks_exact_mut(k.max(1)) {
        row.iter_mut().zip(&factors).for_each(|(v, s)| *v *= s);
    }
    let device = linear.weight.device();
    let gamma: Vec<f32> = gamma.iter().zip(&factors).map(|(g, s)| g / s).collect();
    let beta: Vec<f32> = beta.iter().zip(&factors).map(|(b, s)| b / s).collect();
    let norm = LayerNorm {
        weight: Tensor::from_vec(gamma, k, device)?,
        bias: Tensor::from_vec(beta, k, device)?,
        eps: ln.eps,
    };
    let weight = Tensor::from_vec(w, (rows, k), device)?;
    let copy = QueryWeights::new(&weight, linear.bias.as_ref(), Precision::Int8)?
        .ok_or_else(|| candle_core::Error::msg("int8 copy expected"))?;
    Ok((norm, Arc::new(copy)))
}

impl EncoderLayer {
    /// Loads one block.
    pub fn new(s: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::new(s.dim, s.heads, vb.pp("self_attn"))?,
            layer_norm1: LayerNorm::new(s.dim, s.eps, vb.pp("layer_norm1"))?,
            mlp: Mlp::new(s.dim, s.inner, s.act, vb.pp("mlp"))?,
            layer_norm2: LayerNorm::new(s.dim, s.eps, vb.pp("layer_norm2"))?,
            fused: None,
            fused_rows: FusedRows::Few,
            smoothed_norms: None,
        })
    }

    /// See [`Linear::set_query_precision`]; returns the bytes of the copies.
    /// With copies, the inputs `rows` names (a query at least) run the
    /// whole block as one fused pass over plain rows instead of ~20 tensor
    /// operations.
    pub fn set_query_precision(&mut self, precision: Precision, rows: FusedRows) -> Result<usize> {
        // Cleared first: a failure below must not leave smoothed norms or a
        // fused block beside copies they do not match.
        self.smoothed_norms = None;
        self.fused = None;
        let mut bytes = self.self_attn.set_query_precision(precision)?
            + self.mlp.set_query_precision(precision)?;
        // int8 dot-product copies of the products the LayerNorms feed are
        // smoothed, and the LayerNorms rescaled to match (see `smoothed`).
        if let Qkv::Fused(qkv) = &mut self.self_attn.qkv {
            if qkv.query.as_ref().is_some_and(|q| q.quantises_inputs()) {
                bytes -= qkv.query_bytes() + self.mlp.fc1.query_bytes();
                let (ln1, qkv_copy) = smoothed(&self.layer_norm1, qkv)?;
                let (ln2, fc1_copy) = smoothed(&self.layer_norm2, &self.mlp.fc1)?;
                bytes += qkv_copy.bytes() + fc1_copy.bytes();
                qkv.query = Some(qkv_copy);
                self.mlp.fc1.query = Some(fc1_copy);
                self.smoothed_norms = Some((ln1, ln2));
            }
        }
        self.fused_rows = rows;
        self.fused = FusedBlock::new(self, rows)?.map(Arc::new);
        Ok(bytes)
    }

    /// The LayerNorms before attention and MLP: the smoothed ones where the
    /// products read int8 dot-product copies (an `inference` input: no
    /// gradient, f32 on the CPU), else the checkpoint's.
    fn norms(&self, inference: bool) -> (&LayerNorm, &LayerNorm) {
        match &self.smoothed_norms {
            Some((ln1, ln2)) if inference => (ln1, ln2),
            _ => (&self.layer_norm1, &self.layer_norm2),
        }
    }

    /// Runs the block on packed rows `[rows, d]` (training; see [`Packing`]).
    pub(crate) fn forward_packed(
        &self,
        x: &Tensor,
        packing: &Packing,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let (ln1, ln2) = self.norms(!x.track_op() && on_cpu_f32(x));
        let h = self
            .self_attn
            .forward_packed(&ln1.forward(x)?, packing, mask)?;
        let x = (x + h)?;
        let h = self.mlp.forward(&ln2.forward(&x)?)?;
        x + h
    }

    /// Runs the block.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        if let Some(fused) = &self.fused {
            let (b, n, _) = x.dims3()?;
            let rows_fit = b * n <= FUSED_MAX_ROWS || self.fused_rows == FusedRows::Any;
            if !x.track_op() && on_cpu_f32(x) && rows_fit {
                return fused.forward(x, mask);
            }
        }
        let (ln1, ln2) = self.norms(!x.track_op() && on_cpu_f32(x));
        let h = self.self_attn.forward(&ln1.forward(x)?, mask)?;
        let x = residual(x, &h)?;
        let h = self.mlp.forward(&ln2.forward(&x)?)?;
        residual(&x, &h)
    }
}

/// `x + h`: without a gradient on the CPU in one multi-threaded pass.
fn residual(x: &Tensor, h: &Tensor) -> Result<Tensor> {
    if !x.track_op() && !h.track_op() && on_cpu_f32(x) && on_cpu_f32(h) {
        crate::kernels::add_no_grad(x, h)
    } else {
        x + h
    }
}

/// A stack of blocks (`encoder.layers.{i}`).
#[derive(Clone, Debug)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    /// Loads `s.layers` blocks.
    pub fn new(s: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..s.layers)
            .map(|i| EncoderLayer::new(s, vb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// See [`EncoderLayer::set_query_precision`]; returns the bytes of the
    /// copies.
    pub fn set_query_precision(&mut self, precision: Precision, rows: FusedRows) -> Result<usize> {
        let mut bytes = 0;
        for layer in &mut self.layers {
            bytes += layer.set_query_precision(precision, rows)?;
        }
        Ok(bytes)
    }

    /// Runs all blocks on packed rows (see [`Packing`]).
    pub(crate) fn forward_packed(
        &self,
        x: &Tensor,
        packing: &Packing,
        mask: &Tensor,
    ) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward_packed(&x, packing, mask)?;
        }
        Ok(x)
    }

    /// Runs all blocks; with `keep_hidden`, also returns the input and the
    /// output of every block (HF's `hidden_states`).
    pub fn forward(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        keep_hidden: bool,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut hidden = Vec::new();
        let mut x = x.clone();
        for layer in &self.layers {
            if keep_hidden {
                hidden.push(x.clone());
            }
            x = layer.forward(&x, mask)?;
        }
        if keep_hidden {
            hidden.push(x.clone());
        }
        Ok((x, hidden))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::precision::Precision;
    use candle_core::{Device, Var};

    #[test]
    fn layer_norm_fast_and_slow_paths_agree_and_slow_has_gradients() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 2.0, (3, 5, 8), &dev).unwrap();
        let w = Tensor::randn(1f32, 0.1, 8, &dev).unwrap();
        let b = Tensor::randn(0f32, 0.1, 8, &dev).unwrap();
        let fast = LayerNorm {
            weight: w.clone(),
            bias: b.clone(),
            eps: 1e-5,
        };
        let wv = Var::from_tensor(&w).unwrap();
        let slow = LayerNorm {
            weight: wv.as_tensor().clone(),
            bias: b,
            eps: 1e-5,
        };
        let a = fast.forward(&x).unwrap();
        let c = slow.forward(&x).unwrap();
        let diff = crate::test_util::max_abs_diff(&a, &c);
        assert!(diff < 1e-5, "{diff}");
        let grads = c.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(wv.as_tensor())
            .expect("LayerNorm weight gets a gradient");
        assert!(
            g.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0
        );
    }

    /// The fused block's LayerNorm (lane sums) against an f64 definition,
    /// at widths around the lane count and with a large common offset
    /// (where a careless variance loses its digits).
    #[test]
    fn layer_norm_rows_matches_an_f64_definition() {
        for d in [1usize, 7, 15, 16, 17, 64, 512, 515, 768] {
            for offset in [0f32, 100.0] {
                let rows = 3;
                let x: Vec<f32> = crate::test_util::values(rows * d, d as u64)
                    .iter()
                    .map(|v| v * 3.0 + offset)
                    .collect();
                let gain = crate::test_util::values(d, 7);
                let bias = crate::test_util::values(d, 8);
                let mut out = vec![0f32; rows * d];
                layer_norm_rows(&x, &gain, &bias, 1e-5, &mut out);
                for (row, got) in x.chunks_exact(d).zip(out.chunks_exact(d)) {
                    let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
                    let var = row
                        .iter()
                        .map(|&v| (f64::from(v) - mean).powi(2))
                        .sum::<f64>()
                        / d as f64;
                    for (c, &g) in got.iter().enumerate() {
                        let want = (f64::from(row[c]) - mean) / (var + 1e-5).sqrt()
                            * f64::from(gain[c])
                            + f64::from(bias[c]);
                        assert!(
                            (f64::from(g) - want).abs() < 2e-4,
                            "width {d}, offset {offset}, column {c}: {g} against {want}"
                        );
                    }
                }
            }
        }
    }

    /// The fused block computes what the tensor path computes on the same
    /// reduced-precision copies, with a causal mask, a per-sequence padded
    /// mask and no mask.
    #[test]
    fn fused_block_matches_the_tensor_path() {
        let dev = Device::Cpu;
        // Fixed pseudo-random values (uniform, of the given mean and
        // spread): with fresh random ones int8's error sometimes landed just
        // past its tolerance (0.0200–0.028 in 2 of 25 runs).
        let random = |mean: f32, std: f32, shape: &[usize], seed: u64| {
            let n = shape.iter().product();
            let v = crate::test_util::values(n, seed)
                .into_iter()
                .map(|u| mean + u * std * 3f32.sqrt())
                .collect::<Vec<f32>>();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let (d, heads) = (32, 4);
        let s = EncoderShape {
            dim: d,
            inner: 64,
            heads,
            layers: 1,
            act: Activation::QuickGelu,
            eps: 1e-5,
        };
        let mut tensors = std::collections::HashMap::new();
        for (i, name) in ["q_proj", "k_proj", "v_proj", "out_proj"]
            .iter()
            .enumerate()
        {
            let seed = 10 * i as u64;
            tensors.insert(
                format!("self_attn.{name}.weight"),
                random(0f32, 0.2, &[d, d], seed + 1),
            );
            tensors.insert(
                format!("self_attn.{name}.bias"),
                random(0f32, 0.1, &[d], seed + 2),
            );
        }
        tensors.insert("mlp.fc1.weight".into(), random(0f32, 0.2, &[64, d], 3));
        tensors.insert("mlp.fc1.bias".into(), random(0f32, 0.1, &[64], 4));
        tensors.insert("mlp.fc2.weight".into(), random(0f32, 0.2, &[d, 64], 5));
        tensors.insert("mlp.fc2.bias".into(), random(0f32, 0.1, &[d], 6));
        for (i, ln) in ["layer_norm1", "layer_norm2"].iter().enumerate() {
            let seed = 100 + 10 * i as u64;
            tensors.insert(format!("{ln}.weight"), random(1f32, 0.1, &[d], seed + 7));
            tensors.insert(format!("{ln}.bias"), random(0f32, 0.1, &[d], seed + 8));
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &dev);
        let exact = EncoderLayer::new(&s, vb).unwrap();
        let (b, n) = (3, 5);
        let x = random(0f32, 1.0, &[b, n, d], 9);
        let causal = crate::text::causal_mask(n, &dev).unwrap();
        let padded: Vec<f32> = (0..b * n * n)
            .map(|i| {
                let (seq, key) = (i / (n * n), i % n);
                if key + seq >= n {
                    -1e9
                } else {
                    0.0
                }
            })
            .collect();
        let padded = Tensor::from_vec(padded, (b, 1, n, n), &dev).unwrap();
        let rounds = [
            (Precision::Int8, crate::int8_dot::available(), 0.02),
            (Precision::Bf16, crate::bf16_dot::available(), 0.01),
        ];
        for (precision, rounds_inputs, tolerance) in rounds {
            let mut layer = exact.clone();
            layer
                .set_query_precision(precision, FusedRows::Any)
                .unwrap();
            assert!(layer.fused.is_some());
            // For the image tower (few rows only), copies that round their
            // inputs (bf16 or int8 dot products) get no fused block.
            let mut few = exact.clone();
            few.set_query_precision(precision, FusedRows::Few).unwrap();
            assert_eq!(few.fused.is_none(), rounds_inputs, "{precision}");
            let mut tensor_path = layer.clone();
            tensor_path.fused = None;
            for mask in [Some(&causal), Some(&padded), None] {
                let fused = layer.forward(&x, mask).unwrap();
                // Within the precision's tolerance of f32 (int8 dot
                // products' copies are smoothed, see `smoothed`)...
                let want = exact.forward(&x, mask).unwrap();
                let scale = want
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                let diff = crate::test_util::max_abs_diff(&fused, &want) / scale;
                assert!(diff < tolerance, "{precision}: {diff}");
                assert!(diff > 0.0, "{precision}: the copies cannot be exact");
                // ...and where the copies keep f32 inputs, the tensor path
                // on the same copies to f32 rounding.
                if !rounds_inputs {
                    let plain = tensor_path.forward(&x, mask).unwrap();
                    let diff = crate::test_util::max_abs_diff(&fused, &plain);
                    assert!(diff < 1e-4, "{precision}: {diff}");
                }
                // Run as team steps (int8 dot products), the block gives the
                // rayon path's values bit for bit, on pools of 1 to 3 threads.
                if layer.fused.as_ref().unwrap().runs_in_team(b * n) {
                    FORCE_RAYON_PATH.with(|f| f.set(true));
                    let rayon_path = layer.forward(&x, mask).unwrap();
                    FORCE_RAYON_PATH.with(|f| f.set(false));
                    let want = rayon_path.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    for threads in 1..=3 {
                        let pool = rayon::ThreadPoolBuilder::new()
                            .num_threads(threads)
                            .build()
                            .unwrap();
                        let team = pool.install(|| layer.forward(&x, mask).unwrap());
                        let got = team.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                        assert!(
                            got.iter()
                                .zip(&want)
                                .all(|(a, b)| a.to_bits() == b.to_bits()),
                            "{precision}, {threads} threads"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn attention_kernel_matches_candles_composition() {
        // Inference attention (the kernel) against candle's ops (the path a
        // GPU takes), with no mask, the causal mask and per-sequence masks
        // with padding, for one sequence and a batch.
        let dev = Device::Cpu;
        let (d, heads, n) = (48, 3, 19);
        let attention = Attention::new(d, heads, VarBuilder::zeros(DType::F32, &dev)).unwrap();
        for b in [1, 3] {
            let qkv = Tensor::randn(0f32, 1.0, (b, n, 3 * d), &dev).unwrap();
            let causal = crate::text::causal_mask(n, &dev).unwrap();
            let padded: Vec<f32> = (0..b * n * n)
                .map(|i| {
                    let (s, t, j) = (i / (n * n), i / n % n, i % n);
                    if j > t || j >= n - 4 * s {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let padded = Tensor::from_vec(padded, (b, 1, n, n), &dev).unwrap();
            for mask in [None, Some(&causal), Some(&padded)] {
                let got = crate::attention::attention_tensor(&qkv, heads, mask).unwrap();
                let want = attention.attend(&qkv, mask).unwrap();
                let diff = crate::test_util::max_abs_diff(&got, &want);
                assert!(
                    diff < 1e-5,
                    "batch {b}, mask {:?}: {diff}",
                    mask.map(|m| m.dims().to_vec())
                );
            }
        }
    }

    #[test]
    fn softmax_paths_agree() {
        let x = Tensor::randn(0f32, 3.0, (2, 7), &Device::Cpu).unwrap();
        let v = Var::from_tensor(&x).unwrap();
        let a = softmax_last_dim(&x).unwrap();
        let b = softmax_last_dim(v.as_tensor()).unwrap();
        let diff = crate::test_util::max_abs_diff(&a, &b);
        assert!(diff < 1e-6);
    }
}
