//! The relevance cutoff: which results are *weak*.
//!
//! A cosine of 0.27 can be the best match in one library and noise in
//! another, and text→image and image→image cosines live on different
//! scales, so no fixed number works. Instead each query is judged against
//! its own score distribution over the library: the mean `μ` and standard
//! deviation `σ` of its cosine to a sample of up to [`PROFILE_SAMPLE`]
//! photos. A result is **weak** when its cosine is below `μ + WEAK_Z·σ`,
//! i.e. it does not stand out from what the query scores against an
//! arbitrary photo. With CLIP ViT-B/32 text queries (`μ ≈ 0.19`,
//! `σ ≈ 0.025`) the cut lands near 0.26, where matches stop looking like
//! the text. Results that matched the query's words by file name, folder or
//! camera are never weak. Libraries of fewer than [`MIN_SAMPLE`] photos are
//! too small to judge: nothing is weak there.

use glimpse_store::ScoreProfile;

/// Photos sampled to estimate a query's score distribution (a strided
/// sample: ~1 M multiply-adds for 512-d vectors, far below a search's cost).
pub const PROFILE_SAMPLE: usize = 4096;
/// How many standard deviations above the mean a result must be.
pub const WEAK_Z: f32 = 3.0;
/// Fewer sampled photos than this: no cutoff.
pub const MIN_SAMPLE: usize = 20;

/// The cosine below which a result is weak, if the sample is big enough.
pub fn threshold(profile: Option<ScoreProfile>) -> Option<f32> {
    let p = profile?;
    (p.sampled >= MIN_SAMPLE && p.std.is_finite() && p.mean.is_finite())
        .then_some(p.mean + WEAK_Z * p.std)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(mean: f32, std: f32, sampled: usize) -> Option<ScoreProfile> {
        Some(ScoreProfile { mean, std, sampled })
    }

    #[test]
    fn the_cut_follows_the_query_distribution_not_a_fixed_number() {
        let text = threshold(profile(0.19, 0.025, 4096)).unwrap();
        assert!((text - 0.265).abs() < 1e-6);
        // Image queries score higher against everything: the cut moves up.
        let image = threshold(profile(0.5, 0.08, 4096)).unwrap();
        assert!(image > 0.7 && image < 0.75);
        assert_eq!(threshold(profile(0.2, 0.02, 19)), None);
        assert_eq!(threshold(None), None);
        assert_eq!(threshold(profile(f32::NAN, 0.1, 100)), None);
    }
}
