//! The redb side of group commit (see `tierstack_core::group_commit`): every
//! queued request is applied in one redb write transaction (one fsync with
//! `durability: immediate`), with the expiry index, byte count and cap kept
//! in the same transaction.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, Durability, ReadableTable, Table, TableDefinition, WriteTransaction};
use tierstack_core::{ClearScope, DecodeLimits, Entry, Error, Header, Key, Operation, Timestamp};

use crate::error::redb;
use tierstack_core::group_commit::{CommitStore, WriteOp};

/// Table names of one schema-version namespace.
#[derive(Debug, Clone)]
pub(crate) struct Tables {
    pub(crate) entries: String,
    pub(crate) expiry: String,
    pub(crate) bytes_key: String,
}

pub(crate) const META: TableDefinition<'static, &str, u64> = TableDefinition::new("tierstack_meta");

impl Tables {
    pub(crate) fn new(namespace: u32) -> Self {
        Self {
            entries: format!("entries_v{namespace}"),
            expiry: format!("expiry_v{namespace}"),
            bytes_key: format!("bytes_v{namespace}"),
        }
    }

    pub(crate) fn entries(&self) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(&self.entries)
    }

    pub(crate) fn expiry(&self) -> TableDefinition<'_, (u64, &'static str), ()> {
        TableDefinition::new(&self.expiry)
    }
}

/// Header checks only: the cache applies its own size cap when decoding.
pub(crate) const STRUCTURE_ONLY: DecodeLimits = DecodeLimits {
    max_raw_len: u32::MAX,
};

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) evictions: AtomicU64,
    pub(crate) expirations: AtomicU64,
    pub(crate) transactions: AtomicU64,
}

pub(crate) struct Writer {
    pub(crate) db: Arc<Database>,
    pub(crate) path: PathBuf,
    pub(crate) tables: Tables,
    pub(crate) durability: Durability,
    pub(crate) max_size: Option<u64>,
    pub(crate) counters: Arc<Counters>,
}

/// The tables of one open write transaction.
struct Open<'t> {
    entries: Table<'t, &'static str, &'static [u8]>,
    expiry: Table<'t, (u64, &'static str), ()>,
    bytes: i128,
}

impl Open<'_> {
    fn put(&mut self, key: &str, entry: &Entry) -> Result<(), redb::Error> {
        let bytes = entry.to_vec();
        let old = self
            .entries
            .insert(key, bytes.as_slice())?
            .map(|g| g.value().to_vec());
        if let Some(old) = old {
            self.forget(key, &old)?;
        }
        self.expiry
            .insert((entry.header.retain_until.as_millis(), key), ())?;
        self.bytes += bytes.len() as i128;
        Ok(())
    }

    fn remove(&mut self, key: &str) -> Result<bool, redb::Error> {
        let old = self.entries.remove(key)?.map(|g| g.value().to_vec());
        match old {
            Some(old) => {
                self.forget(key, &old)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Drops the index entry and byte count of a replaced or removed value.
    fn forget(&mut self, key: &str, old: &[u8]) -> Result<(), redb::Error> {
        if let Some(until) = tierstack_core::envelope::keep_until(old) {
            self.expiry.remove((until.as_millis(), key))?;
        }
        self.bytes -= old.len() as i128;
        Ok(())
    }

    fn keys_where(
        &self,
        mut keep: impl FnMut(&str, &[u8]) -> bool,
    ) -> Result<Vec<String>, redb::Error> {
        let mut out = Vec::new();
        for item in self.entries.iter()? {
            let (k, v) = item?;
            if keep(k.value(), v.value()) {
                out.push(k.value().to_owned());
            }
        }
        Ok(out)
    }
}

impl Writer {
    fn fail(&self, e: redb::Error, op: Operation) -> Error {
        redb(e, &self.path, op)
    }

    /// Runs `f` in one write transaction, keeps the byte count, enforces the
    /// cap and commits.
    fn transaction<T>(
        &self,
        f: impl FnOnce(&mut Open<'_>) -> Result<T, redb::Error>,
    ) -> Result<T, redb::Error> {
        let mut txn: WriteTransaction = self.db.begin_write()?;
        txn.set_durability(self.durability)?;
        let result = {
            let mut meta = txn.open_table(META)?;
            let start = meta
                .get(self.tables.bytes_key.as_str())?
                .map_or(0, |g| g.value());
            let mut open = Open {
                entries: txn.open_table(self.tables.entries())?,
                expiry: txn.open_table(self.tables.expiry())?,
                bytes: i128::from(start),
            };
            let result = f(&mut open)?;
            self.enforce_cap(&mut open)?;
            let bytes = u64::try_from(open.bytes.max(0)).unwrap_or(u64::MAX);
            meta.insert(self.tables.bytes_key.as_str(), bytes)?;
            result
        };
        txn.commit()?;
        self.counters.transactions.fetch_add(1, Ordering::Relaxed);
        Ok(result)
    }

    /// Past the cap, drops entries closest to the end of their life (dead
    /// ones first) down to 90% of the cap.
    fn enforce_cap(&self, open: &mut Open<'_>) -> Result<(), redb::Error> {
        let Some(cap) = self.max_size else {
            return Ok(());
        };
        let cap = i128::from(cap);
        if open.bytes <= cap {
            return Ok(());
        }
        let now = Timestamp::now().as_millis();
        while open.bytes > cap / 10 * 9 {
            let Some((index, ())) = open.expiry.pop_first()?.map(|(k, v)| {
                let (stale, key) = k.value();
                ((stale, key.to_owned()), v.value())
            }) else {
                break;
            };
            let (stale, key) = index;
            if let Some(old) = open.entries.remove(key.as_str())?.map(|g| g.value().len()) {
                open.bytes -= old as i128;
                let counter = if stale <= now {
                    &self.counters.expirations
                } else {
                    &self.counters.evictions
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// Applies write requests; returns how many entries each one's deletes removed.
fn apply<'a>(
    open: &mut Open<'_>,
    requests: impl Iterator<Item = &'a [WriteOp]>,
) -> Result<Vec<u64>, redb::Error> {
    let mut counts = Vec::new();
    for ops in requests {
        let mut removed = 0;
        for op in ops {
            match op {
                // One value per key: a renewal writes it whole.
                WriteOp::Put(key, entry) | WriteOp::Renew(key, entry) => {
                    open.put(key.as_str(), entry)?;
                }
                WriteOp::Delete(key) => removed += u64::from(open.remove(key.as_str())?),
            }
        }
        counts.push(removed);
    }
    Ok(counts)
}

fn clear(open: &mut Open<'_>, scope: &ClearScope) -> Result<u64, redb::Error> {
    let now = Timestamp::now();
    let doomed = match scope {
        ClearScope::Source(source) => {
            open.keys_where(|k, _| Key::parse(k).is_ok_and(|key| key.source() == source))?
        }
        ClearScope::Expired => open.keys_where(|_, v| {
            Header::parse(v, STRUCTURE_ONLY).map_or(true, |h| !h.is_fresh(now))
        })?,
        _ => open.keys_where(|_, _| true)?,
    };
    let mut removed = 0;
    for key in doomed {
        if open.remove(&key)? {
            removed += 1;
        }
    }
    Ok(removed)
}

fn purge(open: &mut Open<'_>) -> Result<u64, redb::Error> {
    let now = Timestamp::now().as_millis();
    let mut dead = Vec::new();
    for item in open.expiry.range(..(now.saturating_add(1), ""))? {
        let (k, ()) = item.map(|(k, v)| (k, v.value()))?;
        dead.push(k.value().1.to_owned());
    }
    let mut removed = 0;
    for key in dead {
        if open.remove(&key)? {
            removed += 1;
        }
    }
    Ok(removed)
}

impl CommitStore for Writer {
    fn commit(&mut self, requests: &[&[WriteOp]]) -> tierstack_core::Result<Vec<u64>> {
        self.transaction(|open| apply(open, requests.iter().copied()))
            .map_err(|e| self.fail(e, Operation::Set))
    }

    fn clear(&mut self, scope: &ClearScope) -> tierstack_core::Result<u64> {
        self.transaction(|open| clear(open, scope))
            .map_err(|e| self.fail(e, Operation::Clear))
    }

    fn purge(&mut self) -> tierstack_core::Result<u64> {
        let removed = self
            .transaction(purge)
            .map_err(|e| self.fail(e, Operation::Clear))?;
        self.counters
            .expirations
            .fetch_add(removed, Ordering::Relaxed);
        Ok(removed)
    }
}
