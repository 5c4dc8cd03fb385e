//! A tiny Hugging Face hub on loopback: serves files under
//! `/{repo}/resolve/{revision}/{file}` with the headers `hf-hub` reads
//! (`etag`, `x-repo-commit`, `content-range`), so the real download code is
//! tested without the internet.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// `(repo, revision) -> file name -> file on disk`.
pub type Repos = HashMap<(String, String), HashMap<String, PathBuf>>;

/// A running fake hub; stops when dropped.
pub struct FakeHub {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// Every request path, in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    server: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl FakeHub {
    /// Starts serving `repos` on a free loopback port.
    pub fn start(repos: Repos) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind loopback"));
        let url = format!(
            "http://{}",
            server.server_addr().to_ip().expect("an IP address")
        );
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (srv, log) = (server.clone(), requests.clone());
        let thread = std::thread::spawn(move || {
            for req in srv.incoming_requests() {
                log.lock().unwrap().push(req.url().to_string());
                let resp = respond(&repos, &req);
                let _ = req.respond(resp);
            }
        });
        Self {
            url,
            requests,
            server,
            thread: Some(thread),
        }
    }

    /// Requests whose path contains `part`.
    pub fn requested(&self, part: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.contains(part))
            .count()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn respond(
    repos: &Repos,
    req: &tiny_http::Request,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let not_found =
        || tiny_http::Response::from_data(b"Entry not found".to_vec()).with_status_code(404);
    let path = req.url().trim_start_matches('/');
    let Some((repo, rest)) = path.split_once("/resolve/") else {
        return not_found();
    };
    let Some((revision, file)) = rest.split_once('/') else {
        return not_found();
    };
    let revision = revision.replace("%2F", "/");
    let Some(bytes) = repos
        .get(&(repo.to_string(), revision))
        .and_then(|files| files.get(file))
        .and_then(|p| std::fs::read(p).ok())
    else {
        return not_found();
    };
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    let etag = format!("\"{:016x}\"", h.finish());
    let size = bytes.len();
    let range = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| h.value.as_str().to_string());
    let (start, end) = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(r) => {
            let (a, b) = r.split_once('-').unwrap_or((r, ""));
            let a: usize = a.parse().unwrap_or(0);
            let b: usize = b.parse().unwrap_or(size.saturating_sub(1));
            (a.min(size), b.min(size.saturating_sub(1)))
        }
        None => (0, size.saturating_sub(1)),
    };
    let body = bytes[start..=end.max(start).min(size.saturating_sub(1))].to_vec();
    let header =
        |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap();
    tiny_http::Response::from_data(body)
        .with_status_code(if range.is_some() { 206 } else { 200 })
        .with_header(header("etag", &etag))
        .with_header(header(
            "x-repo-commit",
            "0123456789abcdef0123456789abcdef01234567",
        ))
        .with_header(header(
            "content-range",
            &format!("bytes {start}-{end}/{size}"),
        ))
}
