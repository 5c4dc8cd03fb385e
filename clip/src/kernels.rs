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
        // Each task owns a block of weight rows (streamed from memory once)
        // and computes their outputs for all m input rows; the result is
        // assembled transposed ([n, m]) and turned back at the end.
        let mut out_t = vec![0f32; n * m];
        // One contiguous share of the weights per thread: each streams its
        // share from memory in order, which the prefetchers follow best.
        let rows_per_task = 32;
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

/// `out[j * m + i] = x_i · w_j` for the `m` rows of `x` and every row of `w`
/// (both row-major with `k` columns).
fn rows_times_weights(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for;
        // slice bounds are checked inside.
        unsafe { avx2::rows_times_weights(x, m, k, w, out) };
        return;
    }
    for (j, wr) in w.chunks_exact(k).enumerate() {
        for i in 0..m {
            out[j * m + i] = dot(&x[i * k..(i + 1) * k], wr);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Register-blocked: 4 input rows × 2 weight rows per pass over `k`
    /// (6 loads per 8 fused multiply-adds), smaller blocks at the edges.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rows_times_weights(x: &[f32], m: usize, k: usize, w: &[f32], out: &mut [f32]) {
        let n = w.len() / k;
        assert!(x.len() >= m * k && out.len() >= n * m);
        let mut j = 0;
        while j < n {
            let c = if j + 2 <= n { 2 } else { 1 };
            let mut i = 0;
            while i < m {
                let r = if i + 4 <= m { 4 } else { 1 };
                match (r, c) {
                    (4, 2) => block::<4, 2>(x, k, w, out, m, i, j),
                    (4, _) => block::<4, 1>(x, k, w, out, m, i, j),
                    (_, 2) => block::<1, 2>(x, k, w, out, m, i, j),
                    _ => block::<1, 1>(x, k, w, out, m, i, j),
                }
                i += r;
            }
            j += c;
        }
    }

    #[inline(always)]
    unsafe fn block<const R: usize, const C: usize>(
        x: &[f32],
        k: usize,
        w: &[f32],
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
                *v = _mm256_loadu_ps(wp.add((j0 + c) * k + p));
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
                let mut lanes = [0f32; 8];
                _mm256_storeu_ps(lanes.as_mut_ptr(), *a);
                let mut sum: f32 = lanes.iter().sum();
                for q in p..k {
                    sum = (*xp.add((i0 + r) * k + q)).mul_add(*wp.add((j0 + c) * k + q), sum);
                }
                out[(j0 + c) * m + i0 + r] = sum;
            }
        }
    }
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
            let d = crate::test_util::max_abs_diff(&got, &want);
            assert!(d < 2e-6, "{act:?}: {d}");
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
