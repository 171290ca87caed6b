//! Coordination between the processes (and hosts) sharing a store: who
//! fetches a cold key, how much of an upstream's request budget is left, and
//! whether the upstream asked everybody to slow down.
//!
//! A tier whose store is shared offers a [`Coordinator`] through
//! [`Tier::coordinator`](crate::Tier::coordinator). The cache uses the lowest
//! shared tier that has one. Every method is one short, atomic operation on
//! the store; the cache falls back to in-process coordination (counted, never
//! an error to its callers) when one fails. See
//! `docs/decisions/0012-upstream-budget.md`.
//!
//! Clocks: lease and circuit deadlines are kept by the store (Redis `PX`,
//! `TIME`) or by the one machine's clock (SQLite), never compared across
//! hosts' clocks.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::key::Key;

/// A request budget: `count` requests per `period`, with up to `burst`
/// requests at once after a quiet spell (GCRA, the token bucket's
/// continuous form).
///
/// Written `"10/s"`, `"600/min"`, `"5000/h"`, `"100/day"` or with a number of
/// units, `"3/10s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    count: u32,
    period: Duration,
    burst: u32,
}

impl Rate {
    /// `count` requests per `period`, burst 1. `None` for a zero count or a
    /// zero period, which would mean "never" or "always".
    pub fn new(count: u32, period: Duration) -> Option<Self> {
        (count > 0 && !period.is_zero()).then_some(Self {
            count,
            period,
            burst: 1,
        })
    }

    /// Sets how many requests may go at once after a quiet spell. `None` for
    /// a burst of 0.
    #[must_use]
    pub fn with_burst(self, burst: u32) -> Option<Self> {
        (burst > 0).then_some(Self { burst, ..self })
    }

    /// Requests per period.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The period.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Requests allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// The time between two requests at the sustained rate.
    pub fn interval(&self) -> Duration {
        self.period / self.count
    }

    /// This budget split evenly among `processes` (each at least one request
    /// per period): what each process may spend when they cannot share one.
    #[must_use]
    pub fn divided_by(self, processes: u32) -> Self {
        let processes = processes.max(1);
        Self {
            count: (self.count / processes).max(1),
            burst: (self.burst / processes).max(1),
            ..self
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            crate::units::format_duration(self.period)
        )
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        let bad = || format!("{text:?} is not a rate (write it like \"10/s\" or \"600/min\")");
        let (count, period) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let period = period.trim();
        let period = match period {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            other => crate::units::parse_duration(other).map_err(|_| bad())?,
        };
        Self::new(count, period).ok_or_else(|| {
            format!("{text:?}: a rate needs at least one request in a period longer than zero")
        })
    }
}

/// What [`Coordinator::spend`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spend {
    /// A request slot is reserved for the caller: it may send after waiting
    /// this long (zero: at once).
    Granted(Duration),
    /// The next slot is further away than the caller may wait; nothing was
    /// spent.
    Denied(Duration),
}

/// The state of an upstream's "slow down" circuit, as
/// [`Coordinator::circuit`] reports it to one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Requests may go.
    Closed,
    /// No request may go for this long.
    Open(Duration),
    /// The open period is over and this caller is the one probe: its request
    /// decides whether the circuit closes ([`Coordinator::close_circuit`]) or
    /// opens again ([`Coordinator::open_circuit`]).
    Probe,
    /// The open period is over and another caller is probing; its probe
    /// slot ends after this long at most (its answer usually comes sooner).
    Probing(Duration),
}

/// Who holds a lease: a random id per cache instance, so two caches in one
/// process are two owners.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseOwner(String);

impl LeaseOwner {
    /// A new random owner id (128 bits, hex).
    pub fn random() -> Self {
        Self(format!(
            "{:016x}{:016x}",
            rand_u64(),
            rand_u64() ^ u64::from(std::process::id())
        ))
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LeaseOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS once per process and varies per
    // instance; good enough for an owner id, which only has to be unique.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Coordination state kept in a shared store. Every method is one atomic
/// operation there; names (`bucket`, `circuit`) are chosen by the cache (a
/// source or a rate group) and may hold any character.
#[async_trait]
pub trait Coordinator: Send + Sync + fmt::Debug {
    /// Takes the lease of `key` for `ttl` if nobody holds it (or the holder's
    /// lease expired). `true`: `owner` holds it now.
    async fn acquire(&self, key: &Key, owner: &LeaseOwner, ttl: Duration) -> Result<bool>;

    /// Extends the lease `owner` holds. `false`: it is no longer `owner`'s
    /// (it expired, and maybe someone else took it).
    async fn renew(&self, key: &Key, owner: &LeaseOwner, ttl: Duration) -> Result<bool>;

    /// Gives up the lease if `owner` holds it (never someone else's), and
    /// wakes the waiters.
    async fn release(&self, key: &Key, owner: &LeaseOwner) -> Result<()>;

    /// Waits until nobody holds the lease of `key` (released or expired), or
    /// at most `timeout`. `true`: free now.
    async fn wait_released(&self, key: &Key, timeout: Duration) -> Result<bool>;

    /// Spends one request of the shared budget `bucket` at `rate`, unless the
    /// next free slot is more than `max_wait` away.
    async fn spend(&self, bucket: &str, rate: Rate, max_wait: Duration) -> Result<Spend>;

    /// Opens the circuit `name` for `period`: no request may go until it
    /// ends, then one probe. Opening an open circuit extends it if `period`
    /// ends later.
    async fn open_circuit(&self, name: &str, period: Duration) -> Result<()>;

    /// The circuit `name` as seen by `owner`. When its open period is over,
    /// the first caller gets [`CircuitState::Probe`] (for up to `probe_ttl`,
    /// after which another caller may probe); the others get
    /// [`CircuitState::Probing`].
    async fn circuit(
        &self,
        name: &str,
        owner: &LeaseOwner,
        probe_ttl: Duration,
    ) -> Result<CircuitState>;

    /// Closes the circuit `name` (a probe succeeded).
    async fn close_circuit(&self, name: &str) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_refuse_what_they_cannot_mean() {
        let r: Rate = "10/s".parse().unwrap();
        assert_eq!(
            (r.count(), r.period(), r.burst()),
            (10, Duration::from_secs(1), 1)
        );
        assert_eq!(r.interval(), Duration::from_millis(100));
        let r: Rate = "600/min".parse().unwrap();
        assert_eq!(r.period(), Duration::from_secs(60));
        let r: Rate = " 3 / 10s ".parse().unwrap();
        assert_eq!((r.count(), r.period()), (3, Duration::from_secs(10)));
        assert_eq!("5000/h".parse::<Rate>().unwrap().period().as_secs(), 3600);
        assert_eq!(
            "100/day".parse::<Rate>().unwrap().period().as_secs(),
            86_400
        );
        for bad in [
            "ten",
            "0/s",
            "10/0s",
            "10",
            "/s",
            "-1/s",
            "10/fortnight",
            "",
        ] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert!(r.with_burst(0).is_none());
        assert_eq!(r.with_burst(4).unwrap().burst(), 4);
    }

    #[test]
    fn a_divided_rate_keeps_at_least_one_request() {
        let r = Rate::new(10, Duration::from_secs(1))
            .unwrap()
            .with_burst(10)
            .unwrap();
        let each = r.divided_by(4);
        assert_eq!((each.count(), each.burst()), (2, 2));
        let each = r.divided_by(100);
        assert_eq!((each.count(), each.burst()), (1, 1));
        assert_eq!(r.divided_by(0), r);
    }

    #[test]
    fn owners_differ() {
        assert_ne!(LeaseOwner::random(), LeaseOwner::random());
        assert_eq!(LeaseOwner::random().as_str().len(), 32);
    }

    #[test]
    fn rates_and_owners_display_as_written() {
        for (text, shown) in [("10/s", "10/1s"), ("3/10s", "3/10s")] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(rate.to_string(), shown);
        }
        for text in ["600/min", "5000/h", "100/day"] {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(rate.to_string().parse::<Rate>().unwrap(), rate, "{rate}");
        }
        let owner = LeaseOwner::random();
        assert_eq!(owner.to_string(), owner.as_str());
    }
}
