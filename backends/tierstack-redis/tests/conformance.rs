//! The shared behaviour suite on a real single `redis-server` (one per case,
//! started on a free port and killed when the case ends), or on
//! `TIERSTACK_REDIS_URL` with a prefix of its own per case. Its config
//! (server and prefix) reopens the store (`persistent`) and opens it from
//! a second process (`shared_across_processes`).

use tierstack_conformance::redis_server::{RedisServer, unique_prefix};
use tierstack_conformance::{Harness, SCHEMA_VERSION, conformance_suite};
use tierstack_redis::{RedisConfig, RedisTier};

async fn make() -> Harness {
    let server = RedisServer::shared_or_start();
    let config = RedisConfig::new(server.url())
        .prefix(unique_prefix("conformance"))
        .ttl(None);
    let tier = RedisTier::open(&config, SCHEMA_VERSION)
        .await
        .expect("opens");
    Harness::new(tier).config(config).keep(server)
}

conformance_suite!(make);
