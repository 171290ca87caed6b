#![doc = include_str!("docs.md")]
// Library code never unwraps what a user, a file or a server can influence.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod backend;
mod config;
mod error;

pub use backend::SledTier;
pub use config::{Flush, SledConfig};

use tierstack_core::{BackendDescriptor, Capabilities};

/// What the sled tier can do.
pub const CAPABILITIES: Capabilities = Capabilities::new()
    .with_persistent()
    .with_native_batch()
    .with_scan()
    .with_reads_in_place();

tierstack_core::register_backend!(BackendDescriptor {
    name: "sled",
    description: "sled directory: embedded key-value store, one process at a time (see its caveats; redb is recommended)",
    capabilities: CAPABILITIES,
    example_config: "kind: sled\npath: ~/.cache/tierstack/sled\nttl: 7d\nflush: always\n",
});
