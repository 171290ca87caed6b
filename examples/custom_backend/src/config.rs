use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack_core::{BuildContext, Result, Tier, TierConfig, async_trait, units};

use crate::FilesTier;

/// Configuration of the files tier (`kind: files`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FilesConfig {
    /// Name in statistics and logs. Default `files`.
    pub name: String,
    /// Directory holding one file per entry; `~` and `$VAR` are expanded.
    pub dir: String,
    /// Longest freshness in this tier.
    #[serde(with = "units::duration_opt")]
    pub ttl: Option<Duration>,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            name: "files".to_owned(),
            dir: tierstack_core::paths::default_cache_path("files"),
            ttl: None,
        }
    }
}

impl FilesConfig {
    /// A config for the directory `dir`.
    pub fn new(dir: impl Into<String>) -> Self {
        Self {
            dir: dir.into(),
            ..Self::default()
        }
    }
}

// The one line that makes `kind: files` work in every tierstack config file
// of a program that links this crate.
#[typetag::serde(name = "files")]
#[async_trait]
impl TierConfig for FilesConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Tier>> {
        Ok(Arc::new(FilesTier::open(self, ctx.schema_version)?))
    }
}
