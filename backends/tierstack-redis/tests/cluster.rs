//! A real 3-master Redis Cluster (started once for this test binary with
//! `redis-cli --cluster create`): the coordination cases, and keys spread
//! over all three masters. The behaviour suite on a cluster is
//! `tests/cluster_conformance.rs` (`harness = false`).

use std::sync::OnceLock;

use tierstack_conformance::redis_server::{RedisCluster, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier};

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

/// The coordination cases on the same Cluster: two tiers (two cluster
/// connections) per case. The cases' keys, buckets and circuit names hold
/// `{` and `}`, so some are hash-tagged and some are not; each operation
/// touches one key and runs on that key's master.
mod coordination {
    use std::sync::Arc;

    use tierstack_conformance::coordination::CoordinationHarness;
    use tierstack_conformance::coordination_suite;
    use tierstack_conformance::redis_server::unique_prefix;
    use tierstack_redis::{RedisConfig, RedisTier};

    async fn make() -> CoordinationHarness {
        let config = RedisConfig::cluster(super::cluster().urls()).prefix(unique_prefix("coord"));
        let first = RedisTier::open(&config, 1).await.expect("opens");
        let second = RedisTier::open(&config, 1).await.expect("opens");
        CoordinationHarness::new(Arc::new(first), Arc::new(second))
    }

    coordination_suite!(make);
}

/// Coordination keys land on every master: names that differ only inside
/// or outside a hash tag go to the slot Redis computes for each, and every
/// operation still succeeds on its own node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordination_keys_spread_over_every_master() {
    use std::time::Duration;

    use tierstack::{Key, LeaseOwner, Tier};
    use tierstack_conformance::redis_server::redis_cli;

    let prefix = unique_prefix("spread");
    let config = RedisConfig::cluster(cluster().urls()).prefix(&prefix);
    let tier = RedisTier::open(&config, 1).await.expect("opens");
    let coordination = tier.coordinator().expect("coordinates");
    let owner = LeaseOwner::random();
    for n in 0..60 {
        let name = match n % 3 {
            0 => format!("{{tag{n}}}"),
            1 => format!("}}{n}{{"),
            _ => format!("plain{n}{{}}"),
        };
        let key = Key::new("src", [("id", name.as_str())]);
        assert!(
            coordination
                .acquire(&key, &owner, Duration::from_secs(30))
                .await
                .unwrap()
        );
        assert!(
            coordination
                .renew(&key, &owner, Duration::from_secs(30))
                .await
                .unwrap()
        );
    }
    let mut holding = 0;
    for node in cluster().nodes() {
        let keys = redis_cli(
            node.port(),
            &["--scan", "--pattern", &format!("{prefix}:c:l:*")],
        );
        let here = keys.lines().count();
        assert!(here > 0, "no lease on node {}", node.port());
        holding += here;
    }
    assert_eq!(holding, 60);
}

/// A release is published on the master of its lease's slot; classic
/// PUBLISH reaches every node, so a waiter whose tier subscribed on one
/// node (the first seed) is woken for leases on all three masters, long
/// before its next poll (`lease_poll` 10 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_any_master_wakes_a_waiter_subscribed_on_one_node() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tierstack::{Key, LeaseOwner, Tier};
    use tierstack_conformance::redis_server::redis_cli;

    let prefix = unique_prefix("wake");
    let config = RedisConfig::cluster(cluster().urls())
        .prefix(&prefix)
        .lease_poll(Duration::from_secs(10));
    let holder_tier = RedisTier::open(&config, 1).await.expect("opens");
    let waiter_tier = RedisTier::open(&config, 1).await.expect("opens");
    let holder = holder_tier.coordinator().expect("coordinates");
    let waiter = waiter_tier.coordinator().expect("coordinates");
    let channel = format!("{prefix}:c:released:1");
    let subscribers = || -> u64 {
        cluster()
            .nodes()
            .iter()
            .map(|node| {
                redis_cli(node.port(), &["PUBSUB", "NUMSUB", &channel])
                    .lines()
                    .nth(1)
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    };
    assert!(
        waiter
            .wait_released(
                &Key::new("src", [("id", "warm-up")]),
                Duration::from_secs(1)
            )
            .await
            .unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while subscribers() != 1 {
        assert!(Instant::now() < deadline, "no subscription");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let owner = LeaseOwner::random();
    let keys: Vec<Key> = (0..9)
        .map(|n| Key::new("src", [("id", format!("{{w{n}}}"))]))
        .collect();
    for key in &keys {
        assert!(
            holder
                .acquire(key, &owner, Duration::from_secs(30))
                .await
                .unwrap()
        );
    }
    let masters_holding = cluster()
        .nodes()
        .iter()
        .filter(|node| {
            !redis_cli(
                node.port(),
                &["--scan", "--pattern", &format!("{prefix}:c:l:*")],
            )
            .trim()
            .is_empty()
        })
        .count();
    assert_eq!(masters_holding, 3, "the leases spread over every master");
    let waiting: Vec<_> = keys
        .iter()
        .map(|key| {
            let (waiter, key) = (Arc::clone(&waiter), key.clone());
            tokio::spawn(async move {
                let free = waiter
                    .wait_released(&key, Duration::from_secs(30))
                    .await
                    .unwrap();
                (free, Instant::now())
            })
        })
        .collect();
    // Past the waiters' early polls: the next is ~475 ms away.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut latencies = Vec::new();
    for (key, task) in keys.iter().zip(waiting) {
        let releasing = Instant::now();
        holder.release(key, &owner).await.unwrap();
        let (free, at) = task.await.unwrap();
        assert!(free);
        latencies.push(at.saturating_duration_since(releasing));
    }
    eprintln!("Cluster: woken {latencies:?} after each release");
    for latency in &latencies {
        assert!(*latency < Duration::from_millis(100), "{latencies:?}");
    }
}
