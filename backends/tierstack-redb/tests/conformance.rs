//! The shared behaviour suite, run against the redb tier on a real file.

use tierstack_conformance::{Harness, conformance_suite};
use tierstack_redb::{RedbConfig, RedbTier};

async fn make() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = RedbConfig::new(dir.path().join("cache.redb")).ttl(None);
    let tier = RedbTier::open(&config, 1).await.expect("opens");
    Harness::new(tier).keep(dir)
}

conformance_suite!(make);
