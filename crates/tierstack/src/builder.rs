use std::sync::Arc;
use std::time::Duration;

use tierstack_core::{
    Codec, Compression, DecodeLimits, Dictionaries, Dictionary, Error, Operation, Result, Tier,
};

use crate::cache::{Inner, Layer, TieredCache};
use crate::flight::Flights;
use crate::policy::{Coordination, Policies, SourcePolicy};
use crate::stats::Sources;

/// Builds a [`TieredCache`] in code.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> tierstack::Result<()> {
/// use std::time::Duration;
/// use tierstack::{MemoryConfig, MemoryTier, TieredCache, Key, Ttl};
///
/// let cache = TieredCache::builder()
///     .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000).ttl(Duration::from_secs(3600)))?)
///     .schema_version(1)
///     .build();
/// let key = Key::new("audnexus:book", [("asin", "B002V1A0WE")]);
/// cache.set(&key, "Dune".to_string(), Ttl::TierDefault).await?;
/// assert_eq!(cache.get::<String>(&key).await.as_deref().map(String::as_str), Some("Dune"));
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct TieredCacheBuilder {
    tiers: Vec<Arc<dyn Tier>>,
    codec: Codec,
    compression: Compression,
    dictionaries: Dictionaries,
    limits: DecodeLimits,
    /// Set by [`TieredCacheBuilder::schema_version`]; otherwise the tiers'.
    schema_version: Option<u32>,
    default_ttl: Option<Duration>,
    enabled: bool,
    policies: Policies,
    stale_for: Duration,
    negative_ttl: Duration,
    offline: bool,
    stats_file: Option<std::path::PathBuf>,
    coordination: Coordination,
    lease_ttl: Duration,
    expected_processes: u32,
    #[cfg(feature = "metrics")]
    metrics: crate::metrics::MetricsOptions,
}

impl Default for TieredCacheBuilder {
    fn default() -> Self {
        Self {
            tiers: Vec::new(),
            codec: Codec::default(),
            compression: Compression::default(),
            dictionaries: Dictionaries::default(),
            limits: DecodeLimits::default(),
            schema_version: None,
            default_ttl: None,
            enabled: true,
            policies: Policies::default(),
            stale_for: Duration::ZERO,
            negative_ttl: Duration::from_secs(300),
            offline: false,
            stats_file: None,
            coordination: Coordination::default(),
            lease_ttl: DEFAULT_LEASE_TTL,
            expected_processes: 1,
            #[cfg(feature = "metrics")]
            metrics: crate::metrics::MetricsOptions::default(),
        }
    }
}

impl TieredCacheBuilder {
    /// Adds a tier below the ones added so far (the first is L1).
    #[must_use]
    pub fn tier(self, tier: impl Tier + 'static) -> Self {
        self.shared_tier(Arc::new(tier))
    }

    /// Adds an already shared tier (for example one built from config).
    #[must_use]
    pub fn shared_tier(mut self, tier: Arc<dyn Tier>) -> Self {
        self.tiers.push(tier);
        self
    }

    /// The codec new entries are written with (default MessagePack). Entries
    /// are always read with the codec they were written with.
    #[must_use]
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How new entries are compressed (default zstd level 3 from 1 KiB).
    #[must_use]
    pub fn compression(mut self, compression: Compression) -> Self {
        if let Compression::ZstdDict { dictionary, .. } = &compression {
            self.dictionaries.insert(dictionary.clone());
        }
        self.compression = compression;
        self
    }

    /// Makes a dictionary available for reading entries written with it.
    #[must_use]
    pub fn dictionary(mut self, dictionary: Dictionary) -> Self {
        self.dictionaries.insert(dictionary);
        self
    }

    /// The application schema version (default 1). Entries of another
    /// version are misses; bump it whenever the cached types change
    /// incompatibly.
    #[must_use]
    pub fn schema_version(mut self, version: u32) -> Self {
        self.schema_version = Some(version);
        self
    }

    /// TTL for tiers without their own TTL when writing with
    /// [`Ttl::TierDefault`](crate::Ttl::TierDefault). Default: no expiry.
    #[must_use]
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Largest encoded value accepted when writing and reading (default
    /// 64 MiB). Larger stored entries are misses, never allocated.
    #[must_use]
    pub fn max_value_len(mut self, bytes: u32) -> Self {
        self.limits.max_raw_len = bytes;
        self
    }

    /// `false` makes a pass-through cache: every lookup misses, every fetch
    /// runs, nothing is stored.
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Sets the policy (TTL, stale window, negative TTL) for the keys of a
    /// source: an exact source (`pathinfo`) or a prefix ending in `*`
    /// (`audnexus:*`). The exact match wins, then the longest prefix.
    #[must_use]
    pub fn source_policy(mut self, pattern: &str, policy: SourcePolicy) -> Self {
        self.policies.insert(pattern, policy);
        self
    }

    /// How long after expiry values may be served when a fetch fails or is
    /// too slow, unless a source policy says otherwise. Default: zero (no
    /// stale serving).
    #[must_use]
    pub fn stale_for(mut self, window: Duration) -> Self {
        self.stale_for = window;
        self
    }

    /// How long "not found" answers are cached, unless a source policy says
    /// otherwise. Default 5 minutes.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Starts offline: fetches never run, only cached values are served
    /// (see [`TieredCache::set_offline`]).
    #[must_use]
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// How far single-flight reaches for sources whose policy does not say
    /// (default [`Coordination::Shared`]: across the processes sharing the
    /// lowest tier that coordinates, in-process when none does).
    #[must_use]
    pub fn coordination(mut self, coordination: Coordination) -> Self {
        self.coordination = coordination;
        self
    }

    /// How long a cross-process lease lasts unless its holder renews it
    /// (default 5 s; renewed every third of it while the fetch runs). A
    /// holder that crashes delays its key's other callers by at most this.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(30));
        self
    }

    /// How many processes share a budget with
    /// [`RateScope::Shared`](crate::RateScope::Shared) (default 1): while the
    /// coordinating tier cannot be reached, each spends `rate / n` alone, so
    /// together they stay within the budget.
    #[must_use]
    pub fn expected_processes(mut self, processes: u32) -> Self {
        self.expected_processes = processes.max(1);
        self
    }

    /// Adds this cache's counters to `path` when it is dropped (and on
    /// [`TieredCache::flush_stats`]), so totals over every process are kept;
    /// `tierstack stats` shows them.
    #[must_use]
    pub fn stats_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.stats_file = Some(path.into());
        self
    }

    /// How the cache's metrics are labelled (feature `metrics`): constant
    /// labels and the number of sources with a label of their own.
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn metrics(mut self, options: crate::metrics::MetricsOptions) -> Self {
        self.metrics = options;
        self
    }

    /// Builds the cache. Tiers with the same name get a `#2`, `#3`… suffix
    /// in statistics.
    ///
    /// # Panics
    ///
    /// When the schema versions disagree (see
    /// [`TieredCacheBuilder::try_build`]): a tier opened for one version
    /// under a cache of another would keep every entry in the wrong
    /// namespace. Use `try_build` to get the error instead.
    pub fn build(self) -> TieredCache {
        match self.try_build() {
            Ok(cache) => cache,
            Err(e) => panic!("{}", e.report()),
        }
    }

    /// Builds the cache, or fails with an [`ErrorKind::Config`](crate::ErrorKind::Config) error
    /// naming the versions when the tiers were opened for different
    /// application schema versions, or for another version than the one
    /// given to [`TieredCacheBuilder::schema_version`]. Without that call,
    /// the cache takes the version its tiers were opened for (1 for tiers
    /// that keep no per-version namespace, such as memory).
    pub fn try_build(self) -> Result<TieredCache> {
        let schema_version = self.agreed_schema_version()?;
        #[cfg(feature = "metrics")]
        let metric_labels = crate::metrics::MetricLabels::new(&self.metrics);
        #[cfg(not(feature = "metrics"))]
        let metric_labels = ();
        let mut layers: Vec<Layer> = Vec::with_capacity(self.tiers.len());
        for tier in self.tiers {
            let base = tier.name().to_owned();
            let mut name = base.clone();
            let mut n = 1;
            while layers.iter().any(|l| *l.name == *name) {
                n += 1;
                name = format!("{base}#{n}");
            }
            let name: Arc<str> = name.into();
            let capabilities = tier.capabilities();
            layers.push(Layer {
                answers_without_io: capabilities.answers_without_io,
                reads_ready: capabilities.answers_without_io || capabilities.reads_in_place,
                tier: traced(tier, &name, &metric_labels),
                name,
                counters: crate::stats::LayerCounters::default(),
            });
        }
        let backplane = crate::invalidation::find(&layers);
        let shared = coordinating_tier(&layers);
        let budgets = crate::budget::Budgets::new(&self.policies, shared, self.expected_processes)?;
        Ok(TieredCache::from_inner(Inner {
            backplane,
            backplane_counters: crate::invalidation::BackplaneCounters::default(),
            stats_file: self.stats_file.map(crate::stats_file::StatsFile::new),
            layers,
            codec: self.codec,
            compression: self.compression,
            dictionaries: self.dictionaries,
            limits: self.limits,
            schema_version,
            default_ttl: self.default_ttl,
            enabled: self.enabled,
            flights: Flights::default(),
            budgets,
            coordination: self.coordination,
            lease_ttl: self.lease_ttl,
            sources: Sources::default(),
            policies: self.policies,
            default_stale_for: self.stale_for,
            default_negative_ttl: self.negative_ttl,
            offline: std::sync::atomic::AtomicBool::new(self.offline),
            refreshing: std::sync::Mutex::default(),
            #[cfg(feature = "metrics")]
            metric_labels,
        }))
    }

    /// The one schema version of the builder and its tiers.
    fn agreed_schema_version(&self) -> Result<u32> {
        let mut agreed: Option<(u32, String)> = self
            .schema_version
            .map(|v| (v, "the builder's schema_version".to_owned()));
        for tier in &self.tiers {
            let Some(version) = tier.schema_version() else {
                continue;
            };
            match &agreed {
                Some((expected, origin)) if *expected != version => {
                    let tier = tier.name();
                    return Err(Error::config(format!(
                        "schema versions disagree: tier {tier} was opened for schema version \
                         {version}, {origin} is {expected}; open every tier with the version \
                         the cache uses"
                    ))
                    .with_operation(Operation::Build));
                }
                Some(_) => {}
                None => agreed = Some((version, format!("tier {}", tier.name()))),
            }
        }
        Ok(agreed.map_or(DEFAULT_SCHEMA_VERSION, |(v, _)| v))
    }
}

/// How long a lease lasts without renewal unless the builder says.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(5);

/// The lowest tier whose store is shared and keeps coordination state: the
/// one that reaches the most processes.
fn coordinating_tier(layers: &[Layer]) -> Option<crate::budget::Shared> {
    layers.iter().rev().find_map(|layer| {
        let tier = layer.tier.inner();
        let capabilities = tier.capabilities();
        if !(capabilities.shared_across_processes || capabilities.shared_across_hosts) {
            return None;
        }
        tier.coordinator().map(|coordinator| crate::budget::Shared {
            coordinator,
            owner: tierstack_core::LeaseOwner::random(),
            tier: Arc::clone(&layer.name),
        })
    })
}

/// The application schema version of a cache built without one and without
/// tiers that name theirs.
const DEFAULT_SCHEMA_VERSION: u32 = 1;

/// The wrapper through which the cache calls `tier`, labelled with the
/// cache's constant metric labels.
#[cfg(feature = "metrics")]
fn traced(
    tier: Arc<dyn Tier>,
    name: &Arc<str>,
    labels: &crate::metrics::MetricLabels,
) -> crate::traced::Traced {
    crate::traced::Traced::new(tier, Arc::clone(name)).with_metric_labels(labels.constant())
}

/// The wrapper through which the cache calls `tier`.
#[cfg(not(feature = "metrics"))]
#[allow(clippy::trivially_copy_pass_by_ref)] // the same call as with `metrics`
fn traced(tier: Arc<dyn Tier>, name: &Arc<str>, (): &()) -> crate::traced::Traced {
    crate::traced::Traced::new(tier, Arc::clone(name))
}
