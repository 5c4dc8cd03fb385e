//! The live embeddings in memory, and the exact (brute-force) top-k scan
//! over them. The scan is the ground truth the HNSW graph is measured
//! against, and the faster choice for small libraries and for restrictive
//! filters.
//!
//! Rows are kept as **int8 codes with one f32 scale per row** (symmetric
//! absmax quantisation: `v ≈ scale · code`, `scale = max|v| / 127`): a
//! 512-d embedding takes 516 bytes instead of 2,048, and the scan — bound
//! by memory bandwidth — reads a quarter of the bytes. The query stays f32,
//! or nearly: where the CPU has AVX512_VNNI it is held as int16 for the
//! `vpdpwssd` kernel (see [`QueryDot`]).
//! Scores from the scan are therefore approximate (≈ 1e-3 for CLIP vectors);
//! [`Library::search`](crate::Library::search) re-scores the best
//! candidates with the exact f32 embeddings kept in sled, so the scores it
//! returns are exact and only the choice of candidates is approximate.
//!
//! Once [`VectorSet::build_sketches`] has been called (a server warming
//! up), a large unfiltered scan (from [`SKETCH_MIN_ROWS`] rows) reads a
//! 2-bit sketch of every row first (see [`crate::sketch`]): a quarter of
//! the bytes of the int8 rows. Its best [`sketch_candidates`] are scored
//! with the int8 rows as above; the rest are never read at int8.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use rayon::prelude::*;

use crate::sketch::{SketchQuery, Sketcher};

/// Above this many rows the scan is split across threads.
const PARALLEL_SCAN_ROWS: usize = 16_384;

/// Rows scored per kernel call by an unfiltered scan.
const SCAN_BLOCK: usize = 256;

/// From this many rows an unfiltered scan goes through the 2-bit sketches
/// first (below it the int8 rows take ~1 ms or less to scan, and the
/// candidates' random reads would eat most of what the sketches save).
const SKETCH_MIN_ROWS: usize = 32_768;

/// How many of the sketch pass's best rows go on to be scored with the
/// int8 rows for a scan of the best `k`: 64·k, at least 4,096. A 2-bit
/// estimate is off by ~0.015 (of a unit vector's norm), the scores of a
/// weak text-like query's best thousand rows lie within a few hundredths,
/// so the true top 10 can rank anywhere in the first thousand or two. In a
/// simulation of a library with a CLIP-like spectrum (100k rows, mean
/// cosine between rows 0.5, 200 queries whose best cosine is ~0.3) recall@10
/// of the first 1,024 was 0.994, of the first 2,048 0.9995, of the first
/// 4,096 1.000 (4-bit sketches: 1.000 from the first 256);
/// `benches/library.rs` measures the scan's recall on such a library
/// against the exact f32 ranking. Scoring 4,096 int8 rows reads 2 MB,
/// scattered (~0.1 ms a thousand rows on one core); the 2-bit pass reads
/// 13 MB less than a 4-bit one.
fn sketch_candidates(k: usize) -> usize {
    k.saturating_mul(64).max(4_096)
}

/// Buckets of the histogram that finds the sketch pass's threshold.
const ESTIMATE_BUCKETS: usize = 4_096;

/// Candidate rows scored ahead of the one being scored: their codes are
/// asked of the cache first (the rows are scattered over the library).
const CANDIDATE_PREFETCH: usize = 4;

/// All live embeddings, one quantised row per photo, contiguous for a fast
/// scan.
pub(crate) struct VectorSet {
    dim: usize,
    ids: Vec<u64>,
    vids: Vec<u64>,
    codes: Vec<i8>,
    scales: Vec<f32>,
    /// The rows' 2-bit sketches, once [`build_sketches`](Self::build_sketches)
    /// asked for them.
    sketches: Option<Sketches>,
    row_of_id: HashMap<u64, usize>,
    id_of_vid: HashMap<u64, u64>,
}

/// `vector` as int8 codes and a scale (absmax / 127).
pub(crate) fn quantize(vector: &[f32], codes: &mut [i8]) -> f32 {
    let max = vector.iter().fold(0f32, |m, x| m.max(x.abs()));
    if max == 0.0 || !max.is_finite() {
        codes.fill(0);
        return 0.0;
    }
    let scale = max / 127.0;
    let inv = 127.0 / max;
    // Adding and taking off 1.5·2²³ rounds to the nearest integer (ties to
    // even) for |v| < 2²²: no libm call (`round` is one on baseline
    // x86-64), so the loop vectorises.
    const ROUND: f32 = 12_582_912.0;
    for (c, x) in codes.iter_mut().zip(vector) {
        let v = (x * inv).clamp(-127.0, 127.0);
        *c = ((v + ROUND) - ROUND) as i8;
    }
    scale
}

impl VectorSet {
    pub(crate) fn new(dim: usize) -> Self {
        Self {
            dim,
            ids: Vec::new(),
            vids: Vec::new(),
            codes: Vec::new(),
            scales: Vec::new(),
            sketches: None,
            row_of_id: HashMap::new(),
            id_of_vid: HashMap::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// Adds or replaces the vector of photo `id`, stored under version
    /// `vid` (a new vid per embedding, so the graph can tell versions apart).
    pub(crate) fn upsert(&mut self, id: u64, vid: u64, vector: &[f32]) {
        debug_assert_eq!(vector.len(), self.dim);
        let row = self.row_for(id, vid);
        let dim = self.dim;
        self.scales[row] = quantize(vector, &mut self.codes[row * dim..(row + 1) * dim]);
        self.sketch_row(row);
    }

    /// Rewrites row `row`'s sketch (where sketches are kept) from its int8
    /// codes.
    fn sketch_row(&mut self, row: usize) {
        let dim = self.dim;
        if let Some(sketches) = &mut self.sketches {
            let codes = &self.codes[row * dim..(row + 1) * dim];
            sketches.write(row, codes, self.scales[row]);
        }
    }

    /// Builds the 2-bit sketch of every row (on all threads), kept up to
    /// date from then on, so that large unfiltered scans read them first.
    /// Worth it for a process that answers many queries (a server warming
    /// up), not for a single search: 100k rows take ≈ 0.1 s.
    pub(crate) fn build_sketches(&mut self) {
        if self.sketches.is_none() {
            self.sketches = Some(Sketches::build(self.dim, &self.codes, &self.scales));
        }
    }

    /// The row of photo `id`, now under version `vid`: its own, or a new
    /// one at the end (contents to be written by the caller).
    fn row_for(&mut self, id: u64, vid: u64) -> usize {
        let row = match self.row_of_id.get(&id) {
            Some(&row) => {
                self.id_of_vid.remove(&self.vids[row]);
                self.vids[row] = vid;
                row
            }
            None => {
                let row = self.ids.len();
                self.row_of_id.insert(id, row);
                self.ids.push(id);
                self.vids.push(vid);
                self.codes.resize((row + 1) * self.dim, 0);
                self.scales.push(0.0);
                if let Some(sketches) = &mut self.sketches {
                    sketches.push();
                }
                row
            }
        };
        self.id_of_vid.insert(vid, id);
        row
    }

    /// [`upsert`](Self::upsert) for many vectors (the vectors of a
    /// library being loaded), quantised on all threads.
    pub(crate) fn upsert_batch(&mut self, items: &[(u64, u64, Vec<f32>)]) {
        let dim = self.dim;
        let encoded: Vec<(Vec<i8>, f32)> = items
            .par_iter()
            .map(|(_, _, vector)| {
                let mut codes = vec![0i8; dim];
                let scale = quantize(vector, &mut codes);
                (codes, scale)
            })
            .collect();
        for ((id, vid, _), (codes, scale)) in items.iter().zip(encoded) {
            let row = self.row_for(*id, *vid);
            self.codes[row * dim..(row + 1) * dim].copy_from_slice(&codes);
            self.scales[row] = scale;
            self.sketch_row(row);
        }
    }

    /// Removes photo `id`'s vector (the last row moves into its place).
    pub(crate) fn remove(&mut self, id: u64) {
        let Some(row) = self.row_of_id.remove(&id) else {
            return;
        };
        self.id_of_vid.remove(&self.vids[row]);
        let last = self.ids.len() - 1;
        if row != last {
            self.ids.swap(row, last);
            self.vids.swap(row, last);
            self.scales.swap(row, last);
            let (head, tail) = self.codes.split_at_mut(last * self.dim);
            head[row * self.dim..(row + 1) * self.dim].copy_from_slice(&tail[..self.dim]);
            if let Some(sketches) = &mut self.sketches {
                sketches.move_last_to(row);
            }
            self.row_of_id.insert(self.ids[row], row);
        }
        self.ids.pop();
        self.vids.pop();
        self.scales.pop();
        self.codes.truncate(last * self.dim);
        if let Some(sketches) = &mut self.sketches {
            sketches.pop();
        }
    }

    /// Whether photo `id` has a vector.
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.row_of_id.contains_key(&id)
    }

    /// Photo `id`'s vector as kept (dequantised: approximate).
    #[cfg(test)]
    pub(crate) fn get(&self, id: u64) -> Option<Vec<f32>> {
        let row = *self.row_of_id.get(&id)?;
        Some(self.dequantize(row))
    }

    fn dequantize(&self, row: usize) -> Vec<f32> {
        dequantize(
            &self.codes[row * self.dim..(row + 1) * self.dim],
            self.scales[row],
        )
    }

    /// The approximate cosine of `query` with row `row`, by `kernel`.
    fn score(&self, query: &QueryDot, row: usize) -> f32 {
        self.scales[row] * query.dot(&self.codes[row * self.dim..(row + 1) * self.dim])
    }

    /// The photo whose *current* vector has version `vid`; `None` for a
    /// replaced or removed version (a tombstone in the graph).
    pub(crate) fn id_of_vid(&self, vid: u64) -> Option<u64> {
        self.id_of_vid.get(&vid).copied()
    }

    /// `(id, vid, vector)` of every row, dequantised.
    pub(crate) fn rows(&self) -> impl Iterator<Item = (u64, u64, Vec<f32>)> + '_ {
        (0..self.ids.len()).map(|row| (self.ids[row], self.vids[row], self.dequantize(row)))
    }

    /// Bytes held by the vectors and their maps (for `status` and the
    /// RAM-per-photo figure).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.codes.capacity()
            + self.scales.capacity() * 4
            + self.sketches.as_ref().map_or(0, Sketches::heap_bytes)
            + (self.ids.capacity() + self.vids.capacity()) * 8
            + (self.row_of_id.capacity() + self.id_of_vid.capacity()) * 24
    }

    /// Scores of `query` against an evenly spread sample of at most `max`
    /// rows (all of them when there are fewer): the background a query's
    /// hits are judged against.
    pub(crate) fn sample_scores(&self, query: &[f32], max: usize) -> Vec<f32> {
        let n = self.ids.len();
        if n == 0 || max == 0 {
            return Vec::new();
        }
        let step = n.div_ceil(max).max(1);
        let query = QueryDot::new(query);
        (0..n)
            .step_by(step)
            .map(|row| self.score(&query, row))
            .collect()
    }

    /// The `k` rows most similar to `query` (dot product: vectors are unit
    /// length, so this is the cosine), best first, among the ids `keep`
    /// accepts.
    pub(crate) fn top_k(
        &self,
        query: &[f32],
        k: usize,
        keep: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        self.top_k_from(query, k, keep, SKETCH_MIN_ROWS)
    }

    /// [`top_k`](Self::top_k), with the sketch pass from `sketch_min_rows`
    /// rows (tests compare both paths).
    fn top_k_from(
        &self,
        query: &[f32],
        k: usize,
        keep: Option<&(dyn Fn(u64) -> bool + Sync)>,
        sketch_min_rows: usize,
    ) -> Vec<(u64, f32)> {
        if k == 0 || self.ids.is_empty() {
            return Vec::new();
        }
        let query_dot = QueryDot::new(query);
        let scan = |rows: std::ops::Range<usize>| {
            let mut heap = BinaryHeap::with_capacity(k + 1);
            if let Some(keep) = keep {
                // Only the rows the filter keeps are read.
                for row in rows {
                    let id = self.ids[row];
                    if keep(id) {
                        let score = self.score(&query_dot, row);
                        push_top(&mut heap, k, Scored { score, id });
                    }
                }
                return heap;
            }
            let dim = self.dim;
            let kernel = |block: std::ops::Range<usize>, dots: &mut [f32]| {
                query_dot.dot_rows(&self.codes[block.start * dim..block.end * dim], dim, dots);
                for (dot, scale) in dots.iter_mut().zip(&self.scales[block]) {
                    *dot *= scale;
                }
            };
            top_of_blocks(rows, k, kernel, |row| self.ids[row])
        };
        let n = self.ids.len();
        let candidates = sketch_candidates(k);
        let sketches = self
            .sketches
            .as_ref()
            .filter(|_| keep.is_none() && n >= sketch_min_rows && candidates <= n / 8);
        let prepared = sketches.and_then(|s| Some((s, s.sketcher.query(query)?)));
        let heap = prepared
            .and_then(|(sketches, sketch_query)| {
                self.sketch_top_k(sketches, &sketch_query, query, &query_dot, k, candidates)
            })
            .unwrap_or_else(|| split_scan(n, k, scan));
        let mut out: Vec<Scored> = heap.into_vec();
        out.sort_by(|a, b| {
            b.score
                .partial_cmp(&a.score)
                .unwrap_or(Ordering::Equal)
                .then(a.id.cmp(&b.id))
        });
        out.into_iter().map(|s| (s.id, s.score)).collect()
    }

    /// The best `k` rows by their int8 scores among the best `candidates`
    /// by the sketch estimates (see the module documentation): every row's
    /// estimate and their histogram, whose top-down count gives the
    /// threshold, then the rows at or above it scored with their int8 codes,
    /// each step split across the threads. `None` where the threshold's
    /// bucket holds too many rows to be worth it (estimates that tie: many
    /// duplicates, zero vectors), for the int8 scan to do instead.
    fn sketch_top_k(
        &self,
        sketches: &Sketches,
        sketch_query: &SketchQuery,
        query: &[f32],
        query_dot: &QueryDot,
        k: usize,
        candidates: usize,
    ) -> Option<BinaryHeap<Scored>> {
        let n = self.ids.len();
        let buckets = Buckets::new(1.5 * query.iter().map(|x| x * x).sum::<f32>().sqrt());
        let part_rows = if n >= PARALLEL_SCAN_ROWS {
            n.div_ceil(rayon::current_num_threads().max(1))
        } else {
            n
        }
        .max(1);
        ESTIMATES.with(|buffer| {
            let mut estimates = std::mem::take(&mut *buffer.borrow_mut());
            // Every value is written by `estimate`.
            estimates.resize(n, 0.0);
            let histogram = sketches.estimate(sketch_query, buckets, part_rows, &mut estimates);
            let threshold = threshold_bucket(&histogram, candidates);
            let passing: usize = histogram[threshold..].iter().map(|c| *c as usize).sum();
            let heap = (passing <= 4 * candidates).then(|| {
                estimates
                    .par_chunks(part_rows)
                    .enumerate()
                    .map(|(part, estimates)| {
                        let rows = buckets.rows_at_or_above(estimates, threshold);
                        self.top_of_rows(query_dot, part * part_rows, &rows, k)
                    })
                    .reduce(BinaryHeap::new, |mut a, b| {
                        for s in b {
                            push_top(&mut a, k, s);
                        }
                        a
                    })
            });
            *buffer.borrow_mut() = estimates;
            heap
        })
    }

    /// The best `k` of rows `start + r` for `r` in `rows` (in row order),
    /// scored with their int8 codes, each asked of the cache
    /// [`CANDIDATE_PREFETCH`] rows ahead.
    fn top_of_rows(
        &self,
        query: &QueryDot,
        start: usize,
        rows: &[u32],
        k: usize,
    ) -> BinaryHeap<Scored> {
        let mut heap = BinaryHeap::with_capacity(k + 1);
        for (i, &r) in rows.iter().enumerate() {
            if let Some(&ahead) = rows.get(i + CANDIDATE_PREFETCH) {
                let ahead = start + ahead as usize;
                prefetch(&self.codes[ahead * self.dim..(ahead + 1) * self.dim]);
            }
            let row = start + r as usize;
            let score = self.score(query, row);
            push_top(
                &mut heap,
                k,
                Scored {
                    score,
                    id: self.ids[row],
                },
            );
        }
        heap
    }
}

/// The 2-bit sketch of every row, in row order (see [`crate::sketch`]),
/// made from the rows' int8 codes: a sketch quantises again what the int8
/// row kept, which changes its estimates by far less than its own 4 levels.
struct Sketches {
    sketcher: Sketcher,
    /// `sketcher.row_bytes()` per row.
    bytes: Vec<u8>,
    /// Each row's step.
    steps: Vec<f32>,
}

impl Sketches {
    /// Sketches of every row of `codes` (`dim` per row, scales `scales`),
    /// on all threads.
    fn build(dim: usize, codes: &[i8], scales: &[f32]) -> Self {
        let sketcher = Sketcher::new(dim);
        let row_bytes = sketcher.row_bytes();
        let mut bytes = vec![0u8; scales.len() * row_bytes];
        let mut steps = vec![0f32; scales.len()];
        bytes
            .par_chunks_mut(row_bytes)
            .zip(steps.par_iter_mut())
            .enumerate()
            .for_each(|(row, (out, step))| {
                let codes = &codes[row * dim..(row + 1) * dim];
                *step = sketcher.encode(&dequantize(codes, scales[row]), out);
            });
        Self {
            sketcher,
            bytes,
            steps,
        }
    }

    /// Writes row `row` from its int8 `codes` and `scale`.
    fn write(&mut self, row: usize, codes: &[i8], scale: f32) {
        let n = self.sketcher.row_bytes();
        self.steps[row] = self.sketcher.encode(
            &dequantize(codes, scale),
            &mut self.bytes[row * n..(row + 1) * n],
        );
    }

    /// Appends a row (written next by [`write`](Self::write)).
    fn push(&mut self) {
        self.bytes
            .resize(self.bytes.len() + self.sketcher.row_bytes(), 0);
        self.steps.push(0.0);
    }

    /// Moves the last row into row `row` (the last row is then popped).
    fn move_last_to(&mut self, row: usize) {
        let n = self.sketcher.row_bytes();
        let last = self.steps.len() - 1;
        self.steps[row] = self.steps[last];
        let (head, tail) = self.bytes.split_at_mut(last * n);
        head[row * n..(row + 1) * n].copy_from_slice(&tail[..n]);
    }

    /// Drops the last row.
    fn pop(&mut self) {
        self.steps.pop();
        self.bytes
            .truncate(self.steps.len() * self.sketcher.row_bytes());
    }

    fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.steps.capacity() * 4
    }

    /// Writes every row's estimate for `query` into `estimates`, parts of
    /// `part_rows` rows on separate threads, and returns their histogram
    /// over `buckets`.
    fn estimate(
        &self,
        query: &SketchQuery,
        buckets: Buckets,
        part_rows: usize,
        estimates: &mut [f32],
    ) -> Vec<u32> {
        let row_bytes = self.sketcher.row_bytes();
        estimates
            .par_chunks_mut(part_rows.max(1))
            .enumerate()
            .map(|(part, estimates)| {
                let start = part * part_rows;
                let rows = start..start + estimates.len();
                self.sketcher.dots(
                    query,
                    &self.bytes[rows.start * row_bytes..rows.end * row_bytes],
                    &self.steps[rows],
                    estimates,
                );
                // Four interleaved tables: neighbouring rows that fall in one
                // bucket do not wait for each other's increments.
                let mut counts = vec![0u32; 4 * ESTIMATE_BUCKETS];
                for (i, &e) in estimates.iter().enumerate() {
                    counts[(i & 3) * ESTIMATE_BUCKETS + buckets.of(e)] += 1;
                }
                let (first, rest) = counts.split_at_mut(ESTIMATE_BUCKETS);
                for table in rest.chunks_exact(ESTIMATE_BUCKETS) {
                    first.iter_mut().zip(table).for_each(|(a, b)| *a += b);
                }
                counts.truncate(ESTIMATE_BUCKETS);
                counts
            })
            .reduce(
                || vec![0u32; ESTIMATE_BUCKETS],
                |mut a, b| {
                    a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
                    a
                },
            )
    }
}

/// [`ESTIMATE_BUCKETS`] equal buckets over `[-bound, bound]`, where the
/// sketch pass's estimates fall (an estimate outside counts in the end
/// bucket on its side, NaN in the lowest).
#[derive(Clone, Copy)]
struct Buckets {
    bound: f32,
    scale: f32,
}

impl Buckets {
    /// Buckets for estimates up to `bound` in magnitude.
    fn new(bound: f32) -> Self {
        let bound = if bound > 0.0 && bound.is_finite() {
            bound
        } else {
            1.0
        };
        Self {
            bound,
            scale: ESTIMATE_BUCKETS as f32 / (2.0 * bound),
        }
    }

    /// `estimate`'s position in buckets: its bucket is the integer part
    /// (below 0 and NaN count as 0, beyond the last bucket as the last).
    fn position(self, estimate: f32) -> f32 {
        (estimate + self.bound) * self.scale
    }

    /// The bucket of `estimate`.
    fn of(self, estimate: f32) -> usize {
        // `max` turns NaN into 0; in range, the cast truncates.
        let position = self
            .position(estimate)
            .max(0.0)
            .min((ESTIMATE_BUCKETS - 1) as f32);
        // SAFETY: `position` is finite and in `[0, ESTIMATE_BUCKETS)`.
        (unsafe { position.to_int_unchecked::<u32>() }) as usize
    }

    /// The indices of `estimates` in bucket `bucket` or above (`of(e) >=
    /// bucket`, as one comparison), in order. A few percent are: most runs
    /// of 16 are passed over after one vectorised test.
    fn rows_at_or_above(self, estimates: &[f32], bucket: usize) -> Vec<u32> {
        if bucket == 0 {
            return (0..estimates.len() as u32).collect();
        }
        #[cfg(target_arch = "x86_64")]
        if crate::sketch::vnni() {
            let mut rows = Vec::with_capacity(estimates.len() / 8);
            // SAFETY: `vnni` checked AVX512F.
            unsafe { self.compress_at_or_above(estimates, bucket as f32, &mut rows) };
            return rows;
        }
        self.rows_at_or_above_plain(estimates, bucket)
    }

    /// [`rows_at_or_above`](Self::rows_at_or_above) in plain Rust, for CPUs
    /// without AVX-512 (and the definition the compress is tested against).
    fn rows_at_or_above_plain(self, estimates: &[f32], bucket: usize) -> Vec<u32> {
        let edge = bucket as f32;
        (0u32..)
            .zip(estimates)
            .filter(|(_, e)| bucket == 0 || self.position(**e) >= edge)
            .map(|(row, _)| row)
            .collect()
    }

    /// [`rows_at_or_above`](Self::rows_at_or_above) past its first test:
    /// 16 estimates per compare, their passing indices stored with one
    /// compress.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn compress_at_or_above(self, estimates: &[f32], edge: f32, rows: &mut Vec<u32>) {
        use std::arch::x86_64::*;
        let runs = estimates.len() / 16;
        let (bound, scale, edge_v) = (
            _mm512_set1_ps(self.bound),
            _mm512_set1_ps(self.scale),
            _mm512_set1_ps(edge),
        );
        let step = _mm512_set1_epi32(16);
        let mut index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        for run in 0..runs {
            // SAFETY: `16·run + 16 ≤ estimates.len()`; the compress writes at
            // most 16 values where 16 are reserved.
            unsafe {
                let e = _mm512_loadu_ps(estimates.as_ptr().add(16 * run));
                let position = _mm512_mul_ps(_mm512_add_ps(e, bound), scale);
                let pass = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(position, edge_v);
                if pass != 0 {
                    rows.reserve(16);
                    let len = rows.len();
                    _mm512_mask_compressstoreu_epi32(
                        rows.as_mut_ptr().add(len).cast(),
                        pass,
                        index,
                    );
                    rows.set_len(len + pass.count_ones() as usize);
                }
            }
            index = _mm512_add_epi32(index, step);
        }
        let first = 16 * runs;
        rows.extend(
            (first as u32..)
                .zip(&estimates[first..])
                .filter(|(_, e)| self.position(**e) >= edge)
                .map(|(row, _)| row),
        );
    }
}

/// The highest bucket with at least `count` values at or above it in
/// `histogram` (0 if there are fewer): the rows in it and above are the
/// best `count` and the rest of their bucket.
fn threshold_bucket(histogram: &[u32], count: usize) -> usize {
    let mut above = 0usize;
    for (bucket, c) in histogram.iter().enumerate().rev() {
        above += *c as usize;
        if above >= count {
            return bucket;
        }
    }
    0
}

thread_local! {
    /// The sketch pass's estimates, one per row, reused by the thread that
    /// asks (a 100k library's are 400 KB, kept by each thread that has
    /// scanned one: 4 bytes per photo, not counted in the library's vector
    /// bytes).
    static ESTIMATES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Asks the cache for `bytes` (a candidate's row, read soon).
fn prefetch(bytes: &[i8]) {
    #[cfg(target_arch = "x86_64")]
    for line in bytes.chunks(64) {
        // SAFETY: a prefetch only hints; the address is inside `bytes`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.as_ptr())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = bytes;
}

/// An int8 row as f32: `code · scale`.
fn dequantize(codes: &[i8], scale: f32) -> Vec<f32> {
    codes.iter().map(|c| f32::from(*c) * scale).collect()
}

/// A min-heap entry: the heap's top is the worst of the best `k` so far.
#[derive(Clone, Copy, PartialEq)]
struct Scored {
    score: f32,
    id: u64,
}

impl Eq for Scored {}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Scored {
    /// Reversed: higher scores are "less", so `BinaryHeap` (a max-heap)
    /// keeps the lowest score on top. Ties prefer the lower id.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.id.cmp(&other.id))
    }
}

/// The best `k` of `rows`, scored [`SCAN_BLOCK`] rows per `kernel` call
/// (`kernel(block, scores)` writes one score per row of `block`), each
/// entered under `id(row)` (which also breaks ties).
fn top_of_blocks(
    rows: std::ops::Range<usize>,
    k: usize,
    kernel: impl Fn(std::ops::Range<usize>, &mut [f32]),
    id: impl Fn(usize) -> u64,
) -> BinaryHeap<Scored> {
    let mut heap = BinaryHeap::with_capacity(k + 1);
    let mut worst: Option<f32> = None;
    let mut scores = [0f32; SCAN_BLOCK];
    for start in rows.clone().step_by(SCAN_BLOCK) {
        let end = (start + SCAN_BLOCK).min(rows.end);
        let scores = &mut scores[..end - start];
        kernel(start..end, scores);
        for (row, &score) in (start..end).zip(scores.iter()) {
            // Once the heap is full most rows score below its worst: one
            // comparison skips them (`push_top` would turn them away after
            // building their entry; measured ~0.1 ms of a 100k scan).
            if worst.is_some_and(|w| score.total_cmp(&w).is_lt()) {
                continue;
            }
            push_top(&mut heap, k, Scored { score, id: id(row) });
            if heap.len() == k {
                worst = heap.peek().map(|s| s.score);
            }
        }
    }
    heap
}

/// `scan` over all `n` rows, split across threads from
/// [`PARALLEL_SCAN_ROWS`] rows; the best `k` of the parts' heaps.
fn split_scan<F>(n: usize, k: usize, scan: F) -> BinaryHeap<Scored>
where
    F: Fn(std::ops::Range<usize>) -> BinaryHeap<Scored> + Sync,
{
    if n < PARALLEL_SCAN_ROWS {
        return scan(0..n);
    }
    let chunk = n.div_ceil(rayon::current_num_threads().max(1));
    (0..n)
        .step_by(chunk)
        .collect::<Vec<_>>()
        .into_par_iter()
        .map(|start| scan(start..(start + chunk).min(n)))
        .reduce(BinaryHeap::new, |mut a, b| {
            for s in b {
                push_top(&mut a, k, s);
            }
            a
        })
}

fn push_top(heap: &mut BinaryHeap<Scored>, k: usize, item: Scored) {
    if heap.len() < k {
        heap.push(item);
    } else if let Some(worst) = heap.peek() {
        if item < *worst {
            heap.pop();
            heap.push(item);
        }
    }
}

/// One query prepared for the scan kernel of this CPU, scored against
/// many rows of codes.
///
/// Where the CPU has AVX512_VNNI the query is held as int16 (scale `max|q|
/// / Q`, with `Q` ≤ 32,767 small enough that no sum can overflow int32)
/// and each row is `vpdpwssd` on its codes widened to int16: 32
/// multiply-adds per instruction, so that the scan runs at the speed of
/// memory (a 100k-photo library is 52 MB of codes per query). The query's
/// rounding, one part in ~30,000 of its largest component, is far below the
/// codes' own (one part in 254). Elsewhere the f32 query goes to
/// [`dot_codes_kernel`].
pub(crate) struct QueryDot<'a> {
    query: &'a [f32],
    fixed: Option<(Vec<i16>, f32)>,
}

impl<'a> QueryDot<'a> {
    /// Prepares `query` (once per scan).
    pub(crate) fn new(query: &'a [f32]) -> Self {
        Self {
            query,
            fixed: fixed_point_query(query),
        }
    }

    /// `query · row` for each row of `codes` (`dim` codes per row) into
    /// `out`.
    pub(crate) fn dot_rows(&self, codes: &[i8], dim: usize, out: &mut [f32]) {
        let rows = codes.chunks_exact(dim.max(1));
        match &self.fixed {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as in `dot`.
            Some((q, scale)) => unsafe { dot_rows_i16_avx512(q, *scale, rows, out) },
            _ => out
                .iter_mut()
                .zip(rows)
                .for_each(|(o, row)| *o = self.dot(row)),
        }
    }

    /// `query · codes`.
    pub(crate) fn dot(&self, codes: &[i8]) -> f32 {
        match &self.fixed {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `fixed_point_query` returns `Some` only where the CPU
            // has the kernel's features.
            Some((q, scale)) => (unsafe { dot_i16_avx512(q, codes) }) as f32 * scale,
            #[cfg(not(target_arch = "x86_64"))]
            Some(_) => unreachable!("no fixed-point kernel off x86-64"),
            None => dot_codes_kernel()(self.query, codes),
        }
    }
}

/// `query` as int16 and its scale, where the CPU has the int16 dot-product
/// kernel and the query is finite and not zero.
fn fixed_point_query(query: &[f32]) -> Option<(Vec<i16>, f32)> {
    #[cfg(target_arch = "x86_64")]
    {
        let has = crate::sketch::vnni();
        let max = query.iter().fold(0f32, |m, x| m.max(x.abs()));
        if !has || max == 0.0 || query.iter().any(|x| !x.is_finite()) {
            return None;
        }
        // |Σ q·c| ≤ len · Q · 128 must fit an i32.
        let q_max = (i32::MAX as usize / (128 * query.len().max(1))).min(i16::MAX as usize) as f32;
        if q_max < 1024.0 {
            return None;
        }
        let inv = q_max / max;
        let codes = query
            .iter()
            .map(|x| (x * inv).round().clamp(-q_max, q_max) as i16)
            .collect();
        Some((codes, max / q_max))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = query;
        None
    }
}

/// [`dot_i16_avx512`] for each row, times `scale`, into `out`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_rows_i16_avx512(
    q: &[i16],
    scale: f32,
    rows: std::slice::ChunksExact<'_, i8>,
    out: &mut [f32],
) {
    for (o, row) in out.iter_mut().zip(rows) {
        *o = dot_i16_avx512(q, row) as f32 * scale;
    }
}

/// `Σ q · codes` in int32: 64 codes per step widened to int16 and fed to
/// two `vpdpwssd`, the tail through masked loads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn dot_i16_avx512(q: &[i16], codes: &[i8]) -> i32 {
    use std::arch::x86_64::*;
    let n = q.len().min(codes.len());
    let (pq, pc) = (q.as_ptr(), codes.as_ptr());
    let mut acc = [_mm512_setzero_si512(); 2];
    let mut i = 0;
    // SAFETY: every load reads `[i, i + 32)` with `i + 32 <= n`, or is
    // masked to `[i, n)`.
    unsafe {
        while i + 64 <= n {
            for (h, acc) in acc.iter_mut().enumerate() {
                let c = _mm512_cvtepi8_epi16(_mm256_loadu_si256(pc.add(i + 32 * h).cast()));
                let x = _mm512_loadu_si512(pq.add(i + 32 * h).cast());
                *acc = _mm512_dpwssd_epi32(*acc, x, c);
            }
            i += 64;
        }
        while i < n {
            let left = (n - i).min(32);
            let mask = if left == 32 {
                u32::MAX
            } else {
                (1u32 << left) - 1
            };
            // A 512-bit masked load (AVX512BW alone), of which the low half.
            let bytes = _mm512_maskz_loadu_epi8(u64::from(mask), pc.add(i).cast());
            let c = _mm512_cvtepi8_epi16(_mm512_castsi512_si256(bytes));
            let x = _mm512_maskz_loadu_epi16(mask, pq.add(i).cast());
            acc[0] = _mm512_dpwssd_epi32(acc[0], x, c);
            i += left;
        }
        _mm512_reduce_add_epi32(_mm512_add_epi32(acc[0], acc[1]))
    }
}

/// A function computing `a · codes` (the codes widened to f32).
pub(crate) type DotCodes = fn(&[f32], &[i8]) -> f32;

/// The kernel for `a · codes` on this CPU, chosen once per process: AVX2 +
/// FMA when present, else a portable loop.
pub(crate) fn dot_codes_kernel() -> DotCodes {
    static KERNEL: std::sync::OnceLock<DotCodes> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return dot_codes_avx2;
        }
        dot_codes_portable
    })
}

/// `a · codes`, eight independent accumulators so that the compiler
/// vectorises the widening and the multiply-adds for any target.
pub(crate) fn dot_codes_portable(a: &[f32], codes: &[i8]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), codes.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * f32::from(y[i]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * f32::from(*y);
    }
    sum
}

/// `a · codes` with AVX2: 32 codes per step, sign-extended to i32,
/// converted to f32 and multiply-added into four accumulators (enough to
/// hide the FMA latency; a 512-d row is 16 steps).
#[cfg(target_arch = "x86_64")]
fn dot_codes_avx2(a: &[f32], codes: &[i8]) -> f32 {
    // SAFETY: only chosen by `dot_codes_kernel` after checking that the
    // CPU has AVX2 and FMA.
    unsafe { dot_codes_avx2_impl(a, codes) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_codes_avx2_impl(a: &[f32], codes: &[i8]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(codes.len());
    let (pa, pc) = (a.as_ptr(), codes.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load reads `[i, i + 32)` with `i + 32 <= n`, inside
    // both slices.
    unsafe {
        while i + 32 <= n {
            let c0 = _mm_loadu_si128(pc.add(i) as *const __m128i);
            let c1 = _mm_loadu_si128(pc.add(i + 16) as *const __m128i);
            let w = [
                _mm256_cvtepi8_epi32(c0),
                _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(c0, c0)),
                _mm256_cvtepi8_epi32(c1),
                _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(c1, c1)),
            ];
            for (j, (acc, w)) in acc.iter_mut().zip(w).enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                *acc = _mm256_fmadd_ps(x, _mm256_cvtepi32_ps(w), *acc);
            }
            i += 32;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        let pair = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let one = _mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1));
        let mut total = _mm_cvtss_f32(one);
        for k in i..n {
            total += *pa.add(k) * f32::from(*pc.add(k));
        }
        total
    }
}

/// `a · b`.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        sum += x * y;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn upsert_remove_keep_rows_consistent() {
        let mut set = VectorSet::new(2);
        set.upsert(1, 10, &unit(&[1.0, 0.0]));
        set.upsert(2, 11, &unit(&[0.0, 1.0]));
        set.upsert(3, 12, &unit(&[1.0, 1.0]));
        set.upsert(1, 13, &unit(&[-1.0, 0.0])); // replaced: vid 10 is a tombstone
        assert_eq!(set.id_of_vid(10), None);
        assert_eq!(set.id_of_vid(13), Some(1));
        set.remove(2);
        assert_eq!(set.len(), 2);
        assert_eq!(set.get(2), None);
        assert!(!set.contains(2) && set.contains(3));
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.005);
        assert!(close(&set.get(3).unwrap(), &unit(&[1.0, 1.0])));
        assert_eq!(set.get(1).unwrap(), vec![-1.0, 0.0]);
        let top = set.top_k(&unit(&[1.0, 0.2]), 5, None);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![3, 1]);
        let only_1 = |id: u64| id == 1;
        let top = set.top_k(&unit(&[1.0, 0.2]), 5, Some(&only_1));
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn top_k_equals_sorting_everything() {
        let dim = 16;
        let mut set = VectorSet::new(dim);
        let mut state = 7u64;
        let mut rand = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let n = PARALLEL_SCAN_ROWS + 100; // exercises the threaded path
        for id in 0..n as u64 {
            let v: Vec<f32> = (0..dim).map(|_| rand()).collect();
            set.upsert(id, id, &unit(&v));
        }
        let query = unit(&(0..dim).map(|_| rand()).collect::<Vec<_>>());
        let mut all: Vec<(u64, f32)> = (0..n)
            .map(|row| (set.ids[row], set.score(&QueryDot::new(&query), row)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(25);
        assert_eq!(set.top_k_from(&query, 25, None, usize::MAX), all);
    }

    #[test]
    fn upsert_batch_equals_upserts() {
        let dim = 130; // not a whole number of sketch blocks
        let mut state = 3u64;
        let mut rand = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let items: Vec<(u64, u64, Vec<f32>)> = (0..40u64)
            .map(|i| {
                (
                    i % 30,
                    i,
                    unit(&(0..dim).map(|_| rand()).collect::<Vec<_>>()),
                )
            })
            .collect();
        // `one` keeps sketches up to date row by row, `batch` builds them
        // at the end: the same either way.
        let (mut one, mut batch) = (VectorSet::new(dim), VectorSet::new(dim));
        one.build_sketches();
        for (id, vid, v) in &items {
            one.upsert(*id, *vid, v);
        }
        batch.upsert_batch(&items[..25]);
        batch.upsert_batch(&items[25..]);
        assert!(batch.sketches.is_none());
        batch.build_sketches();
        assert_eq!(
            (one.ids.clone(), one.vids.clone()),
            (batch.ids.clone(), batch.vids.clone())
        );
        assert_eq!((&one.codes, &one.scales), (&batch.codes, &batch.scales));
        let bytes = |set: &VectorSet| {
            let s = set.sketches.as_ref().unwrap();
            (s.bytes.clone(), s.steps.clone())
        };
        assert_eq!(bytes(&one), bytes(&batch));
        // Removing rows keeps each sketch with its row.
        for id in [0, 7, 29, 12] {
            one.remove(id);
        }
        let rebuilt = Sketches::build(dim, &one.codes, &one.scales);
        assert_eq!(bytes(&one), (rebuilt.bytes, rebuilt.steps));
        assert_eq!(batch.id_of_vid(3), None);
        assert_eq!(batch.id_of_vid(33), Some(3));
    }

    /// The sketch pass's candidates: the rows at or above a bucket are
    /// those `Buckets::of` puts there (the AVX-512 compress, where the CPU
    /// has it, and the plain filter alike), for NaN, infinite and out-of-range estimates too and
    /// lengths that are not whole runs of 16; the threshold bucket keeps at
    /// least `count` rows and, one bucket higher, fewer.
    #[test]
    fn candidates_are_the_rows_at_or_above_the_threshold_bucket() {
        let mut state = 3u64;
        let mut rand = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        let buckets = Buckets::new(1.5);
        for len in [0, 1, 15, 16, 17, 1_000, 4_099] {
            let mut estimates: Vec<f32> = (0..len).map(|_| 0.4 * rand() + 0.1).collect();
            for (i, special) in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.6, -1.6, 1.5]
                .into_iter()
                .enumerate()
            {
                if let Some(e) = estimates.get_mut(i * 7) {
                    *e = special;
                }
            }
            let mut histogram = vec![0u32; ESTIMATE_BUCKETS];
            estimates
                .iter()
                .for_each(|e| histogram[buckets.of(*e)] += 1);
            for bucket in [0, 1, 1_500, 2_048, 2_500, ESTIMATE_BUCKETS - 1] {
                let want: Vec<u32> = (0u32..)
                    .zip(&estimates)
                    .filter(|(_, e)| buckets.of(**e) >= bucket)
                    .map(|(row, _)| row)
                    .collect();
                assert_eq!(buckets.rows_at_or_above(&estimates, bucket), want);
                let plain = buckets.rows_at_or_above_plain(&estimates, bucket);
                assert_eq!(plain, want, "len {len}, bucket {bucket}");
                #[cfg(target_arch = "x86_64")]
                if crate::sketch::vnni() && bucket > 0 {
                    let mut rows = Vec::new();
                    // SAFETY: `vnni` checked AVX512F.
                    unsafe { buckets.compress_at_or_above(&estimates, bucket as f32, &mut rows) };
                    assert_eq!(rows, want, "len {len}, bucket {bucket}");
                }
            }
            for count in [1, 10, len / 3, len] {
                let t = threshold_bucket(&histogram, count);
                let at_or_above = |b: usize| histogram[b..].iter().sum::<u32>() as usize;
                assert!(at_or_above(t) >= count.min(len), "len {len}, count {count}");
                if t + 1 < ESTIMATE_BUCKETS && count <= len {
                    assert!(at_or_above(t + 1) < count, "len {len}, count {count}");
                }
            }
        }
        // NaN and -inf count in the lowest bucket, +inf in the highest.
        assert_eq!(buckets.of(f32::NAN), 0);
        assert_eq!(buckets.of(f32::NEG_INFINITY), 0);
        assert_eq!(buckets.of(f32::INFINITY), ESTIMATE_BUCKETS - 1);
        assert_eq!(buckets.of(0.0), ESTIMATE_BUCKETS / 2);
    }

    /// A large scan's sketch pass keeps every row of the int8 ranking's top
    /// 10, on clustered 512-d vectors with four large components (as CLIP
    /// embeddings have) and weak, text-like queries (cosine ≈ 0.3 to the
    /// best rows); the rows it reports keep their int8 scores; and the
    /// scan's order is the int8 scan's. Removing rows keeps the sketches
    /// with their rows.
    #[test]
    fn sketch_pass_finds_the_int8_top_10() {
        let dim = 512;
        let mut state = 23u64;
        let mut rand = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let centres: Vec<Vec<f32>> = (0..64)
            .map(|_| (0..dim).map(|_| rand()).collect())
            .collect();
        // On three threads the parts are 12,260 rows (not whole runs of 16)
        // and the last is shorter.
        let n = SKETCH_MIN_ROWS + 4_010;
        let mut set = VectorSet::new(dim);
        for id in 0..n as u64 + 50 {
            let c = &centres[id as usize % centres.len()];
            let mut v: Vec<f32> = c.iter().map(|x| x + 0.6 * rand()).collect();
            v[..4].iter_mut().for_each(|x| *x *= 6.0);
            set.upsert(id, id, &unit(&v));
        }
        set.build_sketches();
        for id in 0..50 {
            set.remove(id * 7);
        }
        assert_eq!(set.len(), n);
        let candidates = sketch_candidates(10);
        assert!(n >= SKETCH_MIN_ROWS && candidates <= n / 8);
        let sketches = set.sketches.as_ref().expect("sketches");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .expect("pool");
        for _ in 0..8 {
            let c = &centres[(rand().abs() * 60.0) as usize];
            let mut q: Vec<f32> = c.iter().map(|x| x + 2.5 * rand()).collect();
            q[..4].iter_mut().for_each(|x| *x *= 6.0);
            let q = unit(&q);
            let int8 = set.top_k_from(&q, 10, None, usize::MAX);
            assert!(int8[0].1 < 0.6, "a weak query: best {}", int8[0].1);
            pool.install(|| {
                // The sketch path itself (not a fallback) finds them...
                let sketch_query = sketches.sketcher.query(&q).expect("query");
                let heap = set
                    .sketch_top_k(
                        sketches,
                        &sketch_query,
                        &q,
                        &QueryDot::new(&q),
                        10,
                        candidates,
                    )
                    .expect("the sketch path");
                let mut found: Vec<(u64, f32)> =
                    heap.into_iter().map(|s| (s.id, s.score)).collect();
                found.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                assert_eq!(found, int8);
                // ...and so does the scan that takes it.
                assert_eq!(set.top_k(&q, 10, None), int8);
                // The parts' histograms add up to the definition's.
                let buckets = Buckets::new(1.5);
                let mut estimates = vec![0f32; n];
                let histogram =
                    sketches.estimate(&sketch_query, buckets, n.div_ceil(3), &mut estimates);
                let mut want = vec![0u32; ESTIMATE_BUCKETS];
                estimates.iter().for_each(|e| want[buckets.of(*e)] += 1);
                assert_eq!(histogram, want);
            });
        }
    }

    /// Where the sketch estimates tie (here: a library of one vector and its
    /// copies), the threshold's bucket holds nearly every row; the scan
    /// then leaves the sketches to the int8 rows, and finds the same.
    #[test]
    fn tied_estimates_fall_back_to_the_int8_scan() {
        let dim = 512;
        let v: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.11).cos()).collect();
        let n = SKETCH_MIN_ROWS + 100;
        let mut set = VectorSet::new(dim);
        for id in 0..n as u64 {
            // Ten rows differ from the copies.
            let row = if id % 3_000 == 7 { &w } else { &v };
            set.upsert(id, id, &unit(row));
        }
        set.build_sketches();
        let sketches = set.sketches.as_ref().expect("sketches");
        let q = unit(&w);
        let sketch_query = sketches.sketcher.query(&q).expect("query");
        let candidates = sketch_candidates(10);
        assert!(set
            .sketch_top_k(
                sketches,
                &sketch_query,
                &q,
                &QueryDot::new(&q),
                10,
                candidates
            )
            .is_none());
        let found = set.top_k(&q, 10, None);
        assert_eq!(found, set.top_k_from(&q, 10, None, usize::MAX));
        assert!(found.iter().all(|(id, _)| id % 3_000 == 7), "{found:?}");
    }

    #[test]
    fn int8_rows_score_within_a_hundredth_of_the_exact_cosine() {
        let dim = 512;
        let mut state = 11u64;
        let mut rand = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        let mut set = VectorSet::new(dim);
        let vectors: Vec<Vec<f32>> = (0..200)
            .map(|_| unit(&(0..dim).map(|_| rand()).collect::<Vec<_>>()))
            .collect();
        for (id, v) in vectors.iter().enumerate() {
            set.upsert(id as u64, id as u64, v);
        }
        let query = unit(&(0..dim).map(|_| rand()).collect::<Vec<_>>());
        let mut worst = 0f32;
        for (row, v) in vectors.iter().enumerate() {
            worst = worst.max((set.score(&QueryDot::new(&query), row) - dot(&query, v)).abs());
            // A vector's own score stays near 1.
            assert!((set.score(&QueryDot::new(v), row) - 1.0).abs() < 0.01);
        }
        assert!(worst < 0.01, "{worst}");
        assert!(set.heap_bytes() < 200 * (dim + 4 + 16 + 48) * 2);
        // Zero vectors quantise to zero without dividing by zero.
        let mut codes = [1i8; 4];
        assert_eq!(quantize(&[0.0; 4], &mut codes), 0.0);
        assert_eq!(codes, [0; 4]);
    }

    #[test]
    fn dot_codes_kernels_agree_with_the_definition() {
        // Lengths around the 32-wide steps, so the tail loop runs too.
        let mut state = 12345u32;
        let mut next = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            state
        };
        for n in [0usize, 1, 7, 31, 32, 33, 64, 100, 512, 515] {
            let a: Vec<f32> = (0..n)
                .map(|_| (next() >> 8) as f32 / 16_777_216.0 - 0.5)
                .collect();
            let codes: Vec<i8> = (0..n).map(|_| (next() >> 24) as u8 as i8).collect();
            let want: f64 = a
                .iter()
                .zip(&codes)
                .map(|(x, c)| *x as f64 * *c as f64)
                .sum();
            // The prepared query may be rounded to int16: up to half a
            // step per component, times the codes.
            let step = fixed_point_query(&a).map_or(0.0, |(_, s)| s as f64);
            let rounding: f64 = codes.iter().map(|c| (*c as f64).abs() * step * 0.51).sum();
            for (name, got, slack) in [
                ("chosen", dot_codes_kernel()(&a, &codes), 0.0),
                ("portable", dot_codes_portable(&a, &codes), 0.0),
                ("prepared", QueryDot::new(&a).dot(&codes), rounding),
            ] {
                assert!(
                    (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()) + slack,
                    "{name} n={n}: {got} vs {want}"
                );
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                let got = dot_codes_avx2(&a, &codes);
                assert!(
                    (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "avx2 n={n}"
                );
            }
            // The fixed-point kernel is the exact integer sum of the
            // rounded query.
            if let Some((q, scale)) = fixed_point_query(&a) {
                let exact: i64 = q
                    .iter()
                    .zip(&codes)
                    .map(|(x, c)| *x as i64 * *c as i64)
                    .sum();
                // SAFETY: `fixed_point_query` checked the CPU's features.
                let got = unsafe { dot_i16_avx512(&q, &codes) };
                assert_eq!(got as i64, exact, "n={n}");
                let err = a
                    .iter()
                    .zip(&q)
                    .map(|(x, c)| (x - *c as f32 * scale).abs())
                    .fold(0f32, f32::max);
                assert!(
                    err <= scale * 0.51,
                    "n={n}: rounding {err} for step {scale}"
                );
            }
        }
    }
}
