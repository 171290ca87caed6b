//! The registry of compiled-in backends.
//!
//! Each backend crate registers one [`BackendDescriptor`] with
//! [`register_backend!`](crate::register_backend); `tierstack backends` and
//! config errors list what is registered. Registration happens at link time
//! (`inventory`), so a third-party crate adds a backend without touching
//! tierstack.

use crate::tier::Capabilities;

/// Describes a backend: its `kind` name, what it is, what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendDescriptor {
    /// The `kind` used in config files.
    pub name: &'static str,
    /// One line for humans.
    pub description: &'static str,
    /// What the backend can do.
    pub capabilities: Capabilities,
    /// A config snippet (YAML) selecting the backend with typical settings.
    pub example_config: &'static str,
}

inventory::collect!(BackendDescriptor);

/// Every registered backend, sorted by name.
pub fn backends() -> Vec<&'static BackendDescriptor> {
    let mut all: Vec<_> = inventory::iter::<BackendDescriptor>.into_iter().collect();
    all.sort_by_key(|d| d.name);
    all.dedup_by_key(|d| d.name);
    all
}

/// Looks up a backend by name.
pub fn backend(name: &str) -> Option<&'static BackendDescriptor> {
    inventory::iter::<BackendDescriptor>
        .into_iter()
        .find(|d| d.name == name)
}

/// Registers a backend descriptor. One call per backend crate:
///
/// ```
/// use tierstack_core::{BackendDescriptor, Capabilities};
///
/// tierstack_core::register_backend!(BackendDescriptor {
///     name: "doc-example",
///     description: "A backend registered in a doc test",
///     capabilities: Capabilities::NONE,
///     example_config: "kind: doc-example\n",
/// });
///
/// assert!(tierstack_core::backend("doc-example").is_some());
/// ```
#[macro_export]
macro_rules! register_backend {
    ($descriptor:expr) => {
        $crate::__private::inventory::submit! { $descriptor }
    };
}
