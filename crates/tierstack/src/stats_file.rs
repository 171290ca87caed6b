//! Counters that outlive the process. A cache with a stats file adds what it
//! counted to that file when it is dropped (and on
//! [`TieredCache::flush_stats`]), so `tierstack stats` can show the hits and
//! misses of every process that used the cache, not only its own.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use tierstack_core::paths::{self, AtomicFile};

use crate::{CacheStats, TieredCache};

/// The `format` field that marks a stats file as tierstack's.
const STATS_FORMAT: &str = "tierstack-stats";
/// The version of the stats file this build writes.
const STATS_VERSION: u32 = 1;
/// What the stats file is, in refusals.
const STATS_KIND: &str = "a tierstack stats file";
/// Stats files are a few KiB: anything this large is not one, and is not
/// read into memory.
const MAX_STATS_LEN: u64 = 16 << 20;
/// The first bytes of a lock file this crate created.
const LOCK_MARKER: &[u8] = b"tierstack stats lock\n";

/// A stats file as written: its header, then the totals.
#[derive(Serialize)]
struct Document<'a> {
    format: &'static str,
    version: u32,
    #[serde(flatten)]
    stats: &'a StoredStats,
}

/// The totals in `file`, or `None` when it is not a stats file: the header
/// names the format, or (files written before the header) the object has
/// only the totals' own fields.
fn read_stats(file: &mut impl Read) -> std::io::Result<Option<StoredStats>> {
    let mut bytes = Vec::new();
    file.take(MAX_STATS_LEN + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATS_LEN {
        return Ok(None);
    }
    let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice(&bytes) else {
        return Ok(None);
    };
    let ours = match fields.get("format") {
        Some(format) => format == STATS_FORMAT,
        None => {
            !fields.is_empty()
                && fields
                    .keys()
                    .all(|k| matches!(k.as_str(), "since" | "tiers" | "sources"))
        }
    };
    if !ours {
        return Ok(None);
    }
    Ok(serde_json::from_value(serde_json::Value::Object(fields)).ok())
}

fn is_stats_file(file: &mut fs::File) -> bool {
    matches!(read_stats(file), Ok(Some(_)))
}

fn is_lock_file(file: &mut fs::File) -> bool {
    let mut head = Vec::new();
    file.take(LOCK_MARKER.len() as u64)
        .read_to_end(&mut head)
        .is_ok()
        && head == LOCK_MARKER
}

/// Refuses a stats file path that holds something else (a store, a
/// device, a directory), before the cache is built on it.
pub(crate) fn check_path(path: &Path) -> tierstack_core::Result<()> {
    paths::check_replaceable(path, STATS_KIND, is_stats_file).map(|_| ())
}

fn to_io(error: tierstack_core::Error) -> std::io::Error {
    let kind = match error.kind() {
        tierstack_core::ErrorKind::Config => std::io::ErrorKind::InvalidInput,
        tierstack_core::ErrorKind::PermissionDenied => std::io::ErrorKind::PermissionDenied,
        _ => std::io::ErrorKind::Other,
    };
    std::io::Error::new(kind, error)
}

/// Counts kept for one tier or one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct StoredCounters {
    /// Fresh entries found (tier) or lookups answered from cache (source).
    pub hits: u64,
    /// Lookups that found nothing usable.
    pub misses: u64,
    /// Failed tier operations (tiers only).
    pub errors: u64,
    /// Entries that could not be decoded (tiers only).
    pub decode_failures: u64,
    /// Entries written (tiers only).
    pub writes: u64,
    /// Writes that failed (tiers only).
    pub write_errors: u64,
    /// Calls of the source (sources only).
    pub fetches: u64,
    /// Failed calls of the source (sources only).
    pub fetch_errors: u64,
    /// Expired values served because the source failed (sources only).
    pub stale_served: u64,
    /// Calls that waited for a slot of the source's rate limit (sources only).
    pub throttled_waits: u64,
    /// Calls turned away because the rate limit's next slot was past their deadline (sources only).
    pub throttled_rejections: u64,
    /// Calls that found the source's circuit open (the upstream had asked to slow down): served stale or turned away (sources only).
    pub circuit_open: u64,
    /// Cross-process leases taken for a key about to be fetched (sources only).
    pub lease_won: u64,
    /// Callers that waited for another process's lease instead of fetching (sources only).
    pub lease_waited: u64,
    /// Leases taken over after the holder's expired without a value (it crashed or failed) (sources only).
    pub lease_takeovers: u64,
    /// Times the coordinating tier could not be reached and this process decided alone (in-process single-flight, its own share of the budget) (sources only).
    pub coordination_fallbacks: u64,
}

impl StoredCounters {
    /// Hits over hits and misses; `None` before any lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        #[allow(clippy::cast_precision_loss)]
        (total > 0).then(|| self.hits as f64 / total as f64)
    }

    pub(crate) fn add(&mut self, other: &Self) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.errors += other.errors;
        self.decode_failures += other.decode_failures;
        self.writes += other.writes;
        self.write_errors += other.write_errors;
        self.fetches += other.fetches;
        self.fetch_errors += other.fetch_errors;
        self.stale_served += other.stale_served;
        self.throttled_waits += other.throttled_waits;
        self.throttled_rejections += other.throttled_rejections;
        self.circuit_open += other.circuit_open;
        self.lease_won += other.lease_won;
        self.lease_waited += other.lease_waited;
        self.lease_takeovers += other.lease_takeovers;
        self.coordination_fallbacks += other.coordination_fallbacks;
    }

    fn minus(&self, earlier: &Self) -> Self {
        Self {
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
            errors: self.errors.saturating_sub(earlier.errors),
            decode_failures: self.decode_failures.saturating_sub(earlier.decode_failures),
            writes: self.writes.saturating_sub(earlier.writes),
            write_errors: self.write_errors.saturating_sub(earlier.write_errors),
            fetches: self.fetches.saturating_sub(earlier.fetches),
            fetch_errors: self.fetch_errors.saturating_sub(earlier.fetch_errors),
            stale_served: self.stale_served.saturating_sub(earlier.stale_served),
            throttled_waits: self.throttled_waits.saturating_sub(earlier.throttled_waits),
            throttled_rejections: self
                .throttled_rejections
                .saturating_sub(earlier.throttled_rejections),
            circuit_open: self.circuit_open.saturating_sub(earlier.circuit_open),
            lease_won: self.lease_won.saturating_sub(earlier.lease_won),
            lease_waited: self.lease_waited.saturating_sub(earlier.lease_waited),
            lease_takeovers: self.lease_takeovers.saturating_sub(earlier.lease_takeovers),
            coordination_fallbacks: self
                .coordination_fallbacks
                .saturating_sub(earlier.coordination_fallbacks),
        }
    }
}

/// The contents of a stats file: totals per tier and per source over every
/// process that used the cache since the file was created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct StoredStats {
    /// When the file was created (RFC 3339).
    pub since: String,
    /// Per tier name.
    pub tiers: BTreeMap<String, StoredCounters>,
    /// Per key source.
    pub sources: BTreeMap<String, StoredCounters>,
}

impl StoredStats {
    /// Reads a stats file; a missing file is empty totals. A file that is
    /// not a stats file (a database, say) is an `InvalidData` error.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let mut file = match fs::File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e),
        };
        read_stats(&mut file)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a tierstack stats file", path.display()),
            )
        })
    }

    fn from_cache(stats: &CacheStats) -> Self {
        let tiers = stats
            .layers
            .iter()
            .map(|l| {
                let counters = StoredCounters {
                    hits: l.hits,
                    misses: l.misses,
                    errors: l.errors,
                    decode_failures: l.decode_failures,
                    writes: l.writes,
                    write_errors: l.write_errors,
                    ..StoredCounters::default()
                };
                (l.name.clone(), counters)
            })
            .collect();
        let sources = stats
            .sources
            .iter()
            .map(|(name, s)| {
                let counters = StoredCounters {
                    hits: s.hits + s.negative_hits,
                    misses: s.misses,
                    fetches: s.fetches,
                    fetch_errors: s.fetch_errors,
                    stale_served: s.stale_served,
                    throttled_waits: s.throttled_waits,
                    throttled_rejections: s.throttled_rejections,
                    circuit_open: s.circuit_open,
                    lease_won: s.lease_won,
                    lease_waited: s.lease_waited,
                    lease_takeovers: s.lease_takeovers,
                    coordination_fallbacks: s.coordination_fallbacks,
                    ..StoredCounters::default()
                };
                (name.clone(), counters)
            })
            .collect();
        Self {
            since: String::new(),
            tiers,
            sources,
        }
    }

    fn minus(&self, earlier: &Self) -> Self {
        let sub = |now: &BTreeMap<String, StoredCounters>,
                   then: &BTreeMap<String, StoredCounters>| {
            now.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.minus(&then.get(k).copied().unwrap_or_default()),
                    )
                })
                .collect()
        };
        Self {
            since: String::new(),
            tiers: sub(&self.tiers, &earlier.tiers),
            sources: sub(&self.sources, &earlier.sources),
        }
    }

    fn add(&mut self, delta: &Self) {
        for (k, v) in &delta.tiers {
            self.tiers.entry(k.clone()).or_default().add(v);
        }
        for (k, v) in &delta.sources {
            self.sources.entry(k.clone()).or_default().add(v);
        }
    }
}

/// Held while a process updates the file; another process waits for it.
struct Lock(PathBuf);

impl Lock {
    fn take(file: &Path) -> std::io::Result<Self> {
        let mut name = file.as_os_str().to_owned();
        name.push(".lock");
        let path = PathBuf::from(name);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let mut options = fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(&path) {
                Ok(mut lock) => {
                    lock.write_all(LOCK_MARKER)?;
                    return Ok(Self(path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A lock left by a killed process is taken over; a
                    // file of that name that is not a lock is left alone.
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > Duration::from_secs(10));
                    if stale {
                        paths::check_replaceable(&path, "a tierstack lock file", is_lock_file)
                            .map_err(to_io)?;
                        let _ = fs::remove_file(&path);
                    } else if Instant::now() > deadline {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::WouldBlock,
                            format!("{} is held by another process", path.display()),
                        ));
                    } else {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Adds `delta` to the file at `path` (created with its directory if
/// missing), replacing it atomically. A file that is not a stats file is
/// refused, never replaced.
fn merge(path: &Path, delta: &StoredStats) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            paths::create_private_dir(dir).map_err(to_io)?;
        }
    }
    // Before the lock, so that a refused path gets no lock file either.
    check_path(path).map_err(to_io)?;
    let _lock = Lock::take(path)?;
    let mut totals = StoredStats::load(path)?;
    if totals.since.is_empty() {
        totals.since = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    }
    totals.add(delta);
    let document = Document {
        format: STATS_FORMAT,
        version: STATS_VERSION,
        stats: &totals,
    };
    let mut file = AtomicFile::create(path, STATS_KIND, is_stats_file).map_err(to_io)?;
    file.file()
        .write_all(&serde_json::to_vec_pretty(&document).map_err(std::io::Error::other)?)?;
    file.commit().map_err(to_io)
}

/// Where a cache writes its counters, and what it has written so far.
#[derive(Debug)]
pub(crate) struct StatsFile {
    path: PathBuf,
    flushed: std::sync::Mutex<StoredStats>,
}

impl StatsFile {
    pub(crate) fn new(path: PathBuf) -> Self {
        Self {
            path,
            flushed: std::sync::Mutex::new(StoredStats::default()),
        }
    }

    /// Adds what was counted since the last flush.
    pub(crate) fn flush(&self, now: &CacheStats) -> std::io::Result<()> {
        let now = StoredStats::from_cache(now);
        let mut flushed = self
            .flushed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        merge(&self.path, &now.minus(&flushed))?;
        *flushed = now;
        Ok(())
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl TieredCache {
    /// Adds the counters gathered since the last flush to the stats file
    /// (`stats_file` in the config, [`TieredCacheBuilder::stats_file`]);
    /// this also happens when the last clone of the cache is dropped.
    /// Without a stats file, does nothing.
    ///
    /// [`TieredCacheBuilder::stats_file`]: crate::TieredCacheBuilder::stats_file
    pub fn flush_stats(&self) -> std::io::Result<()> {
        match &self.inner.stats_file {
            Some(file) => file.flush(&self.stats()),
            None => Ok(()),
        }
    }

    /// The stats file, if the cache has one.
    pub fn stats_file(&self) -> Option<&Path> {
        self.inner.stats_file.as_ref().map(StatsFile::path)
    }
}
