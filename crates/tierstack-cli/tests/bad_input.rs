//! Bad arguments, missing or broken configs, unusable stores and damaged
//! files: each gets a clear message and its exit code, never a panic (the
//! sandbox fails any run whose stderr mentions a panic).

mod support;

use support::{Sandbox, stack_config};

/// Bad command lines, one or more per subcommand.
const BAD_ARGUMENTS: &[&[&str]] = &[
    &[],
    &["nosuchcommand"],
    &["stats", "--nope"],
    &["config"],
    &["config", "frobnicate"],
    &["key"],
    &["key", "src", "no-equals-sign"],
    &["key", "src", "=value"],
    &["key", "src", "a=1", "a=2"],
    &["get"],
    &["get", "no separator"],
    &["get", "src:bad%zzescape=1"],
    &["set", "a:k=1"],
    &["set", "a:k=1", "{not json"],
    &["set", "a:k=1", "1", "--ttl", "forever"],
    &["inspect"],
    &["inspect", "no separator"],
    &["delete"],
    &["delete", "no separator"],
    &["clear", "--source", "x", "--expired"],
    &["clear", "--tier"],
    &["export"],
    &["import"],
    &["warm"],
    &["warm", "--from"],
    &["warm", "--from", "x", "--concurrency", "many"],
    &["purge", "extra"],
    &["backends", "extra"],
];

#[test]
fn bad_arguments_are_usage_errors_for_every_subcommand() {
    let sandbox = Sandbox::new();
    for args in BAD_ARGUMENTS {
        let run = sandbox.run(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(!run.stderr.trim().is_empty(), "{args:?} says why");
        assert!(
            run.stdout.is_empty(),
            "{args:?} prints nothing on stdout: {run:?}"
        );
    }
    // Help is not an error.
    assert!(
        sandbox
            .run(&["--help"])
            .expect(0)
            .stdout
            .contains("Exit codes")
    );
    sandbox.run(&["get", "--help"]).expect(0);
}

#[test]
fn a_missing_config_file_is_named() {
    let mut sandbox = Sandbox::new();
    let run = sandbox
        .run(&["--config", "/nonexistent/tierstack.yaml", "get", "a:k=1"])
        .expect(2);
    assert!(
        run.stderr.contains("/nonexistent/tierstack.yaml"),
        "{run:?}"
    );
    sandbox.env("TIERSTACK_CONFIG", "/nonexistent/from-env.toml");
    let run = sandbox.run(&["stats"]).expect(2);
    assert!(run.stderr.contains("/nonexistent/from-env.toml"), "{run:?}");
}

#[test]
fn broken_configs_are_usage_errors_that_say_where() {
    let sandbox = Sandbox::new();
    let cases = [
        ("syntax.yaml", "cache:\n  tiers: [\n", "syntax.yaml"),
        (
            "kind.yaml",
            "cache:\n  tiers:\n    - kind: memcached\n",
            "memory, redb, redis, sled, sqlite",
        ),
        (
            "field.yaml",
            "cache:\n  tiers:\n    - kind: memory\n      max_entires: 5\n",
            "max_entires",
        ),
        (
            "duration.toml",
            "[cache]\ndefault_ttl = \"forever\"\n",
            "duration.toml",
        ),
        ("empty.json", "", "empty.json"),
        ("top.yaml", "- just\n- a list\n", "top.yaml"),
        ("format.ini", "[cache]\n", "unknown config format"),
        (
            "both.yaml",
            "cache:\n  location: /tmp/x\n  tiers:\n    - kind: memory\n",
            "not both",
        ),
        (
            "days.yaml",
            "cache:\n  file_ttl_days: -1\n  location: /tmp/x\n",
            "file_ttl_days",
        ),
        (
            "rate.yaml",
            "cache:\n  tiers:\n    - kind: memory\n  sources:\n    api:\n      rate: ten\n",
            "cache.sources.\"api\".rate",
        ),
        (
            "zero_rate.yaml",
            "cache:\n  tiers:\n    - kind: memory\n  sources:\n    api:\n      rate: 0/s\n",
            "cache.sources.\"api\".rate",
        ),
        (
            "burst.yaml",
            "cache:\n  tiers:\n    - kind: memory\n  sources:\n    api:\n      rate: 10/s\n      burst: 0\n",
            "cache.sources.\"api\".burst",
        ),
        (
            "lease.yaml",
            "cache:\n  tiers:\n    - kind: memory\n  lease_ttl: 1ms\n",
            "cache.lease_ttl",
        ),
    ];
    for (name, text, expected) in cases {
        let path = sandbox.write(name, text);
        for args in [&["get", "a:k=1"][..], &["config", "check"], &["stats"]] {
            let mut all = vec!["--config", path.to_str().unwrap()];
            all.extend_from_slice(args);
            let run = sandbox.run(&all);
            assert_eq!(run.code, 2, "{name} {args:?}: {run:?}");
            assert!(run.stderr.contains(expected), "{name}: {run:?}");
        }
    }
    // Bytes that are not text at all.
    let garbage = sandbox.path("garbage.yaml");
    std::fs::write(&garbage, [0xff_u8, 0xfe, 0x00, 0x9c, 0x12]).unwrap();
    let run = sandbox
        .run(&["--config", garbage.to_str().unwrap(), "get", "a:k=1"])
        .expect(2);
    assert!(run.stderr.contains("garbage.yaml"), "{run:?}");
    // A bad override is a config error too, naming the variable.
    let mut sandbox = Sandbox::new();
    sandbox.env("TIERSTACK_TIERS__7__PATH", "/tmp/x.db");
    let run = sandbox.run(&["stats"]).expect(2);
    assert!(run.stderr.contains("TIERSTACK_TIERS__7__PATH"), "{run:?}");
}

/// `/proc` refuses new files even to root; a read-only directory (which
/// root ignores) is `tests/read_only_dir.rs`, run as an unprivileged user.
#[test]
fn an_unwritable_cache_location_is_backend_unavailable() {
    let sandbox = Sandbox::new();
    let location = std::path::PathBuf::from("/proc/tierstack-cli-test/c.db");
    for kind in ["sqlite", "redb", "sled"] {
        let config = sandbox.write("ro.yaml", &stack_config(kind, &location));
        for args in [
            &["get", "a:k=1"][..],
            &["set", "a:k=1", "1"],
            &["stats"],
            &["config", "check"],
        ] {
            let mut all = vec!["--config", config.to_str().unwrap()];
            all.extend_from_slice(args);
            let run = sandbox.run(&all);
            assert_eq!(run.code, 3, "{kind} {args:?}: {run:?}");
            assert!(
                run.stderr.contains("/proc/tierstack-cli-test"),
                "{kind}: {run:?}"
            );
        }
    }
}

#[test]
fn a_foreign_file_is_refused_and_left_alone() {
    let sandbox = Sandbox::new();
    let foreign = sandbox.write("notes.txt", "my notes, not a database\n");
    for kind in ["sqlite", "redb"] {
        let config = sandbox.write("f.yaml", &stack_config(kind, &foreign));
        let run = sandbox.run(&["--config", config.to_str().unwrap(), "set", "a:k=1", "1"]);
        assert!(run.code == 2 || run.code == 3, "{kind}: {run:?}");
        assert!(run.stderr.contains("refusing"), "{kind}: {run:?}");
    }
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        "my notes, not a database\n"
    );
}

#[test]
fn an_unreachable_redis_is_backend_unavailable_not_a_hang_or_a_crash() {
    let sandbox = Sandbox::new();
    // Nothing listens on port 1: connections are refused at once.
    let config = sandbox.write(
        "redis.yaml",
        "cache:\n  tiers:\n    - kind: memory\n    - kind: redis\n      url: redis://127.0.0.1:1\n      connect_timeout: 300ms\n",
    );
    let config = config.to_str().unwrap();
    let export = sandbox.path("x.jsonl");
    let cases: &[&[&str]] = &[
        &["get", "a:k=1"],
        &["set", "a:k=1", "1"],
        &["stats"],
        &["config", "check"],
        &["clear", "--yes"],
        &["purge"],
        &["export", export.to_str().unwrap()],
    ];
    for args in cases {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        let started = std::time::Instant::now();
        let run = sandbox.run(&all);
        if args[0] == "purge" {
            // Redis expires entries itself: purge has nothing to ask it.
            assert_eq!(run.code, 0, "{args:?}: {run:?}");
        } else {
            assert_eq!(run.code, 3, "{args:?}: {run:?}");
            assert!(run.stderr.contains("redis"), "{args:?}: {run:?}");
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{args:?} took {:?}",
            started.elapsed()
        );
    }
    // A kind that is not compiled in is named with the choices.
    let unknown = sandbox.write(
        "memcached.yaml",
        "cache:\n  tiers:\n    - kind: memcached\n",
    );
    let run = sandbox
        .run(&["--config", unknown.to_str().unwrap(), "get", "a:k=1"])
        .expect(2);
    assert!(
        run.stderr.contains("redis") && run.stderr.contains("sqlite"),
        "{run:?}"
    );
}

#[test]
fn damaged_entries_are_misses_not_crashes() {
    let sandbox = Sandbox::new();
    let db = sandbox.path("d.db");
    let config = sandbox.write("d.yaml", &stack_config("sqlite", &db));
    let config = config.to_str().unwrap();
    sandbox
        .run(&["--config", config, "set", "a:k=1", r#"{"v":1}"#])
        .expect(0);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let changed = conn
        .execute("UPDATE metadata_cache SET data = x'00ff00ff'", [])
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);
    let run = sandbox.run(&["--config", config, "get", "a:k=1"]).expect(1);
    assert!(run.stderr.contains("not found"), "{run:?}");
    // inspect still shows what is there, stats and export still work.
    sandbox.run(&["--config", config, "stats"]).expect(0);
    let out = sandbox.path("d.jsonl");
    sandbox
        .run(&["--config", config, "export", out.to_str().unwrap()])
        .expect(0);
}

#[test]
fn bad_import_files_are_refused_or_counted() {
    let sandbox = Sandbox::new();
    sandbox
        .run(&["import", "/nonexistent/export.jsonl"])
        .expect(2);
    let notes = sandbox.write("notes.jsonl", "hello\nworld\n");
    let run = sandbox.run(&["import", notes.to_str().unwrap()]).expect(2);
    assert!(run.stderr.contains("not a tierstack export"), "{run:?}");
    let newer = sandbox.write(
        "newer.jsonl",
        "{\"format\":\"tierstack-export\",\"version\":99,\"schema_version\":1}\n",
    );
    let run = sandbox.run(&["import", newer.to_str().unwrap()]).expect(2);
    assert!(run.stderr.contains("newer tierstack"), "{run:?}");
    let damaged = sandbox.write(
        "damaged.jsonl",
        "{\"format\":\"tierstack-export\",\"version\":1,\"schema_version\":1}\nnot json\n{\"key\":\"a:k=1\",\"expires_at\":null,\"entry\":\"VFNUSw==\"}\n",
    );
    let report = sandbox
        .run(&["--json", "import", damaged.to_str().unwrap()])
        .expect(0)
        .json();
    assert_eq!(report["malformed"], 2);
    assert_eq!(report["imported"], 0);
    // A truncated zstd file.
    let zst = sandbox.path("cut.jsonl.zst");
    std::fs::write(&zst, [0x28, 0xb5, 0x2f, 0xfd, 0x00]).unwrap();
    let run = sandbox.run(&["import", zst.to_str().unwrap()]);
    assert!(run.code == 2 || run.code == 3, "{run:?}");
    // Exporting into a directory that does not exist.
    let run = sandbox
        .run(&["export", "/proc/nope/export.jsonl"])
        .expect(2);
    assert!(run.stderr.contains("/proc/nope"), "{run:?}");
}

/// Every failure, of any exit code, is one line on stderr starting with
/// `tierstack:`: clap's usage errors, config errors with their snippet,
/// misses, unavailable backends, refused files.
#[test]
fn every_error_is_one_stderr_line_starting_with_tierstack() {
    let sandbox = Sandbox::new();
    let mut cases: Vec<Vec<String>> = BAD_ARGUMENTS
        .iter()
        .map(|args| args.iter().map(|a| (*a).to_owned()).collect())
        .collect();
    let broken = [
        ("kind.yaml", "cache:\n  tiers:\n    - kind: memcached\n"),
        (
            "field.yaml",
            "cache:\n  tiers:\n    - kind: memory\n      max_entires: 3\n",
        ),
        ("syntax.yaml", "cache:\n  tiers: [\n    - kind\n"),
        ("empty.yaml", "cache:\n  tiers: []\n"),
        (
            "redis.yaml",
            "cache:\n  tiers:\n    - kind: redis\n      url: redis://127.0.0.1:1\n      connect_timeout: 300ms\n",
        ),
    ];
    for (name, text) in broken {
        let config = sandbox.write(name, text).to_string_lossy().into_owned();
        for args in [&["get", "a:k=1"][..], &["set", "a:k=1", "1"], &["stats"]] {
            let mut all = vec!["--config".to_owned(), config.clone()];
            all.extend(args.iter().map(|a| (*a).to_owned()));
            cases.push(all);
        }
    }
    let notes = sandbox.write("notes.txt", "my notes\n");
    let notes = notes.to_string_lossy().into_owned();
    for args in [
        vec!["--config", "/nonexistent/tierstack.yaml", "get", "a:k=1"],
        vec!["get", "a:k=1"],
        vec!["--json", "get", "a:k=1"],
        vec!["delete", "a:k=1"],
        vec!["inspect", "a:k=1"],
        vec!["import", notes.as_str()],
        vec!["export", notes.as_str()],
        vec!["clear"],
        vec!["set", "a:k=1", "1", "--ttl", "0s"],
    ] {
        cases.push(args.into_iter().map(str::to_owned).collect());
    }
    for args in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = sandbox.run(&args);
        assert_ne!(run.code, 0, "{args:?} failed: {run:?}");
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("tierstack: "),
            "{args:?}: stderr is not one line starting with `tierstack: `: {:?}",
            run.stderr
        );
    }
}

/// sled allows one process at a time: a database this test holds open is
/// backend unavailable for the CLI, named, for reads and writes alike.
#[test]
fn a_locked_sled_database_is_backend_unavailable() {
    let sandbox = Sandbox::new();
    let path = sandbox.path("held.sled");
    let config = sandbox.write("sled.yaml", &stack_config("sled", &path));
    let config = config.to_str().unwrap();
    sandbox
        .run(&["--config", config, "set", "a:k=1", "1"])
        .expect(0);
    let held = tierstack::SledTier::open(&tierstack::SledConfig::new(&path), 1).unwrap();
    for args in [&["get", "a:k=1"][..], &["set", "a:k=1", "2"], &["stats"]] {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        let run = sandbox.run(&all).expect(3);
        assert!(
            run.stderr.contains("locked") && run.stderr.contains("held.sled"),
            "{args:?}: {run:?}"
        );
    }
    drop(held);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let run = sandbox.run(&["--config", config, "get", "a:k=1"]).expect(0);
    assert_eq!(run.stdout.trim(), "1", "the refused set changed nothing");
}

/// A `set` that a tier did not store is exit 3 naming the tier, whether
/// another tier stored it or none did.
#[test]
fn a_set_that_a_tier_did_not_store_is_backend_unavailable() {
    let sandbox = Sandbox::new();
    let redis = "    - kind: redis\n      url: redis://127.0.0.1:1\n      connect_timeout: 300ms\n";
    for (name, tiers) in [
        ("only-redis.yaml", redis.to_owned()),
        (
            "memory-and-redis.yaml",
            format!("    - kind: memory\n{redis}"),
        ),
    ] {
        let config = sandbox.write(name, &format!("cache:\n  tiers:\n{tiers}"));
        let run = sandbox
            .run(&["--config", config.to_str().unwrap(), "set", "a:k=1", "1"])
            .expect(3);
        assert!(
            run.stderr.contains("a:k=1 was not stored in redis"),
            "{name}: {run:?}"
        );
        assert!(!run.stderr.contains("stored a:k=1"), "{name}: {run:?}");
    }
}
