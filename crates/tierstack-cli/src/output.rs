//! Exit codes, messages, tables and progress bars.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tierstack::{Error, ErrorKind};

/// How a command ended badly: an exit code and what to tell the user.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

/// Exit code: the key (or anything asked for) is not there.
pub(crate) const NOT_FOUND: u8 = 1;
/// Exit code: bad arguments, bad config, bad input file.
pub(crate) const USAGE: u8 = 2;
/// Exit code: a backend cannot be opened or used.
pub(crate) const UNAVAILABLE: u8 = 3;

impl Failure {
    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self {
            code: NOT_FOUND,
            message: message.into(),
        }
    }

    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: USAGE,
            message: message.into(),
        }
    }

    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self {
            code: UNAVAILABLE,
            message: message.into(),
        }
    }

    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }
}

impl From<Error> for Failure {
    /// Config and encoding mistakes are the user's to fix (2); everything
    /// else means a store could not do its job (3).
    fn from(error: Error) -> Self {
        let code = match error.kind() {
            ErrorKind::Config | ErrorKind::Encode => USAGE,
            _ => UNAVAILABLE,
        };
        Self {
            code,
            message: error.report().to_string(),
        }
    }
}

pub(crate) type Outcome = Result<(), Failure>;

/// Prints `value` as one JSON document on stdout.
pub(crate) fn print_json(value: &impl Serialize) -> Outcome {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::usage(format!("cannot render JSON: {e}")))?;
    emit(&text);
    Ok(())
}

/// Writes a line to stdout. A closed pipe (`tierstack … | head`) ends the
/// output quietly instead of panicking as `println!` would.
pub(crate) fn emit(line: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

/// Writes a line to stderr. A closed, full or broken stderr loses the
/// message instead of panicking as `eprintln!` would: the exit code still
/// tells what happened.
pub(crate) fn note(line: &str) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
}

/// Prints rows under headers, columns padded to their widest cell.
pub(crate) fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        emit(padded.join("  ").trim_end());
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// A progress bar on stderr when it is a terminal and output is for
/// people; a hidden one otherwise (pipes and `--json` stay clean).
pub(crate) fn progress(json: bool, len: Option<u64>, message: &'static str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {pos} ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// A bar over a span of time (the measuring phase of `bench`), in whole
/// seconds; the caller moves it with [`ProgressBar::set_position`].
pub(crate) fn progress_over(json: bool, span: Duration, message: &'static str) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(span.as_secs().max(1)).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} s")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
