use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;
use tierstack_core::{
    Capabilities, ClearScope, Entry, ErrorKind, Health, Key, Result, ScanCursor, ScanPage, Tier,
    TierSize, TierStats, Timestamp, async_trait,
};

use crate::config::DEFAULT_MAX_ENTRIES;
use crate::{CAPABILITIES, MemoryConfig};

/// Per-entry overhead counted by the byte weigher: moka's node, the `Arc`s
/// and the header, so that many tiny entries cannot exceed the budget.
const ENTRY_OVERHEAD: usize = 128;

/// The in-process tier. Entries keep their decoded value next to the bytes,
/// so a hit hands out an `Arc` of the value: no decode, no decompression, no
/// copy.
#[derive(Debug)]
pub struct MemoryTier {
    name: String,
    cache: Cache<Key, Entry, foldhash::fast::RandomState>,
    max_ttl: Option<Duration>,
    by_bytes: bool,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    evictions: AtomicU64,
    expirations: AtomicU64,
}

/// Keeps each entry until the end of its retention, read from its header,
/// so that stale-if-error and revalidation have something to work with.
struct UntilStaleWindowEnds;

impl UntilStaleWindowEnds {
    fn remaining(entry: &Entry) -> Option<Duration> {
        entry.header.retain_until.remaining_from(Timestamp::now())
    }
}

impl Expiry<Key, Entry> for UntilStaleWindowEnds {
    fn expire_after_create(&self, _key: &Key, value: &Entry, _at: Instant) -> Option<Duration> {
        Self::remaining(value)
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Entry,
        _at: Instant,
        _current: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(value)
    }
}

impl MemoryTier {
    /// Builds the tier; fails on an invalid config.
    pub fn new(config: &MemoryConfig) -> Result<Self> {
        crate::error::validate(config)?;
        let counters = Arc::new(Counters::default());
        let listener_counters = Arc::clone(&counters);
        let mut builder = Cache::builder()
            .name(&config.name)
            .expire_after(UntilStaleWindowEnds)
            .eviction_listener(move |_key, _value, cause| match cause {
                RemovalCause::Size => {
                    listener_counters.evictions.fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Expired => {
                    listener_counters
                        .expirations
                        .fetch_add(1, Ordering::Relaxed);
                }
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            });
        let by_bytes = config.max_bytes.is_some();
        if let Some(max_bytes) = config.max_bytes {
            builder = builder
                .max_capacity(max_bytes)
                .weigher(|key: &Key, entry: &Entry| {
                    u32::try_from(key.as_str().len() + entry.encoded_len() + ENTRY_OVERHEAD)
                        .unwrap_or(u32::MAX)
                });
        } else {
            builder = builder.max_capacity(config.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES));
        }
        Ok(Self {
            name: config.name.clone(),
            // Seeded per process; SipHash was a tenth of a hit's cost.
            cache: builder.build_with_hasher(foldhash::fast::RandomState::default()),
            max_ttl: config.ttl,
            by_bytes,
            counters,
        })
    }

    /// A tier holding at most `max_entries` entries, with no TTL cap.
    pub fn with_max_entries(max_entries: u64) -> Result<Self> {
        Self::new(&MemoryConfig::with_max_entries(max_entries))
    }

    async fn remove_where(&self, mut condition: impl FnMut(&Key, &Entry) -> bool) -> u64 {
        let mut removed = 0;
        let doomed: Vec<Arc<Key>> = self
            .cache
            .iter()
            .filter(|(k, v)| condition(k, v))
            .map(|(k, _)| k)
            .collect();
        for key in doomed {
            if self.cache.remove(&*key).await.is_some() {
                removed += 1;
            }
        }
        removed
    }
}

#[async_trait]
impl Tier for MemoryTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn max_ttl(&self) -> Option<Duration> {
        self.max_ttl
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        Ok(self.cache.get(key).await)
    }

    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        self.cache.insert(key.clone(), entry).await;
        Ok(())
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        Ok(self.cache.remove(key).await.is_some())
    }

    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        let now = Timestamp::now();
        let removed = match scope {
            ClearScope::All => self.remove_where(|_, _| true).await,
            ClearScope::Source(source) => self.remove_where(|k, _| k.source() == source).await,
            ClearScope::Expired => self.remove_where(|_, e| !e.header.is_fresh(now)).await,
            other => {
                return Err(tierstack_core::Error::new(
                    ErrorKind::Unsupported,
                    format!("clear scope {other:?} is not supported"),
                )
                .with_tier(self.name.as_str()));
            }
        };
        self.cache.run_pending_tasks().await;
        Ok(removed)
    }

    async fn size(&self) -> Result<TierSize> {
        self.cache.run_pending_tasks().await;
        let bytes = if self.by_bytes {
            self.cache.weighted_size()
        } else {
            self.cache
                .iter()
                .map(|(k, e)| (k.as_str().len() + e.encoded_len()) as u64)
                .sum()
        };
        Ok(TierSize {
            entries: self.cache.entry_count(),
            bytes,
        })
    }

    /// The whole tier is one page: it is in memory already.
    async fn scan(&self, _cursor: Option<ScanCursor>, _limit: usize) -> Result<ScanPage> {
        let mut entries: Vec<(Key, Entry)> =
            self.cache.iter().map(|(k, e)| ((*k).clone(), e)).collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ScanPage {
            entries,
            next: None,
        })
    }

    fn stats(&self) -> TierStats {
        TierStats {
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expirations: self.counters.expirations.load(Ordering::Relaxed),
            ..TierStats::default()
        }
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}
