//! Nothing a user's environment can hold makes `tierstack` panic (exit
//! 101): every subcommand runs with an otherwise empty environment plus one
//! variable that is not UTF-8, in a working directory whose name is not
//! UTF-8, and with stdout or stderr closed, full or a dead pipe.

#![cfg(unix)]

mod support;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use support::{Broken, Run, Sandbox, run_bare, stack_config};

const BOOK: &str = "audnexus:book:asin=B002V1A0WE";
const NOT_UTF8: &[u8] = b"\xff\xfe";

/// Every subcommand, in an order where each finds what it needs.
fn every_subcommand(sandbox: &Sandbox) -> Vec<Vec<OsString>> {
    let config = sandbox.write("c.yaml", &stack_config("sqlite", &sandbox.path("c.db")));
    let export = sandbox.path("e.jsonl");
    let keys = sandbox.write("keys.txt", &format!("{BOOK}\naudnexus:book:asin=2\n"));
    let with_config = |args: &[&str]| {
        let mut all: Vec<OsString> = vec!["--config".into(), config.clone().into()];
        all.extend(args.iter().map(OsString::from));
        all
    };
    let export = export.to_str().unwrap();
    let keys = keys.to_str().unwrap();
    vec![
        vec!["--help".into()],
        vec!["--version".into()],
        vec!["nosuchcommand".into()],
        vec!["backends".into()],
        with_config(&["config", "check"]),
        vec!["key".into(), "audnexus:book".into(), "asin=1".into()],
        with_config(&["set", BOOK, r#""Dune""#]),
        with_config(&["get", BOOK]),
        with_config(&["--json", "get", BOOK]),
        with_config(&["inspect", BOOK]),
        with_config(&["stats"]),
        with_config(&["export", export]),
        with_config(&["export", "-"]),
        with_config(&["import", export]),
        with_config(&["import", "-"]),
        with_config(&["warm", "--from", export]),
        with_config(&["warm", "--from", keys, "--exec", r#"printf '"v"'"#]),
        with_config(&[
            "bench",
            "--duration",
            "50ms",
            "--keys",
            "5",
            "--concurrency",
            "1",
        ]),
        with_config(&["purge"]),
        with_config(&["clear", "--yes"]),
        with_config(&["delete", BOOK]),
        // No config: the embedded default needs HOME, which is not set.
        vec!["stats".into()],
    ]
}

fn run(
    args: &[OsString],
    env: &[(&OsStr, &OsStr)],
    cwd: &Path,
    stdout: Option<Broken>,
    stderr: Option<Broken>,
) -> Run {
    let args: Vec<&OsStr> = args.iter().map(OsString::as_os_str).collect();
    let run = run_bare(&args, env, cwd, stdout, stderr);
    assert!(!run.stdout.contains("panicked"), "{args:?}: {run:?}");
    assert_ne!(
        run.code,
        101,
        "{args:?} with {env:?} in {}, stdout {stdout:?}, stderr {stderr:?}: {run:?}",
        cwd.display()
    );
    run
}

#[test]
fn a_variable_that_is_not_utf8_is_ignored_unless_it_is_tierstacks() {
    let sandbox = Sandbox::new();
    let odd_dir = sandbox
        .path("work")
        .join(OsStr::from_bytes(b"dir-\xff\xfe"));
    std::fs::create_dir(&odd_dir).unwrap();
    let not_utf8 = OsStr::from_bytes(NOT_UTF8);
    let unrelated: &[&[(&OsStr, &OsStr)]] = &[
        &[(OsStr::new("LC_ALL"), not_utf8)],
        &[(not_utf8, OsStr::new("1"))],
        &[(OsStr::new("HOME"), not_utf8)],
    ];
    for env in unrelated {
        for cwd in [sandbox.work(), odd_dir.clone()] {
            for args in every_subcommand(&sandbox) {
                let run = run(&args, env, &cwd, None, None);
                let no_home = args.len() == 1 && args[0] == "stats";
                let usage =
                    args[0] == "nosuchcommand" || args.ends_with(&["import".into(), "-".into()]);
                if no_home || usage {
                    assert_eq!(run.code, 2, "{args:?} {env:?}: {run:?}");
                } else {
                    assert!(
                        run.code <= 1,
                        "{args:?} {env:?} in {}: {run:?}",
                        cwd.display()
                    );
                }
            }
        }
    }
    // A TIERSTACK_ variable that cannot be read is an error naming it, not
    // a value silently dropped.
    let ours: &[(&OsStr, &OsStr)] = &[(OsStr::new("TIERSTACK_DEFAULT_TTL"), not_utf8)];
    for args in every_subcommand(&sandbox) {
        let run = run(&args, ours, &sandbox.work(), None, None);
        let needs_config = !matches!(
            args[0].to_str(),
            Some("--help" | "--version" | "nosuchcommand" | "backends" | "key")
        );
        if needs_config {
            assert_eq!(run.code, 2, "{args:?}: {run:?}");
            assert!(
                run.stderr.contains("TIERSTACK_DEFAULT_TTL") && run.stderr.contains("UTF-8"),
                "{args:?}: {run:?}"
            );
        }
    }
}

#[test]
fn closed_full_or_dead_stdout_and_stderr_never_panic() {
    let sandbox = Sandbox::new();
    let env: &[(&OsStr, &OsStr)] = &[(OsStr::new("LC_ALL"), OsStr::from_bytes(NOT_UTF8))];
    for how in [Broken::Closed, Broken::Full, Broken::Pipe] {
        for args in every_subcommand(&sandbox) {
            run(&args, env, &sandbox.work(), Some(how), None);
            run(&args, env, &sandbox.work(), None, Some(how));
            run(&args, env, &sandbox.work(), Some(how), Some(how));
        }
    }
    // What was stored with stdout and stderr broken is really there.
    let config = sandbox.path("c.yaml");
    let config = config.to_str().unwrap();
    let set = ["--config", config, "set", BOOK, "7"].map(OsString::from);
    let stored = run(
        &set,
        env,
        &sandbox.work(),
        Some(Broken::Full),
        Some(Broken::Full),
    );
    assert_eq!(stored.code, 0, "{stored:?}");
    let got = sandbox.run(&["--config", config, "get", BOOK]).expect(0);
    assert_eq!(got.stdout.trim(), "7");
}

#[test]
fn without_home_the_embedded_default_says_why_it_has_nowhere_to_go() {
    let sandbox = Sandbox::new();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let run = run_bare(
        &[OsStr::new("get"), OsStr::new("k:a=1")],
        &[(OsStr::new("PATH"), path.as_os_str())],
        &sandbox.work(),
        None,
        None,
    );
    assert_eq!(run.code, 2, "{run:?}");
    assert!(
        run.stderr.contains("embedded default") && run.stderr.contains("HOME"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("cache.stats_file"), "{run:?}");
}
