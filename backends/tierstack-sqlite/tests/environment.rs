//! SQLite behaviour that needs something of the machine: root to mount a
//! small tmpfs (a full disk), an unprivileged user for a read-only
//! directory (root ignores directory permissions), the `sqlite3` shell.
//! `harness = false`: a test whose environment is missing is reported as
//! ignored with the reason, never as passed (see
//! `tierstack_conformance::environment`); CI provides all three.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{json_cache, open};
use serde_json::json;
use tierstack::{Compression, ErrorKind, Key, MemoryConfig, MemoryTier, Tier, TieredCache, Ttl};
use tierstack_conformance::environment::{
    self, Outcome, Runnable, SmallDisk, block_on, is_root, on_path, ran,
    read_only_for_unprivileged, unavailable,
};
use tierstack_sqlite::{SqliteConfig, SqliteTier};

/// Set in the environment of this binary started again as the
/// unprivileged user, to the path it tries to open.
const OPEN_AS_CHILD: &str = "TIERSTACK_SQLITE_OPEN_AS_CHILD";

fn book_key(asin: &str) -> Key {
    Key::new("audnexus:book", [("asin", asin)])
}

/// A full disk (a 512 KiB tmpfs) is a clear error naming the file, the
/// stack keeps serving from L1, and every acknowledged row survives a
/// restart. Mounting needs root.
fn a_full_disk_is_a_clear_error_and_the_stack_keeps_serving() -> Outcome {
    let disk = match SmallDisk::mount(512 * 1024) {
        Ok(disk) => disk,
        Err(unavailable) => return unavailable,
    };
    block_on(async move {
        let path = disk.path().join("full.db");
        let sqlite = Arc::new(open(&path).await);
        let l1 = MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).unwrap();
        let cache = TieredCache::builder()
            .compression(Compression::None)
            .tier(l1)
            .shared_tier(sqlite.clone())
            .build();
        let value = |i: u32| -> String {
            (0..2000u32)
                .map(|j| char::from(b'a' + ((i * 7 + j * 13) % 26) as u8))
                .collect()
        };
        let mut first_failure = None;
        for i in 0..2000u32 {
            // The caller never sees the full disk: the value lands in L1.
            cache
                .set(&book_key(&i.to_string()), value(i), Ttl::TierDefault)
                .await
                .unwrap();
            if cache.stats().layers[1].write_errors > 0 {
                first_failure = Some(i);
                break;
            }
        }
        let failed_at = first_failure.expect("a 512 KiB disk filled up");
        // Every value is still served, from L1 or SQLite.
        for i in 0..=failed_at {
            assert_eq!(
                cache
                    .get::<String>(&book_key(&i.to_string()))
                    .await
                    .as_deref(),
                Some(&value(i))
            );
        }
        // The tier itself says what happened, naming the file.
        let entry = tierstack_conformance::cases::entry(
            &book_key("more"),
            &json!("x".repeat(100_000)),
            None,
        );
        let err = sqlite.set(&book_key("more"), entry).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Full, "{err:?}");
        assert!(err.to_string().contains("full.db"), "{err}");
        // Acknowledged rows are intact after a restart.
        drop(cache);
        drop(sqlite);
        let reopened = TieredCache::builder().tier(open(&path).await).build();
        for i in 0..failed_at {
            let v = reopened.get::<String>(&book_key(&i.to_string())).await;
            assert_eq!(
                v.as_deref(),
                Some(&value(i)),
                "acknowledged row {i} of {failed_at}"
            );
        }
        assert_eq!(reopened.stats().layers[0].decode_failures, 0);
        println!("disk full after {failed_at} rows; all acknowledged rows intact after a restart");
    });
    ran()
}

/// A directory its user cannot write is refused with a permission error
/// naming it. Root ignores directory permissions, so as root the case runs
/// in a second process as an unprivileged user (`setpriv`), on a directory
/// that user owns with mode 0500.
fn a_read_only_directory_is_refused_naming_it() -> Outcome {
    use std::os::unix::fs::PermissionsExt;
    if !is_root() {
        let dir = tempfile::tempdir().unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).unwrap();
        let (kind, message) = block_on(open_error(&locked.join("c.db")));
        assert_eq!(
            kind,
            format!("{:?}", ErrorKind::PermissionDenied),
            "{message}"
        );
        assert!(message.contains("locked"), "{message}");
        return ran();
    }
    let exe = std::env::current_exe().unwrap();
    let runnable = match Runnable::copy(&exe) {
        Ok(r) => r,
        Err(why) => return unavailable(why),
    };
    let mut command = match runnable.as_unprivileged_user() {
        Ok(c) => c,
        Err(why) => return unavailable(why),
    };
    let locked = runnable.dir().join("locked");
    std::fs::create_dir(&locked).unwrap();
    read_only_for_unprivileged(&locked).unwrap();
    let output = command
        .env(OPEN_AS_CHILD, locked.join("c.db"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the unprivileged child failed: {output:?}"
    );
    let kind = stdout.lines().find_map(|l| l.strip_prefix("kind "));
    let message = stdout
        .lines()
        .find_map(|l| l.strip_prefix("message "))
        .unwrap_or_default();
    assert_eq!(kind, Some("PermissionDenied"), "{stdout}");
    assert!(message.contains("locked"), "{stdout}");
    assert!(
        std::fs::read_dir(&locked).unwrap().next().is_none(),
        "something was created in the read-only directory"
    );
    ran()
}

/// Opens the tier at `path`; returns the error's kind and message (the
/// open must fail).
async fn open_error(path: &Path) -> (String, String) {
    let err = SqliteTier::open(&SqliteConfig::new(path), 1)
        .await
        .expect_err("the open must fail");
    (format!("{:?}", err.kind()), err.to_string())
}

/// The `sqlite3` shell reads the JSON a cache stored, with
/// `json_extract`, as the RFC's users do.
fn the_sqlite3_shell_reads_the_json_column() -> Outcome {
    if !on_path("sqlite3") {
        return unavailable("the `sqlite3` shell is not installed");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metadata.db");
    block_on(async {
        let cache = json_cache(Arc::new(open(&path).await));
        cache
            .set(
                &book_key("B002V1A0WE"),
                json!({"asin": "B002V1A0WE", "title": "Dune"}),
                Ttl::TierDefault,
            )
            .await
            .unwrap();
    });
    let out = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg("select json_extract(data,'$.title') from metadata_cache")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Dune");
    ran()
}

/// Requests queued behind a busy writer are committed in one transaction;
/// when that fails for one of them (a row the disk has no room for), each
/// request is retried alone: the others are stored and acknowledged, only
/// the one that does not fit fails, with `Full` naming the file. With
/// `synchronous: full` every write goes through the writer thread, so the
/// requests queue behind the busy one (held by another connection's write
/// lock until all are queued); the control round shows that they share a
/// transaction when nothing fails.
fn a_failing_batch_is_retried_request_by_request() -> Outcome {
    let disk = match SmallDisk::mount(2 << 20) {
        Ok(disk) => disk,
        Err(unavailable) => return unavailable,
    };
    block_on(async move {
        let path = disk.path().join("batch.db");
        let config = SqliteConfig::new(&path).synchronous(tierstack_sqlite::Synchronous::Full);
        let tier = Arc::new(SqliteTier::open(&config, 1).await.unwrap());
        let entry = |k: &Key, len: usize| {
            tierstack_conformance::cases::entry(k, &json!("x".repeat(len)), None)
        };
        // Behind a busy writer; returns each request's result and the
        // transactions committed meanwhile. The writer is held busy by
        // another connection's write lock until every request is queued
        // (a busy write alone can end before a loaded machine has queued
        // them, which split the batches at random).
        let queue_behind_a_busy_writer = |requests: Vec<(Key, tierstack::Entry)>| {
            let tier = Arc::clone(&tier);
            let path = path.clone();
            async move {
                let before = tier.transactions();
                let lock = rusqlite::Connection::open(&path).unwrap();
                lock.execute_batch("BEGIN IMMEDIATE").unwrap();
                let busy = {
                    let tier = Arc::clone(&tier);
                    let e = entry(&book_key("busy"), 512 << 10);
                    tokio::spawn(async move { tier.set(&book_key("busy"), e).await })
                };
                // The writer takes the busy write and waits on the lock.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let mut handles = Vec::new();
                for (k, e) in requests {
                    let tier = Arc::clone(&tier);
                    handles.push(tokio::spawn(
                        async move { (k.clone(), tier.set(&k, e).await) },
                    ));
                }
                // Well within the tier's 5 s busy timeout.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                lock.execute_batch("ROLLBACK").unwrap();
                drop(lock);
                busy.await.unwrap().unwrap();
                let mut results = Vec::new();
                for handle in handles {
                    results.push(handle.await.unwrap());
                }
                (results, tier.transactions() - before)
            }
        };
        let control: Vec<(Key, tierstack::Entry)> = (0..20)
            .map(|i| {
                let k = book_key(&format!("control{i}"));
                let e = entry(&k, 500);
                (k, e)
            })
            .collect();
        let (results, grouped) = queue_behind_a_busy_writer(control).await;
        for (k, result) in results {
            assert!(result.is_ok(), "{k}: {result:?}");
        }
        assert!(
            grouped <= 6,
            "{grouped} transactions for 21 queued writes: not grouped"
        );
        // The big request may be taken in a batch of its own; try until it
        // shared one (every attempt must be right either way).
        let mut shared_a_batch = false;
        for attempt in 0..5 {
            let big = book_key(&format!("big{attempt}"));
            let requests: Vec<(Key, tierstack::Entry)> = (0..21)
                .map(|i| {
                    if i == 10 {
                        (big.clone(), entry(&big, 8 << 20))
                    } else {
                        let k = book_key(&format!("batch{attempt}-{i}"));
                        let e = entry(&k, 500);
                        (k, e)
                    }
                })
                .collect();
            let (results, transactions) = queue_behind_a_busy_writer(requests).await;
            for (k, result) in results {
                if k == big {
                    let err = result.expect_err("an 8 MiB row fitted on a 2 MiB disk");
                    assert_eq!(err.kind(), ErrorKind::Full, "{err:?}");
                    assert!(err.to_string().contains("batch.db"), "{err}");
                    assert!(tier.get(&k).await.unwrap().is_none());
                } else {
                    assert!(result.is_ok(), "{k} failed with the big one: {result:?}");
                    assert!(
                        tier.get(&k).await.unwrap().is_some(),
                        "{k} acknowledged, not stored"
                    );
                }
            }
            // The busy write, then the 20 others each alone: they were in
            // the failed batch with the big one and retried one by one.
            if transactions == 21 {
                shared_a_batch = true;
                break;
            }
        }
        assert!(
            shared_a_batch,
            "the big request never shared a batch with the others in 5 attempts"
        );
    });
    ran()
}

fn main() {
    if let Some(path) = std::env::var_os(OPEN_AS_CHILD) {
        let (kind, message) = block_on(open_error(&PathBuf::from(path)));
        println!("kind {kind}");
        println!("message {message}");
        return;
    }
    environment::main(vec![
        (
            "a_full_disk_is_a_clear_error_and_the_stack_keeps_serving",
            a_full_disk_is_a_clear_error_and_the_stack_keeps_serving,
        ),
        (
            "a_read_only_directory_is_refused_naming_it",
            a_read_only_directory_is_refused_naming_it,
        ),
        (
            "the_sqlite3_shell_reads_the_json_column",
            the_sqlite3_shell_reads_the_json_column,
        ),
        (
            "a_failing_batch_is_retried_request_by_request",
            a_failing_batch_is_retried_request_by_request,
        ),
    ]);
}
