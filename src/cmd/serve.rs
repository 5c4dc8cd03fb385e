//! `glimpse serve`: the HTTP API and web UI over a library, optionally
//! watching photo folders in the same process.

use std::path::PathBuf;
use std::sync::Arc;

use glimpse_config::ModelSpec;
use glimpse_indexer::{model_identity, IndexOptions, WalkOptions};
use glimpse_server::{AppState, ServeOptions};
use glimpse_store::Library;

use glimpse_clip::Precision;

use crate::cmd::library::{check_roots, choose_model, library_dir, load_clip, set_precision};

/// Arguments of `glimpse serve`.
pub struct ServeArgs {
    /// `--library`.
    pub library: Option<PathBuf>,
    /// `--model`, when given.
    pub model: Option<ModelSpec>,
    /// `--precision` of the text queries.
    pub precision: Precision,
    /// Server options.
    pub options: ServeOptions,
    /// Folders to watch and index while serving.
    pub watch: Vec<PathBuf>,
}

/// `glimpse serve`.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    args.options.check()?;
    let dir = library_dir(args.library)?;
    check_roots(&args.watch, "--watch ")?;
    // With folders to watch, a new library is made; without, there is
    // nothing to serve.
    let spec = choose_model(&dir, args.model.as_ref(), !args.watch.is_empty())?;
    let mut clip = load_clip(&spec)?;
    set_precision(&mut clip, args.precision)?;
    let clip = Arc::new(clip);
    let library = Library::open_or_create(&dir, &model_identity(&clip), false)?;
    let state = AppState::new(library, clip, args.options)?;
    // Loading's temporaries (model conversion, library maps) are freed but
    // kept by `retain_freed_memory`; a long-running server gives them back.
    glimpse_clip::release_freed_memory();
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
