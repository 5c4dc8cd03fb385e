//! HTML character references, decoded the way Python decodes them.
//!
//! Two decoders are needed: Python's `html.unescape` (CLIP runs it twice on every text) and
//! ftfy's stricter `unescape_html` (which only decodes `&name;` with its semicolon, plus
//! all-caps names such as `&EACUTE;`). Both use the HTML5 entity table, taken from `htmlize`
//! (it is the same WHATWG list as Python's `html.entities.html5`). `htmlize`'s own decoder is
//! not used: it follows the WHATWG tokenizer, which differs from Python's for numeric references
//! to control characters and for prefixes of entity names.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use regex::{Captures, Regex};

use crate::ftfy::tables::{INVALID_CHARREFS, INVALID_CODEPOINTS};

/// The HTML5 expansion of `&name` (`name` with or without its `;`), if it is an entity.
fn entity(name: &str) -> Option<&'static str> {
    let mut key = String::with_capacity(name.len() + 1);
    key.push('&');
    key.push_str(name);
    let value: &'static [u8] = htmlize::ENTITIES.get(key.as_bytes())?;
    std::str::from_utf8(value).ok()
}

/// Python's `html.unescape`.
pub(crate) fn unescape(text: &str) -> Cow<'_, str> {
    static CHARREF: OnceLock<Regex> = OnceLock::new();
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let charref = CHARREF.get_or_init(|| {
        Regex::new(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\x0C <&#;]{1,32};?)")
            .expect("constant pattern")
    });
    charref.replace_all(text, |caps: &Captures<'_>| replace_charref(&caps[1]))
}

/// Python's `html._replace_charref` (its argument is the reference without the `&`).
fn replace_charref(reference: &str) -> String {
    if let Some(number) = reference.strip_prefix('#') {
        let number = number.trim_end_matches(';');
        let code = match number.strip_prefix(['x', 'X']) {
            Some(hex) => parse_saturating(hex, 16),
            None => parse_saturating(number, 10),
        };
        if let Some(&(_, replacement)) = INVALID_CHARREFS.iter().find(|&&(n, _)| n == code) {
            return replacement.to_string();
        }
        if (0xD800..=0xDFFF).contains(&code) || code > 0x10FFFF {
            return "\u{fffd}".to_owned();
        }
        if INVALID_CODEPOINTS
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&code))
        {
            return String::new();
        }
        return char::from_u32(code).map_or_else(|| "\u{fffd}".to_owned(), String::from);
    }
    if let Some(value) = entity(reference) {
        return value.to_owned();
    }
    // The longest entity name that is a prefix of the reference (at least 2 characters), as
    // the HTML standard does for legacy entities without ';' ("&copy2024" -> "©2024").
    let ends: Vec<usize> = reference.char_indices().map(|(i, _)| i).collect();
    for &end in ends.iter().skip(2).rev() {
        if let Some(value) = entity(&reference[..end]) {
            return format!("{value}{}", &reference[end..]);
        }
    }
    format!("&{reference}")
}

/// Parses ASCII digits, saturating above U+10FFFF (Python has unbounded integers; anything that
/// large decodes as U+FFFD anyway).
fn parse_saturating(digits: &str, radix: u32) -> u32 {
    digits
        .chars()
        .filter_map(|c| c.to_digit(radix))
        .fold(0u32, |acc, digit| {
            acc.saturating_mul(radix)
                .saturating_add(digit)
                .min(0x11_0000)
        })
}

/// ftfy's `HTML_ENTITIES`: every HTML5 entity written with its `;`, plus the all-caps spelling
/// of the lower-case ones when that spelling means nothing else (`&EACUTE;` -> `É`).
fn ftfy_entities() -> &'static HashMap<String, String> {
    static ENTITIES: OnceLock<HashMap<String, String>> = OnceLock::new();
    ENTITIES.get_or_init(|| {
        let mut map = HashMap::new();
        for (&key, &value) in htmlize::ENTITIES.entries() {
            let (Ok(key), Ok(value)) = (std::str::from_utf8(key), std::str::from_utf8(value))
            else {
                continue;
            };
            if !key.ends_with(';') {
                continue;
            }
            map.insert(key.to_owned(), value.to_owned());
            if key == key.to_lowercase() {
                let upper = key.to_uppercase();
                if unescape(&upper) == upper {
                    map.insert(upper, value.to_uppercase());
                }
            }
        }
        map
    })
}

/// ftfy's `unescape_html`: `&name;` (HTML5 names, or all-caps Latin ones) and numeric
/// references that end with `;`.
pub(crate) fn ftfy_unescape_html(text: &str) -> Cow<'_, str> {
    static ENTITY: OnceLock<Regex> = OnceLock::new();
    if !text.contains('&') {
        return Cow::Borrowed(text);
    }
    let entity_re =
        ENTITY.get_or_init(|| Regex::new(r"&#?[0-9A-Za-z]{1,24};").expect("constant pattern"));
    entity_re.replace_all(text, |caps: &Captures<'_>| {
        let reference = &caps[0];
        if let Some(value) = ftfy_entities().get(reference) {
            return value.clone();
        }
        if reference.starts_with("&#") {
            let decoded = unescape(reference);
            // Only a reference consumed whole, semicolon included, is decoded.
            if !decoded.contains(';') {
                return decoded.into_owned();
            }
        }
        reference.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_unescape() {
        let cases = [
            ("Tom &amp; Jerry", "Tom & Jerry"),
            ("&amp;amp;", "&amp;"),
            ("fish &amp chips", "fish & chips"),
            ("&copy2024", "©2024"),
            ("AT&T", "AT&T"),
            ("&#39;&#x27;&#X27", "'''"),
            ("&#0;&#13;&#128;&#129;", "\u{fffd}\r€\u{81}"),
            ("&#1;&#x7f;&#xfdd0;&#xffff;", ""),
            (
                "&#xd800;&#x110000;&#99999999999999999999;",
                "\u{fffd}\u{fffd}\u{fffd}",
            ),
            ("&#x1F431; cat", "🐱 cat"),
            ("&notit; &notin; &nonsense", "¬it; ∉ &nonsense"),
            ("a&nbsp;b", "a\u{a0}b"),
            ("&#; &#x; & &;", "&#; &#x; & &;"),
            ("&ééé;", "&ééé;"),
        ];
        for (input, expected) in cases {
            assert_eq!(unescape(input), expected, "{input}");
        }
    }

    #[test]
    fn ftfy_unescape() {
        let cases = [
            ("&lt;tag&gt;", "<tag>"),
            ("&Jscr;ohn &HilbertSpace;ancock", "𝒥ohn ℋancock"),
            ("&checkmark;", "✓"),
            ("P&EACUTE;REZ", "PÉREZ"),
            ("BUNDESSTRA&SZLIG;E", "BUNDESSTRASSE"),
            ("&ntilde; &Ntilde; &NTILDE; &nTILDE;", "ñ Ñ Ñ &nTILDE;"),
            ("this&not that", "this&not that"),
            ("&#12a;", "&#12a;"),
            ("&#x2019;s", "\u{2019}s"),
            ("&LTDOT;", "&LTDOT;"),
        ];
        for (input, expected) in cases {
            assert_eq!(ftfy_unescape_html(input), expected, "{input}");
        }
    }
}
