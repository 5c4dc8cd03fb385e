//! Compares the decoder with Pillow on a whole folder of photos (not in CI:
//! needs a reference made by `tests/pillow_corpus.py`, see there).

use glimpse_config::{AlphaMode, PreprocessConfig};
use glimpse_decoder::{decode_path, to_pixels};

#[test]
#[ignore = "needs GLIMPSE_PILLOW_REF, made by tests/pillow_corpus.py"]
fn matches_pillow_on_a_photo_corpus() {
    let Some(dir) = std::env::var_os("GLIMPSE_PILLOW_REF") else {
        eprintln!("skipped: set GLIMPSE_PILLOW_REF");
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let mut cfg = PreprocessConfig::openai(224);
    cfg.alpha = AlphaMode::Drop;
    let (mut exact, mut differ, mut refused) = (0, Vec::new(), Vec::new());
    for e in manifest.as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        let Some(key) = e["key"].as_str() else {
            continue; // Pillow cannot open it either.
        };
        let what = format!("{} {} {path}", e["format"], e["mode"]);
        let d = match decode_path(path, &cfg) {
            Ok(d) => d,
            Err(err) => {
                refused.push(format!("{what}: {err}"));
                continue;
            }
        };
        let pillow = image::open(dir.join(format!("{key}.png")))
            .unwrap()
            .into_rgb8();
        let raw = std::fs::read(dir.join(format!("{key}.f32"))).unwrap();
        let expected: Vec<f32> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        // Resize + crop + normalise alone, from Pillow's decode: always exact.
        let ours_from_pillow = to_pixels(&pillow, &cfg);
        let max = ours_from_pillow
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max <= 1e-6,
            "{what}: pixels from Pillow's decode differ by {max}"
        );
        let decode_diff = (d.rgb.dimensions() == pillow.dimensions()).then(|| {
            d.rgb
                .as_raw()
                .iter()
                .zip(pillow.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap_or(0)
        });
        match decode_diff {
            Some(0) => exact += 1,
            other => differ.push(format!("{what}: decode max diff {other:?}")),
        }
        if e["format"] == "JPEG" {
            assert_eq!(
                decode_diff,
                Some(0),
                "{what}: JPEG decode differs from libjpeg-turbo"
            );
        }
    }
    println!(
        "{exact} decoded exactly as Pillow; {} differ:",
        differ.len()
    );
    differ.iter().for_each(|l| println!("  {l}"));
    println!("{} that Pillow decodes are refused:", refused.len());
    refused.iter().for_each(|l| println!("  {l}"));
}
