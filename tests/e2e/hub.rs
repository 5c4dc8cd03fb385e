//! `--model org/name`: the real hub download code against a fake hub on
//! loopback, the cache, offline mode, and the errors a user can meet.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::fake_hub::{FakeHub, Repos};
use crate::{assert_fails, glimpse, json_lines, ok_stdout, run, tiny_model};

fn hf_files() -> HashMap<String, PathBuf> {
    [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|f| (f.to_string(), tiny_model().join(f)))
    .collect()
}

fn open_clip_files() -> HashMap<String, PathBuf> {
    ["open_clip_config.json", "open_clip_model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), tiny_model().join("open_clip").join(f)))
        .collect()
}

fn repos() -> Repos {
    let mut r = Repos::new();
    r.insert(("test-org/tiny-clip".into(), "main".into()), hf_files());
    r.insert(
        ("test-org/tiny-open-clip".into(), "main".into()),
        open_clip_files(),
    );
    r.insert(
        ("openai/clip-vit-base-patch32".into(), "refs/pr/15".into()),
        hf_files(),
    );
    let mut pickle = HashMap::new();
    pickle.insert("config.json".to_string(), tiny_model().join("config.json"));
    pickle.insert(
        "pytorch_model.bin".to_string(),
        tiny_model().join("config.json"),
    );
    r.insert(("test-org/pickle-only".into(), "main".into()), pickle);
    r
}

fn embed_text(
    model: &str,
    hub: Option<&str>,
    home: &std::path::Path,
    offline: bool,
) -> std::process::Output {
    let mut c = glimpse();
    c.args(["embed", "--model", model, "--text", "a photo of a cat"])
        .env("HF_HOME", home);
    if let Some(url) = hub {
        c.env("HF_ENDPOINT", url);
    }
    if offline {
        c.env("HF_HUB_OFFLINE", "1");
    }
    run(&mut c)
}

fn embedding(out: &std::process::Output) -> Vec<f64> {
    let lines = json_lines(&ok_stdout(out));
    lines[0]["embedding"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn downloads_into_the_cache_then_works_offline() {
    let home = tempfile::tempdir().unwrap();
    let local = embedding(&run(glimpse()
        .args(["embed", "--model"])
        .arg(tiny_model())
        .args(["--text", "a photo of a cat"])));
    let hub = FakeHub::start(repos());
    let got = embedding(&embed_text(
        "test-org/tiny-clip",
        Some(&hub.url),
        home.path(),
        false,
    ));
    assert_eq!(
        got, local,
        "the downloaded model gives the local model's embedding"
    );
    assert!(hub.requested("test-org/tiny-clip/resolve/main/model.safetensors") >= 1);
    assert!(home
        .path()
        .join("hub/models--test-org--tiny-clip/snapshots")
        .is_dir());
    drop(hub);

    // No server any more: offline mode reads the cache.
    let again = embedding(&embed_text("test-org/tiny-clip", None, home.path(), true));
    assert_eq!(again, local);
    // Offline, a model never downloaded is a clear error.
    let out = embed_text("test-org/never-seen", None, home.path(), true);
    assert_fails(
        &out,
        4,
        &["test-org/never-seen", "HF_HUB_OFFLINE", "--model DIR"],
    );
}

#[test]
fn open_clip_repositories_and_the_default_revision() {
    let home = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(repos());
    let a = embedding(&embed_text(
        "test-org/tiny-open-clip",
        Some(&hub.url),
        home.path(),
        false,
    ));
    let b = embedding(&embed_text(
        "openai/clip-vit-base-patch32",
        Some(&hub.url),
        home.path(),
        false,
    ));
    let close = a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(close, "both layouts give the same embedding");
    // The default model is fetched from the ref that holds its safetensors.
    assert!(
        hub.requested("openai/clip-vit-base-patch32/resolve/refs%2Fpr%2F15/model.safetensors") >= 1
    );
}

#[test]
fn hub_errors_say_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    let hub = FakeHub::start(repos());
    let out = embed_text("test-org/pickle-only", Some(&hub.url), home.path(), false);
    assert_fails(&out, 4, &["pytorch_model.bin", "safetensors"]);
    let out = embed_text("test-org/no-such-model", Some(&hub.url), home.path(), false);
    assert_fails(&out, 4, &["test-org/no-such-model", "neither config.json"]);
    drop(hub);
    // Nothing listens on port 9 of loopback: a network failure.
    let out = embed_text(
        "test-org/tiny-clip",
        Some("http://127.0.0.1:9"),
        home.path(),
        false,
    );
    assert_fails(
        &out,
        4,
        &["no connection", "HF_HUB_OFFLINE=1", "--model DIR"],
    );
}
