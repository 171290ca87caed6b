//! `Traced`: the wrapper through which the cache calls each tier; it puts
//! every call of the tier beneath it in a `tracing` span, so that each tier
//! call has the same instrumentation and `cache.rs` holds caching policy
//! only.
//!
//! Spans are at TRACE level, named `tier`, with the fields `tier` (its name
//! in the cache) and `op`. When no subscriber wants them they cost a cached
//! level check per poll. `get_ready` and `set_ready` of a tier that answers
//! without I/O, the synchronous hot path, have none: their cost is what a
//! span would be. `get_ready` of a tier that reads in place (an embedded
//! store's read on the calling thread) is a `get` and has its span.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tierstack_core::{
    Capabilities, ClearScope, Entry, Health, Key, Readiness, Result, SetReadiness, Tier, TierSize,
    TierStats,
};
use tracing::Instrument as _;

/// The tier beneath, with a span around each of its calls. Its methods are
/// the `Tier` methods' names, inherent, returning the tier's own future
/// wrapped (no second box).
pub(crate) struct Traced {
    inner: Arc<dyn Tier>,
    /// The tier's name in the cache (`memory`, or `memory#2` for a second one).
    label: Arc<str>,
    /// The tier's `get_ready` reads its store (capability `reads_in_place`
    /// without `answers_without_io`), so it is traced as a `get`.
    reads_store_ready: bool,
    /// The cache's constant metric labels and `tier`, for sampled calls.
    #[cfg(feature = "metrics")]
    metric_labels: Vec<::metrics::Label>,
}

type Call<'a, T> =
    tracing::instrument::Instrumented<std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>>;

impl Traced {
    pub(crate) fn new(inner: Arc<dyn Tier>, label: Arc<str>) -> Self {
        let capabilities = inner.capabilities();
        Self {
            reads_store_ready: capabilities.reads_in_place && !capabilities.answers_without_io,
            #[cfg(feature = "metrics")]
            metric_labels: vec![::metrics::Label::new("tier", label.to_string())],
            inner,
            label,
        }
    }

    /// Adds the cache's constant labels to the metrics of sampled calls.
    #[cfg(feature = "metrics")]
    pub(crate) fn with_metric_labels(mut self, constant: &[::metrics::Label]) -> Self {
        self.metric_labels.splice(0..0, constant.iter().cloned());
        self
    }

    /// The tier as it was given to the builder.
    pub(crate) fn inner(&self) -> &Arc<dyn Tier> {
        &self.inner
    }

    fn traced<'a, T: 'a>(
        &self,
        op: &'static str,
        call: std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>,
    ) -> Call<'a, T> {
        // One call in `TIER_CALL_SAMPLING` is timed: a histogram sample per
        // call would cost more than a fast tier's call.
        #[cfg(feature = "metrics")]
        let call: std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>> =
            if crate::metrics::sample_tier_call() {
                let labels = crate::metrics::tier_call_labels(&self.metric_labels, op);
                Box::pin(async move {
                    let started = std::time::Instant::now();
                    let output = call.await;
                    crate::metrics::record_tier_call(&labels, started);
                    output
                })
            } else {
                call
            };
        call.instrument(tracing::trace_span!("tier", tier = %self.label, op))
    }

    pub(crate) fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    pub(crate) fn max_ttl(&self) -> Option<Duration> {
        self.inner.max_ttl()
    }

    pub(crate) fn get_ready(&self, key: &Key, read: &mut dyn FnMut(Option<&Entry>)) -> Readiness {
        if !self.reads_store_ready {
            return self.inner.get_ready(key, read);
        }
        let _entered = tracing::trace_span!("tier", tier = %self.label, op = "get").entered();
        #[cfg(feature = "metrics")]
        if crate::metrics::sample_tier_call() {
            let labels = crate::metrics::tier_call_labels(&self.metric_labels, "get");
            let started = std::time::Instant::now();
            let readiness = self.inner.get_ready(key, read);
            crate::metrics::record_tier_call(&labels, started);
            return readiness;
        }
        self.inner.get_ready(key, read)
    }

    pub(crate) fn set_ready(&self, key: &Key, entry: Entry) -> SetReadiness {
        self.inner.set_ready(key, entry)
    }

    pub(crate) fn get<'a>(&'a self, key: &'a Key) -> Call<'a, Result<Option<Entry>>> {
        self.traced("get", self.inner.get(key))
    }

    pub(crate) fn get_many<'a>(&'a self, keys: &'a [Key]) -> Call<'a, Result<Vec<Option<Entry>>>> {
        self.traced("get_many", self.inner.get_many(keys))
    }

    pub(crate) fn set<'a>(&'a self, key: &'a Key, entry: Entry) -> Call<'a, Result<()>> {
        self.traced("set", self.inner.set(key, entry))
    }

    pub(crate) fn renew<'a>(&'a self, key: &'a Key, entry: Entry) -> Call<'a, Result<()>> {
        self.traced("renew", self.inner.renew(key, entry))
    }

    pub(crate) fn set_many(&self, entries: Vec<(Key, Entry)>) -> Call<'_, Result<()>> {
        self.traced("set_many", self.inner.set_many(entries))
    }

    pub(crate) fn delete<'a>(&'a self, key: &'a Key) -> Call<'a, Result<bool>> {
        self.traced("delete", self.inner.delete(key))
    }

    pub(crate) fn clear(&self, scope: ClearScope) -> Call<'_, Result<u64>> {
        self.traced("clear", self.inner.clear(scope))
    }

    pub(crate) fn size(&self) -> Call<'_, Result<TierSize>> {
        self.traced("size", self.inner.size())
    }

    pub(crate) fn health(&self) -> Call<'_, Health> {
        self.traced("health", self.inner.health())
    }

    pub(crate) fn stats(&self) -> TierStats {
        self.inner.stats()
    }

    pub(crate) fn backplane(&self) -> Option<Arc<dyn tierstack_core::Backplane>> {
        self.inner.backplane()
    }
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}
