//! The shared behaviour suite on a real 3-master Redis Cluster (started once
//! for this test binary with `redis-cli --cluster create`), each case in a
//! namespace of its own; keys spread over all three masters.

use std::sync::OnceLock;

use tierstack_conformance::redis_server::{RedisCluster, unique_prefix};
use tierstack_conformance::{Harness, conformance_suite};
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
    let tier = RedisTier::open(&config, 1).await.expect("opens");
    Harness::new(tier)
}

conformance_suite!(make);
