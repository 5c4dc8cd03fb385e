//! Recognising an image format from its first bytes, including formats this
//! build cannot decode, so that their errors can name them.

use image::ImageFormat;

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// A format the `image` crate knows (its decoder may or may not be built in).
    Known(ImageFormat),
    /// A format this build cannot decode, with its name and a hint.
    Unsupported {
        format: &'static str,
        detail: &'static str,
    },
    /// Nothing recognisable.
    Unknown,
}

/// Guesses the format from the content. Formats decodable in this build are
/// recognised by the `image` crate's magic numbers; a few common photo
/// formats it cannot decode (HEIC, AVIF, JPEG XL, JPEG 2000, PSD, camera raw
/// files, SVG) are named so that the error is actionable.
pub(crate) fn sniff(bytes: &[u8]) -> Sniffed {
    if let Some(unsupported) = sniff_unsupported(bytes) {
        return unsupported;
    }
    match image::guess_format(bytes) {
        Ok(format) => Sniffed::Known(format),
        Err(_) => Sniffed::Unknown,
    }
}

fn unsupported(format: &'static str, detail: &'static str) -> Option<Sniffed> {
    Some(Sniffed::Unsupported { format, detail })
}

fn sniff_unsupported(b: &[u8]) -> Option<Sniffed> {
    // ISO base media file format: size, "ftyp", major brand.
    if b.len() >= 12 && &b[4..8] == b"ftyp" {
        return match &b[8..12] {
            b"avif" | b"avis" => unsupported("AVIF", "no AVIF decoder is compiled in"),
            b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"hevm" | b"hevs"
            | b"mif1" | b"msf1" | b"mif2" => {
                unsupported("HEIC/HEIF", "no HEVC decoder is compiled in")
            }
            b"crx " => unsupported("Canon CR3 raw", "camera raw files are not decoded"),
            b"jp2 " | b"jpx " => unsupported("JPEG 2000", "no JPEG 2000 decoder is compiled in"),
            _ => unsupported(
                "ISO base media (HEIF/MP4/MOV family)",
                "unrecognised brand: a video, or a damaged HEIF file",
            ),
        };
    }
    if b.starts_with(&[0xFF, 0x0A]) || b.starts_with(b"\0\0\0\x0CJXL \r\n\x87\n") {
        return unsupported("JPEG XL", "no JPEG XL decoder is compiled in");
    }
    if b.starts_with(b"\0\0\0\x0CjP  \r\n\x87\n") || b.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) {
        return unsupported("JPEG 2000", "no JPEG 2000 decoder is compiled in");
    }
    if b.starts_with(b"8BPS") {
        return unsupported("Photoshop PSD", "no PSD decoder is compiled in");
    }
    if b.get(6..14) == Some(b"HEAPCCDR") {
        return unsupported("Canon CRW raw", "camera raw files are not decoded");
    }
    if b.starts_with(b"FUJIFILM") {
        return unsupported("Fujifilm RAF raw", "camera raw files are not decoded");
    }
    if b.starts_with(b"IIU\0") {
        return unsupported("Panasonic RW2 raw", "camera raw files are not decoded");
    }
    if b.starts_with(b"IIRO") || b.starts_with(b"IIRS") || b.starts_with(b"MMOR") {
        return unsupported("Olympus ORF raw", "camera raw files are not decoded");
    }
    if b.starts_with(b"%PDF") {
        return unsupported("PDF", "documents are not images");
    }
    let head = &b[..b.len().min(1024)];
    if head.windows(4).any(|w| w == b"<svg") {
        return unsupported("SVG", "vector images are not rasterised");
    }
    None
}

/// A short name for a format, as used in messages ("JPEG", "PNG", ...).
pub(crate) fn format_name(format: ImageFormat) -> &'static str {
    match format {
        ImageFormat::Png => "PNG",
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Gif => "GIF",
        ImageFormat::WebP => "WebP",
        ImageFormat::Tiff => "TIFF",
        ImageFormat::Bmp => "BMP",
        ImageFormat::Avif => "AVIF",
        ImageFormat::Ico => "ICO",
        ImageFormat::Tga => "TGA",
        ImageFormat::Dds => "DDS",
        ImageFormat::Hdr => "Radiance HDR",
        ImageFormat::OpenExr => "OpenEXR",
        ImageFormat::Pnm => "PNM",
        ImageFormat::Farbfeld => "farbfeld",
        ImageFormat::Qoi => "QOI",
        _ => "image",
    }
}

/// The first bytes of `b` in hex, for messages about unknown content.
pub(crate) fn hex_prefix(b: &[u8]) -> String {
    let mut s: String = b
        .iter()
        .take(8)
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ");
    if b.len() > 8 {
        s.push_str(" ...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unsupported_formats() {
        let heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
        assert!(matches!(
            sniff(heic),
            Sniffed::Unsupported {
                format: "HEIC/HEIF",
                ..
            }
        ));
        let avif = b"\0\0\0\x20ftypavif\0\0\0\0";
        assert!(matches!(
            sniff(avif),
            Sniffed::Unsupported { format: "AVIF", .. }
        ));
        assert!(matches!(
            sniff(&[0xFF, 0x0A, 1, 2]),
            Sniffed::Unsupported {
                format: "JPEG XL",
                ..
            }
        ));
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n...."),
            Sniffed::Known(ImageFormat::Png)
        );
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Sniffed::Known(ImageFormat::Jpeg)
        );
        assert_eq!(sniff(b"hello world"), Sniffed::Unknown);
        assert_eq!(sniff(b""), Sniffed::Unknown);
        assert_eq!(hex_prefix(b"hello world"), "68 65 6c 6c 6f 20 77 6f ...");
    }
}
