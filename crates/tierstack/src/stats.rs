//! Counters kept by the cache, per tier and per key source.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use tierstack_core::TierStats;

/// Counters of one tier as the cache sees it.
#[derive(Debug, Default)]
pub(crate) struct LayerCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) decode_failures: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) write_errors: AtomicU64,
    pub(crate) copy_ups: AtomicU64,
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_written: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct SourceCounters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
    pub(crate) refreshes: AtomicU64,
}

/// Whether a look through the tiers moves their counters. A second look at
/// the same key for the same call (the single-flight leader's check before
/// it fetches) is quiet, so that one call counts one miss per tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tally {
    Count,
    Quiet,
}

impl Tally {
    pub(crate) fn bump(self, counter: &AtomicU64) {
        if self == Self::Count {
            bump(counter);
        }
    }
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Per-source counters, created on first use of a source.
#[derive(Debug, Default)]
pub(crate) struct Sources(
    RwLock<HashMap<Arc<str>, Arc<SourceCounters>, foldhash::fast::RandomState>>,
);

impl Sources {
    /// Runs `f` on the counters of `source` under the read lock: the hot
    /// path (every lookup) takes no `Arc` clone and no write lock.
    pub(crate) fn with<T>(&self, source: &str, f: impl FnOnce(&SourceCounters) -> T) -> T {
        if let Some(found) = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(source)
        {
            return f(found);
        }
        f(&self.get(source))
    }

    pub(crate) fn get(&self, source: &str) -> Arc<SourceCounters> {
        if let Some(found) = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(source)
        {
            return Arc::clone(found);
        }
        let mut map = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(map.entry(Arc::from(source)).or_default())
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, SourceStats> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(source, c)| {
                (
                    source.to_string(),
                    SourceStats {
                        hits: load(&c.hits),
                        misses: load(&c.misses),
                        fetches: load(&c.fetches),
                        fetch_errors: load(&c.fetch_errors),
                        coalesced: load(&c.coalesced),
                        stale_served: load(&c.stale_served),
                        negative_hits: load(&c.negative_hits),
                        refreshes: load(&c.refreshes),
                    },
                )
            })
            .collect()
    }
}

/// A snapshot of one tier's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct LayerStats {
    /// The tier's name.
    pub name: String,
    /// Fresh entries found.
    pub hits: u64,
    /// Lookups that found nothing usable here (including expired and
    /// undecodable entries).
    pub misses: u64,
    /// Entries found but no longer fresh.
    pub expired: u64,
    /// Failed operations of the tier (skipped; the cache went on without it).
    pub errors: u64,
    /// Entries that could not be decoded (damaged, foreign, other schema).
    pub decode_failures: u64,
    /// Entries written (sets and copy-ups).
    pub writes: u64,
    /// Writes that failed.
    pub write_errors: u64,
    /// Entries copied up into this tier from a lower one.
    pub copy_ups: u64,
    /// Bytes of entries read from the tier.
    pub bytes_read: u64,
    /// Bytes of entries written to the tier.
    pub bytes_written: u64,
    /// What the backend counts itself.
    pub backend: TierStats,
}

impl LayerStats {
    pub(crate) fn from_counters(name: &str, c: &LayerCounters, backend: TierStats) -> Self {
        Self {
            name: name.to_owned(),
            hits: load(&c.hits),
            misses: load(&c.misses),
            expired: load(&c.expired),
            errors: load(&c.errors),
            decode_failures: load(&c.decode_failures),
            writes: load(&c.writes),
            write_errors: load(&c.write_errors),
            copy_ups: load(&c.copy_ups),
            bytes_read: load(&c.bytes_read),
            bytes_written: load(&c.bytes_written),
            backend,
        }
    }

    /// `hits / (hits + misses)`, or 0 when there were no lookups.
    #[allow(clippy::cast_precision_loss)]
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// A snapshot of one key source's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
pub struct SourceStats {
    /// Lookups answered by some tier.
    pub hits: u64,
    /// Lookups no tier could answer.
    pub misses: u64,
    /// Calls of a fetch function.
    pub fetches: u64,
    /// Fetch calls that failed.
    pub fetch_errors: u64,
    /// Callers that waited for another caller's fetch of the same key
    /// instead of fetching themselves.
    pub coalesced: u64,
    /// Stale values served because a fetch failed, timed out, or the cache
    /// was offline.
    pub stale_served: u64,
    /// Lookups answered by a cached "not found".
    pub negative_hits: u64,
    /// Background refreshes started by refresh-ahead.
    pub refreshes: u64,
}

/// A snapshot of the cache's counters.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// One entry per tier, top (L1) first.
    pub layers: Vec<LayerStats>,
    /// Per key source.
    pub sources: BTreeMap<String, SourceStats>,
    /// Cross-host invalidation (all zero without a backplane).
    pub backplane: crate::BackplaneStats,
}

impl CacheStats {
    /// Counters of the tier named `name`.
    pub fn layer(&self, name: &str) -> Option<&LayerStats> {
        self.layers.iter().find(|l| l.name == name)
    }

    /// Counters summed over all sources.
    pub fn totals(&self) -> SourceStats {
        self.sources
            .values()
            .fold(SourceStats::default(), |a, s| SourceStats {
                hits: a.hits + s.hits,
                misses: a.misses + s.misses,
                fetches: a.fetches + s.fetches,
                fetch_errors: a.fetch_errors + s.fetch_errors,
                coalesced: a.coalesced + s.coalesced,
                stale_served: a.stale_served + s.stale_served,
                negative_hits: a.negative_hits + s.negative_hits,
                refreshes: a.refreshes + s.refreshes,
            })
    }
}
