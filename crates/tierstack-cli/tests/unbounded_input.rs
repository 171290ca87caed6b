//! Input that never ends, inflates without bound or is not text: `import`,
//! `warm` and `bench` stay within a fixed amount of memory (each run here
//! gets an address-space limit far below what holding the input would
//! take), refuse what is not theirs with exit 2, and count a bad line as
//! malformed instead of stopping.

#![cfg(unix)]

mod support;

use std::io::Write as _;

use support::{Run, Sandbox};

const BOOK: &str = "audnexus:book:asin=B002V1A0WE";
/// The address space each run here may use: enough for the binary and its
/// stores, far below the gigabytes the inputs below would take to hold.
const MEMORY_KIB: u64 = 1536 * 1024;
/// Zeros without a newline in the compressed "bomb": above `MEMORY_KIB`.
const BOMB_BYTES: u64 = 2 << 30;

/// An export of one entry in the sandbox: its header line and record line.
fn export_lines(sandbox: &Sandbox) -> (String, String) {
    sandbox.run(&["set", BOOK, r#""Dune""#]).expect(0);
    let run = sandbox.run(&["export", "-"]).expect(0);
    let mut lines = run.stdout.lines();
    let header = lines.next().unwrap().to_owned();
    let record = lines.next().unwrap().to_owned();
    sandbox.run(&["delete", BOOK]).expect(0);
    (header, record)
}

/// Writes `prefix`, `zeros` zero bytes without a newline, then `suffix`,
/// through a zstd encoder, never holding more than a small buffer.
fn zstd_file(sandbox: &Sandbox, name: &str, prefix: &str, zeros: u64, suffix: &str) -> String {
    let path = sandbox.path(name);
    let file = std::fs::File::create(&path).unwrap();
    let mut encoder = zstd::Encoder::new(file, 1).unwrap();
    encoder.write_all(prefix.as_bytes()).unwrap();
    let block = vec![0u8; 1 << 20];
    let mut left = zeros;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        encoder.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    encoder.write_all(suffix.as_bytes()).unwrap();
    encoder.finish().unwrap();
    path.to_str().unwrap().to_owned()
}

fn limited(sandbox: &Sandbox, args: &[&str]) -> Run {
    sandbox.run_limited(args, MEMORY_KIB, 120)
}

#[test]
fn an_endless_stream_is_refused_at_once() {
    let sandbox = Sandbox::new();
    for args in [
        &["import", "/dev/zero"][..],
        &["warm", "--from", "/dev/zero"],
    ] {
        let started = std::time::Instant::now();
        let run = limited(&sandbox, args).expect(2);
        assert!(
            run.stderr.contains("/dev/zero") || run.stderr.contains("not a tierstack export"),
            "{args:?}: {run:?}"
        );
        assert!(!run.stderr.contains("set_many"), "{run:?}");
        assert!(
            started.elapsed().as_secs() < 30,
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_small_zstd_file_that_inflates_to_gigabytes_without_a_newline_stays_bounded() {
    let sandbox = Sandbox::new();
    let (header, record) = export_lines(&sandbox);
    // As the first line: not an export.
    let bomb = zstd_file(&sandbox, "bomb.jsonl.zst", "", BOMB_BYTES, "\n");
    assert!(std::fs::metadata(&bomb).unwrap().len() < 1 << 20);
    let run = limited(&sandbox, &["import", &bomb]).expect(2);
    assert!(run.stderr.contains("not a tierstack export"), "{run:?}");
    // After a valid header: one malformed line, skipped, and the record
    // after it is imported.
    let inside = zstd_file(
        &sandbox,
        "inside.jsonl.zst",
        &format!("{header}\n"),
        BOMB_BYTES,
        &format!("\n{record}\n"),
    );
    let report = limited(&sandbox, &["--json", "import", &inside])
        .expect(0)
        .json();
    assert_eq!(report["malformed"], 1, "{report}");
    assert_eq!(report["imported"], 1, "{report}");
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .contains("longer than"),
        "{report}"
    );
    assert_eq!(
        sandbox.run(&["get", BOOK]).expect(0).stdout.trim(),
        r#""Dune""#
    );
}

#[test]
fn a_line_that_is_not_utf8_is_malformed_like_any_other() {
    let sandbox = Sandbox::new();
    let (header, record) = export_lines(&sandbox);
    let path = sandbox.path("odd.jsonl");
    let mut bytes = format!("{header}\n").into_bytes();
    bytes.extend_from_slice(b"\xff\xfe{\"key\":\"a:k=1\"}\n");
    bytes.extend_from_slice(format!("{record}\n").as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let report = sandbox
        .run(&["--json", "import", path.to_str().unwrap()])
        .expect(0)
        .json();
    assert_eq!(report["malformed"], 1, "{report}");
    assert_eq!(report["imported"], 1, "{report}");
    assert!(
        report["problems"][0].as_str().unwrap().contains("line 2"),
        "{report}"
    );
    assert!(
        report["problems"][0].as_str().unwrap().contains("UTF-8"),
        "{report}"
    );
    sandbox.run(&["get", BOOK]).expect(0);
}

#[test]
fn a_file_that_is_not_an_export_is_a_usage_error_with_a_plain_message() {
    let sandbox = Sandbox::new();
    sandbox.run(&["set", BOOK, "1"]).expect(0);
    let binary = sandbox.path("binary.jsonl");
    std::fs::write(&binary, b"\xff\xfe\x00\x9c binary, not text").unwrap();
    let text = sandbox.write("notes.jsonl", "hello\nworld\n");
    // Not zstd, whatever the name says.
    let named = sandbox.write("plain.jsonl.zst", "hello\n");
    let database = sandbox.path("cache/tierstack/cache.db");
    assert!(database.exists());
    for file in [&binary, &text, &named, &database] {
        let file = file.to_str().unwrap();
        for args in [
            &["import", file][..],
            &["warm", "--from", file, "--exec", "true"],
        ] {
            if args[0] == "warm" && file != binary.to_str().unwrap() {
                // A text file is a key list for warm; its lines are checked there.
                continue;
            }
            let run = sandbox.run(args);
            assert_eq!(run.code, 2, "{args:?}: {run:?}");
            assert!(
                run.stderr.contains("not a tierstack export") || run.stderr.contains("key"),
                "{args:?}: {run:?}"
            );
            assert!(!run.stderr.contains("set_many failed"), "{args:?}: {run:?}");
        }
    }
}

#[test]
fn a_bench_value_above_the_entry_cap_is_refused_before_it_is_built() {
    let sandbox = Sandbox::new();
    for size in ["100GiB", "65MiB"] {
        let run = limited(
            &sandbox,
            &["bench", "--value-size", size, "--duration", "100ms"],
        )
        .expect(2);
        assert!(
            run.stderr.contains("--value-size") && run.stderr.contains("64"),
            "{run:?}"
        );
    }
    for args in [
        &["bench", "--concurrency", "18446744073709551615"][..],
        &["bench", "--keys", "999999999999"],
    ] {
        let run = limited(&sandbox, args).expect(2);
        assert!(run.stderr.contains("at most"), "{args:?}: {run:?}");
    }
    // What the cap allows still runs.
    limited(
        &sandbox,
        &[
            "bench",
            "--value-size",
            "1KiB",
            "--duration",
            "100ms",
            "--keys",
            "10",
        ],
    )
    .expect(0);
}
