//! The SQLite side of group commit: the write connection, applying queued
//! requests in one `BEGIN IMMEDIATE` transaction (see
//! `tierstack_core::group_commit`), retrying while other processes hold the
//! write lock, and keeping the byte cap.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior, params};
use tierstack_core::group_commit::{CommitStore, WriteOp};
use tierstack_core::{ClearScope, Error, Key, Operation, Timestamp};

use crate::error::{is_busy, sqlite};
use crate::schema::{self, RENEW, UPSERT, millis, upsert};

/// How long a transaction keeps retrying while other processes hold the
/// write lock, on top of SQLite's own busy timeout.
const BUSY_RETRY_FOR: Duration = Duration::from_secs(60);
/// Fewest rows evicted at once when over the byte cap.
const MIN_EVICT: i64 = 8;

/// Keys read since the last commit, for least-recently-used eviction. Kept
/// approximately: when the buffer is full, further reads are not recorded.
#[derive(Debug, Default)]
pub(crate) struct Touched(std::sync::Mutex<Vec<Key>>);

pub(crate) const TOUCH_BUFFER: usize = 4096;

impl Touched {
    /// Records a read; returns true when the buffer just became full.
    pub(crate) fn record(&self, key: &Key) -> bool {
        let mut keys = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.len() >= TOUCH_BUFFER {
            return false;
        }
        // A clone is a refcount; a copy of the text was an allocation per read.
        keys.push(key.clone());
        keys.len() == TOUCH_BUFFER
    }

    /// Puts back a read taken for a commit that did not happen.
    fn record_again(&self, key: Key) {
        let mut keys = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if keys.len() < TOUCH_BUFFER {
            keys.push(key);
        }
    }

    fn take(&self) -> Vec<Key> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) evictions: AtomicU64,
    pub(crate) expirations: AtomicU64,
    pub(crate) transactions: AtomicU64,
}

/// When to read the file's size for the byte cap. Reading it costs a read
/// of the database state per commit, so it is read only when this
/// process's writes since the last reading could have reached the cap, and
/// at least every [`CAP_CHECK_EVERY`] commits for what other processes
/// write.
#[derive(Debug)]
pub(crate) struct CapCheck {
    /// Bytes in use at the last reading.
    used: u64,
    /// Upper estimate of what this process's commits added since.
    written: u64,
    /// Commits since the last reading.
    commits: u32,
}

/// Most commits between two readings of the file's size.
const CAP_CHECK_EVERY: u32 = 64;

impl Default for CapCheck {
    /// Unknown: read at the next commit.
    fn default() -> Self {
        Self {
            used: 0,
            written: 0,
            commits: CAP_CHECK_EVERY,
        }
    }
}

impl CapCheck {
    fn due(&mut self, cap: u64) -> bool {
        self.commits = self.commits.saturating_add(1);
        // A row can take about twice its bytes in pages (page splits leave
        // pages half full, and the primary key's index repeats the key).
        self.commits > CAP_CHECK_EVERY || self.used.saturating_add(self.written * 2) > cap
    }

    fn measured(&mut self, used: u64) {
        *self = Self {
            used,
            written: 0,
            commits: 0,
        };
    }
}

/// An upper estimate of the bytes `requests` add to the table.
fn written_bytes(requests: &[&[WriteOp]]) -> u64 {
    requests
        .iter()
        .flat_map(|ops| ops.iter())
        .map(|op| match op {
            // The entry, the key twice (row and index), the source, both
            // time texts and the integer columns.
            // A renewal that finds another body writes the entry whole.
            WriteOp::Put(key, entry) | WriteOp::Renew(key, entry) => {
                (entry.encoded_len() + 2 * key.as_str().len() + key.source().len() + 128) as u64
            }
            WriteOp::Delete(_) => 0,
        })
        .sum()
}

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    /// SQLite's wait for another process's write lock, restored after an
    /// in-place commit that did not wait.
    pub(crate) busy_timeout: Duration,
    /// Whether a commit is cheap enough to run on the caller's thread: not
    /// with `synchronous = FULL`, where each commit waits for the disk.
    pub(crate) commits_in_place: bool,
    pub(crate) path: PathBuf,
    pub(crate) namespace: u32,
    pub(crate) max_size: Option<u64>,
    pub(crate) touched: Arc<Touched>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) cap_check: CapCheck,
}

impl Writer {
    fn fail(&self, e: rusqlite::Error, op: Operation) -> Error {
        sqlite(e, &self.path, op)
    }

    /// Runs the write requests in one IMMEDIATE transaction, retrying while
    /// another process holds the lock. Returns the delete count per request.
    fn transaction(
        &mut self,
        requests: &[&[WriteOp]],
        touched: &[Key],
    ) -> rusqlite::Result<Vec<u64>> {
        retry_busy(|| self.transaction_once(requests, touched))
    }

    /// One attempt of [`Writer::transaction`].
    fn transaction_once(
        &mut self,
        requests: &[&[WriteOp]],
        touched: &[Key],
    ) -> rusqlite::Result<Vec<u64>> {
        let namespace = self.namespace;
        let conn = &self.conn;
        let now = Timestamp::now();
        // `BEGIN IMMEDIATE` and `COMMIT` as cached statements: rusqlite's
        // `Transaction` parses both again on every commit, which showed in
        // the profile of a single `set`.
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        let result = (|| {
            let counts = apply(conn, requests, namespace, now)?;
            if !touched.is_empty() {
                let mut touch = conn.prepare_cached(
                    "UPDATE metadata_cache SET last_access = ?1 WHERE cache_key = ?2 AND schema_version = ?3",
                )?;
                for key in touched {
                    touch.execute(params![millis(now), key.as_str(), namespace])?;
                }
            }
            conn.prepare_cached("COMMIT")?.execute([])?;
            Ok(counts)
        })();
        match &result {
            Ok(_) => {
                self.counters.transactions.fetch_add(1, Ordering::Relaxed);
                self.cap_check.written += written_bytes(requests);
            }
            Err(_) if !conn.is_autocommit() => {
                if let Err(e) = conn.execute_batch("ROLLBACK") {
                    tracing::warn!(path = %self.path.display(), error = %e, "rollback failed");
                }
            }
            Err(_) => {}
        }
        result
    }

    fn clear_scope(&mut self, scope: &ClearScope) -> rusqlite::Result<u64> {
        let namespace = self.namespace;
        let now = millis(Timestamp::now());
        let removed = retry_busy(|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = match scope {
                ClearScope::Source(source) => tx.execute(
                    "DELETE FROM metadata_cache WHERE schema_version = ?1 AND source = ?2",
                    params![namespace, source],
                )?,
                ClearScope::Expired => tx.execute(
                    "DELETE FROM metadata_cache WHERE schema_version = ?1 AND expires_ms <= ?2",
                    params![namespace, now],
                )?,
                // `ClearScope::All` and any scope added later: the whole namespace.
                _ => tx.execute(
                    "DELETE FROM metadata_cache WHERE schema_version = ?1",
                    params![namespace],
                )?,
            };
            tx.commit()?;
            Ok(n as u64)
        })?;
        self.vacuum();
        Ok(removed)
    }

    /// Removes dead rows of every namespace (past their retention: no
    /// reader can use them) and dead coordination rows, returns space to the
    /// file system and truncates the WAL.
    fn purge_dead(&mut self) -> rusqlite::Result<u64> {
        let now = millis(Timestamp::now());
        let removed = retry_busy(|| {
            self.conn.execute(
                "DELETE FROM metadata_cache WHERE retain_ms <= ?1",
                params![now],
            )
        })? as u64;
        self.counters
            .expirations
            .fetch_add(removed, Ordering::Relaxed);
        // Coordination rows are not entries (not counted), and a failure to
        // drop them (a reserved table of another shape) must not fail the
        // purge of the entries.
        match retry_busy(|| crate::coordinator::purge_coordination(&self.conn)) {
            Ok(dropped) => {
                tracing::debug!(path = %self.path.display(), dropped, "dropped dead coordination rows");
            }
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "coordination rows not purged");
            }
        }
        self.vacuum();
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::debug!(path = %self.path.display(), error = %e, "checkpoint skipped");
        }
        Ok(removed)
    }

    /// Gives free pages back to the file system. SQLite frees one page per
    /// step of `incremental_vacuum`, so the statement is stepped to its end
    /// (`execute_batch` steps once: one page).
    fn vacuum(&self) {
        let result = (|| -> rusqlite::Result<()> {
            let mut stmt = self.conn.prepare_cached("PRAGMA incremental_vacuum")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
            Ok(())
        })();
        if let Err(e) = result {
            tracing::debug!(path = %self.path.display(), error = %e, "incremental vacuum skipped");
        }
    }

    /// Bytes in use by pages, in one statement (one read of the file's
    /// state instead of three `PRAGMA` round trips).
    fn used_bytes(&self) -> rusqlite::Result<u64> {
        let (pages, free, size): (i64, i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT * FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            )?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(u64::try_from((pages - free) * size).unwrap_or(0))
    }

    /// Past the cap: drop dead rows, then the least recently used, down to
    /// 90% of the cap so that eviction does not run on every write.
    fn enforce_cap(&mut self) {
        let Some(cap) = self.max_size else { return };
        if !self.cap_check.due(cap) {
            return;
        }
        let result = (|| -> rusqlite::Result<()> {
            let used = self.used_bytes()?;
            self.cap_check.measured(used);
            if used <= cap {
                return Ok(());
            }
            let now = millis(Timestamp::now());
            let dead = retry_busy(|| {
                self.conn.execute(
                    "DELETE FROM metadata_cache WHERE retain_ms <= ?1",
                    params![now],
                )
            })?;
            self.counters
                .expirations
                .fetch_add(dead as u64, Ordering::Relaxed);
            // Rows to evict, sized from the average row so that one sorted
            // pass (there is no index on last_access, to keep writes cheap)
            // usually suffices; repeated while pages are still over.
            let target = cap / 10 * 9;
            for _ in 0..8 {
                let used = self.used_bytes()?;
                if used <= target {
                    break;
                }
                let (rows, bytes): (i64, i64) = self.conn.query_row(
                    "SELECT count(*), coalesce(sum(size), 0) FROM metadata_cache",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                if rows == 0 {
                    break;
                }
                let average = (bytes / rows).max(1);
                let excess = i64::try_from(used - target).unwrap_or(i64::MAX);
                // Never fewer than MIN_EVICT, never more than there are.
                let n = (excess / average + 1).max(MIN_EVICT).min(rows);
                let evicted = retry_busy(|| {
                    self.conn.execute(
                        "DELETE FROM metadata_cache WHERE rowid IN \
                         (SELECT rowid FROM metadata_cache ORDER BY last_access LIMIT ?1)",
                        params![n],
                    )
                })?;
                self.counters
                    .evictions
                    .fetch_add(evicted as u64, Ordering::Relaxed);
            }
            self.vacuum();
            let used = self.used_bytes()?;
            self.cap_check.measured(used);
            Ok(())
        })();
        if let Err(e) = result {
            // Measure again after the next commit.
            self.cap_check = CapCheck::default();
            tracing::warn!(path = %self.path.display(), error = %e, "could not enforce the size cap");
        }
    }
}

/// Applies the requests on `conn`; returns, per request, how many entries
/// its deletes removed.
fn apply(
    conn: &Connection,
    requests: &[&[WriteOp]],
    namespace: u32,
    now: Timestamp,
) -> rusqlite::Result<Vec<u64>> {
    let mut put = conn.prepare_cached(UPSERT)?;
    let mut renew = conn.prepare_cached(RENEW)?;
    let mut delete = conn.prepare_cached(
        "DELETE FROM metadata_cache WHERE cache_key = ?1 AND schema_version = ?2",
    )?;
    let mut counts = Vec::with_capacity(requests.len());
    for ops in requests {
        let mut removed = 0u64;
        for op in *ops {
            match op {
                WriteOp::Put(key, entry) => {
                    upsert(&mut put, key, entry, namespace, now)?;
                }
                WriteOp::Renew(key, entry) => {
                    // The header columns alone when the row holds this
                    // body; else (gone, or another body) the whole entry.
                    if schema::renew(&mut renew, key, entry, namespace, now)? == 0 {
                        upsert(&mut put, key, entry, namespace, now)?;
                    }
                }
                WriteOp::Delete(key) => {
                    removed += delete.execute(params![key.as_str(), namespace])? as u64;
                }
            }
        }
        counts.push(removed);
    }
    Ok(counts)
}

fn retry_busy<T>(mut attempt: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = Instant::now() + BUSY_RETRY_FOR;
    let mut pause = Duration::from_millis(5);
    loop {
        match attempt() {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
}

impl CommitStore for Writer {
    fn commit(&mut self, requests: &[&[WriteOp]]) -> tierstack_core::Result<Vec<u64>> {
        let touched = self.touched.take();
        if requests.is_empty() && touched.is_empty() {
            return Ok(Vec::new());
        }
        self.transaction(requests, &touched)
            .map_err(|e| self.fail(e, Operation::Set))
    }

    fn clear(&mut self, scope: &ClearScope) -> tierstack_core::Result<u64> {
        self.clear_scope(scope)
            .map_err(|e| self.fail(e, Operation::Clear))
    }

    fn purge(&mut self) -> tierstack_core::Result<u64> {
        self.purge_dead()
            .map_err(|e| self.fail(e, Operation::Clear))
    }

    fn after_batch(&mut self) {
        self.enforce_cap();
    }

    /// One attempt without waiting for SQLite's lock: if another process
    /// holds it, the request goes to the writer thread, which waits.
    fn commit_now(&mut self, request: &[WriteOp]) -> Option<tierstack_core::Result<Vec<u64>>> {
        if !self.commits_in_place || self.conn.busy_timeout(Duration::ZERO).is_err() {
            return None;
        }
        let touched = self.touched.take();
        let result = self.transaction_once(&[request], &touched);
        if let Err(e) = self.conn.busy_timeout(self.busy_timeout) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not restore the busy timeout");
        }
        match result {
            Err(e) if is_busy(&e) => {
                // The reads stay recorded for the next commit.
                for key in touched {
                    self.touched.record_again(key);
                }
                None
            }
            other => Some(other.map_err(|e| self.fail(e, Operation::Set))),
        }
    }
}
