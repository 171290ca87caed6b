//! The command line, as clap reads it. `docs/cli.md` documents the same
//! contract; change both together.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Inspect and manage tierstack caches.
///
/// The config comes from --config FILE, else $TIERSTACK_CONFIG, else
/// ./tierstack.{yaml,yml,toml,json}, else ~/.config/tierstack/config.yaml,
/// else the embedded default (memory + SQLite in the user cache directory).
/// TIERSTACK_… variables override its fields (TIERSTACK_TIERS__1__PATH=…).
///
/// Exit codes: 0 ok or found, 1 not found, 2 usage or config error,
/// 3 backend unavailable.
#[derive(Debug, Parser)]
#[command(name = "tierstack", version, max_term_width = 100)]
pub(crate) struct Cli {
    /// Config file (YAML, TOML or JSON, by extension).
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// List the backends compiled in, with their capabilities.
    Backends,
    /// Work with the config.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print the canonical key of SOURCE and NAME=VALUE parameters.
    Key {
        /// The key's source, e.g. `audnexus:search`.
        source: String,
        /// Parameters as NAME=VALUE.
        #[arg(value_name = "NAME=VALUE")]
        params: Vec<String>,
    },
    /// Print a key's value as JSON (exit 1 when absent).
    Get {
        /// A canonical key, as `tierstack key` prints it.
        key: String,
    },
    /// Store a JSON value through every tier.
    Set {
        /// A canonical key.
        key: String,
        /// The value, as JSON (kept as written with `codec: json`).
        #[arg(value_name = "JSON", allow_negative_numbers = true)]
        value: String,
        /// How long it stays fresh (`90s`, `1h`, `7d`); default: each tier's TTL.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Show a key's entry in each tier: header fields, sizes, expiry.
    Inspect {
        /// A canonical key.
        key: String,
    },
    /// Remove a key from every tier (exit 1 when no tier held it).
    Delete {
        /// A canonical key.
        key: String,
    },
    /// Entries and bytes per tier and per source, and the tiers' health.
    Stats {
        /// Print the stats file's totals and each tier's size in the
        /// Prometheus text format (for a textfile collector), instead of
        /// tables: the names of docs/observability.md.
        #[arg(long)]
        prometheus: bool,
    },
    /// Remove entries: all of them, one source's, or the expired ones.
    Clear {
        /// Only this tier (by name, as `tierstack stats` lists them).
        #[arg(long, value_name = "NAME")]
        tier: Option<String>,
        /// Only keys of this source.
        #[arg(long, value_name = "SOURCE", conflicts_with = "expired")]
        source: Option<String>,
        /// Only entries that are no longer fresh.
        #[arg(long)]
        expired: bool,
        /// Do not ask for confirmation (needed when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Remove dead entries and give space back.
    Purge,
    /// Rewrite the stores that need it to give unused space back (SQLite
    /// files made by earlier releases): exclusive, needs free disk space.
    Compact,
    /// Write every fresh entry to FILE (`.zst` compresses).
    Export {
        /// Where to write; `-` for stdout.
        file: PathBuf,
        /// Only keys of this source.
        #[arg(long, value_name = "SOURCE")]
        source: Option<String>,
    },
    /// Store the fresh entries of an export file in every tier.
    Import {
        /// An export file (`.zst` is decompressed); `-` for stdin.
        file: PathBuf,
    },
    /// Fill the cache from an export file or a list of keys.
    Warm {
        /// An export file (only keys not fresh in the cache are imported) or
        /// a text file of canonical keys, one per line (`#` starts a comment).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// For a key list: a shell command that fetches one key. It gets the
        /// key in $TIERSTACK_KEY and its source in $TIERSTACK_SOURCE, prints
        /// the value as JSON and exits 0, or exits 1 with no output for
        /// "not found" (cached as such).
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// Fetches at a time.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// At most this many fetches per second.
        #[arg(long, value_name = "PER_SEC")]
        rate: Option<u32>,
        /// How long fetched values stay fresh; default: each tier's TTL.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<Duration>,
    },
    /// Serve the cache as a caching reverse proxy in front of HTTP APIs, for
    /// tools in any language: change their base URL to the proxy's. GET and
    /// HEAD answers are cached as RFC 9111 says (a shared cache),
    /// revalidated with ETags, and kept apart per Authorization; the
    /// config's `proxy:` section sets upstreams and overrides.
    /// `/_tierstack/health` and `/_tierstack/stats` answer JSON. Stops on
    /// Ctrl-C or SIGTERM after the requests in flight.
    Proxy {
        /// An upstream: `https://api.example.com` for every path, or
        /// `/prefix=https://api.example.com` for paths under `/prefix`
        /// (repeat for several; added to the config's `proxy.upstreams`).
        #[arg(long, value_name = "[PREFIX=]URL")]
        upstream: Vec<String>,
        /// Address to listen on (default: the config's `proxy.listen`, else
        /// 127.0.0.1:8787).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Measure the stack in the config: latency percentiles and throughput
    /// of get and set under a workload you choose. Runs on a scratch copy
    /// of the stack (new stores beside yours, a Redis namespace of its
    /// own), so your cache and its stats file are left as they were.
    Bench {
        /// How long to measure.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Tasks issuing requests at once.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Distinct keys.
        #[arg(long, default_value_t = 10_000)]
        keys: u64,
        /// Size of each value (`100`, `3KiB`, `100KiB`).
        #[arg(long, default_value = "3KiB", value_parser = parse_size)]
        value_size: u64,
        /// Share of reads, in percent (the rest are writes).
        #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u8).range(0..=100))]
        reads: u8,
        /// Which keys are asked for: `zipf` (a few hot keys) or `uniform`.
        #[arg(long, default_value = "zipf", value_parser = ["zipf", "uniform"])]
        distribution: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigAction {
    /// Validate the config, open every tier and print the effective config.
    Check,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    tierstack::units::parse_duration(text)
}

/// A TTL: a duration above zero (an entry that expires as it is written
/// would be reported as stored and never be found).
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl.is_zero() {
        return Err("a TTL of 0 stores nothing (the entry is expired as it is written); give a duration above zero".to_owned());
    }
    Ok(ttl)
}

fn parse_size(text: &str) -> Result<u64, String> {
    tierstack::units::parse_size(text)
}
