//! The tokenizer against the reference: `tests/fixtures/tokenizer_cases.json` holds 265 texts
//! with the ids and cleaned text that open_clip 3.3's tokenizer produced for them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use glimpse_tokenizer::{clean, Tokenizer, TokenizerError, CONTEXT_LENGTH, EOT_ID, PAD_ID, SOT_ID};
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: u32,
    category: String,
    text: String,
    /// `tokenize(text, 77)`: start, BPE ids, end, padded with 0.
    ids: Vec<u32>,
    /// The cleaned text (after lower-casing).
    clean_text: String,
    /// `encode(text)`: the BPE ids alone.
    bpe_ids: Vec<u32>,
    /// Length of `[start] + bpe_ids + [end]` before truncation.
    n_tokens: usize,
}

/// Cases that may differ from the reference, with the reason. Empty: all 265 match.
const ALLOWED_MISMATCHES: &[u32] = &[];

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn load_cases() -> Vec<Case> {
    let path = fixtures_dir().join("tokenizer_cases.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let fixture: Fixture =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad {}: {e}", path.display()));
    assert_eq!(fixture.cases.len(), 265);
    fixture.cases
}

/// Every mismatch of `tokenizer` on the fixture, as readable lines.
fn mismatches(tokenizer: &Tokenizer, cases: &[Case]) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for case in cases {
        let mut problems = Vec::new();
        let cleaned = clean(&case.text);
        if cleaned != case.clean_text {
            problems.push(format!(
                "clean: got {cleaned:?}, reference {:?}",
                case.clean_text
            ));
        }
        let encoded = tokenizer.encode(&case.text);
        if encoded != case.bpe_ids {
            problems.push(format!(
                "encode: got {encoded:?}, reference {:?}",
                case.bpe_ids
            ));
        }
        match tokenizer.tokenize(&case.text, CONTEXT_LENGTH) {
            Ok(ids) if ids == case.ids => {}
            Ok(ids) => problems.push(format!("tokenize: got {ids:?}, reference {:?}", case.ids)),
            Err(e) => problems.push(format!("tokenize failed: {e}")),
        }
        let unpadded = tokenizer
            .tokenize_unpadded(&case.text, CONTEXT_LENGTH)
            .unwrap_or_default();
        let expected_unpadded = &case.ids[..case.n_tokens.min(CONTEXT_LENGTH)];
        if unpadded != expected_unpadded {
            problems.push(format!(
                "tokenize_unpadded: got {unpadded:?}, reference {expected_unpadded:?}"
            ));
        }
        if !problems.is_empty() {
            found.push((
                case.id,
                format!(
                    "case {} [{}] {:?}: {}",
                    case.id,
                    case.category,
                    case.text,
                    problems.join("; ")
                ),
            ));
        }
    }
    found
}

#[test]
fn embedded_vocabulary_matches_the_reference() {
    let cases = load_cases();
    let tokenizer = Tokenizer::clip();
    let found = mismatches(&tokenizer, &cases);
    let mut per_category: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for case in &cases {
        let entry = per_category.entry(case.category.as_str()).or_default();
        entry.1 += 1;
        if !found.iter().any(|(id, _)| *id == case.id) {
            entry.0 += 1;
        }
    }
    for (category, (ok, total)) in &per_category {
        eprintln!("{category:>20}: {ok}/{total}");
    }
    for (_, line) in &found {
        eprintln!("MISMATCH {line}");
    }
    eprintln!(
        "{} of {} cases match the reference",
        cases.len() - found.len(),
        cases.len()
    );
    let unexpected: Vec<&String> = found
        .iter()
        .filter(|(id, _)| !ALLOWED_MISMATCHES.contains(id))
        .map(|(_, line)| line)
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} cases differ from the reference:\n{unexpected:#?}",
        unexpected.len()
    );
}

#[test]
fn padding_and_truncation_follow_the_reference() {
    let cases = load_cases();
    for case in &cases {
        assert_eq!(case.ids.len(), CONTEXT_LENGTH);
        assert_eq!(case.ids[0], SOT_ID);
        let used = case.n_tokens.min(CONTEXT_LENGTH);
        assert_eq!(case.ids[used - 1], EOT_ID, "case {}", case.id);
        assert!(
            case.ids[used..].iter().all(|&id| id == PAD_ID),
            "case {}",
            case.id
        );
    }
}

#[test]
fn model_directory_vocabulary_gives_the_same_ids() {
    let cases = load_cases();
    let dir = fixtures_dir().join("clip-tiny-hf");
    let from_files = Tokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))
        .unwrap_or_else(|e| panic!("cannot load the fixture vocabulary: {e}"));
    assert_eq!(from_files.vocab_size(), 49_408);
    assert_eq!((from_files.sot_id(), from_files.eot_id()), (SOT_ID, EOT_ID));
    let embedded = Tokenizer::clip();
    for case in &cases {
        let ids = from_files
            .tokenize(&case.text, CONTEXT_LENGTH)
            .unwrap_or_default();
        assert_eq!(
            ids,
            embedded
                .tokenize(&case.text, CONTEXT_LENGTH)
                .unwrap_or_default(),
            "case {}",
            case.id
        );
        assert_eq!(ids, case.ids, "case {}", case.id);
    }
}

/// Writes `vocab` and `merges` into a fresh directory and loads them.
fn load(name: &str, vocab: &str, merges: &str) -> Result<Tokenizer, TokenizerError> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("tokenizer-bad-files")
        .join(name);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let (vocab_path, merges_path) = (dir.join("vocab.json"), dir.join("merges.txt"));
    std::fs::write(&vocab_path, vocab).unwrap_or_else(|e| panic!("cannot write: {e}"));
    std::fs::write(&merges_path, merges).unwrap_or_else(|e| panic!("cannot write: {e}"));
    Tokenizer::from_files(&vocab_path, &merges_path)
}

/// A small valid vocabulary: the 512 byte tokens, `ab`, and the special tokens.
fn small_vocab(extra: &[(&str, u32)]) -> String {
    let mut tokens = BTreeMap::new();
    let printable = |b: u32| matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut symbols: Vec<char> = (0..256)
        .filter(|&b| printable(b))
        .filter_map(char::from_u32)
        .collect();
    symbols.extend(
        (256..)
            .zip((0..256).filter(|&b| !printable(b)))
            .filter_map(|(c, _)| char::from_u32(c)),
    );
    for (i, c) in symbols.iter().enumerate() {
        tokens.insert(c.to_string(), i as u32);
        tokens.insert(format!("{c}</w>"), 256 + i as u32);
    }
    tokens.insert("ab</w>".to_owned(), 512);
    tokens.insert("<|startoftext|>".to_owned(), 513);
    tokens.insert("<|endoftext|>".to_owned(), 514);
    for (name, id) in extra {
        tokens.insert((*name).to_owned(), *id);
    }
    serde_json::to_string(&tokens).unwrap_or_default()
}

#[test]
fn small_model_directory_works() {
    let tokenizer = load("small", &small_vocab(&[]), "#version: 0.2\na b</w>\n")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tokenizer.vocab_size(), 515);
    assert_eq!(
        tokenizer.tokenize_unpadded("ab AB", 77).unwrap_or_default(),
        [513, 512, 512, 514]
    );
    // 'x' is byte 0x78, the 88th printable byte: id 87 inside a word, 256 + 87 at its end.
    assert_eq!(tokenizer.encode("xx"), [87, 256 + 87]);
}

#[test]
fn bad_files_give_clear_errors() {
    let missing = Tokenizer::from_files(
        Path::new("/nonexistent/vocab.json"),
        Path::new("/nonexistent/merges.txt"),
    );
    assert!(
        matches!(&missing, Err(TokenizerError::Io { path, .. }) if path.ends_with("vocab.json")),
        "{missing:?}"
    );

    let expect_invalid =
        |result: Result<Tokenizer, TokenizerError>, file: &str, words: &[&str]| match result {
            Err(error @ TokenizerError::InvalidFile { .. }) => {
                let message = error.to_string();
                assert!(message.contains(file), "{message}");
                for word in words {
                    assert!(message.contains(word), "{message:?} lacks {word:?}");
                }
            }
            other => panic!("expected an invalid-file error about {file}, got {other:?}"),
        };
    let merges = "#version: 0.2\na b</w>\n";
    expect_invalid(
        load("not-json", "{\"a\": ", merges),
        "vocab.json",
        &["JSON"],
    );
    expect_invalid(
        load("not-object", "[1, 2]", merges),
        "vocab.json",
        &["JSON object"],
    );
    expect_invalid(
        load("bad-id", "{\"a\": \"one\"}", merges),
        "vocab.json",
        &["integer"],
    );
    expect_invalid(
        load("negative-id", "{\"a\": -1}", merges),
        "vocab.json",
        &["integer"],
    );
    expect_invalid(
        load("duplicate-id", &small_vocab(&[("zz", 0)]), merges),
        "vocab.json",
        &["id 0"],
    );
    expect_invalid(
        load(
            "no-bytes",
            "{\"<|startoftext|>\": 0, \"<|endoftext|>\": 1}",
            merges,
        ),
        "vocab.json",
        &["byte"],
    );
    expect_invalid(
        load(
            "no-special",
            &small_vocab(&[]).replace("<|endoftext|>", "<eot>"),
            merges,
        ),
        "vocab.json",
        &["<|endoftext|>"],
    );
    expect_invalid(
        load("three-parts", &small_vocab(&[]), "#version: 0.2\na b c\n"),
        "merges.txt",
        &["line 2"],
    );
    expect_invalid(
        load("unknown-token", &small_vocab(&[]), "#version: 0.2\na b\n"),
        "merges.txt",
        &["line 2", "\"ab\""],
    );
    expect_invalid(
        load("empty-merges", &small_vocab(&[]), "#version: 0.2\n"),
        "merges.txt",
        &["no merges"],
    );
    expect_invalid(
        load("binary", &small_vocab(&[]), "\u{0}\u{1}"),
        "merges.txt",
        &["line 1"],
    );
    let not_utf8 = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tokenizer-bad-files/latin1.txt");
    std::fs::write(&not_utf8, b"\xff\xfe").unwrap_or_else(|e| panic!("cannot write: {e}"));
    let dir = fixtures_dir().join("clip-tiny-hf");
    expect_invalid(
        Tokenizer::from_files(&dir.join("vocab.json"), &not_utf8),
        "latin1.txt",
        &["UTF-8"],
    );
}

/// Rough timing of a typical query (printed, not asserted; run with `--nocapture` to see it).
#[test]
fn typical_query_timing() {
    let start = Instant::now();
    let tokenizer = Tokenizer::clip();
    let built = start.elapsed();
    let time = |text: &str, rounds: u32| {
        let start = Instant::now();
        for _ in 0..rounds {
            let ids = tokenizer.tokenize(text, CONTEXT_LENGTH).unwrap_or_default();
            assert_eq!(ids.len(), CONTEXT_LENGTH);
        }
        start.elapsed() / rounds
    };
    let query = "a photo of a golden retriever in snow"; // 8 words
    let first = time(query, 1);
    let warm = time(query, 1000);
    let accented = "a photo of the Crème Brûlée at a café in Zürich";
    let accented_first = time(accented, 1);
    let accented_warm = time(accented, 1000);
    let start = Instant::now();
    for i in 0..200u32 {
        let fresh = format!("a photo of a golden retriever named x{}y{i}", i * 7919);
        let _ = tokenizer.tokenize(&fresh, CONTEXT_LENGTH);
    }
    let new_word = start.elapsed() / 200;
    eprintln!(
        "Tokenizer::clip() {built:?}; tokenize({query:?}): first call {first:?}, then {warm:?}; \
         with an uncached word {new_word:?}; {accented:?}: first {accented_first:?}, then {accented_warm:?}"
    );
}
