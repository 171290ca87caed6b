//! Resident memory per L1 entry: 100,000 book records (~400 bytes in
//! MessagePack) held by the memory tier through `TieredCache::set`, next to
//! raw moka holding `Arc<Book>` (with `time_to_live`, as a user's L1 would)
//! and raw quick_cache holding `Arc<Book>`. Each runs in a process of its
//! own (`resident <holder> [records]`); the figure is the growth of VmRSS
//! while the records go in, divided by their number. `resident` with no
//! argument runs all three as child processes and prints the ratios.
#![allow(missing_docs)]

use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Duration;

use tierstack::{Compression, Key, MemoryConfig, MemoryTier, TieredCache, Ttl};

// The benches' record (~400 bytes in MessagePack) and keys.
#[path = "../benches/common/mod.rs"]
mod common;
use common::{Book, book, key};

/// VmRSS in bytes, from /proc/self/status.
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

const TTL: Duration = Duration::from_secs(3600);

/// Fills one holder and prints its bytes per record.
fn measure(holder: &str, records: u64) -> Result<f64, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // Keys and records are made before the first reading: what is counted
    // is what the holder keeps, as a user's keys and values exist anyway
    // only while they are being cached.
    let keys: Vec<Key> = (0..records).map(key).collect();
    let capacity = records * 2;
    let before;
    let kept: Box<dyn std::any::Any> = match holder {
        "moka" => {
            let cache: moka::future::Cache<Key, Arc<Book>> = moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(TTL)
                .build();
            before = rss().ok_or("no /proc/self/status")?;
            rt.block_on(async {
                for (i, k) in keys.iter().enumerate() {
                    cache.insert(k.clone(), Arc::new(book(i as u64))).await;
                }
                cache.run_pending_tasks().await;
            });
            Box::new(cache)
        }
        "quick_cache" => {
            let cache: quick_cache::sync::Cache<Key, Arc<Book>> =
                quick_cache::sync::Cache::new(capacity as usize);
            before = rss().ok_or("no /proc/self/status")?;
            for (i, k) in keys.iter().enumerate() {
                cache.insert(k.clone(), Arc::new(book(i as u64)));
            }
            Box::new(cache)
        }
        "tierstack" => {
            let tier = MemoryTier::new(&MemoryConfig::with_max_entries(capacity).ttl(TTL))
                .map_err(|e| e.to_string())?;
            let cache = TieredCache::builder()
                .compression(Compression::None)
                .tier(tier)
                .build();
            before = rss().ok_or("no /proc/self/status")?;
            rt.block_on(async {
                for (i, k) in keys.iter().enumerate() {
                    cache.set(k, book(i as u64), Ttl::TierDefault).await?;
                }
                Ok::<_, tierstack::Error>(())
            })
            .map_err(|e| e.to_string())?;
            let held = cache.stats();
            if held.layer("memory").map(|l| l.writes) != Some(records) {
                return Err(format!(
                    "the memory tier took {held:?}, not {records} writes"
                ));
            }
            Box::new(cache)
        }
        other => {
            return Err(format!(
                "unknown holder {other:?}: moka, quick_cache or tierstack"
            ));
        }
    };
    let after = rss().ok_or("no /proc/self/status")?;
    drop(kept);
    #[allow(clippy::cast_precision_loss)]
    Ok(after.saturating_sub(before) as f64 / records as f64)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let records: u64 = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(100_000);
    if let Some(holder) = args.get(1) {
        return match measure(holder, records) {
            Ok(per_record) => {
                println!("{per_record:.0}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("resident: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let mut figures = Vec::new();
    for holder in ["moka", "quick_cache", "tierstack"] {
        let out = match Command::new(&args[0])
            .arg(holder)
            .arg(records.to_string())
            .output()
        {
            Ok(out) if out.status.success() => out,
            Ok(out) => {
                eprintln!(
                    "resident: {holder}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("resident: could not run {holder}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let per_record: f64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(f64::NAN);
        figures.push((holder, per_record));
    }
    let moka = figures[0].1;
    println!("resident bytes per entry, {records} records:");
    for (holder, per_record) in &figures {
        println!(
            "  {holder:<12} {per_record:>6.0} B   {:.2}x raw moka",
            per_record / moka
        );
    }
    ExitCode::SUCCESS
}
