//! Tests of the library: commits, moves, removals, reopening, derived
//! indexes catching up, model checks, and graph recall.

use super::*;
use crate::record::{PhotoMetadata, TakenAtSource};
use crate::search::{Filters, SearchMethod, SearchRequest};

fn model(dim: usize) -> ModelIdentity {
    ModelIdentity {
        name: "test/model".into(),
        fingerprint: "f1".into(),
        dim,
        preprocess: "p1".into(),
    }
}

fn record(path: &str, hash: &str, taken_at: i64, camera: Option<&str>) -> PhotoRecord {
    PhotoRecord {
        id: 0,
        path: path.into(),
        size: 100,
        mtime_ns: 5,
        meta: PhotoMetadata {
            taken_at,
            taken_at_offset_minutes: None,
            taken_at_source: TakenAtSource::Exif,
            camera_make: camera.map(str::to_string),
            camera_model: None,
            lens: None,
            gps: None,
            orientation: 1,
            width: Some(10),
            height: Some(10),
            bytes: 100,
            blake3: hash.into(),
            mime: "image/jpeg".into(),
        },
        has_thumbnail: false,
        indexed_at: 0,
    }
}

/// A deterministic pseudo-random generator (no dependency needed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// CLIP-like vectors: clustered, not uniform on the sphere.
fn clustered(n: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut rng = Rng(seed);
    let centres: Vec<Vec<f32>> = (0..64)
        .map(|_| unit((0..dim).map(|_| rng.next()).collect()))
        .collect();
    (0..n)
        .map(|i| {
            let c = &centres[i % centres.len()];
            unit(c.iter().map(|x| x + 0.08 * rng.next()).collect())
        })
        .collect()
}

fn put(record: PhotoRecord, vector: Vec<f32>) -> Change {
    Change::Put {
        record: Box::new(record),
        embedding: Some(vector),
        thumbnail: None,
    }
}

fn request(vector: Vec<f32>, k: usize) -> SearchRequest {
    SearchRequest {
        vector,
        k,
        ..SearchRequest::default()
    }
}

#[test]
fn commit_assigns_ids_and_indexes_paths_and_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut lib = Library::open_or_create(dir.path(), &model(2), false).unwrap();
    let ids = lib
        .commit(vec![
            put(record("/p/a.jpg", "h1", 10, None), unit(vec![1.0, 0.0])),
            put(record("/p/b.jpg", "h2", 20, None), unit(vec![0.0, 1.0])),
        ])
        .unwrap();
    assert_eq!(ids, vec![1, 2]);
    assert_eq!(lib.photo_by_path("/p/b.jpg").unwrap().unwrap().id, 2);
    assert_eq!(lib.ids_by_hash("h1").unwrap(), vec![1]);
    assert_eq!(lib.embedding(2).unwrap().unwrap(), vec![0.0, 1.0]);
    let hits = lib.search(&request(unit(vec![0.1, 1.0]), 5)).unwrap().hits;
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(lib.verify().unwrap(), None);
}

#[test]
fn moving_editing_and_removing_keep_everything_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let mut lib = Library::open_or_create(dir.path(), &model(2), false).unwrap();
    lib.commit(vec![
        put(record("/p/a.jpg", "h1", 10, None), unit(vec![1.0, 0.0])),
        put(record("/p/b.jpg", "h2", 20, None), unit(vec![0.0, 1.0])),
    ])
    .unwrap();
    lib.save_derived().unwrap();
    // a.jpg moves to b.jpg's place while b.jpg is removed, in one commit.
    let mut moved = lib.photo(1).unwrap().unwrap();
    moved.path = "/q/b.jpg".into();
    let mut edited = record("/p/a.jpg", "h3", 30, None);
    edited.id = 0;
    lib.commit(vec![
        Change::Remove(2),
        Change::Put {
            record: Box::new(moved),
            embedding: None,
            thumbnail: None,
        },
        put(edited, unit(vec![1.0, 1.0])),
    ])
    .unwrap();
    assert_eq!(lib.photo_by_path("/q/b.jpg").unwrap().unwrap().id, 1);
    assert_eq!(lib.photo_by_path("/p/a.jpg").unwrap().unwrap().id, 3);
    assert!(lib.photo_by_path("/p/b.jpg").unwrap().is_none());
    assert!(lib.photo(2).unwrap().is_none());
    assert_eq!(lib.embedding(1).unwrap().unwrap(), vec![1.0, 0.0]);
    assert!(lib.ids_by_hash("h2").unwrap().is_empty());
    let hits = lib.search(&request(unit(vec![0.0, 1.0]), 5)).unwrap().hits;
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![3, 1]);
    assert!(lib.verify().unwrap().is_none(), "{:?}", lib.verify());
    lib.save_derived().unwrap();
    drop(lib);

    // Reopened: the saved graph and keyword index are reused and agree.
    let mut lib = Library::open(dir.path()).unwrap();
    // One of three points was a tombstone: past the threshold, so the
    // graph was rebuilt with the two live vectors before it was saved.
    assert_eq!(lib.graph_points().unwrap(), (2, 2));
    assert_eq!(lib.verify().unwrap(), None);
    let hits = lib.search(&request(unit(vec![0.0, 1.0]), 5)).unwrap().hits;
    assert_eq!(hits.iter().map(|h| h.id).collect::<Vec<_>>(), vec![3, 1]);
}

#[test]
fn derived_indexes_catch_up_after_an_unsaved_session() {
    let dir = tempfile::tempdir().unwrap();
    let vectors = clustered(300, 16, 3);
    {
        let mut lib = Library::open_or_create(dir.path(), &model(16), false).unwrap();
        lib.commit(
            (0..200)
                .map(|i| {
                    put(
                        record(&format!("/p/{i}.jpg"), &format!("h{i}"), i, None),
                        vectors[i as usize].clone(),
                    )
                })
                .collect(),
        )
        .unwrap();
        // A library this small is scanned exactly: saving builds no graph…
        lib.save_derived().unwrap();
        assert!(!dir.path().join("graph").exists());
        // …unless one is in use (here: asked for), which is then saved.
        assert_eq!(lib.graph_points().unwrap(), (200, 200));
        lib.save_derived().unwrap();
        assert!(dir.path().join("graph/state.json").exists());
        // More commits, never saved (as if the process were killed).
        lib.commit(
            (200..300)
                .map(|i| {
                    put(
                        record(&format!("/p/{i}.jpg"), &format!("h{i}"), i, None),
                        vectors[i as usize].clone(),
                    )
                })
                .collect(),
        )
        .unwrap();
        lib.commit(vec![Change::Remove(5)]).unwrap();
    }
    let mut lib = Library::open(dir.path()).unwrap();
    assert!(lib.verify().unwrap().is_none(), "{:?}", lib.verify());
    assert_eq!(lib.graph_points().unwrap(), (300, 299));
    // A damaged keyword index and graph are rebuilt, not fatal.
    lib.save_derived().unwrap();
    drop(lib);
    fs::write(dir.path().join("graph/graph.hnsw.graph"), b"garbage").unwrap();
    for entry in fs::read_dir(dir.path().join("keywords")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            fs::write(path, b"{not json").unwrap();
        }
    }
    let mut lib = Library::open(dir.path()).unwrap();
    assert!(lib.verify().unwrap().is_none(), "{:?}", lib.verify());
}

#[test]
fn filters_restrict_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut lib = Library::open_or_create(dir.path(), &model(2), false).unwrap();
    lib.commit(vec![
        put(
            record("/p/2019/a.jpg", "h1", 100, Some("Canon")),
            unit(vec![1.0, 0.0]),
        ),
        put(
            record("/p/2020/b.jpg", "h2", 200, Some("NIKON")),
            unit(vec![0.9, 0.1]),
        ),
        put(
            record("/p/2020x/c.jpg", "h3", 300, None),
            unit(vec![0.8, 0.2]),
        ),
    ])
    .unwrap();
    let ids = |lib: &mut Library, filters: Filters| -> Vec<u64> {
        let mut r = request(unit(vec![1.0, 0.0]), 10);
        r.filters = filters;
        lib.search(&r).unwrap().hits.iter().map(|h| h.id).collect()
    };
    let f = |after, before, folder: Option<&str>, camera: Option<&str>| Filters {
        after,
        before,
        folder: folder.map(str::to_string),
        camera: camera.map(str::to_string),
    };
    assert_eq!(ids(&mut lib, f(Some(150), None, None, None)), vec![2, 3]);
    assert_eq!(ids(&mut lib, f(None, Some(300), None, None)), vec![1, 2]);
    assert_eq!(ids(&mut lib, f(None, None, Some("/p/2020"), None)), vec![2]);
    assert_eq!(
        ids(&mut lib, f(None, None, Some("/p/2020/"), None)),
        vec![2]
    );
    assert_eq!(ids(&mut lib, f(None, None, None, Some("nikon"))), vec![2]);
    // Keyword fusion: the folder name "2020x" pulls c.jpg to the top.
    let mut r = request(unit(vec![1.0, 0.0]), 10);
    r.keywords = "2020x".into();
    let hits = lib.search(&r).unwrap().hits;
    assert_eq!(hits[0].id, 3);
    assert_eq!(hits[0].keyword_rank, Some(0));
    r.keywords.clear();
    r.exclude = Some(1);
    assert_eq!(lib.search(&r).unwrap().hits[0].id, 2);
}

#[test]
fn another_model_is_refused_until_reset() {
    let dir = tempfile::tempdir().unwrap();
    let mut lib = Library::open_or_create(dir.path(), &model(2), false).unwrap();
    lib.commit(vec![put(
        record("/p/a.jpg", "h1", 1, None),
        unit(vec![1.0, 0.0]),
    )])
    .unwrap();
    drop(lib);
    let other = ModelIdentity {
        fingerprint: "f2".into(),
        dim: 3,
        ..model(3)
    };
    let err = Library::open_or_create(dir.path(), &other, false)
        .err()
        .unwrap();
    assert!(matches!(err, StoreError::ModelMismatch { .. }), "{err}");
    assert!(err.to_string().contains("--reembed"), "{err}");
    let mut lib = Library::open_or_create(dir.path(), &other, true).unwrap();
    lib.reset_model(&other).unwrap();
    assert_eq!(lib.photo(1).unwrap().unwrap().path, "/p/a.jpg");
    assert!(lib.embedding(1).unwrap().is_none());
    drop(lib);
    Library::open_or_create(dir.path(), &other, false).unwrap();
}

#[test]
fn a_second_opener_is_told_the_library_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let _lib = Library::open_or_create(dir.path(), &model(2), false).unwrap();
    // sled's lock is per process on some platforms; only check the message
    // when the second open does fail.
    if let Err(err) = Library::open(dir.path()) {
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}

#[test]
fn a_damaged_database_gets_a_rebuild_message() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut lib = Library::open_or_create(dir.path(), &model(2), false).unwrap();
        lib.commit(vec![put(
            record("/p/a.jpg", "h1", 1, None),
            unit(vec![1.0, 0.0]),
        )])
        .unwrap();
    }
    let conf = dir.path().join("db/conf");
    fs::write(&conf, b"this is not sled's configuration").unwrap();
    let err = Library::open(dir.path()).err().unwrap();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("glimpse index"), "{err}");
    let missing = Library::open(&dir.path().join("nothing")).err().unwrap();
    assert!(matches!(missing, StoreError::NoLibrary { .. }), "{missing}");
}

/// The acceptance check: on ≥ 10k CLIP-like vectors the graph's top-10
/// equals the exact top-10 for ≥ 98 % of the results.
#[test]
fn graph_recall_at_10_on_10k_vectors() {
    let dim = 512;
    let n = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let vectors = clustered(n + 200, dim, 11);
    let mut lib = Library::open_or_create(dir.path(), &model(dim), false).unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(2_000) {
        lib.commit(
            chunk
                .iter()
                .map(|&i| {
                    put(
                        record(&format!("/p/{i}.jpg"), &format!("h{i}"), 0, None),
                        vectors[i].clone(),
                    )
                })
                .collect(),
        )
        .unwrap();
    }
    let (mut found, mut total) = (0, 0);
    for query in &vectors[n..] {
        let (exact, approx) = lib
            .compare_methods(query, 10, crate::search::GRAPH_EF)
            .unwrap();
        total += exact.len();
        found += exact.iter().filter(|id| approx.contains(id)).count();
    }
    let recall = found as f64 / total as f64;
    println!("recall@10 = {recall:.4} on {n} vectors");
    assert!(recall >= 0.98, "recall@10 {recall}");
    // The int8 scan plus exact re-scoring against f32 brute force: the same
    // top 10, with exact scores.
    let (mut same, mut all) = (0, 0);
    for query in &vectors[n..n + 50] {
        let mut truth: Vec<(usize, f32)> = (0..n)
            .map(|i| (i, crate::vectors::dot(query, &vectors[i])))
            .collect();
        truth.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut r = request(query.clone(), 10);
        r.method = SearchMethod::Exact;
        let hits = lib.search(&r).unwrap().hits;
        for hit in &hits {
            let exact = crate::vectors::dot(query, &vectors[(hit.id - 1) as usize]);
            assert!((hit.score - exact).abs() < 1e-6, "{} vs {exact}", hit.score);
        }
        all += 10;
        same += truth[..10]
            .iter()
            .filter(|(i, _)| hits.iter().any(|h| h.id == *i as u64 + 1))
            .count();
    }
    let overlap = same as f64 / all as f64;
    println!("int8 scan top-10 overlap with f32 = {overlap:.4}");
    assert!(overlap >= 0.99, "top-10 overlap {overlap}");
    // And through the public search with the graph forced.
    let mut r = request(vectors[7].clone(), 1);
    r.method = SearchMethod::Graph;
    assert_eq!(lib.search(&r).unwrap().hits[0].id, 8);
}

#[test]
fn facets_count_folders_with_their_subfolders_and_cameras_by_use() {
    let dir = tempfile::tempdir().unwrap();
    let mut lib = Library::open_or_create(dir.path(), &model(4), false).unwrap();
    assert_eq!(lib.facets().unwrap(), crate::search::Facets::default());
    let v = unit(vec![1.0, 0.0, 0.0, 0.0]);
    lib.commit(vec![
        put(record("/p/a/1.jpg", "h1", 300, Some("Canon")), v.clone()),
        put(record("/p/a/b/2.jpg", "h2", 100, Some("Nikon")), v.clone()),
        put(record("/p/ab/3.jpg", "h3", 200, Some("Canon")), v.clone()),
        put(record("/p/a/b/4.jpg", "h4", 400, None), v),
    ])
    .unwrap();
    let f = lib.facets().unwrap();
    let folders: Vec<(&str, usize)> = f
        .folders
        .iter()
        .map(|x| (x.value.as_str(), x.count))
        .collect();
    // "/p/ab" is not under "/p/a".
    assert_eq!(folders, [("/p/a", 3), ("/p/a/b", 2), ("/p/ab", 1)]);
    let cameras: Vec<(&str, usize)> = f
        .cameras
        .iter()
        .map(|x| (x.value.as_str(), x.count))
        .collect();
    assert_eq!(cameras, [("Canon", 2), ("Nikon", 1)]);
    assert_eq!((f.first_taken_at, f.last_taken_at), (Some(100), Some(400)));
}

#[test]
fn score_profile_is_the_mean_and_spread_of_the_cosines() {
    let dir = tempfile::tempdir().unwrap();
    let mut lib = Library::open_or_create(dir.path(), &model(2), false).unwrap();
    let q = vec![1.0, 0.0];
    assert_eq!(lib.score_profile(&q, 100).unwrap(), None);
    lib.commit(vec![
        put(record("/p/1.jpg", "h1", 0, None), vec![1.0, 0.0]),
        put(record("/p/2.jpg", "h2", 0, None), vec![0.0, 1.0]),
    ])
    .unwrap();
    let p = lib.score_profile(&q, 100).unwrap().unwrap();
    assert_eq!(p.sampled, 2);
    assert!(
        (p.mean - 0.5).abs() < 1e-6 && (p.std - 0.5).abs() < 1e-6,
        "{p:?}"
    );
    // A sample of one row of two.
    assert_eq!(lib.score_profile(&q, 1).unwrap().unwrap().sampled, 1);
    assert!(lib.score_profile(&[1.0], 10).is_err());
}
