//! ftfy's mojibake repair (`fix_encoding`), ported from ftfy 6.3.1.
//!
//! Mojibake is text whose UTF-8 bytes were decoded with a single-byte code page such as
//! windows-1252 (`cafÃ©` for `café`). ftfy repairs it only when its `is_bad` heuristic sees
//! character sequences that are very unlikely in real text, so ordinary accented text is left
//! alone. Each step, in ftfy's order:
//!
//! 1. if the whole text can be encoded in one of ftfy's code pages (latin-1, "sloppy"
//!    windows-1252/1251/1250/1253/1254/1257, iso-8859-2, macroman, cp437) and the bytes decode
//!    as UTF-8 (after putting back 0xA0 bytes that became spaces, and marking lost bytes), that
//!    decoding wins;
//! 2. otherwise UTF-8-looking runs embedded in other text are fixed one by one
//!    (`decode_inconsistent_utf8`);
//! 3. otherwise latin-1 text is read as windows-1252, and C1 control characters get their
//!    windows-1252 meaning.
//!
//! The step repeats until the text stops changing.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use regex::bytes::Regex as BytesRegex;
use regex::Regex;

use super::tables::{
    Charmap, BADNESS_PATTERN, CHARMAPS, LATIN_1, MACROMAN, SLOPPY_1252, UTF8_CONTINUATION,
    UTF8_CONTINUATION_STRICT, UTF8_FIRST_OF_2, UTF8_FIRST_OF_3, UTF8_FIRST_OF_4,
    WINDOWS_1252_UNDEFINED,
};

/// ftfy loops until the text is stable, which takes a handful of steps; this bound only makes
/// an endless loop impossible.
const MAX_STEPS: usize = 64;

/// `ftfy.fix_encoding(text)`.
pub(crate) fn fix_encoding(text: &str) -> Cow<'_, str> {
    let mut current: Cow<'_, str> = Cow::Borrowed(text);
    for _ in 0..MAX_STEPS {
        match fix_encoding_one_step(&current) {
            Some(fixed) if fixed != *current => current = Cow::Owned(fixed),
            _ => return current,
        }
    }
    current
}

/// ftfy's `fix_c1_controls`: C1 control characters take their windows-1252 meaning (the five
/// bytes windows-1252 leaves undefined stay as they are).
pub(crate) fn fix_c1_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_c1) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(c1_as_windows_1252(text))
}

/// `ftfy.badness.is_bad`: does the text contain sequences that are almost surely mojibake?
pub(crate) fn is_bad(text: &str) -> bool {
    static BADNESS: OnceLock<Regex> = OnceLock::new();
    BADNESS
        .get_or_init(|| Regex::new(BADNESS_PATTERN).expect("constant pattern"))
        .is_match(text)
}

fn is_c1(c: char) -> bool {
    ('\u{80}'..='\u{9f}').contains(&c)
}

fn c1_as_windows_1252(text: &str) -> String {
    let high = &CHARMAPS[SLOPPY_1252].high;
    text.chars()
        .map(|c| if is_c1(c) { high[c as usize - 0x80] } else { c })
        .collect()
}

/// Is `c` in one of the sorted, inclusive `ranges`?
fn in_ranges(c: char, ranges: &[(u32, u32)]) -> bool {
    let c = u32::from(c);
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

/// One round of `ftfy._fix_encoding_one_step_and_explain`; `None` when it leaves the text alone.
fn fix_encoding_one_step(text: &str) -> Option<String> {
    if text.is_ascii() || !is_bad(text) {
        return None;
    }
    let mut latin_1_possible = false;
    for (index, charmap) in CHARMAPS.iter().enumerate() {
        let Some(mut bytes) = encode(text, index) else {
            continue;
        };
        if index == LATIN_1 {
            latin_1_possible = true;
        }
        if index != MACROMAN && altered_utf8_re().is_match(&bytes) {
            bytes = restore_byte_a0(&bytes);
        }
        if charmap.sloppy {
            bytes = replace_lossy_sequences(&bytes);
        }
        let decoded = if bytes.contains(&0xED) || bytes.contains(&0xC0) {
            decode_utf8_variants(&bytes)
        } else {
            String::from_utf8(bytes).ok()
        };
        if decoded.is_some() {
            return decoded;
        }
    }

    if !utf8_detector_matches(text).is_empty() {
        let fixed = decode_inconsistent_utf8(text);
        if fixed != text {
            return Some(fixed);
        }
    }

    // Latin-1 text that is not UTF-8 was probably meant as windows-1252. (ftfy checks here
    // whether "windows-1252" was among the possible encodings, but its list only ever holds
    // "sloppy-windows-1252", so that shortcut never applies.)
    if latin_1_possible {
        let undefined = text.chars().any(|c| {
            u32::from(c) < 0x100 && WINDOWS_1252_UNDEFINED.contains(&(u32::from(c) as u8))
        });
        if !undefined {
            let fixed = c1_as_windows_1252(text);
            if fixed != text {
                return Some(fixed);
            }
        }
    }

    if text.chars().any(is_c1) {
        return Some(c1_as_windows_1252(text));
    }
    None
}

/// Character-to-byte tables of [`CHARMAPS`], for the bytes 0x80..=0xFF.
fn encoders() -> &'static [HashMap<char, u8>] {
    static ENCODERS: OnceLock<Vec<HashMap<char, u8>>> = OnceLock::new();
    ENCODERS.get_or_init(|| {
        CHARMAPS
            .iter()
            .map(|charmap: &Charmap| {
                charmap
                    .high
                    .iter()
                    .zip(0x80..=0xFFu8)
                    .map(|(&c, byte)| (c, byte))
                    .collect()
            })
            .collect()
    })
}

/// `text.encode(encoding)` for one of ftfy's code pages, `None` where a character does not fit
/// (ftfy's `possible_encoding`).
fn encode(text: &str, index: usize) -> Option<Vec<u8>> {
    let charmap = &CHARMAPS[index];
    let encoder = &encoders()[index];
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        let byte = match c {
            // The sloppy codecs use byte 0x1A for U+FFFD, so they cannot encode U+001A itself.
            '\u{1a}' if charmap.sloppy => return None,
            '\u{fffd}' if charmap.sloppy => 0x1A,
            _ if c.is_ascii() => c as u8,
            _ => *encoder.get(&c)?,
        };
        out.push(byte);
    }
    Some(out)
}

/// ftfy's `ALTERED_UTF8_RE`: UTF-8 sequences in which a 0xA0 byte became a space.
fn altered_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| {
        BytesRegex::new(
            r"(?-u)[\xc2\xc3\xc5\xce\xd0\xd9][ ]|[\xe2\xe3][ ][\x80-\x84\x86-\x9f\xa1-\xbf]|[\xe0-\xe3][\x80-\x84\x86-\x9f\xa1-\xbf][ ]|[\xf0][ ][\x80-\xbf][\x80-\xbf]|[\xf0][\x80-\xbf][ ][\x80-\xbf]|[\xf0][\x80-\xbf][\x80-\xbf][ ]",
        )
        .expect("constant pattern")
    })
}

/// ftfy's `LOSSY_UTF8_RE`: UTF-8 sequences with bytes lost to U+FFFD (byte 0x1A) or `?`.
fn lossy_utf8_re() -> &'static BytesRegex {
    static RE: OnceLock<BytesRegex> = OnceLock::new();
    RE.get_or_init(|| {
        BytesRegex::new(concat!(
            r"(?-u)[\xc2-\xdf][\x1a]",
            r"|[\xc2-\xc3][?]",
            r"|\xed[\xa0-\xaf][\x1a?]\xed[\xb0-\xbf][\x1a?\x80-\xbf]",
            r"|\xed[\xa0-\xaf][\x1a?\x80-\xbf]\xed[\xb0-\xbf][\x1a?]",
            r"|[\xe0-\xef][\x1a?][\x1a\x80-\xbf]",
            r"|[\xe0-\xef][\x1a\x80-\xbf][\x1a?]",
            r"|[\xf0-\xf4][\x1a?][\x1a\x80-\xbf][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a?][\x1a\x80-\xbf]",
            r"|[\xf0-\xf4][\x1a\x80-\xbf][\x1a\x80-\xbf][\x1a?]",
            r"|\x1a",
        ))
        .expect("constant pattern")
    })
}

/// ftfy's `restore_byte_a0`: put back 0xA0 bytes that some program turned into spaces.
fn restore_byte_a0(bytes: &[u8]) -> Vec<u8> {
    // A_GRAVE_WORD_RE = b"\xc3 (?! |quele|quela|quilo|s )" -> b"\xc3\xa0 ": "Ã " is "à" plus a
    // space, except before the Portuguese words "às", "àquele", ... that it starts.
    const KEEP: [&[u8]; 5] = [b" ", b"quele", b"quela", b"quilo", b"s "];
    let mut out = Vec::with_capacity(bytes.len() + 8);
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == 0xC3
            && bytes.get(i + 1) == Some(&b' ')
            && !KEEP.iter().any(|k| bytes[i + 2..].starts_with(k))
        {
            out.extend_from_slice(&[0xC3, 0xA0, b' ']);
            i += 2;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    altered_utf8_re()
        .replace_all(&out, |caps: &regex::bytes::Captures<'_>| {
            caps[0]
                .iter()
                .map(|&b| if b == b' ' { 0xA0 } else { b })
                .collect::<Vec<u8>>()
        })
        .into_owned()
}

/// ftfy's `replace_lossy_sequences`: sequences that lost bytes decode as U+FFFD.
fn replace_lossy_sequences(bytes: &[u8]) -> Vec<u8> {
    lossy_utf8_re()
        .replace_all(bytes, "\u{fffd}".as_bytes())
        .into_owned()
}

/// ftfy's "utf-8-variants" codec: strict UTF-8, plus Java's `C0 80` for U+0000 and CESU-8
/// surrogate pairs for characters above U+FFFF. `None` where Python would raise an error.
fn decode_utf8_variants(bytes: &[u8]) -> Option<String> {
    let n = bytes.len();
    let mut out = String::with_capacity(n);
    let mut start = 0;
    let mut i = 0;
    while i < n {
        match bytes[i] {
            0xC0 => {
                // ftfy matches `\xc0(\x80|$)`, and Python's `$` also matches before a final
                // newline: so a `C0 0A` ending the text decodes as U+0000 too.
                let null = match bytes.get(i + 1) {
                    Some(0x80) => true,
                    Some(b'\n') => i + 2 == n,
                    _ => false,
                };
                if !null {
                    return None;
                }
                out.push_str(std::str::from_utf8(&bytes[start..i]).ok()?);
                out.push('\u{0}');
                i += 2;
                start = i;
            }
            0xED if bytes.get(i + 1).is_some_and(|b| (0xA0..=0xBF).contains(b)) => {
                let c = cesu8_pair(&bytes[i..])?;
                out.push_str(std::str::from_utf8(&bytes[start..i]).ok()?);
                out.push(c);
                i += 6;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(std::str::from_utf8(&bytes[start..]).ok()?);
    Some(out)
}

/// Decodes a CESU-8 surrogate pair `ED A0-AF 80-BF ED B0-BF 80-BF` at the start of `input`.
/// (As in ftfy, the last byte may also be the final newline of the text.)
fn cesu8_pair(input: &[u8]) -> Option<char> {
    let [b0, b1, b2, b3, b4, b5] = *input.get(..6)? else {
        return None;
    };
    let last_ok = (0x80..=0xBF).contains(&b5) || (b5 == b'\n' && input.len() == 6);
    if b0 != 0xED
        || !(0xA0..=0xAF).contains(&b1)
        || !(0x80..=0xBF).contains(&b2)
        || b3 != 0xED
        || !(0xB0..=0xBF).contains(&b4)
        || !last_ok
    {
        return None;
    }
    let code = ((u32::from(b1) & 0x0F) << 16)
        + ((u32::from(b2) & 0x3F) << 10)
        + ((u32::from(b4) & 0x0F) << 6)
        + (u32::from(b5) & 0x3F)
        + 0x10000;
    char::from_u32(code)
}

/// The matches of ftfy's `UTF8_DETECTOR_RE` (byte ranges, left to right):
/// `(?<![strict continuation])(first_of_2 cont | first_of_3 cont{2} | first_of_4 cont{3})+`.
fn utf8_detector_matches(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut matches = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        if i > 0 && in_ranges(chars[i - 1].1, UTF8_CONTINUATION_STRICT) {
            i += 1;
            continue;
        }
        let mut end = i;
        while let Some(len) = utf8_lookalike_at(&chars[end..]) {
            end += len;
        }
        if end > i {
            let stop = chars.get(end).map_or(text.len(), |&(pos, _)| pos);
            matches.push((chars[i].0, stop));
            i = end;
        } else {
            i += 1;
        }
    }
    matches
}

/// Length in characters of one UTF-8-looking sequence at the start of `chars`, trying the
/// alternatives in ftfy's order.
fn utf8_lookalike_at(chars: &[(usize, char)]) -> Option<usize> {
    let first = chars.first()?.1;
    let continued = |count: usize| {
        chars.len() > count
            && chars[1..=count]
                .iter()
                .all(|&(_, c)| in_ranges(c, UTF8_CONTINUATION))
    };
    [
        (UTF8_FIRST_OF_2, 1),
        (UTF8_FIRST_OF_3, 2),
        (UTF8_FIRST_OF_4, 3),
    ]
    .into_iter()
    .find(|&(firsts, count)| in_ranges(first, firsts) && continued(count))
    .map(|(_, count)| count + 1)
}

/// ftfy's `decode_inconsistent_utf8`: fix UTF-8 mojibake runs embedded in other text, each on
/// its own, when the run alone looks bad.
fn decode_inconsistent_utf8(text: &str) -> String {
    let total_chars = text.chars().count();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (start, end) in utf8_detector_matches(text) {
        let run = &text[start..end];
        out.push_str(&text[last..start]);
        if run.chars().count() < total_chars && is_bad(run) {
            out.push_str(&fix_encoding(run));
        } else {
            out.push_str(run);
        }
        last = end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_patterns_compile() {
        assert!(!is_bad("plain text"));
        assert!(altered_utf8_re().is_match(b"\xc3 "));
        assert!(lossy_utf8_re().is_match(b"\x1a"));
    }

    #[test]
    fn repairs_utf8_read_as_windows_1252() {
        assert_eq!(fix_encoding("cafÃ©"), "café");
        assert_eq!(fix_encoding("â€œquotedâ€\u{9d}"), "\u{201c}quoted\u{201d}");
        assert_eq!(fix_encoding("Ã\u{a0} bientÃ´t"), "à bientôt");
        assert_eq!(fix_encoding("sÃ³"), "só");
        assert_eq!(fix_encoding("voilÃ le travail"), "voilà le travail");
        assert_eq!(
            fix_encoding("This â€” should be an em dash"),
            "This — should be an em dash"
        );
        assert_eq!(
            fix_encoding(
                "\u{c3}\u{a0}\u{c2}\u{b2}\u{c2}\u{a0}_\u{c3}\u{a0}\u{c2}\u{b2}\u{c2}\u{a0}"
            ),
            "ಠ_ಠ"
        );
    }

    #[test]
    fn leaves_real_text_alone() {
        for text in [
            "café",
            "naïve résumé",
            "This text is fine already :þ",
            "not such a fan of Charlotte Brontë…\u{201d}",
            "Ærøskøbing",
            "Łódź",
            "AHÅ™, the new sofa from IKEA®",
            "ΣΊΣΥΦΟΣ",
            "фотография кошки",
        ] {
            assert_eq!(fix_encoding(text), text, "{text}");
        }
    }

    #[test]
    fn c1_controls_take_their_windows_1252_meaning() {
        assert_eq!(fix_c1_controls("a\u{85}b\u{81}"), "a…b\u{81}");
        assert_eq!(
            fix_encoding("This text was never UTF-8 at all\u{85}"),
            "This text was never UTF-8 at all…"
        );
    }

    #[test]
    fn utf8_variants() {
        assert_eq!(
            decode_utf8_variants(b"a\xc0\x80b").as_deref(),
            Some("a\u{0}b")
        );
        assert_eq!(
            decode_utf8_variants(b"\xed\xa0\xbd\xed\xb2\xa9").as_deref(),
            Some("💩")
        );
        assert_eq!(decode_utf8_variants(b"\xed\xa0\xbd"), None);
        assert_eq!(decode_utf8_variants(b"\xc0"), None);
        assert_eq!(
            decode_utf8_variants("한국어".as_bytes()).as_deref(),
            Some("한국어")
        );
    }

    #[test]
    fn embedded_mojibake_is_fixed_in_place() {
        // Mixed text that is not consistently encodable: only the mojibake run changes.
        let text = "日本 cafÃ©";
        assert_eq!(fix_encoding(text), "日本 café");
    }
}
