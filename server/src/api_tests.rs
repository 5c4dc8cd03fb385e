//! The API in-process (actix's test service) over a real library: the fixture
//! photos indexed with the tiny random-weight CLIP fixture. Every endpoint,
//! with its error cases.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use actix_web::http::{header, StatusCode};
use actix_web::test::{self, TestRequest};
use glimpse_clip::Clip;
use glimpse_indexer::{index_library, model_identity, IndexOptions, WalkOptions};
use glimpse_store::Library;
use serde_json::Value;

use crate::{create_app, AppState, ServeOptions};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tiny_model() -> PathBuf {
    repo().join("tests/fixtures/clip-tiny-hf")
}

/// A photo folder (real photos, a sub-folder, test images) and its library.
struct Fixture {
    _dir: tempfile::TempDir,
    photos: PathBuf,
    library: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir_all(photos.join("trip")).unwrap();
    let mut sources: Vec<PathBuf> = Vec::new();
    for folder in [
        repo().join("tests/fixtures/photos"),
        tiny_model().join("images"),
    ] {
        for entry in std::fs::read_dir(folder).unwrap() {
            let p = entry.unwrap().path();
            if p.is_file() && p.extension().is_some_and(|e| e != "md") {
                sources.push(p);
            }
        }
    }
    sources.sort();
    for (i, src) in sources.iter().enumerate() {
        let dest = if i % 3 == 0 {
            photos.join("trip")
        } else {
            photos.clone()
        };
        std::fs::copy(src, dest.join(src.file_name().unwrap())).unwrap();
    }
    let library = dir.path().join("library");
    let clip = Clip::load_dir(&tiny_model(), &candle_core::Device::Cpu).unwrap();
    let lib = Library::open_or_create(&library, &model_identity(&clip), false).unwrap();
    let lib = Mutex::new(lib);
    let options = IndexOptions {
        walk: WalkOptions {
            roots: vec![photos.clone()],
            ..WalkOptions::default()
        },
        ..IndexOptions::default()
    };
    let summary = index_library(&lib, &clip, &options, &|_| {}, &AtomicBool::new(false)).unwrap();
    assert!(summary.indexed >= 8, "{summary:?}");
    Fixture {
        _dir: dir,
        photos: std::fs::canonicalize(&photos).unwrap(),
        library,
    }
}

/// The server's state as `glimpse serve` makes it (queries at `auto`
/// precision).
fn state(fx: &Fixture, options: ServeOptions) -> AppState {
    let mut clip = Clip::load_dir(&tiny_model(), &candle_core::Device::Cpu).unwrap();
    clip.set_query_precision(glimpse_clip::Precision::Auto)
        .unwrap();
    clip.set_image_precision(glimpse_clip::Precision::Auto)
        .unwrap();
    let clip = Arc::new(clip);
    let library = Library::open(&fx.library).unwrap();
    AppState::new(library, clip, options).unwrap()
}

macro_rules! app {
    ($state:expr) => {
        test::init_service(create_app($state)).await
    };
}

async fn get_json(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
    >,
    uri: &str,
) -> (StatusCode, Value) {
    let response = test::call_service(app, TestRequest::get().uri(uri).to_request()).await;
    let status = response.status();
    let body = test::read_body(response).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{uri}: not JSON: {}", String::from_utf8_lossy(&body)));
    (status, json)
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        !message.is_empty() && !message.contains("panicked"),
        "{message}"
    );
}

fn ids(body: &Value) -> Vec<u64> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect()
}

#[actix_web::test]
async fn text_search_pages_filters_and_sorts() {
    let fx = fixture();
    let app = app!(state(&fx, ServeOptions::default()));
    let (status, all) = get_json(&app, "/api/search?q=a%20red%20rocket&k=100").await;
    assert_eq!(status, StatusCode::OK, "{all}");
    let all_ids = ids(&all);
    let total = all_ids.len();
    assert!(total >= 8);
    assert!(all["took_ms"].as_f64().unwrap() >= 0.0);
    let model = PathBuf::from(all["model"].as_str().unwrap());
    assert_eq!(
        model.canonicalize().unwrap(),
        tiny_model().canonicalize().unwrap()
    );
    assert_eq!(all["next_offset"], Value::Null);
    let first = &all["results"][0];
    for field in [
        "id",
        "path",
        "score",
        "width",
        "height",
        "taken_at",
        "camera",
        "thumbnail",
        "original",
        "weak",
    ] {
        assert!(first.get(field).is_some(), "result lacks {field}: {first}");
    }
    let scores: Vec<f64> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");

    // Pages continue each other.
    let (_, page1) = get_json(&app, "/api/search?q=a%20red%20rocket&k=3").await;
    assert_eq!(page1["next_offset"], 3);
    let (_, page2) = get_json(&app, "/api/search?q=a+red+rocket&k=3&offset=3").await;
    assert_eq!([ids(&page1), ids(&page2)].concat(), all_ids[..6].to_vec());

    // Folder filter: only photos under it.
    let trip = fx.photos.join("trip");
    let uri = format!(
        "/api/search?q=rocket&k=100&folder={}",
        urlencode(&trip.display().to_string())
    );
    let (_, in_trip) = get_json(&app, &uri).await;
    let paths: Vec<&str> = in_trip["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert!(!paths.is_empty() && paths.len() < total);
    assert!(
        paths
            .iter()
            .all(|p| p.starts_with(&trip.display().to_string())),
        "{paths:?}"
    );

    // Date filter: nothing taken after 2999.
    let (_, none) = get_json(&app, "/api/search?q=rocket&after=2999-01-01").await;
    assert_eq!(ids(&none), Vec::<u64>::new());

    // Camera filter (the iPhone 7 fixture has EXIF).
    let (_, apple) = get_json(&app, "/api/search?q=rocket&camera=iphone").await;
    let apple = apple["results"].as_array().unwrap().clone();
    assert!(
        !apple.is_empty()
            && apple.iter().all(|r| r["camera"]
                .as_str()
                .unwrap()
                .to_lowercase()
                .contains("iphone"))
    );

    // sort=date: the non-weak results, newest first.
    let (status, by_date) = get_json(&app, "/api/search?q=rocket&sort=date&k=100").await;
    assert_eq!(status, StatusCode::OK);
    let results = by_date["results"].as_array().unwrap();
    assert!(results.iter().all(|r| r["weak"] == false));
    let dates: Vec<&str> = results
        .iter()
        .map(|r| r["taken_at"].as_str().unwrap())
        .collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]), "{dates:?}");
    let strong = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["weak"] == false)
        .count();
    assert_eq!(results.len(), strong);

    // Weighted and negative terms.
    let (status, weighted) = get_json(&app, "/api/search?q=2:rocket%20-people").await;
    assert_eq!(status, StatusCode::OK, "{weighted}");
    assert_ne!(ids(&weighted), Vec::<u64>::new());
}

#[actix_web::test]
async fn bad_search_parameters_are_json_errors() {
    let fx = fixture();
    let app = app!(state(&fx, ServeOptions::default()));
    for (uri, status, code) in [
        ("/api/search", StatusCode::BAD_REQUEST, "empty_query"),
        (
            "/api/search?q=%20%20",
            StatusCode::BAD_REQUEST,
            "empty_query",
        ),
        (
            "/api/search?q=dog&k=0",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "/api/search?q=dog&k=501",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "/api/search?q=dog&k=abc",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "/api/search?q=dog&offset=99999",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "/api/search?q=dog&after=yesterday",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "/api/search?q=dog&sort=colour",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "/api/search?q=dog&method=psychic",
            StatusCode::BAD_REQUEST,
            "bad_parameter",
        ),
        (
            "/api/search?q=dog%20-dog",
            StatusCode::BAD_REQUEST,
            "bad_query",
        ),
        ("/api/nothing", StatusCode::NOT_FOUND, "not_found"),
    ] {
        let (got, body) = get_json(&app, uri).await;
        assert_error(got, &body, status, code);
    }
}

#[actix_web::test]
async fn photos_metadata_thumbnail_original_and_similar() {
    let fx = fixture();
    let app = app!(state(&fx, ServeOptions::default()));
    let (_, found) = get_json(&app, "/api/search?q=photo&k=100").await;
    let rocket = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["file_name"] == "skimage-rocket.jpg")
        .expect("the rocket photo is indexed")
        .clone();
    let id = rocket["id"].as_u64().unwrap();

    let (status, meta) = get_json(&app, &format!("/api/photos/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(meta["path"], rocket["path"]);
    assert_eq!(meta["mime"], "image/jpeg");
    assert_eq!(meta["blake3"].as_str().unwrap().len(), 64);

    // Thumbnail: a JPEG, cached by ETag.
    let response = test::call_service(
        &app,
        TestRequest::get()
            .uri(rocket["thumbnail"].as_str().unwrap())
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "image/jpeg"
    );
    let etag = response.headers().get(header::ETAG).unwrap().clone();
    let thumb = test::read_body(response).await;
    let decoded = image::load_from_memory(&thumb).unwrap();
    assert!(decoded.width().max(decoded.height()) <= 256);
    let again = test::call_service(
        &app,
        TestRequest::get()
            .uri(&format!("/api/photos/{id}/thumbnail"))
            .insert_header((header::IF_NONE_MATCH, etag))
            .to_request(),
    )
    .await;
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // Original: the file's bytes, and byte ranges.
    let path = PathBuf::from(rocket["path"].as_str().unwrap());
    let bytes = std::fs::read(&path).unwrap();
    let response = test::call_service(
        &app,
        TestRequest::get()
            .uri(&format!("/api/photos/{id}/original"))
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "image/jpeg"
    );
    assert_eq!(test::read_body(response).await.as_ref(), bytes.as_slice());
    let ranged = test::call_service(
        &app,
        TestRequest::get()
            .uri(&format!("/api/photos/{id}/original"))
            .insert_header((header::RANGE, "bytes=0-9"))
            .to_request(),
    )
    .await;
    assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(test::read_body(ranged).await.as_ref(), &bytes[..10]);

    // More like this: the photo itself is left out; its nearest is not it.
    let (status, similar) = get_json(&app, &format!("/api/photos/{id}/similar?k=5")).await;
    assert_eq!(status, StatusCode::OK);
    let similar_ids = ids(&similar);
    assert_eq!(similar_ids.len(), 5);
    assert!(!similar_ids.contains(&id));

    // Unknown and malformed ids, and paths smuggled in as ids.
    for uri in [
        "/api/photos/999999".to_string(),
        "/api/photos/999999/thumbnail".to_string(),
        "/api/photos/999999/original".to_string(),
        "/api/photos/999999/similar".to_string(),
        "/api/photos/abc".to_string(),
        "/api/photos/..%2f..%2f..%2fetc%2fpasswd/original".to_string(),
        format!("/api/photos/{id}%2f..%2f..%2fCargo.toml/original"),
    ] {
        let (status, body) = get_json(&app, &uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {body}");
        assert!(!body.to_string().contains("root:"), "{uri}");
    }
    for uri in [
        "/..%2f..%2fCargo.toml",
        "/assets/..%2f..%2fCargo.toml",
        "/assets/..%2fsrc%2flib.rs",
    ] {
        let response = test::call_service(&app, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{uri}");
        let body = test::read_body(response).await;
        assert!(
            !String::from_utf8_lossy(&body).contains("[package]"),
            "{uri}"
        );
    }

    // A photo replaced by a symlink to a file outside is refused, not followed.
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(repo().join("Cargo.toml"), &path).unwrap();
    let (status, body) = get_json(&app, &format!("/api/photos/{id}/original")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "file_unavailable");
    std::fs::remove_file(&path).unwrap();
    let (status, body) = get_json(&app, &format!("/api/photos/{id}/original")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "file_unavailable");
}

/// A multipart body with one file field.
fn multipart(field: &str, bytes: &[u8]) -> (String, Vec<u8>) {
    let boundary = "glimpse-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"q.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

async fn upload(
    app: &impl actix_web::dev::Service<
        actix_http::Request,
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
    >,
    field: &str,
    bytes: &[u8],
) -> (StatusCode, Value) {
    let (content_type, body) = multipart(field, bytes);
    let request = TestRequest::post()
        .uri("/api/search/image?k=5")
        .insert_header((header::CONTENT_TYPE, content_type))
        .set_payload(body)
        .to_request();
    let response = test::call_service(app, request).await;
    let status = response.status();
    let body = test::read_body(response).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// A real JPEG whose header claims `side` x `side` pixels.
fn jpeg_claiming(side: u16) -> Vec<u8> {
    let mut jpeg = std::fs::read(repo().join("tests/fixtures/photos/skimage-rocket.jpg")).unwrap();
    let sof = jpeg
        .windows(2)
        .position(|w| w[0] == 0xFF && (w[1] == 0xC0 || w[1] == 0xC2))
        .expect("a start-of-frame marker");
    // FFC0, length (2), precision (1), height (2), width (2).
    jpeg[sof + 5..sof + 7].copy_from_slice(&side.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&side.to_be_bytes());
    jpeg
}

#[actix_web::test]
async fn image_search_finds_the_photo_itself_and_refuses_bad_uploads() {
    let fx = fixture();
    let options = ServeOptions {
        max_upload_bytes: 256 * 1024,
        max_upload_pixels: 40_000_000,
        ..ServeOptions::default()
    };
    let app = app!(state(&fx, options));
    let rocket = std::fs::read(fx.photos.join("skimage-rocket.jpg"))
        .or_else(|_| std::fs::read(fx.photos.join("trip/skimage-rocket.jpg")))
        .unwrap();
    let (status, found) = upload(&app, "image", &rocket).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(
        found["results"][0]["file_name"], "skimage-rocket.jpg",
        "{found}"
    );
    assert!(found["results"][0]["score"].as_f64().unwrap() > 0.999);

    let (status, body) = upload(&app, "image", &vec![0u8; 300 * 1024]).await;
    assert_error(
        status,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_too_large",
    );
    let (status, body) = upload(&app, "image", &jpeg_claiming(60_000)).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "too_many_pixels",
    );
    let (status, body) = upload(&app, "image", b"this is not an image at all").await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "undecodable_image",
    );
    let (status, body) = upload(&app, "photo", &rocket).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "bad_upload");
    let response = test::call_service(
        &app,
        TestRequest::post()
            .uri("/api/search/image")
            .set_payload("plain text")
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[actix_web::test]
async fn a_token_guards_everything_but_the_page_and_health() {
    let fx = fixture();
    let options = ServeOptions {
        token: Some("s3cret-token".into()),
        ..ServeOptions::default()
    };
    let app = app!(state(&fx, options));
    for uri in [
        "/api/search?q=dog",
        "/api/status",
        "/metrics",
        "/api/photos/1/original",
    ] {
        let (status, body) = get_json(&app, uri).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthorized");
        let wrong = test::call_service(
            &app,
            TestRequest::get()
                .uri(uri)
                .insert_header((header::AUTHORIZATION, "Bearer s3cret-tokeN"))
                .to_request(),
        )
        .await;
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED, "{uri}");
        assert!(wrong.headers().contains_key(header::WWW_AUTHENTICATE));
    }
    let bearer = test::call_service(
        &app,
        TestRequest::get()
            .uri("/api/search?q=dog")
            .insert_header((header::AUTHORIZATION, "Bearer s3cret-token"))
            .to_request(),
    )
    .await;
    assert_eq!(bearer.status(), StatusCode::OK);
    let cookie = test::call_service(
        &app,
        TestRequest::get()
            .uri("/api/status")
            .insert_header((header::COOKIE, "theme=dark; glimpse_token=s3cret-token"))
            .to_request(),
    )
    .await;
    assert_eq!(cookie.status(), StatusCode::OK);
    for public in ["/", "/status", "/healthz", "/assets/app.js"] {
        let r = test::call_service(&app, TestRequest::get().uri(public).to_request()).await;
        assert_eq!(r.status(), StatusCode::OK, "{public}");
    }
}

#[actix_web::test]
async fn status_health_metrics_openapi_and_the_page() {
    let fx = fixture();
    let app = app!(state(&fx, ServeOptions::default()));
    let (status, s) = get_json(&app, "/api/status").await;
    assert_eq!(status, StatusCode::OK);
    assert!(s["stats"]["photos"].as_u64().unwrap() >= 8);
    assert_eq!(s["stats"]["photos"], s["stats"]["embedded"]);
    assert_eq!(s["indexing"]["watching"], false);
    assert_eq!(s["model"]["dim"], 32);
    assert_eq!(s["model"]["query_precision"], "int8", "{s}");
    assert!(
        s["model"]["query_min_cosine"].as_f64().unwrap() >= 0.999,
        "{s}"
    );
    let (status, health) = get_json(&app, "/healthz").await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (_, facets) = get_json(&app, "/api/facets").await;
    assert_eq!(facets["folders"].as_array().unwrap().len(), 2, "{facets}");

    let _ = get_json(&app, "/api/search?q=dog").await;
    let _ = get_json(&app, "/api/photos/424242").await;
    let response = test::call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
    assert!(
        text.contains(
            "glimpse_http_requests_total{route=\"/api/search\",method=\"GET\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("glimpse_http_requests_total{route=\"/api/photos/{id}\",method=\"GET\",status=\"404\"} 1"), "{text}");
    assert!(
        text.contains("glimpse_query_encode_seconds_count{kind=\"text\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!("glimpse_library_photos {}", s["stats"]["photos"])),
        "{text}"
    );

    // Every documented path is routed (none falls through to not_found).
    let (status, spec) = get_json(&app, "/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let paths = spec["paths"].as_object().unwrap();
    assert_eq!(paths.len(), 11);
    for (path, ops) in paths {
        let uri = path.replace("{id}", "1");
        let method = if ops.get("post").is_some() {
            "POST"
        } else {
            "GET"
        };
        let request = TestRequest::default()
            .method(method.parse().unwrap())
            .uri(&uri)
            .to_request();
        let response = test::call_service(&app, request).await;
        let body = test::read_body(response).await;
        assert!(
            !String::from_utf8_lossy(&body).contains("\"code\":\"not_found\""),
            "{path} is not routed"
        );
    }

    // The page: embedded, with a strict content security policy; no CORS.
    let response = test::call_service(
        &app,
        TestRequest::get()
            .uri("/")
            .insert_header((header::ORIGIN, "https://evil.example"))
            .to_request(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(!response
        .headers()
        .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN));
    assert_eq!(
        response
            .headers()
            .get(header::X_CONTENT_TYPE_OPTIONS)
            .unwrap(),
        "nosniff"
    );
    let html = test::read_body(response).await;
    assert!(String::from_utf8_lossy(&html).contains("id=\"q\""));
}

#[actix_web::test]
async fn concurrent_queries_are_batched_and_answered_like_single_ones() {
    let fx = fixture();
    let app = app!(state(&fx, ServeOptions::default()));
    let queries = [
        "a rocket",
        "mountains",
        "a red car",
        "two cats",
        "night sky",
        "a lake",
        "snow",
        "people",
    ];
    let mut alone = Vec::new();
    for q in queries {
        let (_, body) = get_json(&app, &format!("/api/search?q={}&k=5", urlencode(q))).await;
        alone.push(ids(&body));
    }
    // Fresh server (empty cache), all at once.
    drop(app);
    let app = app!(state(&fx, ServeOptions::default()));
    let calls = queries.iter().map(|q| {
        let uri = format!("/api/search?q={}&k=5", urlencode(q));
        let app = &app;
        async move { get_json(app, &uri).await }
    });
    let together = futures_util::future::join_all(calls).await;
    for ((status, body), expected) in together.iter().zip(&alone) {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(&ids(body), expected);
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
