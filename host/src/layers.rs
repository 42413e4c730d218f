//! The layering rule of `lib.rs`, checked: each layer's files name only the
//! layers below it (`crate::<layer>`), so no two folders import each other.

use std::path::Path;

/// Top to bottom; each may import only those after it.
const LAYERS: [&str; 8] = ["app", "sidecar", "ops", "pipeline", "wasm", "store", "http", "task"];

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layers `crate::` paths in `text` name.
fn named_layers(text: &str) -> Vec<&'static str> {
    LAYERS
        .iter()
        .copied()
        .filter(|layer| {
            let path = format!("crate::{layer}");
            text.match_indices(&path).any(|(i, _)| {
                let next = text[i + path.len()..].chars().next();
                !next.is_some_and(|c| c.is_alphanumeric() || c == '_')
            })
        })
        .collect()
}

#[test]
fn layers_import_only_the_layers_below_them() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        let mut files = Vec::new();
        let dir = root.join(layer);
        if dir.is_dir() {
            sources(&dir, &mut files);
        } else {
            files.push(root.join(format!("{layer}.rs")));
        }
        assert!(!files.is_empty() && files[0].exists(), "layer {layer} has no sources");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for named in named_layers(&text) {
                let named_rank = LAYERS.iter().position(|l| *l == named).unwrap();
                if named_rank <= rank && named != *layer {
                    violations.push(format!("{} imports crate::{named}", file.display()));
                }
            }
        }
    }
    assert!(violations.is_empty(), "imports against the layering:\n{}", violations.join("\n"));
}

#[test]
fn the_check_sees_imports() {
    assert_eq!(named_layers("use crate::store::Store; crate::http::x; crate::wasmx"), vec!["store", "http"]);
}
