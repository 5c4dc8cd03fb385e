//! A port of `ftfy.fix_text` (ftfy 6.3.1, default configuration), the first step of CLIP's
//! text cleaning.
//!
//! The steps and their order are ftfy's: the text is cut into lines, and each line is run
//! through `unescape_html` (only while no `<` has been seen), `fix_encoding` (mojibake, see
//! [`encoding`]), `fix_c1_controls`, `fix_latin_ligatures`, `fix_character_width`,
//! `uncurl_quotes`, `fix_line_breaks`, `remove_terminal_escapes`, `remove_control_chars` and NFC
//! normalisation, again and again until nothing changes. (`fix_surrogates` has nothing to do:
//! a Rust string cannot hold surrogates.)

mod encoding;
#[rustfmt::skip]
pub(crate) mod tables;

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::{is_nfc_quick, IsNormalized, UnicodeNormalization};

use crate::html;

/// ftfy's `max_decode_length`: longer lines are fixed in pieces of this many characters.
const MAX_DECODE_LENGTH: usize = 1_000_000;

/// ftfy repeats its fixes until the text stops changing. It always gets there in a few rounds;
/// this bound only guarantees that a bug could never turn into an endless loop.
const MAX_ROUNDS: usize = 32;

/// `ftfy.fix_text(text)` with ftfy's default settings.
pub(crate) fn fix_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // `unescape_html="auto"`: on until a line containing '<' is seen, then off for good.
    let mut unescape = true;
    let mut rest = text;
    while !rest.is_empty() {
        let line_end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let end = match rest[..line_end].char_indices().nth(MAX_DECODE_LENGTH) {
            Some((i, _)) => i,
            None => line_end,
        };
        let segment = &rest[..end];
        if unescape && segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
        rest = &rest[end..];
    }
    out
}

/// `ftfy.fix_and_explain` on one segment, without the explanation.
fn fix_segment(segment: &str, unescape: bool) -> String {
    let mut text = segment.to_owned();
    for _ in 0..MAX_ROUNDS {
        let mut next: Cow<'_, str> = Cow::Borrowed(&text);
        if unescape {
            next = apply(next, html::ftfy_unescape_html);
        }
        next = apply(next, encoding::fix_encoding);
        next = apply(next, encoding::fix_c1_controls);
        next = apply(next, fix_latin_ligatures);
        next = apply(next, fix_character_width);
        next = apply(next, uncurl_quotes);
        next = apply(next, fix_line_breaks);
        next = apply(next, remove_terminal_escapes);
        next = apply(next, remove_control_chars);
        next = apply(next, nfc);
        if *next == *text {
            return text;
        }
        text = next.into_owned();
    }
    text
}

/// Runs one fixer, keeping the borrowed text when the fixer changed nothing.
fn apply<'a>(text: Cow<'a, str>, fixer: fn(&str) -> Cow<'_, str>) -> Cow<'a, str> {
    let changed = match fixer(&text) {
        Cow::Owned(fixed) => Some(fixed),
        Cow::Borrowed(_) => None,
    };
    match changed {
        Some(fixed) => Cow::Owned(fixed),
        None => text,
    }
}

/// Rewrites the characters for which `replacement` gives `Some`, borrowing when there are none.
fn replace_chars<'a>(
    text: &'a str,
    replacement: impl Fn(char) -> Option<&'static str>,
) -> Cow<'a, str> {
    let Some(first) = text.char_indices().find(|&(_, c)| replacement(c).is_some()) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len() + 8);
    out.push_str(&text[..first.0]);
    for c in text[first.0..].chars() {
        match replacement(c) {
            Some(r) => out.push_str(r),
            None => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// ftfy's `fix_latin_ligatures`: Latin ligatures and legacy digraphs become separate letters.
fn fix_latin_ligatures(text: &str) -> Cow<'_, str> {
    replace_chars(text, |c| {
        Some(match c {
            'Ĳ' => "IJ",
            'ĳ' => "ij",
            'ŉ' => "ʼn",
            'Ǳ' => "DZ",
            'ǲ' => "Dz",
            'ǳ' => "dz",
            'Ǆ' => "DŽ",
            'ǅ' => "Dž",
            'ǆ' => "dž",
            'Ǉ' => "LJ",
            'ǈ' => "Lj",
            'ǉ' => "lj",
            'Ǌ' => "NJ",
            'ǋ' => "Nj",
            'ǌ' => "nj",
            'ﬀ' => "ff",
            'ﬁ' => "fi",
            'ﬂ' => "fl",
            'ﬃ' => "ffi",
            'ﬄ' => "ffl",
            'ﬅ' => "ſt",
            'ﬆ' => "st",
            _ => return None,
        })
    })
}

/// ftfy's `fix_character_width`: U+3000 becomes a space, and the half-width and full-width forms
/// (U+FF01..U+FFEF) become their NFKC equivalent.
fn fix_character_width(text: &str) -> Cow<'_, str> {
    let is_wide = |c: char| c == '\u{3000}' || ('\u{ff01}'..='\u{ffef}').contains(&c);
    if !text.chars().any(is_wide) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{3000}' {
            out.push(' ');
        } else if is_wide(c) {
            out.extend(std::iter::once(c).nfkc());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// ftfy's `uncurl_quotes`: curly single quotes (and U+02BC) become `'`, curly double quotes `"`.
fn uncurl_quotes(text: &str) -> Cow<'_, str> {
    replace_chars(text, |c| match c {
        '\u{2bc}' | '\u{2018}'..='\u{201b}' => Some("'"),
        '\u{201c}'..='\u{201f}' => Some("\""),
        _ => None,
    })
}

/// ftfy's `fix_line_breaks`: CRLF, CR, U+2028, U+2029 and U+0085 all become `\n`.
fn fix_line_breaks(text: &str) -> Cow<'_, str> {
    if !text.contains(['\r', '\u{2028}', '\u{2029}', '\u{85}']) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.replace("\r\n", "\n")
            .replace(['\r', '\u{2028}', '\u{2029}', '\u{85}'], "\n"),
    )
}

/// ftfy's `remove_terminal_escapes`: ANSI escape sequences such as colour codes.
fn remove_terminal_escapes(text: &str) -> Cow<'_, str> {
    static ANSI: OnceLock<Regex> = OnceLock::new();
    if !text.contains('\u{1b}') {
        return Cow::Borrowed(text);
    }
    let ansi =
        ANSI.get_or_init(|| Regex::new(r"\x1b\[(?:\d|;)*[a-zA-Z]").expect("constant pattern"));
    ansi.replace_all(text, "")
}

/// The characters ftfy's `remove_control_chars` deletes (ftfy 6.3.1's `CONTROL_CHARS`).
fn is_removed_control(c: char) -> bool {
    matches!(
        c,
        '\u{0}'..='\u{8}'
            | '\u{b}'
            | '\u{e}'..='\u{1f}'
            | '\u{7f}'
            | '\u{206a}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffc}'
    )
}

/// ftfy's `remove_control_chars`.
fn remove_control_chars(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_removed_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().filter(|&c| !is_removed_control(c)).collect())
}

/// Unicode NFC, borrowing when the text is already normalised.
fn nfc(text: &str) -> Cow<'_, str> {
    if is_nfc_quick(text.chars()) == IsNormalized::Yes {
        return Cow::Borrowed(text);
    }
    let normalized: String = text.nfc().collect();
    if normalized == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(normalized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        for text in [
            "",
            "a photo of a cat",
            "café",
            "東京タワー",
            "tab\tand\nnewline\n",
        ] {
            assert_eq!(fix_text(text), text);
        }
    }

    #[test]
    fn ftfy_docstring_examples() {
        assert_eq!(fix_text("âœ” No problems"), "✔ No problems");
        assert_eq!(fix_text("&macr;\\_(ã\u{83}\u{84})_/&macr;"), "¯\\_(ツ)_/¯");
        assert_eq!(
            fix_text("Broken text&hellip; it&#x2019;s ﬂubberiﬁc!"),
            "Broken text… it's flubberific!"
        );
        assert_eq!(fix_text("ＬＯＵＤ　ＮＯＩＳＥＳ"), "LOUD NOISES");
        assert_eq!(
            fix_text("\u{feff}Party like\nit&rsquo;s 1999!"),
            "Party like\nit's 1999!"
        );
        assert_eq!(
            fix_text("<em>HTML entities &lt;3</em>"),
            "<em>HTML entities &lt;3</em>"
        );
        assert_eq!(fix_text("HTML entities &lt;3"), "HTML entities <3");
    }

    #[test]
    fn html_is_left_alone_after_a_tag_on_an_earlier_line() {
        assert_eq!(fix_text("&amp;\n<b>\n&amp;"), "&\n<b>\n&amp;");
    }

    #[test]
    fn single_fixers() {
        assert_eq!(fix_latin_ligatures("ﬂuﬃeﬆ"), "fluffiest");
        assert_eq!(fix_character_width("Ｕﾀｰﾝ"), "Uターン");
        assert_eq!(
            uncurl_quotes("\u{201c}here\u{2019}s a test\u{201d}"),
            "\"here's a test\""
        );
        assert_eq!(
            fix_line_breaks("a\r\nb\rc\u{2028}d\u{2029}e\u{85}f"),
            "a\nb\nc\nd\ne\nf"
        );
        assert_eq!(
            remove_terminal_escapes("\u{1b}[36;44mblue\u{1b}[0m"),
            "blue"
        );
        assert_eq!(
            remove_control_chars("a\u{0}b\u{7f}c\u{feff}d\te\u{c}"),
            "abcd\te\u{c}"
        );
        assert_eq!(nfc("cafe\u{301}"), "café");
    }

    #[test]
    fn long_lines_do_not_panic() {
        let text = "Ã©".repeat(3000) + "\n" + &"x".repeat(10_000);
        let fixed = fix_text(&text);
        assert!(fixed.starts_with("ééé"));
    }
}
