//! What the SQLite tests share: opening a tier on a file, a cache that
//! stores readable JSON.

#![allow(dead_code, unreachable_pub)]

use std::path::Path;
use std::sync::Arc;

use tierstack::{Codec, Compression, Tier, TieredCache};
use tierstack_sqlite::{SqliteConfig, SqliteTier};

/// The tier on `path`, schema version 1.
pub async fn open(path: &Path) -> SqliteTier {
    SqliteTier::open(&SqliteConfig::new(path), 1)
        .await
        .expect("opens")
}

/// A cache over `tier` writing plain JSON, as `sqlite3` and Python read it.
pub fn json_cache(tier: Arc<dyn Tier>) -> TieredCache {
    TieredCache::builder()
        .codec(Codec::Json)
        .compression(Compression::None)
        .shared_tier(tier)
        .build()
}
