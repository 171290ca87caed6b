#![doc = include_str!("docs.md")]
// Library code never unwraps what a user, a file or a server can influence.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

mod backend;
mod config;
mod coordinator;
mod error;
mod schema;
mod writer;

pub use backend::SqliteTier;
pub use config::{SqliteConfig, Synchronous};
/// The RFC's `CREATE TABLE` statement, as a prototype of the tool runs it;
/// opening such a file carries its rows over (see the docs).
pub use schema::RFC_TABLE;

use tierstack_core::{BackendDescriptor, Capabilities};

/// What the SQLite tier can do.
pub const CAPABILITIES: Capabilities = Capabilities::new()
    .with_persistent()
    .with_shared_across_processes()
    .with_native_batch()
    .with_scan()
    .with_size_limit()
    .with_reads_in_place();

tierstack_core::register_backend!(BackendDescriptor {
    name: "sqlite",
    description: "SQLite file (the RFC's metadata_cache table); persistent, shared by processes on one host",
    capabilities: CAPABILITIES,
    example_config: "kind: sqlite\npath: ~/.cache/mk_torrent/metadata.db\nttl: 7d\nmax_size: 512MiB\n",
});
