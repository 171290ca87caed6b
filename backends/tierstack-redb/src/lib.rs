#![doc = include_str!("docs.md")]
// Library code never unwraps what a user, a file or a server can influence.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod backend;
mod config;
mod error;
mod writer;

pub use backend::RedbTier;
pub use config::{RedbConfig, RedbDurability};

use tierstack_core::{BackendDescriptor, Capabilities};

/// What the redb tier can do.
pub const CAPABILITIES: Capabilities = Capabilities::new()
    .with_persistent()
    .with_native_batch()
    .with_scan()
    .with_size_limit()
    .with_reads_in_place();

tierstack_core::register_backend!(BackendDescriptor {
    name: "redb",
    description: "redb file: crash-safe embedded key-value store, one process at a time (recommended over sled)",
    capabilities: CAPABILITIES,
    example_config: "kind: redb\npath: ~/.cache/tierstack/cache.redb\nttl: 7d\nmax_size: 512MiB\n",
});
