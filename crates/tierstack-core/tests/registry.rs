//! The registry lists what was registered at link time, sorted by name,
//! once per name, and finds a backend by its `kind`.

use tierstack_core::{BackendDescriptor, Capabilities};

tierstack_core::register_backend!(BackendDescriptor {
    name: "registry-test-b",
    description: "registered second, listed second",
    capabilities: Capabilities::NONE,
    example_config: "kind: registry-test-b\n",
});

tierstack_core::register_backend!(BackendDescriptor {
    name: "registry-test-a",
    description: "listed first",
    capabilities: Capabilities::new().with_persistent(),
    example_config: "kind: registry-test-a\n",
});

tierstack_core::register_backend!(BackendDescriptor {
    name: "registry-test-b",
    description: "the same name again",
    capabilities: Capabilities::NONE,
    example_config: "kind: registry-test-b\n",
});

#[test]
fn backends_are_listed_sorted_once_each_and_found_by_name() {
    let names: Vec<&str> = tierstack_core::backends()
        .iter()
        .map(|d| d.name)
        .filter(|n| n.starts_with("registry-test-"))
        .collect();
    assert_eq!(names, ["registry-test-a", "registry-test-b"]);
    let a = tierstack_core::backend("registry-test-a").expect("registered");
    assert_eq!(a.description, "listed first");
    assert!(a.capabilities.persistent);
    assert!(tierstack_core::backend("registry-test-none").is_none());
}
