//! The shared behaviour suite, run against the SQLite tier on a real file.

use tierstack_conformance::{Harness, conformance_suite};
use tierstack_sqlite::{SqliteConfig, SqliteTier};

async fn make() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SqliteConfig::new(dir.path().join("cache.db")).ttl(None);
    let tier = SqliteTier::open(&config, 1).await.expect("opens");
    Harness::new(tier).keep(dir)
}

conformance_suite!(make);
