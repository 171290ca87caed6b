#![doc = include_str!("../README.md")]
#![allow(clippy::missing_panics_doc, clippy::unwrap_used)]

pub mod broken;
pub mod cases;
pub mod coordination;
pub mod environment;
pub mod processes;
pub mod redis_server;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Completion, Failed, Trial};
use tierstack::{BuildContext, Capabilities, Tier, TierConfig};

/// A future that opens a tier: what [`Harness::reopen_with`] and
/// [`Harness::capped`] hooks return.
pub type OpenFuture = Pin<Box<dyn Future<Output = tierstack::Result<Arc<dyn Tier>>> + Send>>;

type Reopen = Arc<dyn Fn() -> OpenFuture + Send + Sync>;
type Capped = Arc<dyn Fn(u64) -> OpenFuture + Send + Sync>;

/// The schema version every case writes with, and the one a [`Harness`]'s
/// config is built for.
pub const SCHEMA_VERSION: u32 = 1;

/// A tier under test, plus whatever must live as long as it (a temporary
/// directory, a server guard), plus the hooks the capability-gated cases
/// need: how to open the same store again ([`Harness::config`],
/// [`Harness::reopen_with`]) and how to build a tier with a size cap
/// ([`Harness::capped`]).
pub struct Harness {
    /// The tier under test; empty when handed to a case.
    pub tier: Arc<dyn Tier>,
    guards: Vec<Box<dyn Any + Send + Sync>>,
    config: Option<Arc<dyn TierConfig>>,
    reopen: Option<Reopen>,
    capped: Option<Capped>,
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
            config: None,
            reopen: None,
            capped: None,
        }
    }

    /// Keeps `guard` alive until the case ends.
    #[must_use]
    pub fn keep(mut self, guard: impl Any + Send + Sync) -> Self {
        self.guards.push(Box::new(guard));
        self
    }

    /// The config that opens the same store as [`Harness::tier`] (built
    /// with [`SCHEMA_VERSION`]). A tier that declares `persistent` is
    /// reopened from it (unless [`Harness::reopen_with`] says otherwise),
    /// and one that declares `shared_across_processes` is opened from it,
    /// serialised, by a second process.
    #[must_use]
    pub fn config(mut self, config: impl TierConfig + 'static) -> Self {
        self.config = Some(Arc::new(config));
        self
    }

    /// How to open the same store again after the tier was dropped, for
    /// the `persistent` case, when building [`Harness::config`] is not it.
    #[must_use]
    pub fn reopen_with<F, Fut>(mut self, reopen: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = tierstack::Result<Arc<dyn Tier>>> + Send + 'static,
    {
        self.reopen = Some(Arc::new(move || Box::pin(reopen())));
        self
    }

    /// How to build a fresh, empty tier of the same kind whose size cap is
    /// the given number of bytes, for the `size_limit` case. The tier may
    /// live in a directory the harness keeps.
    #[must_use]
    pub fn capped<F, Fut>(mut self, capped: F) -> Self
    where
        F: Fn(u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = tierstack::Result<Arc<dyn Tier>>> + Send + 'static,
    {
        self.capped = Some(Arc::new(move |bytes| Box::pin(capped(bytes))));
        self
    }

    /// The config, serialised for a second process.
    pub(crate) fn config_json(&self) -> Option<String> {
        self.config
            .as_ref()
            .map(|c| serde_json::to_string(&**c).expect("a tier config serialises"))
    }

    /// A fresh tier capped at `bytes`, from the [`Harness::capped`] hook.
    pub(crate) async fn capped_tier(&self, bytes: u64) -> Arc<dyn Tier> {
        let capped = self.capped.as_ref().expect(
            "the tier declares `size_limit`, but the harness has no `Harness::capped` hook to build one with a small cap",
        );
        capped(bytes).await.expect("the capped tier opens")
    }

    /// Drops the tier and opens the same store again. A store may hold a
    /// lock for a moment after its last handle is dropped (a flusher
    /// thread finishing), so opening is retried for up to 10 s.
    pub(crate) async fn reopened(self) -> Self {
        let reopen: Reopen = match (&self.reopen, &self.config) {
            (Some(reopen), _) => Arc::clone(reopen),
            (None, Some(config)) => {
                let config = Arc::clone(config);
                Arc::new(move || {
                    let config = Arc::clone(&config);
                    Box::pin(async move { config.build(&BuildContext::new(SCHEMA_VERSION)).await })
                })
            }
            (None, None) => panic!(
                "the tier declares `persistent`, but the harness gives no way to reopen it (`Harness::config` or `Harness::reopen_with`)"
            ),
        };
        let Self {
            tier,
            guards,
            config,
            reopen: hook,
            capped,
        } = self;
        drop(tier);
        let started = Instant::now();
        let tier = loop {
            match reopen().await {
                Ok(tier) => break tier,
                Err(_) if started.elapsed() < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the store does not open again: {e}"),
            }
        };
        Self {
            tier,
            guards,
            config,
            reopen: hook,
            capped,
        }
    }
}

/// The capability a [`Case`] proves, and so needs: a tier that does not
/// declare it skips the case (reported as ignored, with the reason).
#[derive(Clone, Copy)]
pub struct Gate {
    /// The capability's name, as [`Capabilities::names`] gives it.
    pub capability: &'static str,
    /// Whether a tier's capabilities include it.
    pub declared: fn(&Capabilities) -> bool,
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
    /// The capability the case needs, if any.
    pub needs: Option<Gate>,
}

impl Case {
    /// Why the case does not apply to a tier with `capabilities`, or
    /// `None` when it does. The runner reports such a case as ignored with
    /// this reason; it never passes a case it did not run.
    pub fn skip_reason(&self, capabilities: &Capabilities) -> Option<String> {
        let gate = self.needs?;
        if (gate.declared)(capabilities) {
            None
        } else {
            Some(format!("the tier does not declare `{}`", gate.capability))
        }
    }
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

/// A backend's tiers under one label: what [`conformance_suite!`] runs.
#[derive(Clone, Copy)]
pub struct Suite {
    label: &'static str,
    make: fn() -> Pin<Box<dyn Future<Output = Harness>>>,
}

impl Suite {
    /// A suite whose tests are named `label::case` (just `case` for an
    /// empty label), each on a fresh harness from `make`.
    pub fn new(label: &'static str, make: fn() -> Pin<Box<dyn Future<Output = Harness>>>) -> Self {
        Self { label, make }
    }

    /// One test per case, as [`run_suites`] runs them: a case gated on a
    /// capability the tier does not declare is ignored at run time, with
    /// the reason. Public so that the self-test can run the runner itself.
    pub fn trials(self) -> Vec<Trial> {
        all_cases()
            .into_iter()
            .map(|case| self.trial(case))
            .collect()
    }

    fn trial(self, case: Case) -> Trial {
        let name = if self.label.is_empty() {
            case.name.to_owned()
        } else {
            format!("{}::{}", self.label, case.name)
        };
        Trial::ignorable_test(name, move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| Failed::from(format!("tokio runtime: {e}")))?;
            runtime.block_on(async move {
                let harness = (self.make)().await;
                if let Some(reason) = case.skip_reason(&harness.tier.capabilities()) {
                    return Ok(Completion::ignored_with(reason));
                }
                (case.run)(harness).await;
                Ok::<_, Failed>(Completion::Completed)
            })
        })
    }
}

/// The `main` of a conformance test binary (`harness = false`), which
/// [`conformance_suite!`] writes: one test per case and suite, with the
/// command-line interface of `cargo test` (filters, `--list`,
/// `--test-threads`). A case gated on a capability the tier does not
/// declare is reported as ignored, with the reason. When the binary is
/// started as a case's second process it plays that part instead.
pub fn run_suites(suites: &[Suite]) -> ! {
    processes::serve_as_second_process_if_asked();
    let args = Arguments::from_args();
    let trials = suites.iter().flat_map(|suite| suite.trials()).collect();
    libtest_mimic::run(&args, trials).exit()
}

/// The one list of conformance cases: calls [`conformance_suite!`] with
/// `$prefix` followed by the case names, each with the capability it needs
/// in brackets. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_conformance_cases {
    ($($prefix:tt)*) => {
        $crate::conformance_suite! { $($prefix)*
            get_of_missing_key_is_none,
            set_then_get_returns_the_entry,
            set_overwrites_previous_value,
            renew_replaces_the_header_and_keeps_the_body,
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
            scan_pages_through_every_entry [scan],
            health_is_reported,
            declared_capabilities_are_consistent,
            cache_copies_up_with_the_remaining_ttl,
            cache_caps_copy_up_to_the_upper_tier_ttl,
            cache_writes_through_to_the_tier,
            damaged_body_is_a_counted_miss,
            other_schema_versions_are_counted_misses,
            value_of_another_type_is_a_miss_not_an_error,
            entry_under_another_key_is_a_counted_miss,
            entries_survive_a_reopen [persistent],
            a_second_process_sees_a_write_and_writes_back [shared_across_processes],
            a_capped_tier_stays_within_its_cap [size_limit],
            the_store_expires_entries_itself [native_ttl],
            hits_are_served_from_the_kept_decoded_value [keeps_decoded],
            get_ready_and_set_ready_answer_without_io [answers_without_io],
            get_ready_reads_what_get_reads [reads_in_place],
        }
    };
}

/// Writes the `main` of a conformance test binary: one test per case (see
/// [`run_suites`]). `$make` is an async function (or closure returning a
/// future) that returns a [`Harness`] with an empty tier; several labelled
/// factories (`"by_bytes" => by_bytes::make`) run the suite on each. The
/// test target needs `harness = false` in `Cargo.toml`:
///
/// ```toml
/// [[test]]
/// name = "conformance"
/// harness = false
/// ```
#[macro_export]
macro_rules! conformance_suite {
    (@list $($case:ident $([$capability:ident])?),* $(,)?) => {
        vec![$(
            $crate::Case {
                name: stringify!($case),
                run: |harness| Box::pin($crate::cases::$case(harness)),
                needs: $crate::__gate!($($capability)?),
            }
        ),*]
    };
    ($($label:literal => $make:expr),+ $(,)?) => {
        fn main() {
            $crate::run_suites(&[$(
                $crate::Suite::new(
                    $label,
                    || -> ::std::pin::Pin<Box<dyn ::std::future::Future<Output = $crate::Harness>>> {
                        Box::pin(($make)())
                    },
                ),
            )+]);
        }
    };
    ($make:expr) => {
        $crate::conformance_suite! { "" => $make }
    };
}

/// The [`Gate`] of a capability name, or `None`. Not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __gate {
    () => {
        None
    };
    ($capability:ident) => {
        Some($crate::Gate {
            capability: stringify!($capability),
            declared: |c| c.$capability,
        })
    };
}
