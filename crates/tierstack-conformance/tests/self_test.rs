//! The conformance suite proves itself: every case passes on the memory
//! tier (bare, and through the fault-free wrapper), and every deliberately
//! broken tier of [`tierstack_conformance::broken`] is caught by the cases
//! named below. A fault that no case catches fails this test: that is a
//! hole in the suite, to be closed by a case.

use std::collections::BTreeSet;

use tierstack::{MemoryConfig, MemoryTier};
use tierstack_conformance::broken::{BrokenTier, Fault};
use tierstack_conformance::{Harness, all_cases};

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
        _ => unreachable!("a new fault needs its expected cases here"),
    }
}

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

/// Runs every case on a fresh tier from `make`, all at once; returns the
/// failing cases with their messages.
async fn failures(make: impl Fn() -> Harness) -> Vec<(&'static str, String)> {
    let mut running = Vec::new();
    for case in all_cases() {
        running.push((case.name, tokio::spawn((case.run)(make()))));
    }
    let mut failed = Vec::new();
    for (name, task) in running {
        if let Err(error) = task.await {
            assert!(error.is_panic(), "{name} was cancelled");
            failed.push((name, message(&*error.into_panic())));
        }
    }
    failed
}

fn memory() -> Harness {
    Harness::new(MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("valid config"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broken_tier_is_caught_and_the_memory_tier_is_not() {
    // Panics are the expected outcome of most runs below; keep them quiet
    // and print the table instead.
    std::panic::set_hook(Box::new(|_| {}));

    let mut problems = Vec::new();
    let names: BTreeSet<&str> = all_cases().iter().map(|c| c.name).collect();
    if names.len() != all_cases().len() {
        problems.push("a case is listed twice".to_string());
    }
    let bare = failures(memory).await;
    for (name, why) in &bare {
        problems.push(format!("the memory tier fails {name}: {why}"));
    }

    println!("broken tier -> cases that caught it");
    for fault in Fault::ALL {
        let failed = failures(|| Harness::new(BrokenTier::memory(fault))).await;
        println!("{fault:?}: {} case(s)", failed.len());
        for (name, why) in &failed {
            println!("    {name}: {why}");
        }
        let caught: BTreeSet<&str> = failed.iter().map(|(n, _)| *n).collect();
        if fault == Fault::None {
            for (name, why) in &failed {
                problems.push(format!("the fault-free wrapper fails {name}: {why}"));
            }
        } else if caught.is_empty() {
            problems.push(format!(
                "{fault:?} is caught by no case: a hole in the suite"
            ));
        }
        for expected in must_catch(fault) {
            if !caught.contains(expected) {
                problems.push(format!("{fault:?} is not caught by {expected}"));
            }
        }
    }

    let _ = std::panic::take_hook();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
