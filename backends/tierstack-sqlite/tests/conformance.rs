//! The shared behaviour suite, run against the SQLite tier on a real file:
//! reopened from its config (`persistent`), opened by a second process
//! (`shared_across_processes`), and capped (`size_limit`).

use std::sync::Arc;

use tierstack::Tier;
use tierstack_conformance::{Harness, SCHEMA_VERSION, conformance_suite};
use tierstack_sqlite::{SqliteConfig, SqliteTier};

async fn make() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SqliteConfig::new(dir.path().join("cache.db")).ttl(None);
    let tier = SqliteTier::open(&config, SCHEMA_VERSION)
        .await
        .expect("opens");
    let capped_path = dir.path().join("capped.db");
    Harness::new(tier)
        .config(config)
        .capped(move |bytes| {
            let config = SqliteConfig::new(&capped_path).ttl(None).max_size(bytes);
            async move {
                let tier = SqliteTier::open(&config, SCHEMA_VERSION).await?;
                Ok(Arc::new(tier) as Arc<dyn Tier>)
            }
        })
        .keep(dir)
}

conformance_suite!(make);
