//! Counters kept by the cache, per tier and per key source.
//!
//! Every counter is striped: each thread counts into its own cache-line
//! padded slot (a thread's slot is fixed at its first count), and a read
//! sums the slots. Two threads hitting the cache at once then never write
//! the same cache line, which a single shared counter makes them do on
//! every hit. Adds are atomic, so threads that share a slot (more threads
//! than slots) still count exactly.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use serde::Serialize;
use tierstack_core::TierStats;

/// One slot per thread (up to a bound), each on cache lines of its own.
pub(crate) struct Striped<T> {
    slots: Box<[Padded<T>]>,
}

/// 128 bytes: two 64-byte lines, as adjacent-line prefetching pairs them.
#[repr(align(128))]
struct Padded<T>(T);

impl<T: Default> Default for Striped<T> {
    fn default() -> Self {
        Self {
            slots: (0..slot_count()).map(|_| Padded(T::default())).collect(),
        }
    }
}

impl<T> Striped<T> {
    /// The calling thread's slot.
    pub(crate) fn local(&self) -> &T {
        // `slot_count` is a power of two.
        &self.slots[thread_slot() & (self.slots.len() - 1)].0
    }

    /// Every slot, to sum.
    pub(crate) fn slots(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().map(|p| &p.0)
    }
}

impl<T> std::fmt::Debug for Striped<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Striped")
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// Four slots per core (threads get slots round robin, so a few more
/// threads than cores rarely share one), between 8 and 64.
fn slot_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        (cores * 4).next_power_of_two().clamp(8, 64)
    })
}

fn thread_slot() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // Initialised by hand rather than lazily: a `const` thread-local
        // without a destructor has no initialisation state to check on
        // each read, and every counted hit reads it.
        static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SLOT.with(|slot| {
        let mut taken = slot.get();
        if taken == usize::MAX {
            taken = NEXT.fetch_add(1, Ordering::Relaxed) & (usize::MAX >> 1);
            slot.set(taken);
        }
        taken
    })
}

/// Counters of one tier as the cache sees it.
pub(crate) type LayerCounters = Striped<LayerCounts>;

#[derive(Debug, Default)]
pub(crate) struct LayerCounts {
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

/// Counters of one key source.
pub(crate) type SourceCounters = Striped<SourceCounts>;

#[derive(Debug, Default)]
pub(crate) struct SourceCounts {
    pub(crate) hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) fetches: AtomicU64,
    pub(crate) fetch_errors: AtomicU64,
    pub(crate) coalesced: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
    pub(crate) refreshes: AtomicU64,
    pub(crate) revalidated: AtomicU64,
    pub(crate) throttled_waits: AtomicU64,
    pub(crate) throttled_rejections: AtomicU64,
    pub(crate) circuit_open: AtomicU64,
    pub(crate) lease_won: AtomicU64,
    pub(crate) lease_waited: AtomicU64,
    pub(crate) lease_takeovers: AtomicU64,
    pub(crate) coordination_fallbacks: AtomicU64,
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

/// The sum of one counter over every slot.
fn sum<T>(striped: &Striped<T>, counter: impl Fn(&T) -> &AtomicU64) -> u64 {
    striped
        .slots()
        .map(|slot| counter(slot).load(Ordering::Relaxed))
        .fold(0, u64::wrapping_add)
}

type SourceMap = HashMap<Arc<str>, Arc<SourceCounters>, foldhash::fast::RandomState>;

/// Per-source counters, created on first use of a source.
///
/// The handles live in one map. A hit finds its source's handle in a small
/// per-thread memo of the sources it counted last, which takes no lock and
/// hashes nothing; on a memo miss, it looks in its thread slot's copy of
/// the handles, behind a lock no other thread is taking at the same time.
#[derive(Debug)]
pub(crate) struct Sources {
    /// Tells this cache's entries in the per-thread memo from another's.
    id: u64,
    all: RwLock<SourceMap>,
    known: Striped<Mutex<SourceMap>>,
}

impl Default for Sources {
    fn default() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            all: RwLock::default(),
            known: Striped::default(),
        }
    }
}

/// Sources a thread remembers; a service's hot path reads a few.
const RECENT_SOURCES: usize = 4;

/// One source a thread counted lately, and which cache it belongs to.
struct RecentSource {
    owner: u64,
    source: Arc<str>,
    counters: Arc<SourceCounters>,
}

/// The per-thread memo of [`Sources::with`]: the last sources counted,
/// replaced round robin. It holds at most [`RECENT_SOURCES`] handles of
/// caches that may be gone, which the thread frees when it ends.
struct RecentSources {
    entries: [Option<RecentSource>; RECENT_SOURCES],
    next: usize,
}

thread_local! {
    static RECENT: RefCell<RecentSources> = const {
        RefCell::new(RecentSources {
            entries: [const { None }; RECENT_SOURCES],
            next: 0,
        })
    };
}

impl Sources {
    /// Runs `f` on the calling thread's slot of the counters of `source`.
    pub(crate) fn with<T>(&self, source: &str, f: impl FnOnce(&SourceCounts) -> T) -> T {
        let remembered = RECENT.with(|recent| {
            let Ok(recent) = recent.try_borrow() else {
                return Err(f);
            };
            let found = recent
                .entries
                .iter()
                .flatten()
                .find(|r| r.owner == self.id && &*r.source == source);
            match found {
                Some(r) => Ok(f(r.counters.local())),
                None => Err(f),
            }
        });
        let f = match remembered {
            Ok(answer) => return answer,
            Err(f) => f,
        };
        let (source, counters) = self.known_to_this_slot(source);
        let answer = f(counters.local());
        RECENT.with(|recent| {
            // Busy only if `f` re-entered; the memo is then left as it is.
            if let Ok(mut recent) = recent.try_borrow_mut() {
                let at = recent.next;
                recent.next = (at + 1) % RECENT_SOURCES;
                recent.entries[at] = Some(RecentSource {
                    owner: self.id,
                    source,
                    counters,
                });
            }
        });
        answer
    }

    /// The handle of `source` from the calling thread slot's copy, added
    /// there on first use.
    fn known_to_this_slot(&self, source: &str) -> (Arc<str>, Arc<SourceCounters>) {
        let mut known = self
            .known
            .local()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((name, counters)) = known.get_key_value(source) {
            return (Arc::clone(name), Arc::clone(counters));
        }
        let counters = self.get(source);
        let name: Arc<str> = Arc::from(source);
        known.insert(Arc::clone(&name), Arc::clone(&counters));
        (name, counters)
    }

    /// The counters of `source`, for paths that count several times (a
    /// fetch) or are not hot.
    pub(crate) fn get(&self, source: &str) -> Arc<SourceCounters> {
        if let Some(found) = self
            .all
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(source)
        {
            return Arc::clone(found);
        }
        let mut map = self.all.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(Arc::from(source)).or_default())
    }

    pub(crate) fn snapshot(&self) -> BTreeMap<String, SourceStats> {
        self.all
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(source, c)| {
                (
                    source.to_string(),
                    SourceStats {
                        hits: sum(c, |s| &s.hits),
                        misses: sum(c, |s| &s.misses),
                        fetches: sum(c, |s| &s.fetches),
                        fetch_errors: sum(c, |s| &s.fetch_errors),
                        coalesced: sum(c, |s| &s.coalesced),
                        stale_served: sum(c, |s| &s.stale_served),
                        negative_hits: sum(c, |s| &s.negative_hits),
                        refreshes: sum(c, |s| &s.refreshes),
                        revalidated: sum(c, |s| &s.revalidated),
                        throttled_waits: sum(c, |s| &s.throttled_waits),
                        throttled_rejections: sum(c, |s| &s.throttled_rejections),
                        circuit_open: sum(c, |s| &s.circuit_open),
                        lease_won: sum(c, |s| &s.lease_won),
                        lease_waited: sum(c, |s| &s.lease_waited),
                        lease_takeovers: sum(c, |s| &s.lease_takeovers),
                        coordination_fallbacks: sum(c, |s| &s.coordination_fallbacks),
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
            hits: sum(c, |s| &s.hits),
            misses: sum(c, |s| &s.misses),
            expired: sum(c, |s| &s.expired),
            errors: sum(c, |s| &s.errors),
            decode_failures: sum(c, |s| &s.decode_failures),
            writes: sum(c, |s| &s.writes),
            write_errors: sum(c, |s| &s.write_errors),
            copy_ups: sum(c, |s| &s.copy_ups),
            bytes_read: sum(c, |s| &s.bytes_read),
            bytes_written: sum(c, |s| &s.bytes_written),
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
    /// Fetches the upstream answered "not modified": a kept entry made
    /// fresh again without its body (also counted in `fetches`).
    pub revalidated: u64,
    /// Calls that waited for a slot of the source's rate limit.
    pub throttled_waits: u64,
    /// Calls turned away because the rate limit's next slot was past their deadline.
    pub throttled_rejections: u64,
    /// Calls that found the source's circuit open (the upstream had asked to slow down): served stale or turned away.
    pub circuit_open: u64,
    /// Cross-process leases this process took for a key it was about to
    /// fetch (it then fetches, unless the value arrived just before).
    pub lease_won: u64,
    /// Callers that waited for another process's lease instead of fetching.
    pub lease_waited: u64,
    /// Leases taken over after the holder's expired without a value (it crashed or failed).
    pub lease_takeovers: u64,
    /// Times the coordinating tier could not be reached and this process decided alone (in-process single-flight, its own share of the budget).
    pub coordination_fallbacks: u64,
}

impl SourceStats {
    /// Both sets of counters added up.
    #[must_use]
    pub fn plus(&self, s: &Self) -> Self {
        Self {
            hits: self.hits + s.hits,
            misses: self.misses + s.misses,
            fetches: self.fetches + s.fetches,
            fetch_errors: self.fetch_errors + s.fetch_errors,
            coalesced: self.coalesced + s.coalesced,
            stale_served: self.stale_served + s.stale_served,
            negative_hits: self.negative_hits + s.negative_hits,
            refreshes: self.refreshes + s.refreshes,
            revalidated: self.revalidated + s.revalidated,
            throttled_waits: self.throttled_waits + s.throttled_waits,
            throttled_rejections: self.throttled_rejections + s.throttled_rejections,
            circuit_open: self.circuit_open + s.circuit_open,
            lease_won: self.lease_won + s.lease_won,
            lease_waited: self.lease_waited + s.lease_waited,
            lease_takeovers: self.lease_takeovers + s.lease_takeovers,
            coordination_fallbacks: self.coordination_fallbacks + s.coordination_fallbacks,
        }
    }
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
            .fold(SourceStats::default(), |a, s| a.plus(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(sources: &Sources) -> BTreeMap<String, u64> {
        sources
            .snapshot()
            .into_iter()
            .map(|(source, stats)| (source, stats.hits))
            .collect()
    }

    #[test]
    fn the_memo_keeps_caches_and_sources_apart() {
        let first = Sources::default();
        let second = Sources::default();
        // More sources than the memo holds, so entries are replaced while
        // counting, and the same names in two caches.
        let names: Vec<String> = (0..RECENT_SOURCES + 2).map(|i| format!("s{i}")).collect();
        for round in 0..100u64 {
            for (i, name) in names.iter().enumerate() {
                first.with(name, |c| add(&c.hits, 1));
                if i % 2 == 0 {
                    second.with(name, |c| add(&c.hits, round + 1));
                }
            }
        }
        let first = hits(&first);
        let second = hits(&second);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(first[name], 100, "{name} in the first cache");
            let want = if i % 2 == 0 { 5050 } else { 0 };
            assert_eq!(
                second.get(name).copied().unwrap_or(0),
                want,
                "{name} in the second"
            );
        }
    }

    #[test]
    fn counting_from_inside_a_count_is_exact() {
        let sources = Sources::default();
        for _ in 0..10 {
            sources.with("outer", |c| {
                add(&c.hits, 1);
                sources.with("inner", |c| add(&c.hits, 2));
            });
        }
        let hits = hits(&sources);
        assert_eq!((hits["outer"], hits["inner"]), (10, 20));
    }

    #[test]
    fn threads_count_into_one_total() {
        let sources = Sources::default();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for i in 0..10_000 {
                        let name = if i % 3 == 0 { "a" } else { "b" };
                        sources.with(name, |c| add(&c.hits, 1));
                    }
                });
            }
        });
        let hits = hits(&sources);
        assert_eq!((hits["a"], hits["b"]), (4 * 3334, 4 * 6666));
    }
}
