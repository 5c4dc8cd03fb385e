//! The keyword index (tantivy) over file names, folders, cameras and
//! captions, derived from sled. Each commit carries the sled generation it
//! reflects as its payload; on open it is brought up to date from sled's
//! change log, and rebuilt from the photo records if it is missing or
//! damaged.

use std::path::Path;

use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{Field, Schema, Value, FAST, INDEXED, STORED, TEXT};
use tantivy::{doc, Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::error::StoreError;
use crate::record::PhotoRecord;

/// Memory for tantivy's indexing buffer.
const WRITER_HEAP_BYTES: usize = 32 << 20;

pub(crate) struct KeywordIndex {
    index: Index,
    reader: IndexReader,
    writer: Option<IndexWriter>,
    id: Field,
    name: Field,
    folder: Field,
    camera: Field,
    caption: Field,
    generation: Option<u64>,
}

fn schema() -> Schema {
    let mut builder = Schema::builder();
    builder.add_u64_field("id", INDEXED | STORED | FAST);
    builder.add_text_field("name", TEXT);
    builder.add_text_field("folder", TEXT);
    builder.add_text_field("camera", TEXT);
    builder.add_text_field("caption", TEXT);
    builder.build()
}

impl KeywordIndex {
    /// Opens the index in `dir`, creating an empty one (generation `None`:
    /// needs a full build) when it is missing, damaged or of another schema.
    pub(crate) fn open(dir: &Path) -> Result<Self, StoreError> {
        let io = |source| StoreError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let opened = Index::open_in_dir(dir)
            .ok()
            .filter(|index| index.schema() == schema());
        let (index, generation) = match opened {
            Some(index) => {
                let generation = index
                    .load_metas()
                    .ok()
                    .and_then(|m| m.payload)
                    .and_then(|p| p.parse().ok());
                (index, generation)
            }
            None => {
                let _ = std::fs::remove_dir_all(dir);
                std::fs::create_dir_all(dir).map_err(io)?;
                let index = Index::create_in_dir(dir, schema())
                    .map_err(|e| StoreError::internal("creating the keyword index", e))?;
                (index, None)
            }
        };
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e| StoreError::internal("opening the keyword index", e))?;
        let s = index.schema();
        let field = |name| s.get_field(name).expect("field of our own schema");
        Ok(Self {
            id: field("id"),
            name: field("name"),
            folder: field("folder"),
            camera: field("camera"),
            caption: field("caption"),
            index,
            reader,
            writer: None,
            generation,
        })
    }

    /// The sled generation the index reflects; `None` when it must be
    /// rebuilt from scratch.
    pub(crate) fn generation(&self) -> Option<u64> {
        self.generation
    }

    fn writer(&mut self) -> Result<&mut IndexWriter, StoreError> {
        if self.writer.is_none() {
            let writer = self
                .index
                .writer_with_num_threads(1, WRITER_HEAP_BYTES)
                .map_err(|e| StoreError::internal("opening the keyword index writer", e))?;
            self.writer = Some(writer);
        }
        Ok(self.writer.as_mut().expect("just set"))
    }

    /// Applies changes — `(id, Some(record))` adds or replaces, `(id, None)`
    /// removes — and commits them as `generation`. `clear` first empties
    /// the index (for a full rebuild).
    pub(crate) fn apply<'a>(
        &mut self,
        clear: bool,
        changes: impl IntoIterator<Item = (u64, Option<&'a PhotoRecord>)>,
        generation: u64,
    ) -> Result<(), StoreError> {
        let (id_f, name_f, folder_f, camera_f, caption_f) =
            (self.id, self.name, self.folder, self.camera, self.caption);
        let err = |e: tantivy::TantivyError| StoreError::internal("updating the keyword index", e);
        let writer = self.writer()?;
        if clear {
            writer.delete_all_documents().map_err(err)?;
        }
        for (id, record) in changes {
            writer.delete_term(Term::from_field_u64(id_f, id));
            if let Some(r) = record {
                let mut document = doc!(
                    id_f => id,
                    name_f => r.file_name().to_string(),
                    folder_f => r.folder().to_string(),
                );
                if let Some(camera) = r.meta.camera() {
                    document.add_text(camera_f, camera);
                }
                if let Some(lens) = &r.meta.lens {
                    document.add_text(camera_f, lens);
                }
                let _ = caption_f;
                writer.add_document(document).map_err(err)?;
            }
        }
        let mut prepared = writer.prepare_commit().map_err(err)?;
        prepared.set_payload(&generation.to_string());
        prepared.commit().map_err(err)?;
        self.reader.reload().map_err(err)?;
        self.generation = Some(generation);
        Ok(())
    }

    /// Photos whose name, folder, camera or caption match words of `text`,
    /// best first, with tantivy's BM25 score. Query syntax errors are
    /// forgiven (the text is a photo search, not a tantivy query).
    pub(crate) fn search(&self, text: &str, limit: usize) -> Vec<(u64, f32)> {
        if limit == 0 || text.trim().is_empty() {
            return Vec::new();
        }
        let parser = QueryParser::for_index(
            &self.index,
            vec![self.name, self.folder, self.camera, self.caption],
        );
        // Only words: operators and quotes in a photo search are not
        // meant for tantivy.
        let words: String = text
            .chars()
            .map(|c| if c.is_alphanumeric() { c } else { ' ' })
            .collect();
        let (query, _errors) = parser.parse_query_lenient(&words);
        let searcher = self.reader.searcher();
        let Ok(top) = searcher.search(&query, &TopDocs::with_limit(limit).order_by_score()) else {
            return Vec::new();
        };
        top.into_iter()
            .filter_map(|(score, address)| {
                let document: TantivyDocument = searcher.doc(address).ok()?;
                let id = document.get_first(self.id)?.as_u64()?;
                Some((id, score))
            })
            .collect()
    }

    /// Ids of every document, sorted (for consistency checks).
    pub(crate) fn all_ids(&self) -> Vec<u64> {
        let searcher = self.reader.searcher();
        let mut ids = Vec::new();
        for segment in searcher.segment_readers() {
            let Ok(column) = segment.fast_fields().u64("id") else {
                continue;
            };
            for doc in segment.doc_ids_alive() {
                if let Some(id) = column.first(doc) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        ids
    }
}
