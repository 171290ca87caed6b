#![doc = include_str!("docs.md")]
// Library code never unwraps what a user, a file or a server can influence.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod backend;
mod config;
mod error;

pub use backend::MemoryTier;
pub use config::MemoryConfig;

use tierstack_core::{BackendDescriptor, Capabilities};

/// What the memory tier can do.
pub const CAPABILITIES: Capabilities = Capabilities::new()
    .with_scan()
    .with_size_limit()
    .with_keeps_decoded()
    .with_answers_without_io();

tierstack_core::register_backend!(BackendDescriptor {
    name: "memory",
    description: "In-process cache on quick_cache; fastest, lost when the process exits",
    capabilities: CAPABILITIES,
    example_config: "kind: memory\nttl: 1h\nmax_entries: 1000\n",
});
