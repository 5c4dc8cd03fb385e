//! The image preprocessing recipe a model expects.

use serde::{Deserialize, Serialize};

/// Per-channel mean of the OpenAI CLIP training images (RGB, in [0, 1]).
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// Per-channel standard deviation of the OpenAI CLIP training images.
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];
/// Pillow's decompression-bomb error threshold (`2 * Image.MAX_IMAGE_PIXELS`),
/// the default pixel limit: larger images are refused before decoding.
pub const PILLOW_MAX_PIXELS: u64 = 178_956_970;

/// What to do with the alpha channel of a transparent image.
///
/// The reference (`PIL.Image.convert("RGB")`) simply drops alpha, which shows
/// whatever colour hides under transparent pixels (often black). Glimpse
/// composites onto white by default, the same at train, eval and index time;
/// `Drop` reproduces the reference bit for bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlphaMode {
    /// Composite onto an opaque white background (Glimpse's default).
    #[default]
    White,
    /// Discard alpha and keep the stored RGB values (the reference recipe).
    Drop,
}

impl std::str::FromStr for AlphaMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "white" => Ok(Self::White),
            "drop" | "reference" => Ok(Self::Drop),
            other => Err(format!(
                "unknown alpha mode '{other}': use 'white' (composite onto white) or 'drop' (the reference)"
            )),
        }
    }
}

/// How an image becomes the model's input tensor: shortest side resized to
/// `image_size` (bicubic, Pillow-exact), centre crop, `/255`, `(x - mean) / std`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreprocessConfig {
    /// Side of the square input, in pixels (224 for ViT-B/32).
    pub image_size: usize,
    /// Per-channel mean subtracted after scaling to [0, 1].
    pub mean: [f32; 3],
    /// Per-channel standard deviation divided by after the mean.
    pub std: [f32; 3],
    /// Alpha handling for transparent images.
    pub alpha: AlphaMode,
    /// Images with more pixels than this are refused as decompression bombs.
    pub max_pixels: u64,
}

impl PreprocessConfig {
    /// The OpenAI recipe at the given input size.
    pub fn openai(image_size: usize) -> Self {
        Self {
            image_size,
            mean: OPENAI_MEAN,
            std: OPENAI_STD,
            alpha: AlphaMode::default(),
            max_pixels: PILLOW_MAX_PIXELS,
        }
    }

    /// A short stable string naming the recipe, stored in a library so that
    /// embeddings made with different preprocessing are never mixed.
    pub fn fingerprint(&self) -> String {
        format!(
            "s{}-m{:?}-d{:?}-a{:?}-bicubic-pil-centre",
            self.image_size, self.mean, self.std, self.alpha
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_mode_parses_and_rejects() {
        assert_eq!("white".parse::<AlphaMode>(), Ok(AlphaMode::White));
        assert_eq!("drop".parse::<AlphaMode>(), Ok(AlphaMode::Drop));
        assert!("pink".parse::<AlphaMode>().unwrap_err().contains("pink"));
    }

    #[test]
    fn fingerprint_changes_with_recipe() {
        let a = PreprocessConfig::openai(224);
        let mut b = a.clone();
        b.alpha = AlphaMode::Drop;
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), PreprocessConfig::openai(336).fingerprint());
    }
}
