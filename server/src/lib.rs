//! The Glimpse HTTP API and the host of the web UI (actix-web).
//!
//! Not built yet: this crate fixes its place in the dependency graph (it
//! uses the indexer and the web UI; nothing but the binary uses it, and no
//! other crate depends on actix). Its contents arrive with the server issue (#4).
#![warn(missing_docs)]
