//! The SQLite coordinator on real files: the shared coordination cases (two
//! tiers on one file, as two processes would open it), the tables it keeps
//! and how they are cleaned, and what callers get when the file is locked
//! or its tables are not usable. Separate processes: `coordination_processes.rs`.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tierstack::{Coordinator, ErrorKind, Key, LeaseOwner, Rate, Spend, Tier};
use tierstack_conformance::coordination::CoordinationHarness;
use tierstack_conformance::coordination_suite;
use tierstack_sqlite::{SqliteConfig, SqliteTier};

async fn make() -> CoordinationHarness {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cache.db");
    let first = common::open(&path).await;
    let second = common::open(&path).await;
    CoordinationHarness::new(Arc::new(first), Arc::new(second)).keep(dir)
}

coordination_suite!(make);

fn coordinator(tier: &SqliteTier) -> Arc<dyn Coordinator> {
    tier.coordinator().expect("the SQLite tier coordinates")
}

fn count(path: &Path, table: &str) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn key(id: &str) -> Key {
    Key::new("audnexus:book", [("asin", id)])
}

#[tokio::test]
async fn the_tables_are_created_when_the_file_opens_and_hold_what_the_docs_say() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let tier = SqliteTier::open(&SqliteConfig::new(&path), 7)
        .await
        .unwrap();
    let conn = Connection::open(&path).unwrap();
    let columns = |table: &str| -> Vec<String> {
        conn.prepare(&format!(
            "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
        ))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    assert_eq!(columns("tierstack_leases"), ["key", "owner", "expires_ms"]);
    assert_eq!(columns("tierstack_rates"), ["bucket", "tat_us"]);
    assert_eq!(
        columns("tierstack_circuits"),
        ["name", "until_ms", "probe_owner", "probe_until_ms"]
    );

    let coordination = coordinator(&tier);
    let owner = LeaseOwner::random();
    assert!(
        coordination
            .acquire(&key("B002V1A0WE"), &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
    let (name, stored_owner, expires_ms): (String, String, i64) = conn
        .query_row(
            "SELECT key, owner, expires_ms FROM tierstack_leases",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(name, "7:audnexus:book:asin=B002V1A0WE");
    assert_eq!(stored_owner, owner.as_str());
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    assert!(
        (now_ms + 29_000..=now_ms + 30_000).contains(&expires_ms),
        "{expires_ms} vs now {now_ms}"
    );

    // Another schema version on the same file holds its own leases.
    let v8 = SqliteTier::open(&SqliteConfig::new(&path), 8)
        .await
        .unwrap();
    assert!(
        coordinator(&v8)
            .acquire(
                &key("B002V1A0WE"),
                &LeaseOwner::random(),
                Duration::from_secs(30)
            )
            .await
            .unwrap()
    );

    let rate = Rate::new(10, Duration::from_secs(1)).unwrap();
    coordination
        .spend("audnexus", rate, Duration::ZERO)
        .await
        .unwrap();
    let tat_us: i64 = conn
        .query_row(
            "SELECT tat_us FROM tierstack_rates WHERE bucket = 'audnexus'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (now_ms * 1000..=now_ms * 1000 + 1_100_000).contains(&tat_us),
        "{tat_us}"
    );
    coordination
        .open_circuit("audnexus", Duration::from_secs(10))
        .await
        .unwrap();
    let until_ms: i64 = conn
        .query_row("SELECT until_ms FROM tierstack_circuits", [], |r| r.get(0))
        .unwrap();
    assert!(
        (now_ms + 9_000..=now_ms + 11_000).contains(&until_ms),
        "{until_ms}"
    );
    coordination.close_circuit("audnexus").await.unwrap();
    assert_eq!(count(&path, "tierstack_circuits"), 0);
}

#[tokio::test]
async fn expired_rows_do_not_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let tier = common::open(&path).await;
    let coordination = coordinator(&tier);
    let owner = LeaseOwner::random();
    // Long enough that none expires while the 50 are taken on a loaded
    // machine.
    let ttl = Duration::from_millis(1500);
    let started = Instant::now();
    for n in 0..50 {
        assert!(
            coordination
                .acquire(&key(&n.to_string()), &owner, ttl)
                .await
                .unwrap()
        );
    }
    assert_eq!(count(&path, "tierstack_leases"), 50);
    tokio::time::sleep((ttl + Duration::from_millis(100)).saturating_sub(started.elapsed())).await;
    // Any acquire drops the expired leases it passes.
    assert!(
        coordination
            .acquire(&key("fresh"), &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
    assert_eq!(count(&path, "tierstack_leases"), 1);

    // Purge drops the rest: expired leases, spent-out buckets, circuits
    // past their open period and linger.
    assert!(
        coordination
            .acquire(&key("short"), &owner, Duration::from_millis(50))
            .await
            .unwrap()
    );
    let rate = Rate::new(20, Duration::from_secs(1)).unwrap();
    coordination
        .spend("quick", rate, Duration::ZERO)
        .await
        .unwrap();
    coordination
        .open_circuit("ended", Duration::from_millis(1))
        .await
        .unwrap();
    coordination
        .open_circuit("open", Duration::from_secs(30))
        .await
        .unwrap();
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE tierstack_circuits SET until_ms = until_ms - 120000 WHERE name = 'ended'",
            [],
        )
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(tier.purge().await.unwrap(), 0, "no entry was purged");
    assert_eq!(count(&path, "tierstack_leases"), 1, "the live lease stays");
    assert_eq!(count(&path, "tierstack_rates"), 0);
    assert_eq!(
        count(&path, "tierstack_circuits"),
        1,
        "the open circuit stays"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_file_locked_by_another_process_is_an_error_after_the_busy_timeout_off_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    let mut config = SqliteConfig::new(&path);
    config.busy_timeout = Some(Duration::from_millis(500));
    let tier = SqliteTier::open(&config, 1).await.unwrap();
    let coordination = coordinator(&tier);
    let owner = LeaseOwner::random();
    // Connected before the lock, so that only the call waits.
    coordination.release(&key("x"), &owner).await.unwrap();

    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let started = Instant::now();
    let acquiring = {
        let coordination = Arc::clone(&coordination);
        let owner = owner.clone();
        tokio::spawn(async move {
            coordination
                .acquire(&key("x"), &owner, Duration::from_secs(30))
                .await
        })
    };
    // One runtime thread: had the call waited on it, this sleep would end
    // only after the busy timeout.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        started.elapsed() < Duration::from_millis(400),
        "the runtime was blocked for {:?}",
        started.elapsed()
    );
    let err = acquiring.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.to_string().contains("c.db"), "{err}");
    assert!(started.elapsed() >= Duration::from_millis(450));
    other.execute_batch("ROLLBACK").unwrap();
    assert!(
        coordination
            .acquire(&key("x"), &owner, Duration::from_secs(30))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn unusable_coordination_tables_are_errors_not_panics_and_entries_still_work() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.db");
    // A reserved table of another shape (an older or newer tierstack's).
    {
        let tier = common::open(&path).await;
        drop(tier);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "DROP TABLE tierstack_leases; DROP TABLE tierstack_rates;
             CREATE TABLE tierstack_leases (name TEXT PRIMARY KEY, holder TEXT);",
        )
        .unwrap();
    }
    let tier = Arc::new(common::open(&path).await);
    let coordination = coordinator(&tier);
    let owner = LeaseOwner::random();
    let ttl = Duration::from_secs(1);
    let rate = Rate::new(1, Duration::from_secs(1)).unwrap();
    let failures = [
        coordination.acquire(&key("x"), &owner, ttl).await.map(drop),
        coordination.renew(&key("x"), &owner, ttl).await.map(drop),
        coordination.release(&key("x"), &owner).await,
        coordination.wait_released(&key("x"), ttl).await.map(drop),
    ];
    for failure in failures {
        let err = failure.unwrap_err();
        assert_eq!(
            err.operation(),
            Some(tierstack::Operation::Coordinate),
            "{err}"
        );
        assert_eq!(err.tier(), Some("sqlite"), "{err}");
    }
    // The rates table was recreated by the open; circuits were untouched.
    assert!(matches!(
        coordination.spend("b", rate, Duration::ZERO).await,
        Ok(Spend::Granted(_))
    ));
    coordination.open_circuit("c", ttl).await.unwrap();
    // Entries and purge are not affected.
    let cache = common::json_cache(tier.clone());
    cache
        .set(&key("entry"), 1, tierstack::Ttl::TierDefault)
        .await
        .unwrap();
    assert_eq!(cache.get::<i32>(&key("entry")).await.as_deref(), Some(&1));
    tier.purge().await.unwrap();
}
