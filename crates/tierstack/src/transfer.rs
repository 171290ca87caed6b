//! Export and import: a cache as a stream of lines, to carry a warm cache
//! from one machine (or backend) to another.
//!
//! The format (specified in `docs/cli.md`) is JSON lines. The first line
//! describes the stream:
//!
//! ```json
//! {"format":"tierstack-export","version":2,"schema_version":1,"exported_at":"2026-11-25T17:00:00.000Z"}
//! ```
//!
//! Each following line is one entry: its key, its expiry (for people and
//! tools; the entry's own header is what counts) and the entry's bytes
//! (header + body, exactly as tiers store them) in base64:
//!
//! ```json
//! {"key":"audnexus:asin=B0","expires_at":1764090000000,"entry":"VFNUSwEB..."}
//! ```
//!
//! A file whose name ends in `.zst` is zstd-compressed. Import streams the
//! file (it never holds more than one batch), skips expired records, counts
//! malformed ones and goes on, and refuses a newer format or another schema
//! version with a clear error.
//!
//! Version 2 streams hold entries in envelope format 2, each bound to its
//! record's key (a record whose entry belongs to another key is malformed).
//! Version 1 streams, written by earlier releases, hold format-1 entries:
//! each is checked and carried into format 2 under its record's key.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek as _, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use tierstack_core::envelope::HEADER_LEN;
use tierstack_core::key::MAX_KEY_LEN;
use tierstack_core::paths::AtomicFile;
use tierstack_core::{
    Bytes, Entry, Error, ErrorKind, Key, Operation, Result, ScanCursor, Timestamp,
};

use crate::TieredCache;

/// The `format` of the header line.
pub const EXPORT_FORMAT: &str = "tierstack-export";
/// The version of the stream format this build writes; it reads this one
/// and version 1.
pub const EXPORT_VERSION: u32 = 2;

/// Entries read from tiers per scan page.
const SCAN_PAGE: usize = 512;
/// Records written to tiers per batch on import.
const IMPORT_BATCH: usize = 512;
/// Malformed lines whose reason is kept in an [`ImportReport`].
const KEPT_PROBLEMS: usize = 20;

/// The first line of an export stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeader {
    /// Always [`EXPORT_FORMAT`].
    pub format: String,
    /// The stream format version ([`EXPORT_VERSION`] when written by this build).
    pub version: u32,
    /// The application schema version of the entries.
    pub schema_version: u32,
    /// When the export was written (RFC 3339).
    #[serde(default)]
    pub exported_at: String,
}

/// One entry line.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    key: String,
    /// Milliseconds since the epoch; `null` for no expiry. Informative.
    expires_at: Option<u64>,
    /// The entry (header + body), base64.
    entry: String,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ExportReport {
    /// Entries written.
    pub exported: u64,
    /// Entries left out because they were expired.
    pub expired: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ImportReport {
    /// Records stored.
    pub imported: u64,
    /// Records skipped because they had expired.
    pub expired: u64,
    /// Records skipped because the cache already held them fresh (only when
    /// importing with `skip_fresh`, as `tierstack warm` does).
    pub already_fresh: u64,
    /// Lines that were not a valid record (bad JSON, bad base64, damaged
    /// entry, another schema version).
    pub malformed: u64,
    /// Bytes of the (decompressed) stream read so far.
    pub bytes_read: u64,
    /// The first malformed lines: `line N: reason`.
    pub problems: Vec<String>,
}

/// Which entries an export writes.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExportOptions {
    /// Only keys of this source (as [`Key::source`] returns it).
    pub source: Option<String>,
}

impl ExportOptions {
    /// Only keys of `source`.
    #[must_use]
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }
}

/// How an import writes.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct ImportOptions {
    /// Leave keys alone that some tier already holds fresh.
    pub skip_fresh: bool,
}

impl ImportOptions {
    /// Leave keys alone that some tier already holds fresh.
    #[must_use]
    pub fn skip_fresh(mut self, skip: bool) -> Self {
        self.skip_fresh = skip;
        self
    }
}

/// An error of the export or import file itself (not of a tier). A file
/// that does not exist is the caller's mistake, not a failing store.
fn file_error(message: impl Into<String>, error: std::io::Error) -> Error {
    let kind = match error.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::Config,
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            ErrorKind::PermissionDenied
        }
        std::io::ErrorKind::StorageFull => ErrorKind::Full,
        _ => ErrorKind::Io,
    };
    Error::new(kind, message.into()).with_source(error)
}

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// The longest first line read when telling an export from other files.
const MAX_HEADER_LINE: u64 = 64 * 1024;

impl ExportHeader {
    /// Reads the header from the first line of `input`, reading at most
    /// 64 KiB; `None` when the stream does not start like an export.
    pub fn read(input: impl Read) -> Option<Self> {
        let mut first = Vec::new();
        BufReader::new(input.take(MAX_HEADER_LINE))
            .read_until(b'\n', &mut first)
            .ok()?;
        serde_json::from_slice::<Self>(first.trim_ascii_end())
            .ok()
            .filter(|h| h.format == EXPORT_FORMAT)
    }
}

/// Whether an existing file is an export, plain or zstd-compressed
/// (whatever its name), and so may be replaced by one.
fn is_export_file(file: &mut File) -> bool {
    let mut magic = [0u8; 4];
    let compressed = file.read_exact(&mut magic).is_ok() && magic == ZSTD_MAGIC;
    if file.rewind().is_err() {
        return false;
    }
    if compressed {
        zstd::Decoder::new(file)
            .ok()
            .and_then(ExportHeader::read)
            .is_some()
    } else {
        ExportHeader::read(file).is_some()
    }
}

/// One line of a [`LineReader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// The line's bytes, without its `\n`.
    Text(&'a [u8]),
    /// The line was longer than the reader's maximum; it was skipped.
    TooLong,
}

/// Reads lines of at most a given length from a stream, never holding more
/// than that: a longer line is reported as [`Line::TooLong`] as soon as it
/// passes the limit, and the next read first skips the rest of it without
/// keeping it. A stream without newlines (`/dev/zero`, a small `.zst` that
/// inflates to gigabytes) costs time, never memory.
#[derive(Debug)]
pub struct LineReader<R> {
    input: R,
    line: Vec<u8>,
    max_len: usize,
    /// The last line was too long and its rest is still to be skipped.
    skipping: bool,
}

impl<R: BufRead> LineReader<R> {
    /// Reads `input`, keeping lines of at most `max_len` bytes.
    pub fn new(input: R, max_len: usize) -> Self {
        Self {
            input,
            line: Vec::new(),
            max_len,
            skipping: false,
        }
    }

    /// The longest line kept.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Keeps lines of at most `max_len` bytes from the next one on (a
    /// stream's header may have a tighter limit than its records).
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    /// The stream, positioned after the last line read (or inside the last
    /// one, when it was too long).
    pub fn into_inner(self) -> R {
        self.input
    }

    /// The next line and the bytes read from the stream for it (its newline
    /// and the skipped rest of a previous line too long included); `None` at
    /// the end of the stream.
    pub fn next_line(&mut self) -> std::io::Result<Option<(Line<'_>, u64)>> {
        self.line.clear();
        let mut consumed = 0_u64;
        let mut started = false;
        loop {
            let available = match self.input.fill_buf() {
                Ok(available) => available,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                return Ok(started.then_some((Line::Text(&self.line), consumed)));
            }
            let newline = available.iter().position(|&b| b == b'\n');
            if self.skipping {
                let used = newline.map_or(available.len(), |end| end + 1);
                self.input.consume(used);
                consumed += used as u64;
                self.skipping = newline.is_none();
                continue;
            }
            started = true;
            let chunk = &available[..newline.unwrap_or(available.len())];
            let room = self.max_len - self.line.len();
            if chunk.len() > room {
                self.line.clear();
                // The newline, if it is in sight, ends the line right here.
                let used = newline.map_or(available.len(), |end| end + 1);
                self.input.consume(used);
                consumed += used as u64;
                self.skipping = newline.is_none();
                return Ok(Some((Line::TooLong, consumed)));
            }
            self.line.extend_from_slice(chunk);
            let used = newline.map_or(available.len(), |end| end + 1);
            self.input.consume(used);
            consumed += used as u64;
            if newline.is_some() {
                return Ok(Some((Line::Text(&self.line), consumed)));
            }
        }
    }
}

/// Whether `path` names a zstd-compressed export (`.zst`), as
/// [`TieredCache::export_file`] and [`TieredCache::import_file`] decide.
pub fn is_zstd(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zst"))
}

impl TieredCache {
    /// Writes every fresh entry of every scannable tier to `out` (a key held
    /// by several tiers is written once, from the topmost). `progress` is
    /// called with the number written so far.
    pub async fn export(
        &self,
        out: impl Write,
        options: &ExportOptions,
        mut progress: impl FnMut(u64),
    ) -> Result<ExportReport> {
        let mut out = BufWriter::new(out);
        let io = |e: std::io::Error| file_error("cannot write the export", e);
        let header = ExportHeader {
            format: EXPORT_FORMAT.to_owned(),
            version: EXPORT_VERSION,
            schema_version: self.schema_version(),
            exported_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        write_json_line(&mut out, &header).map_err(io)?;
        let mut report = ExportReport::default();
        let mut seen: HashSet<Key> = HashSet::new();
        for tier in self.tiers() {
            if !tier.capabilities().scan {
                continue;
            }
            let mut cursor: Option<ScanCursor> = None;
            loop {
                let page = tier.scan(cursor.take(), SCAN_PAGE).await.map_err(|e| {
                    Error::new(e.kind(), format!("cannot scan tier {}", tier.name()))
                        .with_operation(Operation::Scan)
                        .with_shared_source(std::sync::Arc::new(e))
                })?;
                let now = Timestamp::now();
                for (key, entry) in page.entries {
                    if options.source.as_deref().is_some_and(|s| s != key.source())
                        || entry.header.schema_version != self.schema_version()
                        || seen.contains(&key)
                    {
                        continue;
                    }
                    if !entry.header.is_fresh(now) {
                        report.expired += 1;
                        continue;
                    }
                    let expires = entry.header.expires_at;
                    let record = Record {
                        key: key.as_str().to_owned(),
                        expires_at: (!expires.is_never()).then(|| expires.as_millis()),
                        entry: BASE64.encode(entry.to_vec()),
                    };
                    write_json_line(&mut out, &record).map_err(io)?;
                    seen.insert(key);
                    report.exported += 1;
                    progress(report.exported);
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        out.flush().map_err(io)?;
        Ok(report)
    }

    /// Exports to a file; a name ending in `.zst` compresses it. The file is
    /// written under a fresh temporary name beside it (mode 0600) and renamed
    /// when complete, so an interrupted export never leaves a truncated file
    /// behind. An existing `path` is only replaced when it is an export
    /// (plain or compressed) or empty: a store, any other file, a symbolic
    /// link, a device, a FIFO or a directory is refused and left untouched.
    pub async fn export_file(
        &self,
        path: impl AsRef<Path>,
        options: &ExportOptions,
        progress: impl FnMut(u64),
    ) -> Result<ExportReport> {
        let path = path.as_ref();
        let io =
            |e: std::io::Error, what: &str| file_error(format!("{what} {}", path.display()), e);
        let mut file = AtomicFile::create(path, "a tierstack export", is_export_file)?;
        let report = if is_zstd(path) {
            let mut encoder =
                zstd::Encoder::new(file.file(), 3).map_err(|e| io(e, "cannot compress"))?;
            let report = self.export(&mut encoder, options, progress).await?;
            encoder.finish().map_err(|e| io(e, "cannot write"))?;
            report
        } else {
            self.export(file.file(), options, progress).await?
        };
        // Dropped unrenamed on any error above, which removes it.
        file.commit()?;
        Ok(report)
    }

    /// Reads an export stream and stores its fresh records in every tier,
    /// each keeping its own expiry (capped by each tier's TTL). Malformed
    /// lines (bad JSON, not UTF-8, longer than any valid record can be) are
    /// counted and skipped without being held in memory; a stream of another
    /// format, a newer version or another schema version is refused before
    /// anything is written, and so is any import into a disabled cache.
    /// `progress` is called after each batch.
    pub async fn import(
        &self,
        input: impl Read,
        options: ImportOptions,
        mut progress: impl FnMut(&ImportReport),
    ) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        let refuse = |message: String| Error::new(ErrorKind::Config, message);
        if !self.is_enabled() {
            return Err(refuse(
                "caching is disabled (enabled: false): nothing would be stored, so nothing was imported"
                    .to_owned(),
            ));
        }
        let cannot_read = |e| file_error("cannot read the import stream", e);
        let mut lines = LineReader::new(BufReader::new(input), MAX_HEADER_LINE as usize);
        // A stream that cannot even be read up to its first newline (not
        // zstd after all, say) is not an export: the caller's mistake.
        let first = lines.next_line().map_err(|e| {
            refuse(format!(
                "not a tierstack export: cannot read its first line ({e})"
            ))
        })?;
        let header = match first {
            Some((Line::Text(text), n)) => {
                report.bytes_read += n;
                serde_json::from_slice::<ExportHeader>(text.trim_ascii_end())
                    .map_err(|e| e.to_string())
            }
            Some((Line::TooLong, _)) => Err("it is longer than any header".to_owned()),
            None => Err("the stream is empty".to_owned()),
        }
        .map_err(|why| {
            refuse(format!(
                "not a tierstack export: the first line is not its header ({why})"
            ))
        })?;
        if header.format != EXPORT_FORMAT {
            return Err(refuse(format!(
                "not a tierstack export: format {:?}, expected {EXPORT_FORMAT:?}",
                header.format
            )));
        }
        if header.version > EXPORT_VERSION {
            return Err(refuse(format!(
                "the export has format version {}, written by a newer tierstack; this build reads version {EXPORT_VERSION} and older",
                header.version
            )));
        }
        if header.schema_version != self.schema_version() {
            return Err(refuse(format!(
                "the export holds entries of schema version {}, this cache reads schema version {}",
                header.schema_version,
                self.schema_version()
            )));
        }
        lines.set_max_len(self.max_record_len());
        let mut batch = Vec::with_capacity(IMPORT_BATCH);
        let mut number = 1_u64;
        while let Some((line, n)) = lines.next_line().map_err(cannot_read)? {
            number += 1;
            report.bytes_read += n;
            let parsed = match line {
                Line::Text(text) if text.trim_ascii().is_empty() => continue,
                Line::Text(text) => std::str::from_utf8(text)
                    .map_err(|e| format!("not UTF-8 ({e})"))
                    .and_then(|text| self.parse_record(text.trim_end())),
                Line::TooLong => Err(format!(
                    "longer than {} bytes, the most a record of this cache can take",
                    lines.max_len()
                )),
            };
            match parsed {
                Ok((key, entry)) => {
                    if entry.header.is_fresh(Timestamp::now()) {
                        batch.push((key, entry));
                    } else {
                        report.expired += 1;
                    }
                }
                Err(reason) => {
                    report.malformed += 1;
                    if report.problems.len() < KEPT_PROBLEMS {
                        report.problems.push(format!("line {number}: {reason}"));
                    }
                }
            }
            if batch.len() >= IMPORT_BATCH {
                self.store_batch(&mut batch, options, &mut report).await?;
                progress(&report);
            }
        }
        self.store_batch(&mut batch, options, &mut report).await?;
        progress(&report);
        Ok(report)
    }

    /// The longest line a valid record can take: the largest entry this
    /// cache accepts, in base64, plus the longest key and the JSON around.
    fn max_record_len(&self) -> usize {
        let entry = u64::from(self.inner.limits.max_raw_len) + HEADER_LEN as u64;
        let line = entry.div_ceil(3) * 4 + (MAX_KEY_LEN as u64) * 6 + 1024;
        usize::try_from(line).unwrap_or(usize::MAX)
    }

    /// Imports a file written by [`TieredCache::export_file`]; a
    /// zstd-compressed one (whatever its name) is decompressed on the fly.
    pub async fn import_file(
        &self,
        path: impl AsRef<Path>,
        options: ImportOptions,
        progress: impl FnMut(&ImportReport),
    ) -> Result<ImportReport> {
        let path = path.as_ref();
        let file = File::open(path)
            .map_err(|e| file_error(format!("cannot open {}", path.display()), e))?;
        let mut file = BufReader::new(file);
        let head = file
            .fill_buf()
            .map_err(|e| file_error(format!("cannot read {}", path.display()), e))?;
        if head.starts_with(&ZSTD_MAGIC) {
            let decoder = zstd::Decoder::with_buffer(file)
                .map_err(|e| file_error(format!("cannot decompress {}", path.display()), e))?;
            self.import(decoder, options, progress).await
        } else {
            self.import(file, options, progress).await
        }
    }

    fn parse_record(&self, line: &str) -> std::result::Result<(Key, Entry), String> {
        let record: Record =
            serde_json::from_str(line).map_err(|e| format!("not a record: {e}"))?;
        let key = Key::parse(&record.key).map_err(|e| format!("bad key: {e}"))?;
        let bytes = BASE64
            .decode(record.entry.as_bytes())
            .map_err(|e| format!("bad base64: {e}"))?;
        let entry = if tierstack_core::envelope::v1::looks_like(&bytes) {
            tierstack_core::envelope::v1::upgrade(&bytes, &key, self.inner.limits)
        } else {
            Entry::from_bytes(Bytes::from(bytes), self.inner.limits)
        }
        .map_err(|e| format!("damaged entry: {e}"))?;
        entry
            .check_key(&key)
            .map_err(|e| format!("damaged entry: {e}"))?;
        // The body too, so that a damaged record never reaches a tier.
        entry
            .raw_body(self.inner.limits, &self.inner.dictionaries)
            .map_err(|e| format!("damaged entry: {e}"))?;
        if entry.header.schema_version != self.schema_version() {
            return Err(format!(
                "schema version {} (this cache reads {})",
                entry.header.schema_version,
                self.schema_version()
            ));
        }
        Ok((key, entry))
    }

    async fn store_batch(
        &self,
        batch: &mut Vec<(Key, Entry)>,
        options: ImportOptions,
        report: &mut ImportReport,
    ) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut entries = std::mem::take(batch);
        if options.skip_fresh {
            let keys: Vec<Key> = entries.iter().map(|(k, _)| k.clone()).collect();
            let fresh = self.fresh_keys(&keys).await;
            let before = entries.len();
            entries.retain(|(k, _)| !fresh.contains(k));
            report.already_fresh += (before - entries.len()) as u64;
        }
        let count = entries.len() as u64;
        self.set_entries(entries).await?;
        report.imported += count;
        Ok(())
    }

    /// The keys among `keys` that some tier holds fresh.
    async fn fresh_keys(&self, keys: &[Key]) -> HashSet<Key> {
        let now = Timestamp::now();
        let mut fresh = HashSet::new();
        for tier in self.tiers() {
            if let Ok(found) = tier.get_many(keys).await {
                for (key, entry) in keys.iter().zip(found) {
                    if entry.is_some_and(|e| e.header.is_fresh(now)) {
                        fresh.insert(key.clone());
                    }
                }
            }
        }
        fresh
    }

    /// Stores entries as they are (their headers, expiry included) in every
    /// tier, capping the expiry by each tier's own TTL. Unlike
    /// [`TieredCache::set`], a tier that fails is an error: an import must
    /// not report entries as stored that are not.
    pub async fn set_entries(&self, entries: Vec<(Key, Entry)>) -> Result<()> {
        if !self.is_enabled() || entries.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let writes = self.inner.layers.iter().map(|layer| {
            let capped = layer
                .tier
                .max_ttl()
                .map_or(Timestamp::NEVER, |cap: Duration| now.saturating_add(cap));
            let copies: Vec<(Key, Entry)> = entries
                .iter()
                .map(|(key, entry)| {
                    let header = if entry.header.expires_at > capped {
                        entry.header.with_expiry(capped)
                    } else {
                        entry.header
                    };
                    let copy = entry.with_header(header);
                    (key.clone(), copy)
                })
                .collect();
            async move {
                layer.tier.set_many(copies).await.map_err(|e| {
                    Error::new(e.kind(), format!("tier {} refused the entries", layer.name))
                        .with_tier(&*layer.name)
                        .with_operation(Operation::SetMany)
                        .with_shared_source(std::sync::Arc::new(e))
                })
            }
        });
        join_all(writes)
            .await
            .into_iter()
            .collect::<Result<Vec<()>>>()?;
        Ok(())
    }
}

fn write_json_line(out: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Option<Vec<u8>>> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some((line, _)) = reader.next_line().unwrap() {
            out.push(match line {
                Line::Text(text) => Some(text.to_vec()),
                Line::TooLong => None,
            });
        }
        out
    }

    #[test]
    fn long_lines_are_reported_and_skipped_and_short_ones_kept() {
        let got = lines(b"ab\nabcdef\n\nxyz", 3);
        let want: Vec<Option<Vec<u8>>> = vec![
            Some(b"ab".to_vec()),
            None,
            Some(Vec::new()),
            Some(b"xyz".to_vec()),
        ];
        assert_eq!(got, want);
        assert_eq!(lines(b"abcdef", 3), vec![None]);
        assert_eq!(lines(b"abc\n", 3), vec![Some(b"abc".to_vec())]);
        assert!(lines(b"", 3).is_empty());
        // A long line that straddles buffer refills is skipped as a whole.
        let mut long = vec![b'x'; 100_000];
        long.extend_from_slice(b"\nok\n");
        let reader = BufReader::with_capacity(7, &long[..]);
        let mut reader = LineReader::new(reader, 10);
        assert_eq!(
            reader.next_line().unwrap().map(|(l, _)| l),
            Some(Line::TooLong)
        );
        let (line, consumed) = reader.next_line().unwrap().unwrap();
        assert_eq!(line, Line::Text(b"ok"));
        assert_eq!(consumed, 100_000 + 4 - 14);
    }
}
