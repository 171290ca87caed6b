//! Tests that need something the machine may not have: root (to mount a
//! small tmpfs), an unprivileged user (a read-only directory means nothing
//! to root), a `redis-server` built with TLS, the `sqlite3` shell.
//!
//! Plain `cargo test` has no way to skip at run time: a `#[test]` that
//! returns early reports "ok" without having checked anything. Such tests
//! live in a `harness = false` target whose `main` is [`main`]: a test
//! whose environment is missing returns [`unavailable`] and is reported as
//! **ignored, with the reason**. With `TIERSTACK_REQUIRE_ENVIRONMENT` set
//! (`scripts/test.sh` sets it under CI, which runs as root and installs
//! what these tests need) a missing environment fails the test instead, so
//! CI never skips one.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Completion, Failed, Trial};

/// What an environment-gated test returns: `Ok(Completion::Completed)`
/// when it ran (a failure panics or returns `Err`), or [`unavailable`].
pub type Outcome = Result<Completion, Failed>;

/// Set (to anything) to make a missing environment a failure.
pub const REQUIRE: &str = "TIERSTACK_REQUIRE_ENVIRONMENT";

/// The test ran and passed.
pub fn ran() -> Outcome {
    Ok(Completion::Completed)
}

/// The test could not run here, because of `reason`: ignored with the
/// reason, or a failure when [`REQUIRE`] is set.
pub fn unavailable(reason: impl Display) -> Outcome {
    if std::env::var_os(REQUIRE).is_some() {
        Err(format!("{REQUIRE} is set, but this test cannot run here: {reason}").into())
    } else {
        Ok(Completion::ignored_with(reason))
    }
}

/// An environment-gated test: its name and its body.
pub type Test = (&'static str, fn() -> Outcome);

/// The `main` of a `harness = false` test target of environment-gated
/// tests, with `cargo test`'s command line (filters, `--list`).
pub fn main(tests: Vec<Test>) -> ! {
    let args = Arguments::from_args();
    let trials = tests
        .into_iter()
        .map(|(name, test)| Trial::ignorable_test(name, test))
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// Runs `future` on a fresh two-thread runtime, as `#[tokio::test]` would.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(future)
}

/// Whether this process runs as root (which ignores directory
/// permissions).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Whether `program` is on the `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// The user id [`Runnable::as_unprivileged_user`] runs commands as: `nobody` by
/// convention, needing no account (`setpriv` takes a number).
pub const UNPRIVILEGED: u32 = 65534;

/// A directory (mode 0755) that the unprivileged user can enter, with a
/// copy of `program` in it that the user can run: the build directory may
/// sit under a home the user cannot enter.
pub struct Runnable {
    dir: tempfile::TempDir,
    program: PathBuf,
}

impl Runnable {
    /// Copies `program` into a fresh world-readable directory.
    pub fn copy(program: &Path) -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("tierstack-unprivileged-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let copy = dir.path().join(program.file_name().unwrap_or_default());
        std::fs::copy(program, &copy).map_err(|e| format!("copy {}: {e}", program.display()))?;
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Ok(Self { dir, program: copy })
    }

    /// The directory, for files the unprivileged user works on.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A command that runs the copy as [`UNPRIVILEGED`] (user and group,
    /// no supplementary groups), or why there is none: `setpriv` missing,
    /// or not root (then the caller needs no other user).
    pub fn as_unprivileged_user(&self) -> Result<Command, String> {
        if !is_root() {
            return Err("not root: no other user can be taken on".to_owned());
        }
        if !on_path("setpriv") {
            return Err("running as root and `setpriv` (util-linux) is not installed, so the case cannot be run as an unprivileged user".to_owned());
        }
        let mut command = Command::new("setpriv");
        command
            .arg(format!("--reuid={UNPRIVILEGED}"))
            .arg(format!("--regid={UNPRIVILEGED}"))
            .arg("--clear-groups")
            .arg("--")
            .arg(&self.program);
        Ok(command)
    }
}

/// Makes `dir` read-only for [`UNPRIVILEGED`]: owned by it, mode 0500.
pub fn read_only_for_unprivileged(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::os::unix::fs::chown(dir, Some(UNPRIVILEGED), Some(UNPRIVILEGED))
        .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o500)).map_err(|e| e.to_string())
}

/// A small tmpfs (a disk that fills up), unmounted when dropped. Mounting
/// needs root.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on a new temporary directory; where that
    /// cannot be done, the [`unavailable`] outcome to return, with the
    /// reason.
    ///
    /// # Errors
    ///
    /// The outcome of a test that cannot run here: no root, no `mount`.
    pub fn mount(bytes: usize) -> Result<Self, Outcome> {
        let cannot = |why: &dyn Display| {
            unavailable(format!("cannot mount a tmpfs ({why}); mounting needs root"))
        };
        let dir = tempfile::tempdir().map_err(|e| cannot(&e))?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| cannot(&e))?;
        if out.status.success() {
            Ok(Self { dir })
        } else {
            Err(cannot(&String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// The mounted directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
