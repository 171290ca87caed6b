#![doc = include_str!("docs.md")]

/// The repository's guide to writing a backend, whose snippets use this
/// crate: compiled by `cargo test --doc`.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/adding-a-backend.md")]
mod adding_a_backend {}

mod backend;
mod config;
mod error;

pub use backend::FilesTier;
pub use config::FilesConfig;

use tierstack_core::{BackendDescriptor, Capabilities};

/// What the files tier can do.
pub const CAPABILITIES: Capabilities = Capabilities::new()
    .with_persistent()
    .with_shared_across_processes()
    .with_scan();

tierstack_core::register_backend!(BackendDescriptor {
    name: "files",
    description: "A directory with one file per entry (example third-party backend)",
    capabilities: CAPABILITIES,
    example_config: "kind: files\ndir: ~/.cache/tierstack/files\n",
});
