//! `tierstack bench`: a configurable workload against the stack in the
//! user's config, reporting latency percentiles and throughput per
//! operation. It runs on a scratch copy of that stack (same backends, same
//! disks and servers) and leaves the user's cache as it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tierstack::{ClearScope, Config, ConfigOrigin, EMBEDDED_DEFAULT, Key, TieredCache, Ttl, units};

use crate::output::{Failure, Outcome, emit, print_json, print_table, progress, progress_over};

/// The stack of the user's config with nothing of the user's in it: each
/// file-based store is a new one in a scratch directory beside the real one
/// (so the same disk is measured), a Redis tier gets a namespace of its own,
/// and counters go to a scratch stats file. The user's stores and stats file
/// are never opened. Dropping it removes the scratch directories.
pub(crate) struct Scratch {
    pub(crate) cache: TieredCache,
    dirs: Vec<tempfile::TempDir>,
}

impl Scratch {
    /// Builds the scratch stack of the config `path` (or the one found).
    pub(crate) async fn open(path: Option<&Path>) -> Result<Self, Failure> {
        let config = Config::discover(path)?;
        let mut dirs = Vec::new();
        let mut redirect = Vec::new();
        let stats = scratch_dir(&std::env::temp_dir(), &mut dirs)?;
        redirect.push((
            "TIERSTACK_STATS_FILE".to_owned(),
            stats.join("stats.json").display().to_string(),
        ));
        match &config.cache.tiers {
            None => {
                let location = config
                    .cache
                    .location
                    .as_deref()
                    .unwrap_or("~/.cache/tierstack");
                let location = expand(location)?;
                let dir = scratch_dir(&beside(&location), &mut dirs)?;
                redirect.push(("TIERSTACK_LOCATION".to_owned(), dir.display().to_string()));
            }
            Some(tiers) => {
                for (i, tier) in tiers.iter().enumerate() {
                    let fields = serde_json::to_value(tier).map_err(|e| {
                        Failure::usage(format!("cache.tiers[{i}]: cannot read its config: {e}"))
                    })?;
                    let kind = fields["kind"].as_str().unwrap_or_default();
                    match kind {
                        "memory" => {}
                        "sqlite" | "redb" | "sled" => {
                            let store = expand(fields["path"].as_str().unwrap_or_default())?;
                            let name = store
                                .file_name()
                                .map_or_else(|| kind.into(), |n| n.to_string_lossy());
                            let dir = scratch_dir(&beside(&store), &mut dirs)?;
                            redirect.push((
                                format!("TIERSTACK_TIERS__{i}__PATH"),
                                dir.join(&*name).display().to_string(),
                            ));
                        }
                        "redis" => redirect.push((
                            format!("TIERSTACK_TIERS__{i}__PREFIX"),
                            format!(
                                "tierstack-bench-{}-{}",
                                std::process::id(),
                                tierstack::Timestamp::now().as_millis()
                            ),
                        )),
                        other => {
                            return Err(Failure::usage(format!(
                                "bench cannot give cache.tiers[{i}] (kind {other}) a scratch space of its own, so it does not run on this config"
                            )));
                        }
                    }
                }
            }
        }
        let mut vars: Vec<(String, String)> = Config::environment()?
            .into_iter()
            .filter(|(name, _)| !redirect.iter().any(|(ours, _)| ours == name))
            .collect();
        vars.extend(redirect);
        let scratch = match &config.origin {
            ConfigOrigin::Explicit(file)
            | ConfigOrigin::EnvVar(file)
            | ConfigOrigin::WorkingDir(file)
            | ConfigOrigin::UserConfig(file) => Config::load_with_env(file, vars)?,
            _ => Config::parse_with_env(EMBEDDED_DEFAULT, "yaml", vars)?,
        };
        let cache = TieredCache::from_config(&scratch).await?;
        Ok(Self { cache, dirs })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The stores are closed before their directories go.
        self.cache = TieredCache::builder().enabled(false).build();
        for dir in self.dirs.drain(..) {
            let _ = dir.close();
        }
    }
}

fn expand(path: &str) -> Result<PathBuf, Failure> {
    tierstack::paths::expand(path).map_err(Failure::usage)
}

/// Where a scratch copy of `store` goes: its directory when that exists
/// (the same disk), else the system's temporary directory.
fn beside(store: &Path) -> PathBuf {
    store
        .parent()
        .filter(|d| d.is_dir())
        .map_or_else(std::env::temp_dir, Path::to_owned)
}

/// A new scratch directory (mode 0700) in `near`, removed with `dirs`.
fn scratch_dir(near: &Path, dirs: &mut Vec<tempfile::TempDir>) -> Result<PathBuf, Failure> {
    let dir = tempfile::Builder::new()
        .prefix(".tierstack-bench-")
        .tempdir_in(near)
        .map_err(|e| {
            Failure::unavailable(format!(
                "cannot create a scratch directory in {}: {e}",
                near.display()
            ))
        })?;
    let path = dir.path().to_owned();
    dirs.push(dir);
    Ok(path)
}

/// The most distinct keys a bench draws from.
const MAX_KEYS: u64 = 10_000_000;
/// The most tasks a bench runs at once.
const MAX_CONCURRENCY: usize = 4096;

/// The source of the bench's keys.
const SOURCE: &str = "tierstack:bench";

/// What `tierstack bench` was asked to run.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    pub(crate) duration: Duration,
    pub(crate) concurrency: usize,
    pub(crate) keys: u64,
    pub(crate) value_size: usize,
    pub(crate) read_percent: u8,
    pub(crate) zipf: bool,
}

fn key(i: u64) -> Key {
    Key::new(SOURCE, [("k", i.to_string())])
}

fn value(i: u64, size: usize) -> serde_json::Value {
    serde_json::json!({ "id": i, "payload": "x".repeat(size) })
}

/// Draws key indexes: Zipf (s = 1, a few keys are hot) or uniform.
struct Keys {
    cumulative: Option<Arc<Vec<f64>>>,
    count: u64,
    state: u64,
}

impl Keys {
    fn next_u64(&mut self) -> u64 {
        // xorshift64*: fast and good enough to spread load.
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn next(&mut self) -> u64 {
        let draw = self.next_u64();
        match &self.cumulative {
            None => draw % self.count,
            Some(cdf) => {
                #[allow(clippy::cast_precision_loss)]
                let u = (draw >> 11) as f64 / (1_u64 << 53) as f64;
                cdf.partition_point(|&c| c < u) as u64
            }
        }
    }
}

fn zipf_cdf(n: u64) -> Vec<f64> {
    #[allow(clippy::cast_precision_loss)]
    let weights: Vec<f64> = (1..=n).map(|i| 1.0 / i as f64).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

#[derive(Default)]
struct Samples {
    reads: Vec<u64>,
    writes: Vec<u64>,
    misses: u64,
    errors: u64,
}

#[derive(Serialize)]
struct OpReport {
    op: &'static str,
    count: usize,
    ops_per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

fn quantile(sorted: &[u64], permille: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (sorted.len() * permille)
        .div_ceil(1000)
        .clamp(1, sorted.len());
    #[allow(clippy::cast_precision_loss)]
    let ns = sorted[rank - 1] as f64;
    ns / 1000.0
}

fn report(op: &'static str, mut ns: Vec<u64>, elapsed: Duration) -> OpReport {
    ns.sort_unstable();
    #[allow(clippy::cast_precision_loss)]
    let ops_per_sec = ns.len() as f64 / elapsed.as_secs_f64();
    OpReport {
        op,
        count: ns.len(),
        ops_per_sec,
        p50_us: quantile(&ns, 500),
        p99_us: quantile(&ns, 990),
        p999_us: quantile(&ns, 999),
        max_us: quantile(&ns, 1000),
    }
}

pub(crate) async fn bench(cache: &TieredCache, workload: Workload, json: bool) -> Outcome {
    if !cache.is_enabled() {
        return Err(Failure::usage(
            "caching is disabled in the config: nothing to measure",
        ));
    }
    if workload.keys == 0 || workload.concurrency == 0 {
        return Err(Failure::usage(
            "--keys and --concurrency must be at least 1",
        ));
    }
    // Both size tables held in memory (the Zipf table, the task list):
    // beyond these, a typo would be an allocation failure, not a bench.
    if workload.keys > MAX_KEYS || workload.concurrency > MAX_CONCURRENCY {
        return Err(Failure::usage(format!(
            "--keys is at most {MAX_KEYS} and --concurrency at most {MAX_CONCURRENCY}"
        )));
    }
    // Checked before any value is built: `--value-size 100GiB` must be a
    // message, not an allocation failure.
    let cap = u64::from(cache.max_value_len());
    let largest = value(workload.keys.saturating_sub(1), 0).to_string().len() as u64;
    if (workload.value_size as u64).saturating_add(largest) > cap {
        return Err(Failure::usage(format!(
            "--value-size {} is above what this cache stores: entries are at most {} (encoded)",
            units::format_size(workload.value_size as u64),
            units::format_size(cap)
        )));
    }
    let bar = progress(json, Some(workload.keys), "loading keys");
    for i in 0..workload.keys {
        cache
            .set(&key(i), value(i, workload.value_size), Ttl::TierDefault)
            .await?;
        bar.inc(1);
    }
    bar.finish_and_clear();

    let (all, elapsed) = measure(cache, &workload, json).await?;
    let ops = vec![
        report("get", all.reads.clone(), elapsed),
        report("set", all.writes.clone(), elapsed),
    ];
    let tier_errors: u64 = cache
        .stats()
        .layers
        .iter()
        .map(|l| l.errors + l.write_errors)
        .sum();
    // The scratch stack holds nothing else; this empties a Redis namespace
    // that the scratch directories do not take with them.
    let cleared = cache.clear(ClearScope::All).await;
    let tiers: Vec<String> = cache.tiers().map(|t| t.name().to_owned()).collect();
    print_report(&workload, &tiers, elapsed, &ops, &all, tier_errors, json)?;
    cleared?;
    if all.errors > 0 {
        return Err(Failure::unavailable(format!(
            "{} writes failed",
            all.errors
        )));
    }
    Ok(())
}

fn elapsed_ns(began: Instant) -> u64 {
    u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs the workload's tasks until its duration is over.
async fn measure(
    cache: &TieredCache,
    workload: &Workload,
    json: bool,
) -> Result<(Samples, Duration), Failure> {
    let cdf = workload.zipf.then(|| Arc::new(zipf_cdf(workload.keys)));
    let started = Instant::now();
    let deadline = started + workload.duration;
    let mut tasks = Vec::with_capacity(workload.concurrency);
    for task in 0..workload.concurrency {
        let cache = cache.clone();
        let workload = workload.clone();
        let mut keys = Keys {
            cumulative: cdf.clone(),
            count: workload.keys,
            state: (task as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        };
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            while Instant::now() < deadline {
                let i = keys.next();
                let read = keys.next_u64() % 100 < u64::from(workload.read_percent);
                let began = Instant::now();
                if read {
                    let found = cache.get::<serde_json::Value>(&key(i)).await;
                    samples.reads.push(elapsed_ns(began));
                    if found.is_none() {
                        samples.misses += 1;
                    }
                } else {
                    let stored = cache
                        .set(&key(i), value(i, workload.value_size), Ttl::TierDefault)
                        .await;
                    samples.writes.push(elapsed_ns(began));
                    if stored.is_err() {
                        samples.errors += 1;
                    }
                }
            }
            samples
        }));
    }
    // Tasks finish together at the deadline, so the bar follows the clock.
    let bar = progress_over(json, workload.duration, "measuring");
    // On a thread of its own: the bench tasks may keep every runtime
    // worker busy without yielding until the deadline.
    if !bar.is_hidden() {
        let bar = bar.clone();
        std::thread::spawn(move || {
            while !bar.is_finished() {
                bar.set_position(started.elapsed().as_secs());
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }
    let mut all = Samples::default();
    for task in tasks {
        let samples = task
            .await
            .map_err(|e| Failure::unavailable(format!("a bench task failed: {e}")))?;
        all.reads.extend(samples.reads);
        all.writes.extend(samples.writes);
        all.misses += samples.misses;
        all.errors += samples.errors;
    }
    bar.finish_and_clear();
    Ok((all, started.elapsed()))
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    workload: &Workload,
    tiers: &[String],
    elapsed: Duration,
    ops: &[OpReport],
    all: &Samples,
    tier_errors: u64,
    json: bool,
) -> Outcome {
    let total = all.reads.len() + all.writes.len();
    if json {
        print_json(&serde_json::json!({
            "tiers": tiers,
            "duration_s": elapsed.as_secs_f64(),
            "concurrency": workload.concurrency,
            "keys": workload.keys,
            "value_size": workload.value_size,
            "read_percent": workload.read_percent,
            "distribution": if workload.zipf { "zipf" } else { "uniform" },
            "operations": ops,
            "misses": all.misses,
            "tier_errors": tier_errors,
        }))?;
    } else {
        emit(&format!(
            "{} over {} for {:.1} s: {} tasks, {} keys ({}), {} B values, {}% reads",
            total,
            tiers.join(" + "),
            elapsed.as_secs_f64(),
            workload.concurrency,
            workload.keys,
            if workload.zipf { "zipf" } else { "uniform" },
            workload.value_size,
            workload.read_percent
        ));
        let rows: Vec<Vec<String>> = ops
            .iter()
            .filter(|o| o.count > 0)
            .map(|o| {
                vec![
                    o.op.to_owned(),
                    o.count.to_string(),
                    format!("{:.0}", o.ops_per_sec),
                    format!("{:.1}", o.p50_us),
                    format!("{:.1}", o.p99_us),
                    format!("{:.1}", o.p999_us),
                    format!("{:.1}", o.max_us),
                ]
            })
            .collect();
        print_table(
            &[
                "op",
                "count",
                "ops/s",
                "p50 µs",
                "p99 µs",
                "p99.9 µs",
                "max µs",
            ],
            &rows,
        );
        emit(&format!(
            "read misses: {}, tier errors: {tier_errors}",
            all.misses
        ));
    }
    Ok(())
}
