//! `glimpse serve`: the HTTP API and web UI over a library, optionally
//! watching photo folders in the same process.

use std::path::PathBuf;
use std::sync::Arc;

use glimpse_config::{ModelSpec, DEFAULT_MODEL};
use glimpse_indexer::{model_identity, IndexOptions, WalkOptions};
use glimpse_server::{AppState, ServeOptions};
use glimpse_store::{Library, StoreError};

use crate::cmd::library::{library_dir, load_clip, spec_of};
use crate::exit::InputError;

/// Arguments of `glimpse serve`.
pub struct ServeArgs {
    /// `--library`.
    pub library: Option<PathBuf>,
    /// `--model`, when given.
    pub model: Option<ModelSpec>,
    /// Server options.
    pub options: ServeOptions,
    /// Folders to watch and index while serving.
    pub watch: Vec<PathBuf>,
}

/// `glimpse serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.options.check()?;
    let dir = library_dir(args.library)?;
    for root in &args.watch {
        if !root.is_dir() {
            return Err(InputError(format!(
                "--watch {}: no such folder; check the path to your photos",
                root.display()
            ))
            .into());
        }
    }
    let existing = match Library::open(&dir) {
        Ok(library) => Some(library.header().model.name.clone()),
        // With folders to watch, a new library is made; without, there is
        // nothing to serve.
        Err(StoreError::NoLibrary { .. }) if !args.watch.is_empty() => None,
        Err(e) => return Err(e.into()),
    };
    let spec = match (&args.model, &existing) {
        (Some(spec), _) => spec.clone(),
        (None, Some(name)) => spec_of(name),
        (None, None) => ModelSpec {
            name: DEFAULT_MODEL.to_string(),
            revision: None,
        },
    };
    let clip = Arc::new(load_clip(&spec)?);
    let library = Library::open_or_create(&dir, &model_identity(&clip), false)?;
    let state = AppState::new(library, clip, args.options)?;
    let watch = (!args.watch.is_empty()).then(|| IndexOptions {
        walk: WalkOptions {
            roots: args.watch.clone(),
            ..WalkOptions::default()
        },
        ..IndexOptions::default()
    });
    glimpse_server::run(state, watch, |addrs| {
        for addr in addrs {
            // The line tests and scripts wait for; stderr stays for errors.
            println!("listening on http://{addr}");
        }
        eprintln!("serving the library at {} (Ctrl-C to stop)", dir.display());
    })?;
    Ok(())
}
