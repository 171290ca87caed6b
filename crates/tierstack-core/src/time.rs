//! Wall-clock timestamps in milliseconds since the Unix epoch.
//!
//! Entries outlive processes and cross hosts, so expiry is stored as wall
//! time, not as a monotonic `Instant`.
//!
//! Every cache read needs "now" for its freshness check, and the system's
//! wall clock costs about as much as the memory lookup it guards. So
//! [`Timestamp::now`] reads the kernel's coarse monotonic clock (a few
//! nanoseconds, one tick of resolution: 1 to 4 ms) and adds an offset to
//! wall time that it takes again from the system clock at least once a
//! second, so that a step of the wall clock (NTP, an operator) shows within
//! a second. Expiry is kept in milliseconds and TTLs are seconds to days: a
//! few milliseconds of error change nothing a cache user can see.

use std::fmt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long an offset between the coarse clock and wall time is trusted.
const REANCHOR_MS: u64 = 1000;

/// Wall milliseconds minus coarse-clock milliseconds, from the last anchor.
static OFFSET_MS: AtomicU64 = AtomicU64::new(0);
/// Coarse-clock milliseconds at the last anchor; `u64::MAX` before the first.
static ANCHORED_AT_MS: AtomicU64 = AtomicU64::new(u64::MAX);

/// How many times [`Timestamp::now`] read the system clock (tests only).
#[cfg(test)]
static ANCHORS: AtomicU64 = AtomicU64::new(0);

fn system_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX - 1))
}

/// Milliseconds of the coarse monotonic clock since this process first asked.
fn coarse_millis() -> u64 {
    static START: OnceLock<coarsetime::Instant> = OnceLock::new();
    let start = *START.get_or_init(coarsetime::Instant::now_without_cache_update);
    coarsetime::Instant::now_without_cache_update()
        .duration_since(start)
        .as_millis()
}

/// Milliseconds since the Unix epoch; [`Timestamp::NEVER`] means no expiry.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// A time that never comes.
    pub const NEVER: Self = Self(u64::MAX);

    /// The current wall-clock time, within a few milliseconds (see the
    /// module docs); [`Timestamp::precise_now`] reads the system clock.
    pub fn now() -> Self {
        let coarse = coarse_millis();
        let anchored_at = ANCHORED_AT_MS.load(Ordering::Relaxed);
        if anchored_at != u64::MAX && coarse.wrapping_sub(anchored_at) < REANCHOR_MS {
            return Self(coarse.wrapping_add(OFFSET_MS.load(Ordering::Relaxed)));
        }
        // Two threads may anchor at once; either offset is right. A reader
        // that sees a new anchor time with the old offset is off by at most
        // the drift of one second.
        let wall = system_millis();
        #[cfg(test)]
        ANCHORS.fetch_add(1, Ordering::Relaxed);
        OFFSET_MS.store(wall.wrapping_sub(coarse), Ordering::Relaxed);
        ANCHORED_AT_MS.store(coarse, Ordering::Relaxed);
        Self(wall)
    }

    /// The current wall-clock time read from the system clock.
    pub fn precise_now() -> Self {
        Self(system_millis())
    }

    /// From milliseconds since the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Whether this is [`Timestamp::NEVER`].
    pub const fn is_never(self) -> bool {
        self.0 == u64::MAX
    }

    /// Milliseconds from `earlier` to `self`, zero if `earlier` is later.
    pub const fn millis_since(self, earlier: Self) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// `self + ttl`, saturating at [`Timestamp::NEVER`].
    #[must_use]
    pub fn saturating_add(self, ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ms))
    }

    /// Time left from `now` until `self`; `None` for [`Timestamp::NEVER`],
    /// zero when already past.
    pub fn remaining_from(self, now: Self) -> Option<Duration> {
        if self.is_never() {
            None
        } else {
            Some(Duration::from_millis(self.0.saturating_sub(now.0)))
        }
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_never() {
            f.write_str("never")
        } else {
            write!(f, "{}ms", self.0)
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_never() {
            return f.write_str("never");
        }
        let t = UNIX_EPOCH + Duration::from_millis(self.0);
        write!(f, "{}", humantime::format_rfc3339_millis(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_follows_the_system_clock_across_reanchoring() {
        // Long enough to cross the re-anchoring period at least once.
        let end = std::time::Instant::now() + Duration::from_millis(REANCHOR_MS + 300);
        let mut samples = 0;
        while std::time::Instant::now() < end {
            let before = Timestamp::precise_now().as_millis();
            let now = Timestamp::now().as_millis();
            let after = Timestamp::precise_now().as_millis();
            // One tick of the coarse clock is at most 10 ms (HZ=100).
            assert!(
                now + 10 >= before && now <= after + 10,
                "{now} outside [{before}, {after}] ± 10 ms"
            );
            samples += 1;
            std::thread::sleep(Duration::from_millis(7));
        }
        assert!(samples > 20);
    }

    #[test]
    fn remaining_time_and_how_times_print() {
        let t = Timestamp::from_millis(10_000);
        assert_eq!(
            t.remaining_from(Timestamp::from_millis(7_500)),
            Some(Duration::from_millis(2_500))
        );
        assert_eq!(
            t.remaining_from(Timestamp::from_millis(12_000)),
            Some(Duration::ZERO),
            "already past"
        );
        assert_eq!(Timestamp::NEVER.remaining_from(t), None);
        assert_eq!(format!("{t:?}"), "10000ms");
        assert_eq!(format!("{:?}", Timestamp::NEVER), "never");
        assert_eq!(
            Timestamp::from_millis(1_700_000_000_123).to_string(),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(Timestamp::NEVER.to_string(), "never");
    }

    /// `now` reads the system clock once per re-anchoring period, not per
    /// call: that is what makes it cheap on the hot path.
    #[test]
    fn now_reads_the_system_clock_once_a_period() {
        let _ = Timestamp::now();
        let before = ANCHORS.load(Ordering::Relaxed);
        for _ in 0..1_000 {
            std::hint::black_box(Timestamp::now());
        }
        let anchors = ANCHORS.load(Ordering::Relaxed) - before;
        // One when the loop crosses a period's end; other tests' threads
        // may add one of their own.
        assert!(anchors <= 3, "{anchors} system clock reads for 1000 calls");
    }
}
