//! The third-party backend passes the whole conformance suite with one
//! line (and `harness = false` for this test in `Cargo.toml`), its config
//! reopening the directory (`persistent`) and opening it from a second
//! process (`shared_across_processes`).
// The suite takes an async factory; opening a directory is synchronous.
#![allow(clippy::unused_async)]

use tierstack_conformance::{Harness, SCHEMA_VERSION, conformance_suite};
use tierstack_example_files::{FilesConfig, FilesTier};

async fn make() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = FilesConfig::new(dir.path().to_string_lossy());
    let tier = FilesTier::open(&config, SCHEMA_VERSION).expect("opens");
    Harness::new(tier).config(config).keep(dir)
}

conformance_suite!(make);
