//! `glimpse index` / `search` / `status` / `failures` on real files: the
//! incremental scenarios (move, rename, edit, copy, delete), the crash test
//! (SIGKILL at random points, then a rerun equals an uninterrupted build)
//! and the watch daemon.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use glimpse_store::Library;
use serde_json::Value;

use crate::{assert_fails, fixtures, glimpse, ok_stdout, run, tiny_model};

/// The real photos and test images the library tests index.
fn photo_sources() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(fixtures().join("photos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "md"))
        .collect();
    files.extend(
        fs::read_dir(tiny_model().join("images"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file()),
    );
    files.sort();
    files
}

/// A photo folder with the fixture photos (two in a sub-folder) and one
/// truncated JPEG.
fn photo_folder(root: &Path) {
    fs::create_dir_all(root.join("trip")).unwrap();
    for (i, src) in photo_sources().iter().enumerate() {
        let name = src.file_name().unwrap();
        let dest = if i % 5 == 0 {
            root.join("trip").join(name)
        } else {
            root.join(name)
        };
        fs::copy(src, dest).unwrap();
    }
    let jpeg = fs::read(fixtures().join("photos/skimage-rocket.jpg")).unwrap();
    // A JPEG header and nothing else: no decoder can make pixels of it.
    fs::write(root.join("truncated.jpg"), &jpeg[..300]).unwrap();
}

fn index(library: &Path, roots: &[&Path], extra: &[&str]) -> Value {
    let mut cmd = glimpse();
    cmd.arg("index")
        .arg("--library")
        .arg(library)
        .arg("--model")
        .arg(tiny_model())
        .arg("--json")
        .args(extra)
        .args(roots);
    let out = ok_stdout(&run(&mut cmd));
    serde_json::from_str(out.trim()).expect("one JSON summary")
}

fn counts(summary: &Value) -> [u64; 6] {
    [
        "indexed",
        "unchanged",
        "updated",
        "moved",
        "removed",
        "failed",
    ]
    .map(|k| {
        summary[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} in {summary}"))
    })
}

/// id → (path, embedding) of every photo.
fn snapshot(library: &Path) -> BTreeMap<u64, (String, Vec<f32>)> {
    let mut lib = Library::open(library).unwrap();
    assert_eq!(
        lib.verify().unwrap(),
        None,
        "derived indexes agree with sled"
    );
    let records: Vec<_> = lib.photos().map(Result::unwrap).collect();
    records
        .into_iter()
        .map(|r| {
            let e = lib
                .embedding(r.id)
                .unwrap()
                .expect("every photo is embedded");
            (r.id, (r.path, e))
        })
        .collect()
}

fn search(library: &Path, args: &[&str]) -> Value {
    let mut cmd = glimpse();
    cmd.arg("search")
        .arg("--library")
        .arg(library)
        .arg("--json")
        .args(args);
    serde_json::from_str(ok_stdout(&run(&mut cmd)).trim()).unwrap()
}

fn id_of(snapshot: &BTreeMap<u64, (String, Vec<f32>)>, suffix: &str) -> u64 {
    *snapshot
        .iter()
        .find(|(_, (p, _))| p.ends_with(suffix))
        .unwrap_or_else(|| panic!("{suffix} not in the library"))
        .0
}

#[test]
fn index_then_search_status_and_failures() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    photo_folder(&photos);
    let library = tmp.path().join("library");
    let files = photo_sources().len() as u64 + 1;

    let first = index(&library, &[&photos], &[]);
    let [indexed, unchanged, _, _, _, failed] = counts(&first);
    // Every file is either indexed or a failure with a reason: the HEIC and
    // the DNG are unsupported, the truncated JPEG is corrupt.
    assert_eq!(indexed + failed, files, "{first}");
    assert_eq!((unchanged, failed), (0, 3), "{first}");

    let second = index(&library, &[&photos], &[]);
    assert_eq!(counts(&second), [0, files, 0, 0, 0, 0], "{second}");
    assert!(second["seconds"].as_f64().unwrap() < 2.0, "{second}");

    let out = ok_stdout(&run(glimpse()
        .args(["failures", "--json", "--library"])
        .arg(&library)));
    let kinds: Vec<String> = crate::json_lines(&out)
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["kind"].as_str().unwrap(),
                f["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(kinds
        .iter()
        .any(|k| k.starts_with("corrupt ") && k.ends_with("truncated.jpg")));
    assert!(kinds
        .iter()
        .any(|k| k.starts_with("unsupported_format ") && k.ends_with(".heic")));

    let status = ok_stdout(&run(glimpse()
        .args(["status", "--json", "--library"])
        .arg(&library)));
    let status: Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(status["stats"]["photos"], indexed);
    assert_eq!(status["consistent"], true);
    assert!(status["stats"]["bytes_thumbnails"].as_u64().unwrap() > 0);

    // The search ranks by cosine, best first, and each result is a photo.
    // (Words that match no file or folder name: pure semantic ranking.)
    let results = search(&library, &["xylophone", "-k", "5"]);
    let hits = results["results"].as_array().unwrap();
    assert_eq!(hits.len(), 5);
    assert!(
        hits.iter().all(|h| h["keyword_match"] == false),
        "{results}"
    );
    let scores: Vec<f64> = hits.iter().map(|h| h["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    // --like an indexed photo: that photo is left out, its copies are not.
    let rocket = photos.join("skimage-rocket.jpg");
    let like = search(&library, &["--like", rocket.to_str().unwrap(), "-k", "3"]);
    assert!(like["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| !h["path"].as_str().unwrap().ends_with("skimage-rocket.jpg")));
    // Filters: folder and camera, and keyword fusion on the folder name.
    let trip = search(
        &library,
        &["photo", "--folder", photos.join("trip").to_str().unwrap()],
    );
    let trip = trip["results"].as_array().unwrap();
    assert!(!trip.is_empty());
    assert!(trip
        .iter()
        .all(|h| h["path"].as_str().unwrap().contains("/trip/")));
    let nikon = search(&library, &["photo", "--camera", "nikon"]);
    let nikon = nikon["results"].as_array().unwrap();
    assert_eq!(nikon.len(), 1, "{nikon:?}");
    assert!(nikon[0]["path"]
        .as_str()
        .unwrap()
        .ends_with("nikon-d70.jpg"));
    let old = search(&library, &["photo", "--before", "2000-01-01"]);
    assert!(old["results"].as_array().unwrap().is_empty(), "{old}");
    let fused = search(&library, &["trip", "-k", "3"]);
    assert_eq!(fused["results"][0]["keyword_match"], true, "{fused}");

    // The same photos indexed with fp32 and with int8 image weights (the
    // library above used the default, auto: int8, bf16 or fp32 by CPU):
    // every embedding of int8 and of auto within cosine 0.999 of fp32, and
    // the same photos found (issue #6: top-10 overlap ≥ 9/10).
    let fp32_library = tmp.path().join("library-fp32");
    index(&fp32_library, &[&photos], &["--precision", "fp32"]);
    let int8_library = tmp.path().join("library-int8");
    index(&int8_library, &[&photos], &["--precision", "int8"]);
    let exact_snap = snapshot(&fp32_library);
    for (name, lib) in [("int8", &int8_library), ("auto", &library)] {
        let snap = snapshot(lib);
        assert_eq!(snap.len(), exact_snap.len());
        for ((path, a), (path2, b)) in snap.values().zip(exact_snap.values()) {
            assert_eq!(path, path2);
            let cosine: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            assert!(cosine >= 0.999, "{name} {path}: cosine {cosine} to fp32");
            if name == "int8" {
                assert!(cosine < 1.0 - 1e-7, "{path}: int8 images cannot be exact");
            }
        }
    }
    for query in [
        "a dog on the beach",
        "sunset over the mountains",
        "a red car",
    ] {
        let ids = |lib: &Path| -> Vec<String> {
            search(lib, &[query, "-k", "10"])["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["path"].as_str().unwrap().to_string())
                .collect()
        };
        let (got, exact) = (ids(&int8_library), ids(&fp32_library));
        let overlap = got.iter().filter(|p| exact.contains(p)).count();
        assert!(overlap >= 9, "{query:?}: {got:?} vs {exact:?}");
    }

    // Reduced-precision queries find the same photos (issue #6: top-10
    // overlap ≥ 9/10 against fp32).
    for query in [
        "a dog on the beach",
        "sunset over the mountains",
        "a red car",
        "xylophone",
    ] {
        let top = |precision: &str| -> Vec<u64> {
            search(&library, &[query, "-k", "10", "--precision", precision])["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["id"].as_u64().unwrap())
                .collect()
        };
        let exact = top("fp32");
        assert_eq!(exact.len(), 10);
        for precision in ["int8", "bf16", "auto"] {
            let got = top(precision);
            let overlap = got.iter().filter(|id| exact.contains(id)).count();
            assert!(overlap >= 9, "{precision} {query:?}: {got:?} vs {exact:?}");
        }
    }

    // Errors: an empty query, a bad date, no library, another model.
    assert_fails(
        &run(glimpse()
            .args(["search", "--library"])
            .arg(&library)
            .arg("  ")),
        3,
        &["nothing to search for"],
    );
    assert_fails(
        &run(glimpse()
            .args(["search", "x", "--after", "2021-02-30", "--library"])
            .arg(&library)),
        3,
        &["--after", "YYYY-MM-DD"],
    );
    assert_fails(
        &run(glimpse()
            .args(["search", "x", "--library"])
            .arg(tmp.path().join("none"))),
        5,
        &["no library", "glimpse index"],
    );
    let other_model = tmp.path().join("other-model");
    fs::create_dir_all(&other_model).unwrap();
    for f in ["config.json", "model.safetensors"] {
        fs::copy(tiny_model().join(f), other_model.join(f)).unwrap();
    }
    let mut config: Value =
        serde_json::from_slice(&fs::read(other_model.join("config.json")).unwrap()).unwrap();
    config["logit_scale_init_value"] = Value::from(1.5);
    fs::write(other_model.join("config.json"), config.to_string()).unwrap();
    let out = run(glimpse()
        .args(["index", "--library"])
        .arg(&library)
        .arg("--model")
        .arg(&other_model)
        .arg(&photos));
    assert_fails(&out, 5, &["--reembed"]);
    let before = snapshot(&library);
    let mut cmd = glimpse();
    cmd.arg("index")
        .arg("--library")
        .arg(&library)
        .arg("--model")
        .arg(&other_model)
        .args(["--json", "--reembed"])
        .arg(&photos);
    let re: Value = serde_json::from_str(ok_stdout(&run(&mut cmd)).trim()).unwrap();
    assert_eq!(re["updated"].as_u64(), Some(indexed), "{re}");
    let after = snapshot(&library);
    assert_eq!(
        before
            .iter()
            .map(|(id, (p, _))| (*id, p.clone()))
            .collect::<Vec<_>>(),
        after
            .iter()
            .map(|(id, (p, _))| (*id, p.clone()))
            .collect::<Vec<_>>(),
        "re-embedding keeps ids and paths"
    );
}

#[test]
fn moves_renames_edits_copies_and_deletes_are_incremental() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    photo_folder(&photos);
    let library = tmp.path().join("library");
    index(&library, &[&photos], &[]);
    let before = snapshot(&library);
    let rocket = id_of(&before, "/skimage-rocket.jpg");
    let nikon = id_of(&before, "/exiv2-nikon-d70.jpg");
    let furnace = id_of(&before, "/exiv2-FurnaceCreekInn.jpg");
    let gradient = id_of(&before, "/img0_gradient_320x240.png");

    // Move into another folder and rename.
    fs::create_dir_all(photos.join("2019/space")).unwrap();
    fs::rename(
        photos.join("skimage-rocket.jpg"),
        photos.join("2019/space/launch.jpg"),
    )
    .unwrap();
    fs::rename(photos.join("exiv2-nikon-d70.jpg"), photos.join("d70.jpg")).unwrap();
    // Edit: new content under the same name.
    fs::copy(
        tiny_model().join("images/img7_photo_301x187.jpg"),
        photos.join("exiv2-FurnaceCreekInn.jpg"),
    )
    .unwrap();
    // Copy, and delete.
    fs::copy(photos.join("d70.jpg"), photos.join("d70 copy.jpg")).unwrap();
    let gradient_path = before[&gradient].0.clone();
    fs::remove_file(&gradient_path).unwrap();

    let summary = index(&library, &[&photos], &[]);
    let [indexed, _, updated, moved, removed, failed] = counts(&summary);
    assert_eq!(
        (indexed, updated, moved, removed, failed),
        (1, 1, 2, 1, 0),
        "{summary}"
    );
    let after = snapshot(&library);

    // Moved and renamed: same id, same embedding, new path.
    assert!(after[&rocket].0.ends_with("/2019/space/launch.jpg"));
    assert_eq!(after[&rocket].1, before[&rocket].1);
    // d70.jpg and "d70 copy.jpg" have the same content: the first in walk
    // order takes over the moved photo's id, the other is a copy.
    assert!(
        after[&nikon].0.ends_with("/d70 copy.jpg"),
        "{}",
        after[&nikon].0
    );
    assert_eq!(after[&nikon].1, before[&nikon].1);
    // Edited: same id, new embedding (that of the new content).
    assert!(after[&furnace].0.ends_with("/exiv2-FurnaceCreekInn.jpg"));
    let img7 = id_of(&after, "/img7_photo_301x187.jpg");
    assert_ne!(after[&furnace].1, before[&furnace].1);
    assert_eq!(after[&furnace].1, after[&img7].1);
    // Copied: a new id with the original's embedding.
    let copy = id_of(&after, "/d70.jpg");
    assert!(!before.contains_key(&copy));
    assert_eq!(after[&copy].1, before[&nikon].1);
    // Deleted: gone from the records, the vectors and the searches.
    assert!(!after.contains_key(&gradient));
    let all = search(&library, &["picture", "-k", "100"]);
    let paths: Vec<&str> = all["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths.len(), after.len());
    assert!(!paths.contains(&gradient_path.as_str()));
    // The moved photo is found by its new name.
    let keyword = search(&library, &["launch", "-k", "1"]);
    assert!(
        keyword["results"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("launch.jpg"),
        "{keyword}"
    );
    // Nothing else changed.
    let again = index(&library, &[&photos], &[]);
    assert_eq!(counts(&again)[1], after.len() as u64 + 3, "{again}");
}

/// Distinct, slow-enough-to-decode PNGs for the crash test.
fn generated_photos(root: &Path, n: u32) {
    fs::create_dir_all(root).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(640, 480, |x, y| {
            let v =
                x.wrapping_mul(31 + i) ^ y.wrapping_mul(17 + 3 * i) ^ (x * y).wrapping_add(i * 977);
            image::Rgb([
                (v % 251) as u8,
                ((v >> 3) % 241) as u8,
                ((v >> 6) % 239) as u8,
            ])
        });
        img.save(root.join(format!("img{i:03}.png"))).unwrap();
    }
}

#[test]
fn killing_the_indexer_at_random_points_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    generated_photos(&photos, 48);
    let reference = tmp.path().join("reference");
    let started = Instant::now();
    index(&reference, &[&photos], &["--commit-every", "4"]);
    let full_run = started.elapsed();
    let expected = snapshot(&reference);
    assert_eq!(expected.len(), 48);

    let library = tmp.path().join("crashed");
    // Kill points spread over the uninterrupted run's duration, chosen by
    // a seed so a failure can be replayed.
    let base: u64 = std::env::var("GLIMPSE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    println!("crash seed {base} (replay: GLIMPSE_CRASH_SEED={base})");
    let mut seed = base ^ 0x9e37_79b9_7f4a_7c15;
    let mut kills = 0;
    for _ in 0..5 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = full_run.mul_f64(0.1 + (seed % 1000) as f64 / 1000.0 * 0.8);
        let mut child = glimpse()
            .arg("index")
            .arg("--library")
            .arg(&library)
            .arg("--model")
            .arg(tiny_model())
            .args(["--json", "--commit-every", "4", "--batch-size", "3"])
            .arg(&photos)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    println!("{kills} runs killed mid-way");
    index(&library, &[&photos], &["--commit-every", "4"]);
    let got = snapshot(&library);
    assert_eq!(got.len(), expected.len(), "no photo lost or duplicated");
    for (id, (path, vector)) in &expected {
        let (got_path, got_vector) = &got[id];
        assert_eq!(got_path, path, "photo {id}");
        let diff = vector
            .iter()
            .zip(got_vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "photo {id}: embedding differs by {diff}");
    }
    // No stray temporary thumbnails, one thumbnail per photo.
    let thumbs = fs::read_dir(library.join("thumbs")).unwrap().count();
    assert_eq!(thumbs, expected.len());
}

#[test]
fn watch_picks_up_new_and_deleted_files() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = tmp.path().join("photos");
    fs::create_dir_all(&photos).unwrap();
    fs::copy(
        fixtures().join("photos/skimage-rocket.jpg"),
        photos.join("a.jpg"),
    )
    .unwrap();
    let library = tmp.path().join("library");
    let mut child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .arg("index")
        .arg("--library")
        .arg(&library)
        .arg("--model")
        .arg(tiny_model())
        .args(["--json", "--watch"])
        .arg(&photos)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| -> Value {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no summary after {what}"));
        serde_json::from_str(&line).unwrap()
    };
    assert_eq!(next("the first run")["indexed"], 1);
    fs::copy(
        fixtures().join("photos/exiv2-nikon-d70.jpg"),
        photos.join("b.jpg"),
    )
    .unwrap();
    assert_eq!(next("adding a file")["indexed"], 1);
    fs::remove_file(photos.join("a.jpg")).unwrap();
    assert_eq!(next("deleting a file")["removed"], 1);
    child.kill().unwrap();
    child.wait().unwrap();
    let after = snapshot(&library);
    assert_eq!(after.len(), 1);
    assert!(after.values().next().unwrap().0.ends_with("/b.jpg"));
}

/// A large JPEG is reduced while decoding by default (its embedding stays
/// near the full-size one) and decoded at full size, exactly as `glimpse
/// embed` (the reference's pixels) does, with `--exact-decode`.
#[test]
fn large_jpegs_are_reduced_while_decoding_unless_exact_decode() {
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    fs::create_dir_all(&photos).unwrap();
    let large =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("decoder/tests/data/large/mate-FreshFlower.jpg");
    fs::copy(&large, photos.join("flower.jpg")).unwrap();
    let (reduced_lib, exact_lib) = (dir.path().join("reduced"), dir.path().join("exact"));
    // fp32, as `glimpse embed` runs, so that only the decoding differs.
    let fp32 = ["--precision", "fp32"];
    assert_eq!(counts(&index(&reduced_lib, &[&photos], &fp32))[0], 1);
    let exact_args = ["--precision", "fp32", "--exact-decode"];
    assert_eq!(counts(&index(&exact_lib, &[&photos], &exact_args))[0], 1);
    let embedding = |lib: &Path| snapshot(lib).into_values().next().unwrap().1;
    let (reduced, exact) = (embedding(&reduced_lib), embedding(&exact_lib));

    let mut cmd = glimpse();
    cmd.args(["embed", "--model"])
        .arg(tiny_model())
        .arg("--image")
        .arg(photos.join("flower.jpg"));
    let line: Value = serde_json::from_str(ok_stdout(&run(&mut cmd)).trim()).unwrap();
    let reference: Vec<f32> = line["embedding"]
        .as_array()
        .expect("an embedding")
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max)
    };
    assert!(
        max_diff(&exact, &reference) < 1e-5,
        "--exact-decode is the reference's decode"
    );
    assert!(
        max_diff(&reduced, &exact) > 0.0,
        "the default reduced nothing"
    );
    let c = cosine(&reduced, &exact);
    assert!(
        c >= 0.999,
        "reduced decoding moved the embedding: cosine {c}"
    );

    // `--reembed` with the library's own model redoes it the exact way.
    let reembed = ["--precision", "fp32", "--exact-decode", "--reembed"];
    assert_eq!(counts(&index(&reduced_lib, &[&photos], &reembed))[2], 1);
    let redone = embedding(&reduced_lib);
    assert!(
        max_diff(&redone, &exact) < 1e-6,
        "re-embedded with --exact-decode"
    );
}
