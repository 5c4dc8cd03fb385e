//! CLIP's text cleaning: `whitespace_clean(basic_clean(text)).lower()` from open_clip.

use crate::ftfy::{self, tables::PY_WHITESPACE};
use crate::html;

/// Cleans a text exactly as CLIP's reference tokenizer (open_clip's `SimpleTokenizer`) does
/// before splitting it into tokens.
///
/// In order: `ftfy.fix_text` (mojibake repair, HTML entities when the line has no `<`, curly
/// quotes, ligatures, full-width forms, control characters, line breaks, NFC), Python's
/// `html.unescape` twice, runs of whitespace (in Python's sense of `str.isspace`) collapsed to
/// one space and trimmed, and Unicode lower-casing.
///
/// ```
/// assert_eq!(glimpse_tokenizer::clean("  Crème&nbsp;BRÛLÉE  "), "crème brûlée");
/// assert_eq!(glimpse_tokenizer::clean("cafÃ© “au lait”"), "café \"au lait\"");
/// ```
pub fn clean(text: &str) -> String {
    let fixed = ftfy::fix_text(text);
    let once = html::unescape(&fixed);
    let twice = html::unescape(&once);
    let mut collapsed = String::with_capacity(twice.len());
    for word in twice.split(is_python_space).filter(|word| !word.is_empty()) {
        if !collapsed.is_empty() {
            collapsed.push(' ');
        }
        collapsed.push_str(word);
    }
    collapsed.to_lowercase()
}

/// Builds everything the cleaning compiles lazily (patterns, entity and code-page tables), so
/// that the first real text does not pay for it.
pub(crate) fn warm_up() {
    let _ = clean("cafÃ© &amp; &eacute; &#233;\u{1b}[0m");
}

/// Python's `str.isspace`, which is also what `\s` and `str.split()` use. (It differs from
/// Rust's `char::is_whitespace` by including U+001C..U+001F.)
pub(crate) fn is_python_space(c: char) -> bool {
    let c = u32::from(c);
    PY_WHITESPACE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_python_whitespace() {
        assert_eq!(clean("a\u{1c}b\u{1f}c"), "abc"); // ftfy removes these before the split
        assert_eq!(clean("&#x1e;x"), "x"); // html.unescape drops them too
        assert_eq!(clean("a\u{2003}b\u{3000}c\u{a0}d\u{2028}e"), "a b c d e");
        assert_eq!(clean("d\u{85}e"), "d…e"); // ftfy reads U+0085 as windows-1252's ellipsis
        assert_eq!(clean("zero\u{200b}width"), "zero\u{200b}width");
        assert!(is_python_space('\u{1c}'));
        assert!(!is_python_space('\u{200b}'));
    }

    #[test]
    fn lower_cases_like_python() {
        assert_eq!(clean("ΟΔΥΣΣΕΥΣ"), "οδυσσευς");
        assert_eq!(clean("İstanbul"), "i\u{307}stanbul");
        assert_eq!(clean("ǅemal"), "džemal");
    }

    #[test]
    fn html_is_unescaped_twice() {
        assert_eq!(clean("&amp;amp;amp;"), "&");
        assert_eq!(clean("<b>&amp;amp;</b>"), "<b>&</b>");
    }

    #[test]
    fn empty_and_blank() {
        assert_eq!(clean(""), "");
        assert_eq!(clean(" \t\r\n "), "");
    }
}
