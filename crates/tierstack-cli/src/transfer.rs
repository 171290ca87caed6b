//! `export`, `import` and `warm`: moving entries in and out of a cache.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use tierstack::{
    ExportHeader, ExportOptions, FetchOptions, ImportOptions, ImportReport, Key, TieredCache, Ttl,
    WarmOptions, WarmReport,
};

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
        let report = cache
            .export(std::io::stdout().lock(), &options, |_| {})
            .await?;
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

/// Whether `path` starts like an export stream.
fn is_export(path: &Path) -> Result<bool, Failure> {
    let cannot = |e: std::io::Error| Failure::usage(format!("cannot read {}: {e}", path.display()));
    let file = File::open(path).map_err(cannot)?;
    let reader: Box<dyn Read> = if tierstack::is_zstd(path) {
        Box::new(zstd::Decoder::new(file).map_err(cannot)?)
    } else {
        Box::new(file)
    };
    let mut first = String::new();
    // A key list has short lines; an export's header is short too, so a
    // bounded read of the first line is enough to tell them apart.
    BufReader::new(reader.take(64 * 1024))
        .read_line(&mut first)
        .map_err(cannot)?;
    Ok(serde_json::from_str::<ExportHeader>(first.trim_end()).is_ok())
}

pub(crate) async fn warm(cache: &TieredCache, request: WarmRequest, json: bool) -> Outcome {
    if is_export(&request.from)? {
        let options = ImportOptions::default().skip_fresh(true);
        let report = import_with(cache, &request.from, options, json).await?;
        return print_import(&report, &request.from, json);
    }
    let Some(command) = request.exec.clone() else {
        return Err(Failure::usage(format!(
            "{} is a key list, not an export; pass --exec CMD to fetch each key",
            request.from.display()
        )));
    };
    let open = || {
        File::open(&request.from)
            .map(BufReader::new)
            .map_err(|e| Failure::usage(format!("cannot read {}: {e}", request.from.display())))
    };
    let total = open()?
        .lines()
        .map_while(Result::ok)
        .filter(|l| is_key_line(l))
        .count() as u64;
    let bad_lines = Mutex::new(Vec::new());
    let keys = open()?.lines().enumerate().filter_map(|(i, line)| {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                lock(&bad_lines).push(format!("line {}: {e}", i + 1));
                return None;
            }
        };
        if !is_key_line(&line) {
            return None;
        }
        match Key::parse(line.trim()) {
            Ok(key) => Some(key),
            Err(e) => {
                lock(&bad_lines).push(format!("line {}: not a canonical key ({e})", i + 1));
                None
            }
        }
    });
    let failures = Mutex::new(Vec::new());
    let fetch = |key: Key| {
        let command = command.clone();
        let failures = &failures;
        async move {
            let result = run_fetch(&command, &key).await;
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
    let bar = progress(json, Some(total), "warming");
    let report = cache
        .warm(keys, options, fetch, |r: &WarmReport| {
            bar.set_position(r.done);
        })
        .await;
    bar.finish_and_clear();
    let bad_lines = bad_lines
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let failures = failures
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    print_warm(&report, &bad_lines, &failures, json)?;
    if report.failed > 0 {
        return Err(Failure::unavailable(format!(
            "{} of {} keys could not be fetched",
            report.failed, report.done
        )));
    }
    Ok(())
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
            "not_found": report.not_found,
            "failed": report.failed,
            "bad_lines": bad_lines.len(),
        }));
    }
    emit(&format!(
        "warmed {} keys: {} fetched, {} not found, {} already fresh, {} failed, {} bad lines",
        report.done,
        report.fetched,
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
async fn run_fetch(command: &str, key: &Key) -> Result<Option<serde_json::Value>, String> {
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
        Some(0) => serde_json::from_slice(&output.stdout)
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
