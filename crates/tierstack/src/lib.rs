#![doc = include_str!("../README.md")]
// Library code never unwraps what a user, a file or a server can influence.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod batch;
mod builder;
mod cache;
mod cached_fn;
mod config_file;
mod fetch;
mod flight;
mod invalidation;
mod policy;
mod stats;
mod stats_file;
mod transfer;
mod warm;

pub use builder::TieredCacheBuilder;
pub use cache::{CacheValue, TieredCache, Ttl};
pub use cached_fn::CachedFn;
pub use config_file::{
    CACHE_FIELDS, CacheConfig, CompressionChoice, Config, ConfigOrigin, EMBEDDED_DEFAULT,
    SourceConfig,
};
pub use fetch::{BatchContext, FetchContext, FetchOptions, Fetched};
pub use invalidation::BackplaneStats;
pub use policy::SourcePolicy;
pub use stats::{CacheStats, LayerStats, SourceStats};
pub use stats_file::{StoredCounters, StoredStats};
pub use transfer::{
    EXPORT_FORMAT, EXPORT_VERSION, ExportHeader, ExportOptions, ExportReport, ImportOptions,
    ImportReport, is_zstd,
};
pub use warm::{WarmOptions, WarmReport};

pub use tierstack_core::*;

/// The Rust snippets of the repository's README and `docs/` pages, compiled
/// and run by `cargo test --doc`, so a page cannot show code that no longer
/// builds. Snippets that are not Rust carry a `text`, `sh`, `yaml`, `toml` or
/// `json` fence.
#[cfg(doctest)]
mod docs {
    #[doc = include_str!("../../../README.md")]
    mod readme {}
    #[doc = include_str!("../../../docs/guide.md")]
    mod guide {}
    #[doc = include_str!("../../../docs/architecture.md")]
    mod architecture {}
    #[doc = include_str!("../../../docs/configuration.md")]
    mod configuration {}
    #[doc = include_str!("../../../docs/cli.md")]
    mod cli {}
    #[doc = include_str!("../../../docs/entry-format.md")]
    mod entry_format {}
    #[doc = include_str!("../../../docs/benchmarks.md")]
    mod benchmarks {}
    #[doc = include_str!("../../../docs/backends/README.md")]
    mod backends {}
    #[doc = include_str!("../../../docs/backends/sqlite.md")]
    mod sqlite {}
    #[doc = include_str!("../../../docs/backends/redb.md")]
    mod redb {}
    #[doc = include_str!("../../../docs/backends/sled.md")]
    mod sled {}
    #[doc = include_str!("../../../docs/backends/redis.md")]
    mod redis {}
    #[doc = include_str!("../../../docs/decisions/0008-fetch-closure.md")]
    mod decision_0008 {}
}

/// The in-process memory tier (feature `memory`).
#[cfg(feature = "memory")]
pub use tierstack_memory as memory;
#[cfg(feature = "memory")]
pub use tierstack_memory::{MemoryConfig, MemoryTier};

/// The SQLite file tier (feature `sqlite`).
#[cfg(feature = "sqlite")]
pub use tierstack_sqlite as sqlite;
#[cfg(feature = "sqlite")]
pub use tierstack_sqlite::{SqliteConfig, SqliteTier};

/// The redb file tier (feature `redb`).
#[cfg(feature = "redb")]
pub use tierstack_redb as redb;
#[cfg(feature = "redb")]
pub use tierstack_redb::{RedbConfig, RedbTier};

/// The Redis tier (feature `redis`).
#[cfg(feature = "redis")]
pub use tierstack_redis as redis;
#[cfg(feature = "redis")]
pub use tierstack_redis::{RedisConfig, RedisTier, SentinelConfig};

/// The sled directory tier (feature `sled`).
#[cfg(feature = "sled")]
pub use tierstack_sled as sled;
#[cfg(feature = "sled")]
pub use tierstack_sled::{SledConfig, SledTier};

/// Every backend registered in this binary, sorted by name: the backends
/// compiled in through this crate's features plus any third-party backend
/// crate that was linked.
pub fn backends() -> Vec<&'static BackendDescriptor> {
    link_backends();
    tierstack_core::backends()
}

/// Makes sure the linker keeps the registration of each enabled backend: a
/// crate whose items are never referenced may be dropped from the binary,
/// and its `inventory` registration with it.
fn link_backends() {
    #[cfg(feature = "memory")]
    std::hint::black_box(&tierstack_memory::CAPABILITIES);
    #[cfg(feature = "sqlite")]
    std::hint::black_box(&tierstack_sqlite::CAPABILITIES);
    #[cfg(feature = "redb")]
    std::hint::black_box(&tierstack_redb::CAPABILITIES);
    #[cfg(feature = "sled")]
    std::hint::black_box(&tierstack_sled::CAPABILITIES);
    #[cfg(feature = "redis")]
    std::hint::black_box(&tierstack_redis::CAPABILITIES);
}
