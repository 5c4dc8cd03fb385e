//! `glimpse tokenize`: JSON lines in, token ids out.

use std::io::{BufRead, Write};

use anyhow::Context;
use glimpse_tokenizer::Tokenizer;

use crate::exit::InputError;

/// Reads `{"text": ...}` lines from stdin and prints `{"text", "ids"}` lines.
pub fn run(context_length: usize) -> anyhow::Result<()> {
    let tokenizer = Tokenizer::clip();
    // Refuse an unusable context length before reading any input.
    tokenizer.tokenize("", context_length)?;
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (n, line) in stdin.split(b'\n').enumerate() {
        let line = line.context("reading stdin")?;
        let line = std::str::from_utf8(&line).map_err(|e| {
            InputError(format!(
                "stdin line {}: not valid UTF-8 ({e}); give text as UTF-8 JSON",
                n + 1
            ))
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            InputError(format!(
                "stdin line {}: not JSON ({e}); expected {{\"text\": \"...\"}}",
                n + 1
            ))
        })?;
        let Some(text) = value.get("text").and_then(|t| t.as_str()) else {
            return Err(InputError(format!(
                "stdin line {}: no string field \"text\"; expected {{\"text\": \"...\"}}",
                n + 1
            ))
            .into());
        };
        let ids = tokenizer.tokenize(text, context_length)?;
        serde_json::to_writer(&mut out, &serde_json::json!({"text": text, "ids": ids}))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
