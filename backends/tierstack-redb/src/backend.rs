use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use redb::{Database, Durability, ReadableDatabase as _, ReadableTableMetadata};
use tierstack_core::{
    Bytes, Capabilities, ClearScope, Entry, Error, ErrorKind, Health, Key, Operation, Readiness,
    Result, ScanCursor, ScanPage, Tier, TierSize, TierStats, Timestamp, async_trait,
};

use crate::error::redb as fail;
use crate::writer::{Counters, META, STRUCTURE_ONLY, Tables, Writer};
use crate::{CAPABILITIES, RedbConfig, RedbDurability};
use tierstack_core::group_commit::GroupCommit;

/// The redb tier: entries in one crash-safe file, with an index by end of
/// life for purging and the byte cap.
///
/// Reads run inline (MVCC snapshots, no lock); writes go to a group-commit
/// writer thread and return once committed. One process at a time: a second
/// process gets an error saying the file is locked.
#[derive(Debug)]
pub struct RedbTier {
    name: String,
    path: PathBuf,
    db: Arc<Database>,
    tables: Tables,
    schema_version: u32,
    max_ttl: Option<Duration>,
    writer: GroupCommit,
    counters: Arc<Counters>,
}

impl RedbTier {
    /// Opens (creating if needed) the database of `config`, for entries of
    /// application schema `schema_version`. Runs on a blocking thread.
    pub async fn open(config: &RedbConfig, schema_version: u32) -> Result<Self> {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(&config, schema_version))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Other, "opening the database panicked").with_source(e)
            })?
    }

    /// [`RedbTier::open`] for callers outside an async context.
    pub fn open_blocking(config: &RedbConfig, schema_version: u32) -> Result<Self> {
        let named = |e: Error| e.with_tier(config.name.as_str());
        let path = tierstack_core::paths::expand(&config.path)
            .map_err(|e| named(Error::config(e).with_operation(Operation::Build)))?;
        if config.max_batch == 0 {
            return Err(named(Error::config("max_batch must be at least 1")));
        }
        tierstack_core::paths::prepare_file(&path, b"redb", "redb").map_err(named)?;
        let cache_size =
            usize::try_from(config.cache_size.unwrap_or(64 << 20)).unwrap_or(usize::MAX);
        let db = Database::builder()
            .set_cache_size(cache_size)
            .create(&path)
            .map_err(|e| named(fail(e, &path, Operation::Build)))?;
        let db = Arc::new(db);
        let tables = Tables::new(schema_version);
        // Create the tables so that readers never meet a missing one.
        let create = || -> std::result::Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(tables.entries())?;
            txn.open_table(tables.expiry())?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        };
        create().map_err(|e| named(fail(e, &path, Operation::Build)))?;

        let counters = Arc::new(Counters::default());
        let writer = Writer {
            db: Arc::clone(&db),
            path: path.clone(),
            tables: tables.clone(),
            durability: match config.durability {
                RedbDurability::Immediate => Durability::Immediate,
                RedbDurability::None => Durability::None,
            },
            max_size: config.max_size,
            counters: Arc::clone(&counters),
        };
        let writer = GroupCommit::spawn(
            &config.name,
            path.display().to_string(),
            writer,
            config.max_batch,
        )
        .map_err(|e| {
            named(tierstack_core::paths::io_error(
                e,
                &path,
                "cannot start the writer thread for",
            ))
        })?;
        Ok(Self {
            name: config.name.clone(),
            path,
            db,
            tables,
            schema_version,
            max_ttl: config.ttl,
            writer,
            counters,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write transactions committed so far.
    pub fn transactions(&self) -> u64 {
        self.counters.transactions.load(Ordering::Relaxed)
    }

    fn failed(&self, e: impl Into<redb::Error>, op: Operation) -> Error {
        fail(e, &self.path, op).with_tier(self.name.as_str())
    }

    fn decode(&self, key: &str, bytes: &[u8], now: Timestamp) -> Result<Option<Entry>> {
        let entry =
            Entry::from_bytes(Bytes::copy_from_slice(bytes), STRUCTURE_ONLY).map_err(|e| {
                Error::new(
                    ErrorKind::Corrupt,
                    format!("entry {key} in {} is damaged", self.path.display()),
                )
                .with_tier(self.name.as_str())
                .with_operation(Operation::Get)
                .with_source(e)
            })?;
        // Dead entries wait for a purge; they are never served.
        Ok(entry.header.is_retained(now).then_some(entry))
    }

    /// Runs `read` on the entries table in one read transaction.
    fn reading<T>(
        &self,
        op: Operation,
        read: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> Result<T>,
    ) -> Result<T> {
        let txn = self.db.begin_read().map_err(|e| self.failed(e, op))?;
        let table = txn
            .open_table(self.tables.entries())
            .map_err(|e| self.failed(e, op))?;
        read(&table)
    }

    /// One entry, read in its own read transaction on the calling thread,
    /// for both `get` and `get_ready`.
    fn read_entry(&self, key: &Key) -> Result<Option<Entry>> {
        let now = Timestamp::now();
        self.reading(Operation::Get, |table| {
            self.read_one(table, key, Operation::Get, now)
        })
    }

    fn read_one(
        &self,
        table: &redb::ReadOnlyTable<&'static str, &'static [u8]>,
        key: &Key,
        op: Operation,
        now: Timestamp,
    ) -> Result<Option<Entry>> {
        match table.get(key.as_str()).map_err(|e| self.failed(e, op))? {
            Some(bytes) => self.decode(key.as_str(), bytes.value(), now),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl Tier for RedbTier {
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

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let now = Timestamp::now();
        self.reading(Operation::GetMany, |table| {
            keys.iter()
                .map(|key| self.read_one(table, key, Operation::GetMany, now))
                .collect()
        })
    }

    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        self.writer.set(key, entry).await
    }

    async fn set_many(&self, entries: Vec<(Key, Entry)>) -> Result<()> {
        self.writer.set_many(entries).await
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        self.writer.delete(key).await
    }

    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        self.writer.clear(scope).await
    }

    async fn purge(&self) -> Result<u64> {
        self.writer.purge().await
    }

    async fn size(&self) -> Result<TierSize> {
        let op = Operation::Len;
        let txn = self.db.begin_read().map_err(|e| self.failed(e, op))?;
        let entries = txn
            .open_table(self.tables.entries())
            .map_err(|e| self.failed(e, op))?;
        let meta = txn.open_table(META).map_err(|e| self.failed(e, op))?;
        let bytes = meta
            .get(self.tables.bytes_key.as_str())
            .map_err(|e| self.failed(e, op))?
            .map_or(0, |g| g.value());
        Ok(TierSize {
            entries: entries.len().map_err(|e| self.failed(e, op))?,
            bytes,
        })
    }

    /// Pages in key order from a snapshot per page; the cursor is the last
    /// key of the previous page.
    async fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage> {
        let op = Operation::Scan;
        let now = Timestamp::now();
        let after = cursor.map(|c| String::from_utf8_lossy(&c.0).into_owned());
        let txn = self.db.begin_read().map_err(|e| self.failed(e, op))?;
        let table = txn
            .open_table(self.tables.entries())
            .map_err(|e| self.failed(e, op))?;
        let range = match &after {
            Some(a) => table.range::<&str>((
                std::ops::Bound::Excluded(a.as_str()),
                std::ops::Bound::Unbounded,
            )),
            None => table.range::<&str>(..),
        }
        .map_err(|e| self.failed(e, op))?;
        // One item past the page says whether another page follows.
        let limit = limit.max(1);
        let mut items = Vec::with_capacity(limit + 1);
        for item in range.take(limit + 1) {
            let (k, v) = item.map_err(|e| self.failed(e, op))?;
            items.push((k.value().to_owned(), v.value().to_vec()));
        }
        let next =
            (items.len() > limit).then(|| ScanCursor(items[limit - 1].0.clone().into_bytes()));
        items.truncate(limit);
        let mut entries = Vec::with_capacity(items.len());
        for (text, bytes) in items {
            match (Key::parse(&text), self.decode(&text, &bytes, now)) {
                (Ok(key), Ok(Some(entry))) => entries.push((key, entry)),
                (Ok(_), Ok(None)) => {}
                _ => tracing::debug!(key = text, "scan skipped an unreadable entry"),
            }
        }
        Ok(ScanPage { entries, next })
    }

    fn stats(&self) -> TierStats {
        TierStats {
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expirations: self.counters.expirations.load(Ordering::Relaxed),
            ..TierStats::default()
        }
    }

    async fn health(&self) -> Health {
        if !self.writer.is_running() {
            return Health::Unhealthy(format!("the writer of {} has stopped", self.path.display()));
        }
        match self.db.begin_read() {
            Ok(_) => Health::Healthy,
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
