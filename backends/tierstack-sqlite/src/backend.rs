use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};
use tierstack_core::{
    Capabilities, ClearScope, Compacted, Coordinator, Entry, Error, ErrorKind, Health, Key,
    Operation, Readiness, Result, ScanCursor, ScanPage, Tier, TierSize, TierStats, Timestamp,
    async_trait,
};

use crate::coordinator::SqliteCoordinator;
use crate::error::sqlite;
use crate::schema::{self, millis};
use crate::writer::{Counters, Touched, Writer};
use crate::{CAPABILITIES, SqliteConfig};
use tierstack_core::group_commit::GroupCommit;

/// Read connections kept for reuse; more are opened under load and closed
/// when returned to a full pool.
const MAX_IDLE_READERS: usize = 8;
/// A stored row as an entry, or why it could not be one.
type Row = std::result::Result<Entry, tierstack_core::DecodeError>;

/// The smallest accepted byte cap.
const MIN_MAX_SIZE: u64 = 64 * 1024;

/// The SQLite tier: the RFC's `metadata_cache` table in one database file,
/// shared safely by every process that opens it.
///
/// Reads run inline on the calling task (a point read costs microseconds,
/// less than a hop to a blocking thread); writes are committed in place when
/// the writer is idle and go to a group-commit writer thread under load, and
/// return once committed.
#[derive(Debug)]
pub struct SqliteTier {
    name: String,
    path: PathBuf,
    namespace: u32,
    max_ttl: Option<Duration>,
    busy_timeout: Duration,
    synchronous: &'static str,
    readers: Mutex<Vec<Connection>>,
    /// Leases, rate buckets and circuits in the `tierstack_*` tables, on a
    /// connection of its own (opened at its first call).
    coordinator: Arc<SqliteCoordinator>,
    /// Declared after `readers` and `coordinator`, so it is dropped last: the writer closes
    /// (and checkpoints) when no reader holds the file any more.
    writer: GroupCommit,
    touched: Arc<Touched>,
    counters: Arc<Counters>,
}

impl SqliteTier {
    /// Opens (creating if needed) the database of `config`, for entries of
    /// application schema `schema_version`. Runs on a blocking thread.
    pub async fn open(config: &SqliteConfig, schema_version: u32) -> Result<Self> {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(&config, schema_version))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Other, "opening the database panicked").with_source(e)
            })?
    }

    /// [`SqliteTier::open`] for callers outside an async context.
    pub fn open_blocking(config: &SqliteConfig, schema_version: u32) -> Result<Self> {
        let path = tierstack_core::paths::expand(&config.path).map_err(|e| {
            Error::config(e)
                .with_tier(config.name.as_str())
                .with_operation(Operation::Build)
        })?;
        if config.max_batch == 0 {
            return Err(
                Error::config("max_batch must be at least 1").with_tier(config.name.as_str())
            );
        }
        if let Some(cap) = config.max_size.filter(|&cap| cap < MIN_MAX_SIZE) {
            return Err(Error::config(format!(
                "max_size {cap} bytes is below the smallest cap of 64KiB (a database file with its table takes a few pages of 4 KiB)"
            ))
            .with_tier(config.name.as_str()));
        }
        let busy_timeout = config.busy_timeout.unwrap_or(Duration::from_secs(5));
        let synchronous = config.synchronous.pragma();
        let named = |e: Error| e.with_tier(config.name.as_str());
        schema::prepare_file(&path).map_err(named)?;
        schema::check_owner(&path).map_err(named)?;
        let mut conn = schema::connect(&path, busy_timeout, synchronous).map_err(named)?;
        schema::migrate(&mut conn, &path, schema_version).map_err(named)?;

        let touched = Arc::new(Touched::default());
        let counters = Arc::new(Counters::default());
        let writer = Writer {
            conn,
            busy_timeout,
            commits_in_place: !matches!(config.synchronous, crate::config::Synchronous::Full),
            path: path.clone(),
            namespace: schema_version,
            max_size: config.max_size,
            touched: Arc::clone(&touched),
            cap_check: crate::writer::CapCheck::default(),
            counters: Arc::clone(&counters),
        };
        let writer = GroupCommit::spawn(
            &config.name,
            path.display().to_string(),
            writer,
            config.max_batch,
        )
        .map_err(|e| {
            named(crate::error::io(
                e,
                &path,
                "cannot start the writer thread for",
            ))
        })?;
        let coordinator = Arc::new(SqliteCoordinator::new(
            config.name.clone(),
            path.clone(),
            schema_version,
            busy_timeout,
            synchronous,
        ));
        Ok(Self {
            name: config.name.clone(),
            path,
            namespace: schema_version,
            max_ttl: config.ttl,
            busy_timeout,
            synchronous,
            readers: Mutex::new(Vec::new()),
            coordinator,
            writer,
            touched,
            counters,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Transactions committed by the writer so far (group commit packs many
    /// writes into one).
    pub fn transactions(&self) -> u64 {
        self.counters.transactions.load(Ordering::Relaxed)
    }

    fn fail(&self, e: rusqlite::Error, op: Operation) -> Error {
        sqlite(e, &self.path, op).with_tier(self.name.as_str())
    }

    /// Runs `f` on a pooled read connection.
    fn read<T>(
        &self,
        op: Operation,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let conn = if let Some(conn) = pooled {
            conn
        } else {
            let conn = schema::connect(&self.path, self.busy_timeout, self.synchronous)
                .map_err(|e| e.with_tier(self.name.as_str()))?;
            conn.pragma_update(None, "query_only", true)
                .map_err(|e| self.fail(e, op))?;
            conn
        };
        let result = f(&conn).map_err(|e| self.fail(e, op));
        let mut pool = self
            .readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        result
    }

    fn touch(&self, key: &Key) {
        if self.touched.record(key) {
            self.writer.wake();
        }
    }

    /// The row of `key`, rebuilt into an entry while SQLite still holds it,
    /// so that its bytes are copied once.
    fn lookup(&self, conn: &Connection, key: &Key, now: i64) -> rusqlite::Result<Option<Row>> {
        conn.prepare_cached(
            "SELECT header, data FROM metadata_cache \
             WHERE cache_key = ?1 AND schema_version = ?2 AND retain_ms > ?3",
        )?
        .query_row(params![key.as_str(), self.namespace, now], |row| {
            Ok(schema::entry_from_row(
                row.get_ref(0)?.as_bytes()?,
                row.get_ref(1)?.as_bytes()?,
            ))
        })
        .optional()
    }

    /// One entry, read on the calling thread from a pooled connection (WAL
    /// readers wait for no writer), for both `get` and `get_ready`.
    fn read_entry(&self, key: &Key) -> Result<Option<Entry>> {
        let now = millis(Timestamp::now());
        let row = self.read(Operation::Get, |conn| self.lookup(conn, key, now))?;
        let Some(row) = row else {
            return Ok(None);
        };
        self.touch(key);
        self.to_entry(key, row).map(Some)
    }

    fn to_entry(&self, key: &Key, row: Row) -> Result<Entry> {
        row.map_err(|e| {
            Error::new(
                ErrorKind::Corrupt,
                format!("row {key} in {} is damaged", self.path.display()),
            )
            .with_tier(self.name.as_str())
            .with_operation(Operation::Get)
            .with_source(e)
        })
    }
}

#[async_trait]
impl Tier for SqliteTier {
    fn name(&self) -> &str {
        &self.name
    }

    fn schema_version(&self) -> Option<u32> {
        Some(self.namespace)
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
        let now = millis(Timestamp::now());
        let rows = self.read(Operation::GetMany, |conn| {
            // One read transaction: every answer comes from the same snapshot.
            conn.execute_batch("BEGIN")?;
            let rows: rusqlite::Result<Vec<_>> =
                keys.iter().map(|k| self.lookup(conn, k, now)).collect();
            conn.execute_batch("COMMIT")?;
            rows
        })?;
        keys.iter()
            .zip(rows)
            .map(|(key, row)| match row {
                Some(row) => {
                    self.touch(key);
                    self.to_entry(key, row).map(Some)
                }
                None => Ok(None),
            })
            .collect()
    }

    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        self.writer.set(key, entry).await
    }

    async fn renew(&self, key: &Key, entry: Entry) -> Result<()> {
        self.writer.renew(key, entry).await
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

    /// The entries a reader can still get (dead rows, which wait for a
    /// purge, are not counted), so that sizes agree with what a scan and an
    /// export see.
    async fn size(&self) -> Result<TierSize> {
        let now = millis(Timestamp::now());
        let (entries, bytes): (i64, i64) = self.read(Operation::Len, |conn| {
            conn.prepare_cached(
                "SELECT count(*), coalesce(sum(size), 0) FROM metadata_cache \
                 WHERE schema_version = ?1 AND retain_ms > ?2",
            )?
            .query_row(params![self.namespace, now], |r| Ok((r.get(0)?, r.get(1)?)))
        })?;
        Ok(TierSize {
            entries: u64::try_from(entries).unwrap_or(0),
            bytes: u64::try_from(bytes).unwrap_or(0),
        })
    }

    /// Pages in key order; the cursor is the last key of the previous page,
    /// so a scan holds no lock between pages and never loads the table.
    async fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage> {
        let after = cursor
            .map(|c| String::from_utf8_lossy(&c.0).into_owned())
            .unwrap_or_default();
        let now = millis(Timestamp::now());
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let rows: Vec<(String, Vec<u8>, Vec<u8>)> = self.read(Operation::Scan, |conn| {
            conn.prepare_cached(
                "SELECT cache_key, header, data FROM metadata_cache \
                 WHERE schema_version = ?1 AND retain_ms > ?2 AND cache_key > ?3 \
                 ORDER BY cache_key LIMIT ?4",
            )?
            .query_map(params![self.namespace, now, after, limit], |r| {
                Ok((
                    r.get(0)?,
                    r.get_ref(1)?.as_bytes()?.to_vec(),
                    r.get_ref(2)?.as_bytes()?.to_vec(),
                ))
            })?
            .collect()
        })?;
        let full = rows.len() as i64 == limit;
        let next = if full {
            rows.last()
                .map(|(k, _, _)| ScanCursor(k.clone().into_bytes()))
        } else {
            None
        };
        let mut entries = Vec::with_capacity(rows.len());
        for (text, header, data) in rows {
            match (Key::parse(&text), schema::entry_from_row(&header, &data)) {
                (Ok(key), Ok(entry)) => entries.push((key, entry)),
                (key, entry) => tracing::debug!(
                    key = text,
                    key_ok = key.is_ok(),
                    entry_ok = entry.is_ok(),
                    "scan skipped an unreadable row"
                ),
            }
        }
        Ok(ScanPage { entries, next })
    }

    /// `VACUUM` on a connection of its own, after turning on incremental
    /// auto-vacuum (a file created by an earlier release may have it off,
    /// and only a `VACUUM` can turn it on).
    async fn compact(&self) -> Result<Option<Compacted>> {
        let path = self.path.clone();
        let busy_timeout = self.busy_timeout;
        let synchronous = self.synchronous;
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || {
            let fail = |e| sqlite(e, &path, Operation::Compact).with_tier(name.as_str());
            let conn = schema::connect(&path, busy_timeout, synchronous)
                .map_err(|e| e.with_tier(name.as_str()))?;
            let bytes = |conn: &Connection| -> rusqlite::Result<u64> {
                let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
                let size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
                Ok(u64::try_from(pages * size).unwrap_or(0))
            };
            let bytes_before = bytes(&conn).map_err(fail)?;
            conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
                .map_err(fail)?;
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                tracing::debug!(path = %path.display(), error = %e, "checkpoint skipped");
            }
            let bytes_after = bytes(&conn).map_err(fail)?;
            Ok(Some(Compacted {
                bytes_before,
                bytes_after,
            }))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Other, "compacting panicked").with_source(e))?
    }

    fn stats(&self) -> TierStats {
        TierStats {
            evictions: self.counters.evictions.load(Ordering::Relaxed),
            expirations: self.counters.expirations.load(Ordering::Relaxed),
            ..TierStats::default()
        }
    }

    /// Leases, the shared rate budget and circuits for the processes that
    /// share this file (see the crate docs).
    fn coordinator(&self) -> Option<Arc<dyn Coordinator>> {
        Some(Arc::clone(&self.coordinator) as Arc<dyn Coordinator>)
    }

    async fn health(&self) -> Health {
        if !self.writer.is_running() {
            return Health::Unhealthy(format!("the writer of {} has stopped", self.path.display()));
        }
        match self.read(Operation::Health, |conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
        }) {
            Ok(()) => Health::Healthy,
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }
}
