#![doc = include_str!("docs.md")]

mod backend;
mod config;
mod error;

pub use backend::FilesTier;
pub use config::FilesConfig;

use tierstack_core::{BackendDescriptor, Capabilities};

/// What the files tier can do.
pub const CAPABILITIES: Capabilities = Capabilities {
    persistent: true,
    shared_across_processes: true,
    scan: true,
    ..Capabilities::NONE
};

tierstack_core::register_backend!(BackendDescriptor {
    name: "files",
    description: "A directory with one file per entry (example third-party backend)",
    capabilities: CAPABILITIES,
    example_config: "kind: files\ndir: ~/.cache/tierstack/files\n",
});
