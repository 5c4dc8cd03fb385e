//! CLIP's text tokenizer, bit-for-bit with the reference (open_clip 3.3's `SimpleTokenizer`
//! and `tokenize`), so that Glimpse's text queries give the ids CLIP was trained on.
//!
//! The main type is [`Tokenizer`]: [`Tokenizer::clip`] has OpenAI's CLIP vocabulary built in,
//! [`Tokenizer::from_files`] reads a model's own `vocab.json` and `merges.txt`. A text goes
//! through [`clean`] (a port of the reference's cleaning: ftfy's `fix_text` with its mojibake
//! repair, Python's `html.unescape` twice, whitespace collapsing, lower-casing), is cut into
//! words, numbers and symbol runs with the reference's pattern, and each piece is encoded with
//! byte-level BPE (cached per piece). [`Tokenizer::tokenize`] frames the ids with the start and
//! end tokens and pads them to the context length ([`CONTEXT_LENGTH`], 77, for CLIP).
//!
//! What it does not do: decode ids back to text, batch texts into tensors, download
//! vocabularies, or reproduce open_clip's other cleaning modes (`canonicalize`,
//! `whitespace`) and Hugging Face's tokenizer (which differs on some inputs, for instance on
//! `<|endoftext|>` typed in a text, and pads with the end token).
#![warn(missing_docs)]

mod bpe;
mod clean;
mod error;
mod ftfy;
mod html;
mod pretokenize;
mod tokenizer;

pub use crate::{
    clean::clean,
    error::TokenizerError,
    tokenizer::{Tokenizer, CONTEXT_LENGTH, EOT_ID, PAD_ID, SOT_ID},
};
