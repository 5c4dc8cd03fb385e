//! The Glimpse photo library: walking photo folders, decoding and embedding
//! every image in batches, and keeping metadata, embeddings, an HNSW vector
//! index and a keyword index in one crash-safe library directory.
//!
//! Not built yet: this crate fixes its place in the dependency graph
//! (it uses `glimpse-clip` and `glimpse-config`, and is used by the server and
//! the binary). Its contents arrive with the library issue (#3).
#![warn(missing_docs)]
