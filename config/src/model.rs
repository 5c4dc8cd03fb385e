//! Which model to load.

/// The model used when none is named: OpenAI's ViT-B/32 on the Hugging Face hub.
pub const DEFAULT_MODEL: &str = "openai/clip-vit-base-patch32";
/// The hub revision used for [`DEFAULT_MODEL`] when none is named. The
/// repository's `main` has only `pytorch_model.bin`; the safetensors weights
/// live in the pull-request ref `refs/pr/15` (the ref candle's CLIP example uses).
pub const DEFAULT_REVISION: &str = "refs/pr/15";
/// Environment variable naming the model (a directory or a hub id).
pub const ENV_MODEL: &str = "GLIMPSE_MODEL";

/// A model named by the user: a local directory or a hub repository id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    /// A directory path or `org/name` on the Hugging Face hub.
    pub name: String,
    /// A hub revision (branch, tag, commit or `refs/pr/N`); `None` means the
    /// default: [`DEFAULT_REVISION`] for [`DEFAULT_MODEL`], `main` otherwise.
    pub revision: Option<String>,
}

impl ModelSpec {
    /// The default model at its default revision.
    pub fn default_model() -> Self {
        Self {
            name: DEFAULT_MODEL.to_string(),
            revision: None,
        }
    }

    /// The revision to fetch from the hub.
    pub fn hub_revision(&self) -> &str {
        match (&self.revision, self.name.as_str()) {
            (Some(r), _) => r,
            (None, DEFAULT_MODEL) => DEFAULT_REVISION,
            (None, _) => "main",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_model_uses_the_safetensors_ref() {
        assert_eq!(ModelSpec::default_model().hub_revision(), "refs/pr/15");
        let other = ModelSpec {
            name: "laion/foo".into(),
            revision: None,
        };
        assert_eq!(other.hub_revision(), "main");
        let pinned = ModelSpec {
            name: DEFAULT_MODEL.into(),
            revision: Some("main".into()),
        };
        assert_eq!(pinned.hub_revision(), "main");
    }
}
