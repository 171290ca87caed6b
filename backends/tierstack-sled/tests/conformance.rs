//! The shared behaviour suite, run against the sled tier on a real
//! directory, reopened from its config (`persistent`).
// The suite takes an async factory; opening sled is synchronous.
#![allow(clippy::unused_async)]

use tierstack_conformance::{Harness, SCHEMA_VERSION, conformance_suite};
use tierstack_sled::{SledConfig, SledTier};

async fn make() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SledConfig::new(dir.path().join("sled")).ttl(None);
    let tier = SledTier::open(&config, SCHEMA_VERSION).expect("opens");
    Harness::new(tier).config(config).keep(dir)
}

conformance_suite!(make);
