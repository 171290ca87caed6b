#![doc = include_str!("../README.md")]
// The binary never unwraps what a user, a file or a server can influence.
#![warn(clippy::unwrap_used)]

mod args;
mod bench;
mod entries;
mod info;
mod json;
mod maintenance;
mod output;
mod proxy;
mod transfer;

use std::path::Path;
use std::process::ExitCode;

use clap::Parser as _;
use tierstack::{Config, TieredCache};

use crate::args::{Cli, Command, ConfigAction};
use crate::output::{Failure, Outcome, USAGE, note};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.to_string();
            let line =
                if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    missing_command(&text)
                } else {
                    usage_error(&text)
                };
            note(&format!("tierstack: {line}"));
            return ExitCode::from(USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            note(&format!("tierstack: cannot start the async runtime: {e}"));
            return ExitCode::from(output::UNAVAILABLE);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            note(&format!("tierstack: {}", one_line(&failure.message)));
            failure.exit_code()
        }
    }
}

/// clap's error as one line: its message (without `error: `), the usage
/// it names, and where to read on. clap prints several lines; scripts get
/// one line starting with `tierstack:`, as for every other error.
fn usage_error(text: &str) -> String {
    let mut message = Vec::new();
    let mut usage = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("Usage:") {
            usage = Some(rest.trim().to_owned());
        } else if line.starts_with("For more information") {
            // Said below.
        } else {
            message.push(line.strip_prefix("error:").unwrap_or(line).trim());
        }
    }
    // "…not provided:" is followed by what is missing; a "tip:" is a
    // sentence of its own.
    let mut line = String::new();
    for part in message {
        if !line.is_empty() {
            line.push_str(if line.ends_with(':') { " " } else { "; " });
        }
        line.push_str(part);
    }
    if let Some(usage) = usage {
        line.push_str(" (usage: ");
        line.push_str(&usage);
        line.push_str("; see --help)");
    }
    line
}

/// clap's help for a command given without its subcommand, as one line:
/// the subcommands to choose from and the usage.
fn missing_command(help: &str) -> String {
    let mut commands = Vec::new();
    let mut usage = None;
    let mut in_commands = false;
    for line in help.lines() {
        if let Some(rest) = line.trim().strip_prefix("Usage:") {
            usage = Some(rest.trim().to_owned());
        }
        if line.starts_with("Commands:") {
            in_commands = true;
        } else if in_commands && line.starts_with("  ") {
            // "  name    description", or a description's continuation line.
            let name = line.split_whitespace().next().unwrap_or("");
            if line.starts_with("  ") && !line.starts_with("   ") && name != "help" {
                commands.push(name.to_owned());
            }
        } else {
            in_commands = false;
        }
    }
    let usage = usage.unwrap_or_else(|| "tierstack <COMMAND>".to_owned());
    format!(
        "a command is missing: one of {} (usage: {usage}; see --help)",
        commands.join(", ")
    )
}

/// A message as one line: an error with a source snippet (a config file's
/// line and column, drawn under the first line) keeps its first line,
/// which already says the file, the line, the column and what is wrong;
/// other line breaks become `; `.
fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .take_while(|l| !l.trim_start().starts_with("-->"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

async fn run(cli: Cli) -> Outcome {
    let json = cli.json;
    let config_path = cli.config.as_deref();
    match cli.command {
        Command::Backends => info::backends(json),
        Command::Key { source, params } => entries::key(&source, &params, json),
        Command::Config {
            action: ConfigAction::Check,
        } => info::check(config_path, json).await,
        Command::Get { key } => entries::get(&open(config_path).await?, &key, json).await,
        Command::Set { key, value, ttl } => {
            entries::set(&open(config_path).await?, &key, &value, ttl, json).await
        }
        Command::Inspect { key } => entries::inspect(&open(config_path).await?, &key, json).await,
        Command::Delete { key } => entries::delete(&open(config_path).await?, &key, json).await,
        Command::Stats { prometheus: true } if json => Err(Failure::usage(
            "--json and --prometheus cannot be used with each other: each is a whole output format",
        )),
        Command::Stats { prometheus: true } => {
            maintenance::prometheus(&open(config_path).await?).await
        }
        Command::Stats { prometheus: false } => {
            maintenance::stats(&open(config_path).await?, json).await
        }
        Command::Clear {
            tier,
            source,
            expired,
            yes,
        } => {
            let request = maintenance::ClearRequest {
                tier,
                source,
                expired,
                yes,
            };
            maintenance::clear(&open(config_path).await?, request, json).await
        }
        Command::Purge => maintenance::purge(&open(config_path).await?, json).await,
        Command::Compact => maintenance::compact(&open(config_path).await?, json).await,
        Command::Export { file, source } => {
            transfer::export(&open(config_path).await?, &file, source, json).await
        }
        Command::Import { file } => transfer::import(&open(config_path).await?, &file, json).await,
        Command::Warm {
            from,
            exec,
            concurrency,
            rate,
            ttl,
        } => {
            let request = transfer::WarmRequest {
                from,
                exec,
                concurrency,
                rate,
                ttl,
            };
            transfer::warm(&open(config_path).await?, request, json).await
        }
        Command::Proxy { upstream, listen } => {
            let (config, cache) = load(config_path).await?;
            let request = proxy::ProxyRequest {
                upstreams: upstream,
                listen,
            };
            proxy::proxy(&config, cache, request).await
        }
        Command::Bench {
            duration,
            concurrency,
            keys,
            value_size,
            reads,
            distribution,
        } => {
            let workload = bench::Workload {
                duration,
                concurrency,
                keys,
                value_size: usize::try_from(value_size)
                    .map_err(|_| Failure::usage("--value-size is too large"))?,
                read_percent: reads,
                zipf: distribution == "zipf",
            };
            let scratch = bench::Scratch::open(config_path).await?;
            bench::bench(&scratch.cache, workload, json).await
        }
    }
}

/// Finds the config (see [`Config::discover`]) and opens every tier.
pub(crate) async fn load(path: Option<&Path>) -> Result<(Config, TieredCache), Failure> {
    let config = Config::discover(path)?;
    let cache = TieredCache::from_config(&config).await?;
    Ok((config, cache))
}

async fn open(path: Option<&Path>) -> Result<TieredCache, Failure> {
    load(path).await.map(|(_, cache)| cache)
}
