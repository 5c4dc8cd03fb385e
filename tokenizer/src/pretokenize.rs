//! Pre-tokenisation: cutting a cleaned text into the pieces that BPE encodes one by one.
//!
//! The reference cuts with Python's `regex` module, `IGNORECASE`:
//! `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+`.
//! At each position the first alternative that matches wins, and characters that match nothing
//! (spaces) are skipped. This module scans for the same cuts directly, with the letter and
//! number classes of the `regex` crate's Unicode tables: a compiled pattern with `\p{L}` costs
//! up to milliseconds on each new kind of text while its lazy automaton is being built, where
//! the scan costs a few microseconds every time.
//!
//! Two details of Python's `IGNORECASE` are reproduced: the literals also match their case
//! variants, which outside ASCII means `ſ` (U+017F, LONG S) for `s` (so `'ſ` is a contraction);
//! and U+0345 (COMBINING GREEK YPOGEGRAMMENI, which case-folds to the letter ι) is left out of
//! the negated class while not being a letter, so it matches nothing and is dropped.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// The special-token literals open_clip's tokenizer recognises in text. (HF's vocabulary names
/// the same two tokens `<|startoftext|>` and `<|endoftext|>`, but open_clip treats those as
/// ordinary text.)
pub(crate) const SOT_LITERAL: &str = "<start_of_text>";
/// See [`SOT_LITERAL`].
pub(crate) const EOT_LITERAL: &str = "<end_of_text>";

/// The contractions of the pattern, after their apostrophe, in the pattern's order.
const CONTRACTIONS: [&str; 7] = ["s", "t", "re", "ve", "m", "ll", "d"];

/// Sorted, inclusive character ranges.
type Ranges = Vec<(char, char)>;

/// The ranges of a Unicode class such as `\p{L}`, from the `regex` crate's tables.
fn class_ranges(class: &str) -> Ranges {
    let Ok(hir) = regex_syntax::parse(class) else {
        return Vec::new();
    };
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => class
            .ranges()
            .iter()
            .map(|r| (r.start(), r.end()))
            .collect(),
        _ => Vec::new(),
    }
}

/// `\p{L}` and `\p{N}`.
fn classes() -> &'static (Ranges, Ranges) {
    static CLASSES: OnceLock<(Ranges, Ranges)> = OnceLock::new();
    CLASSES.get_or_init(|| (class_ranges(r"\p{L}"), class_ranges(r"\p{N}")))
}

fn in_ranges(c: char, ranges: &[(char, char)]) -> bool {
    ranges
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// `\p{L}`.
fn is_letter(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphabetic()
    } else {
        in_ranges(c, &classes().0)
    }
}

/// `\p{N}`.
fn is_number(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_digit()
    } else {
        in_ranges(c, &classes().1)
    }
}

/// `[^\s\p{L}\p{N}]` under Python's `IGNORECASE` (`\s` is Unicode White_Space there, as in
/// `char::is_whitespace`).
fn is_other(c: char) -> bool {
    !c.is_whitespace() && c != '\u{345}' && !is_letter(c) && !is_number(c)
}

/// Loads the character classes now rather than on the first text.
pub(crate) fn warm_up() {
    let _ = classes();
}

/// The pieces of `text`, in order.
pub(crate) fn pieces(text: &str) -> Pieces<'_> {
    Pieces { text, pos: 0 }
}

/// Iterator over the pieces of a text.
pub(crate) struct Pieces<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            let rest = self.text.get(self.pos..)?;
            let first = rest.chars().next()?;
            let len = match_len(rest, first);
            let start = self.pos;
            if len > 0 {
                self.pos += len;
                return self.text.get(start..self.pos);
            }
            self.pos += first.len_utf8();
        }
    }
}

/// Length in bytes of the pattern's match at the start of `rest` (whose first character is
/// `first`), 0 if there is none.
fn match_len(rest: &str, first: char) -> usize {
    for literal in [SOT_LITERAL, EOT_LITERAL] {
        if let Some(len) = literal_len(rest, literal) {
            return len;
        }
    }
    if first == '\'' {
        if let Some(len) = CONTRACTIONS.iter().find_map(|c| literal_len(&rest[1..], c)) {
            return 1 + len;
        }
    }
    let run = |class: fn(char) -> bool| {
        rest.char_indices()
            .find(|&(_, c)| !class(c))
            .map_or(rest.len(), |(i, _)| i)
    };
    if is_letter(first) {
        run(is_letter)
    } else if is_number(first) {
        first.len_utf8()
    } else if is_other(first) {
        run(is_other)
    } else {
        0
    }
}

/// Length in bytes of `literal` (lower-case ASCII) at the start of `text`, matched
/// case-insensitively as Python's `regex` does, if it is there.
fn literal_len(text: &str, literal: &str) -> Option<usize> {
    let mut len = 0;
    let mut chars = text.chars();
    for expected in literal.chars() {
        let c = chars.next()?;
        let same = c.to_ascii_lowercase() == expected || (expected == 's' && c == '\u{17f}');
        if !same {
            return None;
        }
        len += c.len_utf8();
    }
    Some(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    /// The reference pattern for Rust's `regex` (checked against Python's `regex` module on
    /// 80,000 generated texts), as an oracle for the scan.
    fn oracle(text: &str) -> Vec<&str> {
        static PATTERN: OnceLock<Regex> = OnceLock::new();
        let pattern = PATTERN.get_or_init(|| {
            Regex::new(
                r"(?i:<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d)|\p{L}+|\p{N}|[^\s\p{L}\p{N}\x{345}]+",
            )
            .unwrap()
        });
        pattern.find_iter(text).map(|m| m.as_str()).collect()
    }

    #[test]
    fn classes_are_loaded() {
        let (letters, numbers) = classes();
        assert!(letters.len() > 500 && numbers.len() > 100);
        assert!(
            is_letter('ж') && is_letter('東') && !is_letter('\u{301}') && !is_letter('\u{345}')
        );
        assert!(is_number('٣') && is_number('½') && is_number('Ⅻ') && !is_number('x'));
    }

    #[test]
    fn cuts_like_the_reference() {
        // Python: regex.findall(pattern, text, regex.IGNORECASE)
        let cases: [(&str, &[&str]); 6] = [
            (
                "y'all'd've 3.14 <end_of_text>x !?",
                &[
                    "y",
                    "'",
                    "all",
                    "'d",
                    "'ve",
                    "3",
                    ".",
                    "1",
                    "4",
                    "<end_of_text>",
                    "x",
                    "!?",
                ],
            ),
            (
                "'\u{17f} <\u{17f}tart_of_text>",
                &["'\u{17f}", "<\u{17f}tart_of_text>"],
            ),
            ("a\u{345}b \u{345}", &["a", "b"]),
            (
                "!!<end_of_text>",
                &["!!<", "end", "_", "of", "_", "text", ">"],
            ),
            (
                "<|endoftext|> caf\u{e9}",
                &["<|", "endoftext", "|>", "caf\u{e9}"],
            ),
            (
                "e\u{301}t\u{e9} ½ 👍🏽!",
                &["e", "\u{301}", "t\u{e9}", "½", "👍🏽!"],
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(pieces(text).collect::<Vec<_>>(), expected, "{text:?}");
            assert_eq!(oracle(text), expected, "{text:?}");
        }
    }

    #[test]
    fn scan_equals_the_pattern() {
        // Deterministic pseudo-random texts made of interesting fragments.
        let fragments = [
            "a",
            "Zb",
            " ",
            "  ",
            "s",
            "S",
            "t",
            "'",
            "'s",
            "'T",
            "'re",
            "'Ve",
            "'m",
            "'LL",
            "'d",
            "'x",
            "'\u{17f}",
            "\u{17f}",
            "\u{212a}",
            "0",
            "19",
            "<start_of_text>",
            "<END_of_TEXT>",
            "<\u{17f}tart_of_text>",
            "<end_of_tex",
            "<",
            ">",
            "_",
            "!?",
            ".",
            "\t",
            "\n",
            "\u{b}",
            "\u{c}",
            "\r",
            "\u{1}",
            "\u{1c}",
            "\u{7f}",
            "~|",
            "é",
            "e\u{301}",
            "\u{345}",
            "ж",
            "Ω",
            "東京",
            "한",
            "٣",
            "½",
            "Ⅻ",
            "²",
            "\u{a0}",
            "\u{3000}",
            "\u{2028}",
            "\u{85}",
            "\u{200b}",
            "🐱",
            "👍🏽",
            "\u{fffd}",
            "\u{378}",
            "\u{e000}",
            "ـ",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..30_000 {
            let len = next() % 12;
            let text: String = (0..len)
                .map(|_| fragments[(next() % fragments.len() as u64) as usize])
                .collect();
            assert_eq!(pieces(&text).collect::<Vec<_>>(), oracle(&text), "{text:?}");
        }
    }
}
