//! Reduced-precision weights for the text tower.
//!
//! A query is a handful of tokens, so its cost is streaming the text tower's
//! weights (151 MB in f32 for ViT-B/32) through a few multiply-adds each. A
//! [`QueryWeights`] is a second, smaller copy of one linear layer's weights
//! — bf16 (half the bytes) or int8 with one f32 scale per output row (a
//! quarter) — packed in panels of 16 output columns, which the kernel widens
//! to f32 in registers; sums, LayerNorm, softmax, activations and the final
//! normalisation stay f32. Once a copy is set it serves every text product
//! without a gradient, so an embedding does not depend on what it was
//! batched with. The f32 weights stay for training and the image tower.
//!
//! On CPUs with bf16 dot products (AVX512_BF16) a bf16 copy is packed for
//! `vdpbf16ps` instead ([`crate::bf16_dot`]): the inputs are rounded to
//! bf16 too and each instruction does twice an f32 FMA's multiply-adds,
//! which speeds up image batches as well as queries. On CPUs with int8 dot
//! products (AVX512_VNNI) an int8 copy is packed for `vpdpbusd`
//! ([`crate::int8_dot`]): each input row is quantised to int8 too, and each
//! instruction does four times an f32 FMA's multiply-adds. Elsewhere image
//! batches are bound by f32 arithmetic and the copies save only memory.

use std::fmt;
use std::str::FromStr;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use crate::kernels::{pack_panels, rows_times_panels};
use crate::{bf16_dot, int8_dot};

/// How the text tower stores the weights it streams for a query.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Precision {
    /// The checkpoint's f32 weights: the reference path.
    Fp32,
    /// bf16 weights (round to nearest even), f32 arithmetic.
    Bf16,
    /// int8 weights with an f32 scale per output row (absmax / 127): f32
    /// arithmetic, or on CPUs with AVX512_VNNI int8 dot products with each
    /// input row quantised to int8 as well (exact integer sums).
    Int8,
    /// The fastest of the above on this CPU that keeps embeddings within
    /// tolerance of fp32 (cosine ≥ 0.999): see [`Precision::resolve`].
    #[default]
    Auto,
}

impl Precision {
    /// The names accepted on the command line.
    pub const NAMES: [&'static str; 4] = ["fp32", "bf16", "int8", "auto"];

    /// What [`Precision::Auto`] stands for in the text tower: int8 where
    /// the CPU has the vector instructions that widen it in registers (AVX2
    /// and FMA), f32 elsewhere (the portable fallback would gain nothing).
    /// The image tower's `Auto` is decided by `Clip::set_image_precision`.
    pub fn resolve(self) -> Precision {
        match self {
            Precision::Auto if simd_available() => Precision::Int8,
            Precision::Auto => Precision::Fp32,
            p => p,
        }
    }

    /// The lower-case name (`fp32`, `bf16`, `int8`, `auto`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Auto => "auto",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" => Ok(Precision::Fp32),
            "bf16" => Ok(Precision::Bf16),
            "int8" | "i8" => Ok(Precision::Int8),
            "auto" => Ok(Precision::Auto),
            _ => Err(format!(
                "unknown precision {s:?}: use one of {}",
                Precision::NAMES.join(", ")
            )),
        }
    }
}

fn simd_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One linear layer's `[out, in]` weights in a reduced precision, for
/// products with few rows.
#[derive(Clone)]
pub struct QueryWeights {
    data: Data,
    bias: Option<Vec<f32>>,
    rows: usize,
    cols: usize,
}

#[derive(Clone)]
enum Data {
    /// Panels of 16 columns, widened to f32 in registers.
    Bf16(Vec<u16>),
    /// Panels of interleaved pairs for `vdpbf16ps` (see [`crate::bf16_dot`]).
    Bf16Pairs(Vec<u16>),
    Int8 {
        codes: Vec<i8>,
        scales: Vec<f32>,
    },
    /// Unsigned panels for `vpdpbusd`, the inputs quantised per row (see
    /// [`crate::int8_dot`]).
    Int8Dot {
        codes: Vec<u8>,
        scales: Vec<f32>,
    },
}

impl fmt::Debug for QueryWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.data {
            Data::Bf16(_) | Data::Bf16Pairs(_) => "bf16",
            Data::Int8 { .. } | Data::Int8Dot { .. } => "int8",
        };
        write!(f, "QueryWeights({kind}, [{}, {}])", self.rows, self.cols)
    }
}

impl QueryWeights {
    /// Converts an f32 `[out, in]` weight (and keeps the `[out]` bias, added
    /// in the same pass as the product); `None` for [`Precision::Fp32`] (and
    /// for `Auto` where it resolves to fp32).
    pub fn new(
        weight: &Tensor,
        bias: Option<&Tensor>,
        precision: Precision,
    ) -> Result<Option<Self>> {
        Self::with_layout(weight, bias, precision, true)
    }

    /// [`QueryWeights::new`], packing for the dot-product kernels (bf16
    /// and int8) only if `dot_products` and the CPU has them: the tests run
    /// both layouts on a CPU that has them.
    pub(crate) fn with_layout(
        weight: &Tensor,
        bias: Option<&Tensor>,
        precision: Precision,
        dot_products: bool,
    ) -> Result<Option<Self>> {
        let (rows, cols) = weight.dims2()?;
        let precision = precision.resolve();
        if precision == Precision::Fp32 {
            return Ok(None);
        }
        let values = weight
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let data = match precision {
            Precision::Bf16 if dot_products && bf16_dot::available() => {
                Data::Bf16Pairs(bf16_dot::pack(&values, rows, cols))
            }
            Precision::Bf16 => {
                let bits: Vec<u16> = values
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect();
                Data::Bf16(pack_panels(&bits, rows, cols))
            }
            _ => {
                let mut codes = Vec::with_capacity(values.len());
                let mut scales = Vec::with_capacity(rows);
                for row in values.chunks_exact(cols.max(1)) {
                    let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
                    let scale = if max > 0.0 && max.is_finite() {
                        max / 127.0
                    } else {
                        1.0
                    };
                    codes.extend(
                        row.iter()
                            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
                    );
                    scales.push(scale);
                }
                if dot_products && int8_dot::available() {
                    Data::Int8Dot {
                        codes: int8_dot::pack(&codes, rows, cols),
                        scales,
                    }
                } else {
                    Data::Int8 {
                        codes: pack_panels(&codes, rows, cols),
                        scales,
                    }
                }
            }
        };
        let bias = match bias {
            Some(b) => Some(
                b.to_dtype(candle_core::DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            ),
            None => None,
        };
        if bias.as_ref().is_some_and(|b| b.len() != rows) {
            candle_core::bail!("bias of {} for {rows} outputs", bias.map_or(0, |b| b.len()))
        }
        Ok(Some(Self {
            data,
            bias,
            rows,
            cols,
        }))
    }

    /// Whether products round their inputs too (bf16 or int8 dot products), so
    /// that an f32 difference far below tolerance upstream can move an
    /// input across a rounding boundary: such copies must see the same
    /// upstream arithmetic whatever the batch (see `FusedBlock`).
    pub(crate) fn rounds_inputs(&self) -> bool {
        matches!(self.data, Data::Bf16Pairs(_) | Data::Int8Dot { .. })
    }

    /// Whether products quantise each input row to int8 as a whole (int8
    /// dot products), so that one large input channel coarsens every other
    /// channel of its row (see `FusedBlock`'s smoothing).
    pub(crate) fn quantises_inputs(&self) -> bool {
        matches!(self.data, Data::Int8Dot { .. })
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::Bf16(v) | Data::Bf16Pairs(v) => v.len() * 2,
            Data::Int8 { codes, scales } => codes.len() + scales.len() * 4,
            Data::Int8Dot { codes, scales } => codes.len() + scales.len() * 4,
        }
    }

    /// `x · Wᵀ + b` for an f32 `x` `[m, in]` → `[m, out]`.
    pub fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!(
                "reduced-precision matmul: [{m}, {k}] · [{}, {}]ᵀ",
                self.rows,
                self.cols
            )
        }
        if !x.device().is_cpu() {
            // The copies are CPU kernels: through host memory.
            let xs = x.flatten_all()?.to_vec1::<f32>()?;
            return Tensor::from_vec(self.product(&xs, m), (m, self.rows), x.device());
        }
        // Read in place (a copy of the rows would be one more
        // single-threaded pass over a batch's activations).
        x.contiguous()?.apply_op1_no_bwd(&ProductOp(self))
    }

    /// `x · Wᵀ + b` on plain rows: `x` holds `m` rows of `in` values.
    pub(crate) fn product(&self, x: &[f32], m: usize) -> Vec<f32> {
        let (k, bias) = (self.cols, self.bias.as_deref());
        match &self.data {
            Data::Bf16(w) => rows_times_panels(x, m, k, w, self.rows, None, bias),
            Data::Bf16Pairs(w) => bf16_dot::product(x, m, k, w, self.rows, bias),
            Data::Int8 { codes, scales } => {
                rows_times_panels(x, m, k, codes, self.rows, Some(scales), bias)
            }
            Data::Int8Dot { codes, scales } => {
                int8_dot::product(x, m, k, codes, self.rows, scales, bias)
            }
        }
    }
}

impl QueryWeights {
    /// Whether [`QueryWeights::product_in_team`] splits a product of `m`
    /// rows between the team (int8 dot products, up to
    /// [`int8_dot::TEAM_MAX_ROWS`] rows, whole panels); other copies run
    /// it on the calling thread alone.
    pub(crate) fn splits_in_team(&self, m: usize) -> bool {
        matches!(self.data, Data::Int8Dot { .. })
            && m <= int8_dot::TEAM_MAX_ROWS
            && self.rows.is_multiple_of(int8_dot::NR)
    }

    /// `x · Wᵀ + b` as steps of `team`, each row's share of the result
    /// handed to `write(row, first_column, values)` (see
    /// [`int8_dot::product_in_team`]); the values are
    /// [`QueryWeights::product`]'s, bit for bit.
    pub(crate) fn product_in_team(
        &self,
        team: &crate::team::Team,
        x: &[f32],
        m: usize,
        write: &(dyn Fn(usize, usize, &[f32]) + Sync),
    ) {
        if let Data::Int8Dot { codes, scales } = &self.data {
            let (k, n, bias) = (self.cols, self.rows, self.bias.as_deref());
            if int8_dot::product_in_team(team, x, m, k, codes, n, scales, bias, write).is_some() {
                return;
            }
        }
        let y = self.product(x, m);
        for (i, row) in y.chunks_exact(self.rows.max(1)).enumerate() {
            write(i, 0, row);
        }
    }

    /// Output width.
    pub(crate) fn outputs(&self) -> usize {
        self.rows
    }
}

/// [`QueryWeights::matmul_t`] on the tensor's own storage.
struct ProductOp<'a>(&'a QueryWeights);

impl CustomOp1 for ProductOp<'_> {
    fn name(&self) -> &'static str {
        "glimpse-reduced-precision-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = crate::kernels::f32_slice(storage, layout, "reduced-precision matmul")?;
        let (m, _) = layout.shape().dims2()?;
        let out = self.0.product(x, m);
        Ok((CpuStorage::F32(out), Shape::from((m, self.0.rows))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn reduced_precision_products_are_close_to_f32() {
        for (m, k, n) in [(1, 64, 33), (7, 512, 100), (16, 77, 65), (5, 40, 3)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            // Both layouts where the CPU has the dot products: the widening
            // kernel (f32 inputs; AVX2 machines) and the dot-product one
            // (inputs rounded to bf16, or quantised to int8 per row).
            let cases = [
                (Precision::Bf16, 0.01, false),
                (Precision::Bf16, 0.01, crate::bf16_dot::available()),
                (Precision::Int8, 0.02, false),
                (Precision::Int8, 0.03, crate::int8_dot::available()),
            ];
            for (p, tol, dot) in cases {
                let q = QueryWeights::with_layout(&w, None, p, dot)
                    .unwrap()
                    .unwrap();
                assert_eq!(q.rounds_inputs(), dot);
                let got = q.matmul_t(&x).unwrap();
                let d = crate::test_util::max_abs_diff(&got, &want) / scale;
                assert!(d < tol, "{p} (dot {dot}) {m}x{k}x{n}: relative error {d}");
                assert!(d > 0.0, "{p}: the product cannot be exact");
            }
        }
    }

    #[test]
    fn sizes_and_names() {
        let w = Tensor::zeros((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(QueryWeights::new(&w, None, Precision::Fp32)
            .unwrap()
            .is_none());
        // 4 rows padded to one panel of 16 columns × 8 inputs, 4 scales;
        // for the dot-product kernel, a panel of 32 columns.
        let dot = QueryWeights::new(&w, None, Precision::Int8)
            .unwrap()
            .unwrap();
        let dot_width = if crate::int8_dot::available() { 32 } else { 16 };
        assert_eq!(dot.bytes(), dot_width * 8 + 4 * 4);
        let q = QueryWeights::with_layout(&w, None, Precision::Int8, false)
            .unwrap()
            .unwrap();
        assert_eq!(q.bytes(), 16 * 8 + 4 * 4);
        // All-zero rows get scale 1 and code 0, not NaN.
        let x = Tensor::ones((2, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let y = q
            .matmul_t(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(y.iter().all(|v| *v == 0.0));
        for name in Precision::NAMES {
            assert_eq!(name.parse::<Precision>().unwrap().name(), name);
        }
        assert!("fp16"
            .parse::<Precision>()
            .unwrap_err()
            .contains("fp32, bf16, int8, auto"));
        // A product of the wrong width is an error naming both shapes.
        let ones = Tensor::ones((1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let bf16 = QueryWeights::new(&w, None, Precision::Bf16)
            .unwrap()
            .unwrap();
        let err = bf16.matmul_t(&ones).unwrap_err().to_string();
        assert!(err.contains("[1, 3]") && err.contains("[4, 8]"), "{err}");
    }
}

#[cfg(test)]
mod speed {
    use super::*;
    use candle_core::Device;

    /// `cargo test --release -p glimpse-clip query_weight_speed -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn query_weight_speed() {
        let x = Tensor::randn(0f32, 1.0, (8, 512), &Device::Cpu).unwrap();
        let ws: Vec<Tensor> = (0..40)
            .map(|_| Tensor::randn(0f32, 0.02, (2048, 512), &Device::Cpu).unwrap())
            .collect();
        for p in [Precision::Bf16, Precision::Int8] {
            let qs: Vec<QueryWeights> = ws
                .iter()
                .map(|w| QueryWeights::new(w, None, p).unwrap().unwrap())
                .collect();
            for _ in 0..3 {
                qs[0].matmul_t(&x).unwrap();
            }
            let n = 400;
            let t = std::time::Instant::now();
            for _ in 0..n {
                qs[0].matmul_t(&x).unwrap();
            }
            let dt = t.elapsed().as_secs_f64() / n as f64;
            let flop = 2.0 * 8.0 * 2048.0 * 512.0;
            println!(
                "{p} in cache: {:.3} ms, {:.1} GFLOP/s",
                dt * 1e3,
                flop / dt / 1e9
            );
            let t = std::time::Instant::now();
            for _ in 0..10 {
                for q in &qs {
                    q.matmul_t(&x).unwrap();
                }
            }
            let dt = t.elapsed().as_secs_f64() / 400.0;
            println!(
                "{p} from DRAM: {:.3} ms, {:.1} GFLOP/s, {:.1} GB/s",
                dt * 1e3,
                flop / dt / 1e9,
                qs[0].bytes() as f64 / dt / 1e9
            );
        }
    }
}
