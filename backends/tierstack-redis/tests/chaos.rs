//! Chaos: 32 tasks call `get_or_fetch` in a loop over a Redis tier while
//! the server is killed (SIGKILL) and restarted 10 s later, then paused
//! (SIGSTOP) for 5 s. No caller may see an error, every call must return
//! the right value (from Redis or the fetch), and the tier must be used
//! again soon after the server is back. The figures (p99 latency during
//! each outage, recovery time) are printed; run with `--nocapture`:
//!
//! ```sh
//! cargo test -p tierstack-redis --release --test chaos -- --nocapture
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tierstack::{Key, Tier, TieredCache, Ttl};
use tierstack_conformance::redis_server::{RedisServer, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier};

const TASKS: u64 = 32;
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

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

/// Polls until the tier answers a read or stores a write again.
async fn recovery(cache: &TieredCache, since: Instant) -> Duration {
    let writes = |c: &TieredCache| {
        let layer = &c.stats().layers[0];
        layer.hits + layer.writes
    };
    let before = writes(cache);
    loop {
        if writes(cache) > before {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the tier was not used again within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
    let after_restart = recovery(&cache, restarting).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let paused = start.elapsed();
    server.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let resuming = Instant::now();
    server.resume();
    let resumed = start.elapsed();
    let after_resume = recovery(&cache, resuming).await;
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
        "  target: p99 during an outage <= response timeout + 10 ms = {:?}",
        RESPONSE_TIMEOUT + Duration::from_millis(10)
    );

    assert_eq!(errors.load(Ordering::Relaxed), 0, "errors reached callers");
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "wrong values");
    assert!(!kill_outage.is_empty() && !pause_outage.is_empty());
    assert!(unavailable > 0, "the breaker never opened");
    assert!(after_restart < Duration::from_secs(2), "{after_restart:?}");
    assert!(after_resume < Duration::from_secs(2), "{after_resume:?}");
    // Bounded by the response timeout (the figure above is the one to
    // compare with the target; this bound only catches a hang).
    let worst = percentile(during(killed, resumed + Duration::from_secs(1)), 1000);
    assert!(worst < RESPONSE_TIMEOUT * 4, "a call took {worst:?}");
}
