//! Sentinel failover, with real processes: a master, its replica and one
//! Sentinel (`redis-server --sentinel`) on free ports. When the master
//! goes (killed, or demoted by `SENTINEL FAILOVER`), the tier's writes fail
//! until its circuit opens; the probe after the cool-down asks the
//! sentinels again where the master is and the tier goes on on the
//! replica Sentinel promoted. Callers never see an error meanwhile.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tierstack::{Key, TieredCache, Ttl};
use tierstack_conformance::redis_server::{RedisServer, free_port, redis_cli, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier, SentinelConfig};

fn key(name: &str) -> Key {
    Key::new("audnexus:book", [("asin", name)])
}

/// A `redis-server --sentinel`, killed on drop and by a watchdog when the
/// test process is gone.
struct Sentinel {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    fn start(master_port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor main 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds main 1000\n\
                 sentinel failover-timeout main 10000\n\
                 sentinel parallel-syncs main 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let mut child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server --sentinel (redis 6 and later)");
        let me = std::process::id();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -9 {} 2>/dev/null",
                child.id()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sentinel did not start");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sentinel exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    fn master_port(&self) -> String {
        let out = redis_cli(self.port, &["SENTINEL", "get-master-addr-by-name", "main"]);
        out.lines().nth(1).unwrap_or_default().trim().to_owned()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A master with one replica in sync, and a Sentinel that knows both.
fn deployment() -> (RedisServer, RedisServer, Sentinel) {
    let master = RedisServer::start();
    let master_port = master.port().to_string();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port], None);
    eventually("the replica is in sync", Duration::from_secs(10), || {
        redis_cli(replica.port(), &["INFO", "replication"]).contains("master_link_status:up")
    });
    let sentinel = Sentinel::start(master.port());
    let replica_port = replica.port().to_string();
    // Known, and with its own INFO read (which a failover needs).
    eventually(
        "the sentinel knows the replica",
        Duration::from_secs(20),
        || {
            let replicas = redis_cli(sentinel.port, &["SENTINEL", "replicas", "main"]);
            replicas.contains(&replica_port) && replicas.contains("master-link-status\nok")
        },
    );
    (master, replica, sentinel)
}

async fn cache_through(sentinel: &Sentinel, prefix: &str) -> TieredCache {
    let mut config = RedisConfig::sentinel(SentinelConfig::new(
        "main",
        vec![format!("redis://127.0.0.1:{}", sentinel.port)],
    ))
    .prefix(prefix)
    .breaker(2, Duration::from_millis(200))
    .response_timeout(Duration::from_millis(500));
    config.connect_timeout = Some(Duration::from_millis(500));
    TieredCache::builder()
        .tier(RedisTier::open(&config, 1).await.unwrap())
        .build()
}

/// Writes through `cache` until one lands on the server at `port`; every
/// write returns `Ok` meanwhile (a Redis outage is never the caller's).
async fn writes_reach(cache: &TieredCache, prefix: &str, port: u16, within: Duration) -> usize {
    let started = Instant::now();
    for n in 0.. {
        let k = key(&format!("after{n}"));
        cache
            .set(&k, format!("written {n}"), Ttl::TierDefault)
            .await
            .expect("a write never fails because of Redis");
        let name = format!("{prefix}:e:1:{k}");
        if redis_cli(port, &["EXISTS", &name]).trim() == "1" {
            return n;
        }
        assert!(
            started.elapsed() < within,
            "no write reached the new master within {within:?}: {:?}",
            cache.stats().layers[0]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_followed_to_the_replica_sentinel_promotes() {
    let (mut master, replica, sentinel) = deployment();
    let prefix = unique_prefix("failover");
    let cache = Arc::new(cache_through(&sentinel, &prefix).await);
    cache
        .set(&key("before"), "before".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    let name = format!("{prefix}:e:1:{}", key("before"));
    assert_eq!(redis_cli(master.port(), &["EXISTS", &name]).trim(), "1");
    redis_cli(master.port(), &["WAIT", "1", "2000"]);

    master.kill();
    let tries = writes_reach(&cache, &prefix, replica.port(), Duration::from_secs(30)).await;
    assert_eq!(sentinel.master_port(), replica.port().to_string());
    println!("writes reached the promoted replica after {tries} writes");
    // What the old master had replicated is read from the new one.
    assert_eq!(
        cache
            .get::<String>(&key("before"))
            .await
            .as_deref()
            .map(String::as_str),
        Some("before")
    );
    assert!(
        cache.stats().layers[0].write_errors > 0,
        "the outage was seen"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_by_command_moves_writes_to_the_new_master() {
    let (master, replica, sentinel) = deployment();
    let prefix = unique_prefix("switchover");
    let cache = cache_through(&sentinel, &prefix).await;
    cache
        .set(&key("before"), "before".to_string(), Ttl::TierDefault)
        .await
        .unwrap();
    redis_cli(master.port(), &["WAIT", "1", "2000"]);

    // The old master stays up, demoted to a replica: writes to it fail
    // with READONLY until the tier asks the sentinel again.
    redis_cli(sentinel.port, &["SENTINEL", "FAILOVER", "main"]);
    let replica_port = replica.port().to_string();
    eventually("the replica is promoted", Duration::from_secs(30), || {
        sentinel.master_port() == replica_port
    });
    // The old master takes a few seconds to be reconfigured as a replica;
    // until then it still takes writes.
    let tries = writes_reach(&cache, &prefix, replica.port(), Duration::from_secs(60)).await;
    println!("writes reached the promoted replica after {tries} writes");
    assert!(
        redis_cli(master.port(), &["INFO", "replication"]).contains("role:slave"),
        "the old master was demoted"
    );
    assert_eq!(
        cache
            .get::<String>(&key("before"))
            .await
            .as_deref()
            .map(String::as_str),
        Some("before")
    );
}
