//! Chaos: 32 tasks call `get_or_fetch` in a loop over a Redis tier while
//! the server is killed (SIGKILL) and restarted 10 s later, then paused
//! (SIGSTOP) for 5 s. No caller may see an error, every call must return
//! the right value (from Redis or the fetch), and the tier must be used
//! again soon after the server is back: the recovery is the time until
//! the server itself holds an entry written after its return (a `DBSIZE`
//! over a separate connection, starting from an empty database), not a
//! counter of the tier, which also counts writes the open breaker drops.
//! The documented figures are asserted with a margin: the p99 of calls
//! during each outage below [`OUTAGE_P99_LIMIT`], the worst single call
//! within two response timeouts and [`SCHEDULING_MARGIN`], recovery within
//! [`RECOVERY_LIMIT`]. They are printed too; run with `--nocapture`:
//!
//! ```sh
//! cargo test -p tierstack-redis --release --test chaos -- --nocapture
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tierstack::{Key, Tier, TieredCache, Ttl};
use tierstack_conformance::redis_server::{RedisServer, redis_cli, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier};

const TASKS: u64 = 32;
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// While the breaker is open it answers without Redis, in microseconds;
/// without it, a paused server holds each call for a response timeout.
const OUTAGE_P99_LIMIT: Duration = Duration::from_millis(10);
/// A call that read and wrote before the circuit opened waits for two
/// response timeouts; this is what a loaded 2-core machine may add.
const SCHEDULING_MARGIN: Duration = Duration::from_millis(250);
/// The breaker's cooldown (1 s) plus a reconnect and a first write.
const RECOVERY_LIMIT: Duration = Duration::from_secs(2);

/// One call: when it started (since the test began), how long it took.
struct Sample {
    at: Duration,
    took: Duration,
}

/// The `permille`/1000 quantile (nearest rank).
fn percentile(mut values: Vec<Duration>, permille: usize) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.sort();
    let rank = (values.len() * permille).div_ceil(1000);
    values[rank.clamp(1, values.len()) - 1]
}

/// Callers and what they saw.
struct Load {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicU64>,
    wrong: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Vec<Sample>>>,
}

/// Starts `TASKS` tasks calling `get_or_fetch` on random keys until stopped.
fn start_load(cache: &TieredCache, start: Instant) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for task in 0..TASKS {
        let (cache, stop, errors, wrong) = (
            cache.clone(),
            Arc::clone(&stop),
            Arc::clone(&errors),
            Arc::clone(&wrong),
        );
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut seed = task.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while !stop.load(Ordering::Relaxed) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let n = seed % 5_000;
                let key = Key::new("chaos", [("n", n.to_string())]);
                let began = Instant::now();
                let result = cache
                    .get_or_fetch::<u64, _, _, std::io::Error>(
                        &key,
                        Ttl::TierDefault,
                        |_| async move { Ok(n * 7) },
                    )
                    .await;
                samples.push(Sample {
                    at: began - start,
                    took: began.elapsed(),
                });
                match result {
                    Ok(value) if *value == n * 7 => {}
                    Ok(_) => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::task::yield_now().await;
            }
            samples
        }));
    }
    Load {
        stop,
        errors,
        wrong,
        workers,
    }
}

/// Entries in the server's database, asked over a connection of its own.
async fn dbsize(url: &str) -> redis::RedisResult<u64> {
    let client = redis::Client::open(url)?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("DBSIZE").query_async(&mut connection).await
}

/// Polls the server until it holds an entry: a write that went through
/// the tier after the server came back to an empty database.
async fn recovery(url: &str, since: Instant) -> Duration {
    loop {
        if matches!(dbsize(url).await, Ok(n) if n > 0) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "no write reached the server within 10 s of its return"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// While the circuit is open the breaker answers, so nearly every call
/// during an outage is fast.
fn assert_answered_by_the_breaker(outage: &str, calls: &[Duration]) {
    let p99 = percentile(calls.to_vec(), 990);
    assert!(
        p99 < OUTAGE_P99_LIMIT,
        "p99 during the {outage} outage was {p99:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_never_see_redis_fail() {
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url())
        .prefix(unique_prefix("chaos"))
        .response_timeout(RESPONSE_TIMEOUT);
    let tier = Arc::new(RedisTier::open(&config, 1).await.unwrap());
    let cache = TieredCache::builder()
        .shared_tier(Arc::clone(&tier) as Arc<dyn Tier>)
        .build();

    let start = Instant::now();
    let load = start_load(&cache, start);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = start.elapsed();
    server.kill();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarting = Instant::now();
    server.restart();
    let restarted = start.elapsed();
    // Started again without persistence: the database is empty.
    let after_restart = recovery(server.url(), restarting).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let paused = start.elapsed();
    server.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resuming = Instant::now();
    server.resume();
    // Emptied at once, so that only writes made after the pause count.
    redis_cli(server.port(), &["FLUSHALL", "SYNC"]);
    let resumed = start.elapsed();
    let after_resume = recovery(server.url(), resuming).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    load.stop.store(true, Ordering::Relaxed);
    let (errors, wrong) = (load.errors, load.wrong);

    let mut samples = Vec::new();
    for worker in load.workers {
        samples.extend(worker.await.unwrap());
    }
    let during = |from: Duration, to: Duration| -> Vec<Duration> {
        samples
            .iter()
            .filter(|s| s.at >= from && s.at < to)
            .map(|s| s.took)
            .collect()
    };
    let before = during(Duration::ZERO, killed);
    let kill_outage = during(killed, restarted);
    let pause_outage = during(paused, resumed);
    let unavailable = tier.stats().unavailable;

    println!(
        "chaos: {} calls from {TASKS} tasks in {:?}",
        samples.len(),
        start.elapsed()
    );
    println!(
        "  errors seen by callers: {}, wrong values: {}",
        errors.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed)
    );
    println!("  p99 before the outage: {:?}", percentile(before, 990));
    println!(
        "  SIGKILL for 10 s: {} calls, p50 {:?}, p99 {:?}, max {:?}; tier used again {:?} after the server was started again",
        kill_outage.len(),
        percentile(kill_outage.clone(), 500),
        percentile(kill_outage.clone(), 990),
        percentile(kill_outage.clone(), 1000),
        after_restart
    );
    println!(
        "  SIGSTOP for 5 s: {} calls, p50 {:?}, p99 {:?}, max {:?}; tier used again {:?} after SIGCONT",
        pause_outage.len(),
        percentile(pause_outage.clone(), 500),
        percentile(pause_outage.clone(), 990),
        percentile(pause_outage.clone(), 1000),
        after_resume
    );
    println!("  calls the circuit breaker answered without Redis: {unavailable}");
    println!(
        "  asserted: p99 during an outage < {OUTAGE_P99_LIMIT:?}, worst call <= {:?}, recovery < {RECOVERY_LIMIT:?}",
        RESPONSE_TIMEOUT * 2 + SCHEDULING_MARGIN
    );

    assert_eq!(errors.load(Ordering::Relaxed), 0, "errors reached callers");
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong values");
    assert!(!kill_outage.is_empty() && !pause_outage.is_empty());
    assert!(unavailable > 0, "the breaker never opened");
    assert!(
        after_restart < RECOVERY_LIMIT,
        "a write reached the restarted server only after {after_restart:?}"
    );
    assert!(
        after_resume < RECOVERY_LIMIT,
        "a write reached the resumed server only after {after_resume:?}"
    );
    assert_answered_by_the_breaker("SIGKILL", &kill_outage);
    assert_answered_by_the_breaker("SIGSTOP", &pause_outage);
    let worst = percentile(during(killed, resumed + Duration::from_secs(1)), 1000);
    assert!(
        worst <= RESPONSE_TIMEOUT * 2 + SCHEDULING_MARGIN,
        "a call took {worst:?}"
    );
}
