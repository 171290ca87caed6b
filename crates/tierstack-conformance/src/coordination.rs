//! The behaviour every [`Coordinator`] shows, run on a real store.
//!
//! A backend's test file builds two tiers on one store (two connections,
//! two handles: as two processes would) and calls
//! [`coordination_suite!`](crate::coordination_suite); each case gets a
//! fresh, empty store. Owners, keys, buckets and circuits are named with
//! `{` and `}` in them, so the suite on a Redis Cluster also shows that no
//! operation depends on hash tags.
//!
//! Times are asserted with margins meant for a loaded two-core machine;
//! every case still fails when the rule it checks is broken.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tierstack::{CircuitState, ClearScope, Coordinator, Key, LeaseOwner, Rate, Spend, Tier};

use crate::cases::entry;

/// Two handles on one store, each with its coordinator, plus whatever must
/// live as long as they (a temporary directory, a server guard).
pub struct CoordinationHarness {
    /// The first handle's tier.
    pub first_tier: Arc<dyn Tier>,
    /// The first handle's coordinator.
    pub first: Arc<dyn Coordinator>,
    /// The second handle's coordinator, on the same store.
    pub second: Arc<dyn Coordinator>,
    guards: Vec<Box<dyn Any + Send + Sync>>,
}

impl CoordinationHarness {
    /// Two tiers opened on one empty store.
    ///
    /// # Panics
    /// If either tier offers no coordinator.
    pub fn new(first: Arc<dyn Tier>, second: Arc<dyn Tier>) -> Self {
        let coordinator = |tier: &Arc<dyn Tier>| {
            tier.coordinator()
                .unwrap_or_else(|| panic!("tier {} offers no coordinator", tier.name()))
        };
        Self {
            first: coordinator(&first),
            second: coordinator(&second),
            guards: vec![Box::new(second)],
            first_tier: first,
        }
    }

    /// Keeps `guard` alive until the case ends.
    #[must_use]
    pub fn keep(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guards.push(Box::new(guard));
        self
    }
}

/// Expands to one `#[tokio::test]` per coordination case. `$make` is an
/// async function returning a [`CoordinationHarness`] on an empty store.
#[macro_export]
macro_rules! coordination_suite {
    ($make:expr) => {
        $crate::coordination_suite!(@cases $make;
            one_of_two_owners_wins_a_lease,
            only_the_owner_renews_a_lease,
            only_the_owner_releases_a_lease,
            an_expired_lease_passes_to_another_owner,
            wait_released_wakes_promptly_after_release,
            wait_released_times_out_while_held_and_wakes_on_expiry,
            spends_are_spaced_at_the_rate,
            a_burst_is_granted_at_once,
            concurrent_spenders_share_one_budget,
            a_circuit_opens_then_lets_one_probe,
            a_shorter_open_period_never_shortens_a_circuit,
            a_failed_probe_opens_the_circuit_again,
            coordination_state_is_not_an_entry,
        );
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness: $crate::coordination::CoordinationHarness = ($make)().await;
                $crate::coordination::$case(harness).await;
            }
        )*
    };
}

/// A key with hash-tag braces in both its source and its value.
fn lease_key(name: &str) -> Key {
    Key::new("coord{api}", [("id", format!("{{{name}}}"))])
}

fn rate(count: u32, burst: u32) -> Rate {
    Rate::new(count, Duration::from_secs(1))
        .and_then(|r| r.with_burst(burst))
        .unwrap()
}

fn granted(spend: Spend) -> Duration {
    match spend {
        Spend::Granted(wait) => wait,
        Spend::Denied(wait) => panic!("expected a grant, denied with {wait:?} to wait"),
    }
}

fn open_for(state: CircuitState) -> Duration {
    match state {
        CircuitState::Open(left) => left,
        other => panic!("expected an open circuit, got {other:?}"),
    }
}

fn probing_for(state: CircuitState) -> Duration {
    match state {
        CircuitState::Probing(left) => left,
        other => panic!("expected another caller's probe, got {other:?}"),
    }
}

/// Two owners on two handles race for each of 20 keys: exactly one wins
/// each, and the winner cannot take its own lease twice.
pub async fn one_of_two_owners_wins_a_lease(h: CoordinationHarness) {
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    let ttl = Duration::from_secs(30);
    for n in 0..20 {
        let key = lease_key(&format!("race-{n}"));
        let (won_a, won_b) = tokio::join!(
            h.first.acquire(&key, &a, ttl),
            h.second.acquire(&key, &b, ttl)
        );
        let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
        assert!(won_a ^ won_b, "key {n}: a won {won_a}, b won {won_b}");
        let winner = if won_a { &a } else { &b };
        assert!(
            !h.first.acquire(&key, winner, ttl).await.unwrap(),
            "a held lease is not taken again, even by its owner"
        );
    }
}

/// The owner's renew extends the lease past its first TTL; another owner's
/// renew fails and changes nothing.
pub async fn only_the_owner_renews_a_lease(h: CoordinationHarness) {
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    let key = lease_key("renew");
    assert!(
        h.first
            .acquire(&key, &a, Duration::from_millis(400))
            .await
            .unwrap()
    );
    assert!(
        !h.second
            .renew(&key, &b, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        h.first
            .renew(&key, &a, Duration::from_secs(30))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !h.second
            .acquire(&key, &b, Duration::from_secs(30))
            .await
            .unwrap(),
        "the renewed lease outlived its first TTL"
    );
    assert!(
        h.second
            .renew(&key, &a, Duration::from_secs(30))
            .await
            .unwrap(),
        "the owner renews through any handle"
    );
}

/// Another owner's release leaves the lease alone; the owner's frees it.
pub async fn only_the_owner_releases_a_lease(h: CoordinationHarness) {
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    let key = lease_key("release");
    let ttl = Duration::from_secs(30);
    assert!(h.first.acquire(&key, &a, ttl).await.unwrap());
    h.second.release(&key, &b).await.unwrap();
    assert!(!h.second.acquire(&key, &b, ttl).await.unwrap());
    assert!(h.first.renew(&key, &a, ttl).await.unwrap());
    h.first.release(&key, &a).await.unwrap();
    assert!(h.second.acquire(&key, &b, ttl).await.unwrap());
    // Releasing what one does not hold (any more) is not an error.
    h.first.release(&key, &a).await.unwrap();
    h.first.release(&lease_key("never"), &a).await.unwrap();
    assert!(!h.first.acquire(&key, &a, ttl).await.unwrap());
}

/// After the TTL another owner takes over; the old owner can neither renew
/// nor release the new owner's lease.
pub async fn an_expired_lease_passes_to_another_owner(h: CoordinationHarness) {
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    let key = lease_key("expiry");
    assert!(
        h.first
            .acquire(&key, &a, Duration::from_millis(200))
            .await
            .unwrap()
    );
    assert!(
        !h.second
            .acquire(&key, &b, Duration::from_secs(30))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        h.second
            .acquire(&key, &b, Duration::from_secs(30))
            .await
            .unwrap(),
        "an expired lease is free"
    );
    assert!(
        !h.first
            .renew(&key, &a, Duration::from_secs(30))
            .await
            .unwrap()
    );
    h.first.release(&key, &a).await.unwrap();
    assert!(
        !h.first
            .acquire(&key, &a, Duration::from_secs(30))
            .await
            .unwrap(),
        "the old owner's release left the new owner's lease alone"
    );
    assert!(
        h.second
            .renew(&key, &b, Duration::from_secs(30))
            .await
            .unwrap()
    );
}

/// A waiter on another handle sees a release well within a second; a free
/// key is free at once.
pub async fn wait_released_wakes_promptly_after_release(h: CoordinationHarness) {
    let a = LeaseOwner::random();
    let key = lease_key("wait");
    let started = Instant::now();
    assert!(
        h.second
            .wait_released(&key, Duration::from_secs(5))
            .await
            .unwrap()
    );
    assert!(started.elapsed() < Duration::from_secs(1));

    assert!(
        h.first
            .acquire(&key, &a, Duration::from_secs(30))
            .await
            .unwrap()
    );
    let holder = Arc::clone(&h.first);
    let (releaser_key, releaser_owner) = (key.clone(), a.clone());
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        holder
            .release(&releaser_key, &releaser_owner)
            .await
            .unwrap();
        Instant::now()
    });
    let started = Instant::now();
    let free = h
        .second
        .wait_released(&key, Duration::from_secs(10))
        .await
        .unwrap();
    let woke = Instant::now();
    let released = releaser.await.unwrap();
    assert!(free);
    assert!(
        woke.duration_since(started) >= Duration::from_millis(150),
        "returned before the release: {:?}",
        woke.duration_since(started)
    );
    assert!(
        woke.saturating_duration_since(released) < Duration::from_secs(1),
        "woke {:?} after the release",
        woke.saturating_duration_since(released)
    );
}

/// While the lease is held the wait gives up after its timeout with
/// `false`; a lease that expires (nobody released it) ends the wait too.
pub async fn wait_released_times_out_while_held_and_wakes_on_expiry(h: CoordinationHarness) {
    let a = LeaseOwner::random();
    let key = lease_key("held");
    assert!(
        h.first
            .acquire(&key, &a, Duration::from_secs(30))
            .await
            .unwrap()
    );
    let started = Instant::now();
    let free = h
        .second
        .wait_released(&key, Duration::from_millis(300))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(!free);
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
        "{waited:?}"
    );

    let key = lease_key("expires");
    assert!(
        h.first
            .acquire(&key, &a, Duration::from_millis(300))
            .await
            .unwrap()
    );
    let started = Instant::now();
    assert!(
        h.second
            .wait_released(&key, Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// Rate 10/s, burst 1: the first spend goes at once, the next is told to
/// wait about 100 ms, one that may wait less than the next slot is denied
/// and spends nothing.
pub async fn spends_are_spaced_at_the_rate(h: CoordinationHarness) {
    let bucket = "api{search}";
    let rate = rate(10, 1);
    let max_wait = Duration::from_millis(150);
    assert_eq!(
        h.first.spend(bucket, rate, max_wait).await.unwrap(),
        Spend::Granted(Duration::ZERO)
    );
    let second = granted(h.second.spend(bucket, rate, max_wait).await.unwrap());
    assert!(
        second > Duration::from_millis(50) && second <= Duration::from_millis(100),
        "{second:?}"
    );
    let denied = match h.first.spend(bucket, rate, max_wait).await.unwrap() {
        Spend::Denied(wait) => wait,
        Spend::Granted(wait) => panic!("granted with {wait:?} to wait, beyond max_wait"),
    };
    assert!(
        denied > max_wait && denied <= Duration::from_millis(200),
        "{denied:?}"
    );
    // The denial reserved nothing: the next slot is still the third one.
    let third = granted(
        h.second
            .spend(bucket, rate, Duration::from_secs(1))
            .await
            .unwrap(),
    );
    assert!(
        third > Duration::from_millis(100) && third <= Duration::from_millis(200),
        "{third:?}"
    );
    // Another bucket is another budget.
    assert_eq!(
        h.first.spend("api{}other", rate, max_wait).await.unwrap(),
        Spend::Granted(Duration::ZERO)
    );
}

/// Burst 3: three requests go at once, the fourth waits one interval.
pub async fn a_burst_is_granted_at_once(h: CoordinationHarness) {
    let bucket = "burst}{";
    let rate = rate(10, 3);
    let no_wait = Duration::ZERO;
    for n in 0..3 {
        let coordinator = if n % 2 == 0 { &h.first } else { &h.second };
        assert_eq!(
            coordinator.spend(bucket, rate, no_wait).await.unwrap(),
            Spend::Granted(Duration::ZERO),
            "request {n} of the burst"
        );
    }
    assert!(matches!(
        h.first.spend(bucket, rate, no_wait).await.unwrap(),
        Spend::Denied(_)
    ));
    let fourth = granted(
        h.second
            .spend(bucket, rate, Duration::from_secs(1))
            .await
            .unwrap(),
    );
    assert!(
        fourth > Duration::from_millis(50) && fourth <= Duration::from_millis(100),
        "{fourth:?}"
    );
}

/// Checks that `sends` (times a request was allowed to go, in seconds on
/// one clock) never exceed `rate`: in every window, at most the burst plus
/// one request per interval the window spans, plus `slack` for the error of
/// the callers' clocks. `Err` names the worst window.
///
/// # Errors
/// A window with more requests than the rate allows.
pub fn never_faster_than(sends: &mut [f64], rate: Rate, slack: u32) -> Result<(), String> {
    sends.sort_by(f64::total_cmp);
    let interval = rate.interval().as_secs_f64();
    for i in 0..sends.len() {
        for j in i..sends.len() {
            let span = sends[j] - sends[i];
            let count = j - i + 1;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let allowed =
                rate.burst() as usize + (span / interval).floor() as usize + slack as usize;
            if count > allowed {
                return Err(format!(
                    "{count} requests went within {:.1} ms; {rate} with burst {} allows {allowed}",
                    span * 1000.0,
                    rate.burst()
                ));
            }
        }
    }
    Ok(())
}

/// Two spenders on two handles spend one 20/s budget for a second, each
/// sleeping as told: together they never go faster than the rate, and
/// they do get about the rate between them.
pub async fn concurrent_spenders_share_one_budget(h: CoordinationHarness) {
    let rate = rate(20, 1);
    let started = Instant::now();
    let run_for = Duration::from_secs(1);
    let spender = |coordinator: Arc<dyn Coordinator>| {
        tokio::spawn(async move {
            let mut sends = Vec::new();
            while started.elapsed() < run_for {
                let answer = coordinator
                    .spend("shared{budget}", rate, Duration::from_millis(120))
                    .await
                    .unwrap();
                // When the caller may go, on the test's clock: its reading
                // after the answer plus the wait (at most one round trip
                // later than the store's own reckoning).
                let answered = started.elapsed();
                match answer {
                    Spend::Granted(wait) => {
                        sends.push((answered + wait).as_secs_f64());
                        tokio::time::sleep(wait).await;
                    }
                    Spend::Denied(wait) => {
                        tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
                    }
                }
            }
            sends
        })
    };
    let first = spender(Arc::clone(&h.first));
    let second = spender(Arc::clone(&h.second));
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(
        !first.is_empty() && !second.is_empty(),
        "both spenders got requests: {} and {}",
        first.len(),
        second.len()
    );
    let mut sends: Vec<f64> = first.into_iter().chain(second).collect();
    never_faster_than(&mut sends, rate, 1).unwrap();
    // About 20 in a second (1 at once, then one each 50 ms); far fewer
    // would mean the spenders were starved, not limited.
    assert!(
        sends.len() >= 12,
        "only {} requests in a second",
        sends.len()
    );
}

/// Open for 300 ms: everyone sees it open with the time left; after it the
/// first caller probes (again when it asks again), the others wait for the
/// probe, and after the probe time another caller may probe. Closing it
/// closes it for everyone.
pub async fn a_circuit_opens_then_lets_one_probe(h: CoordinationHarness) {
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    let name = "upstream{429}";
    let probe_ttl = Duration::from_millis(300);
    assert_eq!(
        h.first.circuit(name, &a, probe_ttl).await.unwrap(),
        CircuitState::Closed
    );
    h.first
        .open_circuit(name, Duration::from_millis(300))
        .await
        .unwrap();
    let left = open_for(h.second.circuit(name, &b, probe_ttl).await.unwrap());
    assert!(
        left > Duration::from_millis(150) && left <= Duration::from_millis(300),
        "{left:?}"
    );
    tokio::time::sleep(left + Duration::from_millis(50)).await;
    assert_eq!(
        h.first.circuit(name, &a, probe_ttl).await.unwrap(),
        CircuitState::Probe
    );
    let wait = probing_for(h.second.circuit(name, &b, probe_ttl).await.unwrap());
    assert!(wait > Duration::ZERO && wait <= probe_ttl, "{wait:?}");
    assert_eq!(
        h.second.circuit(name, &a, probe_ttl).await.unwrap(),
        CircuitState::Probe,
        "the probe asks again (through any handle) and is still the probe"
    );
    // The probe never reported: after its time another caller probes.
    tokio::time::sleep(probe_ttl + Duration::from_millis(100)).await;
    assert_eq!(
        h.second.circuit(name, &b, probe_ttl).await.unwrap(),
        CircuitState::Probe
    );
    assert!(matches!(
        h.first.circuit(name, &a, probe_ttl).await.unwrap(),
        CircuitState::Probing(_)
    ));
    h.second.close_circuit(name).await.unwrap();
    for (coordinator, owner) in [(&h.first, &a), (&h.second, &b)] {
        assert_eq!(
            coordinator.circuit(name, owner, probe_ttl).await.unwrap(),
            CircuitState::Closed
        );
    }
    // Closing a closed (or never opened) circuit is not an error.
    h.first.close_circuit(name).await.unwrap();
    h.first.close_circuit("never{opened}").await.unwrap();
}

/// Opening an open circuit for less time leaves its end where it was;
/// for more time moves it later.
pub async fn a_shorter_open_period_never_shortens_a_circuit(h: CoordinationHarness) {
    let a = LeaseOwner::random();
    let name = "retry-after}";
    let probe_ttl = Duration::from_secs(1);
    h.first
        .open_circuit(name, Duration::from_secs(2))
        .await
        .unwrap();
    h.second
        .open_circuit(name, Duration::from_millis(100))
        .await
        .unwrap();
    let left = open_for(h.first.circuit(name, &a, probe_ttl).await.unwrap());
    assert!(
        left > Duration::from_millis(1500) && left <= Duration::from_secs(2),
        "{left:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        h.second.circuit(name, &a, probe_ttl).await.unwrap(),
        CircuitState::Open(_)
    ));
    h.second
        .open_circuit(name, Duration::from_secs(5))
        .await
        .unwrap();
    let left = open_for(h.first.circuit(name, &a, probe_ttl).await.unwrap());
    assert!(
        left > Duration::from_millis(4500) && left <= Duration::from_secs(5),
        "{left:?}"
    );
}

/// A probe that fails opens the circuit again: its probe is forgotten, so
/// after the new period a caller probes at once, even the one whose long
/// probe time had not run out.
pub async fn a_failed_probe_opens_the_circuit_again(h: CoordinationHarness) {
    let (a, b) = (LeaseOwner::random(), LeaseOwner::random());
    let name = "flaky{}";
    let long_probe = Duration::from_secs(30);
    h.first
        .open_circuit(name, Duration::from_millis(100))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.first.circuit(name, &a, long_probe).await.unwrap(),
        CircuitState::Probe
    );
    h.first
        .open_circuit(name, Duration::from_millis(200))
        .await
        .unwrap();
    let left = open_for(h.second.circuit(name, &b, long_probe).await.unwrap());
    assert!(left <= Duration::from_millis(200), "{left:?}");
    tokio::time::sleep(left + Duration::from_millis(50)).await;
    assert_eq!(
        h.second.circuit(name, &b, long_probe).await.unwrap(),
        CircuitState::Probe,
        "the failed probe's claim went with the reopening"
    );
}

/// Leases, buckets and circuits in the store are not entries: `size`,
/// `scan` and `clear` neither count nor remove them, and do not count them
/// as foreign keys.
pub async fn coordination_state_is_not_an_entry(h: CoordinationHarness) {
    let tier = &h.first_tier;
    let a = LeaseOwner::random();
    let ttl = Duration::from_secs(30);
    let key = lease_key("held");
    assert!(h.first.acquire(&key, &a, ttl).await.unwrap());
    let entry_key = Key::new("coord{api}", [("id", "{entry}")]);
    tier.set(&entry_key, entry(&entry_key, &json!("value"), None))
        .await
        .unwrap();
    let rate = rate(1, 1);
    assert_eq!(
        h.first
            .spend("kept{bucket}", rate, Duration::ZERO)
            .await
            .unwrap(),
        Spend::Granted(Duration::ZERO)
    );
    h.first
        .open_circuit("kept{circuit}", Duration::from_secs(30))
        .await
        .unwrap();
    let foreign_before = tier.stats().foreign;

    let size = tier.size().await.unwrap();
    assert_eq!(size.entries, 1, "{size:?}");
    let page = tier.scan(None, 1000).await.unwrap();
    let mut scanned: Vec<Key> = page.entries.into_iter().map(|(k, _)| k).collect();
    let mut next = page.next;
    while let Some(cursor) = next {
        let page = tier.scan(Some(cursor), 1000).await.unwrap();
        scanned.extend(page.entries.into_iter().map(|(k, _)| k));
        next = page.next;
    }
    assert_eq!(scanned, std::slice::from_ref(&entry_key));
    for scope in [
        ClearScope::Expired,
        ClearScope::Source("coord{api}".to_owned()),
        ClearScope::All,
    ] {
        tier.clear(scope).await.unwrap();
    }
    assert!(tier.get(&entry_key).await.unwrap().is_none());
    assert_eq!(
        (foreign_before, tier.stats().foreign),
        (0, 0),
        "coordination keys are not counted as foreign"
    );

    assert!(
        !h.second
            .acquire(&key, &LeaseOwner::random(), ttl)
            .await
            .unwrap(),
        "the lease survived the clear"
    );
    assert!(matches!(
        h.second
            .spend("kept{bucket}", rate, Duration::ZERO)
            .await
            .unwrap(),
        Spend::Denied(_)
    ));
    assert!(matches!(
        h.second
            .circuit("kept{circuit}", &a, Duration::from_secs(1))
            .await
            .unwrap(),
        CircuitState::Open(_)
    ));
}
