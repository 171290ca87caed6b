use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack_core::{BuildContext, Result, Tier, TierConfig, async_trait, units};

use crate::SledTier;

/// Configuration of the sled tier (`kind: sled`).
///
/// ```yaml
/// kind: sled
/// path: ~/.cache/tierstack/sled
/// ttl: 7d
/// flush: always
/// sweep_every: 10m
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SledConfig {
    /// Name in statistics and logs. Default `sled`.
    pub name: String,
    /// Database directory; `~` and `$VAR` are expanded. Default
    /// `~/.cache/tierstack/sled` (or under `$XDG_CACHE_HOME`).
    pub path: String,
    /// Longest time an entry stays fresh in this tier. Default 7 days.
    #[serde(with = "units::duration_opt")]
    pub ttl: Option<Duration>,
    /// When writes reach the disk.
    pub flush: Flush,
    /// With `flush: interval`, how often sled flushes. Default 500 ms.
    #[serde(with = "units::duration_opt")]
    pub flush_every: Option<Duration>,
    /// How often dead entries are swept out in the background; `None`
    /// leaves it to `purge`. Default 10 minutes.
    #[serde(with = "units::duration_opt")]
    pub sweep_every: Option<Duration>,
    /// sled's page cache. Default 64 MiB.
    #[serde(with = "units::size_opt")]
    pub cache_size: Option<u64>,
}

/// When sled writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flush {
    /// A write returns after sled flushed it (`flush_async`); concurrent
    /// writes share flushes. An acknowledged write survives a crash.
    #[default]
    Always,
    /// sled flushes in the background every `flush_every`; a crash may lose
    /// the writes of the last interval.
    Interval,
}

impl Default for SledConfig {
    fn default() -> Self {
        let path = tierstack_core::paths::default_cache_path("sled");
        Self {
            name: "sled".to_owned(),
            path,
            ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            flush: Flush::Always,
            flush_every: Some(Duration::from_millis(500)),
            sweep_every: Some(Duration::from_secs(600)),
            cache_size: None,
        }
    }
}

impl SledConfig {
    /// A config for the database directory at `path`, other settings default.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into().to_string_lossy().into_owned(),
            ..Self::default()
        }
    }

    /// Sets the TTL cap (`None`: entries keep the TTL they are written with).
    #[must_use]
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the flush policy.
    #[must_use]
    pub fn flush(mut self, flush: Flush) -> Self {
        self.flush = flush;
        self
    }
}

#[typetag::serde(name = "sled")]
#[async_trait]
impl TierConfig for SledConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Tier>> {
        Ok(Arc::new(SledTier::open(self, ctx.schema_version)?))
    }
}
