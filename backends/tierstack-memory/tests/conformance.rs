//! The shared behaviour suite, run against the memory tier, capped by
//! entries and by bytes.
// The suite takes an async factory; this one has nothing to await.
#![allow(clippy::unused_async)]

use std::sync::Arc;

use tierstack_conformance::{Harness, conformance_suite};
use tierstack_core::Tier;
use tierstack_memory::{MemoryConfig, MemoryTier};

/// The `size_limit` case's tier: capped by bytes, the cap it is given.
fn capped(harness: Harness) -> Harness {
    harness.capped(|bytes| {
        let tier = MemoryTier::new(&MemoryConfig::with_max_bytes(bytes));
        async move { tier.map(|t| Arc::new(t) as Arc<dyn Tier>) }
    })
}

async fn by_entries() -> Harness {
    capped(Harness::new(
        MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("valid config"),
    ))
}

async fn by_bytes() -> Harness {
    capped(Harness::new(
        MemoryTier::new(&MemoryConfig::with_max_bytes(64 << 20)).expect("valid config"),
    ))
}

conformance_suite! {
    "" => by_entries,
    "by_bytes" => by_bytes,
}
