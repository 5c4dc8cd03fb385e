//! `glimpse`: semantic photo search from the command line.
//!
//! The binary is a thin shell over the library crates: it parses arguments
//! (clap), calls `glimpse-clip` / `glimpse-decoder` / `glimpse-tokenizer`,
//! prints results, and maps failures to the documented exit codes below.

mod cmd;
mod exit;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use glimpse_clip::Precision;
use glimpse_config::{AlphaMode, ModelSpec, DEFAULT_MODEL, ENV_MODEL};

/// Semantic photo search: find photos by describing them.
#[derive(Parser, Debug)]
#[command(name = "glimpse", version, about, long_about = None, after_help = exit::EXIT_CODES_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Model selection shared by every command that runs the model.
#[derive(clap::Args, Debug, Clone)]
struct ModelArgs {
    /// Model: a directory (Hugging Face or OpenCLIP layout) or a hub id (org/name).
    #[arg(long, env = ENV_MODEL, default_value = DEFAULT_MODEL)]
    model: String,
    /// Hub revision (branch, tag, commit or refs/pr/N); default: refs/pr/15 for
    /// openai/clip-vit-base-patch32, main otherwise.
    #[arg(long)]
    revision: Option<String>,
    /// Transparent images: composite onto white (default) or drop alpha like the reference.
    #[arg(long, default_value = "white")]
    alpha: AlphaMode,
    /// Refuse images with more pixels than this (decompression-bomb guard; Pillow's limit by default).
    #[arg(long, default_value_t = glimpse_config::PILLOW_MAX_PIXELS)]
    max_pixels: u64,
    /// Weights the model runs on: fp32 (default; matches the reference), bf16, int8 or auto (see `serve`).
    #[arg(long, default_value = "fp32")]
    precision: Precision,
}

/// How the user wants inputs read, applied on top of the model's recipe.
#[derive(Debug, Clone, Copy)]
pub struct ImageOptions {
    /// Alpha handling.
    pub alpha: AlphaMode,
    /// Pixel limit.
    pub max_pixels: u64,
    /// Precision of the text path.
    pub precision: Precision,
}

impl ModelArgs {
    fn image_options(&self) -> ImageOptions {
        ImageOptions {
            alpha: self.alpha,
            max_pixels: self.max_pixels,
            precision: self.precision,
        }
    }

    fn spec(&self) -> ModelSpec {
        ModelSpec {
            name: self.model.clone(),
            revision: self.revision.clone(),
        }
    }
}

/// Where the library is.
#[derive(clap::Args, Debug, Clone)]
struct LibraryArgs {
    /// Library folder (default: the platform data folder, e.g. ~/.local/share/glimpse/library).
    #[arg(long, env = cmd::library::ENV_LIBRARY)]
    library: Option<PathBuf>,
}

/// `--model` where the library's own model is the default.
#[derive(clap::Args, Debug, Clone)]
struct OptionalModelArgs {
    /// Model (directory or hub id); default: the library's model
    /// (openai/clip-vit-base-patch32 for a new library).
    #[arg(long, env = ENV_MODEL)]
    model: Option<String>,
    /// Hub revision of --model.
    #[arg(long, requires = "model")]
    revision: Option<String>,
}

impl OptionalModelArgs {
    fn spec(&self) -> Option<ModelSpec> {
        self.model.as_ref().map(|name| ModelSpec {
            name: name.clone(),
            revision: self.revision.clone(),
        })
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Index photo folders into the library (incremental: only new or changed files are read).
    Index {
        #[command(flatten)]
        library: LibraryArgs,
        #[command(flatten)]
        model: OptionalModelArgs,
        /// Folders to index.
        #[arg(required = true)]
        roots: Vec<PathBuf>,
        /// Only files matching this glob (repeatable; `*.jpg`, `2019/**`).
        #[arg(long, action = clap::ArgAction::Append)]
        include: Vec<String>,
        /// Skip files and folders matching this glob (repeatable; `@eaDir`, `**/tmp/*`).
        #[arg(long, action = clap::ArgAction::Append)]
        exclude: Vec<String>,
        /// Also walk hidden files and folders.
        #[arg(long)]
        hidden: bool,
        /// Images per model call.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Re-embed every photo, with --model or the library's own model (ids, metadata and thumbnails are kept).
        #[arg(long)]
        reembed: bool,
        /// After indexing, keep watching the folders and index changes as they happen.
        #[arg(long)]
        watch: bool,
        /// Weights images are embedded with: fp32, int8, bf16, or auto (int8 where the CPU has
        /// AVX512_VNNI dot products, else bf16 where it has AVX512_BF16 ones, each only if probe
        /// images keep cosine ≥ 0.999 to fp32; else fp32). The choice is checked and reported.
        #[arg(long, env = "GLIMPSE_PRECISION", default_value = "auto")]
        precision: Precision,
        /// Decode every image at full size, bit for bit as the reference (Pillow) does. By default
        /// large images are reduced by 1/2-1/8 (JPEGs and WebPs while decoding, other formats just
        /// after): several times faster; the model's input then differs from the reference's by
        /// about one 8-bit level on average.
        #[arg(long)]
        exact_decode: bool,
        /// Print a one-line JSON summary on stdout.
        #[arg(long)]
        json: bool,
        /// Commit after this many files (tests use small values).
        #[arg(long, default_value_t = 64, hide = true)]
        commit_every: usize,
    },
    /// Search the library by text (`2:golden retriever -people`) and/or an example photo.
    Search {
        #[command(flatten)]
        library: LibraryArgs,
        #[command(flatten)]
        model: OptionalModelArgs,
        /// Weights the query (and --like photo) run on: fp32 (default; exact), bf16, int8 or auto (see `serve`).
        #[arg(long, default_value = "fp32")]
        precision: Precision,
        /// What the photos show; `w:term` weights a term, `-term` pushes it away.
        query: Vec<String>,
        /// Find photos like this one (indexed or not).
        #[arg(long)]
        like: Option<PathBuf>,
        /// Number of results.
        #[arg(short, long, default_value_t = 20)]
        k: usize,
        /// Skip this many of the best results.
        #[arg(long, default_value_t = 0)]
        offset: usize,
        /// Taken on or after this date (YYYY-MM-DD[THH:MM[:SS]]).
        #[arg(long)]
        after: Option<String>,
        /// Taken before this date.
        #[arg(long)]
        before: Option<String>,
        /// Only photos under this folder.
        #[arg(long)]
        folder: Option<PathBuf>,
        /// Only photos whose camera make or model contains this text.
        #[arg(long)]
        camera: Option<String>,
        /// How to search the vectors: auto, exact or graph.
        #[arg(long, default_value = "auto", value_parser = parse_method)]
        method: glimpse_store::SearchMethod,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the library's model, counts, failures by reason and sizes on disk.
    Status {
        #[command(flatten)]
        library: LibraryArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the files that could not be indexed, with the reason.
    Failures {
        #[command(flatten)]
        library: LibraryArgs,
        /// Print one JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Serve the library over HTTP: a JSON API and a web page (http://127.0.0.1:7860).
    Serve {
        #[command(flatten)]
        library: LibraryArgs,
        #[command(flatten)]
        model: OptionalModelArgs,
        /// Weights the model runs on: fp32, bf16, int8, or auto (text queries: int8 if every probe
        /// sentence keeps cosine ≥ 0.999 to fp32, else bf16, else fp32; images: as `index`).
        #[arg(long, env = "GLIMPSE_PRECISION", default_value = "auto")]
        precision: Precision,
        /// Address to listen on (HOST:PORT). Anything but loopback needs --token.
        #[arg(long, default_value = glimpse_server::DEFAULT_BIND)]
        bind: String,
        /// Access token every API request must carry (Authorization: Bearer, or the page's cookie).
        #[arg(long, env = "GLIMPSE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Largest accepted upload for search-by-photo, in MiB.
        #[arg(long, default_value_t = 25)]
        max_upload_mb: usize,
        /// Largest accepted uploaded image, in pixels (decompression-bomb guard).
        #[arg(long, default_value_t = glimpse_server::DEFAULT_MAX_UPLOAD_PIXELS)]
        max_upload_pixels: u64,
        /// Watch this folder and index changes while serving (repeatable; creates the library if needed).
        #[arg(long, action = clap::ArgAction::Append)]
        watch: Vec<PathBuf>,
        /// HTTP worker threads.
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Tokenize JSON lines {"text": ...} from stdin; print {"text", "ids"} per line.
    Tokenize {
        /// Number of ids per text (padded with 0; the last is EOT when truncated).
        #[arg(long, default_value_t = glimpse_tokenizer::CONTEXT_LENGTH)]
        context_length: usize,
    },
    /// Print embeddings of texts and images, one JSON line per input, in the order given.
    Embed {
        #[command(flatten)]
        model: ModelArgs,
        /// A text to embed (repeatable).
        #[arg(long, action = clap::ArgAction::Append)]
        text: Vec<OsString>,
        /// An image file to embed (repeatable).
        #[arg(long, action = clap::ArgAction::Append)]
        image: Vec<PathBuf>,
        /// Print the raw projection output instead of the L2-normalised embedding.
        #[arg(long)]
        raw: bool,
    },
    /// Train (from scratch) or fine-tune a model on (image, caption) pairs; exports an HF-layout model.
    Train(cmd::train::TrainArgs),
    /// Recall@1/5/10 both ways on held-out pairs, and zero-shot accuracy with --classes.
    Eval(cmd::train::EvalArgs),
    /// Zero-shot classification of images against text labels.
    Classify {
        #[command(flatten)]
        model: ModelArgs,
        /// Comma-separated class labels (repeatable).
        #[arg(long, required = true, action = clap::ArgAction::Append)]
        labels: Vec<String>,
        /// Prompt template with {} for the label (repeatable; embeddings of all
        /// templates are averaged). Default: "a photo of a {}."
        #[arg(long, action = clap::ArgAction::Append)]
        template: Vec<String>,
        /// How many classes to print per image.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Print one JSON line per image instead of a table.
        #[arg(long)]
        json: bool,
        /// Images to classify.
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    glimpse_clip::retain_freed_memory();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let sub = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    match run(cli, &sub) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", exit::one_line(&e));
            ExitCode::from(exit::code_for(&e))
        }
    }
}

fn parse_method(text: &str) -> Result<glimpse_store::SearchMethod, String> {
    match text {
        "auto" => Ok(glimpse_store::SearchMethod::Auto),
        "exact" => Ok(glimpse_store::SearchMethod::Exact),
        "graph" => Ok(glimpse_store::SearchMethod::Graph),
        other => Err(format!("'{other}' is not one of auto, exact, graph")),
    }
}

fn run(cli: Cli, sub: &ArgMatches) -> anyhow::Result<()> {
    match cli.command {
        Command::Index {
            library,
            model,
            roots,
            include,
            exclude,
            hidden,
            batch_size,
            reembed,
            watch,
            json,
            commit_every,
            precision,
            exact_decode,
        } => cmd::library::index(cmd::library::IndexArgs {
            commit_every,
            precision,
            exact_decode,
            roots,
            library: library.library,
            model: model.spec(),
            include,
            exclude,
            hidden,
            batch_size,
            reembed,
            watch,
            json,
        }),
        Command::Serve {
            library,
            model,
            precision,
            bind,
            token,
            max_upload_mb,
            max_upload_pixels,
            watch,
            workers,
        } => cmd::serve::serve(cmd::serve::ServeArgs {
            library: library.library,
            model: model.spec(),
            precision,
            options: glimpse_server::ServeOptions {
                bind,
                token,
                max_upload_bytes: max_upload_mb.saturating_mul(1024 * 1024),
                max_upload_pixels,
                workers,
            },
            watch,
        }),
        Command::Search {
            library,
            model,
            precision,
            query,
            like,
            k,
            offset,
            after,
            before,
            folder,
            camera,
            method,
            json,
        } => cmd::library::search(cmd::library::SearchArgs {
            query,
            like,
            library: library.library,
            model: model.spec(),
            precision,
            k,
            offset,
            after,
            before,
            folder,
            camera,
            method,
            json,
        }),
        Command::Train(args) => cmd::train::train(args),
        Command::Eval(args) => cmd::train::eval(args),
        Command::Status { library, json } => cmd::library::status(library.library, json),
        Command::Failures { library, json } => cmd::library::failures(library.library, json),
        Command::Tokenize { context_length } => cmd::tokenize::run(context_length),
        Command::Embed {
            model,
            text,
            image,
            raw,
        } => {
            let order = cmd::embed::input_order(sub, &text, &image)?;
            cmd::embed::run(&model.spec(), &model.image_options(), order, raw)
        }
        Command::Classify {
            model,
            labels,
            template,
            top,
            json,
            images,
        } => cmd::classify::run(
            &model.spec(),
            &model.image_options(),
            &labels,
            &template,
            top,
            json,
            &images,
        ),
    }
}
