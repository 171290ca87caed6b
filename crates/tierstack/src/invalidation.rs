//! The cache's side of cross-host invalidation: publish this process's
//! deletes and clears, and apply other processes' to the tiers that are
//! private to this host (memory, a local file).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use serde::Serialize;
use tierstack_core::{Backplane, BackplaneEvent, ClearScope, Invalidation};
use tokio::sync::mpsc;

use crate::cache::{Inner, Layer};

/// Counters of the backplane.
#[derive(Debug, Default)]
pub(crate) struct BackplaneCounters {
    pub(crate) published: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) resyncs: AtomicU64,
}

/// A snapshot of the backplane's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BackplaneStats {
    /// Deletes and clears this process announced.
    pub published: u64,
    /// Announcements that could not be sent (the channel's store is down).
    pub publish_errors: u64,
    /// Other processes' deletes and clears applied here.
    pub received: u64,
    /// Reconnections after which the private tiers were emptied, because
    /// announcements may have been missed.
    pub resyncs: u64,
}

impl BackplaneCounters {
    pub(crate) fn snapshot(&self) -> BackplaneStats {
        BackplaneStats {
            published: self.published.load(Ordering::Relaxed),
            publish_errors: self.publish_errors.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            resyncs: self.resyncs.load(Ordering::Relaxed),
        }
    }
}

/// Tiers that other hosts cannot see, so their copies must be dropped when
/// another process deletes.
fn private(layer: &Layer) -> bool {
    !layer.tier.capabilities().shared_across_hosts
}

/// Starts applying what other processes announce; stops when the cache is
/// dropped. Without a Tokio runtime there is nothing to run it on, so the
/// cache works without it (and says so).
pub(crate) fn start(inner: &Arc<Inner>) {
    let Some(backplane) = &inner.backplane else {
        return;
    };
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!("no Tokio runtime: the invalidation backplane is not listening");
        return;
    };
    // Subscribing spawns the backplane's listener, which needs the runtime.
    let _guard = runtime.enter();
    let events = backplane.subscribe();
    runtime.spawn(apply(Arc::downgrade(inner), events));
}

async fn apply(inner: Weak<Inner>, mut events: mpsc::Receiver<BackplaneEvent>) {
    while let Some(event) = events.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        match event {
            BackplaneEvent::Invalidate(Invalidation::Key(key)) => {
                for layer in inner.layers.iter().filter(|l| private(l)) {
                    if let Err(e) = layer.tier.delete(&key).await {
                        tracing::warn!(tier = %layer.name, key = %key, error = %e.report(), "backplane: delete failed");
                    }
                }
                inner
                    .backplane_counters
                    .received
                    .fetch_add(1, Ordering::Relaxed);
            }
            BackplaneEvent::Invalidate(Invalidation::Clear(scope)) => {
                for layer in inner.layers.iter().filter(|l| private(l)) {
                    if let Err(e) = layer.tier.clear(scope.clone()).await {
                        tracing::warn!(tier = %layer.name, error = %e.report(), "backplane: clear failed");
                    }
                }
                inner
                    .backplane_counters
                    .received
                    .fetch_add(1, Ordering::Relaxed);
            }
            BackplaneEvent::Resync => {
                // Only memory is emptied: a private file would lose a warm
                // cache on every network blip (see docs/backends/redis.md).
                for layer in inner
                    .layers
                    .iter()
                    .filter(|l| private(l) && !l.tier.capabilities().persistent)
                {
                    if let Err(e) = layer.tier.clear(ClearScope::All).await {
                        tracing::warn!(tier = %layer.name, error = %e.report(), "backplane: resync clear failed");
                    }
                }
                inner
                    .backplane_counters
                    .resyncs
                    .fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Announces a delete or clear; a failure is logged and counted, never
/// returned (the local operation already happened).
pub(crate) async fn announce(inner: &Inner, invalidation: Invalidation) {
    let Some(backplane) = &inner.backplane else {
        return;
    };
    match backplane.publish(&invalidation).await {
        Ok(()) => {
            inner
                .backplane_counters
                .published
                .fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            inner
                .backplane_counters
                .publish_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e.report(), "backplane: could not announce {invalidation:?}");
        }
    }
}

/// The first backplane any tier offers.
pub(crate) fn find(layers: &[Layer]) -> Option<Arc<dyn Backplane>> {
    layers.iter().find_map(|l| l.tier.backplane())
}
