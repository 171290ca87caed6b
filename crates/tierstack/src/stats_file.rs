//! Counters that outlive the process. A cache with a stats file adds what it
//! counted to that file when it is dropped (and on
//! [`TieredCache::flush_stats`]), so `tierstack stats` can show the hits and
//! misses of every process that used the cache, not only its own.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::{CacheStats, TieredCache};

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
}

impl StoredCounters {
    /// Hits over hits and misses; `None` before any lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        #[allow(clippy::cast_precision_loss)]
        (total > 0).then(|| self.hits as f64 / total as f64)
    }

    fn add(&mut self, other: &Self) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.errors += other.errors;
        self.decode_failures += other.decode_failures;
        self.writes += other.writes;
        self.write_errors += other.write_errors;
        self.fetches += other.fetches;
        self.fetch_errors += other.fetch_errors;
        self.stale_served += other.stale_served;
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
    /// Reads a stats file; a missing file is empty totals.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e),
        }
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
        let path = file.with_extension("lock");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(_) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // A lock left by a killed process is taken over.
                    let stale = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age > Duration::from_secs(10));
                    if stale {
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
/// missing), replacing it atomically.
fn merge(path: &Path, delta: &StoredStats) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            fs::create_dir_all(dir)?;
        }
    }
    let _lock = Lock::take(path)?;
    let mut totals = match StoredStats::load(path) {
        Ok(totals) => totals,
        // A damaged file starts over rather than blocking every process.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => StoredStats::default(),
        Err(e) => return Err(e),
    };
    if totals.since.is_empty() {
        totals.since = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    }
    totals.add(delta);
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(&serde_json::to_vec_pretty(&totals).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
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
