//! `export`, `import` and `warm`: moving entries in and out of a cache.

use std::fs::File;
use std::io::{BufRead, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tierstack::{
    Codec, ExportHeader, ExportOptions, FetchOptions, ImportOptions, ImportReport, Key, Line,
    LineReader, TieredCache, Ttl, WarmOptions, WarmReport,
};

/// The first bytes of a zstd frame.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

use crate::json::Json;
use crate::output::{Failure, Outcome, emit, note, print_json, progress};

/// Failures whose reason is printed; the rest are only counted.
const SHOWN_PROBLEMS: usize = 10;

fn is_stdio(path: &Path) -> bool {
    path.as_os_str() == "-"
}

pub(crate) async fn export(
    cache: &TieredCache,
    file: &Path,
    source: Option<String>,
    json: bool,
) -> Outcome {
    let mut options = ExportOptions::default();
    if let Some(source) = source {
        options = options.source(source);
    }
    let total = cache
        .sizes()
        .await
        .into_iter()
        .filter_map(|(_, size)| size.ok())
        .map(|s| s.entries)
        .max();
    if is_stdio(file) {
        // Nothing but the stream may go to stdout.
        let report = match cache
            .export(std::io::stdout().lock(), &options, |_| {})
            .await
        {
            // The reader stopped (`export - | head`): it has what it wanted.
            Err(e) if reader_went_away(&e) => return Ok(()),
            other => other?,
        };
        note(&format!(
            "exported {} entries ({} expired left out)",
            report.exported, report.expired
        ));
        return Ok(());
    }
    let bar = progress(json, total, "exporting");
    let report = cache
        .export_file(file, &options, |n| bar.set_position(n))
        .await?;
    bar.finish_and_clear();
    if json {
        print_json(
            &serde_json::json!({ "file": file, "exported": report.exported, "expired": report.expired }),
        )
    } else {
        emit(&format!(
            "exported {} entries to {} ({} expired left out)",
            report.exported,
            file.display(),
            report.expired
        ));
        Ok(())
    }
}

pub(crate) async fn import(cache: &TieredCache, file: &Path, json: bool) -> Outcome {
    let report = import_with(cache, file, ImportOptions::default(), json).await?;
    print_import(&report, file, json)
}

async fn import_with(
    cache: &TieredCache,
    file: &Path,
    options: ImportOptions,
    json: bool,
) -> Result<ImportReport, Failure> {
    if is_stdio(file) {
        return Ok(cache
            .import(std::io::stdin().lock(), options, |_| {})
            .await?);
    }
    // Plain files show how far the stream is read; compressed ones a count.
    let len = if tierstack::is_zstd(file) {
        None
    } else {
        std::fs::metadata(file).ok().map(|m| m.len())
    };
    let bar = progress(json, len, "importing");
    let report = cache
        .import_file(file, options, |r| {
            if len.is_some() {
                bar.set_position(r.bytes_read);
            } else {
                bar.set_position(r.imported);
            }
        })
        .await?;
    bar.finish_and_clear();
    Ok(report)
}

fn print_import(report: &ImportReport, file: &Path, json: bool) -> Outcome {
    if json {
        return print_json(report);
    }
    emit(&format!(
        "imported {} entries from {} ({} expired, {} already fresh, {} malformed)",
        report.imported,
        file.display(),
        report.expired,
        report.already_fresh,
        report.malformed
    ));
    for problem in report.problems.iter().take(SHOWN_PROBLEMS) {
        note(&format!("skipped {problem}"));
    }
    if report.malformed > SHOWN_PROBLEMS as u64 {
        note(&format!(
            "… and {} more malformed lines",
            report.malformed - SHOWN_PROBLEMS as u64
        ));
    }
    Ok(())
}

/// What `tierstack warm` was asked to do.
pub(crate) struct WarmRequest {
    pub(crate) from: PathBuf,
    pub(crate) exec: Option<String>,
    pub(crate) concurrency: usize,
    pub(crate) rate: Option<u32>,
    pub(crate) ttl: Option<Duration>,
}

/// The longest line of a key list: a canonical key, with room for
/// surrounding spaces and a comment.
const MAX_KEY_LINE: usize = 4 * 1024;

/// Opens the input of `warm` once (a FIFO or `/dev/stdin` can be read only
/// once), decompressing zstd whatever the file's name.
fn open_input(path: &Path) -> Result<Box<dyn BufRead>, Failure> {
    let cannot = |e: std::io::Error| Failure::usage(format!("cannot read {}: {e}", path.display()));
    let mut input: Box<dyn BufRead> = if is_stdio(path) {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        Box::new(BufReader::new(File::open(path).map_err(cannot)?))
    };
    if input.fill_buf().map_err(cannot)?.starts_with(&ZSTD_MAGIC) {
        input = Box::new(BufReader::new(
            zstd::Decoder::with_buffer(input).map_err(cannot)?,
        ));
    }
    Ok(input)
}

pub(crate) async fn warm(cache: &TieredCache, request: WarmRequest, json: bool) -> Outcome {
    if !cache.is_enabled() {
        return Err(Failure::usage(
            "caching is disabled in the config (enabled: false): nothing would be stored, so nothing was warmed",
        ));
    }
    let input = open_input(&request.from)?;
    let mut lines = LineReader::new(input, MAX_KEY_LINE);
    let cannot =
        |e: std::io::Error| Failure::usage(format!("cannot read {}: {e}", request.from.display()));
    let first = match lines.next_line().map_err(cannot)? {
        Some((Line::Text(text), _)) => Some(Ok(text.to_vec())),
        Some((Line::TooLong, _)) => Some(Err(too_long())),
        None => None,
    };
    if let Some(Ok(header)) = first
        .as_ref()
        .filter(|line| matches!(line, Ok(line) if ExportHeader::read(&line[..]).is_some()))
    {
        // An export: the header line goes back in front of the rest.
        let mut header = header.clone();
        header.push(b'\n');
        let stream = std::io::Cursor::new(header).chain(lines.into_inner());
        let options = ImportOptions::default().skip_fresh(true);
        let bar = progress(json, None, "importing");
        let report = cache
            .import(stream, options, |r| bar.set_position(r.imported))
            .await?;
        bar.finish_and_clear();
        return print_import(&report, &request.from, json);
    }
    let Some(command) = request.exec.clone() else {
        return Err(Failure::usage(format!(
            "{} is a key list, not an export; pass --exec CMD to fetch each key",
            request.from.display()
        )));
    };
    let mut keys = KeyList {
        lines,
        pending: first,
        number: 0,
        bad_lines: Vec::new(),
        read_error: None,
    };
    let failures = Mutex::new(Vec::new());
    let codec = cache.codec();
    let fetch = |key: Key| {
        let command = command.clone();
        let failures = &failures;
        async move {
            let result = run_fetch(&command, &key).await.and_then(|value| {
                // Said here, where the key is known, rather than lost as a
                // value that could not be encoded.
                match value.as_ref().and_then(Json::inexact_number) {
                    Some(number) if codec != Codec::Json => Err(format!(
                        "{key}: the number {number} cannot be stored exactly by the {} codec; print it as a JSON string, or use `codec: json`",
                        codec.name()
                    )),
                    _ => Ok(value),
                }
            });
            if let Err(why) = &result {
                let mut failures = lock(failures);
                if failures.len() < SHOWN_PROBLEMS {
                    failures.push(why.clone());
                }
            }
            result
        }
    };
    let mut options = WarmOptions::default().concurrency(request.concurrency.max(1));
    if let Some(rate) = request.rate {
        options = options.rate_per_sec(rate);
    }
    options.fetch = FetchOptions::ttl(request.ttl.map_or(Ttl::TierDefault, Ttl::For));
    let bar = progress(json, None, "warming");
    let before = cache.stats();
    let report = cache
        .warm(keys.by_ref(), options, fetch, |r: &WarmReport| {
            bar.set_position(r.done);
        })
        .await;
    bar.finish_and_clear();
    if let Some(e) = keys.read_error.take() {
        return Err(cannot(e));
    }
    let bad_lines = keys.bad_lines;
    let failures = failures
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    print_warm(&report, &bad_lines, &failures, json)?;
    warm_verdict(cache, &before, &report, bad_lines.len(), &request.from)
}

/// How a key-list warm ends: non-zero when it stored nothing for a key it
/// was given, saying why.
fn warm_verdict(
    cache: &TieredCache,
    before: &tierstack::CacheStats,
    report: &WarmReport,
    bad_lines: usize,
    from: &Path,
) -> Outcome {
    if report.done == 0 && bad_lines > 0 {
        return Err(Failure::usage(format!(
            "{} holds no canonical key, only {} bad lines: neither an export nor a key list",
            from.display(),
            bad_lines
        )));
    }
    if report.not_stored > 0 {
        let failed = crate::entries::failed_tiers(cache, before);
        let why = if failed.is_empty() {
            format!(
                "each is larger, encoded, than this cache's entry cap of {}",
                tierstack::units::format_size(u64::from(cache.max_value_len()))
            )
        } else {
            format!(
                "{} failed to write (see `tierstack stats`)",
                failed.join(", ")
            )
        };
        return Err(Failure::unavailable(format!(
            "{} of {} fetched values were not stored: {why}",
            report.not_stored,
            report.fetched + report.not_stored
        )));
    }
    if report.failed > 0 {
        return Err(Failure::unavailable(format!(
            "{} of {} keys could not be fetched",
            report.failed, report.done
        )));
    }
    Ok(())
}

fn too_long() -> String {
    format!("longer than {MAX_KEY_LINE} bytes")
}

/// The keys of a key list, read one line at a time; bad lines and a read
/// error are kept for the report.
struct KeyList<R> {
    lines: LineReader<R>,
    /// The first line, read before the file was known to be a key list.
    pending: Option<Result<Vec<u8>, String>>,
    number: usize,
    bad_lines: Vec<String>,
    read_error: Option<std::io::Error>,
}

impl<R: BufRead> KeyList<R> {
    fn next_line(&mut self) -> Option<Result<Vec<u8>, String>> {
        if let Some(line) = self.pending.take() {
            return Some(line);
        }
        match self.lines.next_line() {
            Ok(Some((Line::Text(text), _))) => Some(Ok(text.to_vec())),
            Ok(Some((Line::TooLong, _))) => Some(Err(too_long())),
            Ok(None) => None,
            Err(e) => {
                self.read_error = Some(e);
                None
            }
        }
    }
}

impl<R: BufRead> Iterator for KeyList<R> {
    type Item = Key;

    fn next(&mut self) -> Option<Key> {
        loop {
            let line = self.next_line()?;
            self.number += 1;
            let key = line.and_then(|line| {
                let text = String::from_utf8(line).map_err(|_| "not UTF-8".to_owned())?;
                if !is_key_line(&text) {
                    return Ok(None);
                }
                Key::parse(text.trim())
                    .map(Some)
                    .map_err(|e| format!("not a canonical key ({e})"))
            });
            match key {
                Ok(Some(key)) => return Some(key),
                Ok(None) => {}
                Err(why) => self.bad_lines.push(format!("line {}: {why}", self.number)),
            }
        }
    }
}

fn print_warm(
    report: &WarmReport,
    bad_lines: &[String],
    failures: &[String],
    json: bool,
) -> Outcome {
    if json {
        return print_json(&serde_json::json!({
            "done": report.done,
            "fresh": report.fresh,
            "fetched": report.fetched,
            "not_stored": report.not_stored,
            "not_found": report.not_found,
            "failed": report.failed,
            "bad_lines": bad_lines.len(),
        }));
    }
    emit(&format!(
        "warmed {} keys: {} fetched, {} fetched but not stored, {} not found, {} already fresh, {} failed, {} bad lines",
        report.done,
        report.fetched,
        report.not_stored,
        report.not_found,
        report.fresh,
        report.failed,
        bad_lines.len()
    ));
    for problem in bad_lines.iter().chain(failures).take(SHOWN_PROBLEMS) {
        note(problem);
    }
    Ok(())
}

fn is_key_line(line: &str) -> bool {
    let line = line.trim();
    !line.is_empty() && !line.starts_with('#')
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs the user's fetch command for one key: JSON on stdout and exit 0 is
/// a value, exit 1 with no output is "not found", anything else a failure.
async fn run_fetch(command: &str, key: &Key) -> Result<Option<Json>, String> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("TIERSTACK_KEY", key.as_str())
        .env("TIERSTACK_SOURCE", key.source())
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("{key}: cannot run {command:?}: {e}"))?;
    match output.status.code() {
        Some(0) => std::str::from_utf8(&output.stdout)
            .map_err(|e| e.to_string())
            .and_then(|text| Json::parse(text).map_err(|e| e.to_string()))
            .map(Some)
            .map_err(|e| format!("{key}: the command's output is not JSON: {e}")),
        Some(1) if output.stdout.iter().all(u8::is_ascii_whitespace) => Ok(None),
        _ => Err(format!(
            "{key}: the command failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )),
    }
}

/// Whether writing failed because the other end of a pipe was closed.
fn reader_went_away(error: &tierstack::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = e.source();
    }
    false
}
