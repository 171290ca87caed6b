use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::sync::Cache;
use quick_cache::{Equivalent, Lifecycle, OptionsBuilder, Weighter};
use tierstack_core::{
    Capabilities, ClearScope, Entry, ErrorKind, Health, Key, Readiness, Result, ScanCursor,
    ScanPage, SetReadiness, Tier, TierSize, TierStats, Timestamp, async_trait,
};

use crate::config::DEFAULT_MAX_ENTRIES;
use crate::{CAPABILITIES, MemoryConfig};

/// Per-entry overhead counted by the byte weigher: the cache's slot, the
/// `Arc`s and the header, so that many tiny entries cannot exceed the budget.
const ENTRY_OVERHEAD: u64 = 128;

/// How often a write sweeps out entries past their retention. Between
/// sweeps they are invisible to reads and take their turn when space is
/// needed (quick_cache's policy does not know they are dead); the sweep
/// gives their memory back sooner.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

type Engine = Cache<Slot, Arc<Entry>, Weigh, foldhash::fast::RandomState, CountEvictions>;

/// The engine's key: a [`Key`] hashed by the xxh3 digest it carries since
/// it was made, so that a read hashes eight bytes instead of the key's
/// text (hashing the text was a tenth of an L1 hit's instructions).
/// `Key`'s own `Hash` stays `str`'s, which its `Borrow<str>` requires.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot(Key);

impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.xxh3_64());
    }
}

/// A borrowed key, looked up as the [`Slot`] that would hold it without
/// cloning the key into one.
struct Probe<'a>(&'a Key);

impl Hash for Probe<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.xxh3_64());
    }
}

impl Equivalent<Slot> for Probe<'_> {
    fn equivalent(&self, slot: &Slot) -> bool {
        *self.0 == slot.0
    }
}

/// The in-process tier. Entries the cache wrote keep their decoded value
/// instead of their bytes, so a hit hands out an `Arc` of the value (no
/// decode, no decompression, no copy) and each entry is held in one form;
/// `get` and `scan` encode the value again for callers that need bytes.
/// Entries written without a value (imports) keep their bytes. Reads are
/// answered synchronously ([`Tier::get_ready`]).
///
/// The engine is quick_cache (a CLOCK-Pro/S3-FIFO-like policy, sharded
/// read locks, no per-entry timers): freshness is the cache's business and
/// is read from the header it already reads, so the tier only has to keep
/// entries until their retention ends (see `docs/decisions/0010-hot-path.md`).
#[derive(Debug)]
pub struct MemoryTier {
    name: String,
    cache: Engine,
    max_ttl: Option<Duration>,
    by_bytes: bool,
    counters: Arc<Counters>,
    /// When the last sweep of dead entries ran, in milliseconds since the
    /// Unix epoch.
    last_sweep_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct Counters {
    evictions: AtomicU64,
    expirations: AtomicU64,
}

/// Weighs entries by bytes (key + encoded entry + overhead) when the tier is
/// capped in bytes, as one each otherwise.
#[derive(Debug, Clone, Copy)]
struct Weigh {
    by_bytes: bool,
}

impl Weighter<Slot, Arc<Entry>> for Weigh {
    fn weight(&self, Slot(key): &Slot, entry: &Arc<Entry>) -> u64 {
        if self.by_bytes {
            (key.as_str().len() + entry.encoded_len()) as u64 + ENTRY_OVERHEAD
        } else {
            1
        }
    }
}

/// Counts the entries the engine evicts to make room.
#[derive(Debug, Clone, Default)]
struct CountEvictions(Arc<Counters>);

/// What one write took out of the engine. quick_cache reports an older
/// version that a write replaces through the same hook as an eviction;
/// this tells the two apart.
#[derive(Default)]
struct Written {
    /// The key's digest and the address of the entry being written. An
    /// entry of that key that is not the one being written is the version
    /// it replaces; the one being written can itself be refused as too
    /// heavy, which is an eviction. (Two keys with one 64-bit digest would
    /// only miscount a statistic.)
    writing: Option<(u64, usize)>,
    /// The replaced version, dropped after the shard's lock is released.
    replaced: Option<Arc<Entry>>,
}

impl Lifecycle<Slot, Arc<Entry>> for CountEvictions {
    type RequestState = Written;

    fn on_evict(&self, written: &mut Written, Slot(key): Slot, entry: Arc<Entry>) {
        if let Some((digest, address)) = written.writing
            && key.xxh3_64() == digest
            && Arc::as_ptr(&entry) as usize != address
        {
            written.replaced = Some(entry);
            return;
        }
        // An entry past its retention that makes room was going anyway.
        let counter = if entry.header.is_retained(Timestamp::now()) {
            &self.0.evictions
        } else {
            &self.0.expirations
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl MemoryTier {
    /// Builds the tier; fails on an invalid config.
    pub fn new(config: &MemoryConfig) -> Result<Self> {
        crate::error::validate(config)?;
        let counters = Arc::new(Counters::default());
        let by_bytes = config.max_bytes.is_some();
        // In bytes, a guess of 1 KiB per entry sizes the tables.
        let (capacity, estimated_items) = if let Some(max_bytes) = config.max_bytes {
            (max_bytes, max_bytes / 1024)
        } else {
            let entries = config.max_entries.unwrap_or(DEFAULT_MAX_ENTRIES);
            (entries, entries)
        };
        let options = OptionsBuilder::new()
            .estimated_items_capacity(usize::try_from(estimated_items.max(1)).unwrap_or(usize::MAX))
            .weight_capacity(capacity)
            .build()
            .map_err(|e| {
                tierstack_core::Error::config(format!("memory tier options: {e:?}"))
                    .with_tier(config.name.as_str())
            })?;
        let cache = Cache::with_options(
            options,
            Weigh { by_bytes },
            // Seeded per process; SipHash was a tenth of a hit's cost.
            foldhash::fast::RandomState::default(),
            CountEvictions(Arc::clone(&counters)),
        );
        Ok(Self {
            name: config.name.clone(),
            cache,
            max_ttl: config.ttl,
            by_bytes,
            counters,
            last_sweep_ms: AtomicU64::new(Timestamp::now().as_millis()),
        })
    }

    /// A tier holding at most `max_entries` entries, with no TTL cap.
    pub fn with_max_entries(max_entries: u64) -> Result<Self> {
        Self::new(&MemoryConfig::with_max_entries(max_entries))
    }

    /// The live entry of `key`: one past its retention is removed and
    /// counted as expired.
    fn live(&self, key: &Key, now: Timestamp) -> Option<Arc<Entry>> {
        let entry = self.cache.get(&Probe(key))?;
        if entry.header.is_retained(now) {
            return Some(entry);
        }
        if self
            .cache
            .remove_if(&Probe(key), |e| !e.header.is_retained(now))
            .is_some()
        {
            self.counters.expirations.fetch_add(1, Ordering::Relaxed);
        }
        None
    }

    /// What [`Tier::set`] and [`Tier::set_ready`] do: nothing can fail.
    fn store(&self, key: &Key, entry: Entry) {
        let now = Timestamp::now();
        if entry.header.is_retained(now) {
            // One form is enough: an entry with its value decoded keeps the
            // value alone, and its bytes are made again when asked for.
            let entry = Arc::new(entry.without_body());
            let mut written = Written {
                writing: Some((key.xxh3_64(), Arc::as_ptr(&entry) as usize)),
                replaced: None,
            };
            self.cache
                .insert_with_lifecycle(Slot(key.clone()), entry, &mut written);
        } else {
            // Already dead: nothing to keep, and an older copy must go.
            self.cache.remove(&Probe(key));
        }
        self.sweep_if_due(now);
    }

    /// Removes what `doomed` selects; returns how many.
    fn remove_where(&self, doomed: impl Fn(&Key, &Entry) -> bool) -> u64 {
        let removed = AtomicU64::new(0);
        self.cache.retain(|Slot(key), entry| {
            let remove = doomed(key, entry);
            if remove {
                removed.fetch_add(1, Ordering::Relaxed);
            }
            !remove
        });
        removed.into_inner()
    }

    /// Drops entries past their retention; returns how many.
    fn sweep(&self, now: Timestamp) -> u64 {
        self.last_sweep_ms.store(now.as_millis(), Ordering::Relaxed);
        let removed = self.remove_where(|_, e| !e.header.is_retained(now));
        self.counters
            .expirations
            .fetch_add(removed, Ordering::Relaxed);
        removed
    }

    /// Sweeps when the last sweep is [`SWEEP_EVERY`] old; one writer wins
    /// the race, the others go on.
    fn sweep_if_due(&self, now: Timestamp) {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let due = last.saturating_add(SWEEP_EVERY.as_millis() as u64);
        if now.as_millis() >= due
            && self
                .last_sweep_ms
                .compare_exchange(last, now.as_millis(), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.sweep(now);
        }
    }
}

/// A stored entry with its body, made again from the value when the tier
/// kept the value alone.
fn restored(key: &Key, entry: &Entry) -> Result<Entry> {
    entry.clone().with_body_restored().map_err(|e| {
        tierstack_core::Error::new(
            ErrorKind::Corrupt,
            format!("{key}: the kept value could not be encoded again: {e}"),
        )
    })
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

    /// Lends the stored entry as it is: the cache reads freshness and
    /// retention from its header anyway, so a hit costs one read lock and
    /// one refcount.
    fn get_ready(&self, key: &Key, read: &mut dyn FnMut(Option<&Entry>)) -> Readiness {
        read(self.cache.get(&Probe(key)).as_deref());
        Readiness::Answered
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.live(key, Timestamp::now())
            .map(|e| restored(key, &e))
            .transpose()
    }

    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        self.store(key, entry);
        Ok(())
    }

    fn set_ready(&self, key: &Key, entry: Entry) -> SetReadiness {
        self.store(key, entry);
        SetReadiness::Done(Ok(()))
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        Ok(self.cache.remove(&Probe(key)).is_some())
    }

    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        let now = Timestamp::now();
        let removed = match scope {
            ClearScope::All => {
                let count = self.cache.len() as u64;
                self.cache.clear();
                count
            }
            ClearScope::Source(source) => self.remove_where(|k, _| k.source() == source),
            ClearScope::Expired => self.remove_where(|_, e| !e.header.is_fresh(now)),
            other => {
                return Err(tierstack_core::Error::new(
                    ErrorKind::Unsupported,
                    format!("clear scope {other:?} is not supported"),
                )
                .with_tier(self.name.as_str()));
            }
        };
        Ok(removed)
    }

    async fn size(&self) -> Result<TierSize> {
        let now = Timestamp::now();
        let mut entries = 0;
        let mut bytes = 0;
        for (Slot(key), entry) in self.cache.iter() {
            if entry.header.is_retained(now) {
                entries += 1;
                bytes += (key.as_str().len() + entry.encoded_len()) as u64;
                if self.by_bytes {
                    bytes += ENTRY_OVERHEAD;
                }
            }
        }
        Ok(TierSize { entries, bytes })
    }

    /// The whole tier is one page: it is in memory already.
    async fn scan(&self, _cursor: Option<ScanCursor>, _limit: usize) -> Result<ScanPage> {
        let now = Timestamp::now();
        let mut entries: Vec<(Key, Entry)> = self
            .cache
            .iter()
            .filter(|(_, e)| e.header.is_retained(now))
            .map(|(Slot(k), e)| restored(&k, &e).map(|e| (k, e)))
            .collect::<Result<_>>()?;
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ScanPage {
            entries,
            next: None,
        })
    }

    async fn purge(&self) -> Result<u64> {
        Ok(self.sweep(Timestamp::now()))
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
