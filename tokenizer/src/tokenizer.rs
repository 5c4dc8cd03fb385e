//! The [`Tokenizer`]: cleaning, pre-tokenisation, BPE and CLIP's fixed-length framing.

use crate::bpe::{byte_symbols, Bpe};
use crate::clean::{clean, warm_up};
use crate::error::TokenizerError;
use crate::pretokenize::{self, EOT_LITERAL, SOT_LITERAL};
use std::collections::HashMap;
use std::path::Path;

/// Id of the start-of-text token in CLIP's vocabulary.
pub const SOT_ID: u32 = 49406;
/// Id of the end-of-text token in CLIP's vocabulary.
pub const EOT_ID: u32 = 49407;
/// Id used to pad [`Tokenizer::tokenize`]'s output to the context length (the reference pads
/// with 0, which is also the id of `!`; the text model only reads up to the end token).
pub const PAD_ID: u32 = 0;
/// CLIP's context length: the number of ids the text model reads.
pub const CONTEXT_LENGTH: usize = 77;

/// The BPE merges of OpenAI's CLIP vocabulary (HF `merges.txt` layout: a `#version` line, then
/// one `left right` pair per line).
const CLIP_MERGES: &str = include_str!("../assets/merges.txt");

/// CLIP's text tokenizer: turns a text into the token ids CLIP's text model reads.
///
/// It is the reference tokenizer (open_clip 3.3's `SimpleTokenizer` and `tokenize`): the text is
/// [`clean`]ed, cut into words, numbers and symbol runs, and each piece is encoded with
/// byte-level BPE. Results are cached per piece; a `Tokenizer` can be shared between threads.
///
/// ```
/// use glimpse_tokenizer::{Tokenizer, CONTEXT_LENGTH, EOT_ID, SOT_ID};
///
/// let tokenizer = Tokenizer::clip();
/// assert_eq!(tokenizer.encode("a photo of a cat"), [320, 1125, 539, 320, 2368]);
/// let ids = tokenizer.tokenize("a photo of a cat", CONTEXT_LENGTH).unwrap();
/// assert_eq!(ids.len(), CONTEXT_LENGTH);
/// assert_eq!(&ids[..7], [SOT_ID, 320, 1125, 539, 320, 2368, EOT_ID]);
/// ```
pub struct Tokenizer {
    bpe: Bpe,
    sot_id: u32,
    eot_id: u32,
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size)
            .field("sot_id", &self.sot_id)
            .field("eot_id", &self.eot_id)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// The tokenizer of OpenAI's CLIP models, with its vocabulary embedded in the binary
    /// (49,408 tokens: 256 bytes, the same ending a word, 48,894 merges, start and end).
    ///
    /// Building it takes some milliseconds (it indexes the merges and compiles the cleaning
    /// patterns): build one and share it.
    pub fn clip() -> Self {
        let symbols = byte_symbols();
        let pairs = clip_merge_pairs();
        let names = clip_token_names(&pairs, SOT_LITERAL, EOT_LITERAL);
        let first_merge = 512;
        // As `dict(zip(vocab, range(len(vocab))))`: a repeated name keeps its last id.
        let vocab: HashMap<&str, u32> = names
            .iter()
            .enumerate()
            .map(|(id, name)| (name.as_str(), u32::try_from(id).unwrap_or(u32::MAX)))
            .collect();
        let vocab_size = names.len();
        let id_of = |name: &str| vocab.get(name).copied();
        let merges: Vec<(u32, u32, u32)> = pairs
            .iter()
            .zip(&names[first_merge..])
            .filter_map(|((left, right), joined)| {
                Some((id_of(left)?, id_of(right)?, id_of(joined)?))
            })
            .collect();
        let (byte_ids, byte_end_ids) = byte_tables(&symbols, |name| id_of(name).unwrap_or(0));
        Self::new(
            Bpe::new(byte_ids, byte_end_ids, &merges),
            id_of(SOT_LITERAL).unwrap_or(SOT_ID),
            id_of(EOT_LITERAL).unwrap_or(EOT_ID),
            vocab_size,
        )
    }

    /// CLIP's vocabulary as Hugging Face's `vocab.json` (token → id, the
    /// special tokens named `<|startoftext|>` / `<|endoftext|>`) and
    /// `merges.txt`: what a model directory in HF layout carries, so that
    /// a model Glimpse trains from scratch can be loaded by other tools.
    /// [`Tokenizer::from_files`] on these files equals [`Tokenizer::clip`].
    pub fn clip_files() -> (String, &'static str) {
        let names = clip_token_names(&clip_merge_pairs(), "<|startoftext|>", "<|endoftext|>");
        let map: serde_json::Map<String, serde_json::Value> = names
            .into_iter()
            .enumerate()
            .map(|(id, name)| (name, serde_json::Value::from(id)))
            .collect();
        (serde_json::Value::Object(map).to_string(), CLIP_MERGES)
    }

    /// A tokenizer with the vocabulary of a model directory in Hugging Face's layout: `vocab`
    /// is `vocab.json` (a JSON object from token to id) and `merges` is `merges.txt` (an
    /// optional `#version` line, then one `left right` merge per line, highest priority
    /// first).
    ///
    /// The start and end tokens are looked up as `<|startoftext|>` / `<|endoftext|>` (or
    /// open_clip's `<start_of_text>` / `<end_of_text>`). The files are checked so that encoding
    /// can never meet an unknown token: every byte token (alone and with `</w>`) must be in the
    /// vocabulary, as must both sides and the result of every merge, and ids must be distinct.
    ///
    /// # Errors
    ///
    /// [`TokenizerError::Io`] when a file cannot be read, [`TokenizerError::InvalidFile`] (with
    /// the file and what is wrong) when its content is not as described.
    pub fn from_files(vocab: &Path, merges: &Path) -> Result<Self, TokenizerError> {
        let vocab_text = read(vocab)?;
        let merges_text = read(merges)?;
        let invalid = |path: &Path, message: String| TokenizerError::InvalidFile {
            path: path.to_owned(),
            message,
        };

        let table: HashMap<String, u32> = serde_json::from_str(&vocab_text).map_err(|e| {
            invalid(
                vocab,
                format!("not a JSON object mapping each token to an integer id: {e}"),
            )
        })?;
        let mut owners: HashMap<u32, &str> = HashMap::with_capacity(table.len());
        for (name, &id) in &table {
            if let Some(other) = owners.insert(id, name) {
                let (a, b) = if other < name.as_str() {
                    (other, name.as_str())
                } else {
                    (name.as_str(), other)
                };
                return Err(invalid(
                    vocab,
                    format!("id {id} is given to both {a:?} and {b:?}"),
                ));
            }
        }
        let vocab_size = table.values().max().map_or(0, |&max| max as usize + 1);
        let lookup = |name: &str| table.get(name).copied();
        let special = |names: [&str; 2]| {
            names.iter().find_map(|name| lookup(name)).ok_or_else(|| {
                invalid(
                    vocab,
                    format!("no special token {:?} (or {:?})", names[0], names[1]),
                )
            })
        };
        let sot_id = special(["<|startoftext|>", SOT_LITERAL])?;
        let eot_id = special(["<|endoftext|>", EOT_LITERAL])?;

        let symbols = byte_symbols();
        for &(byte, c) in &symbols {
            for name in [c.to_string(), format!("{c}</w>")] {
                if lookup(&name).is_none() {
                    return Err(invalid(
                        vocab,
                        format!("no byte-level token {name:?} (for byte 0x{byte:02X})"),
                    ));
                }
            }
        }
        let (byte_ids, byte_end_ids) = byte_tables(&symbols, |name| lookup(name).unwrap_or(0));

        let mut merge_ids = Vec::new();
        for (line_number, line) in merge_lines(&merges_text) {
            let Some((left, right)) = split_merge(line) else {
                return Err(invalid(
                    merges,
                    format!("line {line_number}: expected two tokens separated by a space, found {line:?}"),
                ));
            };
            let joined = format!("{left}{right}");
            let mut ids = [0u32; 3];
            for (slot, name) in ids.iter_mut().zip([left, right, joined.as_str()]) {
                *slot = lookup(name).ok_or_else(|| {
                    invalid(
                        merges,
                        format!(
                            "line {line_number}: token {name:?} is not in {}",
                            vocab.display()
                        ),
                    )
                })?;
            }
            merge_ids.push((ids[0], ids[1], ids[2]));
        }
        if merge_ids.is_empty() {
            return Err(invalid(merges, "no merges".to_owned()));
        }
        Ok(Self::new(
            Bpe::new(byte_ids, byte_end_ids, &merge_ids),
            sot_id,
            eot_id,
            vocab_size,
        ))
    }

    /// Assembles a tokenizer and builds the lazily compiled patterns and tables now, so that
    /// the first text tokenized is as fast as the others.
    fn new(bpe: Bpe, sot_id: u32, eot_id: u32, vocab_size: usize) -> Self {
        pretokenize::warm_up();
        warm_up();
        Self {
            bpe,
            sot_id,
            eot_id,
            vocab_size,
        }
    }

    /// The BPE ids of `text` after [`clean`], without the start and end tokens (the
    /// reference's `SimpleTokenizer.encode`).
    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.encode_up_to(text, usize::MAX)
    }

    /// `[start] + encode(text) + [end]`, cut to `context_length` ids (the first ones, with the
    /// last replaced by the end token) and padded with [`PAD_ID`] to exactly `context_length`:
    /// the reference's `tokenize(text, context_length)`.
    ///
    /// # Errors
    ///
    /// [`TokenizerError::ContextLengthTooSmall`] when `context_length` is below 2, which cannot
    /// hold both the start and the end token. (The reference returns just the end token for 1,
    /// and fails with an `IndexError` for 0.)
    pub fn tokenize(&self, text: &str, context_length: usize) -> Result<Vec<u32>, TokenizerError> {
        let mut ids = self.tokenize_unpadded(text, context_length)?;
        ids.resize(context_length, PAD_ID);
        Ok(ids)
    }

    /// [`Tokenizer::tokenize`] without the padding: the ids from the start token up to and
    /// including the final end token (at most `context_length` of them).
    ///
    /// Note that a text containing the literal `<end_of_text>` (or `<start_of_text>`) gets that
    /// special id in the middle too, as in the reference; CLIP's text model pools the features
    /// at the *first* highest id (`argmax`), i.e. the first end token.
    ///
    /// # Errors
    ///
    /// [`TokenizerError::ContextLengthTooSmall`] when `context_length` is below 2.
    pub fn tokenize_unpadded(
        &self,
        text: &str,
        context_length: usize,
    ) -> Result<Vec<u32>, TokenizerError> {
        if context_length < 2 {
            return Err(TokenizerError::ContextLengthTooSmall(context_length));
        }
        // Whether or not the text is cut, what remains is [start] + the first ids + [end].
        let body = self.encode_up_to(text, context_length - 2);
        let mut ids = Vec::with_capacity(body.len() + 2);
        ids.push(self.sot_id);
        ids.extend_from_slice(&body);
        ids.push(self.eot_id);
        Ok(ids)
    }

    /// Number of token ids in the vocabulary (the highest id plus one): 49,408 for CLIP.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The id of the start-of-text token ([`SOT_ID`] for CLIP's vocabulary).
    pub fn sot_id(&self) -> u32 {
        self.sot_id
    }

    /// The id of the end-of-text token ([`EOT_ID`] for CLIP's vocabulary).
    pub fn eot_id(&self) -> u32 {
        self.eot_id
    }

    /// The first `limit` BPE ids of `text` (all of them for `usize::MAX`). Pieces after the
    /// limit are not encoded at all, so tokenizing a huge text stays cheap past the cleaning.
    fn encode_up_to(&self, text: &str, limit: usize) -> Vec<u32> {
        let cleaned = clean(text);
        let mut ids = Vec::new();
        for piece in pretokenize::pieces(&cleaned) {
            if ids.len() >= limit {
                break;
            }
            match piece {
                SOT_LITERAL => ids.push(self.sot_id),
                EOT_LITERAL => ids.push(self.eot_id),
                word => self.bpe.encode_word(word, &mut ids),
            }
        }
        ids.truncate(limit);
        ids
    }
}

/// Reads a whole file as UTF-8.
fn read(path: &Path) -> Result<String, TokenizerError> {
    let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| TokenizerError::InvalidFile {
        path: path.to_owned(),
        message: format!("not UTF-8 text ({e})"),
    })
}

/// The merge lines of a `merges.txt`, with their 1-based line numbers: the `#version` header
/// and blank lines are skipped.
fn merge_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|&(number, line)| {
            let header = number == 1 && line.starts_with("#version");
            !header && !line.trim().is_empty()
        })
}

/// Splits a merge line into its two tokens (the reference's `tuple(merge.split())`).
fn split_merge(line: &str) -> Option<(&str, &str)> {
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(left), Some(right), None) => Some((left, right)),
        _ => None,
    }
}

/// The ids of each byte's token inside a word and at its end.
fn byte_tables(symbols: &[(u8, char)], id_of: impl Fn(&str) -> u32) -> ([u32; 256], [u32; 256]) {
    let mut inner = [0u32; 256];
    let mut end = [0u32; 256];
    for &(byte, c) in symbols {
        inner[usize::from(byte)] = id_of(&c.to_string());
        end[usize::from(byte)] = id_of(&format!("{c}</w>"));
    }
    (inner, end)
}

/// The merges of CLIP's embedded `merges.txt`, highest priority first.
fn clip_merge_pairs() -> Vec<(&'static str, &'static str)> {
    merge_lines(CLIP_MERGES)
        .filter_map(|(_, line)| split_merge(line))
        .collect()
}

/// CLIP's tokens in id order: the 256 byte symbols, the same ending a
/// word, one per merge, then the start and end tokens (named `sot`/`eot`).
fn clip_token_names(pairs: &[(&str, &str)], sot: &str, eot: &str) -> Vec<String> {
    let symbols = byte_symbols();
    let mut names: Vec<String> = Vec::with_capacity(512 + pairs.len() + 2);
    for suffix in ["", "</w>"] {
        names.extend(symbols.iter().map(|&(_, c)| format!("{c}{suffix}")));
    }
    names.extend(pairs.iter().map(|(left, right)| format!("{left}{right}")));
    names.push(sot.to_owned());
    names.push(eot.to_owned());
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn is_send_and_sync() {
        assert_send_sync::<Tokenizer>();
    }

    #[test]
    fn clip_vocabulary() {
        let tokenizer = Tokenizer::clip();
        assert_eq!(tokenizer.vocab_size(), 49_408);
        assert_eq!(merge_lines(CLIP_MERGES).count(), 48_894);
        assert!(merge_lines(CLIP_MERGES).all(|(_, line)| split_merge(line).is_some()));
        assert_eq!((tokenizer.sot_id(), tokenizer.eot_id()), (SOT_ID, EOT_ID));
    }

    #[test]
    fn clip_files_round_trip() {
        let (vocab, merges) = Tokenizer::clip_files();
        let dir = tempfile::tempdir().unwrap();
        let (v, m) = (dir.path().join("vocab.json"), dir.path().join("merges.txt"));
        std::fs::write(&v, &vocab).unwrap();
        std::fs::write(&m, merges).unwrap();
        let from_files = Tokenizer::from_files(&v, &m).unwrap();
        let clip = Tokenizer::clip();
        assert_eq!(from_files.vocab_size(), clip.vocab_size());
        assert_eq!((from_files.sot_id(), from_files.eot_id()), (SOT_ID, EOT_ID));
        for text in [
            "a photo of a cat",
            "Kids building a sandcastle at sunset!",
            "naïve café 東京",
        ] {
            assert_eq!(
                from_files.tokenize(text, 77).unwrap(),
                clip.tokenize(text, 77).unwrap()
            );
        }
        let parsed: serde_json::Value = serde_json::from_str(&vocab).unwrap();
        assert_eq!(parsed["<|endoftext|>"], EOT_ID);
        assert_eq!(parsed["cat</w>"], 2368);
    }

    #[test]
    fn encodes_words() {
        let tokenizer = Tokenizer::clip();
        assert_eq!(tokenizer.encode(""), Vec::<u32>::new());
        assert_eq!(
            tokenizer.encode("a photo of a cat"),
            [320, 1125, 539, 320, 2368]
        );
        assert_eq!(tokenizer.encode("<end_of_text>"), [EOT_ID]);
        // Cached the second time, same answer.
        assert_eq!(
            tokenizer.encode("a photo of a cat"),
            [320, 1125, 539, 320, 2368]
        );
    }

    #[test]
    fn framing_and_truncation() {
        let tokenizer = Tokenizer::clip();
        assert_eq!(
            tokenizer.tokenize_unpadded("", 77).ok(),
            Some(vec![SOT_ID, EOT_ID])
        );
        assert_eq!(
            tokenizer.tokenize("a cat", 4).ok(),
            Some(vec![SOT_ID, 320, 2368, EOT_ID])
        );
        assert_eq!(
            tokenizer.tokenize("a cat", 3).ok(),
            Some(vec![SOT_ID, 320, EOT_ID])
        );
        assert_eq!(
            tokenizer.tokenize("a cat", 2).ok(),
            Some(vec![SOT_ID, EOT_ID])
        );
        assert_eq!(
            tokenizer.tokenize("a cat", 6).ok(),
            Some(vec![SOT_ID, 320, 2368, EOT_ID, PAD_ID, PAD_ID])
        );
        for short in [0, 1] {
            assert!(
                matches!(tokenizer.tokenize("a cat", short), Err(TokenizerError::ContextLengthTooSmall(n)) if n == short)
            );
            assert!(tokenizer.tokenize_unpadded("a cat", short).is_err());
        }
        let long = "cat ".repeat(500);
        let ids = tokenizer.tokenize_unpadded(&long, 77).unwrap_or_default();
        assert_eq!(ids.len(), 77);
        assert_eq!(ids[76], EOT_ID);
    }

    #[test]
    fn never_panics_on_odd_text() {
        let tokenizer = Tokenizer::clip();
        let samples = [
            "\u{0}\u{1}\u{1b}[31m\u{7f}\u{80}\u{9f}\u{ad}\u{fffd}\u{ffff}\u{10ffff}",
            "\u{ed}\u{a0}\u{80}\u{ed}\u{b0}\u{80}\u{c0}\u{80}\u{c0}\n",
            "&#x110000;&#0;&#99999999999999999999;&;&#;&#x;&amp&&&&",
            "Ã Ã\u{a0}Ã quele â€ Â\u{a0} \u{1a}\u{1a}",
            "\r\n\r\r\n\u{2028}\u{2029}\u{85}",
            "'ſ <ſtart_of_text> ﬅ ǅ \u{345}",
        ];
        for sample in samples {
            for context_length in [2, 3, 77] {
                let ids = tokenizer
                    .tokenize(sample, context_length)
                    .unwrap_or_default();
                assert_eq!(ids.len(), context_length);
            }
        }
    }
}
