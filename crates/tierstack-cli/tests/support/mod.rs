//! Runs the real `tierstack` binary in a sandbox: its own HOME, cache and
//! config directories and working directory, and no `TIERSTACK_…`
//! variables from the environment of the test run.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A sandbox to run `tierstack` in.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

/// What one run printed and how it ended.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: &Output) -> Self {
        let run = Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        assert!(
            !run.stderr.contains("panicked") && !run.stderr.contains("RUST_BACKTRACE"),
            "tierstack panicked: {run:?}"
        );
        run
    }

    /// Asserts the exit code and returns the run.
    #[track_caller]
    pub fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:?}");
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

impl Sandbox {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["home", "cache", "config", "work"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        Self {
            dir,
            env: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The working directory of every run.
    pub fn work(&self) -> PathBuf {
        self.path("work")
    }

    /// Sets a variable for later runs.
    pub fn env(&mut self, name: &str, value: impl AsRef<str>) -> &mut Self {
        self.env.push((name.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Writes a config of the RFC's flat form with its `location` at `dir`
    /// under the sandbox; returns the config's path and the location.
    pub fn flat_config(&self, dir: &str) -> (String, PathBuf) {
        let location = self.path(dir);
        let config = self.write(
            &format!("{dir}.yaml"),
            &format!("cache:\n  location: \"{}\"\n", location.display()),
        );
        (config.to_string_lossy().into_owned(), location)
    }

    /// Writes a file under the sandbox and returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tierstack"));
        command.args(args);
        self.sandboxed(command)
    }

    /// Starts a long-running command (`proxy`) with stdout and stderr
    /// piped; the caller stops it.
    #[allow(dead_code)] // used by some test binaries only
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Runs with at most `memory_kib` of address space (`ulimit -v`) and for
    /// at most `seconds` (then killed: exit 124), so that a run that would
    /// hold a whole stream in memory or never end fails the test instead of
    /// the machine.
    pub fn run_limited(&self, args: &[&str], memory_kib: u64, seconds: u64) -> Run {
        let mut command = Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(r#"ulimit -v "$1" || exit 99; t="$2"; shift 2; exec timeout "$t" "$@""#)
            .arg("sh")
            .arg(memory_kib.to_string())
            .arg(seconds.to_string())
            .arg(env!("CARGO_BIN_EXE_tierstack"))
            .args(args);
        Run::from(&self.sandboxed(command).output().unwrap())
    }

    /// `command` with the sandbox's directories and environment.
    pub fn sandboxed(&self, mut command: Command) -> Command {
        command
            .current_dir(self.work())
            .env("HOME", self.path("home"))
            .env("XDG_CACHE_HOME", self.path("cache"))
            .env("XDG_CONFIG_HOME", self.path("config"))
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("TIERSTACK_") {
                command.env_remove(name);
            }
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(&self.command(args).output().unwrap())
    }

    /// Runs with `input` on stdin.
    pub fn run_with_input(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write as _;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        Run::from(&child.wait_with_output().unwrap())
    }
}

/// How a standard stream of a run is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// Not open at all, as under `cmd >&-`.
    Closed,
    /// `/dev/full`: every write fails with "no space left".
    Full,
    /// A pipe whose reader has exited: every write fails with EPIPE.
    Pipe,
}

/// A pipe nobody reads any more: the stdin of a `true` that has exited.
fn dead_pipe() -> Stdio {
    let mut reader = Command::new("true").stdin(Stdio::piped()).spawn().unwrap();
    let writer = reader.stdin.take().unwrap();
    reader.wait().unwrap();
    Stdio::from(writer)
}

/// Runs the binary with exactly `env` (nothing inherited), in `cwd`, with
/// stdout and stderr broken as asked (`None`: captured). It runs through
/// `sh`, whose redirections close a descriptor or open `/dev/full` before
/// `exec`, so no unsafe code is needed here.
pub fn run_bare(
    args: &[&std::ffi::OsStr],
    env: &[(&std::ffi::OsStr, &std::ffi::OsStr)],
    cwd: &Path,
    stdout: Option<Broken>,
    stderr: Option<Broken>,
) -> Run {
    let redirect = |fd: &str, how: Option<Broken>| match how {
        Some(Broken::Closed) => format!(" {fd}>&-"),
        Some(Broken::Full) => format!(" {fd}>/dev/full"),
        None | Some(Broken::Pipe) => String::new(),
    };
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(format!(
            "exec \"$0\" \"$@\"{}{}",
            redirect("1", stdout),
            redirect("2", stderr)
        ))
        .arg(env!("CARGO_BIN_EXE_tierstack"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if stdout == Some(Broken::Pipe) {
        command.stdout(dead_pipe());
    }
    if stderr == Some(Broken::Pipe) {
        command.stderr(dead_pipe());
    }
    Run::from(&command.output().unwrap())
}

/// A config file of memory over `kind` at `path`.
pub fn stack_config(kind: &str, path: &Path) -> String {
    format!(
        "cache:\n  tiers:\n    - kind: memory\n      ttl: 1h\n    - kind: {kind}\n      path: \"{}\"\n      ttl: 7d\n",
        path.display()
    )
}

/// The bytes of every regular file under `dir` (the target of every
/// symbolic link, the kind of every other entry), to compare before and
/// after a run that must leave it alone.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let kind = format!("{:?}", meta.file_type());
            let bytes = if meta.is_dir() {
                dirs.push(path.clone());
                Vec::new()
            } else if meta.is_file() {
                std::fs::read(&path).unwrap()
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                target.to_string_lossy().into_owned().into_bytes()
            } else {
                Vec::new()
            };
            out.push((path, kind, bytes));
        }
    }
    out.sort();
    out
}
