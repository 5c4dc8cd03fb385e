//! The Glimpse web page, embedded into the binary so that it works offline
//! (no CDN, no build step): plain HTML, CSS and JavaScript under `assets/`.
//!
//! The main item is [`asset`]: a file of the page by its path, with its
//! MIME type. The server decides the routes; this crate knows nothing of
//! HTTP. `index.html` is the single page (search, lightbox, status view);
//! `app.js` talks to the JSON API documented in the server's OpenAPI file.
#![warn(missing_docs)]

use std::borrow::Cow;

#[derive(rust_embed::Embed)]
#[folder = "assets/"]
struct Assets;

/// One file of the page.
pub struct Asset {
    /// The bytes.
    pub bytes: Cow<'static, [u8]>,
    /// Its MIME type (`text/html; charset=utf-8`, …).
    pub mime: &'static str,
    /// A content hash (hex), for `ETag`s.
    pub hash: String,
}

/// The file at `path` (`"index.html"`, `"app.js"`), if the page has one.
pub fn asset(path: &str) -> Option<Asset> {
    let file = Assets::get(path)?;
    let hash: String = file
        .metadata
        .sha256_hash()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(Asset {
        bytes: file.data,
        mime: mime_of(path),
        hash,
    })
}

/// The paths of every file of the page.
pub fn paths() -> Vec<String> {
    Assets::iter().map(|p| p.into_owned()).collect()
}

fn mime_of(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("json") => "application/json",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_scripts_are_embedded_with_their_types() {
        let index = asset("index.html").expect("index.html embedded");
        assert_eq!(index.mime, "text/html; charset=utf-8");
        let html = String::from_utf8_lossy(&index.bytes);
        // Everything the page loads is embedded: no CDN.
        for needed in ["app.js", "style.css"] {
            assert!(html.contains(needed), "index.html loads {needed}");
            assert!(asset(needed).is_some(), "{needed} embedded");
        }
        assert!(!html.contains("http://") && !html.contains("https://"));
        assert_eq!(
            asset("app.js").unwrap().mime,
            "text/javascript; charset=utf-8"
        );
        assert!(asset("../Cargo.toml").is_none());
        assert!(paths().contains(&"index.html".to_string()));
        assert_eq!(index.hash.len(), 24);
    }
}
