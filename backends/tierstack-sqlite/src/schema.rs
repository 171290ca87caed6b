//! Opening the database file safely, and the table's versioned migrations.
//!
//! Versions (`PRAGMA user_version`):
//! - 0 with no tables: a new file; version 3 is created.
//! - "1": the RFC's table exactly as written (five columns; a prototype of the
//!   tool creates it and leaves `user_version` at 0). Its rows are carried
//!   over.
//! - 2: the RFC's columns (times as integer milliseconds) plus the envelope's
//!   fields, entries in envelope format 1. Migrated in place.
//! - 3: times in the RFC's `TIMESTAMP` columns as UTC text that SQLite's
//!   date functions and Python's `sqlite3` read, integer copies for the
//!   tier's own comparisons, entries in envelope format 2 (bound to their
//!   key), negative rows holding the codec's `null`.
//!
//! A file that is not SQLite, or a SQLite database holding another
//! application's tables, is refused and never modified. Tables named
//! `tierstack_*` are reserved for tierstack's own coordination state.

use std::path::Path;
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tierstack_core::{
    Bytes, Codec, CompressionKind, DecodeLimits, Entry, EntryMeta, Error, Key, Operation, Timestamp,
};

use crate::error::sqlite;
use tierstack_core::paths::refuse;

/// The table version this build writes.
pub(crate) const USER_VERSION: i64 = 3;

/// Tables of this prefix belong to tierstack (leases, rate-limit state).
pub(crate) const RESERVED_PREFIX: &str = "tierstack_";

/// The coordination state (see `coordinator.rs`), created beside the cache
/// table by every open: a lease per key being fetched, a theoretical arrival
/// time per rate bucket, an open period (and its probe) per circuit. They
/// are not versioned with `user_version`: a file without them gets them,
/// and a tierstack that predates them accepts them as reserved tables.
pub(crate) const COORDINATION_TABLES: &str = "
CREATE TABLE IF NOT EXISTS tierstack_leases (
    key        TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tierstack_rates (
    bucket TEXT PRIMARY KEY,
    tat_us INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tierstack_circuits (
    name           TEXT PRIMARY KEY,
    until_ms       INTEGER NOT NULL,
    probe_owner    TEXT,
    probe_until_ms INTEGER
);
";

const CREATE: &str = "
CREATE TABLE metadata_cache (
    cache_key      TEXT NOT NULL,
    source         TEXT NOT NULL,
    data           JSON NOT NULL,
    expires_at     TIMESTAMP NOT NULL,
    created_at     TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    schema_version INTEGER NOT NULL,
    negative       INTEGER NOT NULL,
    expires_ms     INTEGER NOT NULL,
    retain_ms      INTEGER NOT NULL,
    codec          INTEGER NOT NULL,
    compression    INTEGER NOT NULL,
    size           INTEGER NOT NULL,
    checksum       INTEGER NOT NULL,
    header         BLOB NOT NULL,
    last_access    INTEGER NOT NULL,
    PRIMARY KEY (cache_key, schema_version)
);
PRAGMA user_version = 3;
";

/// The RFC's table, as a prototype creates it.
pub const RFC_TABLE: &str = "
CREATE TABLE metadata_cache (
  cache_key TEXT PRIMARY KEY,
  source TEXT NOT NULL,
  data JSON NOT NULL,
  expires_at TIMESTAMP NOT NULL,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);";

pub(crate) const UPSERT: &str = "
INSERT INTO metadata_cache (cache_key, source, data, expires_at, created_at, schema_version,
    negative, expires_ms, retain_ms, codec, compression, size, checksum, header, last_access)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
ON CONFLICT (cache_key, schema_version) DO UPDATE SET
    source = excluded.source, data = excluded.data, expires_at = excluded.expires_at,
    created_at = excluded.created_at, negative = excluded.negative,
    expires_ms = excluded.expires_ms, retain_ms = excluded.retain_ms,
    codec = excluded.codec, compression = excluded.compression, size = excluded.size,
    checksum = excluded.checksum, header = excluded.header, last_access = excluded.last_access";

/// SQLite stores integers as i64; "never" is the largest one.
pub(crate) fn millis(t: Timestamp) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

/// The latest time the `TIMESTAMP` columns can show, which stands for
/// "never": the last millisecond of year 9999 (`datetime()` and Python's
/// `datetime` both stop there).
const LAST_SQL_TIME_MS: u64 = 253_402_300_799_999;

/// A time as SQLite's `CURRENT_TIMESTAMP` writes one, in UTC, with
/// milliseconds: `2026-12-01 21:04:05.250`. Text of this shape sorts in time
/// order, compares correctly with `CURRENT_TIMESTAMP`, and is what
/// `datetime()` and Python's `PARSE_DECLTYPES` converter parse.
#[cfg(test)]
pub(crate) fn sql_time(t: Timestamp) -> String {
    String::from_utf8_lossy(&SqlTime::new(t).0).into_owned()
}

/// [`sql_time`] on the stack: every write binds two of them, and formatting
/// through `humantime` and a `String` cost more than the rest of binding a
/// row.
pub(crate) struct SqlTime([u8; 23]);

impl SqlTime {
    pub(crate) fn new(t: Timestamp) -> Self {
        let ms = t.as_millis().min(LAST_SQL_TIME_MS);
        let secs = ms / 1000;
        let (days, of_day) = (secs / 86_400, secs % 86_400);
        let (year, month, day) = civil_from_days(days);
        let mut out = *b"0000-00-00 00:00:00.000";
        let mut put = |at: usize, width: usize, mut value: u64| {
            for i in (at..at + width).rev() {
                out[i] = b'0' + (value % 10) as u8;
                value /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, of_day / 3600);
        put(14, 2, of_day / 60 % 60);
        put(17, 2, of_day % 60);
        put(20, 3, ms % 1000);
        Self(out)
    }

    /// The text, bound without a copy.
    pub(crate) fn to_sql(&self) -> ToSqlOutput<'_> {
        ToSqlOutput::Borrowed(ValueRef::Text(&self.0))
    }
}

/// Year, month, day of the proleptic Gregorian calendar for a count of days
/// since 1970-01-01 (Howard Hinnant's `civil_from_days`, for days ≥ 0).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// The bytes a stored row's `data` must hold for `entry`, and whether they
/// go in as TEXT. JSON objects, arrays, strings and `null`/`true`/`false`
/// are stored as TEXT so that `json_extract` reads them; numbers as a BLOB
/// of their JSON text, because the RFC's `JSON` column type has numeric
/// affinity and SQLite would turn a TEXT `1.50` into the number 1.5.
pub(crate) fn data_as_text(entry: &Entry) -> Option<&str> {
    if entry.header.codec != Codec::Json || entry.header.compression != CompressionKind::None {
        return None;
    }
    let text = std::str::from_utf8(&entry.body).ok()?;
    matches!(
        text.as_bytes().first(),
        Some(b'{' | b'[' | b'"' | b'n' | b't' | b'f')
    )
    .then_some(text)
}

/// Rewrites a row's header columns, keeping its data, when it holds the
/// body of the entry bound (the same checksum, codec and compression).
pub(crate) const RENEW: &str = "
UPDATE metadata_cache SET expires_at = ?3, created_at = ?4, negative = ?5, expires_ms = ?6,
    retain_ms = ?7, size = ?8, header = ?9, last_access = ?10
WHERE cache_key = ?1 AND schema_version = ?2 AND checksum = ?11 AND codec = ?12
    AND compression = ?13 AND negative = 0";

/// Binds one entry into the renewal statement; returns the rows changed
/// (0: the row is gone or holds another body).
pub(crate) fn renew(
    stmt: &mut rusqlite::CachedStatement<'_>,
    key: &Key,
    entry: &Entry,
    namespace: u32,
    now: Timestamp,
) -> rusqlite::Result<usize> {
    let h = &entry.header;
    let header = entry.header_bytes();
    let (expires_at, created_at) = (SqlTime::new(h.expires_at), SqlTime::new(h.created_at));
    stmt.execute(params![
        key.as_str(),
        namespace,
        expires_at.to_sql(),
        created_at.to_sql(),
        h.is_negative(),
        millis(h.expires_at),
        millis(h.retain_until),
        entry.encoded_len() as i64,
        &header[..],
        millis(now),
        i64::from_ne_bytes(h.body_checksum.to_ne_bytes()),
        h.codec.id(),
        h.compression.id(),
    ])
}

/// Binds one entry into the upsert statement.
pub(crate) fn upsert(
    stmt: &mut rusqlite::CachedStatement<'_>,
    key: &Key,
    entry: &Entry,
    namespace: u32,
    now: Timestamp,
) -> rusqlite::Result<usize> {
    let h = &entry.header;
    let header = entry.header_bytes();
    let data = ToSqlOutput::Borrowed(match data_as_text(entry) {
        Some(text) => ValueRef::Text(text.as_bytes()),
        None => ValueRef::Blob(&entry.body),
    });
    let (expires_at, created_at) = (SqlTime::new(h.expires_at), SqlTime::new(h.created_at));
    stmt.execute(params![
        key.as_str(),
        key.source(),
        data,
        expires_at.to_sql(),
        created_at.to_sql(),
        namespace,
        h.is_negative(),
        millis(h.expires_at),
        millis(h.retain_until),
        h.codec.id(),
        h.compression.id(),
        entry.encoded_len() as i64,
        i64::from_ne_bytes(h.body_checksum.to_ne_bytes()),
        &header[..],
        millis(now),
    ])
}

/// Rebuilds an entry from its stored header and data, read in place from
/// the row: the body is copied once, out of SQLite's page into the entry's
/// `Bytes`, and the header not at all.
pub(crate) fn entry_from_row(
    header: &[u8],
    data: &[u8],
) -> Result<Entry, tierstack_core::DecodeError> {
    // Structure only; the cache applies its own size cap when decoding.
    Entry::from_parts(
        header,
        Bytes::copy_from_slice(data),
        DecodeLimits::STRUCTURE_ONLY,
    )
}

/// Checks the path before SQLite touches it, creating the directory (0700)
/// and the file (0600) when missing.
pub(crate) fn prepare_file(path: &Path) -> Result<(), Error> {
    tierstack_core::paths::prepare_file(path, b"SQLite format 3\0", "SQLite")
}

/// Refuses, before anything is written to it, a database that belongs to
/// another application or to a newer tierstack. (Switching to WAL mode alone
/// rewrites the file header, so this runs on a read-only connection first.)
pub(crate) fn check_owner(path: &Path) -> Result<(), Error> {
    let fail = |e| sqlite(e, path, Operation::Build);
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(fail)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    if version > USER_VERSION {
        return Err(newer(path, version));
    }
    let tables = tables(&conn).map_err(fail)?;
    match foreign_tables(&tables) {
        None => Ok(()),
        Some(foreign) => Err(refuse_foreign(path, &foreign)),
    }
}

/// The tables that make a file another application's: anything but the
/// cache table and tierstack's reserved ones. `None` when the file is ours
/// (or empty).
fn foreign_tables(tables: &[String]) -> Option<Vec<String>> {
    let foreign: Vec<String> = tables
        .iter()
        .filter(|t| *t != "metadata_cache" && !t.starts_with(RESERVED_PREFIX))
        .cloned()
        .collect();
    (!foreign.is_empty()).then_some(foreign)
}

fn newer(path: &Path, version: i64) -> Error {
    refuse(
        path,
        &format!(
            "its table version {version} was written by a newer tierstack (this one knows {USER_VERSION})"
        ),
    )
}

fn refuse_foreign(path: &Path, tables: &[String]) -> Error {
    refuse(
        path,
        &format!(
            "it holds tables of another application ({})",
            tables.join(", ")
        ),
    )
}

fn tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )?;
    stmt.query_map([], |r| r.get(0))?.collect()
}

/// Opens a connection with the tier's pragmas.
pub(crate) fn connect(
    path: &Path,
    busy_timeout: Duration,
    synchronous: &str,
) -> Result<Connection, Error> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(|e| sqlite(e, path, Operation::Build))?;
    let setup = || -> rusqlite::Result<()> {
        conn.busy_timeout(busy_timeout)?;
        let pages: i64 = conn.pragma_query_value(None, "page_count", |r| r.get(0))?;
        if pages == 0 {
            // Only takes effect on a file with no page yet: switching to WAL
            // below writes the first page, after which it would need a VACUUM.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
        }
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "WAL mode not available");
        }
        conn.pragma_update(None, "synchronous", synchronous)?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(())
    };
    setup().map_err(|e| sqlite(e, path, Operation::Build))?;
    Ok(conn)
}

/// Brings the table to [`USER_VERSION`] and creates the coordination tables
/// where missing, in one `BEGIN IMMEDIATE` transaction so that processes
/// opening the file at once do not race.
pub(crate) fn migrate(conn: &mut Connection, path: &Path, namespace: u32) -> Result<(), Error> {
    let fail = |e| sqlite(e, path, Operation::Build);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    if version > USER_VERSION {
        return Err(newer(path, version));
    }
    if version == USER_VERSION {
        tx.execute_batch(COORDINATION_TABLES).map_err(fail)?;
        return tx.commit().map_err(fail);
    }
    let tables = tables(&tx).map_err(fail)?;
    if let Some(foreign) = foreign_tables(&tables) {
        return Err(refuse_foreign(path, &foreign));
    }
    let has_cache = tables.iter().any(|t| t == "metadata_cache");
    if !has_cache {
        tx.execute_batch(CREATE).map_err(fail)?;
    } else if version == 2 {
        migrate_from_v2(&tx, path)?;
    } else if version == 0 && is_rfc_table(&tx).map_err(fail)? {
        migrate_from_rfc(&tx, path, namespace)?;
    } else {
        return Err(refuse(
            path,
            &format!(
                "its metadata_cache table (version {version}) has columns this tierstack does not know"
            ),
        ));
    }
    tx.execute_batch(COORDINATION_TABLES).map_err(fail)?;
    tx.commit().map_err(fail)
}

fn is_rfc_table(conn: &Connection) -> rusqlite::Result<bool> {
    let mut stmt =
        conn.prepare("SELECT name FROM pragma_table_info('metadata_cache') ORDER BY cid")?;
    let columns: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(columns == ["cache_key", "source", "data", "expires_at", "created_at"])
}

/// Moves the rows of the old table (renamed aside) into a new one, each
/// rebuilt by `carry`; rows it cannot rebuild are counted and dropped (they
/// were unreadable already).
fn rebuild_table(
    conn: &Connection,
    path: &Path,
    select: &str,
    mut carry: impl FnMut(&rusqlite::Row<'_>) -> Option<(Key, Entry, u32)>,
) -> Result<(u64, u64), Error> {
    let fail = |e| sqlite(e, path, Operation::Build);
    conn.execute_batch(
        "ALTER TABLE metadata_cache RENAME TO metadata_cache_old;
         DROP INDEX IF EXISTS metadata_cache_expires_at;
         DROP INDEX IF EXISTS metadata_cache_source;",
    )
    .map_err(fail)?;
    conn.execute_batch(CREATE).map_err(fail)?;
    let now = Timestamp::now();
    let mut read = conn.prepare(select).map_err(fail)?;
    let mut write = conn.prepare_cached(UPSERT).map_err(fail)?;
    let mut rows = read.query([]).map_err(fail)?;
    let (mut carried, mut skipped) = (0u64, 0u64);
    while let Some(row) = rows.next().map_err(fail)? {
        let Some((key, entry, namespace)) = carry(row) else {
            skipped += 1;
            continue;
        };
        upsert(&mut write, &key, &entry, namespace, now).map_err(fail)?;
        carried += 1;
    }
    drop(rows);
    drop(read);
    drop(write);
    conn.execute_batch("DROP TABLE metadata_cache_old;")
        .map_err(fail)?;
    Ok((carried, skipped))
}

/// Version 2 → 3: times become text, entries move to envelope format 2
/// (bound to their key), negative rows get the codec's `null`.
fn migrate_from_v2(conn: &Connection, path: &Path) -> Result<(), Error> {
    let (carried, skipped) = rebuild_table(
        conn,
        path,
        "SELECT cache_key, schema_version, header, data, last_access FROM metadata_cache_old",
        |row| {
            let key = Key::parse(row.get_ref(0).ok()?.as_str().ok()?).ok()?;
            let namespace: u32 = row.get(1).ok()?;
            let header = row.get_ref(2).ok()?.as_blob().ok()?;
            let data = Bytes::copy_from_slice(row.get_ref(3).ok()?.as_bytes().ok()?);
            let entry = tierstack_core::envelope::v1::upgrade_parts(
                header,
                data,
                &key,
                DecodeLimits::STRUCTURE_ONLY,
            )
            .ok()?;
            Some((key, entry, namespace))
        },
    )?;
    tracing::info!(path = %path.display(), carried, skipped, "migrated the table to version 3");
    Ok(())
}

/// Carries the rows of the RFC's table over into the current one. Their
/// `data` is JSON; timestamps may be Unix seconds or SQLite date strings.
fn migrate_from_rfc(conn: &Connection, path: &Path, namespace: u32) -> Result<(), Error> {
    let now = Timestamp::now();
    let (carried, skipped) = rebuild_table(
        conn,
        path,
        "SELECT cache_key, data, expires_at, created_at FROM metadata_cache_old",
        |row| {
            let key = Key::parse(row.get_ref(0).ok()?.as_str().ok()?).ok()?;
            let data = match row.get_ref(1).ok()? {
                ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
                ValueRef::Integer(i) => i.to_string().into_bytes(),
                ValueRef::Real(r) => r.to_string().into_bytes(),
                ValueRef::Null => return None,
            };
            let expires_at = rfc_time(row.get_ref(2).ok()?)?;
            let created_at = rfc_time(row.get_ref(3).ok()?).unwrap_or(now);
            let raw_len = u32::try_from(data.len()).ok()?;
            let entry = Entry::from_body(
                EntryMeta::new(&key, namespace, created_at).expiring(expires_at, expires_at),
                Codec::Json,
                CompressionKind::None,
                0,
                raw_len,
                Bytes::from(data),
            );
            Some((key, entry, namespace))
        },
    )?;
    tracing::info!(path = %path.display(), carried, skipped, "migrated the RFC table");
    Ok(())
}

fn rfc_time(value: rusqlite::types::ValueRef<'_>) -> Option<Timestamp> {
    use rusqlite::types::ValueRef;
    let from_secs = |s: f64| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        (s.is_finite() && s >= 0.0).then(|| Timestamp::from_millis((s * 1000.0) as u64))
    };
    match value {
        #[allow(clippy::cast_precision_loss)]
        ValueRef::Integer(i) => from_secs(i as f64),
        ValueRef::Real(r) => from_secs(r),
        ValueRef::Text(t) => {
            let text = std::str::from_utf8(t).ok()?.trim();
            // SQLite's `CURRENT_TIMESTAMP` form (`2025-09-06 19:14:05`, UTC)
            // and RFC 3339.
            let time = humantime::parse_rfc3339_weak(text).ok()?;
            let ms = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
            Some(Timestamp::from_millis(u64::try_from(ms).ok()?))
        }
        ValueRef::Null | ValueRef::Blob(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_times_sort_and_read_like_current_timestamp() {
        assert_eq!(
            sql_time(Timestamp::from_millis(1_757_186_045_250)),
            "2025-09-06 19:14:05.250"
        );
        assert_eq!(
            sql_time(Timestamp::from_millis(0)),
            "1970-01-01 00:00:00.000"
        );
        assert_eq!(sql_time(Timestamp::NEVER), "9999-12-31 23:59:59.999");
        let t = rfc_time(ValueRef::Text(
            sql_time(Timestamp::from_millis(1_757_186_045_250)).as_bytes(),
        ));
        assert_eq!(t, Some(Timestamp::from_millis(1_757_186_045_250)));
    }

    /// The formatting `sql_time` used before it moved to the stack.
    fn humantime_sql_time(t: Timestamp) -> String {
        let ms = t.as_millis().min(LAST_SQL_TIME_MS);
        let time = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let mut text = humantime::format_rfc3339_millis(time).to_string();
        text.truncate(23);
        text.replace_range(10..11, " ");
        text
    }

    #[test]
    fn stack_times_match_humantime() {
        let mut ms: u64 = 0;
        // Every day boundary, leap day and century rule up to year 9999, at
        // an odd time of day, then the edges.
        while ms <= LAST_SQL_TIME_MS {
            let t = Timestamp::from_millis(ms);
            assert_eq!(sql_time(t), humantime_sql_time(t), "at {ms} ms");
            ms += 86_400_000 - 1_001;
        }
        for ms in [
            0,
            1,
            999,
            1_000,
            86_399_999,
            951_782_400_000,
            LAST_SQL_TIME_MS,
            u64::MAX,
        ] {
            let t = Timestamp::from_millis(ms);
            assert_eq!(sql_time(t), humantime_sql_time(t), "at {ms} ms");
        }
    }

    #[test]
    fn rfc_times_in_every_form() {
        let t = rfc_time(rusqlite::types::ValueRef::Text(b"2025-09-06 19:14:05")).unwrap();
        assert_eq!(t.as_millis(), 1_757_186_045_000);
        let t = rfc_time(rusqlite::types::ValueRef::Text(b"2025-09-06T19:14:05.250Z")).unwrap();
        assert_eq!(t.as_millis(), 1_757_186_045_250);
        let t = rfc_time(rusqlite::types::ValueRef::Integer(1_757_186_045)).unwrap();
        assert_eq!(t.as_millis(), 1_757_186_045_000);
        assert!(rfc_time(rusqlite::types::ValueRef::Text(b"next tuesday")).is_none());
    }
}
