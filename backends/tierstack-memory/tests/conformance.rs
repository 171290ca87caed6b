//! The shared behaviour suite, run against the memory tier.
// The suite takes an async factory; this one has nothing to await.
#![allow(clippy::unused_async)]

use tierstack_conformance::{Harness, conformance_suite};
use tierstack_memory::{MemoryConfig, MemoryTier};

async fn make() -> Harness {
    Harness::new(MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("valid config"))
}

conformance_suite!(make);

mod by_bytes {
    use super::*;

    async fn make() -> Harness {
        Harness::new(
            MemoryTier::new(&MemoryConfig::with_max_bytes(64 << 20)).expect("valid config"),
        )
    }

    conformance_suite!(make);
}
