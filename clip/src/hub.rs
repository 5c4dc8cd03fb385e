//! Models by name: a local directory, or a Hugging Face hub repository
//! downloaded into the standard hub cache (`HF_HOME`, `HF_ENDPOINT` and
//! `HF_HUB_OFFLINE` are honoured, as by the Python tools).

use std::path::{Path, PathBuf};

use glimpse_config::ModelSpec;
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::ClipError;

/// Files fetched for an HF-layout repository: required first, then optional.
const HF_REQUIRED: [&str; 2] = ["config.json", "model.safetensors"];
const HF_OPTIONAL: [&str; 4] = [
    "preprocessor_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
];
const OPEN_CLIP_REQUIRED: [&str; 2] = ["open_clip_config.json", "open_clip_model.safetensors"];

/// Where and how models are fetched from the hub.
#[derive(Clone, Debug)]
pub struct HubOptions {
    /// The hub's address (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// The cache directory (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Use only the cache, never the network (`HF_HUB_OFFLINE=1`).
    pub offline: bool,
    /// Show download progress bars.
    pub progress: bool,
}

impl HubOptions {
    /// The options the environment asks for, as the Python tools read them.
    pub fn from_env() -> Self {
        Self {
            endpoint: std::env::var("HF_ENDPOINT")
                .unwrap_or_else(|_| "https://huggingface.co".into()),
            cache_dir: Cache::from_env().path().clone(),
            offline: std::env::var("HF_HUB_OFFLINE")
                .is_ok_and(|v| !v.is_empty() && v != "0" && v.to_lowercase() != "false"),
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }
}

/// Turns a [`ModelSpec`] into a local directory: an existing directory is
/// used as is; `org/name` is fetched from the hub (or found in its cache),
/// with [`HubOptions::from_env`].
pub fn resolve_model(spec: &ModelSpec) -> Result<PathBuf, ClipError> {
    resolve_model_with(spec, &HubOptions::from_env())
}

/// [`resolve_model`] with explicit hub options.
pub fn resolve_model_with(spec: &ModelSpec, opts: &HubOptions) -> Result<PathBuf, ClipError> {
    let path = Path::new(&spec.name);
    if path.exists() || !looks_like_repo_id(&spec.name) {
        return Ok(path.to_path_buf());
    }
    let endpoint = opts.endpoint.clone();
    let revision = spec.hub_revision().to_string();
    let fail = |reason: String| ClipError::Download {
        repo: spec.name.clone(),
        revision: revision.clone(),
        endpoint: endpoint.clone(),
        reason,
    };
    let repo = Repo::with_revision(spec.name.clone(), RepoType::Model, revision.clone());
    if opts.offline {
        let cache = Cache::new(opts.cache_dir.clone()).repo(repo);
        for required in [&HF_REQUIRED, &OPEN_CLIP_REQUIRED] {
            let found: Option<Vec<PathBuf>> = required.iter().map(|f| cache.get(f)).collect();
            if let Some(files) = found {
                return Ok(parent_of(&files[0]));
            }
        }
        return Err(fail(format!(
            "HF_HUB_OFFLINE is set and the model is not in the cache ({}); run once with network access, or pass --model DIR",
            opts.cache_dir.display()
        )));
    }
    let api = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_endpoint(opts.endpoint.clone())
        .with_progress(opts.progress)
        .with_retries(2)
        .build()
        .map_err(|e| fail(explain(&e)))?;
    let api = api.repo(repo);
    let dir = match api.get(HF_REQUIRED[0]) {
        Ok(config) => {
            match api.get(HF_REQUIRED[1]) {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {
                    return Err(match api.get("pytorch_model.bin") {
                        Ok(_) => ClipError::PickleOnly {
                            what: format!("{} (revision {revision})", spec.name),
                        },
                        Err(_) => {
                            fail("the repository has config.json but no model.safetensors".into())
                        }
                    });
                }
                Err(e) => return Err(fail(explain(&e))),
            }
            for f in HF_OPTIONAL {
                match api.get(f) {
                    Ok(_) => {}
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => return Err(fail(explain(&e))),
                }
            }
            parent_of(&config)
        }
        Err(e) if is_not_found(&e) => {
            let config = api.get(OPEN_CLIP_REQUIRED[0]).map_err(|e| {
                fail(if is_not_found(&e) {
                    "the repository has neither config.json (Hugging Face layout) nor open_clip_config.json (OpenCLIP layout); check the name and --revision".into()
                } else {
                    explain(&e)
                })
            })?;
            api.get(OPEN_CLIP_REQUIRED[1]).map_err(|e| {
                fail(if is_not_found(&e) {
                    "the repository has open_clip_config.json but no open_clip_model.safetensors"
                        .into()
                } else {
                    explain(&e)
                })
            })?;
            parent_of(&config)
        }
        Err(e) => return Err(fail(explain(&e))),
    };
    Ok(dir)
}

/// `org/name` (one slash, no path-like prefix) names a hub repository.
fn looks_like_repo_id(name: &str) -> bool {
    let parts: Vec<&str> = name.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn parent_of(file: &Path) -> PathBuf {
    file.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn is_not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(r) if matches!(**r, ureq::Error::Status(404, _)))
}

/// A one-line reason with what to do about it.
fn explain(e: &ApiError) -> String {
    match e {
        ApiError::RequestError(r) => match &**r {
            ureq::Error::Status(401 | 403, _) => {
                "access denied: the repository is gated or private; set HF_TOKEN or log in with `huggingface-cli login`".into()
            }
            ureq::Error::Status(code, _) => format!("the hub answered HTTP {code}"),
            ureq::Error::Transport(t) => format!(
                "no connection ({t}); check the network or HF_ENDPOINT, use a model already in the cache with HF_HUB_OFFLINE=1, or download the files elsewhere and pass --model DIR"
            ),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_and_paths_are_told_apart() {
        assert!(looks_like_repo_id("openai/clip-vit-base-patch32"));
        assert!(looks_like_repo_id("laion/CLIP-ViT-B-32-laion2B-s34B-b79K"));
        assert!(!looks_like_repo_id("./models/clip"));
        assert!(!looks_like_repo_id("/abs/dir"));
        assert!(!looks_like_repo_id("a/b/c"));
        assert!(!looks_like_repo_id("../x"));
        assert!(!looks_like_repo_id("plain"));
    }
}
