//! Tests with real operating-system processes: several processes on one
//! store, and `kill -9` while writing; and the second process of the
//! `shared_across_processes` conformance case
//! ([`serve_as_second_process_if_asked`]).
//!
//! A backend's test file declares `harness = false` and calls [`main`]; the
//! same binary then serves as parent (running the checks) and as child
//! (`--child writer|reader …`). Figures can be scaled with environment
//! variables: `TIERSTACK_CRASH_CYCLES` (default 100) and
//! `TIERSTACK_MULTIPROCESS_SECS` (default 60).

use std::future::Future;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tierstack::{Key, Result, Tier, TieredCache, Ttl};

/// Opens the store at a path.
pub type Open = fn(PathBuf) -> Pin<Box<dyn Future<Output = Result<Arc<dyn Tier>>> + Send>>;

/// What a backend's process tests need.
pub struct ProcessSuite {
    /// Backend name, for messages.
    pub name: &'static str,
    /// Opens the store; called in parent and children.
    pub open: Open,
    /// Checks the store's own integrity after a crash (e.g. SQLite's
    /// `integrity_check`); runs before the store is opened again.
    pub integrity: fn(&Path) -> std::result::Result<(), String>,
    /// Whether several processes may open the store at once. Stores with an
    /// exclusive lock instead check that a second process gets a clear
    /// "locked" error.
    pub multi_process: bool,
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn key(writer: &str, n: u64) -> Key {
    Key::new("proc", [("w", writer.to_owned()), ("n", n.to_string())])
}

fn value(writer: &str, n: u64) -> String {
    format!("{writer}:{n}:{}", "v".repeat((n % 200) as usize))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Entry point of a `harness = false` test binary.
pub fn main(suite: &ProcessSuite) {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let code = runtime().block_on(child(suite, &args[2..]));
        std::process::exit(code);
    }
    let mut passed = 0;
    let mut failed = 0;
    let mut run = |name: &str, test: &dyn Fn() -> std::result::Result<String, String>| {
        let started = Instant::now();
        match test() {
            Ok(figures) => {
                passed += 1;
                println!("test {name} ... ok ({figures}; {:.1?})", started.elapsed());
            }
            Err(why) => {
                failed += 1;
                println!("test {name} ... FAILED: {why}");
            }
        }
    };
    run(
        &format!("{}::integrity_check_catches_damage", suite.name),
        &|| integrity_check_catches_damage(suite),
    );
    run(
        &format!(
            "{}::kill_9_catches_a_writer_that_acknowledges_before_committing",
            suite.name
        ),
        &|| crash_test_catches_early_acks(suite),
    );
    run(
        &format!("{}::kill_9_loses_no_acknowledged_write", suite.name),
        &|| crash_cycles(suite),
    );
    if suite.multi_process {
        run(
            &format!("{}::writers_and_readers_in_separate_processes", suite.name),
            &|| multi_process(suite),
        );
    } else {
        run(
            &format!("{}::a_second_process_gets_a_clear_lock_error", suite.name),
            &|| second_process_is_refused(suite),
        );
    }
    println!("\n{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Children: `writer PATH NAME SECS` prints `ack KEY-N` after each write
/// returned; `reader PATH SECS` checks every value it finds; `open PATH`
/// reports whether the store opened.
async fn child(suite: &ProcessSuite, args: &[String]) -> i32 {
    let path = PathBuf::from(&args[1]);
    let tier = match (suite.open)(path).await {
        Ok(t) => t,
        Err(e) => {
            println!("open-error {e}");
            return 3;
        }
    };
    if args[0] == "open" {
        println!("opened");
        return 0;
    }
    let secs: u64 = args.last().and_then(|s| s.parse().ok()).unwrap_or(5);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let cache = TieredCache::builder().shared_tier(tier).build();
    let stdout = std::io::stdout();
    match args[0].as_str() {
        "writer" => {
            let name = &args[2];
            let ack_early = std::env::var_os(ACK_BEFORE_COMMIT).is_some();
            let mut n = 0u64;
            while Instant::now() < deadline {
                if ack_early {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "ack {n}");
                    let _ = out.flush();
                }
                if let Err(e) = cache
                    .set(&key(name, n), value(name, n), Ttl::TierDefault)
                    .await
                {
                    println!("error {e}");
                    return 2;
                }
                let stats = cache.stats();
                if stats.layers[0].write_errors > 0 {
                    println!("error write failed (see log)");
                    return 2;
                }
                if !ack_early {
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "ack {n}");
                    let _ = out.flush();
                }
                n += 1;
            }
            0
        }
        "reader" => {
            let mut reads = 0u64;
            let mut hits = 0u64;
            let mut n = 0u64;
            while Instant::now() < deadline {
                for writer in ["w0", "w1", "w2", "w3"] {
                    if let Some(v) = cache.get::<String>(&key(writer, n % 500)).await {
                        if *v != value(writer, n % 500) {
                            println!("wrong value for {writer}/{}", n % 500);
                            return 2;
                        }
                        hits += 1;
                    }
                    reads += 1;
                }
                n += 1;
            }
            let stats = cache.stats();
            let layer = &stats.layers[0];
            if layer.errors > 0 || layer.decode_failures > 0 {
                println!(
                    "error {} tier errors, {} decode failures",
                    layer.errors, layer.decode_failures
                );
                return 2;
            }
            println!("reads {reads}");
            println!("hits {hits}");
            0
        }
        other => {
            println!("unknown child role {other}");
            2
        }
    }
}

fn child_command(args: &[&str]) -> std::result::Result<Command, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    command
        .arg("--child")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    Ok(command)
}

fn spawn(args: &[&str]) -> std::result::Result<Child, String> {
    child_command(args)?
        .spawn()
        .map_err(|e| format!("cannot start child: {e}"))
}

/// Like [`collect`], and sends the count of acks seen after each one.
fn collect_counting(
    child: &mut Child,
) -> (
    std::sync::mpsc::Receiver<usize>,
    std::thread::JoinHandle<Vec<String>>,
) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let lines = std::thread::spawn(move || {
        let mut lines = Vec::new();
        let mut acks = 0;
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if line.starts_with("ack ") {
                acks += 1;
                let _ = tx.send(acks);
            }
            lines.push(line);
        }
        lines
    });
    (rx, lines)
}

/// Collects a child's complete output lines on a thread.
fn collect(child: &mut Child) -> std::thread::JoinHandle<Vec<String>> {
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
            .collect()
    })
}

fn acked(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("ack ").and_then(|n| n.parse().ok()))
        .collect()
}

fn verify(
    suite: &ProcessSuite,
    path: &Path,
    writes: &[(String, Vec<u64>)],
) -> std::result::Result<(), String> {
    runtime().block_on(async {
        let tier = (suite.open)(path.to_path_buf())
            .await
            .map_err(|e| format!("reopen failed: {e}"))?;
        let cache = TieredCache::builder().shared_tier(tier).build();
        for (writer, acks) in writes {
            for &n in acks {
                match cache.get::<String>(&key(writer, n)).await {
                    Some(v) if *v == value(writer, n) => {}
                    Some(_) => return Err(format!("{writer}/{n}: wrong value after crash")),
                    None => return Err(format!("{writer}/{n}: acknowledged write lost")),
                }
            }
        }
        Ok(())
    })
}

/// Acknowledged writes each writer must have made before it is killed, so
/// that no cycle passes by having nothing to lose.
const MIN_ACKS_PER_CYCLE: usize = 20;

/// Set in a crash writer's environment to make it acknowledge each write
/// before making it, as a broken store would: the crash test must then
/// fail (`kill_9_catches_a_writer_that_acknowledges_before_committing`).
const ACK_BEFORE_COMMIT: &str = "TIERSTACK_CRASH_ACK_BEFORE_COMMIT";

/// Starts a writer, waits for its first [`MIN_ACKS_PER_CYCLE`] acks, lets it
/// write a little longer and kills it; returns every write it acknowledged.
fn crash_once(
    path: &Path,
    writer: &str,
    seed: u64,
    ack_before_commit: bool,
) -> std::result::Result<Vec<u64>, String> {
    let mut command = child_command(&["writer", &path.to_string_lossy(), writer, "60"])?;
    if ack_before_commit {
        command.env(ACK_BEFORE_COMMIT, "1");
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start child: {e}"))?;
    let (acks_seen, lines) = collect_counting(&mut child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let enough = loop {
        match acks_seen.recv_timeout(Duration::from_millis(100)) {
            Ok(n) if n >= MIN_ACKS_PER_CYCLE => break true,
            Ok(_) | Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break false,
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    std::thread::sleep(Duration::from_millis(seed % 100));
    child.kill().map_err(|e| format!("kill: {e}"))?;
    let _ = child.wait();
    let lines = lines
        .join()
        .map_err(|_| "reader thread panicked".to_string())?;
    if let Some(err) = lines
        .iter()
        .find(|l| l.starts_with("error") || l.starts_with("open-error"))
    {
        return Err(format!("child reported {err}"));
    }
    let acks = acked(&lines);
    if !enough || acks.len() < MIN_ACKS_PER_CYCLE {
        return Err(format!(
            "the writer acknowledged {} writes before it was killed; at least {MIN_ACKS_PER_CYCLE} are needed",
            acks.len()
        ));
    }
    Ok(acks)
}

fn crash_cycles(suite: &ProcessSuite) -> std::result::Result<String, String> {
    let cycles = env_or("TIERSTACK_CRASH_CYCLES", 100);
    let dir = tempfile_dir()?;
    let path = dir.join("store");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut done: Vec<(String, Vec<u64>)> = Vec::new();
    let mut fewest = usize::MAX;
    for cycle in 0..cycles {
        let writer = format!("c{cycle}");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let acks =
            crash_once(&path, &writer, seed, false).map_err(|e| format!("cycle {cycle}: {e}"))?;
        (suite.integrity)(&path).map_err(|e| format!("cycle {cycle}: integrity check: {e}"))?;
        verify(suite, &path, &[(writer.clone(), acks.clone())])
            .map_err(|e| format!("cycle {cycle}: {e}"))?;
        fewest = fewest.min(acks.len());
        done.push((writer, acks));
    }
    // Every cycle again, after all the crashes that followed it.
    verify(suite, &path, &done).map_err(|e| format!("after the last cycle: {e}"))?;
    let total: usize = done.iter().map(|(_, acks)| acks.len()).sum();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "{cycles} cycles, {total} acknowledged writes (at least {fewest} per cycle) checked after their cycle and again after the last, 0 lost"
    ))
}

/// The crash test's own test: a writer that acknowledges before it commits
/// must be caught within a few cycles.
fn crash_test_catches_early_acks(suite: &ProcessSuite) -> std::result::Result<String, String> {
    let dir = tempfile_dir()?;
    let path = dir.join("store");
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for cycle in 0..20 {
        let writer = format!("early{cycle}");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let acks =
            crash_once(&path, &writer, seed, true).map_err(|e| format!("cycle {cycle}: {e}"))?;
        if let Err(caught) = verify(suite, &path, &[(writer, acks)]) {
            let _ = std::fs::remove_dir_all(&dir);
            return Ok(format!("caught in cycle {cycle}: {caught}"));
        }
    }
    Err("20 crashes of a writer that acknowledges before committing lost no acknowledged write: the crash test cannot fail".into())
}

/// The integrity hook's own test: a store with a run of bytes overwritten
/// must fail it.
fn integrity_check_catches_damage(suite: &ProcessSuite) -> std::result::Result<String, String> {
    let dir = tempfile_dir()?;
    let path = dir.join("store");
    runtime().block_on(async {
        let tier = (suite.open)(path.clone())
            .await
            .map_err(|e| e.to_string())?;
        let cache = TieredCache::builder().shared_tier(tier).build();
        for n in 0..2_000 {
            cache
                .set(&key("damage", n), value("damage", n), Ttl::TierDefault)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })?;
    (suite.integrity)(&path).map_err(|e| format!("the undamaged store fails: {e}"))?;
    let damaged = damage(&path)?;
    let verdict = (suite.integrity)(&path);
    let _ = std::fs::remove_dir_all(&dir);
    match verdict {
        Err(e) => Ok(format!("{damaged}: {e}")),
        Ok(()) => Err(format!("{damaged}, and the integrity check passed")),
    }
}

/// Overwrites 8 KiB in the middle of the store's largest file with a
/// pattern no engine writes.
fn damage(path: &Path) -> std::result::Result<String, String> {
    use std::io::{Seek as _, SeekFrom};
    let file = if path.is_dir() {
        walk(path)
            .into_iter()
            .max_by_key(|f| f.metadata().map_or(0, |m| m.len()))
            .ok_or("the store directory is empty")?
    } else {
        path.to_path_buf()
    };
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let at = len / 2;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .map_err(|e| e.to_string())?;
    f.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
    let pattern: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    f.write_all(&pattern).map_err(|e| e.to_string())?;
    f.sync_all().map_err(|e| e.to_string())?;
    Ok(format!(
        "8 KiB overwritten at byte {at} of {} ({len} bytes)",
        file.file_name().unwrap_or_default().to_string_lossy()
    ))
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files.extend(walk(&p));
        } else {
            files.push(p);
        }
    }
    files
}

fn multi_process(suite: &ProcessSuite) -> std::result::Result<String, String> {
    let secs = env_or("TIERSTACK_MULTIPROCESS_SECS", 60).to_string();
    let dir = tempfile_dir()?;
    let path = dir.join("store");
    let path_text = path.to_string_lossy().into_owned();
    // Create the store once so that eight processes do not race to create it.
    runtime()
        .block_on(async { (suite.open)(path.clone()).await.map(drop) })
        .map_err(|e| e.to_string())?;
    let writers: Vec<String> = (0..4).map(|i| format!("w{i}")).collect();
    let mut children = Vec::new();
    for w in &writers {
        let mut c = spawn(&["writer", &path_text, w, &secs])?;
        let out = collect(&mut c);
        children.push((w.clone(), c, out));
    }
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut c = spawn(&["reader", &path_text, &secs])?;
        let out = collect(&mut c);
        readers.push((c, out));
    }
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut total_acks = 0;
    for (w, mut c, out) in children {
        let status = c.wait().map_err(|e| e.to_string())?;
        let lines = out.join().map_err(|_| "thread panicked".to_string())?;
        if !status.success() {
            return Err(format!("writer {w} failed: {:?}", lines.last()));
        }
        let acks = acked(&lines);
        total_acks += acks.len();
        results.lock().expect("lock").push((w, acks));
    }
    let mut total_reads = 0u64;
    let mut total_hits = 0u64;
    for (mut c, out) in readers {
        let status = c.wait().map_err(|e| e.to_string())?;
        let lines = out.join().map_err(|_| "thread panicked".to_string())?;
        if !status.success() {
            return Err(format!("reader failed: {:?}", lines.last()));
        }
        let figure = |name: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(name).and_then(|n| n.parse::<u64>().ok()))
                .ok_or(format!(
                    "a reader did not report its {name}figure: {lines:?}"
                ))
        };
        total_reads += figure("reads ")?;
        let hits = figure("hits ")?;
        // A reader that never saw another process's write proved nothing.
        if hits == 0 {
            return Err("a reader found none of the writers' entries".into());
        }
        total_hits += hits;
    }
    verify(suite, &path, &results.lock().expect("lock"))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "4 writers + 4 readers for {secs} s: {total_acks} acknowledged writes all present, {total_reads} reads of which {total_hits} hits, 0 errors"
    ))
}

fn second_process_is_refused(suite: &ProcessSuite) -> std::result::Result<String, String> {
    let dir = tempfile_dir()?;
    let path = dir.join("store");
    runtime().block_on(async {
        let _held = (suite.open)(path.clone())
            .await
            .map_err(|e| e.to_string())?;
        let output = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["--child", "open", &path.to_string_lossy()])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return Err("a second process opened the store while the first held it".to_string());
        }
        if !text.contains("locked by another process") {
            return Err(format!("unclear error for the second process: {text}"));
        }
        Ok(format!("second process told: {}", text.trim()))
    })
}

fn tempfile_dir() -> std::result::Result<PathBuf, String> {
    tempfile::Builder::new()
        .prefix("tierstack-proc-")
        .tempdir()
        .map(tempfile::TempDir::keep)
        .map_err(|e| e.to_string())
}

/// Set in the environment of a conformance case's second process, to the
/// tier config (JSON) it opens the store with.
const SECOND_PROCESS: &str = "TIERSTACK_CONFORMANCE_SECOND_PROCESS";

/// Plays a conformance case's second process and exits, when this process
/// was started as one (the conformance `main`, [`crate::run_suites`], and
/// the self-test call it first); returns at once otherwise.
///
/// The second process opens the store from the config it was given, reads
/// the key the first process wrote (`seen VALUE` or `missing`), writes a
/// key of its own (`wrote`) and exits 0; it prints `error …` and exits 2
/// when the store fails.
pub fn serve_as_second_process_if_asked() {
    let Ok(config) = std::env::var(SECOND_PROCESS) else {
        return;
    };
    let code = runtime().block_on(second_process(&config));
    std::process::exit(code);
}

async fn second_process(config: &str) -> i32 {
    use tierstack::{BuildContext, TierConfig};
    let config: Box<dyn TierConfig> = match serde_json::from_str(config) {
        Ok(config) => config,
        Err(e) => {
            println!("error the config does not parse: {e}");
            return 2;
        }
    };
    let tier = match config
        .build(&BuildContext::new(crate::SCHEMA_VERSION))
        .await
    {
        Ok(tier) => tier,
        Err(e) => {
            println!("error the store does not open: {e}");
            return 2;
        }
    };
    match tier.get(&crate::cases::written_by_first_process()).await {
        Ok(Some(entry)) => match crate::cases::json_of(&entry) {
            Ok(value) => println!("seen {value}"),
            Err(e) => println!("error undecodable entry: {e}"),
        },
        Ok(None) => println!("missing"),
        Err(e) => {
            println!("error get: {e}");
            return 2;
        }
    }
    let key = crate::cases::written_by_second_process();
    let value = serde_json::json!({"pid": std::process::id()});
    if let Err(e) = tier
        .set(&key, crate::cases::entry(&key, &value, None))
        .await
    {
        println!("error set: {e}");
        return 2;
    }
    println!("wrote");
    0
}

/// Starts this test binary as a second process on the store that
/// `config` (JSON) opens, waits for it (at most 60 s) and returns what it
/// printed.
pub(crate) fn run_second_process(config: &str) -> std::result::Result<Vec<String>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(SECOND_PROCESS, config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the second process: {e}"))?;
    let lines = collect(&mut child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) => {
                let lines = lines
                    .join()
                    .map_err(|_| "output thread panicked".to_string())?;
                if !status.success() {
                    return Err(format!("the second process failed ({status}): {lines:?}"));
                }
                return Ok(lines);
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the second process did not finish in 60 s".to_string());
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}
