use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack_core::{BuildContext, Result, Tier, TierConfig, async_trait, units};

use crate::RedbTier;

/// Configuration of the redb tier (`kind: redb`).
///
/// ```yaml
/// kind: redb
/// path: ~/.cache/tierstack/cache.redb
/// ttl: 7d
/// max_size: 512MiB
/// durability: immediate
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedbConfig {
    /// Name in statistics and logs. Default `redb`.
    pub name: String,
    /// Database file; `~` and `$VAR` are expanded. Default
    /// `~/.cache/tierstack/cache.redb` (or under `$XDG_CACHE_HOME`).
    pub path: String,
    /// Longest time an entry stays fresh in this tier. Default 7 days.
    #[serde(with = "units::duration_opt")]
    pub ttl: Option<Duration>,
    /// Byte cap of stored entries; past it, entries closest to the end of
    /// their life are evicted first, down to 90%. Default: no cap.
    #[serde(with = "units::size_opt")]
    pub max_size: Option<u64>,
    /// When commits reach the disk.
    pub durability: RedbDurability,
    /// Page cache size. Default 64 MiB.
    #[serde(with = "units::size_opt")]
    pub cache_size: Option<u64>,
    /// Most write requests committed in one transaction.
    pub max_batch: usize,
}

/// When redb commits are durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedbDurability {
    /// Every commit is on disk when `set` returns (fsync per group commit).
    #[default]
    Immediate,
    /// Commits are not synced; a crash of the process or the machine may
    /// lose writes since the last durable commit (the file stays consistent).
    None,
}

impl Default for RedbConfig {
    fn default() -> Self {
        let path = tierstack_core::paths::default_cache_path("cache.redb");
        Self {
            name: "redb".to_owned(),
            path,
            ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            max_size: None,
            durability: RedbDurability::Immediate,
            cache_size: None,
            max_batch: 1024,
        }
    }
}

impl RedbConfig {
    /// A config for the database file at `path`, other settings default.
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

    /// Sets the byte cap.
    #[must_use]
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Sets the durability.
    #[must_use]
    pub fn durability(mut self, durability: RedbDurability) -> Self {
        self.durability = durability;
        self
    }
}

#[typetag::serde(name = "redb")]
#[async_trait]
impl TierConfig for RedbConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Tier>> {
        Ok(Arc::new(RedbTier::open(self, ctx.schema_version).await?))
    }
}
