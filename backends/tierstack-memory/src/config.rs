use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack_core::{BuildContext, Result, Tier, TierConfig, async_trait, units};

use crate::MemoryTier;

/// Configuration of the memory tier (`kind: memory`).
///
/// ```yaml
/// kind: memory
/// ttl: 1h            # longest time an entry stays fresh here
/// max_entries: 1000  # or max_bytes: 64MiB, not both
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct MemoryConfig {
    /// Name in statistics and logs. Default `memory`.
    pub name: String,
    /// Longest time an entry stays fresh in this tier; longer TTLs and
    /// copied-up entries are capped to it. `None`: no cap.
    #[serde(with = "units::duration_opt")]
    pub ttl: Option<Duration>,
    /// Capacity in entries. Default 10,000 when `max_bytes` is not set.
    pub max_entries: Option<u64>,
    /// Capacity in bytes (key + encoded entry), instead of `max_entries`.
    #[serde(with = "units::size_opt")]
    pub max_bytes: Option<u64>,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            name: "memory".to_owned(),
            ttl: None,
            max_entries: None,
            max_bytes: None,
        }
    }
}

/// Entry capacity when neither limit is configured.
pub(crate) const DEFAULT_MAX_ENTRIES: u64 = 10_000;

impl MemoryConfig {
    /// A config holding at most `max_entries` entries.
    pub fn with_max_entries(max_entries: u64) -> Self {
        Self {
            max_entries: Some(max_entries),
            ..Self::default()
        }
    }

    /// A config holding at most `max_bytes` bytes of entries.
    pub fn with_max_bytes(max_bytes: u64) -> Self {
        Self {
            max_bytes: Some(max_bytes),
            ..Self::default()
        }
    }

    /// Sets the TTL cap.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets the name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

#[typetag::serde(name = "memory")]
#[async_trait]
impl TierConfig for MemoryConfig {
    async fn build(&self, _ctx: &BuildContext) -> Result<Arc<dyn Tier>> {
        Ok(Arc::new(MemoryTier::new(self)?))
    }
}
