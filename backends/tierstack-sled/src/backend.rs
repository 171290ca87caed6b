use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tierstack_core::{
    Bytes, Capabilities, ClearScope, DecodeLimits, Entry, Error, ErrorKind, Header, Health, Key,
    Operation, Readiness, Result, ScanCursor, ScanPage, Tier, TierSize, TierStats, Timestamp,
    async_trait,
};

use crate::error::sled as fail;
use crate::{CAPABILITIES, Flush, SledConfig};

/// Header checks only: the cache applies its own size cap when decoding.
const STRUCTURE_ONLY: DecodeLimits = DecodeLimits {
    max_raw_len: u32::MAX,
};

/// The sled tier: entries in one tree per application schema version of a
/// sled database directory.
///
/// sled operations take about a microsecond and run inline. With
/// `flush: always`, a write returns after sled flushed it.
#[derive(Debug)]
pub struct SledTier {
    name: String,
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    schema_version: u32,
    max_ttl: Option<Duration>,
    flush: Flush,
    sweeper: Option<Sweeper>,
    expirations: Arc<AtomicU64>,
}

/// The background sweep thread; stopped and joined when the tier drops.
#[derive(Debug)]
struct Sweeper {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl SledTier {
    /// Opens (creating if needed) the database directory of `config`, for
    /// entries of application schema `schema_version`.
    pub fn open(config: &SledConfig, schema_version: u32) -> Result<Self> {
        let named = |e: Error| e.with_tier(config.name.as_str());
        let path = tierstack_core::paths::expand(&config.path)
            .map_err(|e| named(Error::config(e).with_operation(Operation::Build)))?;
        prepare_dir(&path).map_err(named)?;
        let mut sled_config = sled::Config::new()
            .path(&path)
            .cache_capacity(config.cache_size.unwrap_or(64 << 20));
        sled_config = match config.flush {
            Flush::Always => sled_config.flush_every_ms(None),
            Flush::Interval => sled_config.flush_every_ms(Some(
                config
                    .flush_every
                    .map_or(500, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            )),
        };
        let db = open_waiting_for_lock(&sled_config)
            .map_err(|e| named(fail(e, &path, Operation::Build)))?;
        let tree = db
            .open_tree(format!("entries_v{schema_version}"))
            .map_err(|e| named(fail(e, &path, Operation::Build)))?;
        let expirations = Arc::new(AtomicU64::new(0));
        let sweeper = config.sweep_every.map(|every| {
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (stop, tree, expirations) =
                    (Arc::clone(&stop), tree.clone(), Arc::clone(&expirations));
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::park_timeout(every);
                        if stop.load(Ordering::SeqCst) {
                            break;
                        }
                        match sweep(&tree) {
                            Ok(n) => {
                                expirations.fetch_add(n, Ordering::Relaxed);
                            }
                            Err(e) => tracing::warn!(error = %e, "sled sweep failed"),
                        }
                    }
                })
            };
            Sweeper { stop, thread }
        });
        Ok(Self {
            name: config.name.clone(),
            path,
            db,
            tree,
            schema_version,
            max_ttl: config.ttl,
            flush: config.flush,
            sweeper,
            expirations,
        })
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn failed(&self, e: sled::Error, op: Operation) -> Error {
        fail(e, &self.path, op).with_tier(self.name.as_str())
    }

    /// With `flush: always`, waits until sled flushed. sled's `flush_async`
    /// can hang under concurrent callers, so the synchronous flush runs on a
    /// blocking thread; concurrent flushes still share the disk writes.
    async fn flushed(&self, op: Operation) -> Result<()> {
        if self.flush != Flush::Always {
            return Ok(());
        }
        let tree = self.tree.clone();
        match tokio::task::spawn_blocking(move || tree.flush()).await {
            Ok(result) => result.map(drop).map_err(|e| self.failed(e, op)),
            Err(e) => Err(Error::new(ErrorKind::Other, "flush thread failed")
                .with_tier(self.name.as_str())
                .with_operation(op)
                .with_source(e)),
        }
    }

    /// Takes sled's value itself rather than a copy: an `IVec` is the
    /// value's own reference-counted buffer (sled copies on write when it
    /// is shared), so the entry keeps exactly its bytes alive.
    /// One entry, read from the tree on the calling thread, for both `get`
    /// and `get_ready`.
    fn read_entry(&self, key: &Key) -> Result<Option<Entry>> {
        let found = self
            .tree
            .get(key.as_str())
            .map_err(|e| self.failed(e, Operation::Get))?;
        match found {
            Some(bytes) => self.decode(key.as_str(), bytes, Timestamp::now()),
            None => Ok(None),
        }
    }

    fn decode(&self, key: &str, bytes: sled::IVec, now: Timestamp) -> Result<Option<Entry>> {
        let entry = Entry::from_bytes(Bytes::from_owner(bytes), STRUCTURE_ONLY).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("entry {key} in {} is damaged", self.path.display()),
            )
            .with_tier(self.name.as_str())
            .with_operation(Operation::Get)
            .with_source(e)
        })?;
        // Dead entries are never served; the sweep removes them.
        Ok(entry.header.is_retained(now).then_some(entry))
    }

    fn remove_where(&self, mut doomed: impl FnMut(&str, &[u8]) -> bool) -> Result<u64> {
        let mut removed = 0;
        for item in &self.tree {
            let (k, v) = item.map_err(|e| self.failed(e, Operation::Clear))?;
            let key = String::from_utf8_lossy(&k);
            if doomed(&key, &v)
                && self
                    .tree
                    .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)
                    .map_err(|e| self.failed(e, Operation::Clear))?
                    .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A path for sled must be a directory sled owns: missing (created 0700),
/// empty, or holding sled's `db` file.
fn prepare_dir(path: &Path) -> Result<()> {
    use tierstack_core::paths::{create_private_dir, io_error, refuse};
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(refuse(
            path,
            "it is a symbolic link; point the config at the real directory",
        )),
        Ok(meta) if !meta.is_dir() => {
            Err(refuse(path, "sled needs a directory, and this is a file"))
        }
        Ok(_) => {
            let mut names =
                std::fs::read_dir(path).map_err(|e| io_error(e, path, "cannot read"))?;
            let empty = names.next().is_none();
            if empty || path.join("db").is_file() {
                Ok(())
            } else {
                Err(refuse(
                    path,
                    "the directory holds files that are not a sled database (left untouched)",
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_private_dir(path),
        Err(e) => Err(io_error(e, path, "cannot inspect")),
    }
}

/// Removes dead entries (past their stale window) from a tree.
fn sweep(tree: &sled::Tree) -> sled::Result<u64> {
    let now = Timestamp::now();
    let mut removed = 0;
    for item in tree {
        let (k, v) = item?;
        let dead = tierstack_core::envelope::keep_until(&v).is_none_or(|until| until <= now);
        if dead
            && tree
                .compare_and_swap(&k, Some(&v), None as Option<&[u8]>)?
                .is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

/// How long `open` waits for a lock that a handle closed a moment ago may
/// still hold: sled's I/O threads finish after the handle is dropped.
const LOCK_GRACE: Duration = Duration::from_secs(1);

/// Opens sled; while the lock is held, tries again until [`LOCK_GRACE`] has
/// passed (another process keeps it for good and gets the error then).
fn open_waiting_for_lock(config: &sled::Config) -> sled::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match config.open() {
            Err(e) if crate::error::is_locked(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl Drop for SledTier {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.take() {
            sweeper.stop.store(true, Ordering::SeqCst);
            sweeper.thread.thread().unpark();
            let _ = sweeper.thread.join();
        }
        // Writes acknowledged under `flush: interval` reach the disk on close.
        if let Err(e) = self.db.flush() {
            tracing::warn!(path = %self.path.display(), error = %e, "final flush failed");
        }
    }
}

#[async_trait]
impl Tier for SledTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema_version(&self) -> Option<u32> {
        Some(self.schema_version)
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn max_ttl(&self) -> Option<Duration> {
        self.max_ttl
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        self.read_entry(key)
    }

    fn get_ready(&self, key: &Key, read: &mut dyn FnMut(Option<&Entry>)) -> Readiness {
        Readiness::lend(self.read_entry(key), read)
    }

    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        self.tree
            .insert(key.as_str(), entry.to_vec())
            .map_err(|e| self.failed(e, Operation::Set))?;
        self.flushed(Operation::Set).await
    }

    /// One atomic sled batch.
    async fn set_many(&self, entries: Vec<(Key, Entry)>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (key, entry) in &entries {
            batch.insert(key.as_str(), entry.to_vec());
        }
        self.tree
            .apply_batch(batch)
            .map_err(|e| self.failed(e, Operation::SetMany))?;
        self.flushed(Operation::SetMany).await
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        let removed = self
            .tree
            .remove(key.as_str())
            .map_err(|e| self.failed(e, Operation::Delete))?
            .is_some();
        self.flushed(Operation::Delete).await?;
        Ok(removed)
    }

    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        let now = Timestamp::now();
        let removed = match scope {
            ClearScope::Source(source) => {
                self.remove_where(|k, _| Key::parse(k).is_ok_and(|key| key.source() == source))?
            }
            ClearScope::Expired => self.remove_where(|_, v| {
                Header::parse(v, STRUCTURE_ONLY).map_or(true, |h| !h.is_fresh(now))
            })?,
            _ => self.remove_where(|_, _| true)?,
        };
        self.flushed(Operation::Clear).await?;
        Ok(removed)
    }

    async fn purge(&self) -> Result<u64> {
        let removed = sweep(&self.tree).map_err(|e| self.failed(e, Operation::Clear))?;
        self.expirations.fetch_add(removed, Ordering::Relaxed);
        self.flushed(Operation::Clear).await?;
        Ok(removed)
    }

    /// Entries and stored bytes of this namespace (a walk of the tree; sled's
    /// own `size_on_disk` counts its log, several times larger).
    async fn size(&self) -> Result<TierSize> {
        let mut size = TierSize::default();
        for item in &self.tree {
            let (k, v) = item.map_err(|e| self.failed(e, Operation::Len))?;
            size.entries += 1;
            size.bytes += (k.len() + v.len()) as u64;
        }
        Ok(size)
    }

    async fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage> {
        let now = Timestamp::now();
        let limit = limit.max(1);
        let range = match cursor {
            Some(after) => self.tree.range((
                std::ops::Bound::Excluded(after.0),
                std::ops::Bound::Unbounded,
            )),
            None => self.tree.range::<&[u8], _>(..),
        };
        let mut items = Vec::with_capacity(limit + 1);
        for item in range.take(limit + 1) {
            items.push(item.map_err(|e| self.failed(e, Operation::Scan))?);
        }
        let next = (items.len() > limit).then(|| ScanCursor(items[limit - 1].0.to_vec()));
        items.truncate(limit);
        let mut entries = Vec::with_capacity(items.len());
        for (k, v) in items {
            let text = String::from_utf8_lossy(&k);
            match (Key::parse(&text), self.decode(&text, v, now)) {
                (Ok(key), Ok(Some(entry))) => entries.push((key, entry)),
                (Ok(_), Ok(None)) => {}
                _ => tracing::debug!(key = %text, "scan skipped an unreadable entry"),
            }
        }
        Ok(ScanPage { entries, next })
    }

    fn stats(&self) -> TierStats {
        TierStats {
            evictions: 0,
            expirations: self.expirations.load(Ordering::Relaxed),
            ..TierStats::default()
        }
    }

    async fn health(&self) -> Health {
        match self.tree.get(b"\0health") {
            Ok(_) => Health::Healthy,
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
