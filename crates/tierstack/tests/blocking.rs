//! The blocking API: a cache for synchronous programs, with a runtime
//! thread of its own, that works from plain threads and from inside Tokio
//! runtimes of both flavours.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tierstack::{
    Config, ErrorKind, FetchOptions, Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, Ttl,
    blocking,
};

/// The RFC's flat config: memory over SQLite in `dir`.
fn rfc_config(dir: &std::path::Path) -> Config {
    let yaml = format!(
        "cache:\n  enabled: true\n  file_ttl_days: 7\n  memory_ttl_seconds: 3600\n  max_memory_entries: 1000\n  location: {:?}\n",
        dir.display().to_string()
    );
    Config::parse(&yaml, "yaml").expect("config")
}

fn never_called<T>(_: tierstack::FetchContext) -> Result<T, std::io::Error> {
    panic!("the value is cached; the fetch must not run")
}

/// What every flavour of caller must be able to do, on a cache over a real
/// SQLite file: fetch once, hit, write, delete, and leave the written
/// value on disk for the next process.
fn exercise(dir: &std::path::Path) {
    let config = rfc_config(dir);
    let cache = blocking::TieredCache::from_config(&config).expect("cache");
    let key = Key::new("pathinfo", [("path", "/books/dune")]);
    let fetches = AtomicU32::new(0);
    let fetch = |_| {
        fetches.fetch_add(1, Ordering::SeqCst);
        Ok::<_, std::io::Error>("BOOKS/DUNE".to_owned())
    };
    let first: Arc<String> = cache
        .get_or_fetch(&key, Ttl::TierDefault, fetch)
        .expect("fetched");
    assert_eq!(*first, "BOOKS/DUNE");
    let again: Arc<String> = cache
        .get_or_fetch(&key, Ttl::TierDefault, never_called)
        .expect("cached");
    assert!(Arc::ptr_eq(&first, &again), "the second call is an L1 hit");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    let other = Key::new("pathinfo", [("path", "/books/emma")]);
    cache
        .set(&other, "BOOKS/EMMA".to_owned(), Ttl::TierDefault)
        .expect("set");
    assert_eq!(
        cache.get::<String>(&other).as_deref().map(String::as_str),
        Some("BOOKS/EMMA")
    );
    assert!(cache.delete(&other).expect("delete"));
    assert_eq!(cache.get::<String>(&other), None);
    let stats = cache.stats();
    assert_eq!(stats.layer("sqlite").expect("sqlite layer").writes, 2);
    drop(cache);

    // A new cache (its memory tier empty) finds the fetched value in the
    // file: the runtime thread's shutdown lost no write.
    let reopened = blocking::TieredCache::from_config(&config).expect("reopened");
    assert_eq!(
        reopened.get::<String>(&key).as_deref().map(String::as_str),
        Some("BOOKS/DUNE")
    );
    assert_eq!(reopened.stats().layer("sqlite").expect("layer").hits, 1);
}

#[test]
fn a_program_without_a_runtime_fetches_hits_writes_and_deletes() {
    let dir = tempfile::tempdir().expect("dir");
    exercise(dir.path());
}

#[tokio::test(flavor = "current_thread")]
async fn calls_from_inside_a_current_thread_runtime_neither_deadlock_nor_panic() {
    let dir = tempfile::tempdir().expect("dir");
    exercise(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_from_inside_a_multi_thread_runtime_neither_deadlock_nor_panic() {
    let dir = tempfile::tempdir().expect("dir");
    exercise(dir.path());
}

/// Inside one Tokio task, every call draws on that task's cooperative
/// budget unless the cache opts out; once spent, the SQLite writer's reply
/// would never be taken and the loop would spin. A watchdog turns that
/// hang into a failure.
#[tokio::test(flavor = "current_thread")]
async fn many_calls_within_one_task_do_not_exhaust_its_budget() {
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !done.load(Ordering::SeqCst) {
                if Instant::now() > deadline {
                    eprintln!("500 blocking writes inside one task did not finish in 120 s");
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let dir = tempfile::tempdir().expect("dir");
    // `synchronous: full` sends every write through the writer thread and
    // awaits its reply on a Tokio channel, a budgeted resource.
    let yaml = format!(
        "cache:\n  tiers:\n    - kind: sqlite\n      path: {:?}\n      synchronous: full\n",
        dir.path().join("full.db").display().to_string()
    );
    let config = Config::parse(&yaml, "yaml").expect("config");
    let cache = blocking::TieredCache::from_config(&config).expect("cache");
    for i in 0..500 {
        let key = Key::new("pathinfo", [("path", format!("/{i}"))]);
        cache.set(&key, i, Ttl::TierDefault).expect("set");
    }
    done.store(true, Ordering::SeqCst);
    watchdog.join().expect("watchdog");
    assert_eq!(cache.stats().layer("sqlite").expect("layer").writes, 500);
}

#[test]
fn threads_asking_for_one_cold_key_share_one_fetch() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = blocking::TieredCache::from_config(&rfc_config(dir.path())).expect("cache");
    let key = Key::new("pathinfo", [("path", "/slow")]);
    let fetches = AtomicU32::new(0);
    let threads = 4;
    let barrier = Barrier::new(threads);
    let values: Vec<Arc<String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    cache
                        .get_or_fetch(&key, Ttl::TierDefault, |_| {
                            fetches.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(300));
                            Ok::<_, std::io::Error>("slow".to_owned())
                        })
                        .expect("value")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch for {threads} threads"
    );
    assert!(values.iter().all(|v| **v == "slow"));
}

/// The wait for another caller's fetch is bounded by the hard timeout: the
/// timer runs on the cache's runtime while the caller's thread blocks.
#[test]
fn a_hard_timeout_bounds_the_wait_for_another_threads_fetch() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = blocking::TieredCache::from_config(&rfc_config(dir.path())).expect("cache");
    let key = Key::new("pathinfo", [("path", "/slower")]);
    let started = Barrier::new(2);
    std::thread::scope(|s| {
        let leader = s.spawn(|| {
            cache
                .get_or_fetch(&key, Ttl::TierDefault, |_| {
                    started.wait();
                    std::thread::sleep(Duration::from_millis(1500));
                    Ok::<_, std::io::Error>("late".to_owned())
                })
                .expect("the leader's own fetch")
        });
        started.wait();
        let asked = Instant::now();
        let waited = cache.get_or_fetch(
            &key,
            FetchOptions::ttl(Ttl::TierDefault).hard_timeout(Duration::from_millis(100)),
            never_called::<String>,
        );
        let took = asked.elapsed();
        let error = waited.expect_err("the follower gives up at its hard timeout");
        assert_eq!(error.kind(), ErrorKind::Timeout, "{}", error.report());
        assert!(took < Duration::from_secs(1), "gave up after {took:?}");
        assert_eq!(*leader.join().expect("leader"), "late");
    });
}

#[test]
fn a_fetch_may_call_the_cache_again() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = blocking::TieredCache::from_config(&rfc_config(dir.path())).expect("cache");
    let inner = Key::new("pathinfo", [("path", "/inner")]);
    let outer = Key::new("pathinfo", [("path", "/outer")]);
    let value: Arc<String> = cache
        .get_or_fetch(&outer, Ttl::TierDefault, |_| {
            let part: Arc<String> = cache.get_or_fetch(&inner, Ttl::TierDefault, |_| {
                Ok::<_, std::io::Error>("inner".to_owned())
            })?;
            Ok::<_, tierstack::Error>(format!("outer({part})"))
        })
        .expect("value");
    assert_eq!(*value, "outer(inner)");
    assert_eq!(
        cache.get::<String>(&inner).as_deref().map(String::as_str),
        Some("inner")
    );
}

#[test]
fn a_fetch_asking_for_its_own_key_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = blocking::TieredCache::from_config(&rfc_config(dir.path())).expect("cache");
    let key = Key::new("pathinfo", [("path", "/same")]);
    let outcome: tierstack::Result<Arc<String>> =
        cache.get_or_fetch(&key, Ttl::TierDefault, |_| {
            let inner: tierstack::Result<Arc<String>> =
                cache.get_or_fetch(&key, Ttl::TierDefault, never_called);
            let error = inner.expect_err("the inner call is refused");
            assert_eq!(error.kind(), ErrorKind::Fetch);
            assert!(error.to_string().contains("same key"), "{}", error.report());
            Ok::<_, std::io::Error>("outer".to_owned())
        });
    assert_eq!(*outcome.expect("the outer fetch goes on"), "outer");
    // The mark is gone once the fetch returned: the key is a plain hit now.
    let again: Arc<String> = cache
        .get_or_fetch(&key, Ttl::TierDefault, never_called)
        .expect("cached");
    assert_eq!(*again, "outer");
}

#[test]
fn a_location_that_is_a_file_is_a_config_error_saying_so() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"keep me").expect("file");
    let error = blocking::TieredCache::from_config(&rfc_config(&file))
        .expect_err("a file is not a location");
    assert_eq!(error.kind(), ErrorKind::Config);
    let message = error.to_string();
    assert!(
        message.contains("cache.location") && message.contains("is not a directory"),
        "{message}"
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}

#[test]
fn an_l1_hit_is_answered_on_the_callers_thread_without_allocating() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("l2.db");
    let cache = blocking::TieredCache::build(|| async {
        tierstack::TieredCache::builder()
            .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100))?)
            .tier(SqliteTier::open(&SqliteConfig::new(path), 1).await?)
            .try_build()
    })
    .expect("cache");
    let key = Key::new("books", [("id", "1")]);
    cache
        .set(&key, "Dune".to_owned(), Duration::from_secs(3600))
        .expect("set");
    assert!(
        cache.get::<String>(&key).is_some(),
        "warm the thread's counters"
    );
    let mut hits = 0;
    let info = allocation_counter::measure(|| {
        for _ in 0..1000 {
            if cache.get::<String>(&key).is_some() {
                hits += 1;
            }
        }
    });
    assert_eq!(hits, 1000);
    assert_eq!(info.count_total, 0, "1000 blocking L1 hits allocated");
}

#[tokio::test(flavor = "current_thread")]
async fn the_async_cache_underneath_shares_entries_with_the_blocking_one() {
    let dir = tempfile::tempdir().expect("dir");
    let cache = blocking::TieredCache::from_config(&rfc_config(dir.path())).expect("cache");
    let key = Key::new("pathinfo", [("path", "/shared")]);
    cache
        .set(&key, "from sync".to_owned(), Ttl::TierDefault)
        .expect("set");
    let seen = cache.as_async().get::<String>(&key).await;
    assert_eq!(seen.as_deref().map(String::as_str), Some("from sync"));
}

#[test]
fn a_cache_that_cannot_be_built_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().expect("dir");
    // A directory where the SQLite file should be.
    let location = dir.path().join("cache");
    std::fs::create_dir_all(location.join("metadata.db")).expect("dir in the way");
    let result = blocking::TieredCache::from_config(&rfc_config(&location));
    let error = result.expect_err("no cache over a directory");
    assert!(
        error.report().to_string().contains("metadata.db"),
        "the error names the file: {}",
        error.report()
    );
}
