//! Model architectures a training run can start from scratch, as HF
//! `config.json` files under `config/architectures/` (embedded at build time).

/// One named architecture: its name and its HF `config.json` text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Architecture {
    /// The name `glimpse train --arch` takes.
    pub name: &'static str,
    /// What it is for, in a few words.
    pub summary: &'static str,
    /// The HF `CLIPConfig` JSON.
    pub config_json: &'static str,
}

/// Every built-in architecture, smallest first.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "tiny",
        summary: "32 px, 2×64 towers, embed 64: tests and smoke runs (3.5 M parameters)",
        config_json: include_str!("../architectures/tiny.json"),
    },
    Architecture {
        name: "small",
        summary:
            "64 px patch 16, 4×256 towers, context 32, embed 256: the side-by-side run (19.3 M)",
        config_json: include_str!("../architectures/small.json"),
    },
    Architecture {
        name: "vit-b-32",
        summary: "OpenAI ViT-B/32 shapes (151 M)",
        config_json: include_str!("../architectures/vit-b-32.json"),
    },
    Architecture {
        name: "vit-b-16",
        summary: "OpenAI ViT-B/16 shapes (150 M)",
        config_json: include_str!("../architectures/vit-b-16.json"),
    },
    Architecture {
        name: "vit-l-14",
        summary: "OpenAI ViT-L/14 shapes (428 M)",
        config_json: include_str!("../architectures/vit-l-14.json"),
    },
];

/// The built-in architecture called `name`, if any.
pub fn architecture(name: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for a in ARCHITECTURES {
            assert_eq!(architecture(a.name), Some(a));
            assert!(a.config_json.contains("\"projection_dim\""), "{}", a.name);
        }
        assert!(architecture("vit-h-14").is_none());
    }
}
