//! Redis-specific behaviour on real servers: ACLs and passwords,
//! Sentinel, foreign values, namespace isolation, an unreachable server and
//! the circuit breaker, and the config file form. TLS, which needs a
//! `redis-server` built with it and `openssl`, is `tests/tls.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tierstack::{ClearScope, ErrorKind, Health, Key, Tier, TieredCache, Ttl};
use tierstack_conformance::cases::entry;
use tierstack_conformance::redis_server::{RedisServer, free_port, redis_cli, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier, SentinelConfig};

fn key(name: &str) -> Key {
    Key::new("audnexus:book", [("asin", name)])
}

async fn round_trip(tier: &RedisTier) {
    let e = entry(
        &key("rt"),
        &json!({"title": "Dune"}),
        Some(Duration::from_secs(60)),
    );
    tier.set(&key("rt"), e.clone()).await.unwrap();
    let got = tier.get(&key("rt")).await.unwrap().expect("stored");
    assert_eq!(got.to_vec(), e.to_vec());
}

#[tokio::test]
async fn a_password_and_an_acl_user_restricted_to_the_namespace() {
    let server = RedisServer::start_with(&["--requirepass", "adminpw"], Some("adminpw"));
    let port = server.port();
    let prefix = unique_prefix("acl");
    redis_cli(
        port,
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
            &format!("&{prefix}:*"),
            "+@all",
        ],
    );
    // The ACL user in its namespace.
    let config = RedisConfig::new(server.url())
        .prefix(&prefix)
        .credentials(Some("team".to_owned()), Some("teampw".to_owned()));
    let tier = RedisTier::open(&config, 1).await.unwrap();
    round_trip(&tier).await;
    assert_eq!(tier.health().await, Health::Healthy);
    assert_eq!(tier.clear(ClearScope::All).await.unwrap(), 1);

    // The same user outside its namespace: refused by the server, a
    // permission error, and not an outage (the breaker stays closed).
    let outside = RedisTier::open(&config.clone().prefix("elsewhere"), 1)
        .await
        .unwrap();
    for _ in 0..10 {
        let err = outside
            .set(&key("x"), entry(&key("x"), &json!(1), None))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    }
    assert_eq!(outside.stats().unavailable, 0);

    // The password given as $VAR, the admin through `requirepass`.
    let admin = RedisConfig::new(server.url())
        .prefix(unique_prefix("admin"))
        .credentials(None, Some("$TIERSTACK_TEST_NO_SUCH_VAR".to_owned()));
    let err = RedisTier::open(&admin, 1).await.unwrap_err();
    assert!(
        err.to_string().contains("TIERSTACK_TEST_NO_SUCH_VAR"),
        "{err}"
    );
    let admin = RedisConfig::new(server.url())
        .prefix(unique_prefix("admin"))
        .credentials(None, Some("adminpw".to_owned()));
    round_trip(&RedisTier::open(&admin, 1).await.unwrap()).await;

    // A wrong password: errors, never a panic, health says why.
    let wrong = RedisConfig::new(server.url())
        .prefix(unique_prefix("wrong"))
        .credentials(None, Some("nope".to_owned()));
    let tier = RedisTier::open(&wrong, 1).await.unwrap();
    assert!(tier.get(&key("x")).await.is_err());
    assert!(matches!(tier.health().await, Health::Unhealthy(_)));
}

/// Kills a helper process when the test ends.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_master_found_through_sentinel() {
    let master = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let sentinel_port = free_port();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor main 127.0.0.1 {} 1\nsentinel resolve-hostnames yes\n",
            master.port()
        ),
    )
    .unwrap();
    let mut sentinel = std::process::Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server --sentinel");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", sentinel_port)).is_err() {
        assert!(Instant::now() < deadline, "sentinel did not start");
        if let Ok(Some(status)) = sentinel.try_wait() {
            panic!("sentinel exited: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _sentinel = Kill(sentinel);
    let config = RedisConfig::sentinel(SentinelConfig::new(
        "main",
        vec![format!("redis://127.0.0.1:{sentinel_port}")],
    ))
    .prefix(unique_prefix("sentinel"));
    let tier = RedisTier::open(&config, 1).await.unwrap();
    round_trip(&tier).await;
    // The entry is on the master Sentinel named.
    let keys = redis_cli(master.port(), &["--scan"]);
    assert!(keys.contains("audnexus:book:asin=rt"), "{keys}");

    // Lease waiters subscribe on the master Sentinel named, and a release
    // wakes them long before their next poll (lease_poll 10 s).
    let coordination = RedisTier::open(&config.clone().lease_poll(Duration::from_secs(10)), 1)
        .await
        .unwrap()
        .coordinator()
        .unwrap();
    let lease = key("sentinel-lease");
    assert!(
        coordination
            .wait_released(&lease, Duration::from_secs(1))
            .await
            .unwrap()
    );
    let channel = format!("{}:c:released:1", config.prefix);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !redis_cli(master.port(), &["PUBSUB", "NUMSUB", &channel]).ends_with("\n1\n") {
        assert!(Instant::now() < deadline, "no subscriber on the master");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let owner = tierstack::LeaseOwner::random();
    assert!(
        coordination
            .acquire(&lease, &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
    let waiting = {
        let (coordination, lease) = (Arc::clone(&coordination), lease.clone());
        tokio::spawn(async move {
            let free = coordination
                .wait_released(&lease, Duration::from_secs(30))
                .await
                .unwrap();
            (free, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    let releasing = Instant::now();
    coordination.release(&lease, &owner).await.unwrap();
    let (free, at) = waiting.await.unwrap();
    let latency = at.saturating_duration_since(releasing);
    assert!(free);
    assert!(
        latency < Duration::from_millis(100),
        "woken {latency:?} after the release"
    );
}

#[tokio::test]
async fn foreign_values_in_the_namespace_are_counted_misses() {
    let server = RedisServer::start();
    let prefix = unique_prefix("foreign");
    let config = RedisConfig::new(server.url()).prefix(&prefix);
    let tier: Arc<dyn Tier> = Arc::new(RedisTier::open(&config, 1).await.unwrap());
    let list = format!("{prefix}:e:1:{}", key("list").as_str());
    let text = format!("{prefix}:e:1:{}", key("text").as_str());
    redis_cli(server.port(), &["RPUSH", &list, "a", "b"]);
    redis_cli(server.port(), &["SET", &text, "not an entry"]);
    let err = tier.get(&key("list")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");
    assert_eq!(
        tier.get(&key("text")).await.unwrap_err().kind(),
        ErrorKind::Corrupt
    );
    let many = tier
        .get_many(&[key("list"), key("text"), key("none")])
        .await
        .unwrap();
    assert!(many.iter().all(Option::is_none));
    // Sizes, scans and clears skip them (counted), and never fail on them.
    let hash = format!("{prefix}:e:1:{}", key("hash").as_str());
    redis_cli(server.port(), &["HSET", &hash, "f", "v"]);
    let copied = format!("{prefix}:e:1:{}", key("copied").as_str());
    tier.set(&key("own"), entry(&key("own"), &json!("own"), None))
        .await
        .unwrap();
    let own_bytes = redis_cli(
        server.port(),
        &["STRLEN", &format!("{prefix}:e:1:{}", key("own").as_str())],
    );
    redis_cli(
        server.port(),
        &[
            "COPY",
            &format!("{prefix}:e:1:{}", key("own").as_str()),
            &copied,
        ],
    );
    let size = tier.size().await.unwrap();
    assert_eq!(size.entries, 1, "{size:?}");
    assert_eq!(size.bytes.to_string(), own_bytes.trim());
    let page = tier.scan(None, 100).await.unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].0, key("own"));
    assert!(tier.stats().foreign >= 8, "{:?}", tier.stats());
    assert_eq!(tier.clear(ClearScope::All).await.unwrap(), 1);
    for name in [&list, &text, &hash, &copied] {
        assert_eq!(
            redis_cli(server.port(), &["EXISTS", name]).trim(),
            "1",
            "{name} removed"
        );
    }

    let cache = TieredCache::builder()
        .shared_tier(Arc::clone(&tier))
        .build();
    assert!(cache.get::<String>(&key("list")).await.is_none());
    assert!(cache.get::<String>(&key("text")).await.is_none());
    let layer = &cache.stats().layers[0];
    assert_eq!(layer.decode_failures, 2);
    assert_eq!(layer.errors, 0);
    // Writing over them works, and they are its own again.
    cache
        .set(&key("list"), "Dune".to_owned(), Ttl::TierDefault)
        .await
        .unwrap();
    assert_eq!(
        cache
            .get::<String>(&key("list"))
            .await
            .as_deref()
            .map(String::as_str),
        Some("Dune")
    );
}

#[tokio::test]
async fn clear_touches_only_its_own_namespace() {
    let server = RedisServer::start();
    let port = server.port();
    // 10,000 foreign keys: other applications, another prefix that starts
    // the same, another schema version of the same prefix.
    let mut script = String::new();
    for i in 0..10_000 {
        let name = match i % 5 {
            0 => format!("sessions:{i}"),
            1 => format!("team2:e:1:audnexus:book:asin={i}"),
            2 => format!("team:e:2:audnexus:book:asin={i}"),
            3 => format!("team*:e:1:audnexus:book:asin={i}"),
            // Strings in the namespace that are not entries.
            _ => format!("team:e:1:audnexus:book:asin={i}"),
        };
        script.push_str("SET \"");
        script.push_str(&name);
        script.push_str("\" v\n");
    }
    let mut child = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
    assert_eq!(redis_cli(port, &["DBSIZE"]).trim(), "10000");

    let tier = RedisTier::open(&RedisConfig::new(server.url()).prefix("team"), 1)
        .await
        .unwrap();
    // A prefix that would nest ("team:1" inside "team") is refused.
    for nested in ["team:1", "team:e", "{team}", "team one", ""] {
        let err = RedisTier::open(&RedisConfig::new(server.url()).prefix(nested), 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{nested:?}: {err}");
    }
    let own: Vec<_> = (0..500)
        .map(|i| {
            (
                key(&format!("own{i}")),
                entry(&key(&format!("own{i}")), &json!(i), None),
            )
        })
        .collect();
    tier.set_many(own).await.unwrap();
    assert_eq!(tier.size().await.unwrap().entries, 500);
    assert_eq!(redis_cli(port, &["DBSIZE"]).trim(), "10500");
    assert_eq!(tier.clear(ClearScope::All).await.unwrap(), 500);
    assert_eq!(redis_cli(port, &["DBSIZE"]).trim(), "10000");
    assert_eq!(tier.size().await.unwrap().entries, 0);
}

#[tokio::test]
async fn a_server_that_is_down_makes_misses_not_errors_and_is_used_again_when_back() {
    let mut server = RedisServer::start();
    let config = RedisConfig::new(server.url())
        .prefix(unique_prefix("down"))
        .breaker(3, Duration::from_millis(300));
    let tier = Arc::new(RedisTier::open(&config, 1).await.unwrap());
    tier.set(&key("a"), entry(&key("a"), &json!("a"), None))
        .await
        .unwrap();
    server.kill();

    let cache = TieredCache::builder()
        .shared_tier(Arc::clone(&tier) as Arc<dyn Tier>)
        .build();
    // Every read is answered (from the fetch), never an error.
    for i in 0..20 {
        let value = cache
            .get_or_fetch::<String, _, _, std::io::Error>(
                &key(&format!("k{i}")),
                Ttl::TierDefault,
                |_| async { Ok("fetched".to_owned()) },
            )
            .await
            .unwrap();
        assert_eq!(*value, "fetched");
    }
    // After the threshold, the breaker answers without the server.
    assert!(tier.stats().unavailable > 0, "{:?}", tier.stats());
    let started = Instant::now();
    assert!(tier.get(&key("a")).await.unwrap().is_none());
    assert!(started.elapsed() < Duration::from_millis(50));
    assert!(matches!(tier.health().await, Health::Unhealthy(_)));

    // Back on the same port (empty: it keeps nothing on disk).
    server.restart();
    let back = Instant::now();
    loop {
        if tier
            .set(&key("b"), entry(&key("b"), &json!("b"), None))
            .await
            .is_ok()
            && tier.get(&key("b")).await.ok().flatten().is_some()
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(2),
            "not used again within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(tier.health().await, Health::Healthy);
}

#[tokio::test]
async fn a_server_that_never_answered_does_not_stop_the_program() {
    let port = free_port();
    for config in [
        RedisConfig::new(format!("redis://127.0.0.1:{port}")),
        RedisConfig::cluster(vec![format!("redis://127.0.0.1:{port}")]),
    ] {
        let config = config.prefix("nobody").breaker(2, Duration::from_secs(60));
        let started = Instant::now();
        let tier = RedisTier::open(&config, 1).await.expect("opens anyway");
        assert!(started.elapsed() < Duration::from_secs(3));
        let _ = tier.get(&key("x")).await;
        let _ = tier.get(&key("x")).await;
        assert!(tier.get(&key("x")).await.unwrap().is_none());
        tier.set(&key("x"), entry(&key("x"), &json!(1), None))
            .await
            .unwrap();
        assert!(tier.stats().unavailable >= 2);
        assert_eq!(
            tier.delete(&key("x")).await.unwrap_err().kind(),
            ErrorKind::Unavailable
        );
    }
}

#[tokio::test]
async fn the_config_file_form_builds_the_tier() {
    let server = RedisServer::start();
    let prefix = unique_prefix("file");
    let yaml = format!(
        "cache:\n  tiers:\n    - kind: memory\n    - kind: redis\n      url: {}\n      prefix: {prefix}\n      ttl: 1h\n      response_timeout: 250ms\n      password: null\n",
        server.url()
    );
    let config = tierstack::Config::parse(&yaml, "yaml").unwrap();
    let cache = TieredCache::from_config(&config).await.unwrap();
    let names: Vec<&str> = cache.tiers().map(|t| t.name()).collect();
    assert_eq!(names, ["memory", "redis"]);
    assert_eq!(
        cache.tiers().nth(1).unwrap().max_ttl(),
        Some(Duration::from_secs(3600))
    );
    cache
        .set(&key("f"), "Dune".to_owned(), Ttl::TierDefault)
        .await
        .unwrap();
    let keys = redis_cli(
        server.port(),
        &["--scan", "--pattern", &format!("{prefix}:e:1:*")],
    );
    assert!(keys.contains("audnexus:book:asin=f"), "{keys}");
    let bad = "cache:\n  tiers:\n    - kind: redis\n      url: redis://a:1\n      cluster: [redis://b:2]\n";
    let config = tierstack::Config::parse(bad, "yaml").unwrap();
    let err = TieredCache::from_config(&config).await.unwrap_err();
    assert!(err.to_string().contains("one of `url`, `cluster`"), "{err}");
}

#[tokio::test]
async fn a_cache_of_another_schema_version_than_its_redis_tier_is_not_built() {
    let server = RedisServer::start();
    let config = RedisConfig::new(server.url()).prefix(unique_prefix("schema"));
    let tier = RedisTier::open(&config, 1).await.unwrap();
    assert_eq!(tier.schema_version(), Some(1));
    let err = TieredCache::builder()
        .schema_version(2)
        .tier(tier)
        .try_build()
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert!(
        err.to_string()
            .contains("tier redis was opened for schema version 1"),
        "{err}"
    );
}

/// Two tool versions (schema versions 1 and 2) on one server and one
/// prefix: each reads its own value of a key, under its own name, and
/// clearing one leaves the other's.
#[tokio::test]
async fn schema_versions_share_one_server_side_by_side() {
    let server = RedisServer::start();
    let prefix = unique_prefix("versions");
    let cache = |version: u32| {
        let config = RedisConfig::new(server.url()).prefix(&prefix);
        async move {
            TieredCache::builder()
                .tier(RedisTier::open(&config, version).await.unwrap())
                .build()
        }
    };
    let (v1, v2) = (cache(1).await, cache(2).await);
    let k = key("versions");
    v1.set(&k, "old shape".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    v2.set(&k, 42_u32, Ttl::TierDefault).await.unwrap();
    assert_eq!(
        v1.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("old shape")
    );
    assert_eq!(v2.get::<u32>(&k).await.as_deref(), Some(&42));
    for version in [1, 2] {
        let name = format!("{prefix}:e:{version}:{k}");
        assert_eq!(redis_cli(server.port(), &["EXISTS", &name]).trim(), "1");
    }
    v2.clear(ClearScope::All).await.unwrap();
    assert!(v2.get::<u32>(&k).await.is_none());
    assert_eq!(
        v1.get::<String>(&k).await.as_deref().map(String::as_str),
        Some("old shape"),
        "clearing version 2 removed version 1's entry"
    );
}
