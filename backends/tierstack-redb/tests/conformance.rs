//! The shared behaviour suite, run against the redb tier on a real file:
//! reopened from its config (`persistent`) and capped (`size_limit`).

use std::sync::Arc;

use tierstack::Tier;
use tierstack_conformance::{Harness, SCHEMA_VERSION, conformance_suite};
use tierstack_redb::{RedbConfig, RedbTier};

async fn make() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = RedbConfig::new(dir.path().join("cache.redb")).ttl(None);
    let tier = RedbTier::open(&config, SCHEMA_VERSION)
        .await
        .expect("opens");
    let capped_path = dir.path().join("capped.redb");
    Harness::new(tier)
        .config(config)
        .capped(move |bytes| {
            let config = RedbConfig::new(&capped_path).ttl(None).max_size(bytes);
            async move {
                let tier = RedbTier::open(&config, SCHEMA_VERSION).await?;
                Ok(Arc::new(tier) as Arc<dyn Tier>)
            }
        })
        .keep(dir)
}

conformance_suite!(make);
