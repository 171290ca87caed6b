//! The shared behaviour suite on a real 3-master Redis Cluster (started once
//! for this test binary with `redis-cli --cluster create`), each case in a
//! namespace of its own; keys spread over all three masters. The config
//! (seeds and prefix) reopens the store and opens it from a second process.

use std::sync::OnceLock;

use tierstack_conformance::redis_server::{RedisCluster, unique_prefix};
use tierstack_conformance::{Harness, SCHEMA_VERSION, conformance_suite};
use tierstack_redis::{RedisConfig, RedisTier};

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start)
}

async fn make() -> Harness {
    let seeds = cluster().urls();
    let config = RedisConfig::cluster(seeds)
        .prefix(unique_prefix("cluster"))
        .ttl(None);
    let tier = RedisTier::open(&config, SCHEMA_VERSION)
        .await
        .expect("opens");
    Harness::new(tier).config(config)
}

conformance_suite!(make);
