//! Runs the metadata pipeline example at a smaller size and checks its
//! table: the warm run makes no upstream call and sees no 429, the offline
//! run answers every lookup seen before, no answer is wrong.

use std::path::PathBuf;
use std::process::Command;

/// `cargo test` builds the examples next to the test binaries.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    dir.join("examples").join(name)
}

/// The columns of one row of the example's table.
fn row<'a>(table: &'a str, run: &str) -> Vec<&'a str> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(run))
        .unwrap_or_else(|| panic!("no {run} row in:\n{table}"))
        .split_whitespace()
        .collect()
}

#[test]
fn warm_run_needs_no_upstream_call_and_offline_answers_everything() {
    let binary = example("metadata_pipeline");
    assert!(
        binary.exists(),
        "{} not built; run through `cargo test`",
        binary.display()
    );
    let out = Command::new(&binary)
        .env("PIPELINE_LOOKUPS", "300")
        .output()
        .expect("example runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "example failed:\n{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // run upstream 429s wall L1 L2 stale errors wrong
    let cold = row(&table, "cold");
    let warm = row(&table, "warm");
    let offline = row(&table, "offline");
    assert_ne!(cold[1], "0", "the cold run must call the API:\n{table}");
    assert_eq!(
        (warm[1], warm[2]),
        ("0", "0"),
        "warm run upstream calls and 429s:\n{table}"
    );
    assert_eq!(offline[1], "0", "offline run called the API:\n{table}");
    for r in [&cold, &warm, &offline] {
        assert_eq!(r[7], "0", "errors in {}:\n{table}", r[0]);
        assert_eq!(r[8], "0", "wrong answers in {}:\n{table}", r[0]);
    }
}
