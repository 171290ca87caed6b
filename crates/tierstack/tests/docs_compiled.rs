//! Every page of README.md and docs/ that shows Rust is compiled: it is
//! included as a doctest (in this crate's `docs` module, or the example
//! backend's), so a new page cannot slip past `cargo test --doc`.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pages(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            pages(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// Whether a page opens a code block that rustdoc compiles: `rust` or no
/// language at all.
fn shows_rust(text: &str) -> bool {
    let mut open = false;
    for line in text.lines() {
        let Some(fence) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        if !open {
            let lang = fence.split(',').next().unwrap_or("").trim();
            if lang.is_empty() || lang == "rust" {
                return true;
            }
        }
        open = !open;
    }
    false
}

#[test]
fn every_page_with_rust_is_a_doctest() {
    let root = root();
    let mut all = vec![root.join("README.md")];
    pages(&root.join("docs"), &mut all);
    let included = [
        std::fs::read_to_string(root.join("crates/tierstack/src/lib.rs")).unwrap(),
        std::fs::read_to_string(root.join("examples/custom_backend/src/lib.rs")).unwrap(),
        std::fs::read_to_string(root.join("crates/tierstack-http/src/lib.rs")).unwrap(),
    ]
    .concat();
    let mut missing = Vec::new();
    for page in &all {
        let text = std::fs::read_to_string(page).unwrap();
        let relative = page
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if shows_rust(&text) && !included.contains(&format!("../../../{relative}\"")) {
            missing.push(relative);
        }
    }
    assert!(
        missing.is_empty(),
        "pages with Rust that no doctest includes: {missing:?}"
    );
    assert!(all.len() > 15, "found only {} pages", all.len());
}

#[test]
fn fences_are_read_as_rustdoc_reads_them() {
    assert!(shows_rust("text\n```\nlet x = 1;\n```\n"));
    assert!(shows_rust("```rust,no_run\nfn main() {}\n```"));
    assert!(!shows_rust("```yaml\na: 1\n```\n```sh\nls\n```\n"));
}
