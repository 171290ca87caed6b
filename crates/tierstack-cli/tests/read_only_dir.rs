//! A cache location in a directory its user cannot write is "backend
//! unavailable" (exit 3) for every command and file backend, naming the
//! directory. Root ignores directory permissions, so as root (as CI runs)
//! the `tierstack` binary is run as an unprivileged user (`setpriv`) on a
//! directory that user owns with mode 0500. `harness = false`: where that
//! is impossible the test is reported as ignored with the reason, never as
//! passed (see `tierstack_conformance::environment`).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tierstack_conformance::environment::{
    self, Outcome, Runnable, UNPRIVILEGED, is_root, ran, read_only_for_unprivileged, unavailable,
};

fn stack_config(kind: &str, path: &Path) -> String {
    format!(
        "cache:\n  tiers:\n    - kind: memory\n      ttl: 1h\n    - kind: {kind}\n      path: \"{}\"\n      ttl: 7d\n",
        path.display()
    )
}

/// Runs every command on every file backend with `command()` (the binary,
/// as whichever user) in `work`, a directory that user owns, against a
/// cache location in `locked`.
fn check(work: &Path, locked: &Path, command: &dyn Fn() -> Command) {
    for kind in ["sqlite", "redb", "sled"] {
        let config = work.join(format!("{kind}.yaml"));
        std::fs::write(&config, stack_config(kind, &locked.join("c.db"))).unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
        for args in [
            &["get", "a:k=1"][..],
            &["set", "a:k=1", "1"],
            &["stats"],
            &["config", "check"],
        ] {
            let mut run = command();
            run.arg("--config").arg(&config).args(args);
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("TIERSTACK_") {
                    run.env_remove(name);
                }
            }
            let home = work.join("home");
            let output = run
                .current_dir(work)
                .env("HOME", &home)
                .env("XDG_CACHE_HOME", home.join("cache"))
                .env("XDG_CONFIG_HOME", home.join("config"))
                .env("RUST_BACKTRACE", "0")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!stderr.contains("panicked"), "{kind} {args:?}: {stderr}");
            assert_eq!(output.status.code(), Some(3), "{kind} {args:?}: {output:?}");
            assert!(
                stderr.contains(locked.to_str().unwrap()),
                "{kind} {args:?}: {stderr}"
            );
        }
        assert!(
            std::fs::read_dir(locked).unwrap().next().is_none(),
            "{kind}: something was created in the read-only directory"
        );
    }
}

fn a_read_only_cache_directory_is_backend_unavailable() -> Outcome {
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tierstack"));
    if !is_root() {
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir_all(dir.path().join("home")).unwrap();
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        check(dir.path(), &locked, &|| Command::new(&binary));
        return ran();
    }
    let runnable = match Runnable::copy(&binary) {
        Ok(r) => r,
        Err(why) => return unavailable(why),
    };
    if let Err(why) = runnable.as_unprivileged_user() {
        return unavailable(why);
    }
    let work = runnable.dir().join("work");
    std::fs::create_dir_all(work.join("home")).unwrap();
    for dir in [&work, &work.join("home")] {
        std::os::unix::fs::chown(dir, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).unwrap();
    }
    let locked = work.join("locked");
    std::fs::create_dir(&locked).unwrap();
    read_only_for_unprivileged(&locked).unwrap();
    check(&work, &locked, &|| {
        runnable.as_unprivileged_user().expect("checked above")
    });
    ran()
}

fn main() {
    environment::main(vec![(
        "a_read_only_cache_directory_is_backend_unavailable",
        a_read_only_cache_directory_is_backend_unavailable,
    )]);
}
