//! The files the CLI writes besides the stores (export files, the stats
//! file, their temporary names) only ever replace a file of their own kind:
//! a store of any tier, anything unrecognised and anything that is not a
//! regular file is refused with exit 2 and left byte for byte as it was.

#![cfg(unix)]

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use support::{Sandbox, snapshot, stack_config};

const BOOK: &str = "audnexus:book:asin=B002V1A0WE";

/// Every name in `dir`, sorted, to see that nothing was left behind.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn mkfifo(path: &Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A cache in the sandbox with one entry, and the files of its stores.
fn cache_with_an_entry(sandbox: &Sandbox) -> (PathBuf, Vec<PathBuf>) {
    let db = sandbox.path("stores/metadata.db");
    let redb = sandbox.path("stores/cache.redb");
    let sled = sandbox.path("stores/cache.sled");
    std::fs::create_dir(sandbox.path("stores")).unwrap();
    for (kind, path) in [("redb", &redb), ("sled", &sled)] {
        let config = sandbox.write(&format!("{kind}.yaml"), &stack_config(kind, path));
        sandbox
            .run(&["--config", config.to_str().unwrap(), "set", BOOK, "1"])
            .expect(0);
    }
    let config = sandbox.write("sqlite.yaml", &stack_config("sqlite", &db));
    sandbox
        .run(&["--config", config.to_str().unwrap(), "set", BOOK, "1"])
        .expect(0);
    (config, vec![db, redb, sled])
}

#[test]
fn export_refuses_to_replace_anything_but_an_export() {
    let sandbox = Sandbox::new();
    let (config, stores) = cache_with_an_entry(&sandbox);
    let config = config.to_str().unwrap();
    let notes = sandbox.write("stores/notes.jsonl", "my notes\n");
    let fifo = sandbox.path("stores/fifo.jsonl");
    mkfifo(&fifo);
    let socket_path = sandbox.path("stores/socket.jsonl");
    let _socket = std::os::unix::net::UnixListener::bind(&socket_path).unwrap();
    let link = sandbox.path("stores/link.jsonl");
    std::os::unix::fs::symlink(&notes, &link).unwrap();
    let dir = sandbox.path("stores/dir.jsonl");
    std::fs::create_dir(&dir).unwrap();
    let mut targets = stores.clone();
    targets.extend([notes, fifo, socket_path, link, dir]);
    for target in &targets {
        // Plain and compressed: the name does not make a file ours.
        for name in [
            target.clone(),
            PathBuf::from(format!("{}.zst", target.display())),
        ] {
            let is_zst = name != *target;
            if is_zst {
                if name.exists() {
                    continue;
                }
                std::os::unix::fs::symlink(target, &name).unwrap();
            }
            let before = sandbox_state(&sandbox);
            let run = sandbox
                .run(&["--config", config, "export", name.to_str().unwrap()])
                .expect(2);
            assert!(
                run.stderr.contains("refusing") && run.stderr.contains(name.to_str().unwrap()),
                "{}: {run:?}",
                name.display()
            );
            assert!(!run.stderr.contains("set_many"), "{run:?}");
            assert_eq!(
                sandbox_state(&sandbox),
                before,
                "{} changed",
                name.display()
            );
            if is_zst {
                std::fs::remove_file(&name).unwrap();
            }
        }
    }
    // A character device, too.
    let run = sandbox
        .run(&["--config", config, "export", "/dev/null"])
        .expect(2);
    assert!(run.stderr.contains("character device"), "{run:?}");
    // The stores still serve their entry.
    sandbox.run(&["--config", config, "get", BOOK]).expect(0);
}

fn sandbox_state(sandbox: &Sandbox) -> Vec<(PathBuf, String, Vec<u8>)> {
    snapshot(&sandbox.path("stores"))
}

#[test]
fn export_replaces_an_older_export_or_an_empty_file_and_creates_0600() {
    let sandbox = Sandbox::new();
    let (config, _) = cache_with_an_entry(&sandbox);
    let config = config.to_str().unwrap();
    let out = sandbox.path("out");
    std::fs::create_dir(&out).unwrap();
    for name in ["e.jsonl", "e.jsonl.zst"] {
        let file = out.join(name);
        let file = file.to_str().unwrap();
        std::fs::write(file, b"").unwrap();
        for _ in 0..2 {
            let report = sandbox
                .run(&["--config", config, "--json", "export", file])
                .expect(0)
                .json();
            assert_eq!(report["exported"], 1);
            assert_eq!(mode(Path::new(file)), 0o600, "{file}");
        }
        // A renamed compressed export is still recognised as one.
        let other = out.join(format!("copy-of-{name}.bin"));
        std::fs::copy(file, &other).unwrap();
        sandbox
            .run(&["--config", config, "export", other.to_str().unwrap()])
            .expect(0);
    }
    std::fs::remove_file(out.join("e.jsonl")).unwrap();
    sandbox
        .run(&[
            "--config",
            config,
            "export",
            out.join("e.jsonl").to_str().unwrap(),
        ])
        .expect(0);
    assert_eq!(mode(&out.join("e.jsonl")), 0o600);
    // No temporary file is left behind.
    assert_eq!(
        names(&out),
        [
            "copy-of-e.jsonl.bin",
            "copy-of-e.jsonl.zst.bin",
            "e.jsonl",
            "e.jsonl.zst"
        ]
    );
}

#[test]
fn a_planted_symbolic_link_at_a_temporary_name_is_not_followed() {
    let sandbox = Sandbox::new();
    let (config, _) = cache_with_an_entry(&sandbox);
    let config_path = config.to_str().unwrap();
    let victim = sandbox.write("victim.txt", "precious\n");
    let out = sandbox.path("out");
    std::fs::create_dir(&out).unwrap();
    // The names earlier versions used for their temporary files.
    std::os::unix::fs::symlink(&victim, out.join(".e.jsonl.partial")).unwrap();
    std::os::unix::fs::symlink(&victim, out.join("stats.tmp")).unwrap();
    sandbox
        .run(&[
            "--config",
            config_path,
            "export",
            out.join("e.jsonl").to_str().unwrap(),
        ])
        .expect(0);
    let stats = out.join("stats.json");
    let with_stats = sandbox.write(
        "stats.yaml",
        &format!(
            "{}  stats_file: \"{}\"\n",
            std::fs::read_to_string(&config).unwrap(),
            stats.display()
        ),
    );
    sandbox
        .run(&["--config", with_stats.to_str().unwrap(), "get", BOOK])
        .expect(0);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(mode(&stats), 0o600);
    let counters: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&stats).unwrap()).unwrap();
    assert_eq!(counters["format"], "tierstack-stats", "{counters}");
}

#[test]
fn the_stats_file_never_replaces_a_store_or_a_foreign_file() {
    let sandbox = Sandbox::new();
    let (_, stores) = cache_with_an_entry(&sandbox);
    let notes = sandbox.write("stores/notes.json", "{\"mine\": true}\n");
    let fifo = sandbox.path("stores/fifo.json");
    mkfifo(&fifo);
    let mut targets = stores.clone();
    targets.extend([notes, fifo, PathBuf::from("/dev/null")]);
    for target in &targets {
        let config = sandbox.write(
            "s.yaml",
            &format!(
                "{}  stats_file: \"{}\"\n",
                stack_config("sqlite", &stores[0]),
                target.display()
            ),
        );
        let config = config.to_str().unwrap();
        let before = sandbox_state(&sandbox);
        for args in [&["get", BOOK][..], &["set", BOOK, "2"], &["stats"]] {
            let mut all = vec!["--config", config];
            all.extend_from_slice(args);
            let run = sandbox.run(&all).expect(2);
            assert!(
                run.stderr.contains("stats_file")
                    && run.stderr.contains("refusing")
                    && run.stderr.contains(target.to_str().unwrap()),
                "{}: {run:?}",
                target.display()
            );
        }
        assert_eq!(
            sandbox_state(&sandbox),
            before,
            "{} changed",
            target.display()
        );
    }
    // The store that the stats file was pointed at before it existed: the
    // tier creates it, and the stats file is refused before anything runs,
    // on the first run too (not only once the database is there).
    let fresh = sandbox.path("fresh.db");
    let config = sandbox.write(
        "f.yaml",
        &format!(
            "{}  stats_file: \"{}\"\n",
            stack_config("sqlite", &fresh),
            fresh.display()
        ),
    );
    let run = sandbox
        .run(&["--config", config.to_str().unwrap(), "set", BOOK, "3"])
        .expect(2);
    assert!(
        run.stderr.contains("stats_file") && run.stderr.contains("SQLite"),
        "{run:?}"
    );
    let head = std::fs::read(&fresh).unwrap();
    assert!(
        head.starts_with(b"SQLite format 3\0"),
        "the database was replaced"
    );
    let plain = sandbox.write("p.yaml", &stack_config("sqlite", &fresh));
    sandbox
        .run(&["--config", plain.to_str().unwrap(), "get", BOOK])
        .expect(1);
}

#[test]
fn a_refusal_names_what_the_file_is_when_it_is_tierstacks_own_other_kind() {
    let sandbox = Sandbox::new();
    let (config, location) = sandbox.flat_config("rfc");
    sandbox
        .run(&["--config", &config, "set", BOOK, "1"])
        .expect(0);
    let stats = location.join("stats.json");
    assert!(stats.exists(), "the flat form keeps a stats file");
    let before = std::fs::read(&stats).unwrap();
    let run = sandbox
        .run(&["--config", &config, "export", stats.to_str().unwrap()])
        .expect(2);
    assert!(run.stderr.contains("a tierstack stats file"), "{run:?}");
    assert_eq!(std::fs::read(&stats).unwrap(), before);
}
