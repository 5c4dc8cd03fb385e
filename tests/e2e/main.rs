//! End-to-end tests of the real `glimpse` binary on real files.
//!
//! One integration binary (link time matters on 2 cores), one module per
//! area. Fixtures live in `tests/fixtures/` (see its PROVENANCE.md).

mod browser;
mod fake_hub;
mod hub;
mod library;
mod model_cli;
mod serve;
mod train;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's `tests/fixtures` directory.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The random-weight CLIP fixture in HF layout.
pub fn tiny_model() -> PathBuf {
    fixtures().join("clip-tiny-hf")
}

/// A `glimpse` command with a clean environment for model lookup.
pub fn glimpse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_glimpse"));
    for var in [
        "GLIMPSE_MODEL",
        "HF_ENDPOINT",
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "RUST_BACKTRACE",
    ] {
        c.env_remove(var);
    }
    c
}

/// Runs a command, returning its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the glimpse binary runs")
}

/// Standard output as text, asserting success.
pub fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "glimpse failed ({:?}): {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

/// Asserts a failure with `code` and a one-line error containing every `needle`.
pub fn assert_fails(out: &Output, code: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is one line: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error lacks {n:?}: {err}");
    }
    err
}

/// Parses JSON lines.
pub fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}
