//! Multi-tier caches with pluggable storage: an in-process memory tier, a
//! file on disk (SQLite, redb, sled) and a server shared by a team (Redis),
//! stacked behind one typed API, built in code or from a config file.
//!
//! tierstack is for programs that call slow or rate-limited APIs and want
//! every distinct question asked upstream once per TTL. You put one
//! [`TieredCache::get_or_fetch`] call in front of the API; behind it:
//!
//! - **tiers in order**: the first fresh hit wins, a hit in a lower tier is
//!   copied up with its *remaining* TTL, writes go through to every tier with
//!   each tier's own TTL;
//! - **single-flight**: concurrent callers of a cold key share one fetch; a
//!   failed fetch is not cached, a panicking one does not wedge the key;
//! - **stale-if-error and offline mode**: an expired value inside its stale
//!   window answers when the upstream fails or is slow
//!   ([`FetchOptions::soft_timeout`]); offline, only the cache answers;
//! - **negative caching** ([`TieredCache::get_or_fetch_optional`]), **partial
//!   batch hits** ([`TieredCache::get_or_fetch_many`] asks only for the keys
//!   no tier holds), **cached functions** ([`CachedFn`], with refresh-ahead),
//!   **warming** under a rate limit ([`TieredCache::warm`]);
//! - **entries you can trust**: versioned, checksummed envelopes; damaged or
//!   foreign bytes are counted misses, never panics or wrong values; a
//!   failing tier is skipped and counted, never an error for a fetch that
//!   worked.
//!
//! # Example: memory over SQLite
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tierstack::{Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl};
//!
//! #[derive(Debug, serde::Serialize, serde::Deserialize)]
//! struct Book {
//!     asin: String,
//!     title: String,
//! }
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("the metadata API failed")]
//! struct ApiError;
//!
//! /// An API client: cheap to clone, `async` methods borrowing `&self`.
//! #[derive(Clone)]
//! struct MetadataApi;
//!
//! impl MetadataApi {
//!     async fn book(&self, asin: &str) -> Result<Book, ApiError> {
//!         // An HTTP request in real code.
//!         Ok(Book { asin: asin.to_owned(), title: format!("Title of {asin}") })
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! // L1: 1000 entries for an hour, in this process.
//! let memory = MemoryConfig::with_max_entries(1000).ttl(Duration::from_secs(3600));
//! // L2: a week on disk, shared by every process of the tool on this host.
//! let sqlite = SqliteConfig::new(dir.path().join("metadata.db")).ttl(Some(Duration::from_secs(7 * 86400)));
//! let cache = TieredCache::builder()
//!     .tier(MemoryTier::new(&memory)?)
//!     .tier(SqliteTier::open(&sqlite, 1).await?) // 1: the application's schema version
//!     .build();
//!
//! let api = MetadataApi;
//! let key = Key::new("audnexus:book", [("asin", "B002V1A0WE")]);
//! let book: Arc<Book> = cache
//!     .get_or_fetch(&key, Ttl::TierDefault, |_| api.book("B002V1A0WE"))
//!     .await?;
//! assert_eq!(book.title, "Title of B002V1A0WE");
//!
//! // The second call is answered by the memory tier: no request.
//! let again: Arc<Book> = cache
//!     .get_or_fetch(&key, Ttl::TierDefault, |_| api.book("B002V1A0WE"))
//!     .await?;
//! assert!(Arc::ptr_eq(&book, &again));
//! # Ok(())
//! # }
//! ```
//!
//! The fetch closure receives a [`FetchContext`] (ignored with `|_|` above)
//! and may borrow the client it captures; [`CachedFn`] loaders, which are
//! kept and called again, clone it instead.
//!
//! # From a config file
//!
//! The same stack as YAML, TOML or JSON (the metadata caching RFC's flat
//! `cache:` block is accepted as written), with `TIERSTACK_…` environment
//! overrides: [`Config::discover`] finds and reads the file,
//! [`TieredCache::from_config`] builds the cache. The `tierstack` command
//! (crate `tierstack-cli`) reads the same file to inspect, clear, export,
//! import and warm a cache from the shell.
//!
//! # Cargo features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `memory` | yes | [`MemoryTier`], the quick_cache-based L1 (synchronous hits) |
//! | `sqlite` | yes | [`SqliteTier`], the RFC's SQLite table (bundled SQLite) |
//! | `redb` | no | `RedbTier`, a crash-safe embedded key-value file |
//! | `sled` | no | `SledTier`, a sled directory |
//! | `redis` | no | `RedisTier`: single server, Sentinel, Cluster, TLS; a cross-host invalidation backplane |
//! | `bincode` | no | the bincode 2 codec (MessagePack is the default) |
//! | `metrics` | no | `tierstack::metrics`: the counters, latency histograms and size gauges through the `metrics` facade (`docs/observability.md`) |
//!
//! # Further reading
//!
//! In the repository:
//!
//! - `docs/guide.md`: the metadata pipeline's use cases step by step
//!   (development iteration, batch processing, offline operation, rate
//!   limits);
//! - `docs/configuration.md`: every config field and environment override;
//! - `docs/cli.md`: the `tierstack` command and its exit codes;
//! - `docs/architecture.md`: crates, read and write paths, single-flight;
//! - `docs/entry-format.md`: the stored bytes;
//! - `docs/backends/`: which backend to pick, with measured costs;
//! - `docs/decisions/`: why things are the way they are;
//! - `examples/`: runnable programs (`cargo run --release --example
//!   metadata_pipeline`).
// Library code never unwraps what a user, a file or a server can influence.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod batch;
pub mod blocking;
mod budget;
mod builder;
mod cache;
mod cached_attr;
mod cached_fn;
mod config_file;
mod fetch;
mod fetch_error;
mod flight;
mod invalidation;
mod lease;
#[cfg(feature = "metrics")]
pub mod metrics;
mod policy;
mod revalidate;
mod stats;
mod stats_file;
mod traced;
mod transfer;
mod warm;

pub use builder::TieredCacheBuilder;
pub use cache::{CacheValue, TieredCache, Ttl};
pub use cached_attr::{__macro, AsyncCacheRef, BlockingCacheRef, FromCacheError, GlobalCache};
pub use cached_fn::CachedFn;
pub use config_file::{
    CACHE_FIELDS, CacheConfig, CompressionChoice, Config, ConfigOrigin, EMBEDDED_DEFAULT,
    OverrideConfig, ProxyConfig, SourceConfig, UpstreamConfig,
};
pub use fetch::{BatchContext, FetchContext, FetchOptions, Fetched};
pub use fetch_error::FetchError;
pub use invalidation::BackplaneStats;
pub use policy::{Coordination, RateScope, SourcePolicy};
pub use revalidate::{DEFAULT_RETAIN_FOR, ResponseMeta, Revalidated};
pub use stats::{CacheStats, LayerStats, SourceStats};
pub use stats_file::{StoredCounters, StoredStats};
/// Caches a function in one line: `#[tierstack::cached(cache = CACHE,
/// source = "audnexus:search", ttl = "1h")]` on an `async fn` (or a plain
/// one, through the blocking API). The key is the source and the
/// function's parameters by name, as [`Key::new`] renders them.
///
/// The options (the guide's "Cached functions in one line" has more):
///
/// | option | meaning |
/// | --- | --- |
/// | `cache = EXPR` | where the cache is: a [`GlobalCache`] static, a `TieredCache` (or `Arc`), an expression such as `self.cache`; or mark a parameter `#[cache]` instead. A plain function needs a [`blocking::TieredCache`] |
/// | `source = "…"` | the key's source; the parameters are added by name (`None` left out) |
/// | `key = "EXPR"` | a whole key expression instead, with the parameters in scope |
/// | `skip(a, b)` | parameters that are not key material |
/// | `rename(a = "q")` | a parameter's name in the key |
/// | `ttl`, `stale_for` | the [`FetchOptions`] of each call (`"1h"`, `"7d"`) |
/// | `negative_ttl` | how long a `None` is cached, for functions returning an `Option` |
/// | `soft_timeout`, `hard_timeout` | the same, for functions returning `Result` |
/// | `refresh_ahead = 0.8` | a memory hit past this fraction of its TTL runs the body again in the background (one run per key at a time) while the caller gets the current value; the parameters must be owned and `Send` (no `&str`, no `self`) |
///
/// Return types: `Result<T, E>` (errors are not cached; `E:
/// From<tierstack::Error>` carries the cache's own errors), `Option<T>` and
/// `Result<Option<T>, E>` (`None` cached as "not found" for the source's
/// negative TTL), or a plain `T`. `T` is returned by clone of the cached
/// value, `Arc<T>` shares it. Beside the function come `{name}_key(…)` (the
/// key of one call), `{name}_invalidate(…)` (removes one call's entry) and
/// `{name}_refresh(…)` (removes it and calls the function again).
///
/// ```
/// use tierstack::{GlobalCache, MemoryConfig, MemoryTier, TieredCache};
///
/// static CACHE: GlobalCache = GlobalCache::new();
///
/// #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
/// struct Book { title: String }
///
/// #[derive(Debug, thiserror::Error)]
/// enum ApiError {
///     #[error("the API failed")]
///     Upstream,
///     #[error(transparent)]
///     Cache(#[from] tierstack::Error),
/// }
///
/// #[tierstack::cached(cache = CACHE, source = "audnexus:search", ttl = "1h")]
/// async fn search_books(q: &str, author: Option<&str>) -> Result<Vec<Book>, ApiError> {
///     Ok(vec![Book { title: format!("{q} by {}", author.unwrap_or("anyone")) }])
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ApiError> {
/// CACHE.set(TieredCache::builder().tier(MemoryTier::new(&MemoryConfig::with_max_entries(100))?).build()).ok();
/// let books = search_books("dune", Some("herbert")).await?;
/// assert_eq!(books[0].title, "dune by herbert");
/// assert_eq!(
///     search_books_key("dune", Some("herbert")).as_str(),
///     "audnexus:search:author=herbert&q=dune"
/// );
/// assert!(search_books_invalidate("dune", Some("herbert")).await?);
/// # Ok(())
/// # }
/// ```
pub use tierstack_macros::cached;
pub use transfer::{
    EXPORT_FORMAT, EXPORT_VERSION, ExportHeader, ExportOptions, ExportReport, ImportOptions,
    ImportReport, Line, LineReader, is_zstd,
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
    #[doc = include_str!("../../../docs/upgrading.md")]
    mod upgrading {}
    #[doc = include_str!("../../../docs/benchmarks.md")]
    mod benchmarks {}
    #[cfg(feature = "metrics")]
    #[doc = include_str!("../../../docs/observability.md")]
    mod observability {}
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
    #[doc = include_str!("../../../docs/decisions/0009-entry-format-2.md")]
    mod decision_0009 {}
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
