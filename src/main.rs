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
}

/// How the user wants images read, applied on top of the model's recipe.
#[derive(Debug, Clone, Copy)]
pub struct ImageOptions {
    /// Alpha handling.
    pub alpha: AlphaMode,
    /// Pixel limit.
    pub max_pixels: u64,
}

impl ModelArgs {
    fn image_options(&self) -> ImageOptions {
        ImageOptions {
            alpha: self.alpha,
            max_pixels: self.max_pixels,
        }
    }

    fn spec(&self) -> ModelSpec {
        ModelSpec {
            name: self.model.clone(),
            revision: self.revision.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
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

fn run(cli: Cli, sub: &ArgMatches) -> anyhow::Result<()> {
    match cli.command {
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
