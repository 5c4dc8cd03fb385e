//! Searching the library: query terms with weights, filters, the choice
//! between an exact scan and the HNSW graph, and fusion with keyword hits.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use crate::error::StoreError;
use crate::library::{CatalogEntry, Library};
use crate::record::PhotoRecord;

/// Libraries with at most this many vectors are always scanned exactly,
/// and only larger ones keep an HNSW graph. Measured with
/// `benches/library.rs` (Zen 3, 2 cores, 512-d): at 100,000 vectors the
/// int8 scan with its AVX2 kernel takes 4.8 ms p50 (memory-bound: 52 MB of
/// codes) and the graph 19 ms (ef 128, recall@10 1.0). The scan grows
/// linearly and the graph slowly, so they meet near 400,000; switching at
/// 250,000 keeps a margin for faster memory or a slower CPU.
pub const EXACT_SCAN_MAX: usize = 250_000;
/// Filters matching at most this many photos are answered by an exact scan
/// of those photos rather than by the graph.
pub const EXACT_FILTERED_MAX: usize = 20_000;
/// Beam width of graph searches (at least `k`).
pub const GRAPH_EF: usize = 128;
/// Reciprocal-rank-fusion constant (Cormack et al. 2009).
const RRF_K: f32 = 60.0;

/// How to find the nearest vectors.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchMethod {
    /// Pick per query: exact for small libraries and restrictive filters,
    /// the graph otherwise.
    #[default]
    Auto,
    /// Compare the query with every (matching) vector.
    Exact,
    /// Search the HNSW graph.
    Graph,
}

/// Restrictions on which photos may be returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filters {
    /// Taken at or after this time (seconds since the epoch).
    pub after: Option<i64>,
    /// Taken before this time (seconds since the epoch).
    pub before: Option<i64>,
    /// Under this folder (absolute path; sub-folders included).
    pub folder: Option<String>,
    /// Camera make or model contains this text (case-insensitive).
    pub camera: Option<String>,
}

impl Filters {
    /// Whether any restriction is set.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub(crate) fn accepts(&self, entry: &CatalogEntry) -> bool {
        if self.after.is_some_and(|t| entry.taken_at < t) {
            return false;
        }
        if self.before.is_some_and(|t| entry.taken_at >= t) {
            return false;
        }
        if let Some(folder) = &self.folder {
            let folder = folder.trim_end_matches(std::path::MAIN_SEPARATOR);
            let inside = entry.path.strip_prefix(folder).is_some_and(|rest| {
                rest.starts_with(std::path::MAIN_SEPARATOR) || folder.is_empty()
            });
            if !inside {
                return false;
            }
        }
        if let Some(camera) = &self.camera {
            let camera = camera.to_lowercase();
            if !entry
                .camera_lower
                .as_deref()
                .is_some_and(|c| c.contains(&camera))
            {
                return false;
            }
        }
        true
    }
}

/// A search: a query vector (already combined from weighted terms), the
/// words to match against names and folders, filters and a page.
#[derive(Clone, Debug, Default)]
pub struct SearchRequest {
    /// Unit-length query embedding.
    pub vector: Vec<f32>,
    /// Words for the keyword index (hybrid ranking); empty for none.
    pub keywords: String,
    /// Which photos may be returned.
    pub filters: Filters,
    /// How many results.
    pub k: usize,
    /// How many of the best results to skip (paging).
    pub offset: usize,
    /// Exact scan, graph, or let the library choose.
    pub method: SearchMethod,
    /// A photo to leave out (the one "more like this" started from).
    pub exclude: Option<u64>,
}

/// One result.
#[derive(Clone, Debug, Serialize)]
pub struct SearchHit {
    /// The photo's id.
    pub id: u64,
    /// Cosine similarity of the photo's embedding to the query vector.
    pub score: f32,
    /// Rank among keyword matches (0 = best), if its name, folder or camera
    /// matched the query words.
    pub keyword_rank: Option<usize>,
    /// The photo.
    pub record: PhotoRecord,
}

/// The results of a search.
#[derive(Clone, Debug, Serialize)]
pub struct SearchResults {
    /// The page of results, best first.
    pub hits: Vec<SearchHit>,
    /// How the vectors were searched.
    pub method: SearchMethod,
    /// How many photos passed the filters (all photos without filters).
    pub candidates: usize,
}

/// How a query vector scores against the library as a whole: the
/// background that tells a real match from the best of a bad lot.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ScoreProfile {
    /// Mean cosine over the sample.
    pub mean: f32,
    /// Standard deviation of the cosines over the sample.
    pub std: f32,
    /// How many photos were sampled.
    pub sampled: usize,
}

/// A value photos can be filtered by, with how many photos have it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Facet {
    /// The folder (absolute path) or camera name.
    pub value: String,
    /// Photos with it (for folders: directly in it or below).
    pub count: usize,
}

/// What the library's photos can be filtered by: for filter menus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Facets {
    /// Folders that directly hold photos, with the photos under each,
    /// by path.
    pub folders: Vec<Facet>,
    /// Camera names ([`PhotoMetadata::camera`](crate::PhotoMetadata::camera)),
    /// most photos first.
    pub cameras: Vec<Facet>,
    /// The earliest `taken_at`, if there are photos.
    pub first_taken_at: Option<i64>,
    /// The latest `taken_at`.
    pub last_taken_at: Option<i64>,
}

/// One term of a query: text and its weight (negative to push away).
#[derive(Clone, Debug, PartialEq)]
pub struct QueryTerm {
    /// What to embed.
    pub text: String,
    /// Its weight: `1` by default, `-1` for `-term`, `w` for `w:term`.
    pub weight: f32,
}

/// Parses a query with weighted and negative terms:
/// `2:golden retriever -people` is `golden retriever` with weight 2 minus
/// `people`. A term runs until the next word that starts a new one: a word
/// prefixed `-`, `+` or `w:` (w a number in (0, 10]), or one after a lone
/// `-`/`+`. Double quotes group words and keep them literal (`"2:30 pm"`).
pub fn parse_query(text: &str) -> Result<Vec<QueryTerm>, StoreError> {
    let mut terms: Vec<QueryTerm> = Vec::new();
    let mut pending_sign: Option<f32> = None;
    let mut current: Option<QueryTerm> = None;
    for (word, quoted) in words(text) {
        let mut sign = pending_sign.take();
        let mut body = word.as_str();
        let mut weight = None;
        if !quoted {
            if body == "-" || body == "+" {
                if let Some(t) = current.take() {
                    terms.push(t);
                }
                pending_sign = Some(if body == "-" { -1.0 } else { 1.0 });
                continue;
            }
            if let Some(rest) = body.strip_prefix('-').filter(|r| !r.is_empty()) {
                sign = Some(-1.0);
                body = rest;
            } else if let Some(rest) = body.strip_prefix('+').filter(|r| !r.is_empty()) {
                sign = Some(1.0);
                body = rest;
            }
            if let Some((w, rest)) = body.split_once(':') {
                if let Ok(w) = w.parse::<f32>() {
                    if w > 0.0 && w <= 10.0 && !rest.is_empty() {
                        weight = Some(w);
                        body = rest;
                    }
                }
            }
        }
        let starts_term = sign.is_some() || weight.is_some() || current.is_none();
        if starts_term {
            if let Some(t) = current.take() {
                terms.push(t);
            }
            current = Some(QueryTerm {
                text: body.to_string(),
                weight: sign.unwrap_or(1.0) * weight.unwrap_or(1.0),
            });
        } else if let Some(t) = current.as_mut() {
            t.text.push(' ');
            t.text.push_str(body);
        }
    }
    terms.extend(current);
    terms.retain(|t| !t.text.trim().is_empty());
    if terms.is_empty() {
        return Err(StoreError::BadQuery(
            "the query is empty; type what the photos show, e.g. \"dog on a beach\"".into(),
        ));
    }
    if terms.iter().all(|t| t.weight <= 0.0) {
        return Err(StoreError::BadQuery(
            "the query has only negative terms; add what you are looking for, e.g. \"beach -people\""
                .into(),
        ));
    }
    Ok(terms)
}

/// Splits on white space, keeping double-quoted runs together (flagged).
fn words(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_quotes = false;
    let mut was_quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                if in_quotes {
                    out.push((std::mem::take(&mut current), true));
                    was_quoted = false;
                } else {
                    if !current.is_empty() {
                        // `-"red car"`: the sign before the quote.
                        out.push((std::mem::take(&mut current), false));
                    }
                    was_quoted = true;
                }
                in_quotes = !in_quotes;
            }
            c if c.is_whitespace() && !in_quotes => {
                if !current.is_empty() {
                    out.push((std::mem::take(&mut current), was_quoted));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push((current, was_quoted && in_quotes));
    }
    out
}

/// The query vector of weighted terms: `Σ wᵢ·eᵢ` over the unit-length term
/// embeddings, renormalised to unit length. Fails when the terms cancel out.
pub fn combine_terms(weighted: &[(f32, Vec<f32>)]) -> Result<Vec<f32>, StoreError> {
    let dim = weighted.first().map_or(0, |(_, v)| v.len());
    let mut sum = vec![0f32; dim];
    for (weight, vector) in weighted {
        let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        for (s, x) in sum.iter_mut().zip(vector) {
            *s += weight * x / norm;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm.is_nan() || norm <= 1e-6 {
        return Err(StoreError::BadQuery(
            "the query's terms cancel each other out; change their weights".into(),
        ));
    }
    Ok(sum.into_iter().map(|x| x / norm).collect())
}

impl Library {
    /// Runs a search. See [`SearchRequest`].
    pub fn search(&mut self, request: &SearchRequest) -> Result<SearchResults, StoreError> {
        let dim = self.header().model.dim;
        if request.vector.len() != dim {
            return Err(StoreError::WrongDimension {
                expected: dim,
                got: request.vector.len(),
            });
        }
        let want = request.k.saturating_add(request.offset);
        if want == 0 {
            return Ok(SearchResults {
                hits: Vec::new(),
                method: request.method,
                candidates: 0,
            });
        }
        // Which photos pass the filters (None: all of them).
        let allowed: Option<HashSet<u64>> = if request.filters.is_empty() {
            None
        } else {
            let catalog = self.catalog()?;
            Some(
                catalog
                    .iter()
                    .filter(|(_, e)| request.filters.accepts(e))
                    .map(|(id, _)| *id)
                    .collect(),
            )
        };
        let exclude = request.exclude;
        let keep =
            |id: u64| Some(id) != exclude && allowed.as_ref().is_none_or(|set| set.contains(&id));
        let restricted = allowed.is_some() || exclude.is_some();
        let live = self.vectors()?.len();
        let candidates = allowed.as_ref().map_or(live, HashSet::len);
        let method = match request.method {
            SearchMethod::Auto if live <= EXACT_SCAN_MAX || candidates <= EXACT_FILTERED_MAX => {
                SearchMethod::Exact
            }
            SearchMethod::Auto => SearchMethod::Graph,
            chosen => chosen,
        };
        // Fetch more than a page when fusing with keyword hits.
        let fusing = !request.keywords.trim().is_empty();
        let depth = if fusing { want * 2 + 50 } else { want };
        // The scan and the graph rank by quantised vectors: take a margin
        // of candidates, re-score them exactly, keep `depth`.
        let scan_depth = depth + depth / 4 + 8;
        let keep_ref: Option<&(dyn Fn(u64) -> bool + Sync)> =
            if restricted { Some(&keep) } else { None };
        let semantic = match method {
            SearchMethod::Graph => {
                let (graph, set) = self.graph()?;
                let found = graph.search(
                    set,
                    &request.vector,
                    scan_depth,
                    GRAPH_EF.max(scan_depth),
                    keep_ref,
                );
                if found.len() < scan_depth.min(candidates) {
                    // A restrictive filter starved the graph: scan instead.
                    set.top_k(&request.vector, scan_depth, keep_ref)
                } else {
                    found
                }
            }
            _ => self.vectors()?.top_k(&request.vector, scan_depth, keep_ref),
        };

        let semantic = self.rerank(&request.vector, semantic, depth)?;
        let ranked: Vec<(u64, Option<usize>)> = if fusing {
            let keyword_hits: Vec<u64> = self
                .keywords()?
                .search(&request.keywords, depth)
                .into_iter()
                .map(|(id, _)| id)
                .filter(|id| keep(*id))
                .collect();
            fuse(&semantic, &keyword_hits)
        } else {
            semantic.iter().map(|(id, _)| (*id, None)).collect()
        };
        let scores: HashMap<u64, f32> = semantic.iter().copied().collect();
        let mut hits = Vec::with_capacity(request.k);
        for (id, keyword_rank) in ranked.into_iter().skip(request.offset).take(request.k) {
            let Some(record) = self.photo(id)? else {
                continue;
            };
            let score = match scores.get(&id) {
                Some(s) => *s,
                None => self
                    .embedding(id)?
                    .map_or(0.0, |v| crate::vectors::dot(&v, &request.vector)),
            };
            hits.push(SearchHit {
                id,
                score,
                keyword_rank,
                record,
            });
        }
        Ok(SearchResults {
            hits,
            method,
            candidates,
        })
    }

    /// `candidates` re-scored with the exact f32 embeddings from the
    /// database, best first, at most `depth`.
    fn rerank(
        &self,
        vector: &[f32],
        candidates: Vec<(u64, f32)>,
        depth: usize,
    ) -> Result<Vec<(u64, f32)>, StoreError> {
        let mut exact = Vec::with_capacity(candidates.len());
        for (id, approximate) in candidates {
            let score = match self.embedding(id)? {
                Some(stored) => crate::vectors::dot(&stored, vector),
                None => approximate,
            };
            exact.push((id, score));
        }
        exact.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        exact.truncate(depth);
        Ok(exact)
    }

    /// The distribution of `vector`'s cosine to (a sample of at most
    /// `max_sample` of) the library's photos. `None` for an empty library.
    pub fn score_profile(
        &mut self,
        vector: &[f32],
        max_sample: usize,
    ) -> Result<Option<ScoreProfile>, StoreError> {
        let dim = self.header().model.dim;
        if vector.len() != dim {
            return Err(StoreError::WrongDimension {
                expected: dim,
                got: vector.len(),
            });
        }
        let scores = self.vectors()?.sample_scores(vector, max_sample);
        if scores.is_empty() {
            return Ok(None);
        }
        let n = scores.len() as f64;
        let mean = scores.iter().map(|s| f64::from(*s)).sum::<f64>() / n;
        let var = scores
            .iter()
            .map(|s| (f64::from(*s) - mean).powi(2))
            .sum::<f64>()
            / n;
        Ok(Some(ScoreProfile {
            mean: mean as f32,
            std: var.sqrt() as f32,
            sampled: scores.len(),
        }))
    }

    /// The folders, cameras and date range of the library's photos.
    pub fn facets(&self) -> Result<Facets, StoreError> {
        let mut folders: HashMap<String, usize> = HashMap::new();
        let mut cameras: HashMap<String, usize> = HashMap::new();
        let mut facets = Facets::default();
        for record in self.photos() {
            let record = record?;
            if let Some(parent) = std::path::Path::new(&record.path).parent() {
                *folders
                    .entry(parent.to_string_lossy().into_owned())
                    .or_default() += 1;
            }
            if let Some(camera) = record.meta.camera() {
                *cameras.entry(camera).or_default() += 1;
            }
            let t = record.meta.taken_at;
            facets.first_taken_at = Some(facets.first_taken_at.map_or(t, |f| f.min(t)));
            facets.last_taken_at = Some(facets.last_taken_at.map_or(t, |l| l.max(t)));
        }
        // A folder's count includes its sub-folders' photos.
        let direct: Vec<(String, usize)> = folders.into_iter().collect();
        let mut folders: Vec<Facet> = direct
            .iter()
            .map(|(folder, _)| Facet {
                value: folder.clone(),
                count: direct
                    .iter()
                    .filter(|(other, _)| {
                        other == folder
                            || other
                                .strip_prefix(folder.as_str())
                                .is_some_and(|rest| rest.starts_with(std::path::MAIN_SEPARATOR))
                    })
                    .map(|(_, n)| n)
                    .sum(),
            })
            .collect();
        folders.sort_by(|a, b| a.value.cmp(&b.value));
        let mut cameras: Vec<Facet> = cameras
            .into_iter()
            .map(|(value, count)| Facet { value, count })
            .collect();
        cameras.sort_by(|a, b| b.count.cmp(&a.count).then(a.value.cmp(&b.value)));
        facets.folders = folders;
        facets.cameras = cameras;
        Ok(facets)
    }

    /// The exact top-`k` (ids and cosines) for `vector` by brute force, and
    /// the graph's top-`k` with beam width `ef`: for recall measurements.
    pub fn compare_methods(
        &mut self,
        vector: &[f32],
        k: usize,
        ef: usize,
    ) -> Result<(Vec<u64>, Vec<u64>), StoreError> {
        let (graph, set) = self.graph()?;
        let exact = set
            .top_k(vector, k, None)
            .into_iter()
            .map(|x| x.0)
            .collect();
        let approx = graph
            .search(set, vector, k, ef, None)
            .into_iter()
            .map(|x| x.0)
            .collect();
        Ok((exact, approx))
    }
}

/// Reciprocal rank fusion of the semantic ranking with keyword hits; each
/// id comes with its keyword rank, if any.
fn fuse(semantic: &[(u64, f32)], keyword: &[u64]) -> Vec<(u64, Option<usize>)> {
    let mut score: HashMap<u64, (f32, Option<usize>)> = HashMap::new();
    for (rank, (id, _)) in semantic.iter().enumerate() {
        score.entry(*id).or_default().0 += 1.0 / (RRF_K + rank as f32 + 1.0);
    }
    for (rank, id) in keyword.iter().enumerate() {
        let entry = score.entry(*id).or_default();
        entry.0 += 1.0 / (RRF_K + rank as f32 + 1.0);
        entry.1 = Some(rank);
    }
    let semantic_rank: HashMap<u64, usize> = semantic
        .iter()
        .enumerate()
        .map(|(r, (id, _))| (*id, r))
        .collect();
    let mut out: Vec<(u64, f32, Option<usize>)> =
        score.into_iter().map(|(id, (s, k))| (id, s, k)).collect();
    out.sort_by(|a, b| {
        b.1.total_cmp(&a.1).then_with(|| {
            let ra = semantic_rank.get(&a.0).copied().unwrap_or(usize::MAX);
            let rb = semantic_rank.get(&b.0).copied().unwrap_or(usize::MAX);
            ra.cmp(&rb).then(a.0.cmp(&b.0))
        })
    });
    out.into_iter().map(|(id, _, k)| (id, k)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str) -> Vec<(String, f32)> {
        parse_query(text)
            .unwrap()
            .into_iter()
            .map(|t| (t.text, t.weight))
            .collect()
    }

    #[test]
    fn parses_weights_and_negations() {
        assert_eq!(
            terms("dog on a beach"),
            vec![("dog on a beach".into(), 1.0)]
        );
        assert_eq!(
            terms("2:golden retriever -people"),
            vec![("golden retriever".into(), 2.0), ("people".into(), -1.0)]
        );
        assert_eq!(
            terms("2:golden retriever - people"),
            vec![("golden retriever".into(), 2.0), ("people".into(), -1.0)]
        );
        assert_eq!(
            terms("beach -\"red car\" +0.5:sunset"),
            vec![
                ("beach".into(), 1.0),
                ("red car".into(), -1.0),
                ("sunset".into(), 0.5)
            ]
        );
        assert_eq!(
            terms("t-shirt on a line"),
            vec![("t-shirt on a line".into(), 1.0)]
        );
        assert_eq!(
            terms("meeting at 12:30"),
            vec![("meeting at 12:30".into(), 1.0)]
        );
        assert_eq!(terms("\"2:30 pm\""), vec![("2:30 pm".into(), 1.0)]);
    }

    #[test]
    fn rejects_empty_and_negative_only_queries() {
        assert!(matches!(parse_query("   "), Err(StoreError::BadQuery(_))));
        assert!(matches!(
            parse_query("-people"),
            Err(StoreError::BadQuery(_))
        ));
        assert!(matches!(parse_query("- -"), Err(StoreError::BadQuery(_))));
    }

    #[test]
    fn combine_weights_then_renormalises() {
        let v = combine_terms(&[(2.0, vec![1.0, 0.0]), (-1.0, vec![0.0, 2.0])]).unwrap();
        let expected = [2.0 / 5f32.sqrt(), -1.0 / 5f32.sqrt()];
        assert!((v[0] - expected[0]).abs() < 1e-6 && (v[1] - expected[1]).abs() < 1e-6);
        assert!(combine_terms(&[(1.0, vec![1.0, 0.0]), (-1.0, vec![1.0, 0.0])]).is_err());
    }

    #[test]
    fn fusion_promotes_keyword_matches() {
        let semantic = vec![(1, 0.9), (2, 0.8), (3, 0.7)];
        let fused = fuse(&semantic, &[3]);
        assert_eq!(fused[0], (3, Some(0)));
        assert_eq!(fused[1], (1, None));
        assert_eq!(
            fuse(&semantic, &[]).iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
    }
}
