//! The conformance suite proves itself: every case passes on the memory
//! tier (bare, and through the fault-free wrapper), the capability-gated
//! cases pass on a tier that has the capability (the memory tier, and the
//! SQLite tier for `persistent` and `shared_across_processes`) and are
//! skipped, visibly, on one that does not declare it, and every
//! deliberately broken tier of [`tierstack_conformance::broken`] is caught
//! by the cases named below. A fault that no case catches fails this test:
//! that is a hole in the suite, to be closed by a case.
//!
//! `harness = false`: the `shared_across_processes` case starts this binary
//! again as its second process.

use std::collections::BTreeSet;
use std::sync::Arc;

use libtest_mimic::{Arguments, Conclusion, Failed, Trial};
use tierstack::{MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, Tier};
use tierstack_conformance::broken::{BrokenTier, Fault};
use tierstack_conformance::processes::serve_as_second_process_if_asked;
use tierstack_conformance::{Case, Harness, SCHEMA_VERSION, Suite, all_cases};

/// The cases that must catch each fault (they may not be the only ones).
fn must_catch(fault: Fault) -> &'static [&'static str] {
    match fault {
        Fault::None => &[],
        Fault::DropsEveryWrite => &[
            "set_then_get_returns_the_entry",
            "set_many_then_get_many",
            "concurrent_writers_on_distinct_keys_are_all_visible",
            "cache_writes_through_to_the_tier",
        ],
        Fault::IgnoresTtl => &[
            "entry_past_its_stale_window_is_not_returned",
            "header_times_are_preserved",
            "clear_expired_keeps_fresh_entries",
        ],
        Fault::ClearsEverythingWhateverTheScope => &[
            "clear_source_removes_only_that_source",
            "clear_expired_keeps_fresh_entries",
        ],
        Fault::ClearsNothing => &[
            "clear_all_removes_everything",
            "clear_source_removes_only_that_source",
            "clear_expired_keeps_fresh_entries",
        ],
        Fault::DropsOneWriteIn50 => &[
            "set_many_then_get_many",
            "concurrent_writers_on_distinct_keys_are_all_visible",
        ],
        Fault::ExpiryOffBy1Ms => &[
            "header_times_are_preserved",
            "cache_copies_up_with_the_remaining_ttl",
        ],
        Fault::LosesLastScanPage | Fault::DuplicateInScan => &["scan_pages_through_every_entry"],
        Fault::TruncatesGetMany => &[
            "get_many_returns_one_slot_per_key_in_order",
            "set_many_then_get_many",
        ],
        Fault::WritesFullDefaultTtl => &[
            "header_times_are_preserved",
            "cache_copies_up_with_the_remaining_ttl",
            "cache_writes_through_to_the_tier",
        ],
        Fault::FlipsAByteIn1Of100Reads => &["concurrent_writers_on_distinct_keys_are_all_visible"],
        Fault::SizesTenPercentLow => &["size_counts_entries_and_bytes"],
        Fault::ClaimsPersistentButForgets => &["entries_survive_a_reopen"],
        Fault::ClaimsSharedAcrossProcesses => &["a_second_process_sees_a_write_and_writes_back"],
        Fault::ClaimsSizeLimitButNeverEvicts => &["a_capped_tier_stays_within_its_cap"],
        Fault::ClaimsNativeTtl => &["the_store_expires_entries_itself"],
        Fault::ForgetsDecoded => &["hits_are_served_from_the_kept_decoded_value"],
        Fault::ClaimsAnswersWithoutIo => &["get_ready_and_set_ready_answer_without_io"],
        Fault::ClaimsReadsInPlace => &["get_ready_reads_what_get_reads"],
        Fault::ClaimsSharedAcrossHostsOnly => &["declared_capabilities_are_consistent"],
        _ => unreachable!("a new fault needs its expected cases here"),
    }
}

/// The gated cases skipped for a tier that declares exactly the memory
/// tier's capabilities, through the wrapper (which clears
/// `answers_without_io`) or bare.
const SKIPPED_ON_THE_WRAPPER: [&str; 5] = [
    "entries_survive_a_reopen",
    "a_second_process_sees_a_write_and_writes_back",
    "the_store_expires_entries_itself",
    "get_ready_and_set_ready_answer_without_io",
    "get_ready_reads_what_get_reads",
];
const SKIPPED_ON_BARE_MEMORY: [&str; 4] = [
    "entries_survive_a_reopen",
    "a_second_process_sees_a_write_and_writes_back",
    "the_store_expires_entries_itself",
    "get_ready_reads_what_get_reads",
];

/// The first line of a panic's message, shortened.
fn message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(110).collect()
}

/// What running the suite on one kind of tier gave.
#[derive(Default)]
struct Outcome {
    failed: Vec<(&'static str, String)>,
    skipped: Vec<&'static str>,
}

/// Runs `cases` on a fresh tier from `make`, all at once, skipping those
/// the tier does not declare the capability for (the runner's rule,
/// `Case::skip_reason`).
async fn run(cases: &[Case], make: impl Fn() -> Harness) -> Outcome {
    let mut outcome = Outcome::default();
    let mut running = Vec::new();
    for case in cases {
        let harness = make();
        if case.skip_reason(&harness.tier.capabilities()).is_some() {
            outcome.skipped.push(case.name);
            continue;
        }
        running.push((case.name, tokio::spawn((case.run)(harness))));
    }
    for (name, task) in running {
        if let Err(error) = task.await {
            assert!(error.is_panic(), "{name} was cancelled");
            outcome.failed.push((name, message(&*error.into_panic())));
        }
    }
    outcome
}

fn memory() -> Harness {
    Harness::new(MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("valid config"))
        .capped(|bytes| {
            let tier = MemoryTier::new(&MemoryConfig::with_max_bytes(bytes));
            async move { tier.map(|t| Arc::new(t) as Arc<dyn Tier>) }
        })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn quietly<T>(f: impl FnOnce() -> T) -> T {
    // Panics are the expected outcome of most runs; keep them quiet and
    // print the table instead. The hook is process-wide, so the trials
    // run one at a time (see `main`).
    std::panic::set_hook(Box::new(|_| {}));
    let result = f();
    let _ = std::panic::take_hook();
    result
}

fn every_broken_tier_is_caught_and_the_memory_tier_is_not() -> Result<(), Failed> {
    let problems = quietly(|| {
        runtime().block_on(async {
            let cases = all_cases();
            let mut problems = Vec::new();
            let names: BTreeSet<&str> = cases.iter().map(|c| c.name).collect();
            if names.len() != cases.len() {
                problems.push("a case is listed twice".to_string());
            }
            let bare = run(&cases, memory).await;
            for (name, why) in &bare.failed {
                problems.push(format!("the memory tier fails {name}: {why}"));
            }
            if bare.skipped != SKIPPED_ON_BARE_MEMORY {
                problems.push(format!(
                    "the memory tier skipped {:?}, expected {SKIPPED_ON_BARE_MEMORY:?}",
                    bare.skipped
                ));
            }

            println!("broken tier -> cases that caught it");
            for fault in Fault::ALL {
                let outcome = run(&cases, || BrokenTier::harness(fault)).await;
                println!(
                    "{fault:?}: {} case(s), {} skipped",
                    outcome.failed.len(),
                    outcome.skipped.len()
                );
                for (name, why) in &outcome.failed {
                    println!("    {name}: {why}");
                }
                let caught: BTreeSet<&str> = outcome.failed.iter().map(|(n, _)| *n).collect();
                if fault == Fault::None {
                    for (name, why) in &outcome.failed {
                        problems.push(format!("the fault-free wrapper fails {name}: {why}"));
                    }
                    if outcome.skipped != SKIPPED_ON_THE_WRAPPER {
                        problems.push(format!(
                            "the fault-free wrapper skipped {:?}, expected {SKIPPED_ON_THE_WRAPPER:?}",
                            outcome.skipped
                        ));
                    }
                } else if caught.is_empty() {
                    problems.push(format!(
                        "{fault:?} is caught by no case: a hole in the suite"
                    ));
                }
                for expected in must_catch(fault) {
                    if outcome.skipped.contains(expected) {
                        problems.push(format!("{fault:?}: {expected} was skipped, not run"));
                    } else if !caught.contains(expected) {
                        problems.push(format!("{fault:?} is not caught by {expected}"));
                    }
                }
            }
            problems
        })
    });
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

/// The honest control for the cases the memory tier cannot run: a real
/// SQLite file, reopened and opened by a second process from its config.
fn the_sqlite_tier_passes_the_persistence_and_second_process_cases() -> Result<(), Failed> {
    let wanted = [
        "entries_survive_a_reopen",
        "a_second_process_sees_a_write_and_writes_back",
    ];
    let cases: Vec<Case> = all_cases()
        .into_iter()
        .filter(|c| wanted.contains(&c.name))
        .collect();
    assert_eq!(cases.len(), wanted.len());
    let outcome = quietly(|| {
        runtime().block_on(async {
            let mut outcomes = Outcome::default();
            for case in &cases {
                let dir = tempfile::tempdir().expect("temp dir");
                let config = SqliteConfig::new(dir.path().join("cache.db")).ttl(None);
                let tier = SqliteTier::open(&config, SCHEMA_VERSION)
                    .await
                    .expect("opens");
                let harness = Harness::new(tier).config(config).keep(dir);
                if case.skip_reason(&harness.tier.capabilities()).is_some() {
                    outcomes.skipped.push(case.name);
                    continue;
                }
                if let Err(error) = tokio::spawn((case.run)(harness)).await {
                    outcomes
                        .failed
                        .push((case.name, message(&*error.into_panic())));
                }
            }
            outcomes
        })
    });
    let mut problems: Vec<String> = outcome
        .failed
        .iter()
        .map(|(n, why)| format!("the SQLite tier fails {n}: {why}"))
        .collect();
    problems.extend(
        outcome
            .skipped
            .iter()
            .map(|n| format!("the SQLite tier skipped {n}")),
    );
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

/// Runs the runner's own trials for `suite` (quietly, one at a time).
fn conclusion(suite: Suite) -> Conclusion {
    let args = Arguments {
        quiet: true,
        test_threads: Some(1),
        ..Arguments::default()
    };
    quietly(|| libtest_mimic::run(&args, suite.trials()))
}

/// The runner (what `conformance_suite!` expands to) reports the cases the
/// memory tier does not declare the capability for as ignored, runs and
/// passes the rest, and fails a false claim rather than skipping it.
fn the_runner_reports_undeclared_cases_as_ignored_and_runs_the_rest() -> Result<(), Failed> {
    let cases = all_cases().len() as u64;
    let skipped = SKIPPED_ON_BARE_MEMORY.len() as u64;
    println!("the runner on the memory tier (must ignore {skipped} cases):");
    let bare = conclusion(Suite::new("memory", || Box::pin(async { memory() })));
    let mut problems = Vec::new();
    if (bare.num_passed, bare.num_failed, bare.num_ignored) != (cases - skipped, 0, skipped) {
        problems.push(format!(
            "the memory tier: {bare:?}, expected {} passed and {skipped} ignored",
            cases - skipped
        ));
    }
    // The nested run prints its own summary, "FAILED" included: that
    // failure is the expected outcome, checked below.
    println!("the runner on a tier that falsely claims `persistent` (must fail one case):");
    let lying = conclusion(Suite::new("claims persistent", || {
        Box::pin(async { BrokenTier::harness(Fault::ClaimsPersistentButForgets) })
    }));
    // The wrapper clears `answers_without_io` and `reads_in_place`; it
    // claims `persistent`, so that case runs (and fails) instead of being
    // ignored.
    if (lying.num_failed, lying.num_ignored) != (1, 4) {
        problems.push(format!(
            "a tier claiming `persistent` falsely: {lying:?}, expected 1 failed and 4 ignored"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

/// A tier that declares `size_limit` but whose harness has no `capped`
/// hook fails the case, with a message naming the hook.
fn a_declared_capability_without_its_hook_fails_naming_the_hook() -> Result<(), Failed> {
    let case = all_cases()
        .into_iter()
        .find(|c| c.name == "a_capped_tier_stays_within_its_cap")
        .expect("the size_limit case");
    let outcome = quietly(|| {
        runtime().block_on(run(&[case], || {
            Harness::new(
                MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("valid config"),
            )
        }))
    });
    match outcome.failed.as_slice() {
        [(_, message)] if message.contains("Harness::capped") => Ok(()),
        other => Err(format!(
            "expected one failure naming Harness::capped, got {other:?} (skipped: {:?})",
            outcome.skipped
        )
        .into()),
    }
}

fn main() {
    serve_as_second_process_if_asked();
    let mut args = Arguments::from_args();
    // The panic hook is process-wide: one trial at a time.
    args.test_threads = Some(1);
    let trials = vec![
        Trial::test(
            "every_broken_tier_is_caught_and_the_memory_tier_is_not",
            every_broken_tier_is_caught_and_the_memory_tier_is_not,
        ),
        Trial::test(
            "the_sqlite_tier_passes_the_persistence_and_second_process_cases",
            the_sqlite_tier_passes_the_persistence_and_second_process_cases,
        ),
        Trial::test(
            "the_runner_reports_undeclared_cases_as_ignored_and_runs_the_rest",
            the_runner_reports_undeclared_cases_as_ignored_and_runs_the_rest,
        ),
        Trial::test(
            "a_declared_capability_without_its_hook_fails_naming_the_hook",
            a_declared_capability_without_its_hook_fails_naming_the_hook,
        ),
    ];
    libtest_mimic::run(&args, trials).exit();
}
