//! The cache's counters through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`), for Prometheus, StatsD, OpenTelemetry or
//! whatever recorder the program installs.
//!
//! A labelled `counter!` call looks its handle up in the recorder's
//! registry, which would cost more than a memory hit itself; so hits add
//! nothing per call. The cache keeps counting into its own striped counters
//! ([`TieredCache::stats`]), and [`Metrics::publish`] sets every published
//! counter to their sum, at scrape time or every few seconds
//! ([`Metrics::publish_every`]). Only fetches (one histogram sample each)
//! and one tier call in [`TIER_CALL_SAMPLING`] record as they happen.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> tierstack::Result<()> {
//! use tierstack::{MemoryConfig, MemoryTier, TieredCache, metrics::Metrics};
//! let cache = TieredCache::builder()
//!     .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000))?)
//!     .build();
//! let metrics = Metrics::new(&cache);
//! // In the `/metrics` handler, before the exporter renders:
//! metrics.publish_with_sizes().await;
//! # Ok(())
//! # }
//! ```
//!
//! Names and labels are listed in `docs/observability.md`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::metrics::{Label, SharedString};
use tierstack_core::TierSize;

use crate::cache::{Inner, TieredCache};
use crate::stats::{LayerStats, SourceStats};
use crate::stats_file::{StoredCounters, StoredStats};

/// Sources published under their own name before the rest share the
/// `source="other"` label, unless [`MetricsOptions::source_limit`] says
/// otherwise: each label value is a time series in the metrics store.
pub const DEFAULT_SOURCE_LIMIT: usize = 100;

/// One tier call in this many records its duration.
pub const TIER_CALL_SAMPLING: u32 = 16;

/// The label value of sources past the limit.
pub const OTHER_SOURCE: &str = "other";

/// How a cache labels what it publishes; given to
/// [`TieredCacheBuilder::metrics`](crate::TieredCacheBuilder::metrics).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MetricsOptions {
    /// Sources with a label of their own; later ones are `other`.
    pub source_limit: usize,
    /// Labels added to every metric of this cache (e.g. `cache="metadata"`
    /// when a program has several).
    pub labels: Vec<(String, String)>,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self {
            source_limit: DEFAULT_SOURCE_LIMIT,
            labels: Vec::new(),
        }
    }
}

impl MetricsOptions {
    /// Sets the number of sources with a label of their own.
    #[must_use]
    pub fn source_limit(mut self, limit: usize) -> Self {
        self.source_limit = limit;
        self
    }

    /// Adds a label to every metric of the cache.
    #[must_use]
    pub fn label(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }
}

/// The cache's side of its metrics: the constant labels and which sources
/// have a label of their own. A source keeps the label it got first (the
/// named ones are kept, and once the limit is reached every other source is
/// `other`), so a series never moves between `other` and a name.
#[derive(Debug)]
pub(crate) struct MetricLabels {
    limit: usize,
    constant: Vec<Label>,
    sources: Mutex<HashMap<String, SharedString>>,
}

impl MetricLabels {
    /// The constant labels.
    pub(crate) fn constant(&self) -> &[Label] {
        &self.constant
    }

    pub(crate) fn new(options: &MetricsOptions) -> Self {
        Self {
            limit: options.source_limit,
            constant: options
                .labels
                .iter()
                .map(|(k, v)| Label::new(k.clone(), v.clone()))
                .collect(),
            sources: Mutex::new(HashMap::new()),
        }
    }

    fn source(&self, source: &str) -> SharedString {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(label) = sources.get(source) {
            return label.clone();
        }
        // Only sources with a label of their own are kept: the map stays
        // within the limit however many sources the keys bring.
        if sources.len() >= self.limit {
            return SharedString::from(OTHER_SOURCE);
        }
        let label = SharedString::from(source.to_owned());
        sources.insert(source.to_owned(), label.clone());
        label
    }

    fn with(&self, extra: impl IntoIterator<Item = Label>) -> Vec<Label> {
        self.constant.iter().cloned().chain(extra).collect()
    }
}

/// Runs a fetch of `sources` (one for a single key, each source of a
/// batch), recording its duration when it finishes.
pub(crate) async fn timed_fetch<F: Future>(inner: &Inner, sources: &[&str], fetch: F) -> F::Output {
    let started = Instant::now();
    let output = fetch.await;
    let seconds = started.elapsed().as_secs_f64();
    for source in sources {
        let labels = inner
            .metric_labels
            .with([Label::new("source", inner.metric_labels.source(source))]);
        ::metrics::histogram!(FETCH_DURATION, labels).record(seconds);
    }
    output
}

/// Whether this tier call is the one in [`TIER_CALL_SAMPLING`] that
/// records its duration (counted per thread: no shared cache line).
pub(crate) fn sample_tier_call() -> bool {
    thread_local! {
        static CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }
    CALLS.with(|calls| {
        let n = calls.get().wrapping_add(1);
        calls.set(n);
        n % TIER_CALL_SAMPLING == 0
    })
}

/// Records one sampled tier call.
pub(crate) fn record_tier_call(labels: &[Label], started: Instant) {
    ::metrics::histogram!(TIER_CALL_DURATION, labels.to_vec())
        .record(started.elapsed().as_secs_f64());
}

/// The labels of a tier's sampled calls of `operation`: the tier's own
/// (the cache's constant labels and `tier`) and `operation`.
pub(crate) fn tier_call_labels(tier: &[Label], operation: &'static str) -> Vec<Label> {
    let mut labels = tier.to_vec();
    labels.push(Label::new("operation", operation));
    labels
}

const FETCH_DURATION: &str = "tierstack_fetch_duration_seconds";
const TIER_CALL_DURATION: &str = "tierstack_tier_call_duration_seconds";

/// Publishes a cache's counters to the installed `metrics` recorder.
/// Cheap to create; several may publish the same cache.
#[derive(Debug, Clone)]
pub struct Metrics {
    cache: TieredCache,
}

/// A running [`Metrics::publish_every`]; stops when dropped.
#[derive(Debug)]
pub struct Publishing(tokio::task::JoinHandle<()>);

impl Drop for Publishing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Metrics {
    /// A publisher of `cache`'s counters (the cache is shared, not copied).
    pub fn new(cache: &TieredCache) -> Self {
        Self {
            cache: cache.clone(),
        }
    }

    /// Sets every counter to the cache's current totals: per tier (label
    /// `tier`), per source (label `source`, capped), and the backplane's.
    pub fn publish(&self) {
        let inner = &self.cache.inner;
        let stats = inner.stats();
        let labels = &inner.metric_labels;
        for layer in &stats.layers {
            let tier = labels.with([Label::new("tier", layer.name.clone())]);
            for (name, value) in layer_counters(layer) {
                ::metrics::counter!(name, tier.clone()).absolute(value);
            }
        }
        for (label, totals) in by_label(labels, &stats.sources) {
            let source = labels.with([Label::new("source", label)]);
            for (name, value) in source_counters(&totals) {
                ::metrics::counter!(name, source.clone()).absolute(value);
            }
        }
        let backplane = stats.backplane;
        let constant = labels.with([]);
        for (name, value) in [
            ("tierstack_backplane_published_total", backplane.published),
            (
                "tierstack_backplane_publish_errors_total",
                backplane.publish_errors,
            ),
            ("tierstack_backplane_received_total", backplane.received),
            ("tierstack_backplane_resyncs_total", backplane.resyncs),
        ] {
            ::metrics::counter!(name, constant.clone()).absolute(value);
        }
    }

    /// [`Metrics::publish`], then the gauges of entries and bytes of each
    /// tier that can tell (`Tier::size`; an SQLite tier counts its rows,
    /// a Redis tier scans its namespace: call this at scrape intervals,
    /// not per request).
    pub async fn publish_with_sizes(&self) {
        self.publish();
        let labels = &self.cache.inner.metric_labels;
        for (tier, size) in self.cache.sizes().await {
            if let Ok(size) = size {
                publish_size(labels.constant(), &tier, size);
            }
        }
    }

    /// Publishes with sizes every `period` on the current Tokio runtime
    /// until the returned handle is dropped.
    pub fn publish_every(&self, period: Duration) -> Publishing {
        let metrics = self.clone();
        Publishing(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                metrics.publish_with_sizes().await;
            }
        }))
    }
}

/// Publishes the totals of a stats file ([`StoredStats`]: every process
/// that used the cache since the file was created) to the installed
/// recorder, under the names [`Metrics::publish`] uses for the counters
/// the file keeps. What `tierstack stats --prometheus` prints, for a
/// textfile collector in front of caches used by short-lived programs.
///
/// The file keeps fewer counters than a live cache: per tier hits,
/// misses, errors, decode failures, writes and write errors; per source
/// hits (negative hits included: the file does not tell them apart),
/// misses, fetches, fetch errors, stale served, rate-limit waits and
/// rejections, circuit-open calls, leases and coordination fallbacks.
/// `sizes` (a tier's name and its [`TierSize`]) become the
/// `tierstack_tier_entries` and `tierstack_tier_bytes` gauges.
pub fn publish_stored<'a>(
    stored: &StoredStats,
    sizes: impl IntoIterator<Item = (&'a str, TierSize)>,
    options: &MetricsOptions,
) {
    let labels = MetricLabels::new(options);
    for (tier, size) in sizes {
        publish_size(labels.constant(), tier, size);
    }
    for (tier, counters) in &stored.tiers {
        let tier = labels.with([Label::new("tier", tier.clone())]);
        for (name, value) in stored_tier_counters(counters) {
            ::metrics::counter!(name, tier.clone()).absolute(value);
        }
    }
    let mut sources: BTreeMap<SharedString, StoredCounters> = BTreeMap::new();
    for (source, counters) in &stored.sources {
        sources
            .entry(labels.source(source))
            .or_default()
            .add(counters);
    }
    for (label, counters) in sources {
        let source = labels.with([Label::new("source", label)]);
        for (name, value) in stored_source_counters(&counters) {
            ::metrics::counter!(name, source.clone()).absolute(value);
        }
    }
}

fn stored_tier_counters(c: &StoredCounters) -> [(&'static str, u64); 6] {
    [
        ("tierstack_tier_hits_total", c.hits),
        ("tierstack_tier_misses_total", c.misses),
        ("tierstack_tier_errors_total", c.errors),
        ("tierstack_tier_decode_failures_total", c.decode_failures),
        ("tierstack_tier_writes_total", c.writes),
        ("tierstack_tier_write_errors_total", c.write_errors),
    ]
}

fn stored_source_counters(c: &StoredCounters) -> [(&'static str, u64); 12] {
    [
        ("tierstack_source_hits_total", c.hits),
        ("tierstack_source_misses_total", c.misses),
        ("tierstack_source_fetches_total", c.fetches),
        ("tierstack_source_fetch_errors_total", c.fetch_errors),
        ("tierstack_source_stale_served_total", c.stale_served),
        ("tierstack_source_throttled_waits_total", c.throttled_waits),
        (
            "tierstack_source_throttled_rejections_total",
            c.throttled_rejections,
        ),
        ("tierstack_source_circuit_open_total", c.circuit_open),
        ("tierstack_source_lease_won_total", c.lease_won),
        ("tierstack_source_lease_waited_total", c.lease_waited),
        ("tierstack_source_lease_takeovers_total", c.lease_takeovers),
        (
            "tierstack_source_coordination_fallbacks_total",
            c.coordination_fallbacks,
        ),
    ]
}

/// Publishes the gauges of one tier's size.
fn publish_size(labels: &[Label], tier: &str, size: TierSize) {
    let tier = labels
        .iter()
        .cloned()
        .chain([Label::new("tier", tier.to_owned())])
        .collect::<Vec<_>>();
    #[allow(clippy::cast_precision_loss)] // a gauge is an f64
    {
        ::metrics::gauge!("tierstack_tier_entries", tier.clone()).set(size.entries as f64);
        ::metrics::gauge!("tierstack_tier_bytes", tier).set(size.bytes as f64);
    }
}

/// Sources summed by the label they publish under.
fn by_label(
    labels: &MetricLabels,
    sources: &BTreeMap<String, SourceStats>,
) -> BTreeMap<SharedString, SourceStats> {
    let mut totals: BTreeMap<SharedString, SourceStats> = BTreeMap::new();
    for (source, stats) in sources {
        let total = totals.entry(labels.source(source)).or_default();
        *total = total.plus(stats);
    }
    totals
}

fn layer_counters(l: &LayerStats) -> [(&'static str, u64); 14] {
    [
        ("tierstack_tier_hits_total", l.hits),
        ("tierstack_tier_misses_total", l.misses),
        ("tierstack_tier_expired_total", l.expired),
        ("tierstack_tier_errors_total", l.errors),
        ("tierstack_tier_decode_failures_total", l.decode_failures),
        ("tierstack_tier_writes_total", l.writes),
        ("tierstack_tier_write_errors_total", l.write_errors),
        ("tierstack_tier_copy_ups_total", l.copy_ups),
        ("tierstack_tier_read_bytes_total", l.bytes_read),
        ("tierstack_tier_written_bytes_total", l.bytes_written),
        ("tierstack_tier_evictions_total", l.backend.evictions),
        ("tierstack_tier_expirations_total", l.backend.expirations),
        ("tierstack_tier_unavailable_total", l.backend.unavailable),
        ("tierstack_tier_foreign_total", l.backend.foreign),
    ]
}

fn source_counters(s: &SourceStats) -> [(&'static str, u64); 16] {
    [
        ("tierstack_source_hits_total", s.hits),
        ("tierstack_source_misses_total", s.misses),
        ("tierstack_source_fetches_total", s.fetches),
        ("tierstack_source_fetch_errors_total", s.fetch_errors),
        ("tierstack_source_coalesced_total", s.coalesced),
        ("tierstack_source_stale_served_total", s.stale_served),
        ("tierstack_source_negative_hits_total", s.negative_hits),
        ("tierstack_source_refreshes_total", s.refreshes),
        ("tierstack_source_revalidated_total", s.revalidated),
        ("tierstack_source_throttled_waits_total", s.throttled_waits),
        (
            "tierstack_source_throttled_rejections_total",
            s.throttled_rejections,
        ),
        ("tierstack_source_circuit_open_total", s.circuit_open),
        ("tierstack_source_lease_won_total", s.lease_won),
        ("tierstack_source_lease_waited_total", s.lease_waited),
        ("tierstack_source_lease_takeovers_total", s.lease_takeovers),
        (
            "tierstack_source_coordination_fallbacks_total",
            s.coordination_fallbacks,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_past_the_limit_are_other_and_not_remembered() {
        let labels = MetricLabels::new(&MetricsOptions::default().source_limit(2));
        assert_eq!(&*labels.source("a"), "a");
        assert_eq!(&*labels.source("b"), "b");
        for i in 0..1000 {
            assert_eq!(&*labels.source(&format!("s{i}")), OTHER_SOURCE);
        }
        // The named ones keep their label; the map holds only them.
        assert_eq!(&*labels.source("a"), "a");
        assert_eq!(labels.sources.lock().map_or(0, |s| s.len()), 2);
    }
}
