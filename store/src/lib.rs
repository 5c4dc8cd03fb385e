//! The Glimpse photo library on disk. A [`Library`] is one folder:
//!
//! - a **sled** database, the source of truth: photo records (stable `u64`
//!   id → path, size, mtime, [`PhotoMetadata`]), path → id, BLAKE3 hash →
//!   ids, embeddings, failures ([`FailureRecord`]), a header naming the
//!   model ([`ModelIdentity`]), and a change log; every change is one
//!   atomic, flushed [`Library::commit`] of [`Change`]s;
//! - `thumbs/`, one JPEG per photo, so a server never touches originals;
//! - `graph/`, an **HNSW** graph (hnsw_rs) over the embeddings, and
//!   `keywords/`, a **tantivy** index over names, folders and cameras —
//!   both derived: brought up to date from sled when opened, rebuilt when
//!   missing or damaged, saved by [`Library::save_derived`].
//!
//! [`Library::search`] answers a [`SearchRequest`] (a query vector from
//! weighted terms — [`parse_query`], [`combine_terms`] — plus [`Filters`])
//! with an exact scan or the graph, whichever is faster for the library's
//! size and the filters, fused with keyword hits by reciprocal rank.
//!
//! This crate knows nothing of images or models: the indexer decodes and
//! embeds, the caller turns text into vectors. Errors are [`StoreError`].
#![warn(missing_docs)]

mod dates;
mod error;
mod graph;
mod keys;
mod keywords;
mod library;
mod record;
mod search;
mod sketch;
mod vectors;

pub use dates::{format_date, format_iso, parse_date};
pub use error::StoreError;
pub use graph::UnitDot;
pub use library::{
    failure_record, Change, Library, LibraryHeader, LibraryStats, ModelIdentity, SCHEMA_VERSION,
};
pub use record::{FailureKind, FailureRecord, PhotoMetadata, PhotoRecord, TakenAtSource};
pub use search::{
    combine_terms, parse_query, Facet, Facets, Filters, QueryTerm, ScoreProfile, SearchHit,
    SearchMethod, SearchRequest, SearchResults, EXACT_FILTERED_MAX, EXACT_SCAN_MAX, GRAPH_EF,
};
