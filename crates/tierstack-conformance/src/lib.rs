#![doc = include_str!("../README.md")]
#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

pub mod broken;
pub mod cases;
pub mod coordination;
pub mod processes;
pub mod redis_server;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tierstack::Tier;

/// A tier under test, plus whatever must live as long as it (a temporary
/// directory, a server guard).
pub struct Harness {
    /// The tier under test; empty when handed to a case.
    pub tier: Arc<dyn Tier>,
    guards: Vec<Box<dyn Any + Send + Sync>>,
}

impl Harness {
    /// Wraps a freshly built, empty tier.
    pub fn new(tier: impl Tier + 'static) -> Self {
        Self::shared(Arc::new(tier))
    }

    /// Wraps an already shared tier.
    pub fn shared(tier: Arc<dyn Tier>) -> Self {
        Self {
            tier,
            guards: Vec::new(),
        }
    }

    /// Keeps `guard` alive until the case ends.
    #[must_use]
    pub fn keep(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guards.push(Box::new(guard));
        self
    }
}

/// One conformance case, callable on its own: the self-test
/// (`tests/self_test.rs`) runs every case against the deliberately
/// [`broken`] tiers and checks that each is caught.
#[derive(Clone, Copy)]
pub struct Case {
    /// The case's name, as in [`cases`] and in the tests
    /// [`conformance_suite!`] generates.
    pub name: &'static str,
    /// Runs the case on a harness; panics when the tier misbehaves.
    pub run: fn(Harness) -> CaseFuture,
}

/// The future a [`Case`] returns.
pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every conformance case, in the order [`conformance_suite!`] lists them
/// (both come from one list).
pub fn all_cases() -> Vec<Case> {
    crate::__with_conformance_cases! { @list }
}

/// The one list of conformance cases: calls [`conformance_suite!`] with
/// `$prefix` followed by the case names. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_conformance_cases {
    ($($prefix:tt)*) => {
        $crate::conformance_suite! { $($prefix)*
            get_of_missing_key_is_none,
            set_then_get_returns_the_entry,
            set_overwrites_previous_value,
            delete_removes_the_entry,
            delete_of_missing_key_returns_false,
            empty_value_round_trips,
            one_mib_value_round_trips,
            entry_past_its_stale_window_is_not_returned,
            expired_entry_within_stale_window_is_kept,
            header_times_are_preserved,
            get_many_returns_one_slot_per_key_in_order,
            get_many_of_no_keys_is_empty,
            set_many_then_get_many,
            set_many_overwrites_existing_entries,
            clear_all_removes_everything,
            clear_source_removes_only_that_source,
            clear_expired_keeps_fresh_entries,
            size_counts_entries_and_bytes,
            concurrent_writers_on_one_key_leave_one_intact_value,
            concurrent_writers_on_distinct_keys_are_all_visible,
            keys_with_reserved_characters_are_distinct,
            unicode_and_hashed_keys_round_trip,
            scan_pages_through_every_entry,
            health_is_reported,
            cache_copies_up_with_the_remaining_ttl,
            cache_caps_copy_up_to_the_upper_tier_ttl,
            cache_writes_through_to_the_tier,
            damaged_body_is_a_counted_miss,
            other_schema_versions_are_counted_misses,
            value_of_another_type_is_a_miss_not_an_error,
            entry_under_another_key_is_a_counted_miss,
        }
    };
}

/// Expands to one `#[tokio::test]` per conformance case. `$make` is an async
/// function (or closure returning a future) that returns a [`Harness`] with
/// an empty tier. The calling crate needs `tokio` (with `macros` and
/// `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! conformance_suite {
    (@list $($case:ident),* $(,)?) => {
        vec![$(
            $crate::Case {
                name: stringify!($case),
                run: |harness| Box::pin($crate::cases::$case(harness)),
            }
        ),*]
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness: $crate::Harness = ($make)().await;
                $crate::cases::$case(harness).await;
            }
        )*
    };
    ($make:expr) => {
        $crate::__with_conformance_cases! { @cases $make; }
    };
}
