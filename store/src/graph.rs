//! The HNSW graph (hnsw_rs), derived from the embeddings in sled.
//!
//! Points are inserted under their *vector version* (`vid`), not the photo
//! id: a re-embedded photo gets a new vid, and hnsw_rs cannot delete, so
//! old versions and removed photos stay in the graph as tombstones that
//! searches filter out (the [`VectorSet`] knows which vids are current).
//! vids only grow, so bringing a saved graph up to date means inserting the
//! current vectors whose vid is above the graph's `max_vid`; when tombstones
//! pass a quarter of the points the graph is rebuilt.
//!
//! Saved with `file_dump` into a temporary folder that is renamed into
//! place, with a `state.json` recording what it holds; a graph that is
//! missing, damaged or from another dimension is simply rebuilt.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use hnsw_rs::anndists::dist::distances::Distance;
use hnsw_rs::api::AnnT;
use hnsw_rs::hnsw::Hnsw;
use hnsw_rs::hnswio::HnswIo;
use serde::{Deserialize, Serialize};

use crate::vectors::{dot, VectorSet};

/// Links per node (hnsw_rs `max_nb_connection`, "M").
const MAX_CONNECTIONS: usize = 24;
/// `file_dump` only supports graphs created with 16 layers.
const MAX_LAYER: usize = 16;
/// Candidate list size while building.
const EF_CONSTRUCTION: usize = 200;
/// Base name of the dumped files.
const BASENAME: &str = "graph";
/// Rebuild when more than this fraction of the points are tombstones.
const MAX_TOMBSTONE_FRACTION: f64 = 0.25;

/// Cosine distance for unit vectors, `1 - a·b`, clamped at 0 so that
/// rounding on (near-)duplicates never goes negative (hnsw_rs's `DistDot`
/// asserts on exactly that and panics).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitDot;

impl Distance<f32> for UnitDot {
    fn eval(&self, va: &[f32], vb: &[f32]) -> f32 {
        (1.0 - dot(va, vb)).max(0.0)
    }
}

/// What a saved graph holds, written beside the dump.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct GraphState {
    dim: usize,
    points: usize,
    max_vid: u64,
}

/// The graph and what it holds.
pub(crate) struct VectorGraph {
    hnsw: Hnsw<'static, f32, UnitDot>,
    dim: usize,
    points: usize,
    max_vid: u64,
    /// Whether it changed since it was loaded or saved.
    dirty: bool,
}

impl VectorGraph {
    /// Builds a graph over every vector of `set`.
    pub(crate) fn build(set: &VectorSet, dim: usize) -> Self {
        let capacity = set.len().max(1024);
        let hnsw = Hnsw::new(
            MAX_CONNECTIONS,
            capacity,
            MAX_LAYER,
            EF_CONSTRUCTION,
            UnitDot,
        );
        let mut graph = Self {
            hnsw,
            dim,
            points: 0,
            max_vid: 0,
            dirty: true,
        };
        graph.insert_newer(set);
        graph
    }

    /// Loads the graph saved in `dir`, or `None` when there is none or it
    /// cannot be used (damaged, other dimension): the caller rebuilds.
    pub(crate) fn load(dir: &Path, dim: usize) -> Option<Self> {
        let state: GraphState =
            serde_json::from_slice(&fs::read(dir.join("state.json")).ok()?).ok()?;
        if state.dim != dim {
            return None;
        }
        // hnsw_rs asserts on a bad magic number instead of returning an
        // error: treat a panic as "damaged". The loaded graph borrows its
        // loader, so the (small) loader is leaked to get a 'static graph.
        let loaded = catch_unwind(AssertUnwindSafe(|| {
            let io: &'static mut HnswIo = Box::leak(Box::new(HnswIo::new(dir, BASENAME)));
            io.load_hnsw::<f32, UnitDot>()
        }));
        let hnsw = loaded.ok()?.ok()?;
        if hnsw.get_nb_point() != state.points {
            return None;
        }
        Some(Self {
            hnsw,
            dim,
            points: state.points,
            max_vid: state.max_vid,
            dirty: false,
        })
    }

    /// Inserts the vectors of `set` that are newer than the graph.
    pub(crate) fn insert_newer(&mut self, set: &VectorSet) {
        // The graph holds the (dequantised) vectors the scan sees.
        let owned: Vec<(Vec<f32>, usize)> = set
            .rows()
            .filter(|(_, vid, _)| *vid > self.max_vid || self.points == 0)
            .map(|(_, vid, v)| (v, vid as usize))
            .collect();
        let new: Vec<(&[f32], usize)> = owned.iter().map(|(v, vid)| (v.as_slice(), *vid)).collect();
        if new.is_empty() {
            return;
        }
        self.max_vid = new
            .iter()
            .map(|(_, vid)| *vid as u64)
            .max()
            .unwrap_or(0)
            .max(self.max_vid);
        // Into an empty graph the first point goes alone: hnsw_rs sets its
        // entry point after a point is generated, so two points inserted
        // at once into an empty graph can both find no entry point and be
        // left unlinked (seen as a flaky `verify` of a two-photo library).
        let rest = if self.points == 0 {
            self.hnsw.insert_slice(new[0]);
            &new[1..]
        } else {
            &new[..]
        };
        self.points += new.len();
        if !rest.is_empty() {
            self.hnsw.parallel_insert_slice(&rest.to_vec());
        }
        self.dirty = true;
    }

    /// Whether so many points are dead that a rebuild pays off.
    pub(crate) fn needs_rebuild(&self, live: usize) -> bool {
        let dead = self.points.saturating_sub(live);
        self.points > 0 && dead as f64 > MAX_TOMBSTONE_FRACTION * self.points as f64
    }

    /// Points in the graph, tombstones included.
    pub(crate) fn points(&self) -> usize {
        self.points
    }

    /// The highest vid in the graph.
    pub(crate) fn max_vid(&self) -> u64 {
        self.max_vid
    }

    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Saves the graph to `dir` (replaced as a whole: written into a
    /// sibling temporary folder, then renamed).
    pub(crate) fn save(&mut self, dir: &Path) -> std::io::Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        let tmp = parent.join("graph.tmp");
        let old = parent.join("graph.old");
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_dir_all(&old);
        fs::create_dir_all(&tmp)?;
        if self.points > 0 {
            self.hnsw
                .file_dump(&tmp, BASENAME)
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        let state = GraphState {
            dim: self.dim,
            points: self.points,
            max_vid: self.max_vid,
        };
        let state = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
        fs::write(tmp.join("state.json"), state)?;
        for entry in fs::read_dir(&tmp)? {
            fs::File::open(entry?.path())?.sync_all()?;
        }
        if dir.exists() {
            fs::rename(dir, &old)?;
        }
        fs::rename(&tmp, dir)?;
        let _ = fs::remove_dir_all(&old);
        self.dirty = false;
        Ok(())
    }

    /// The `k` nearest current vectors to `query` accepted by `keep`, as
    /// `(photo id, cosine)`, best first. `ef` is the search beam width.
    pub(crate) fn search(
        &self,
        set: &VectorSet,
        query: &[f32],
        k: usize,
        ef: usize,
        keep: Option<&(dyn Fn(u64) -> bool + Sync)>,
    ) -> Vec<(u64, f32)> {
        if k == 0 || self.points == 0 {
            return Vec::new();
        }
        let filter = |vid: &usize| match set.id_of_vid(*vid as u64) {
            Some(id) => keep.is_none_or(|keep| keep(id)),
            None => false,
        };
        let found = self.hnsw.search_filter(query, k, ef.max(k), Some(&filter));
        let mut out: Vec<(u64, f32)> = found
            .into_iter()
            .filter_map(|n| {
                let id = set.id_of_vid(n.d_id as u64)?;
                Some((id, 1.0 - n.distance))
            })
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        out.dedup_by_key(|x| x.0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_dot_never_negative() {
        let v = [0.6f32, 0.8];
        assert_eq!(UnitDot.eval(&v, &v), 0.0);
        let w = [0.6000001f32, 0.8000001];
        assert!(UnitDot.eval(&v, &w) >= 0.0);
    }
}
