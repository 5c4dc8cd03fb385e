//! `glimpse serve` as a process: refusals at start, and `--watch` indexing
//! photos into the served library while it answers queries, then a graceful
//! stop on SIGINT that leaves a library the next run opens.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{assert_fails, fixtures, glimpse, run, tiny_model};

fn get(url: &str) -> Value {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .into_json()
        .unwrap()
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start(args: &[&str], library: &Path) -> (Child, String) {
    let mut child = glimpse()
        .arg("serve")
        .args(args)
        .arg("--library")
        .arg(library)
        .arg("--model")
        .arg(tiny_model())
        .args(["--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .to_string();
    (child, base)
}

#[test]
fn serve_refuses_an_open_bind_without_a_token_and_a_missing_library() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(glimpse()
        .args(["serve", "--bind", "0.0.0.0:7860", "--library"])
        .arg(dir.path()));
    assert_fails(&out, 2, &["--token", "0.0.0.0:7860"]);
    let out = run(glimpse()
        .args(["serve", "--bind", "nonsense", "--library"])
        .arg(dir.path()));
    assert_fails(&out, 2, &["HOST:PORT"]);
    let out = run(glimpse()
        .args(["serve", "--bind", "127.0.0.1:0", "--library"])
        .arg(dir.path().join("none")));
    assert_fails(&out, 5, &["no library", "glimpse index"]);
}

#[test]
fn serve_watch_indexes_while_serving_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let library = dir.path().join("library");
    let (mut child, base) = start(&["--watch", photos.to_str().unwrap()], &library);

    // The first (empty) run finishes; the server answers meanwhile.
    wait_until("the first indexing run", || {
        get(&format!("{base}/api/status"))["indexing"]["runs"].as_u64() >= Some(1)
    });
    let status = get(&format!("{base}/api/status"));
    assert_eq!(status["indexing"]["watching"], true);
    assert_eq!(status["stats"]["photos"], 0);

    // A photo dropped into the folder becomes searchable.
    std::fs::copy(
        fixtures().join("photos/skimage-rocket.jpg"),
        photos.join("rocket.jpg"),
    )
    .unwrap();
    wait_until("the new photo", || {
        get(&format!("{base}/api/status"))["stats"]["photos"] == 1
    });
    let found = get(&format!("{base}/api/search?q=a%20rocket"));
    assert_eq!(found["results"][0]["file_name"], "rocket.jpg", "{found}");

    // SIGINT: a graceful stop, exit 0, and a library the next run opens.
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "{status:?}");
    let (mut again, base) = start(&[], &library);
    let status = get(&format!("{base}/api/status"));
    let _ = again.kill();
    let _ = again.wait();
    assert_eq!(status["stats"]["photos"], 1);
}
