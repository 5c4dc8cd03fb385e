//! The web UI in a real browser: Debian's Chromium driven over WebDriver
//! (chromedriver), against `glimpse serve` on a loopback port over a small
//! real library. Types a query, waits for thumbnails, opens the lightbox,
//! clicks "more like this", uploads a photo, switches theme and screen size,
//! and saves screenshots (desktop and phone, light and dark) under
//! `target/ci-artifacts/screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`.ci/run` installs
//! them). Without them the test says so and passes, unless
//! `GLIMPSE_REQUIRE_BROWSER=1` (set by CI), where it fails.
//!
//! The WebDriver client is the dozen W3C commands the test needs, over the
//! `ureq` client the hub code already uses: the async WebDriver crates
//! (thirtyfour, fantoccini) would add a second HTTP stack to the build.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::{fixtures, glimpse, ok_stdout, run, tiny_model};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Kills a child process when dropped (a failing test leaves nothing behind).
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A WebDriver session.
struct Browser {
    base: String,
    agent: ureq::Agent,
}

impl Browser {
    fn start(driver_port: u16, profile: &Path) -> Self {
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(60))
            .build();
        let root = format!("http://127.0.0.1:{driver_port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent.get(&format!("{root}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--no-first-run",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let session: Value = agent
            .post(&format!("{root}/session"))
            .send_json(json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
            }}}))
            .unwrap_or_else(|e| panic!("new WebDriver session: {}", describe(e)))
            .into_json()
            .unwrap();
        let id = session["value"]["sessionId"].as_str().unwrap().to_string();
        Self {
            base: format!("{root}/session/{id}"),
            agent,
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let response = match method {
            "GET" => self.agent.get(&url).call(),
            "DELETE" => self.agent.delete(&url).call(),
            _ => self.agent.post(&url).send_json(body),
        };
        let response = response.unwrap_or_else(|e| panic!("{method} {path}: {}", describe(e)));
        let value: Value = response.into_json().unwrap();
        value["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let found = self.cmd(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        found[ELEMENT].as_str().unwrap().to_string()
    }

    fn click(&self, css: &str) {
        let id = self.find(css);
        self.cmd("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    fn script(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// Waits until `condition` (a JavaScript expression) is truthy.
    fn wait_for(&self, what: &str, condition: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let value = self.script(&format!("return {condition};"));
            if !(value.is_null() || value == json!(false) || value == json!(0)) {
                return value;
            }
            if Instant::now() > deadline {
                let page = self.script("return document.body.innerText.slice(0, 2000);");
                panic!("timed out waiting for {what} ({condition}); the page says: {page}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        );
    }

    fn screenshot(&self, dir: &Path, name: &str) {
        // Let images finish fading in.
        std::thread::sleep(Duration::from_millis(400));
        let data = self.cmd("GET", "/screenshot", Value::Null);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.agent.delete(&self.base).call();
    }
}

fn describe(e: ureq::Error) -> String {
    match e {
        ureq::Error::Status(code, r) => format!("{code}: {}", r.into_string().unwrap_or_default()),
        other => other.to_string(),
    }
}

/// The number of thumbnails shown and loaded.
const LOADED_TILES: &str = "document.querySelectorAll('#grid .tile img.loaded').length";

#[test]
fn the_web_ui_searches_browses_and_uploads_in_chromium() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var("GLIMPSE_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "GLIMPSE_REQUIRE_BROWSER=1 but {CHROMIUM} / {CHROMEDRIVER} are missing: \
             apt-get install chromium chromium-driver"
        );
        eprintln!(
            "SKIPPED: no {CHROMIUM} / {CHROMEDRIVER} (apt-get install chromium chromium-driver)"
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let photos = work.path().join("photos");
    std::fs::create_dir_all(photos.join("holiday")).unwrap();
    let mut sources: Vec<PathBuf> = Vec::new();
    for folder in [fixtures().join("photos"), tiny_model().join("images")] {
        for entry in std::fs::read_dir(folder).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() && p.extension().is_some_and(|e| e != "md") {
                sources.push(p);
            }
        }
    }
    sources.sort();
    for (i, src) in sources.iter().enumerate() {
        let to = if i % 2 == 0 {
            photos.join("holiday")
        } else {
            photos.clone()
        };
        std::fs::copy(src, to.join(src.file_name().unwrap())).unwrap();
    }
    let library = work.path().join("library");
    ok_stdout(&run(glimpse()
        .args(["index", "--json", "--library"])
        .arg(&library)
        .arg("--model")
        .arg(tiny_model())
        .arg(&photos)));

    // The server, on a free port it reports.
    let mut server = glimpse()
        .args(["serve", "--bind", "127.0.0.1:0", "--library"])
        .arg(&library)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Guard(server);
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("serve printed {line:?}"))
        .to_string();

    let driver_port = free_port();
    let _driver = Guard(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-artifacts/screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let profile = work.path().join("chromium-profile");
    let browser = Browser::start(driver_port, &profile);

    // Search as you type: thumbnails appear.
    browser.goto(&base);
    browser.wait_for(
        "the search box",
        "document.activeElement && document.activeElement.id === 'q'",
    );
    browser.type_into("#q", "a red rocket on the launch pad");
    browser.wait_for("thumbnails", &format!("{LOADED_TILES} >= 4"));
    let count = browser.wait_for(
        "the result count",
        "document.getElementById('count').textContent",
    );
    assert!(count.as_str().unwrap().contains("photo"), "{count}");
    assert_eq!(
        browser.script("return new URLSearchParams(location.search).get('q');"),
        "a red rocket on the launch pad"
    );
    browser.script("document.documentElement.dataset.theme = 'light';");
    browser.screenshot(&shots, "desktop-light");

    // The lightbox: the full image and its metadata.
    let first_id = browser.script("return document.querySelector('#grid .tile').dataset.id;");
    browser.click("#grid .tile");
    browser.wait_for(
        "the full image",
        "!document.getElementById('lightbox').hidden && document.getElementById('lb-img').complete && document.getElementById('lb-img').naturalWidth > 0",
    );
    let meta = browser.wait_for("metadata", "document.getElementById('lb-meta').textContent");
    assert!(meta.as_str().unwrap().contains("Taken"), "{meta}");
    browser.screenshot(&shots, "desktop-lightbox");

    // More like this: a new result set without the photo itself.
    browser.click("#more-like-this");
    browser.wait_for(
        "the lightbox to close",
        "document.getElementById('lightbox').hidden",
    );
    browser.wait_for(
        "the similar-photos chip",
        "document.getElementById('chips').textContent.includes('Like')",
    );
    browser.wait_for("similar thumbnails", &format!("{LOADED_TILES} >= 3"));
    let shown: Value = browser.script(
        "return Array.from(document.querySelectorAll('#grid .tile')).map(t => t.dataset.id);",
    );
    assert!(
        !shown.as_array().unwrap().contains(&first_id),
        "{first_id} in {shown}"
    );

    // Search by an uploaded photo: the photo itself comes first.
    let rocket = photos.join("skimage-rocket.jpg");
    let rocket = if rocket.exists() {
        rocket
    } else {
        photos.join("holiday/skimage-rocket.jpg")
    };
    let input = browser.find("#upload-input");
    browser.cmd(
        "POST",
        &format!("/element/{input}/value"),
        json!({ "text": rocket.display().to_string() }),
    );
    browser.wait_for(
        "the uploaded photo to come first",
        "(document.querySelector('#grid .tile') || {title: ''}).title.startsWith('skimage-rocket.jpg') && document.getElementById('chips').textContent.includes('Like skimage-rocket.jpg')",
    );

    // Dark theme, then a phone-sized window, both themes.
    browser.type_into("#q", "a red rocket on the launch pad");
    browser.wait_for("thumbnails", &format!("{LOADED_TILES} >= 4"));
    browser.click("#theme-toggle");
    browser.wait_for(
        "the dark theme",
        "getComputedStyle(document.body).backgroundColor === 'rgb(18, 18, 18)'",
    );
    browser.screenshot(&shots, "desktop-dark");
    browser.window(390, 844);
    browser.wait_for(
        "the phone layout",
        "document.querySelector('#grid .tile').getBoundingClientRect().height <= 160",
    );
    let overflow =
        browser.script("return document.documentElement.scrollWidth - window.innerWidth;");
    assert!(
        overflow.as_i64().unwrap() <= 0,
        "the page scrolls sideways on a phone: {overflow}"
    );
    browser.screenshot(&shots, "phone-dark");
    browser.click("#theme-toggle");
    browser.wait_for(
        "the light theme",
        "getComputedStyle(document.body).backgroundColor === 'rgb(247, 246, 243)'",
    );
    browser.screenshot(&shots, "phone-light");

    // The status page.
    browser.window(1280, 900);
    browser.goto(&format!("{base}/status"));
    browser.wait_for(
        "library counts",
        "document.getElementById('status-list').textContent.includes('searchable')",
    );
    browser.screenshot(&shots, "desktop-status");
    eprintln!("screenshots in {}", shots.display());
}
