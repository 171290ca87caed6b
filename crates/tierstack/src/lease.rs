//! Single-flight across processes: the leader of a cold key in one process
//! takes the key's lease in the coordinating tier before it fetches; the
//! leaders in other processes wait for the lease to go and read the value
//! the holder wrote.
//!
//! A lease expires by itself (its TTL), so a holder that crashes blocks its
//! key for one TTL at most; a live holder renews it while its fetch runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tierstack_core::{Coordinator, Error, Key, LeaseOwner};

use crate::budget::Shared;

/// A lease this cache holds; renewed until released or dropped.
pub(crate) struct Lease {
    coordinator: Arc<dyn Coordinator>,
    key: Key,
    owner: LeaseOwner,
    renewal: Option<tokio::task::JoinHandle<()>>,
    released: bool,
}

impl Lease {
    /// Starts renewing a lease just taken, every third of its TTL.
    pub(crate) fn hold(shared: &Shared, key: &Key, ttl: Duration) -> Self {
        let (coordinator, renewed_key, owner) = (
            Arc::clone(&shared.coordinator),
            key.clone(),
            shared.owner.clone(),
        );
        let tier = Arc::clone(&shared.tier);
        let renewal = tokio::spawn(async move {
            let every = (ttl / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                match coordinator.renew(&renewed_key, &owner, ttl).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Another process may fetch too now; the value this
                        // one writes is still correct, only not alone.
                        tracing::warn!(key = %renewed_key, "the lease of a key being fetched was lost");
                        return;
                    }
                    Err(e) => warn_sometimes(&tier, "lease renewal", &e),
                }
            }
        });
        Self {
            coordinator: Arc::clone(&shared.coordinator),
            key: key.clone(),
            owner: shared.owner.clone(),
            renewal: Some(renewal),
            released: false,
        }
    }

    /// Gives the lease up once the value is written, so waiters read it.
    pub(crate) async fn release(mut self) {
        self.stop_renewing();
        self.released = true;
        if let Err(e) = self.coordinator.release(&self.key, &self.owner).await {
            // The lease expires by itself.
            tracing::debug!(key = %self.key, error = %e.report(), "could not release a lease");
        }
    }

    fn stop_renewing(&mut self) {
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

impl Drop for Lease {
    /// A leader cancelled or panicking mid-fetch: release in the background
    /// so waiters need not wait for the TTL.
    fn drop(&mut self) {
        self.stop_renewing();
        if self.released {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (coordinator, key, owner) = (
                Arc::clone(&self.coordinator),
                self.key.clone(),
                self.owner.clone(),
            );
            runtime.spawn(async move {
                let _ = coordinator.release(&key, &owner).await;
            });
        }
    }
}

/// When a coordination warning was last logged (ms since the epoch): an
/// unreachable store would otherwise log once per miss.
static LAST_WARNING: AtomicU64 = AtomicU64::new(0);

/// Logs a failed coordination call at most once a minute.
pub(crate) fn warn_sometimes(tier: &str, what: &str, error: &Error) {
    let now = tierstack_core::Timestamp::now().as_millis();
    let last = LAST_WARNING.load(Ordering::Relaxed);
    if now.saturating_sub(last) >= 60_000
        && LAST_WARNING
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(tier, error = %error.report(), "coordination ({what}) failed; deciding in this process until the tier answers (counted as coordination_fallbacks)");
    }
}
