//! Config files: the stack described in YAML, TOML or JSON.
//!
//! Two forms are accepted under `cache:`:
//!
//! - the full form, a list of tiers selected by `kind`, each with its
//!   backend's own fields:
//!
//!   ```yaml
//!   cache:
//!     schema_version: 1
//!     codec: msgpack
//!     tiers:
//!       - kind: memory
//!         ttl: 1h
//!         max_entries: 1000
//!       - kind: sqlite
//!         path: ~/.cache/mk_torrent/metadata.db
//!         ttl: 7d
//!         max_size: 512MiB
//!   ```
//!
//! - the RFC's flat block, which means memory + SQLite
//!   (`{location}/metadata.db`):
//!
//!   ```yaml
//!   cache:
//!     enabled: true
//!     file_ttl_days: 7
//!     memory_ttl_seconds: 3600
//!     max_memory_entries: 1000
//!     location: "~/.cache/mk_torrent"
//!   ```
//!
//! Unknown fields are errors (a typo must not silently become a default),
//! and errors name the file and the line.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack_core::{
    BuildContext, Codec, Compression, Error, Operation, Result, TierConfig, units,
};

use crate::{SourcePolicy, TieredCache};

/// A config file: everything lives under `cache:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The cache section.
    pub cache: CacheConfig,
}

/// Compression of new entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionChoice {
    /// No compression.
    None,
    /// zstd above `compression_min_size`.
    #[default]
    Zstd,
}

/// Per-source policy in a config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SourceConfig {
    /// Freshness of the source's values.
    #[serde(default, with = "units::duration_opt")]
    pub ttl: Option<Duration>,
    /// Stale window after expiry.
    #[serde(default, with = "units::duration_opt")]
    pub stale_for: Option<Duration>,
    /// How long "not found" is cached.
    #[serde(default, with = "units::duration_opt")]
    pub negative_ttl: Option<Duration>,
}

/// The `cache:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// `false` makes a pass-through cache: nothing is opened or stored.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The application's schema version (default 1).
    #[serde(default = "one")]
    pub schema_version: u32,
    /// Codec of new entries (`msgpack`, `json`, `bincode`).
    #[serde(default)]
    pub codec: Codec,
    /// `zstd` (default) or `none`.
    #[serde(default)]
    pub compression: CompressionChoice,
    /// zstd level (default 3).
    #[serde(default = "three")]
    pub compression_level: i32,
    /// Smaller encoded values are stored uncompressed (default 1 KiB).
    #[serde(default, with = "units::size_opt")]
    pub compression_min_size: Option<u64>,
    /// TTL for tiers without their own.
    #[serde(default, with = "units::duration_opt")]
    pub default_ttl: Option<Duration>,
    /// Default stale window.
    #[serde(default, with = "units::duration_opt")]
    pub stale_for: Option<Duration>,
    /// Default TTL of "not found" answers.
    #[serde(default, with = "units::duration_opt")]
    pub negative_ttl: Option<Duration>,
    /// Start offline: serve only from cache.
    #[serde(default)]
    pub offline: bool,
    /// Policies by source pattern (`audnexus:*`, `pathinfo`).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// The tiers, L1 first (full form).
    #[serde(default)]
    pub tiers: Option<Vec<Box<dyn TierConfig>>>,
    /// RFC form: SQLite TTL in days.
    #[serde(default)]
    pub file_ttl_days: Option<f64>,
    /// RFC form: memory TTL in seconds.
    #[serde(default)]
    pub memory_ttl_seconds: Option<u64>,
    /// RFC form: memory capacity.
    #[serde(default)]
    pub max_memory_entries: Option<u64>,
    /// RFC form: directory of `metadata.db`.
    #[serde(default)]
    pub location: Option<String>,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn three() -> i32 {
    3
}

impl Config {
    /// Reads a config file; the format follows the extension (`.yaml`/`.yml`,
    /// `.toml`, `.json`). Errors name the file and, where the parser knows
    /// it, the line and column.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}", path.display())).with_source(e)
        })?;
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        Self::parse(&text, extension).map_err(|e| {
            Error::config(format!("{}: {}", path.display(), e.message()))
                .with_operation(Operation::Build)
        })
    }

    /// Parses config text in `format` (`yaml`, `yml`, `toml` or `json`).
    pub fn parse(text: &str, format: &str) -> Result<Self> {
        let parsed = match format.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => serde_saphyr::from_str(text).map_err(|e| e.to_string()),
            "toml" => toml::from_str(text).map_err(|e| e.to_string()),
            "json" => serde_json::from_str(text).map_err(|e| e.to_string()),
            other => Err(format!(
                "unknown config format {other:?}; use .yaml, .toml or .json"
            )),
        };
        parsed.map_err(Error::config)
    }
}

impl TieredCache {
    /// Builds the cache a config describes, opening every tier.
    pub async fn from_config(config: &Config) -> Result<Self> {
        let c = &config.cache;
        let compression = match c.compression {
            CompressionChoice::None => Compression::None,
            CompressionChoice::Zstd => Compression::Zstd {
                level: c.compression_level,
                min_size: usize::try_from(c.compression_min_size.unwrap_or(1024))
                    .unwrap_or(usize::MAX),
            },
        };
        let mut builder = TieredCache::builder()
            .enabled(c.enabled)
            .schema_version(c.schema_version)
            .codec(c.codec)
            .compression(compression)
            .offline(c.offline);
        if let Some(ttl) = c.default_ttl {
            builder = builder.default_ttl(ttl);
        }
        if let Some(window) = c.stale_for {
            builder = builder.stale_for(window);
        }
        if let Some(ttl) = c.negative_ttl {
            builder = builder.negative_ttl(ttl);
        }
        for (pattern, policy) in &c.sources {
            let policy = SourcePolicy {
                ttl: policy.ttl,
                stale_for: policy.stale_for,
                negative_ttl: policy.negative_ttl,
            };
            builder = builder.source_policy(pattern, policy);
        }
        if !c.enabled {
            // A pass-through cache opens nothing.
            return Ok(builder.build());
        }
        let ctx = BuildContext::new(c.schema_version);
        let flat = c.file_ttl_days.is_some()
            || c.memory_ttl_seconds.is_some()
            || c.max_memory_entries.is_some()
            || c.location.is_some();
        let tiers = match (&c.tiers, flat) {
            (Some(_), true) => {
                return Err(Error::config(
                    "cache: use either `tiers` or the flat form (file_ttl_days, memory_ttl_seconds, max_memory_entries, location), not both",
                ));
            }
            (Some(tiers), false) => {
                let mut built = Vec::with_capacity(tiers.len());
                for (i, tier) in tiers.iter().enumerate() {
                    built.push(tier.build(&ctx).await.map_err(|e| {
                        Error::config(format!("cache.tiers[{i}]: {e}"))
                            .with_shared_source(Arc::new(e))
                    })?);
                }
                built
            }
            (None, _) => rfc_tiers(c, &ctx).await?,
        };
        for tier in tiers {
            builder = builder.shared_tier(tier);
        }
        Ok(builder.build())
    }
}

/// The RFC's flat block: memory, then SQLite at `{location}/metadata.db`.
async fn rfc_tiers(
    c: &CacheConfig,
    ctx: &BuildContext,
) -> Result<Vec<Arc<dyn tierstack_core::Tier>>> {
    #[cfg(all(feature = "memory", feature = "sqlite"))]
    {
        let mut memory =
            crate::MemoryConfig::with_max_entries(c.max_memory_entries.unwrap_or(1000));
        memory.ttl = Some(Duration::from_secs(c.memory_ttl_seconds.unwrap_or(3600)));
        let location = c
            .location
            .clone()
            .unwrap_or_else(|| "~/.cache/tierstack".to_owned());
        let days = c.file_ttl_days.unwrap_or(7.0);
        if !(days.is_finite() && days > 0.0) {
            return Err(Error::config(format!(
                "cache.file_ttl_days must be a positive number, not {days}"
            )));
        }
        let sqlite =
            crate::SqliteConfig::new(format!("{}/metadata.db", location.trim_end_matches('/')))
                .ttl(Some(Duration::from_secs_f64(days * 86_400.0)));
        Ok(vec![memory.build(ctx).await?, sqlite.build(ctx).await?])
    }
    #[cfg(not(all(feature = "memory", feature = "sqlite")))]
    {
        let _ = (c, ctx);
        Err(Error::config(
            "the flat cache form needs the `memory` and `sqlite` features of tierstack",
        ))
    }
}
