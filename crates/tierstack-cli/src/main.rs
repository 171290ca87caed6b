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
            let _ = e.print();
            // Help and version are not errors.
            return if e.use_stderr() {
                ExitCode::from(USAGE)
            } else {
                ExitCode::SUCCESS
            };
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
            note(&format!("tierstack: {}", failure.message));
            failure.exit_code()
        }
    }
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
        Command::Stats => maintenance::stats(&open(config_path).await?, json).await,
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
