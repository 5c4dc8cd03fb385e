//! Hot pixel loops compiled twice, for the baseline target and for AVX2,
//! and the twin chosen at run time.
//!
//! What it is for: the baseline x86-64 target has only SSE2, whose lack of
//! byte shuffles makes loops that regroup channels (RGBA to RGB, alpha
//! composited) compile to long shuffle sequences; the same source compiled
//! with AVX2 runs about four times faster. The loops are written once, as
//! `#[inline(always)]` functions, and a twin with
//! `#[target_feature(enable = "avx2")]` wraps each.

/// `f_avx2(args)` (`f` compiled for AVX2) when the CPU has AVX2, else
/// `f(args)`. The twin exists only on x86-64; elsewhere `f` runs.
macro_rules! dispatch {
    ($f:ident, $f_avx2:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the feature the twin is compiled for.
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

pub(crate) use dispatch;
