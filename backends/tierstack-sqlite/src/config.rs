use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack_core::{BuildContext, Result, Tier, TierConfig, async_trait, units};

use crate::SqliteTier;

/// Configuration of the SQLite tier (`kind: sqlite`).
///
/// ```yaml
/// kind: sqlite
/// path: ~/.cache/mk_torrent/metadata.db
/// ttl: 7d
/// max_size: 512MiB
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// Name in statistics and logs. Default `sqlite`.
    pub name: String,
    /// Database file; `~` and `$VAR` are expanded. Its directory is created
    /// (mode 0700) if missing. Default: `tierstack/cache.db` under the
    /// platform cache directory (`~/.cache` on Linux).
    pub path: String,
    /// Longest time an entry stays fresh in this tier. Default 7 days.
    #[serde(with = "units::duration_opt")]
    pub ttl: Option<Duration>,
    /// Byte cap of the database; past it, dead entries and then the least
    /// recently used are evicted. Default: no cap.
    #[serde(with = "units::size_opt")]
    pub max_size: Option<u64>,
    /// SQLite `synchronous` level. `normal` (default) survives a crash of the
    /// process; `full` also survives a power loss, at a cost per commit.
    pub synchronous: Synchronous,
    /// How long a writer waits for another process's write lock before
    /// retrying. Default 5 s.
    #[serde(with = "units::duration_opt")]
    pub busy_timeout: Option<Duration>,
    /// Most writes committed in one transaction by the group-commit writer.
    pub max_batch: usize,
}

/// SQLite's `synchronous` pragma, for WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// No fsync: fastest, a power loss can lose recent commits (a process
    /// crash cannot).
    Off,
    /// fsync at checkpoints: a process crash loses nothing committed.
    #[default]
    Normal,
    /// fsync every commit.
    Full,
}

impl Synchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Self::Off => "OFF",
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self {
            name: "sqlite".to_owned(),
            path: default_path(),
            ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            max_size: None,
            synchronous: Synchronous::Normal,
            busy_timeout: Some(Duration::from_secs(5)),
            max_batch: 1024,
        }
    }
}

fn default_path() -> String {
    tierstack_core::paths::default_cache_path("cache.db")
}

impl SqliteConfig {
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

    /// Sets the `synchronous` level.
    #[must_use]
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.synchronous = level;
        self
    }

    /// Sets the name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

#[typetag::serde(name = "sqlite")]
#[async_trait]
impl TierConfig for SqliteConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Tier>> {
        Ok(Arc::new(SqliteTier::open(self, ctx.schema_version).await?))
    }
}
