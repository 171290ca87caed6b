//! A command that stores nothing never says it stored something: a value
//! above the entry cap, a cache without tiers or disabled, a TTL of zero
//! and an input read from a pipe each end non-zero (or are refused when the
//! config is read) with a message saying what was not stored and why.

#![cfg(unix)]

mod support;

use support::{Sandbox, stack_config};

const BOOK: &str = "audnexus:book:asin=B002V1A0WE";

/// An export of one entry, made in a sandbox of its own.
fn an_export() -> String {
    let sandbox = Sandbox::new();
    sandbox.run(&["set", BOOK, r#""Dune""#]).expect(0);
    sandbox.run(&["export", "-"]).expect(0).stdout
}

#[test]
fn a_fetched_value_above_the_entry_cap_is_reported_as_not_stored() {
    let sandbox = Sandbox::new();
    let keys = sandbox.write("keys.txt", &format!("{BOOK}\n"));
    // A JSON string of 70 MB: above the default cap of 64 MiB.
    let huge = r#"printf '"'; head -c 70000000 /dev/zero | tr '\0' x; printf '"'"#;
    let run = sandbox
        .run(&["warm", "--from", keys.to_str().unwrap(), "--exec", huge])
        .expect(3);
    assert!(
        run.stderr.contains("1 of 1 fetched values were not stored")
            && run.stderr.contains("entry cap"),
        "{run:?}"
    );
    assert!(run.stdout.contains("0 fetched"), "{run:?}");
    sandbox.run(&["get", BOOK]).expect(1);
}

#[test]
fn warm_reads_a_pipe_once() {
    let export = an_export();
    for from in ["/dev/stdin", "-"] {
        let sandbox = Sandbox::new();
        let report = sandbox
            .run_with_input(&["--json", "warm", "--from", from], &export)
            .expect(0)
            .json();
        assert_eq!(report["imported"], 1, "{from}: {report}");
        assert_eq!(
            sandbox.run(&["get", BOOK]).expect(0).stdout.trim(),
            r#""Dune""#
        );
        // A key list through the pipe, too.
        let report = sandbox
            .run_with_input(
                &[
                    "--json",
                    "warm",
                    "--from",
                    from,
                    "--exec",
                    r#"printf '"fetched"'"#,
                ],
                "audnexus:book:asin=1\naudnexus:book:asin=2\n",
            )
            .expect(0)
            .json();
        assert_eq!(report["fetched"], 2, "{from}: {report}");
    }
}

#[test]
fn a_cache_without_tiers_or_disabled_refuses_to_store() {
    let sandbox = Sandbox::new();
    let export = sandbox.write("e.jsonl", &an_export());
    let export = export.to_str().unwrap();
    let keys = sandbox.write("keys.txt", &format!("{BOOK}\n"));
    let keys = keys.to_str().unwrap();
    let cases = [
        ("none.yaml", "cache:\n  tiers: []\n", "tiers is empty"),
        ("off.yaml", "cache:\n  enabled: false\n", "disabled"),
    ];
    for (name, text, why) in cases {
        let config = sandbox.write(name, text);
        let config = config.to_str().unwrap();
        for args in [
            &["set", BOOK, "1"][..],
            &["import", export],
            &["warm", "--from", export],
            &["warm", "--from", keys, "--exec", "printf 1"],
        ] {
            let mut all = vec!["--config", config];
            all.extend_from_slice(args);
            let run = sandbox.run(&all);
            assert_eq!(run.code, 2, "{name} {args:?}: {run:?}");
            assert!(run.stderr.contains(why), "{name} {args:?}: {run:?}");
            assert!(
                !run.stderr.contains("stored ") && !run.stdout.contains("imported"),
                "{name} {args:?}: {run:?}"
            );
        }
    }
}

#[test]
fn a_ttl_of_zero_is_refused() {
    let sandbox = Sandbox::new();
    let db = sandbox.path("c.db");
    let tier_ttl = stack_config("sqlite", &db).replace("ttl: 7d", "ttl: 0s");
    let cases = [
        ("tier.yaml", tier_ttl, "cache.tiers[1].ttl"),
        (
            "default.yaml",
            format!("{}  default_ttl: 0s\n", stack_config("sqlite", &db)),
            "cache.default_ttl",
        ),
        (
            "source.yaml",
            format!(
                "{}  sources:\n    \"audnexus:*\":\n      ttl: 0s\n",
                stack_config("sqlite", &db)
            ),
            "ttl",
        ),
        (
            "flat.yaml",
            format!(
                "cache:\n  memory_ttl_seconds: 0\n  location: \"{}\"\n",
                sandbox.path("flat").display()
            ),
            // The memory tier refuses it itself.
            "ttl must be longer than zero",
        ),
    ];
    for (name, text, field) in cases {
        let config = sandbox.write(name, &text);
        let run = sandbox
            .run(&["--config", config.to_str().unwrap(), "set", BOOK, "1"])
            .expect(2);
        assert!(
            run.stderr.contains(field) && (run.stderr.contains("is 0") || field.contains("zero")),
            "{name}: {run:?}"
        );
    }
    for args in [
        &["set", BOOK, "1", "--ttl", "0s"][..],
        &[
            "warm", "--from", "keys.txt", "--exec", "printf 1", "--ttl", "0s",
        ],
    ] {
        let run = sandbox.run(args).expect(2);
        assert!(run.stderr.contains("TTL of 0"), "{args:?}: {run:?}");
    }
}
