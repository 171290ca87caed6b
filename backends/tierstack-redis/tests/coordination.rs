//! The Redis coordinator on a real `redis-server`: the shared coordination
//! cases (two tiers on one server, one fresh server per case), where its
//! keys live and how long Redis keeps them, and what callers get when the
//! server is gone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tierstack::{Coordinator, ErrorKind, Key, LeaseOwner, Rate, Spend, Tier};
use tierstack_conformance::coordination::CoordinationHarness;
use tierstack_conformance::coordination_suite;
use tierstack_conformance::redis_server::{RedisServer, free_port, redis_cli, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier};

async fn make() -> CoordinationHarness {
    let server = RedisServer::shared_or_start();
    let config = RedisConfig::new(server.url()).prefix(unique_prefix("coord"));
    let first = RedisTier::open(&config, 1).await.expect("opens");
    let second = RedisTier::open(&config, 1).await.expect("opens");
    CoordinationHarness::new(Arc::new(first), Arc::new(second)).keep(server)
}

coordination_suite!(make);

fn coordinator(tier: &RedisTier) -> Arc<dyn Coordinator> {
    tier.coordinator().expect("the Redis tier coordinates")
}

fn pttl(port: u16, name: &str) -> i64 {
    redis_cli(port, &["PTTL", name]).trim().parse().unwrap()
}

#[tokio::test]
async fn leases_buckets_and_circuits_are_one_key_each_under_the_reserved_namespace() {
    let server = RedisServer::start();
    let port = server.port();
    let prefix = unique_prefix("keys");
    let tier = RedisTier::open(&RedisConfig::new(server.url()).prefix(&prefix), 7)
        .await
        .unwrap();
    let coordination = coordinator(&tier);
    let owner = LeaseOwner::random();
    let key = Key::new("audnexus:book", [("asin", "B002V1A0WE")]);
    assert!(
        coordination
            .acquire(&key, &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
    // One a minute: the bucket's key lives a minute, long enough to look
    // at on a loaded machine.
    let rate = Rate::new(1, Duration::from_secs(60)).unwrap();
    coordination
        .spend("audnexus", rate, Duration::ZERO)
        .await
        .unwrap();
    coordination
        .open_circuit("audnexus", Duration::from_secs(10))
        .await
        .unwrap();

    let mut keys: Vec<String> = redis_cli(port, &["--scan"])
        .lines()
        .map(str::to_owned)
        .collect();
    keys.sort();
    let lease = format!("{prefix}:c:l:7:audnexus:book:asin=B002V1A0WE");
    let bucket = format!("{prefix}:c:r:audnexus");
    let circuit = format!("{prefix}:c:o:audnexus");
    assert_eq!(keys, [lease.clone(), circuit.clone(), bucket.clone()]);

    // Every key expires by itself: the lease with its TTL, the bucket when
    // its theoretical arrival time has passed (one interval after the
    // spend), the circuit a minute after its open period.
    assert_eq!(redis_cli(port, &["GET", &lease]).trim(), owner.as_str());
    let lease_ttl = pttl(port, &lease);
    assert!((20_000..=30_000).contains(&lease_ttl), "{lease_ttl}");
    let bucket_ttl = pttl(port, &bucket);
    assert!((50_000..=60_000).contains(&bucket_ttl), "{bucket_ttl}");
    let circuit_ttl = pttl(port, &circuit);
    assert!((60_000..=70_000).contains(&circuit_ttl), "{circuit_ttl}");
    let fields = redis_cli(port, &["HGETALL", &circuit]);
    assert!(fields.starts_with("until\n"), "{fields}");

    // The GCRA state is the TAT in µs of the server's clock.
    let tat: u64 = redis_cli(port, &["GET", &bucket]).trim().parse().unwrap();
    let time = redis_cli(port, &["TIME"]);
    let mut parts = time.lines().map(|l| l.trim().parse::<u64>().unwrap());
    let now = parts.next().unwrap() * 1_000_000 + parts.next().unwrap();
    assert!(
        tat > now + 50_000_000 && tat <= now + 60_000_000,
        "tat {tat}, now {now}"
    );

    coordination.release(&key, &owner).await.unwrap();
    coordination.close_circuit("audnexus").await.unwrap();
    assert_eq!(redis_cli(port, &["EXISTS", &lease]).trim(), "0");
    assert_eq!(redis_cli(port, &["EXISTS", &circuit]).trim(), "0");
}

#[tokio::test]
async fn a_lease_key_of_another_schema_version_is_another_lease() {
    let server = RedisServer::start();
    let prefix = unique_prefix("versions");
    let config = RedisConfig::new(server.url()).prefix(&prefix);
    let v1 = coordinator(&RedisTier::open(&config, 1).await.unwrap());
    let v2 = coordinator(&RedisTier::open(&config, 2).await.unwrap());
    let key = Key::new("src", [("id", "1")]);
    let ttl = Duration::from_secs(30);
    assert!(v1.acquire(&key, &LeaseOwner::random(), ttl).await.unwrap());
    assert!(v2.acquire(&key, &LeaseOwner::random(), ttl).await.unwrap());
}

#[tokio::test]
async fn a_server_that_is_gone_gives_errors_never_a_hang_or_a_panic() {
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url())
        .prefix(unique_prefix("gone"))
        .breaker(3, Duration::from_secs(60));
    let tier = RedisTier::open(&config, 1).await.unwrap();
    let coordination = coordinator(&tier);
    let owner = LeaseOwner::random();
    let key = Key::new("src", [("id", "1")]);
    assert!(
        coordination
            .acquire(&key, &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
    server.kill();

    let rate = Rate::new(10, Duration::from_secs(1)).unwrap();
    let ttl = Duration::from_secs(1);
    let started = Instant::now();
    for _ in 0..3 {
        let kinds = [
            coordination.acquire(&key, &owner, ttl).await.map(drop),
            coordination.renew(&key, &owner, ttl).await.map(drop),
            coordination.release(&key, &owner).await,
            coordination.wait_released(&key, ttl).await.map(drop),
            coordination
                .spend("b", rate, Duration::ZERO)
                .await
                .map(drop),
            coordination.open_circuit("c", ttl).await,
            coordination.circuit("c", &owner, ttl).await.map(drop),
            coordination.close_circuit("c").await,
        ]
        .map(|result| result.unwrap_err().kind());
        for kind in kinds {
            assert!(
                matches!(kind, ErrorKind::Unavailable | ErrorKind::Timeout),
                "{kinds:?}"
            );
        }
    }
    // The breaker opened: callers are answered without waiting for the
    // server, and the error says it is unavailable.
    let err = coordination
        .spend("b", rate, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("circuit breaker"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(tier.stats().unavailable > 0);
}

#[tokio::test]
async fn a_paused_server_is_a_timeout_within_the_response_timeout() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url())
        .prefix(unique_prefix("paused"))
        .response_timeout(Duration::from_millis(200));
    let tier = RedisTier::open(&config, 1).await.unwrap();
    let coordination = coordinator(&tier);
    let key = Key::new("src", [("id", "1")]);
    let owner = LeaseOwner::random();
    // Connected and the scripts loaded before the pause.
    coordination.release(&key, &owner).await.unwrap();
    server.pause();
    let started = Instant::now();
    let err = coordination
        .acquire(&key, &owner, Duration::from_secs(1))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    server.resume();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(waited < Duration::from_secs(1), "{waited:?}");
}

#[tokio::test]
async fn a_server_that_never_answered_is_an_error_at_once_after_the_breaker_opens() {
    let port = free_port();
    let config = RedisConfig::new(format!("redis://127.0.0.1:{port}"))
        .prefix("nobody")
        .breaker(2, Duration::from_secs(60));
    let tier = RedisTier::open(&config, 1).await.unwrap();
    let coordination = coordinator(&tier);
    for _ in 0..2 {
        assert!(
            coordination
                .spend(
                    "b",
                    Rate::new(1, Duration::from_secs(1)).unwrap(),
                    Duration::ZERO
                )
                .await
                .is_err()
        );
    }
    let started = Instant::now();
    let err = coordination
        .acquire(
            &Key::new("src", [("id", "1")]),
            &LeaseOwner::random(),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    assert!(started.elapsed() < Duration::from_millis(50));
    assert!(!matches!(
        coordination
            .spend(
                "b",
                Rate::new(1, Duration::from_secs(1)).unwrap(),
                Duration::ZERO
            )
            .await,
        Ok(Spend::Granted(_))
    ));
}

#[tokio::test]
async fn an_acl_user_coordinates_in_its_namespace_and_is_refused_outside_it() {
    let server = RedisServer::start_with(&["--requirepass", "adminpw"], Some("adminpw"));
    let prefix = unique_prefix("acl");
    redis_cli(
        server.port(),
        &[
            "-a",
            "adminpw",
            "--no-auth-warning",
            "ACL",
            "SETUSER",
            "team",
            "on",
            ">teampw",
            &format!("~{prefix}:*"),
            "+@all",
            "-@dangerous",
        ],
    );
    let config = RedisConfig::new(server.url())
        .prefix(&prefix)
        .credentials(Some("team".to_owned()), Some("teampw".to_owned()));
    let inside = coordinator(&RedisTier::open(&config, 1).await.unwrap());
    let key = Key::new("src", [("id", "1")]);
    let owner = LeaseOwner::random();
    let rate = Rate::new(10, Duration::from_secs(1)).unwrap();
    assert!(
        inside
            .acquire(&key, &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert!(
        inside
            .renew(&key, &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(
        inside.spend("b", rate, Duration::ZERO).await.unwrap(),
        Spend::Granted(Duration::ZERO)
    );
    // The user has no channel rights (`&`): the release script's PUBLISH
    // is refused, the release itself is not, and a wait sees it by polling.
    inside.release(&key, &owner).await.unwrap();
    let lease = format!("{prefix}:c:l:1:{}", key.as_str());
    let exists = redis_cli(
        server.port(),
        &["-a", "adminpw", "--no-auth-warning", "EXISTS", &lease],
    );
    assert_eq!(exists.trim(), "0");
    assert!(
        inside
            .wait_released(&key, Duration::from_secs(1))
            .await
            .unwrap()
    );

    let outside_tier = RedisTier::open(&config.clone().prefix("elsewhere"), 1)
        .await
        .unwrap();
    let outside = coordinator(&outside_tier);
    for _ in 0..10 {
        let err = outside.spend("b", rate, Duration::ZERO).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    }
    // A refusal shows the server is up: the breaker stays closed.
    assert_eq!(outside_tier.stats().unavailable, 0);
}
