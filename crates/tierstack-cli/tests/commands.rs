//! Every `tierstack` subcommand against real stores, through the real
//! binary: output, exit codes, and what ends up in the files.

mod support;

use support::{Sandbox, snapshot, stack_config};

const BOOK: &str = "audnexus:book:asin=B002V1A0WE";

#[test]
fn the_rfc_block_verbatim_set_in_one_process_get_in_the_next() {
    let sandbox = Sandbox::new();
    let location = sandbox.path("mk_torrent");
    // The RFC's block as written, `location` pointed at the sandbox.
    let config = sandbox.write(
        "config.yaml",
        &format!(
            "# config.yaml\ncache:\n  enabled: true\n  file_ttl_days: 7\n  memory_ttl_seconds: 3600\n  max_memory_entries: 1000\n  location: \"{}\"\n",
            location.display()
        ),
    );
    let config = config.to_str().unwrap();
    let value = r#"{"asin":"B002V1A0WE","title":"Dune","authors":["Frank Herbert"]}"#;
    sandbox
        .run(&["--config", config, "set", BOOK, value])
        .expect(0);
    let got = sandbox.run(&["--config", config, "get", BOOK]).expect(0);
    let got: serde_json::Value = serde_json::from_str(&got.stdout).unwrap();
    assert_eq!(
        got,
        serde_json::from_str::<serde_json::Value>(value).unwrap()
    );

    let db = location.join("metadata.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (source, data): (String, String) = conn
        .query_row(
            "SELECT source, json_extract(data, '$.authors') FROM metadata_cache WHERE cache_key = ?1",
            [BOOK],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!(source, "audnexus:book");
    assert!(data.contains("Frank Herbert"), "{data}");
}

#[test]
fn swapping_the_kind_in_the_file_swaps_the_backend() {
    for (kind, file) in [("sqlite", "c.db"), ("redb", "c.redb"), ("sled", "c.sled")] {
        let sandbox = Sandbox::new();
        let store = sandbox.path(file);
        let config = sandbox.write("tierstack.yaml", &stack_config(kind, &store));
        let config = config.to_str().unwrap();
        sandbox
            .run(&["--config", config, "set", BOOK, r#""Dune""#])
            .expect(0);
        let got = sandbox.run(&["--config", config, "get", BOOK]).expect(0);
        assert_eq!(got.stdout.trim(), r#""Dune""#, "{kind}");
        assert!(store.exists(), "{kind} store at {}", store.display());
        let inspect = sandbox
            .run(&["--config", config, "--json", "inspect", BOOK])
            .expect(0)
            .json();
        assert_eq!(inspect["tiers"][1]["tier"], kind);
        assert_eq!(inspect["tiers"][1]["present"], true, "{kind}");
    }
}

#[test]
fn the_config_is_found_by_flag_variable_working_directory_user_dir_or_default() {
    let mut sandbox = Sandbox::new();
    let check = |sandbox: &Sandbox| {
        sandbox.run(&["--json", "config", "check"]).expect(0).json()["origin"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    // Nothing: the embedded default, in the user cache directory.
    assert!(check(&sandbox).starts_with("embedded default"));
    sandbox.run(&["set", BOOK, "1"]).expect(0);
    assert!(sandbox.path("cache/tierstack/cache.db").exists());

    let user = sandbox.path("config/tierstack");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(
        user.join("config.yaml"),
        stack_config("sqlite", &sandbox.path("user.db")),
    )
    .unwrap();
    assert!(check(&sandbox).contains("(user config)"));

    std::fs::write(
        sandbox.work().join("tierstack.toml"),
        format!(
            "[cache]\n[[cache.tiers]]\nkind = \"sqlite\"\npath = \"{}\"\n",
            sandbox.path("cwd.db").display()
        ),
    )
    .unwrap();
    assert!(check(&sandbox).contains("(working directory)"));

    let named = sandbox.write(
        "named.yaml",
        &stack_config("sqlite", &sandbox.path("env.db")),
    );
    sandbox.env("TIERSTACK_CONFIG", named.to_str().unwrap());
    assert!(check(&sandbox).contains("(from TIERSTACK_CONFIG)"));

    let flag = sandbox.write(
        "flag.yaml",
        &stack_config("sqlite", &sandbox.path("flag.db")),
    );
    let origin = sandbox
        .run(&[
            "--config",
            flag.to_str().unwrap(),
            "--json",
            "config",
            "check",
        ])
        .expect(0)
        .json()["origin"]
        .clone();
    assert_eq!(origin, flag.to_str().unwrap());
}

#[test]
fn environment_overrides_reach_the_cli() {
    let mut sandbox = Sandbox::new();
    let db = sandbox.path("override.db");
    sandbox.env("TIERSTACK_TIERS__1__PATH", db.to_str().unwrap());
    let check = sandbox.run(&["--json", "config", "check"]).expect(0).json();
    assert_eq!(check["overrides"][0], "TIERSTACK_TIERS__1__PATH");
    sandbox.run(&["set", BOOK, "2"]).expect(0);
    assert!(db.exists());
    assert_eq!(sandbox.run(&["get", BOOK]).expect(0).stdout.trim(), "2");
}

#[test]
fn key_prints_the_canonical_key_and_nothing_else() {
    let sandbox = Sandbox::new();
    let run = sandbox
        .run(&[
            "key",
            "audnexus:search",
            "q=dune & sand",
            "author=Frank Herbert",
        ])
        .expect(0);
    assert_eq!(
        run.stdout,
        "audnexus:search:author=Frank Herbert&q=dune %26 sand\n"
    );
    // What it prints is what get/set accept.
    let key = run.stdout.trim();
    sandbox.run(&["set", key, r#"{"hits":3}"#]).expect(0);
    assert_eq!(
        sandbox.run(&["get", key]).expect(0).stdout.trim(),
        r#"{"hits":3}"#
    );
    let json = sandbox
        .run(&["--json", "key", "pathinfo", "path=/a b"])
        .expect(0)
        .json();
    assert_eq!(json["key"], "pathinfo:path=/a b");
    assert_eq!(json["source"], "pathinfo");
}

#[test]
fn get_set_inspect_and_delete_keep_their_exit_codes() {
    let sandbox = Sandbox::new();
    let miss = sandbox.run(&["get", BOOK]).expect(1);
    assert!(miss.stdout.is_empty(), "a miss prints nothing on stdout");
    assert!(miss.stderr.contains("not found"), "{miss:?}");
    sandbox.run(&["inspect", BOOK]).expect(1);

    sandbox
        .run(&["set", BOOK, r#"{"title":"Dune"}"#, "--ttl", "2h"])
        .expect(0);
    let inspect = sandbox.run(&["--json", "inspect", BOOK]).expect(0).json();
    let sqlite = &inspect["tiers"][1];
    assert_eq!(sqlite["present"], true);
    let entry = &sqlite["entry"];
    assert_eq!(entry["format_version"], 2);
    assert_eq!(entry["schema_version"], 1);
    assert_eq!(entry["codec"], "msgpack");
    assert_eq!(entry["fresh"], true);
    assert_eq!(entry["negative"], false);
    assert!(entry["raw_len"].as_u64().unwrap() > 0);
    let human = sandbox.run(&["inspect", BOOK]).expect(0);
    assert!(human.stdout.contains("msgpack") && human.stdout.contains("sqlite"));

    let deleted = sandbox.run(&["--json", "delete", BOOK]).expect(0).json();
    assert_eq!(deleted["deleted"], true);
    sandbox.run(&["get", BOOK]).expect(1);
    sandbox.run(&["delete", BOOK]).expect(1);
}

#[test]
fn stats_counts_entries_by_tier_and_source() {
    let sandbox = Sandbox::new();
    // A stale window keeps the expired entry around to be counted.
    let config = sandbox.write(
        "stale.yaml",
        &format!(
            "cache:\n  stale_for: 1h\n  tiers:\n    - kind: sqlite\n      path: \"{}\"\n",
            sandbox.path("s.db").display()
        ),
    );
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        sandbox.run(&all)
    };
    for i in 0..5 {
        run(&["set", &format!("audnexus:book:asin=B{i}"), "1"]).expect(0);
    }
    run(&["set", "pathinfo:path=/x", r#"{"series":"Dune"}"#]).expect(0);
    run(&["set", "pathinfo:path=/y", "2", "--ttl", "1ms"]).expect(0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let stats = run(&["--json", "stats"]).expect(0).json();
    let sqlite = &stats["tiers"][0];
    assert_eq!(sqlite["tier"], "sqlite");
    assert_eq!(sqlite["entries"], 7);
    assert!(sqlite["bytes"].as_u64().unwrap() > 0);
    let sources = stats["sources"].as_array().unwrap();
    let find = |s: &str| {
        sources
            .iter()
            .find(|v| v["source"] == s && v["tier"] == "sqlite")
            .unwrap_or_else(|| panic!("{s} in {sources:?}"))
    };
    assert_eq!(find("audnexus:book")["entries"], 5);
    assert_eq!(find("pathinfo")["entries"], 2);
    assert_eq!(find("pathinfo")["expired"], 1);
    let human = run(&["stats"]).expect(0).stdout;
    assert!(
        human.contains("audnexus:book") && human.contains("healthy"),
        "{human}"
    );
}

#[test]
fn clear_asks_unless_yes_and_respects_its_scope() {
    let sandbox = Sandbox::new();
    for key in [
        "audnexus:book:asin=1",
        "audnexus:book:asin=2",
        "pathinfo:path=/a",
    ] {
        sandbox.run(&["set", key, "1"]).expect(0);
    }
    // No terminal, no --yes: nothing happens.
    let refused = sandbox.run(&["clear"]).expect(2);
    assert!(refused.stderr.contains("--yes"), "{refused:?}");
    sandbox.run(&["get", "pathinfo:path=/a"]).expect(0);
    // An answer other than yes on stdin is not a yes either (stdin is a pipe).
    sandbox.run_with_input(&["clear"], "y\n").expect(2);

    let by_source = sandbox
        .run(&["--json", "clear", "--source", "pathinfo", "--yes"])
        .expect(0)
        .json();
    assert_eq!(by_source["removed"], 1);
    sandbox.run(&["get", "pathinfo:path=/a"]).expect(1);
    sandbox.run(&["get", "audnexus:book:asin=1"]).expect(0);

    sandbox
        .run(&["clear", "--tier", "nosuchtier", "--yes"])
        .expect(2);
    let expired = sandbox
        .run(&["--json", "clear", "--expired"])
        .expect(0)
        .json();
    assert_eq!(expired["removed"], 0);

    let all = sandbox
        .run(&["--json", "clear", "--tier", "sqlite", "-y"])
        .expect(0)
        .json();
    assert_eq!(all["removed"], 2);
    assert_eq!(all["tiers"]["sqlite"], 2);
    sandbox.run(&["get", "audnexus:book:asin=2"]).expect(1);
}

#[test]
fn purge_reports_what_it_removed() {
    let sandbox = Sandbox::new();
    sandbox
        .run(&["set", "a:k=1", "1", "--ttl", "1ms"])
        .expect(0);
    sandbox.run(&["set", "a:k=2", "2"]).expect(0);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let purged = sandbox.run(&["--json", "purge"]).expect(0).json();
    assert_eq!(purged["tiers"]["sqlite"], 1);
    sandbox.run(&["get", "a:k=2"]).expect(0);
}

#[test]
fn export_and_import_carry_a_cache_to_another_backend() {
    let sandbox = Sandbox::new();
    let from = sandbox.write(
        "from.yaml",
        &stack_config("sqlite", &sandbox.path("from.db")),
    );
    let to = sandbox.write("to.yaml", &stack_config("redb", &sandbox.path("to.redb")));
    let (from, to) = (from.to_str().unwrap(), to.to_str().unwrap());
    for i in 0..50 {
        sandbox
            .run(&[
                "--config",
                from,
                "set",
                &format!("audnexus:book:asin=B{i:03}"),
                &format!(r#"{{"n":{i}}}"#),
            ])
            .expect(0);
    }
    sandbox
        .run(&["--config", from, "set", "pathinfo:path=/a", "true"])
        .expect(0);
    let file = sandbox.path("warm.jsonl.zst");
    let file = file.to_str().unwrap();
    let exported = sandbox
        .run(&[
            "--config",
            from,
            "--json",
            "export",
            file,
            "--source",
            "audnexus:book",
        ])
        .expect(0)
        .json();
    assert_eq!(exported["exported"], 50);
    let imported = sandbox
        .run(&["--config", to, "--json", "import", file])
        .expect(0)
        .json();
    assert_eq!(imported["imported"], 50);
    assert_eq!(imported["malformed"], 0);
    assert_eq!(
        sandbox
            .run(&["--config", to, "get", "audnexus:book:asin=B042"])
            .expect(0)
            .stdout
            .trim(),
        r#"{"n":42}"#
    );
    sandbox
        .run(&["--config", to, "get", "pathinfo:path=/a"])
        .expect(1);
    // Same expiry on both sides.
    let expiry = |config: &str| {
        sandbox
            .run(&[
                "--config",
                config,
                "--json",
                "inspect",
                "audnexus:book:asin=B007",
            ])
            .expect(0)
            .json()["tiers"][1]["entry"]["expires_at"]
            .clone()
    };
    assert_eq!(expiry(from), expiry(to));

    // Through a pipe: export to stdout, import from stdin.
    let piped = sandbox.run(&["--config", from, "export", "-"]).expect(0);
    assert!(piped.stdout.starts_with("{\"format\":\"tierstack-export\""));
    let again = sandbox
        .run_with_input(&["--config", to, "--json", "import", "-"], &piped.stdout)
        .expect(0)
        .json();
    assert_eq!(again["imported"], 51);
}

#[test]
fn warm_from_an_export_or_a_key_list() {
    let sandbox = Sandbox::new();
    sandbox
        .run(&["set", "audnexus:book:asin=1", r#""one""#])
        .expect(0);
    sandbox
        .run(&["set", "audnexus:book:asin=2", r#""two""#])
        .expect(0);
    let export = sandbox.path("export.jsonl");
    sandbox.run(&["export", export.to_str().unwrap()]).expect(0);
    sandbox.run(&["delete", "audnexus:book:asin=2"]).expect(0);
    let warmed = sandbox
        .run(&["--json", "warm", "--from", export.to_str().unwrap()])
        .expect(0)
        .json();
    assert_eq!(
        (
            warmed["imported"].as_u64(),
            warmed["already_fresh"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(
        sandbox
            .run(&["get", "audnexus:book:asin=2"])
            .expect(0)
            .stdout
            .trim(),
        r#""two""#
    );

    let list = sandbox.write(
        "keys.txt",
        "# books to warm\naudnexus:book:asin=1\naudnexus:book:asin=10\n\naudnexus:book:asin=11\nnot a key\naudnexus:book:asin=404\n",
    );
    // Without a way to fetch, a key list is a usage error.
    sandbox
        .run(&["warm", "--from", list.to_str().unwrap()])
        .expect(2);
    let fetch = r#"case "$TIERSTACK_KEY" in *=404) exit 1;; *) printf '"fetched %s"' "$TIERSTACK_KEY";; esac"#;
    let warmed = sandbox
        .run(&[
            "--json",
            "warm",
            "--from",
            list.to_str().unwrap(),
            "--exec",
            fetch,
            "--rate",
            "50",
        ])
        .expect(0)
        .json();
    assert_eq!(warmed["fresh"], 1, "{warmed}");
    assert_eq!(warmed["fetched"], 2, "{warmed}");
    assert_eq!(warmed["not_found"], 1, "{warmed}");
    assert_eq!(warmed["bad_lines"], 1, "{warmed}");
    assert_eq!(
        sandbox
            .run(&["get", "audnexus:book:asin=11"])
            .expect(0)
            .stdout
            .trim(),
        r#""fetched audnexus:book:asin=11""#
    );
    // "Not found" is cached as such: no value, but an entry.
    sandbox.run(&["get", "audnexus:book:asin=404"]).expect(1);
    let inspect = sandbox
        .run(&["--json", "inspect", "audnexus:book:asin=404"])
        .expect(0)
        .json();
    assert_eq!(inspect["tiers"][1]["entry"]["negative"], true);

    // A failing fetch command is reported with exit 3.
    let failing = sandbox.write("more.txt", "audnexus:book:asin=77\n");
    let failed = sandbox
        .run(&[
            "warm",
            "--from",
            failing.to_str().unwrap(),
            "--exec",
            "echo boom >&2; exit 7",
        ])
        .expect(3);
    assert!(failed.stderr.contains("boom"), "{failed:?}");
}

#[test]
fn backends_lists_every_compiled_backend() {
    let sandbox = Sandbox::new();
    let list = sandbox.run(&["--json", "backends"]).expect(0).json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["memory", "redb", "redis", "sled", "sqlite"]);
    let sqlite = &list[4];
    let caps: Vec<&str> = sqlite["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(caps.contains(&"persistent") && caps.contains(&"shared_across_processes"));
    assert!(
        sandbox
            .run(&["backends"])
            .expect(0)
            .stdout
            .contains("sqlite")
    );
}

#[test]
fn a_disabled_cache_stores_nothing_and_says_so() {
    let sandbox = Sandbox::new();
    let config = sandbox.write("off.yaml", "cache:\n  enabled: false\n");
    let config = config.to_str().unwrap();
    let set = sandbox
        .run(&["--config", config, "set", BOOK, "1"])
        .expect(2);
    assert!(set.stderr.contains("disabled"), "{set:?}");
    sandbox.run(&["--config", config, "get", BOOK]).expect(1);
    let check = sandbox
        .run(&["--config", config, "config", "check"])
        .expect(0);
    assert!(check.stdout.contains("disabled"), "{check:?}");
}

#[test]
fn bench_measures_the_configured_stack_and_cleans_up() {
    let sandbox = Sandbox::new();
    sandbox.run(&["set", BOOK, "1"]).expect(0);
    let report = sandbox
        .run(&[
            "--json",
            "bench",
            "--duration",
            "300ms",
            "--keys",
            "50",
            "--value-size",
            "1KiB",
            "--reads",
            "80",
            "--concurrency",
            "4",
        ])
        .expect(0)
        .json();
    assert_eq!(report["tiers"], serde_json::json!(["memory", "sqlite"]));
    let ops = report["operations"].as_array().unwrap();
    let get = &ops[0];
    assert_eq!(get["op"], "get");
    assert!(get["count"].as_u64().unwrap() > 0, "{report}");
    assert!(get["p99_us"].as_f64().unwrap() >= get["p50_us"].as_f64().unwrap());
    assert_eq!(report["misses"], 0);
    // Its keys are gone; the user's entry is not.
    let stats = sandbox.run(&["--json", "stats"]).expect(0).json();
    let sources: Vec<&str> = stats["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["audnexus:book"]);
    sandbox.run(&["bench", "--reads", "101"]).expect(2);
    sandbox
        .run(&["bench", "--distribution", "pareto"])
        .expect(2);
}

#[test]
fn bench_leaves_the_users_cache_as_it_was() {
    let sandbox = Sandbox::new();
    let location = sandbox.path("mk_torrent");
    let rfc = sandbox.write(
        "rfc.yaml",
        &format!(
            "cache:\n  enabled: true\n  file_ttl_days: 7\n  memory_ttl_seconds: 3600\n  max_memory_entries: 1000\n  location: \"{}\"\n",
            location.display()
        ),
    );
    let rfc = rfc.to_str().unwrap();
    // The embedded default (cache and stats file in the user cache
    // directory) and the RFC's block: each with entries, counters, and a
    // key of the source bench uses for its own.
    for config in [None, Some(rfc)] {
        let with = |args: &[&str]| -> Vec<String> {
            config
                .map(|c| vec!["--config".to_owned(), c.to_owned()])
                .unwrap_or_default()
                .into_iter()
                .chain(args.iter().map(|a| (*a).to_owned()))
                .collect()
        };
        let run = |args: &[&str]| {
            let all = with(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            sandbox.run(&all)
        };
        run(&["set", BOOK, "1"]).expect(0);
        run(&["set", "tierstack:bench:k=mine", "2"]).expect(0);
        run(&["get", BOOK]).expect(0);
        run(&["get", "audnexus:book:asin=nope"]).expect(1);
        let dir = if config.is_some() {
            location.clone()
        } else {
            sandbox.path("cache")
        };
        let before = snapshot(&dir);
        assert!(
            before.iter().any(|(p, _, _)| p.ends_with("stats.json")),
            "{before:?}"
        );
        run(&[
            "--json",
            "bench",
            "--duration",
            "300ms",
            "--keys",
            "300",
            "--value-size",
            "3KiB",
        ])
        .expect(0);
        assert!(snapshot(&dir) == before, "bench changed {}", dir.display());
        assert_eq!(
            run(&["get", "tierstack:bench:k=mine"])
                .expect(0)
                .stdout
                .trim(),
            "2"
        );
    }
}

#[test]
fn bench_on_a_redis_stack_leaves_the_namespace_as_it_was() {
    use tierstack_conformance::redis_server::{RedisServer, redis_cli};
    let server = RedisServer::start();
    let sandbox = Sandbox::new();
    let config = sandbox.write(
        "redis.yaml",
        &format!(
            "cache:\n  tiers:\n    - kind: memory\n    - kind: redis\n      url: {}\n      prefix: team\n",
            server.url()
        ),
    );
    let config = config.to_str().unwrap();
    sandbox
        .run(&["--config", config, "set", BOOK, "1"])
        .expect(0);
    sandbox
        .run(&["--config", config, "set", "tierstack:bench:k=mine", "2"])
        .expect(0);
    let keys = || {
        let mut keys: Vec<String> = redis_cli(server.port(), &["--scan"])
            .lines()
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    };
    let before = keys();
    assert_eq!(before.len(), 2, "{before:?}");
    sandbox
        .run(&[
            "--config",
            config,
            "bench",
            "--duration",
            "300ms",
            "--keys",
            "100",
        ])
        .expect(0);
    assert_eq!(keys(), before);
    let mine = sandbox
        .run(&["--config", config, "get", "tierstack:bench:k=mine"])
        .expect(0);
    assert_eq!(mine.stdout.trim(), "2");
}

#[test]
fn values_come_back_as_they_went_in() {
    let sandbox = Sandbox::new();
    let json = sandbox.write(
        "json.yaml",
        &stack_config("sqlite", &sandbox.path("j.db"))
            .replace("cache:\n", "cache:\n  codec: json\n"),
    );
    let msgpack = sandbox.write(
        "msgpack.yaml",
        &stack_config("sqlite", &sandbox.path("m.db")),
    );
    let (json, msgpack) = (json.to_str().unwrap(), msgpack.to_str().unwrap());
    let texts = [
        "12345678901234567890123",
        "1.50",
        "-0",
        "3.14159265358979323846",
        r#"{"price": 1.50, "ids": [12345678901234567890123, 7], "name": "x\"y"}"#,
    ];
    // The JSON codec keeps the text, in one process and the next (SQLite).
    for text in texts {
        sandbox
            .run(&["--config", json, "set", BOOK, text])
            .expect(0);
        let got = sandbox.run(&["--config", json, "get", BOOK]).expect(0);
        assert_eq!(got.stdout.trim(), text);
    }
    let keys = sandbox.write("keys.txt", "audnexus:book:asin=W\n");
    sandbox
        .run(&[
            "--config",
            json,
            "warm",
            "--from",
            keys.to_str().unwrap(),
            "--exec",
            "printf 12345678901234567890123",
            "--ttl",
            "1h",
        ])
        .expect(0);
    let warmed = sandbox
        .run(&["--config", json, "get", "audnexus:book:asin=W"])
        .expect(0);
    assert_eq!(warmed.stdout.trim(), "12345678901234567890123");
    // MessagePack: what it holds exactly comes back as the same number,
    // what it cannot hold is refused, never rounded.
    for (text, back) in [("1.50", "1.5"), ("0.1", "0.1"), ("-7", "-7")] {
        sandbox
            .run(&["--config", msgpack, "set", BOOK, text])
            .expect(0);
        let got = sandbox.run(&["--config", msgpack, "get", BOOK]).expect(0);
        assert_eq!(got.stdout.trim(), back);
    }
    for text in [texts[0], texts[3], texts[4]] {
        let run = sandbox
            .run(&["--config", msgpack, "set", BOOK, text])
            .expect(2);
        assert!(run.stderr.contains("cannot be stored exactly"), "{run:?}");
        let got = sandbox.run(&["--config", msgpack, "get", BOOK]).expect(0);
        assert_eq!(
            got.stdout.trim(),
            "-7",
            "the refused value replaced nothing"
        );
    }
    let warm = sandbox
        .run(&[
            "--config",
            msgpack,
            "warm",
            "--from",
            keys.to_str().unwrap(),
            "--exec",
            "printf 12345678901234567890123",
        ])
        .expect(3);
    assert!(warm.stderr.contains("cannot be stored exactly"), "{warm:?}");
}

#[test]
fn stats_shows_hits_and_misses_of_every_process() {
    let sandbox = Sandbox::new();
    sandbox.run(&["set", BOOK, "1"]).expect(0);
    sandbox.run(&["get", BOOK]).expect(0);
    sandbox.run(&["get", BOOK]).expect(0);
    sandbox.run(&["get", "audnexus:book:asin=nope"]).expect(1);
    let stats = sandbox.run(&["--json", "stats"]).expect(0).json();
    let counters = &stats["counters"];
    assert!(
        counters["file"]
            .as_str()
            .unwrap()
            .ends_with("tierstack/stats.json"),
        "{counters}"
    );
    // Each process has an empty memory tier: the hits come from SQLite.
    assert_eq!(counters["tiers"]["sqlite"]["hits"], 2, "{counters}");
    assert_eq!(counters["tiers"]["sqlite"]["misses"], 1, "{counters}");
    assert_eq!(
        counters["sources"]["audnexus:book"]["hits"], 2,
        "{counters}"
    );
    // Only counters that can move: tiers do not fetch, sources do not write.
    assert!(
        counters["tiers"]["sqlite"].get("fetches").is_none(),
        "{counters}"
    );
    assert!(
        counters["sources"]["audnexus:book"].get("writes").is_none(),
        "{counters}"
    );
    let human = sandbox.run(&["stats"]).expect(0).stdout;
    assert!(
        human.contains("hit ratio") && human.contains("66.7%"),
        "{human}"
    );
    // Sizes for people: `87 B`, `12.1 KiB`, not `12400B`.
    assert!(
        human
            .lines()
            .any(|l| l.contains("audnexus:book") && (l.contains(" B ") || l.contains(" KiB "))),
        "{human}"
    );
}

#[test]
fn stats_prometheus_prints_the_stats_files_totals_under_the_documented_names() {
    let sandbox = Sandbox::new();
    sandbox.run(&["set", BOOK, "1"]).expect(0);
    sandbox.run(&["get", BOOK]).expect(0);
    sandbox.run(&["get", BOOK]).expect(0);
    sandbox.run(&["get", "audnexus:book:asin=nope"]).expect(1);
    let text = sandbox.run(&["stats", "--prometheus"]).expect(0).stdout;
    // Counters and these gauges render as whole numbers.
    let value = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
    };
    assert_eq!(value(r#"tierstack_tier_hits_total{tier="sqlite"}"#), 2);
    assert_eq!(value(r#"tierstack_tier_misses_total{tier="sqlite"}"#), 1);
    assert_eq!(value(r#"tierstack_tier_writes_total{tier="sqlite"}"#), 1);
    assert_eq!(
        value(r#"tierstack_source_hits_total{source="audnexus:book"}"#),
        2
    );
    assert_eq!(
        value(r#"tierstack_source_misses_total{source="audnexus:book"}"#),
        1
    );
    assert_eq!(value(r#"tierstack_tier_entries{tier="sqlite"}"#), 1);
    assert!(value(r#"tierstack_tier_bytes{tier="sqlite"}"#) > 0);
    assert!(
        text.contains("# TYPE tierstack_tier_hits_total counter"),
        "{text}"
    );
    // The same figures print the same bytes, families in name order.
    let again = sandbox.run(&["stats", "--prometheus"]).expect(0).stdout;
    assert_eq!(text, again);
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let mut sorted = families.clone();
    sorted.sort_unstable();
    assert_eq!(families, sorted);
    // Machine output has no decoration, and `--json` cannot be combined.
    assert!(!text.contains("hit ratio"), "{text}");
    let both = sandbox.run(&["--json", "stats", "--prometheus"]).expect(2);
    assert!(both.stderr.contains("cannot be used with"), "{both:?}");
}
