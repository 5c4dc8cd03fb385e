//! [`Library`]: one folder holding the sled database (the source of truth),
//! thumbnails, and the two derived indexes.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::graph::VectorGraph;
use crate::keys;
use crate::keywords::KeywordIndex;
use crate::record::{FailureKind, FailureRecord, PhotoRecord};
use crate::vectors::VectorSet;

/// The on-disk schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// Which model made the embeddings of a library. Two libraries (or a
/// library and a model) are compatible only when every field is equal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// What the person calls the model: a Hub id with its revision
    /// (`openai/clip-vit-base-patch32@refs/pr/15`) or a folder.
    pub name: String,
    /// A digest of the model's configuration and weights: two different
    /// models under one name (a retrained folder) still differ.
    pub fingerprint: String,
    /// Embedding dimension.
    pub dim: usize,
    /// A digest of the image preprocessing (size, mean, std, alpha):
    /// embeddings made with other preprocessing are not comparable either.
    pub preprocess: String,
}

/// What the library records about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LibraryHeader {
    /// On-disk schema version ([`SCHEMA_VERSION`] when written by this build).
    pub schema_version: u32,
    /// The model every embedding was made with.
    pub model: ModelIdentity,
    /// When the library was created, seconds since the Unix epoch.
    pub created_at: i64,
}

/// One change to the library, applied with others atomically by
/// [`Library::commit`].
#[derive(Clone, Debug)]
pub enum Change {
    /// Adds a photo (`record.id == 0`: a new id is assigned) or replaces the
    /// record of an existing one (moved, edited, touched).
    Put {
        /// The record; its `id` is filled in when new.
        record: Box<PhotoRecord>,
        /// A new embedding; `None` keeps the stored one (a move or a touch).
        embedding: Option<Vec<f32>>,
        /// New thumbnail bytes (JPEG); `None` keeps the stored one.
        thumbnail: Option<Vec<u8>>,
    },
    /// Removes a photo from everything (its file is gone).
    Remove(u64),
    /// Records that a file could not be indexed.
    Fail(FailureRecord),
    /// Forgets a failure (the file is gone).
    ClearFailure(String),
}

/// Counts and sizes for `glimpse status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LibraryStats {
    /// Photos in the library.
    pub photos: u64,
    /// Photos with an embedding (the rest wait for `glimpse index`).
    pub embedded: u64,
    /// Failed files by kind.
    pub failures: BTreeMap<String, u64>,
    /// Commits so far; derived indexes record the one they reflect.
    pub generation: u64,
    /// Bytes on disk: database, thumbnails, vector graph, keyword index.
    pub bytes_database: u64,
    /// See [`bytes_database`](Self::bytes_database).
    pub bytes_thumbnails: u64,
    /// See [`bytes_database`](Self::bytes_database).
    pub bytes_graph: u64,
    /// See [`bytes_database`](Self::bytes_database).
    pub bytes_keywords: u64,
}

/// Filter fields of a photo, kept in memory for fast filtered searches.
#[derive(Clone, Debug)]
pub(crate) struct CatalogEntry {
    pub(crate) taken_at: i64,
    pub(crate) path: String,
    pub(crate) camera_lower: Option<String>,
}

impl CatalogEntry {
    fn of(record: &PhotoRecord) -> Self {
        Self {
            taken_at: record.meta.taken_at,
            path: record.path.clone(),
            camera_lower: record.meta.camera().map(|c| c.to_lowercase()),
        }
    }
}

/// A photo library on disk.
///
/// The sled database is the source of truth; the HNSW graph, the keyword
/// index and the in-memory vectors are derived from it and are (re)built
/// from it whenever they are missing, stale or damaged. Every change goes
/// through [`commit`](Self::commit), one atomic sled batch that also appends
/// to a change log the derived indexes catch up from.
///
/// One process at a time: sled locks the database, and a second opener
/// gets [`StoreError::Locked`]. Not thread-safe by itself; wrap it in a lock
/// to share it.
pub struct Library {
    dir: PathBuf,
    db: sled::Db,
    header: LibraryHeader,
    next_id: u64,
    next_vid: u64,
    generation: u64,
    vectors: Option<VectorSet>,
    catalog: Option<HashMap<u64, CatalogEntry>>,
    graph: Option<VectorGraph>,
    keywords: Option<KeywordIndex>,
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Library {
    /// Opens the library in `dir`, creating it for `model` when there is
    /// none. Fails with [`StoreError::ModelMismatch`] when it was made with
    /// another model (see [`reset_model`](Self::reset_model)), unless
    /// `allow_other_model` is set, in which case the caller must re-embed.
    pub fn open_or_create(
        dir: &Path,
        model: &ModelIdentity,
        allow_other_model: bool,
    ) -> Result<Self, StoreError> {
        fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
        let db = open_db(dir)?;
        let header = match read_header(dir, &db)? {
            Some(header) => header,
            None => {
                let header = LibraryHeader {
                    schema_version: SCHEMA_VERSION,
                    model: model.clone(),
                    created_at: now_seconds(),
                };
                write_header(dir, &db, &header)?;
                header
            }
        };
        let library = Self::from_db(dir, db, header)?;
        if !allow_other_model {
            library.check_model(model)?;
        }
        Ok(library)
    }

    /// Opens an existing library (for searching and status); fails with
    /// [`StoreError::NoLibrary`] when there is none.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        if !dir.join("db").is_dir() {
            return Err(StoreError::NoLibrary {
                dir: dir.to_path_buf(),
            });
        }
        let db = open_db(dir)?;
        let header = read_header(dir, &db)?.ok_or_else(|| StoreError::NoLibrary {
            dir: dir.to_path_buf(),
        })?;
        Self::from_db(dir, db, header)
    }

    fn from_db(dir: &Path, db: sled::Db, header: LibraryHeader) -> Result<Self, StoreError> {
        let counter = |key: &[u8]| -> Result<u64, StoreError> {
            Ok(get(dir, &db, key)?
                .and_then(|v| keys::u64_value(&v))
                .unwrap_or(0))
        };
        Ok(Self {
            next_id: counter(keys::NEXT_ID)?.max(1),
            next_vid: counter(keys::NEXT_VID)?.max(1),
            generation: counter(keys::GENERATION)?,
            dir: dir.to_path_buf(),
            db,
            header,
            vectors: None,
            catalog: None,
            graph: None,
            keywords: None,
        })
    }

    /// Fails with [`StoreError::ModelMismatch`] unless `model` is the
    /// library's model.
    pub fn check_model(&self, model: &ModelIdentity) -> Result<(), StoreError> {
        if self.header.model == *model {
            return Ok(());
        }
        let same_name = self.header.model.name == model.name;
        Err(StoreError::ModelMismatch {
            dir: self.dir.clone(),
            library: if same_name {
                format!(
                    "{} (weights {})",
                    self.header.model.name,
                    short(&self.header.model.fingerprint)
                )
            } else {
                self.header.model.name.clone()
            },
            library_dim: self.header.model.dim,
            requested: if same_name {
                format!("{} (weights {})", model.name, short(&model.fingerprint))
            } else {
                model.name.clone()
            },
            requested_dim: model.dim,
        })
    }

    /// Switches the library to `model`, dropping every embedding (photos,
    /// ids, metadata and thumbnails stay): each photo then waits for
    /// `glimpse index` to embed it again under its id.
    pub fn reset_model(&mut self, model: &ModelIdentity) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for item in self.db.scan_prefix([keys::EMBEDDING]) {
            let (key, _) = item.map_err(|e| self.db_error(e))?;
            batch.remove(key);
        }
        self.header.model = model.clone();
        batch.insert(
            keys::HEADER,
            serde_json::to_vec(&self.header)
                .map_err(|e| StoreError::internal("saving the header", e))?,
        );
        self.generation += 1;
        batch.insert(keys::GENERATION, &self.generation.to_be_bytes());
        self.apply(batch)?;
        self.vectors = None;
        self.graph = None;
        let _ = fs::remove_dir_all(self.dir.join("graph"));
        Ok(())
    }

    /// The library folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the library records about itself (its model above all).
    pub fn header(&self) -> &LibraryHeader {
        &self.header
    }

    /// The number of commits so far.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn db_error(&self, e: sled::Error) -> StoreError {
        db_error(&self.dir, e)
    }

    /// The photo with this id.
    pub fn photo(&self, id: u64) -> Result<Option<PhotoRecord>, StoreError> {
        match get(&self.dir, &self.db, &keys::with_id(keys::PHOTO, id))? {
            Some(v) => Ok(Some(self.parse_record(&v)?)),
            None => Ok(None),
        }
    }

    fn parse_record(&self, bytes: &[u8]) -> Result<PhotoRecord, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            dir: self.dir.clone(),
            message: format!("a photo record does not parse: {e}"),
        })
    }

    /// The photo indexed at `path` (absolute, as walked).
    pub fn photo_by_path(&self, path: &str) -> Result<Option<PhotoRecord>, StoreError> {
        match get(&self.dir, &self.db, &keys::with_text(keys::PATH, path))? {
            Some(v) => match keys::u64_value(&v) {
                Some(id) => self.photo(id),
                None => Ok(None),
            },
            None => Ok(None),
        }
    }

    /// Ids of the photos whose file has this BLAKE3 hash (copies of one
    /// file share a hash).
    pub fn ids_by_hash(&self, blake3: &str) -> Result<Vec<u64>, StoreError> {
        let prefix = keys::with_text(keys::HASH, blake3);
        let mut ids = Vec::new();
        for item in self.db.scan_prefix(&prefix) {
            let (key, _) = item.map_err(|e| self.db_error(e))?;
            if key.len() == prefix.len() + 8 {
                ids.extend(keys::trailing_id(&key));
            }
        }
        Ok(ids)
    }

    /// Every photo, in id order.
    pub fn photos(&self) -> impl Iterator<Item = Result<PhotoRecord, StoreError>> + '_ {
        self.db.scan_prefix([keys::PHOTO]).map(move |item| {
            let (_, value) = item.map_err(|e| self.db_error(e))?;
            self.parse_record(&value)
        })
    }

    /// The number of photos.
    pub fn len(&self) -> usize {
        self.db.scan_prefix([keys::PHOTO]).count()
    }

    /// Whether the library has no photos.
    pub fn is_empty(&self) -> bool {
        self.db.scan_prefix([keys::PHOTO]).next().is_none()
    }

    /// The stored embedding of photo `id` (unit length).
    /// Always the exact f32 vector from the database (the in-memory copy
    /// used for scanning is quantised).
    pub fn embedding(&self, id: u64) -> Result<Option<Vec<f32>>, StoreError> {
        match get(&self.dir, &self.db, &keys::with_id(keys::EMBEDDING, id))? {
            Some(v) => Ok(keys::decode_embedding(&v).map(|(_, e)| e)),
            None => Ok(None),
        }
    }

    /// Whether photo `id` has an embedding (photos lose theirs when the
    /// library is switched to another model).
    pub fn has_embedding(&self, id: u64) -> Result<bool, StoreError> {
        if let Some(set) = &self.vectors {
            return Ok(set.contains(id));
        }
        self.db
            .contains_key(keys::with_id(keys::EMBEDDING, id))
            .map_err(|e| self.db_error(e))
    }

    /// The content hash of every photo (with repeats for copies).
    pub fn hashes(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([keys::HASH]) {
            let (key, _) = item.map_err(|e| self.db_error(e))?;
            if key.len() > 9 {
                out.push(String::from_utf8_lossy(&key[1..key.len() - 8]).into_owned());
            }
        }
        Ok(out)
    }

    /// The failure recorded for `path`, if any.
    pub fn failure(&self, path: &str) -> Result<Option<FailureRecord>, StoreError> {
        match get(&self.dir, &self.db, &keys::with_text(keys::FAILURE, path))? {
            Some(v) => Ok(serde_json::from_slice(&v).ok()),
            None => Ok(None),
        }
    }

    /// Every recorded failure, in path order.
    pub fn failures(&self) -> impl Iterator<Item = Result<FailureRecord, StoreError>> + '_ {
        self.db.scan_prefix([keys::FAILURE]).map(move |item| {
            let (_, value) = item.map_err(|e| self.db_error(e))?;
            serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                dir: self.dir.clone(),
                message: format!("a failure record does not parse: {e}"),
            })
        })
    }

    /// Where the thumbnail of photo `id` is stored (it exists when the
    /// record's `has_thumbnail` is set).
    pub fn thumbnail_path(&self, id: u64) -> PathBuf {
        self.dir.join("thumbs").join(format!("{id:016x}.jpg"))
    }

    /// Applies `changes` atomically: either all of them are in the library
    /// afterwards (and on disk: the commit is flushed) or none is. Returns
    /// the id of each [`Change::Put`], in order. An id may appear at most
    /// once per commit.
    pub fn commit(&mut self, changes: Vec<Change>) -> Result<Vec<u64>, StoreError> {
        let dim = self.header.model.dim;
        let generation = self.generation + 1;
        // Index keys are removed before any is inserted, so that a path
        // freed by one change can be taken by another in the same commit.
        let mut removals: Vec<Vec<u8>> = Vec::new();
        let mut inserts: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut put_ids = Vec::new();
        let mut new_vectors: Vec<(u64, u64, Vec<f32>)> = Vec::new();
        let mut removed_ids = Vec::new();
        let mut catalog_updates: Vec<(u64, Option<CatalogEntry>)> = Vec::new();
        let mut thumbs_to_delete = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let (mut next_id, mut next_vid) = (self.next_id, self.next_vid);
        let json = |value: &dyn erased::Json| value.to_json();

        for change in changes {
            match change {
                Change::Put {
                    record,
                    embedding,
                    thumbnail,
                } => {
                    let mut record = *record;
                    if record.id == 0 {
                        record.id = next_id;
                        next_id += 1;
                    }
                    let id = record.id;
                    if !seen.insert(id) {
                        return Err(StoreError::internal(
                            "committing",
                            format!("photo {id} appears twice in one commit"),
                        ));
                    }
                    if let Some(old) = self.photo(id)? {
                        if old.path != record.path {
                            removals.push(keys::with_text(keys::PATH, &old.path));
                        }
                        if old.meta.blake3 != record.meta.blake3 {
                            removals.push(keys::hash(&old.meta.blake3, id));
                        }
                        if old.has_thumbnail && !record.has_thumbnail && thumbnail.is_none() {
                            thumbs_to_delete.push(id);
                        }
                    }
                    if let Some(bytes) = &thumbnail {
                        self.write_thumbnail(id, bytes)?;
                        record.has_thumbnail = true;
                    }
                    removals.push(keys::with_text(keys::FAILURE, &record.path));
                    inserts.push((
                        keys::with_text(keys::PATH, &record.path),
                        id.to_be_bytes().to_vec(),
                    ));
                    inserts.push((keys::hash(&record.meta.blake3, id), Vec::new()));
                    if let Some(vector) = embedding {
                        if vector.len() != dim {
                            return Err(StoreError::WrongDimension {
                                expected: dim,
                                got: vector.len(),
                            });
                        }
                        let vid = next_vid;
                        next_vid += 1;
                        inserts.push((
                            keys::with_id(keys::EMBEDDING, id).to_vec(),
                            keys::encode_embedding(vid, &vector),
                        ));
                        new_vectors.push((id, vid, vector));
                    }
                    inserts.push((keys::log(generation, id).to_vec(), vec![keys::LOG_UPSERT]));
                    catalog_updates.push((id, Some(CatalogEntry::of(&record))));
                    inserts.push((keys::with_id(keys::PHOTO, id).to_vec(), json(&record)?));
                    put_ids.push(id);
                }
                Change::Remove(id) => {
                    if !seen.insert(id) {
                        return Err(StoreError::internal(
                            "committing",
                            format!("photo {id} appears twice in one commit"),
                        ));
                    }
                    let Some(old) = self.photo(id)? else {
                        continue;
                    };
                    // The path may already belong to another photo (a file
                    // moved onto it in an earlier commit).
                    let path_key = keys::with_text(keys::PATH, &old.path);
                    if get(&self.dir, &self.db, &path_key)?.and_then(|v| keys::u64_value(&v))
                        == Some(id)
                    {
                        removals.push(path_key);
                    }
                    removals.push(keys::hash(&old.meta.blake3, id));
                    removals.push(keys::with_id(keys::EMBEDDING, id).to_vec());
                    removals.push(keys::with_id(keys::PHOTO, id).to_vec());
                    inserts.push((keys::log(generation, id).to_vec(), vec![keys::LOG_REMOVE]));
                    catalog_updates.push((id, None));
                    removed_ids.push(id);
                    if old.has_thumbnail {
                        thumbs_to_delete.push(id);
                    }
                }
                Change::Fail(failure) => {
                    inserts.push((
                        keys::with_text(keys::FAILURE, &failure.path),
                        json(&failure)?,
                    ));
                }
                Change::ClearFailure(path) => {
                    removals.push(keys::with_text(keys::FAILURE, &path));
                }
            }
        }

        let mut batch = sled::Batch::default();
        for key in removals {
            batch.remove(key);
        }
        for (key, value) in inserts {
            batch.insert(key, value);
        }
        batch.insert(keys::NEXT_ID, &next_id.to_be_bytes());
        batch.insert(keys::NEXT_VID, &next_vid.to_be_bytes());
        batch.insert(keys::GENERATION, &generation.to_be_bytes());
        self.apply(batch)?;
        self.next_id = next_id;
        self.next_vid = next_vid;
        self.generation = generation;

        for id in thumbs_to_delete {
            let _ = fs::remove_file(self.thumbnail_path(id));
        }
        if let Some(set) = &mut self.vectors {
            for id in &removed_ids {
                set.remove(*id);
            }
            for (id, vid, vector) in &new_vectors {
                set.upsert(*id, *vid, vector);
            }
        }
        if let Some(catalog) = &mut self.catalog {
            for (id, entry) in catalog_updates {
                match entry {
                    Some(entry) => catalog.insert(id, entry),
                    None => catalog.remove(&id),
                };
            }
        }
        Ok(put_ids)
    }

    /// Applies a batch and flushes it to disk.
    fn apply(&self, batch: sled::Batch) -> Result<(), StoreError> {
        self.db.apply_batch(batch).map_err(|e| self.db_error(e))?;
        self.db.flush().map_err(|e| self.db_error(e))?;
        Ok(())
    }

    fn write_thumbnail(&self, id: u64, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.thumbnail_path(id);
        let io = |source| StoreError::Io {
            dir: path.clone(),
            source,
        };
        let folder = path.parent().unwrap_or(&self.dir);
        fs::create_dir_all(folder).map_err(io)?;
        let tmp = path.with_extension("jpg.tmp");
        fs::write(&tmp, bytes).map_err(io)?;
        fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    /// The in-memory vectors, loaded from sled on first use.
    pub(crate) fn vectors(&mut self) -> Result<&VectorSet, StoreError> {
        if self.vectors.is_none() {
            let mut set = VectorSet::new(self.header.model.dim);
            // In batches, quantised and sketched on all threads.
            const LOAD_BATCH: usize = 4096;
            let mut batch = Vec::with_capacity(LOAD_BATCH);
            for item in self.db.scan_prefix([keys::EMBEDDING]) {
                let (key, value) = item.map_err(|e| self.db_error(e))?;
                let id = keys::trailing_id(&key).unwrap_or(0);
                match keys::decode_embedding(&value) {
                    Some((vid, vector)) if vector.len() == self.header.model.dim => {
                        batch.push((id, vid, vector));
                        if batch.len() == LOAD_BATCH {
                            set.upsert_batch(&batch);
                            batch.clear();
                        }
                    }
                    _ => {
                        return Err(StoreError::Corrupt {
                            dir: self.dir.clone(),
                            message: format!("the embedding of photo {id} is damaged"),
                        })
                    }
                }
            }
            set.upsert_batch(&batch);
            self.vectors = Some(set);
        }
        Ok(self.vectors.as_ref().expect("just loaded"))
    }

    /// The in-memory filter catalog, loaded from sled on first use.
    pub(crate) fn catalog(&mut self) -> Result<&HashMap<u64, CatalogEntry>, StoreError> {
        if self.catalog.is_none() {
            let mut catalog = HashMap::new();
            for record in self.photos() {
                let record = record?;
                catalog.insert(record.id, CatalogEntry::of(&record));
            }
            self.catalog = Some(catalog);
        }
        Ok(self.catalog.as_ref().expect("just loaded"))
    }

    /// Loads what searches need (vectors, filter catalog, keyword index, and
    /// the graph when the library is large enough to use it), so that the
    /// first query is as fast as the others; and, since many queries will
    /// follow, the vectors' 2-bit sketches, which large scans read first
    /// (a one-off search does without: building them costs more than they
    /// save it).
    pub fn warm_up(&mut self) -> Result<(), StoreError> {
        self.vectors()?;
        if let Some(set) = &mut self.vectors {
            set.build_sketches();
        }
        self.catalog()?;
        self.keywords()?;
        if self.vectors()?.len() > crate::search::EXACT_SCAN_MAX {
            self.graph()?;
        }
        Ok(())
    }

    /// The HNSW graph, loaded from its dump (or built) and brought up to
    /// date with the vectors.
    pub(crate) fn graph(&mut self) -> Result<(&VectorGraph, &VectorSet), StoreError> {
        self.vectors()?;
        let dim = self.header.model.dim;
        let set = self.vectors.as_ref().expect("loaded above");
        let graph_dir = self.dir.join("graph");
        let mut graph = match self.graph.take() {
            Some(graph) => graph,
            None => {
                VectorGraph::load(&graph_dir, dim).unwrap_or_else(|| VectorGraph::build(set, dim))
            }
        };
        if graph.needs_rebuild(set.len()) {
            graph = VectorGraph::build(set, dim);
        } else {
            graph.insert_newer(set);
        }
        self.graph = Some(graph);
        Ok((self.graph.as_ref().expect("just set"), set))
    }

    /// The keyword index, brought up to date with sled (from the change log,
    /// or rebuilt from the records).
    pub(crate) fn keywords(&mut self) -> Result<&KeywordIndex, StoreError> {
        if self.keywords.is_none() {
            self.keywords = Some(KeywordIndex::open(&self.dir.join("keywords"))?);
        }
        let index_generation = self.keywords.as_ref().and_then(|k| k.generation());
        if index_generation != Some(self.generation) {
            self.update_keywords(index_generation)?;
        }
        Ok(self.keywords.as_ref().expect("opened above"))
    }

    fn update_keywords(&mut self, from: Option<u64>) -> Result<(), StoreError> {
        let generation = self.generation;
        // The log is complete back to `from` unless it was pruned past it
        // (then the oldest entry is newer than `from + 1`) — rebuild then.
        let oldest_logged = self
            .db
            .scan_prefix([keys::LOG])
            .next()
            .transpose()
            .map_err(|e| self.db_error(e))?
            .and_then(|(k, _)| keys::u64_value(&k[1..9]));
        // An index *ahead* of sled (sled lost its last commits to a power
        // cut after the index was saved) cannot be replayed: rebuild it.
        let replay = match (from, oldest_logged) {
            (Some(from), _) if from > generation => false,
            (Some(from), Some(oldest)) => oldest <= from + 1,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if replay {
            let start = keys::log(from.unwrap_or(0) + 1, 0);
            let mut changed: BTreeMap<u64, ()> = BTreeMap::new();
            for item in self.db.range(start.to_vec()..vec![keys::LOG + 1]) {
                let (key, _) = item.map_err(|e| self.db_error(e))?;
                changed.extend(keys::trailing_id(&key).map(|id| (id, ())));
            }
            let mut records = Vec::with_capacity(changed.len());
            for &id in changed.keys() {
                records.push((id, self.photo(id)?));
            }
            self.keywords.as_mut().expect("opened by caller").apply(
                false,
                records.iter().map(|(id, r)| (*id, r.as_ref())),
                generation,
            )?;
        } else {
            let records: Vec<PhotoRecord> = self.photos().collect::<Result<_, _>>()?;
            self.keywords.as_mut().expect("opened by caller").apply(
                true,
                records.iter().map(|r| (r.id, Some(r))),
                generation,
            )?;
        }
        Ok(())
    }

    /// Brings the derived indexes up to date and saves them: the keyword
    /// index is committed, the graph dumped (when it changed), and change-log
    /// entries both reflect are pruned. The indexer calls this at the end of
    /// a run and now and then during long ones.
    ///
    /// The graph is kept only where searches use it: when it is already in
    /// memory, or when the library is larger than
    /// [`EXACT_SCAN_MAX`](crate::EXACT_SCAN_MAX). Smaller libraries are
    /// scanned exactly, and building a graph for them would cost time and
    /// memory for nothing (it is built on first use if ever asked for).
    pub fn save_derived(&mut self) -> Result<(), StoreError> {
        self.keywords()?;
        let used = self.graph.is_some() || self.vectors()?.len() > crate::search::EXACT_SCAN_MAX;
        let needs_graph = used
            && (self.graph.is_some()
                || !self.dir.join("graph").join("state.json").exists()
                || self.graph_is_stale()?);
        if needs_graph {
            let graph_dir = self.dir.join("graph");
            self.graph()?;
            let graph = self.graph.as_mut().expect("loaded above");
            if graph.is_dirty() || !graph_dir.join("state.json").exists() {
                graph.save(&graph_dir).map_err(|source| StoreError::Io {
                    dir: graph_dir.clone(),
                    source,
                })?;
            }
        }
        // Every log entry up to the current generation is reflected by the
        // keyword index (the graph needs none: it catches up by vid).
        let mut batch = sled::Batch::default();
        for item in self
            .db
            .range(vec![keys::LOG]..keys::log(self.generation + 1, 0).to_vec())
        {
            let (key, _) = item.map_err(|e| self.db_error(e))?;
            batch.remove(key);
        }
        self.apply(batch)
    }

    /// Whether the saved graph lacks vectors committed since it was saved.
    fn graph_is_stale(&self) -> Result<bool, StoreError> {
        #[derive(Deserialize)]
        struct State {
            max_vid: u64,
        }
        let state: Option<State> = fs::read(self.dir.join("graph").join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        Ok(match state {
            Some(state) => state.max_vid + 1 < self.next_vid,
            None => true,
        })
    }

    /// Counts and sizes.
    pub fn stats(&self) -> Result<LibraryStats, StoreError> {
        let mut stats = LibraryStats {
            photos: self.db.scan_prefix([keys::PHOTO]).count() as u64,
            embedded: self.db.scan_prefix([keys::EMBEDDING]).count() as u64,
            generation: self.generation,
            bytes_database: folder_bytes(&self.dir.join("db")),
            bytes_thumbnails: folder_bytes(&self.dir.join("thumbs")),
            bytes_graph: folder_bytes(&self.dir.join("graph")),
            bytes_keywords: folder_bytes(&self.dir.join("keywords")),
            ..LibraryStats::default()
        };
        for failure in self.failures() {
            let failure = failure?;
            *stats
                .failures
                .entry(failure.kind.as_str().to_string())
                .or_default() += 1;
        }
        Ok(stats)
    }

    /// Checks that the derived indexes agree with sled: the in-memory
    /// vectors hold exactly the stored embeddings, every current vector is
    /// in the graph, and the keyword index has one document per photo.
    /// Returns a description of the first disagreement. For tests and
    /// `glimpse status --check`.
    pub fn verify(&mut self) -> Result<Option<String>, StoreError> {
        let ids: Vec<u64> = self
            .photos()
            .map(|r| r.map(|r| r.id))
            .collect::<Result<_, _>>()?;
        let mut embedded = Vec::new();
        for item in self.db.scan_prefix([keys::EMBEDDING]) {
            let (key, _) = item.map_err(|e| self.db_error(e))?;
            embedded.extend(keys::trailing_id(&key));
        }
        if let Some(id) = embedded.iter().find(|id| ids.binary_search(id).is_err()) {
            return Ok(Some(format!(
                "embedding of photo {id}, which has no record"
            )));
        }
        let keyword_ids = self.keywords()?.all_ids();
        if keyword_ids != ids {
            return Ok(Some(format!(
                "keyword index has {} documents, the library {} photos",
                keyword_ids.len(),
                ids.len()
            )));
        }
        let (graph, set) = self.graph()?;
        if set.len() != embedded.len() {
            return Ok(Some(format!(
                "{} vectors in memory, {} stored",
                set.len(),
                embedded.len()
            )));
        }
        for (id, vid, vector) in set.rows() {
            if vid > graph.max_vid() {
                return Ok(Some(format!(
                    "photo {id} (vector {vid}) is not in the graph"
                )));
            }
            // The graph must find each vector as its own nearest neighbour.
            let keep = |candidate: u64| candidate == id;
            let found = graph.search(set, &vector, 1, 16, Some(&keep));
            if found.first().map(|f| f.0) != Some(id) {
                return Ok(Some(format!("the graph does not find photo {id}")));
            }
        }
        Ok(None)
    }

    /// Points in the graph (tombstones included) and live vectors, for
    /// status and tests; loads both.
    pub fn graph_points(&mut self) -> Result<(usize, usize), StoreError> {
        let (graph, set) = self.graph()?;
        Ok((graph.points(), set.len()))
    }

    /// Bytes of RAM the loaded search structures take (vectors and maps),
    /// for the RAM-per-photo figure.
    pub fn vector_ram_bytes(&mut self) -> Result<usize, StoreError> {
        Ok(self.vectors()?.heap_bytes())
    }
}

mod erased {
    use crate::error::StoreError;

    /// Serialises records for the database.
    pub(super) trait Json {
        fn to_json(&self) -> Result<Vec<u8>, StoreError>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>, StoreError> {
            serde_json::to_vec(self).map_err(|e| StoreError::internal("serialising a record", e))
        }
    }
}

fn short(fingerprint: &str) -> &str {
    &fingerprint[..fingerprint.len().min(12)]
}

fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn db_error(dir: &Path, e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(source) => StoreError::Io {
            dir: dir.to_path_buf(),
            source,
        },
        other => StoreError::Corrupt {
            dir: dir.to_path_buf(),
            message: other.to_string(),
        },
    }
}

fn get(dir: &Path, db: &sled::Db, key: &[u8]) -> Result<Option<sled::IVec>, StoreError> {
    db.get(key).map_err(|e| db_error(dir, e))
}

/// Opens sled, turning a lock held by another process into
/// [`StoreError::Locked`] and anything else (including a panic inside sled
/// on a damaged file) into [`StoreError::Corrupt`].
fn open_db(dir: &Path) -> Result<sled::Db, StoreError> {
    // sled releases its file lock asynchronously (its flusher thread ends
    // after the last handle is dropped), so a library closed a moment ago —
    // by this process, or by one that is exiting — is waited for briefly.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match open_db_once(dir) {
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// How long [`open_db`] waits for a lock that is about to be released.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(2000);

fn open_db_once(dir: &Path) -> Result<sled::Db, StoreError> {
    let path = dir.join("db");
    let opened = catch_unwind(AssertUnwindSafe(|| {
        sled::Config::new()
            .path(&path)
            .cache_capacity(64 << 20)
            .flush_every_ms(Some(500))
            .open()
    }));
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(e)))
            if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("lock") =>
        {
            Err(StoreError::Locked {
                dir: dir.to_path_buf(),
            })
        }
        Ok(Err(sled::Error::Io(e))) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(StoreError::Io {
                dir: dir.to_path_buf(),
                source: e,
            })
        }
        Ok(Err(e)) => Err(StoreError::Corrupt {
            dir: dir.to_path_buf(),
            message: e.to_string(),
        }),
        Err(_) => Err(StoreError::Corrupt {
            dir: dir.to_path_buf(),
            message: "the database engine crashed while opening it".into(),
        }),
    }
}

fn read_header(dir: &Path, db: &sled::Db) -> Result<Option<LibraryHeader>, StoreError> {
    let Some(bytes) = get(dir, db, keys::HEADER)? else {
        return Ok(None);
    };
    #[derive(Deserialize)]
    struct Version {
        schema_version: u32,
    }
    let version: Version = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
        dir: dir.to_path_buf(),
        message: format!("the library header does not parse: {e}"),
    })?;
    if version.schema_version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            dir: dir.to_path_buf(),
            found: version.schema_version,
            supported: SCHEMA_VERSION,
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            dir: dir.to_path_buf(),
            message: format!("the library header does not parse: {e}"),
        })
}

fn write_header(dir: &Path, db: &sled::Db, header: &LibraryHeader) -> Result<(), StoreError> {
    let bytes =
        serde_json::to_vec(header).map_err(|e| StoreError::internal("saving the header", e))?;
    db.insert(keys::HEADER, bytes)
        .map_err(|e| db_error(dir, e))?;
    db.flush().map_err(|e| db_error(dir, e))?;
    Ok(())
}

/// Makes a failure record for `path` from an error message, counting
/// attempts on top of an earlier failure of the same file.
pub fn failure_record(
    path: &str,
    kind: FailureKind,
    message: String,
    size: u64,
    mtime_ns: i64,
    earlier: Option<&FailureRecord>,
) -> FailureRecord {
    FailureRecord {
        path: path.to_string(),
        kind,
        message,
        attempts: earlier.map_or(1, |e| e.attempts.saturating_add(1)),
        size,
        mtime_ns,
        failed_at: now_seconds(),
    }
}

#[cfg(test)]
#[path = "library_tests.rs"]
mod tests;
