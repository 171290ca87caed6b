//! Coordination state in the SQLite file, for the processes of one host
//! that share it: leases (who fetches a cold key), a GCRA request budget,
//! and "slow down" circuits, in the reserved `tierstack_*` tables.
//!
//! Every operation is one short transaction (`BEGIN IMMEDIATE` where it
//! reads before it writes), so it is atomic across processes. Times are the
//! machine's wall clock, which every process on the host shares.
//!
//! The operations run on a connection of their own, on a blocking thread:
//! they may wait for another process's write lock (the busy timeout), which
//! must not stall the runtime, and they must commit alone and answer at
//! once, which the group-commit writer (built to batch entry writes behind
//! each other) does not promise.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};
use tierstack_core::{
    CircuitState, Coordinator, Error, ErrorKind, Key, LeaseOwner, Operation, Rate, Result, Spend,
    async_trait,
};

use crate::error::sqlite;
use crate::schema;

/// How long a circuit's row counts after the end of its open period (or of
/// its probe), as on Redis: a probe that never reports back does not keep
/// the circuit open forever.
pub(crate) const CIRCUIT_LINGER: Duration = Duration::from_secs(60);

/// First pause between two polls in `wait_released`.
const FIRST_POLL: Duration = Duration::from_millis(5);
/// Longest pause between two polls: a released lease is seen this late at
/// most.
const LONGEST_POLL: Duration = Duration::from_millis(50);

/// The wall clock in ms since the Unix epoch.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock in µs since the Unix epoch.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// A duration in ms as stored, at least 1 (as Redis's `PX`).
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// What one GCRA step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Step {
    /// How long the caller waits before it may go (µs).
    wait_us: i64,
    /// The theoretical arrival time to store, `None` when the wait is
    /// longer than the caller accepts (nothing is spent).
    new_tat_us: Option<i64>,
}

/// GCRA with reservations, the same rule as the Redis script: the next
/// request arrives (theoretically) one emission interval after the later of
/// the stored arrival time and now; the caller may go `tolerance` before
/// that.
fn gcra(
    tat_us: Option<i64>,
    now_us: i64,
    emission_us: i64,
    tolerance_us: i64,
    max_wait_us: i64,
) -> Step {
    let tat = tat_us.unwrap_or(now_us).max(now_us);
    let new_tat = tat.saturating_add(emission_us);
    let wait_us = new_tat
        .saturating_sub(tolerance_us)
        .saturating_sub(now_us)
        .max(0);
    Step {
        wait_us,
        new_tat_us: (wait_us <= max_wait_us).then_some(new_tat),
    }
}

/// Whether a circuit row still counts at `now`: until a while after both
/// its open period and its probe ended.
fn circuit_lingers(until_ms: i64, probe_until_ms: Option<i64>, now: i64) -> bool {
    until_ms
        .max(probe_until_ms.unwrap_or(i64::MIN))
        .saturating_add(millis(CIRCUIT_LINGER))
        > now
}

/// [`Coordinator`] on the tier's SQLite file.
///
/// Tables (created when the tier opens the file): `tierstack_leases(key,
/// owner, expires_ms)` with keys `{schema_version}:{key}`,
/// `tierstack_rates(bucket, tat_us)`, `tierstack_circuits(name, until_ms,
/// probe_owner, probe_until_ms)`.
#[derive(Debug)]
pub(crate) struct SqliteCoordinator {
    name: String,
    path: PathBuf,
    namespace: u32,
    busy_timeout: Duration,
    synchronous: &'static str,
    /// Opened at the first call; one at a time, since SQLite runs one write
    /// transaction at a time anyway. An async lock, so that callers queue
    /// without holding a blocking thread each.
    conn: Arc<tokio::sync::Mutex<Option<Connection>>>,
}

impl SqliteCoordinator {
    pub(crate) fn new(
        name: String,
        path: PathBuf,
        namespace: u32,
        busy_timeout: Duration,
        synchronous: &'static str,
    ) -> Self {
        Self {
            name,
            path,
            namespace,
            busy_timeout,
            synchronous,
            conn: Arc::new(tokio::sync::Mutex::new(None)),
        }
    }

    fn lease_key(&self, key: &Key) -> String {
        format!("{}:{}", self.namespace, key.as_str())
    }

    /// Runs `work` on the coordination connection, on a blocking thread.
    async fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let mut slot = Arc::clone(&self.conn).lock_owned().await;
        let path = self.path.clone();
        let (busy_timeout, synchronous) = (self.busy_timeout, self.synchronous);
        let outcome = tokio::task::spawn_blocking(move || {
            let conn = match &mut *slot {
                Some(conn) => conn,
                empty @ None => empty.insert(
                    schema::connect(&path, busy_timeout, synchronous)
                        .map_err(|e| e.with_operation(Operation::Coordinate))?,
                ),
            };
            work(conn).map_err(|e| sqlite(e, &path, Operation::Coordinate))
        })
        .await
        .map_err(|e| {
            Error::new(ErrorKind::Other, "a coordination call panicked")
                .with_operation(Operation::Coordinate)
                .with_source(e)
        });
        outcome
            .and_then(|result| result)
            .map_err(|e| e.with_tier(self.name.as_str()))
    }
}

#[async_trait]
impl Coordinator for SqliteCoordinator {
    /// Takes the row if there is none or it expired, and drops the other
    /// expired leases on the way, so that they never pile up.
    async fn acquire(&self, key: &Key, owner: &LeaseOwner, ttl: Duration) -> Result<bool> {
        let (key, owner, ttl) = (self.lease_key(key), owner.as_str().to_owned(), millis(ttl));
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            tx.prepare_cached("DELETE FROM tierstack_leases WHERE expires_ms <= ?1")?
                .execute(params![now])?;
            let taken = tx
                .prepare_cached(
                    "INSERT INTO tierstack_leases (key, owner, expires_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms \
                     WHERE tierstack_leases.expires_ms <= ?4",
                )?
                .execute(params![key, owner, now.saturating_add(ttl), now])?;
            tx.commit()?;
            Ok(taken == 1)
        })
        .await
    }

    async fn renew(&self, key: &Key, owner: &LeaseOwner, ttl: Duration) -> Result<bool> {
        let (key, owner, ttl) = (self.lease_key(key), owner.as_str().to_owned(), millis(ttl));
        self.run(move |conn| {
            let now = now_ms();
            let renewed = conn
                .prepare_cached(
                    "UPDATE tierstack_leases SET expires_ms = ?3 \
                     WHERE key = ?1 AND owner = ?2 AND expires_ms > ?4",
                )?
                .execute(params![key, owner, now.saturating_add(ttl), now])?;
            Ok(renewed == 1)
        })
        .await
    }

    /// Waiters poll, so they see the release within [`LONGEST_POLL`].
    async fn release(&self, key: &Key, owner: &LeaseOwner) -> Result<()> {
        let (key, owner) = (self.lease_key(key), owner.as_str().to_owned());
        self.run(move |conn| {
            conn.prepare_cached("DELETE FROM tierstack_leases WHERE key = ?1 AND owner = ?2")?
                .execute(params![key, owner])?;
            Ok(())
        })
        .await
    }

    /// Polls the lease's row with a backoff from 5 ms to 50 ms (SQLite has
    /// no way to tell another process that a row changed).
    async fn wait_released(&self, key: &Key, timeout: Duration) -> Result<bool> {
        let key = Arc::<str>::from(self.lease_key(key));
        let deadline = Instant::now() + timeout;
        let mut pause = FIRST_POLL;
        loop {
            let name = Arc::clone(&key);
            let held = self
                .run(move |conn| {
                    conn.prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM tierstack_leases WHERE key = ?1 AND expires_ms > ?2)",
                    )?
                    .query_row(params![&*name, now_ms()], |r| r.get::<_, bool>(0))
                })
                .await?;
            if !held {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(LONGEST_POLL);
        }
    }

    async fn spend(&self, bucket: &str, rate: Rate, max_wait: Duration) -> Result<Spend> {
        let bucket = bucket.to_owned();
        let emission = micros(rate.interval()).max(1);
        let tolerance = emission.saturating_mul(i64::from(rate.burst()));
        let max_wait = micros(max_wait);
        let step = self
            .run(move |conn| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let now = now_us();
                let tat: Option<i64> = tx
                    .prepare_cached("SELECT tat_us FROM tierstack_rates WHERE bucket = ?1")?
                    .query_row(params![bucket], |r| r.get(0))
                    .optional()?;
                let step = gcra(tat, now, emission, tolerance, max_wait);
                if let Some(new_tat) = step.new_tat_us {
                    tx.prepare_cached(
                        "INSERT INTO tierstack_rates (bucket, tat_us) VALUES (?1, ?2) \
                         ON CONFLICT (bucket) DO UPDATE SET tat_us = excluded.tat_us",
                    )?
                    .execute(params![bucket, new_tat])?;
                    tx.commit()?;
                }
                // A denial changed nothing: the transaction rolls back.
                Ok(step)
            })
            .await?;
        let wait = Duration::from_micros(u64::try_from(step.wait_us).unwrap_or(0));
        Ok(match step.new_tat_us {
            Some(_) => Spend::Granted(wait),
            None => Spend::Denied(wait),
        })
    }

    async fn open_circuit(&self, name: &str, period: Duration) -> Result<()> {
        let (name, period) = (name.to_owned(), millis(period));
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let before: Option<(i64, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT until_ms, probe_until_ms FROM tierstack_circuits WHERE name = ?1",
                )?
                .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let mut until = now.saturating_add(period);
            if let Some((before, probe_until)) = before {
                if circuit_lingers(before, probe_until, now) {
                    until = until.max(before);
                }
            }
            tx.prepare_cached(
                "INSERT INTO tierstack_circuits (name, until_ms, probe_owner, probe_until_ms) \
                 VALUES (?1, ?2, NULL, NULL) \
                 ON CONFLICT (name) DO UPDATE SET until_ms = excluded.until_ms, \
                 probe_owner = NULL, probe_until_ms = NULL",
            )?
            .execute(params![name, until])?;
            tx.commit()
        })
        .await
    }

    async fn circuit(
        &self,
        name: &str,
        owner: &LeaseOwner,
        probe_ttl: Duration,
    ) -> Result<CircuitState> {
        let (name, owner, probe_ttl) = (
            name.to_owned(),
            owner.as_str().to_owned(),
            millis(probe_ttl),
        );
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            let row: Option<(i64, Option<String>, Option<i64>)> = tx
                .prepare_cached(
                    "SELECT until_ms, probe_owner, probe_until_ms FROM tierstack_circuits WHERE name = ?1",
                )?
                .query_row(params![name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .optional()?;
            let Some((until, probe, probe_until)) = row else {
                return Ok(CircuitState::Closed);
            };
            if !circuit_lingers(until, probe_until, now) {
                tx.prepare_cached("DELETE FROM tierstack_circuits WHERE name = ?1")?
                    .execute(params![name])?;
                tx.commit()?;
                return Ok(CircuitState::Closed);
            }
            if now < until {
                return Ok(CircuitState::Open(from_millis(until - now)));
            }
            let probe_is_free = match (probe.as_deref(), probe_until) {
                (Some(holder), Some(probe_until)) => probe_until <= now || holder == owner,
                _ => true,
            };
            if !probe_is_free {
                let probe_until = probe_until.unwrap_or(now);
                return Ok(CircuitState::Probing(from_millis(probe_until - now)));
            }
            tx.prepare_cached(
                "UPDATE tierstack_circuits SET probe_owner = ?2, probe_until_ms = ?3 WHERE name = ?1",
            )?
            .execute(params![name, owner, now.saturating_add(probe_ttl)])?;
            tx.commit()?;
            Ok(CircuitState::Probe)
        })
        .await
    }

    async fn close_circuit(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.run(move |conn| {
            conn.prepare_cached("DELETE FROM tierstack_circuits WHERE name = ?1")?
                .execute(params![name])?;
            Ok(())
        })
        .await
    }
}

/// Deletes coordination rows that no longer mean anything (expired leases,
/// buckets whose arrival time has passed, circuits past their linger), for
/// `purge`. Returns how many.
pub(crate) fn purge_coordination(conn: &Connection) -> rusqlite::Result<u64> {
    let (now, now_us) = (now_ms(), now_us());
    let leases = conn.execute(
        "DELETE FROM tierstack_leases WHERE expires_ms <= ?1",
        params![now],
    )?;
    let rates = conn.execute(
        "DELETE FROM tierstack_rates WHERE tat_us <= ?1",
        params![now_us],
    )?;
    let circuits = conn.execute(
        "DELETE FROM tierstack_circuits \
         WHERE max(until_ms, coalesce(probe_until_ms, until_ms)) + ?2 <= ?1",
        params![now, millis(CIRCUIT_LINGER)],
    )?;
    Ok((leases + rates + circuits) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: i64 = 100_000;

    #[test]
    fn gcra_reserves_one_slot_per_interval_after_the_burst() {
        let now = 1_000_000_000;
        // Burst 1: at once, then one interval later, then denied.
        let first = gcra(None, now, E, E, 150_000);
        assert_eq!(
            first,
            Step {
                wait_us: 0,
                new_tat_us: Some(now + E)
            }
        );
        let second = gcra(first.new_tat_us, now, E, E, 150_000);
        assert_eq!(
            second,
            Step {
                wait_us: E,
                new_tat_us: Some(now + 2 * E)
            }
        );
        let third = gcra(second.new_tat_us, now, E, E, 150_000);
        assert_eq!(
            third,
            Step {
                wait_us: 2 * E,
                new_tat_us: None
            }
        );
        // Burst 3: three at once.
        let mut tat = None;
        for _ in 0..3 {
            let step = gcra(tat, now, E, 3 * E, 0);
            assert_eq!(step.wait_us, 0);
            tat = step.new_tat_us;
        }
        assert_eq!(gcra(tat, now, E, 3 * E, 0).new_tat_us, None);
        // A stored time in the past counts from now.
        assert_eq!(
            gcra(Some(now - 10 * E), now, E, E, 0).new_tat_us,
            Some(now + E)
        );
        // Nothing overflows.
        let step = gcra(Some(i64::MAX), now, i64::MAX, i64::MAX, i64::MAX);
        assert!(step.wait_us >= 0);
    }

    #[test]
    fn a_circuit_lingers_a_minute_after_its_open_period_or_its_probe() {
        let linger = millis(CIRCUIT_LINGER);
        assert!(circuit_lingers(1_000, None, 1_000 + linger - 1));
        assert!(!circuit_lingers(1_000, None, 1_000 + linger));
        assert!(circuit_lingers(1_000, Some(5_000), 5_000 + linger - 1));
        assert!(!circuit_lingers(1_000, Some(5_000), 5_000 + linger));
    }
}
