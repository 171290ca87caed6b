#![doc = include_str!("docs.md")]
// Library code never unwraps what a user, a file or a server can influence.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod backend;
mod backplane;
mod breaker;
mod config;
mod connection;
mod coordinator;
mod error;
mod wake;

pub use backend::RedisTier;
pub use config::{RedisConfig, SentinelConfig};

use tierstack_core::{BackendDescriptor, Capabilities};

/// What the Redis tier can do.
pub const CAPABILITIES: Capabilities = Capabilities::new()
    .with_persistent()
    .with_shared_across_processes()
    .with_shared_across_hosts()
    .with_native_ttl()
    .with_native_batch()
    .with_scan();

tierstack_core::register_backend!(BackendDescriptor {
    name: "redis",
    description: "Redis (single server, Sentinel or Cluster): shared by a team and CI; fails open behind a circuit breaker",
    capabilities: CAPABILITIES,
    example_config: "kind: redis\nurl: redis://127.0.0.1:6379\nprefix: mk_torrent\nttl: 30d\n",
});
