//! TLS with a private certificate authority, on a real `redis-server`
//! speaking only TLS. It needs a `redis-server` built with TLS and the
//! `openssl` command (for the certificates): `harness = false`, so that
//! where either is missing the test is reported as ignored with the
//! reason, never as passed (see `tierstack_conformance::environment`); CI
//! provides both.

use std::time::Duration;

use serde_json::json;
use tierstack::{Health, Key, Tier};
use tierstack_conformance::cases::entry;
use tierstack_conformance::environment::{self, Outcome, block_on, ran, unavailable};
use tierstack_conformance::redis_server::{start_tls_server, unique_prefix};
use tierstack_redis::{RedisConfig, RedisTier};

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

/// With the CA the server's certificate is trusted and entries round-trip;
/// without it the connection is refused.
fn tls_with_a_private_certificate_authority() -> Outcome {
    let (server, files) = match start_tls_server() {
        Ok(started) => started,
        Err(why) => return unavailable(why),
    };
    block_on(async {
        let config = RedisConfig::new(server.url())
            .prefix(unique_prefix("tls"))
            .tls_ca_file(files.ca.to_str().unwrap());
        let tier = RedisTier::open(&config, 1).await.unwrap();
        round_trip(&tier).await;
        assert_eq!(tier.health().await, Health::Healthy);

        let untrusted = RedisConfig::new(server.url()).prefix(unique_prefix("tls"));
        let tier = RedisTier::open(&untrusted, 1).await.unwrap();
        assert!(tier.get(&key("x")).await.is_err());
    });
    ran()
}

fn main() {
    environment::main(vec![(
        "tls_with_a_private_certificate_authority",
        tls_with_a_private_certificate_authority,
    )]);
}
