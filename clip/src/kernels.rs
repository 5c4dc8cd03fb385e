//! CPU kernels for inference, where candle's generic ops are slow: fused
//! MLP activations (one vectorised, multi-threaded pass instead of three
//! single-threaded ones) and a matrix product for few rows (a text query),
//! which streams each weight row once instead of packing the whole matrix.
//!
//! These have no backward pass; the layers call them only when no gradient
//! is needed (`!Tensor::track_op()`), and the fixture tests check them
//! against the reference like every other path.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::config::Activation;

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

struct ActOp(Activation);

impl CustomOp1 for ActOp {
    fn name(&self) -> &'static str {
        "glimpse-fused-activation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = storage else {
            candle_core::bail!("fused activation takes f32")
        };
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("fused activation takes a contiguous tensor")
        };
        let src = &data[a..b];
        let mut dst = vec![0f32; src.len()];
        let act = self.0;
        dst.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(d, s)| activate(act, s, d));
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

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
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("small matmul takes f32")
        };
        let (m, k) = l1.shape().dims2()?;
        let (n, k2) = l2.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("small matmul: [{m}, {k}] · [{n}, {k2}]ᵀ")
        }
        let (Some((xa, xb)), Some((wa, wb))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("small matmul takes contiguous tensors")
        };
        let (x, w) = (&x[xa..xb], &w[wa..wb]);
        // Output is [m, n]; compute it transposed ([n, m]) so that each task
        // owns a contiguous block of weight rows, then transpose back.
        let mut out_t = vec![0f32; n * m];
        const ROWS: usize = 32;
        out_t
            .par_chunks_mut(ROWS * m)
            .enumerate()
            .for_each(|(block, out)| {
                let first = block * ROWS;
                for (r, o) in out.chunks_mut(m).enumerate() {
                    let wr = &w[(first + r) * k..(first + r + 1) * k];
                    for (i, oi) in o.iter_mut().enumerate() {
                        *oi = dot(&x[i * k..(i + 1) * k], wr);
                    }
                }
            });
        let mut out = vec![0f32; m * n];
        for j in 0..n {
            for i in 0..m {
                out[i * n + j] = out_t[j * m + i];
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

// ---- element kernels, compiled twice: AVX2+FMA (picked at run time) and baseline.

fn activate(act: Activation, s: &[f32], d: &mut [f32]) {
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

fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { dot_avx2(a, b) };
    }
    dot_generic(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_generic(a, b)
}

/// Dot product with 32 independent partial sums, so the compiler vectorises
/// it (float addition is not reassociated otherwise).
#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 32;
    let mut acc = [0f32; L];
    let (ac, bc) = (a.chunks_exact(L), b.chunks_exact(L));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..L {
            acc[l] = x[l].mul_add(y[l], acc[l]);
        }
    }
    let mut tail = 0f32;
    for (x, y) in ar.iter().zip(br) {
        tail = x.mul_add(*y, tail);
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` to about 2 ulp, branch-free so that loops over it vectorise:
/// `x = n ln 2 + r` (Cody–Waite, two-part ln 2), `e^x = 2^n e^r` with a
/// degree-7 polynomial for `e^r` on [-0.35, 0.35].
#[inline(always)]
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(2.121_944_4e-4, n.mul_add(-0.693_359_4, x));
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7).
#[inline(always)]
fn erf(x: f32) -> f32 {
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
            let d = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 2e-6, "{act:?}: {d}");
        }
    }

    #[test]
    fn small_matmul_matches_candle() {
        for (m, k, n) in [(1, 64, 33), (7, 512, 100), (16, 77, 65)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap();
            let got = small_matmul_t(&x, &w).unwrap();
            let want = x.matmul(&w.t().unwrap()).unwrap();
            let d = (got - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(d < 1e-4, "{m}x{k}x{n}: {d}");
        }
    }
}
