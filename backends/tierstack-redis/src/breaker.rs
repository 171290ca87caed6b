//! A circuit breaker: after `threshold` consecutive failures the server is
//! left alone for `cooldown`, then one call probes it. Callers that find the
//! circuit open get an answer at once (a miss, a dropped write) instead of
//! waiting for a timeout.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    failures: AtomicU32,
    /// When the circuit may be probed again, in ms since `epoch`.
    open_until: AtomicU64,
    probing: AtomicBool,
    epoch: Instant,
    /// Calls turned away while open.
    pub(crate) rejected: AtomicU64,
}

/// Whether a call may go to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Closed: go ahead.
    Yes,
    /// The cool-down is over and this call is the one probe.
    Probe,
    /// Open: do not contact the server.
    No,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            epoch: Instant::now(),
            rejected: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn admit(&self) -> Admit {
        if self.failures.load(Ordering::Acquire) < self.threshold {
            return Admit::Yes;
        }
        if self.now_ms() < self.open_until.load(Ordering::Acquire) {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Admit::No;
        }
        // One probe at a time; everyone else keeps getting fast answers.
        if self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            Admit::Probe
        } else {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            Admit::No
        }
    }

    pub(crate) fn success(&self) {
        if self.failures.swap(0, Ordering::AcqRel) >= self.threshold {
            tracing::info!("Redis is reachable again; circuit closed");
        }
        self.probing.store(false, Ordering::Release);
    }

    pub(crate) fn failure(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if failures >= self.threshold {
            let until = self
                .now_ms()
                .saturating_add(u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX));
            self.open_until.store(until, Ordering::Release);
            if failures == self.threshold {
                tracing::warn!(failures, cooldown = ?self.cooldown, "Redis keeps failing; circuit open");
            }
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Lets another call probe: this one was abandoned before it finished.
    pub(crate) fn release_probe(&self) {
        self.probing.store(false, Ordering::Release);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.failures.load(Ordering::Acquire) >= self.threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_once_after_the_cooldown_and_closes_on_success() {
        let breaker = Breaker::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            breaker.failure();
            assert_eq!(breaker.admit(), Admit::Yes);
        }
        breaker.failure();
        assert_eq!(breaker.admit(), Admit::No);
        assert!(breaker.is_open());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(breaker.admit(), Admit::Probe);
        assert_eq!(breaker.admit(), Admit::No, "one probe at a time");
        breaker.failure();
        assert_eq!(breaker.admit(), Admit::No, "a failed probe re-opens it");
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(breaker.admit(), Admit::Probe);
        breaker.success();
        assert_eq!(breaker.admit(), Admit::Yes);
        assert!(!breaker.is_open());
        assert_eq!(breaker.rejected.load(Ordering::Relaxed), 3);
    }
}
