//! Single-flight's scenarios through `get_or_fetch` over a real memory
//! tier, run two ways:
//!
//! - as tokio tests in every build (with the `memory` feature), so a change
//!   to `flight.rs` that breaks one fails the facade's library tests;
//! - under `--cfg shuttle` (`scripts/interleavings.sh`) as model checks: the
//!   flight map then locks with shuttle's mutex, and each scenario runs
//!   under many random schedules, with a switch of task possible at every
//!   join and removal of a flight and at every await of the fetch. A lost
//!   wake-up, a wedged key or a second fetch shows up as a deadlock, a step
//!   limit or a failed assertion, with the schedule that replays it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::FutureExt;
#[cfg(shuttle)]
use shuttle::future::{spawn, yield_now};
#[cfg(not(shuttle))]
use tokio::{spawn, task::yield_now};

use super::{Answer, Flights, Joined, wait};
use crate::{ErrorKind, Key, MemoryConfig, MemoryTier, TieredCache, Ttl};

/// Each scenario runs many times on tokio's two workers, since a race that
/// a single run misses is what the scenarios are about.
fn check<F: Future<Output = ()> + 'static>(scenario: fn() -> F) {
    tierstack_interleavings::check(50, scenario);
}

#[cfg(shuttle)]
type Task<T> = shuttle::future::JoinHandle<T>;
#[cfg(not(shuttle))]
type Task<T> = tokio::task::JoinHandle<T>;

#[derive(Debug, thiserror::Error)]
#[error("upstream answered 503")]
struct Upstream;

fn key() -> Key {
    Key::new("model:book", [("id", "1")])
}

fn cache() -> Arc<TieredCache> {
    let l1 = MemoryTier::new(&MemoryConfig::with_max_entries(100)).unwrap();
    Arc::new(TieredCache::builder().tier(l1).build())
}

/// The upstream: counts calls, and sees two fetches of the key running at
/// once, which single-flight exists to prevent.
#[derive(Default)]
struct Api {
    calls: AtomicUsize,
    running: AtomicUsize,
    overlapped: AtomicBool,
    /// The first call answers 503.
    fail_first: bool,
}

impl Api {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Marks a fetch as running until it ends, answered or dropped.
struct Running<'a>(&'a Api);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A fetch that awaits twice on the way, so the scheduler can run the
/// other callers in the middle of it.
async fn fetch(api: Arc<Api>) -> Result<String, Upstream> {
    let call = api.calls.fetch_add(1, Ordering::SeqCst);
    if api.running.fetch_add(1, Ordering::SeqCst) > 0 {
        api.overlapped.store(true, Ordering::SeqCst);
    }
    let _running = Running(&api);
    yield_now().await;
    yield_now().await;
    if api.fail_first && call == 0 {
        return Err(Upstream);
    }
    Ok("value".to_owned())
}

/// A bug in the user's fetch. `resume_unwind` unwinds without running the
/// panic hook, so shuttle does not take the panic for a failed schedule.
fn fetch_bug() -> Result<String, Upstream> {
    std::panic::resume_unwind(Box::new("fetch bug"))
}

fn call(cache: &Arc<TieredCache>, api: &Arc<Api>) -> Task<crate::Result<String>> {
    let (cache, api) = (Arc::clone(cache), Arc::clone(api));
    spawn(async move {
        cache
            .get_or_fetch(&key(), Ttl::TierDefault, |_| fetch(api))
            .await
            .map(|v| v.as_ref().clone())
    })
}

fn caller(cache: &Arc<TieredCache>, api: &Arc<Api>) -> Task<String> {
    let task = call(cache, api);
    spawn(async move { task.await.unwrap().unwrap() })
}

/// After the scenario: no two fetches ran at once, no flight is left, and
/// the key is not wedged: once invalidated, the next caller fetches again
/// and is answered.
async fn assert_not_wedged(cache: &Arc<TieredCache>, api: &Arc<Api>) {
    assert!(
        !api.overlapped.load(Ordering::SeqCst),
        "two fetches of one key ran at once"
    );
    // Every caller is done, so no flight may be left, even one the next
    // caller would replace.
    assert!(
        cache.inner.flights.is_idle(),
        "a flight outlived the scenario's callers"
    );
    cache.delete(&key()).await.unwrap();
    let before = api.calls();
    assert_eq!(caller(cache, api).await.unwrap(), "value");
    assert_eq!(api.calls(), before + 1, "the next miss did not fetch");
    assert!(
        cache.inner.flights.is_idle(),
        "a flight outlived its callers"
    );
}
/// Three callers of one cold key: exactly one fetch, in every order of
/// lookup, join, store and publish (a caller that joins just after the
/// leader published finds the value by its last look).
#[test]
fn three_callers_of_a_cold_key_fetch_it_once() {
    check(|| async {
        let (cache, api) = (cache(), Arc::new(Api::default()));
        let callers: Vec<_> = (0..3).map(|_| caller(&cache, &api)).collect();
        for c in callers {
            assert_eq!(c.await.unwrap(), "value");
        }
        assert_eq!(api.calls(), 1, "fetches for one cold key");
        assert_not_wedged(&cache, &api).await;
    });
}

/// A caller cancelled at any point (its future dropped, leader or not)
/// never strands the others: they are answered, at most one more fetch
/// runs for the leader that left, and the key stays usable.
#[test]
fn a_cancelled_caller_hands_the_flight_over() {
    check(|| async {
        let (cache, api) = (cache(), Arc::new(Api::default()));
        // The task that runs `get_or_fetch` itself, so that aborting it
        // drops the cache's future wherever it is.
        let quitter = call(&cache, &api);
        let stayers: Vec<_> = (0..2).map(|_| caller(&cache, &api)).collect();
        yield_now().await;
        quitter.abort();
        for c in stayers {
            assert_eq!(c.await.unwrap(), "value");
        }
        let _ = quitter.await;
        let n = api.calls();
        assert!((1..=2).contains(&n), "{n} fetches for one cold key");
        assert_not_wedged(&cache, &api).await;
    });
}

/// The leader's fetch panics: the panic reaches that caller, the callers
/// waiting on it get `FetchPanicked` (or, if they came after, the value of
/// a new leader), and the key stays usable.
#[test]
fn a_panicking_leader_answers_its_waiters_and_frees_the_key() {
    check(|| async {
        let (cache, api) = (cache(), Arc::new(Api::default()));
        let panicker = {
            let (cache, api) = (Arc::clone(&cache), Arc::clone(&api));
            spawn(async move {
                let k = key();
                let call = cache.get_or_fetch(&k, Ttl::TierDefault, |_| async move {
                    api.calls.fetch_add(1, Ordering::SeqCst);
                    yield_now().await;
                    fetch_bug()
                });
                AssertUnwindSafe(call)
                    .catch_unwind()
                    .await
                    .map(|r| r.map(drop))
            })
        };
        let others: Vec<_> = (0..2)
            .map(|_| {
                let (cache, api) = (Arc::clone(&cache), Arc::clone(&api));
                spawn(async move {
                    cache
                        .get_or_fetch(&key(), Ttl::TierDefault, |_| fetch(api))
                        .await
                })
            })
            .collect();
        let outcome = panicker.await.unwrap();
        // The panicking fetch ran only if this caller led; a caller that
        // came after another's fetch gets that value.
        assert!(
            matches!(outcome, Err(_) | Ok(Ok(()))),
            "the panicker got {outcome:?}"
        );
        let mut panics_seen = 0;
        for c in others {
            match c.await.unwrap() {
                Ok(v) => assert_eq!(*v, "value"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::FetchPanicked, "{e}");
                    panics_seen += 1;
                }
            }
        }
        if outcome.is_ok() {
            assert_eq!(
                panics_seen, 0,
                "a panic reported without a panicking leader"
            );
        }
        assert_not_wedged(&cache, &api).await;
    });
}

/// The first fetch fails: the callers waiting on it get the error (errors
/// are not cached), the callers after it retry behind one new leader at a
/// time, and the old leader's guard never removes the new leader's flight.
#[test]
fn after_a_failed_fetch_one_leader_at_a_time_retries() {
    check(|| async {
        let cache = cache();
        let api = Arc::new(Api {
            fail_first: true,
            ..Api::default()
        });
        let calls: Vec<_> = (0..4).map(|_| call(&cache, &api)).collect();
        for c in calls {
            match c.await.unwrap() {
                Ok(v) => assert_eq!(v, "value"),
                Err(e) => assert_eq!(e.kind(), ErrorKind::Fetch, "{e}"),
            }
        }
        assert!(api.calls() >= 1);
        assert_not_wedged(&cache, &api).await;
    });
}

/// The leader's two ways out, on the flight map itself: publishing hands
/// every waiter the result; leaving without one (its future dropped) hands
/// them `None`, to try again. Either way the key's flight is gone at once.
#[test]
fn a_leader_publishes_to_every_waiter_or_leaves_them_to_retry() {
    check(|| async {
        let flights = Flights::default();
        let k = key();
        let Joined::Leader(leader) = flights.join(&k) else {
            panic!("the first caller of a key leads")
        };
        let waiters: Vec<_> = (0..2)
            .map(|_| match flights.join(&k) {
                Joined::Waiter(rx) => spawn(wait(rx)),
                Joined::Leader(_) => panic!("a second leader while the first is in the air"),
            })
            .collect();
        leader.publish(Ok(Answer {
            value: None,
            stale: true,
        }));
        assert!(flights.is_idle(), "the flight outlived its publication");
        for w in waiters {
            match w.await.unwrap() {
                Some(Ok(answer)) => assert!(answer.stale && answer.value.is_none()),
                other => panic!("a waiter got {other:?} instead of the result"),
            }
        }

        let Joined::Leader(leader) = flights.join(&k) else {
            panic!("a key whose flight ended is led again")
        };
        let Joined::Waiter(rx) = flights.join(&k) else {
            panic!("a second leader while the first is in the air")
        };
        drop(leader);
        assert!(flights.is_idle(), "a leader that left kept its flight");
        assert!(wait(rx).await.is_none(), "a waiter of a leader that left");
    });
}
