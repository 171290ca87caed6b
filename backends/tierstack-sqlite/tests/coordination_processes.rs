//! The SQLite coordinator across real operating-system processes on one
//! file: four processes race for the same 40 leases at the same instant
//! (exactly one winner each), and three processes spend one 20/s budget for
//! 1.5 s (never faster than the rate, all processes served).
//!
//! `harness = false`: the binary is the parent (the checks) and, with
//! `--child lease|spend …`, each child.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tierstack::{Key, LeaseOwner, Rate, Spend, Tier};
use tierstack_conformance::coordination::never_faster_than;
use tierstack_sqlite::{SqliteConfig, SqliteTier};

const LEASE_PROCESSES: usize = 4;
const LEASE_KEYS: usize = 40;
const SPEND_PROCESSES: usize = 3;
const SPEND_FOR: Duration = Duration::from_millis(1500);

fn rate() -> Rate {
    Rate::new(20, Duration::from_secs(1)).expect("a rate")
}

fn lease_key(n: usize) -> Key {
    Key::new("proc", [("n", n.to_string())])
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One check of the parent: `Ok` with its figures, or why it failed.
type Check = fn() -> Result<String, String>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        std::process::exit(runtime.block_on(child(&args[2..])));
    }
    let mut passed = 0;
    let mut failed = 0;
    let tests: [(&str, Check); 2] = [
        ("sqlite::a_lease_has_one_winner_across_processes", leases),
        (
            "sqlite::processes_spending_one_budget_never_exceed_its_rate",
            spends,
        ),
    ];
    for (name, test) in tests {
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
    }
    println!("\n{passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

async fn open(path: &Path) -> Result<SqliteTier, String> {
    SqliteTier::open(&SqliteConfig::new(path), 1)
        .await
        .map_err(|e| e.report().to_string())
}

/// `lease PATH START_US`: at `START_US` (wall clock), tries every key once
/// and prints `won N` for each it took. `spend PATH`: spends the shared
/// budget for [`SPEND_FOR`], sleeping as told, printing `go US` (when it
/// was allowed to go, wall clock) per grant.
async fn child(args: &[String]) -> i32 {
    let (Some(role), Some(path)) = (args.first(), args.get(1)) else {
        println!("error: usage: --child lease|spend PATH …");
        return 2;
    };
    let tier = match open(Path::new(path)).await {
        Ok(tier) => tier,
        Err(e) => {
            println!("error opening: {e}");
            return 2;
        }
    };
    let Some(coordinator) = tier.coordinator() else {
        println!("error: no coordinator");
        return 2;
    };
    let owner = LeaseOwner::random();
    let mut out = std::io::stdout().lock();
    match role.as_str() {
        "lease" => {
            let start: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
            let now = unix_us();
            if start > now {
                tokio::time::sleep(Duration::from_micros(start - now)).await;
            }
            for n in 0..LEASE_KEYS {
                match coordinator
                    .acquire(&lease_key(n), &owner, Duration::from_secs(60))
                    .await
                {
                    Ok(true) => {
                        let _ = writeln!(out, "won {n}");
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let _ = writeln!(out, "error {}", e.report());
                        return 2;
                    }
                }
            }
            0
        }
        "spend" => {
            let started = Instant::now();
            while started.elapsed() < SPEND_FOR {
                match coordinator
                    .spend("shared", rate(), Duration::from_millis(120))
                    .await
                {
                    Ok(Spend::Granted(wait)) => {
                        let _ = writeln!(out, "go {}", unix_us() + wait.as_micros() as u64);
                        tokio::time::sleep(wait).await;
                    }
                    Ok(Spend::Denied(wait)) => {
                        tokio::time::sleep(wait.min(Duration::from_millis(20))).await;
                    }
                    Err(e) => {
                        let _ = writeln!(out, "error {}", e.report());
                        return 2;
                    }
                }
            }
            0
        }
        other => {
            let _ = writeln!(out, "error: unknown role {other}");
            2
        }
    }
}

/// A temporary directory with the file created once, so that the children
/// do not race to create it.
fn prepared_file() -> Result<(tempfile::TempDir, PathBuf), String> {
    let dir = tempfile::Builder::new()
        .prefix("tierstack-coord-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let path = dir.path().join("shared.db");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(open(&path)).map(drop)?;
    Ok((dir, path))
}

fn spawn(args: &[&str]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .arg("--child")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start a child: {e}"))
}

/// Waits for every child; their output lines, or why one failed.
fn outputs(children: Vec<Child>) -> Result<Vec<Vec<String>>, String> {
    let mut all = Vec::new();
    for child in children {
        let output = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if !output.status.success() || lines.iter().any(|l| l.starts_with("error")) {
            return Err(format!(
                "a child failed ({}): {:?}",
                output.status,
                lines.iter().find(|l| l.starts_with("error"))
            ));
        }
        all.push(lines);
    }
    Ok(all)
}

fn leases() -> Result<String, String> {
    let (_dir, path) = prepared_file()?;
    let path = path.to_string_lossy().into_owned();
    // Far enough ahead for every child to start and open the file.
    let start = (unix_us() + 1_500_000).to_string();
    let children = (0..LEASE_PROCESSES)
        .map(|_| spawn(&["lease", &path, &start]))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = outputs(children)?;
    let mut winners = vec![0_usize; LEASE_KEYS];
    let mut wins_per_process = Vec::new();
    for lines in &outputs {
        let won: Vec<usize> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("won ")?.parse().ok())
            .collect();
        for &n in &won {
            winners[n] += 1;
        }
        wins_per_process.push(won.len());
    }
    if let Some((n, count)) = winners.iter().enumerate().find(|(_, c)| **c != 1) {
        return Err(format!("lease {n} had {count} winners (want exactly 1)"));
    }
    Ok(format!(
        "{LEASE_PROCESSES} processes, {LEASE_KEYS} leases, one winner each; wins per process {wins_per_process:?}"
    ))
}

fn spends() -> Result<String, String> {
    let (_dir, path) = prepared_file()?;
    let path = path.to_string_lossy().into_owned();
    let children = (0..SPEND_PROCESSES)
        .map(|_| spawn(&["spend", &path]))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = outputs(children)?;
    let mut sends: Vec<u64> = Vec::new();
    let mut per_process = Vec::new();
    for lines in &outputs {
        let goes: Vec<u64> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("go ")?.parse().ok())
            .collect();
        per_process.push(goes.len());
        sends.extend(goes);
    }
    if per_process.contains(&0) {
        return Err(format!("a process got no request through: {per_process:?}"));
    }
    let first = sends.iter().copied().min().unwrap_or(0);
    let mut seconds: Vec<f64> = sends
        .iter()
        .map(|&us| Duration::from_micros(us - first).as_secs_f64())
        .collect();
    never_faster_than(&mut seconds, rate(), 1)?;
    // 1 at once, then one each 50 ms for about 1.5 s.
    if sends.len() < 20 {
        return Err(format!(
            "only {} requests in {SPEND_FOR:?}: starved, not limited",
            sends.len()
        ));
    }
    Ok(format!(
        "{SPEND_PROCESSES} processes, {} requests at 20/s ({per_process:?}), never faster",
        sends.len()
    ))
}
