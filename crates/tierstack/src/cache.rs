//! `TieredCache`: a stack of tiers behind one typed API.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::Poll;
use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tierstack_core::{
    ClearScope, Codec, Compression, DecodeError, DecodeLimits, Decoded, Dictionaries, Entry,
    EntryFlags, EntryMeta, Error, ErrorKind, Header, Health, Key, Operation, Readiness, Result,
    SetReadiness, Tier, TierSize, Timestamp,
};

use crate::fetch::FetchOptions;
use crate::flight::Flights;
use crate::policy::{Policies, SourcePolicy};
use crate::stats::{
    CacheStats, LayerCounters, LayerStats, SourceCounts, Sources, Tally, add, bump,
};

/// How long a written entry stays fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ttl {
    /// Each tier's own TTL (its `ttl` setting), or the cache's default TTL
    /// for tiers without one; no expiry if neither is set.
    #[default]
    TierDefault,
    /// This long, capped by each tier's own TTL.
    For(Duration),
}

impl From<Duration> for Ttl {
    fn from(ttl: Duration) -> Self {
        Self::For(ttl)
    }
}

/// A stack of tiers (L1 first) with a typed API.
///
/// - **Read:** tiers are asked in order; the first fresh entry wins and is
///   copied up into the tiers above it with its *remaining* TTL (capped by
///   each tier's own TTL). A tier that fails is skipped and counted.
/// - **Write:** write-through to every tier, each with its own TTL.
/// - **`get_or_fetch`:** one fetch per cold key at a time in the process;
///   a failed fetch is not cached and every waiter gets its error.
///
/// Cloning is cheap and clones share everything.
#[derive(Clone)]
pub struct TieredCache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Layer {
    /// The tier, called through a span per call.
    pub(crate) tier: crate::traced::Traced,
    pub(crate) name: Arc<str>,
    pub(crate) counters: LayerCounters,
    /// The tier's `answers_without_io` capability, read once.
    pub(crate) answers_without_io: bool,
    /// Whether the cache reads the tier through `get_ready`
    /// (`answers_without_io` or `reads_in_place`), read once.
    pub(crate) reads_ready: bool,
}

pub(crate) struct Inner {
    pub(crate) layers: Vec<Layer>,
    pub(crate) codec: Codec,
    pub(crate) compression: Compression,
    pub(crate) dictionaries: Dictionaries,
    pub(crate) limits: DecodeLimits,
    pub(crate) schema_version: u32,
    pub(crate) default_ttl: Option<Duration>,
    pub(crate) enabled: bool,
    pub(crate) flights: Flights,
    /// Rate limits and circuits per group, and the coordinating tier.
    pub(crate) budgets: crate::budget::Budgets,
    /// How far single-flight reaches for sources whose policy does not say.
    pub(crate) coordination: crate::policy::Coordination,
    /// How long a cross-process lease lasts without renewal.
    pub(crate) lease_ttl: Duration,
    pub(crate) sources: Sources,
    pub(crate) policies: Policies,
    pub(crate) default_stale_for: Duration,
    pub(crate) default_negative_ttl: Duration,
    pub(crate) offline: std::sync::atomic::AtomicBool,
    /// Keys with a background refresh under way (one per key at a time).
    pub(crate) refreshing: std::sync::Mutex<std::collections::HashSet<Key>>,
    /// Where deletes and clears are announced to other processes.
    pub(crate) backplane: Option<Arc<dyn tierstack_core::Backplane>>,
    pub(crate) backplane_counters: crate::invalidation::BackplaneCounters,
    /// Where counters are added up across processes.
    pub(crate) stats_file: Option<crate::stats_file::StatsFile>,
    /// Constant labels and the capped source labels of published metrics.
    #[cfg(feature = "metrics")]
    pub(crate) metric_labels: crate::metrics::MetricLabels,
}

impl Inner {
    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            layers: self
                .layers
                .iter()
                .map(|l| LayerStats::from_counters(&l.name, &l.counters, l.tier.stats()))
                .collect(),
            sources: self.sources.snapshot(),
            backplane: self.backplane_counters.snapshot(),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(file) = &self.stats_file {
            if let Err(e) = file.flush(&self.stats()) {
                tracing::warn!(file = %file.path().display(), error = %e, "could not save the cache's counters");
            }
        }
    }
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field(
                "tiers",
                &self
                    .inner
                    .layers
                    .iter()
                    .map(|l| &*l.name)
                    .collect::<Vec<_>>(),
            )
            .field("codec", &self.inner.codec)
            .field("compression", &self.inner.compression)
            .field("schema_version", &self.inner.schema_version)
            .field("enabled", &self.inner.enabled)
            .finish_non_exhaustive()
    }
}

/// Bound on cached value types.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached",
    note = "a cached value is owned (no borrowed references) and `serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static`: derive `Serialize` and `Deserialize` for it"
)]
pub trait CacheValue: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

/// Where a [`TieredCache::hit_or_else`] future is.
enum HitOrElse<H, M, S, F> {
    Start { hit: H, miss: Option<M>, slow: S },
    Slow(std::pin::Pin<Box<F>>),
    Done,
}

/// Which tiers [`TieredCache::ask_ready`] may read.
#[derive(Clone, Copy)]
pub(crate) enum Reach {
    /// Only tiers that answer without I/O: for callers that, on anything
    /// but a hit, start a full lookup that reads the tiers again.
    Memory,
    /// Tiers that read in place too, for a lookup that goes on from the
    /// answer.
    InPlace,
}

impl Reach {
    fn asks(self, layer: &Layer) -> bool {
        match self {
            Self::Memory => layer.answers_without_io,
            Self::InPlace => layer.reads_ready,
        }
    }
}

/// What the tiers answered at once ([`Tier::get_ready`]), before any future.
pub(crate) enum TopAnswer<V> {
    /// A fresh hit, counted in its tier's counters (not yet the source's)
    /// and copied up into the tiers above it.
    Hit(Arc<V>, Header),
    /// Tier `at` holds this entry, which is not a plain fresh hit (or could
    /// not be copied up at once); the tiers above it missed, counted
    /// (boxed: the hit path moves this enum, and an entry is large).
    Held { at: usize, entry: Box<Entry> },
    /// The first `asked` tiers were read at once and do not hold the key
    /// (counted as misses); the lookup goes on with the next one.
    Missed { asked: usize },
}

/// What the tiers hold for a key.
pub(crate) enum Lookup<V> {
    /// A fresh value and its header (for its age).
    Found(Arc<V>, Header),
    /// A fresh "not found" answer.
    Absent,
    /// Nothing fresh; `stale` is the first entry found inside its stale
    /// window (`Some(None)`: a stale "not found"), `retained` the first
    /// expired entry that carries validators, which a revalidation can
    /// make fresh again without its body.
    Missing {
        #[allow(clippy::option_option)] // the inner `None` is a cached "not found"
        stale: Option<Option<Arc<V>>>,
        retained: Option<Box<Entry>>,
    },
}

impl TieredCache {
    /// Starts a builder.
    pub fn builder() -> crate::TieredCacheBuilder {
        crate::TieredCacheBuilder::default()
    }

    pub(crate) fn from_inner(inner: Inner) -> Self {
        let inner = Arc::new(inner);
        crate::invalidation::start(&inner);
        Self { inner }
    }

    /// Reads a fresh value. A miss, an expired, negative or undecodable entry
    /// and a failing tier all give `None` (and are counted); reads never fail.
    ///
    /// A fresh hit in a top tier that answers without I/O (the memory tier)
    /// is answered at the first poll without allocating; the returned
    /// future is small, so awaiting it copies little.
    pub fn get<'a, V: CacheValue>(
        &'a self,
        key: &'a Key,
    ) -> impl Future<Output = Option<Arc<V>>> + Send + 'a {
        self.hit_or_else(
            key,
            |value, _| Some(value),
            Some(|| None),
            move |top| async move {
                match self.finish_lookup(key, top).await {
                    Lookup::Found(v, _) => Some(v),
                    Lookup::Absent | Lookup::Missing { .. } => None,
                }
            },
        )
    }

    /// A fresh hit of the top tier answered without I/O, counted as a hit of
    /// the key's source; `None` for anything else (nothing is counted then:
    /// the caller's full lookup counts it).
    pub(crate) fn ready_hit<V: CacheValue>(&self, key: &Key) -> Option<(Arc<V>, Header)> {
        match self.ask_ready::<V>(key, Timestamp::now(), Tally::Count, Reach::Memory) {
            TopAnswer::Hit(value, header) => {
                self.count_for_source(key, |source| &source.hits);
                Some((value, header))
            }
            _ => None,
        }
    }

    /// A future that answers a fresh hit found at once (`hit`, counted as a
    /// hit of the key's source), and a miss of a cache whose every tier
    /// answered "not held" at once (`miss`, when given: a plain read has
    /// nothing else to do); otherwise it boxes `slow`, given what the tiers
    /// said, and runs it. The box is paid only on that path,
    /// where tier calls and fetches cost far more; the fast paths' future
    /// holds a few pointers instead of the whole lookup.
    pub(crate) fn hit_or_else<'a, V, T, H, M, S, F>(
        &'a self,
        key: &'a Key,
        hit: H,
        miss: Option<M>,
        slow: S,
    ) -> impl Future<Output = T>
    where
        V: CacheValue,
        H: FnOnce(Arc<V>, Header) -> T,
        M: FnOnce() -> T,
        S: FnOnce(TopAnswer<V>) -> F,
        F: Future<Output = T>,
    {
        let mut state = HitOrElse::Start { hit, miss, slow };
        std::future::poll_fn(move |cx| {
            loop {
                match std::mem::replace(&mut state, HitOrElse::Done) {
                    HitOrElse::Start { hit, miss, slow } => {
                        match self.ask_ready::<V>(
                            key,
                            Timestamp::now(),
                            Tally::Count,
                            Reach::InPlace,
                        ) {
                            TopAnswer::Hit(value, header) => {
                                self.count_for_source(key, |source| &source.hits);
                                return Poll::Ready(hit(value, header));
                            }
                            TopAnswer::Missed { asked } if asked == self.inner.layers.len() => {
                                if let Some(miss) = miss {
                                    // Counted as `classify` and `lookup` would.
                                    for layer in &self.inner.layers {
                                        bump(&layer.counters.local().misses);
                                    }
                                    self.count_for_source(key, |source| &source.misses);
                                    return Poll::Ready(miss());
                                }
                                state =
                                    HitOrElse::Slow(Box::pin(slow(TopAnswer::Missed { asked })));
                            }
                            top => state = HitOrElse::Slow(Box::pin(slow(top))),
                        }
                    }
                    HitOrElse::Slow(mut future) => {
                        let poll = future.as_mut().poll(cx);
                        if poll.is_pending() {
                            state = HitOrElse::Slow(future);
                        }
                        return poll;
                    }
                    // Polled again after it finished: it stays finished.
                    HitOrElse::Done => return Poll::Pending,
                }
            }
        })
    }

    /// Writes a value through every tier. Fails only if the value cannot be
    /// encoded; a tier that fails to store it is skipped, logged and counted
    /// (see [`TieredCache::stats`]).
    pub async fn set<V: CacheValue>(&self, key: &Key, value: V, ttl: impl Into<Ttl>) -> Result<()> {
        if !self.inner.enabled {
            return Ok(());
        }
        let value = Arc::new(value);
        let entry = self.encode(key, &*value)?;
        let options = FetchOptions::ttl(ttl);
        self.write_through(key, &entry, Some(Decoded::new(value)), options, false)
            .await;
        Ok(())
    }

    /// Removes a key from every tier. Every tier is tried; the first failure
    /// is returned after all were tried. `true` if any tier held the key.
    /// With a backplane (the Redis tier's `backplane: true`), other processes
    /// drop the key from their private tiers too.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let results = join_all(self.inner.layers.iter().map(|layer| layer.tier.delete(key))).await;
        crate::invalidation::announce(&self.inner, tierstack_core::Invalidation::Key(key.clone()))
            .await;
        self.first_error(results, Operation::Delete)
            .map(|found| found.into_iter().any(|f| f))
    }

    /// Clears `scope` in every tier; returns the number removed per tier,
    /// top first. Every tier is tried; the first failure is returned after.
    /// With a backplane, other processes clear their private tiers too.
    pub async fn clear(&self, scope: ClearScope) -> Result<Vec<(String, u64)>> {
        let results = join_all(
            self.inner
                .layers
                .iter()
                .map(|layer| layer.tier.clear(scope.clone())),
        )
        .await;
        crate::invalidation::announce(&self.inner, tierstack_core::Invalidation::Clear(scope))
            .await;
        let counts = self.first_error(results, Operation::Clear)?;
        Ok(self
            .inner
            .layers
            .iter()
            .map(|l| l.name.to_string())
            .zip(counts)
            .collect())
    }

    /// The header of `key`'s entry in each tier (`None` where absent), top
    /// first; for inspection tools. A tier error is reported per tier.
    pub async fn inspect(&self, key: &Key) -> Vec<(String, Result<Option<Header>>)> {
        let mut out = Vec::with_capacity(self.inner.layers.len());
        for layer in &self.inner.layers {
            let header = layer.tier.get(key).await.map(|e| e.map(|e| e.header));
            out.push((layer.name.to_string(), header));
        }
        out
    }

    /// Entries and bytes per tier, top first.
    pub async fn sizes(&self) -> Vec<(String, Result<TierSize>)> {
        let sizes = join_all(self.inner.layers.iter().map(|l| l.tier.size())).await;
        self.inner
            .layers
            .iter()
            .map(|l| l.name.to_string())
            .zip(sizes)
            .collect()
    }

    /// Health per tier, top first.
    pub async fn health(&self) -> Vec<(String, Health)> {
        let health = join_all(self.inner.layers.iter().map(|l| l.tier.health())).await;
        self.inner
            .layers
            .iter()
            .map(|l| l.name.to_string())
            .zip(health)
            .collect()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> CacheStats {
        self.inner.stats()
    }

    /// The tiers, top (L1) first.
    pub fn tiers(&self) -> impl Iterator<Item = &Arc<dyn Tier>> {
        self.inner.layers.iter().map(|l| l.tier.inner())
    }

    /// The application schema version entries are written with and must
    /// carry to be read.
    pub fn schema_version(&self) -> u32 {
        self.inner.schema_version
    }

    /// The codec new entries are written with.
    pub fn codec(&self) -> Codec {
        self.inner.codec
    }

    /// The largest encoded value this cache writes or reads
    /// ([`TieredCacheBuilder::max_value_len`]).
    ///
    /// [`TieredCacheBuilder::max_value_len`]: crate::TieredCacheBuilder::max_value_len
    pub fn max_value_len(&self) -> u32 {
        self.inner.limits.max_raw_len
    }

    /// Whether caching is on (`enabled: false` makes a pass-through cache).
    pub fn is_enabled(&self) -> bool {
        self.inner.enabled
    }

    fn first_error<T>(&self, results: Vec<Result<T>>, op: Operation) -> Result<Vec<T>> {
        let mut out = Vec::with_capacity(results.len());
        let mut first = None;
        for (layer, result) in self.inner.layers.iter().zip(results) {
            match result {
                Ok(v) => out.push(v),
                Err(e) => {
                    bump(&layer.counters.local().errors);
                    tracing::warn!(tier = %layer.name, op = op.name(), error = %e.report(), "tier failed");
                    first.get_or_insert(tier_error(e, &layer.name, op));
                }
            }
        }
        first.map_or(Ok(out), Err)
    }

    pub(crate) fn encode<V: Serialize>(&self, key: &Key, value: &V) -> Result<Entry> {
        let meta = EntryMeta::new(key, self.inner.schema_version, Timestamp::now());
        Ok(Entry::encode(
            value,
            self.inner.codec,
            &self.inner.compression,
            meta,
            self.inner.limits,
        )?)
    }

    /// An entry recording that the source answered "not found".
    pub(crate) fn negative_entry(&self, key: &Key) -> Entry {
        let meta = EntryMeta::new(key, self.inner.schema_version, Timestamp::now());
        Entry::negative(meta, self.inner.codec)
    }

    /// When a write expires in `layer`: the call's TTL, else the source's
    /// policy, else the tier's own TTL, else the cache's default; always
    /// capped by the tier's TTL. Negative entries use the negative TTL.
    fn expiry_for(
        &self,
        layer: &Layer,
        options: &FetchOptions,
        policy: &SourcePolicy,
        negative: bool,
        now: Timestamp,
    ) -> Timestamp {
        let cap = layer.tier.max_ttl();
        let wanted = if negative {
            Some(
                options
                    .negative_ttl
                    .or(policy.negative_ttl)
                    .unwrap_or(self.inner.default_negative_ttl),
            )
        } else {
            match options.ttl {
                Ttl::For(d) => Some(d),
                Ttl::TierDefault => policy.ttl.or(cap).or(self.inner.default_ttl),
            }
        };
        let ttl = match (wanted, cap) {
            (Some(w), Some(c)) => Some(w.min(c)),
            (w, c) => w.or(c),
        };
        ttl.map_or(Timestamp::NEVER, |d| now.saturating_add(d))
    }

    /// The copy of `entry` that `layer` stores: its expiry and stale window.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn entry_for(
        &self,
        layer: &Layer,
        key: &Key,
        entry: &Entry,
        decoded: Option<Decoded>,
        options: FetchOptions,
        negative: bool,
        now: Timestamp,
    ) -> Entry {
        let policy = self.inner.policies.get(key.source());
        let window = options
            .stale_for
            .or(policy.stale_for)
            .unwrap_or(self.inner.default_stale_for);
        let expiry = self.expiry_for(layer, &options, &policy, negative, now);
        let mut header = entry.header.with_expiry_and_window(expiry, window);
        if options.must_revalidate && !negative {
            header.flags = header.flags.union(EntryFlags::MUST_REVALIDATE);
        }
        if !negative && crate::revalidate::has_validators(entry) {
            let retention = options
                .retain_for
                .or(policy.retain_for)
                .unwrap_or(crate::revalidate::DEFAULT_RETAIN_FOR);
            header = header.with_retention(retention);
        }
        Entry {
            decoded,
            ..entry.with_header(header)
        }
    }

    /// Writes `entry` to every tier; `true` if at least one stored it.
    pub(crate) async fn write_through(
        &self,
        key: &Key,
        entry: &Entry,
        decoded: Option<Decoded>,
        options: FetchOptions,
        negative: bool,
    ) -> bool {
        self.write_through_as(key, entry, decoded, options, negative, Write::Whole)
            .await
    }

    /// [`TieredCache::write_through`] of an entry a revalidation made
    /// fresh again: each tier is asked to renew it ([`Tier::renew`]), so
    /// one that can keeps its stored body.
    pub(crate) async fn renew_through(
        &self,
        key: &Key,
        entry: &Entry,
        decoded: Option<Decoded>,
        options: FetchOptions,
    ) {
        self.write_through_as(key, entry, decoded, options, false, Write::Renewal)
            .await;
    }

    async fn write_through_as(
        &self,
        key: &Key,
        entry: &Entry,
        decoded: Option<Decoded>,
        options: FetchOptions,
        negative: bool,
        how: Write,
    ) -> bool {
        let now = Timestamp::now();
        let writes = self.inner.layers.iter().map(|layer| {
            let copy = self.entry_for(layer, key, entry, decoded.clone(), options, negative, now);
            self.write_one_as(layer, key, copy, how)
        });
        join_all(writes).await.into_iter().any(|stored| stored)
    }

    /// Writes one tier's copy; `false` (counted and logged) if it failed.
    pub(crate) async fn write_one(&self, layer: &Layer, key: &Key, entry: Entry) -> bool {
        self.write_one_as(layer, key, entry, Write::Whole).await
    }

    async fn write_one_as(&self, layer: &Layer, key: &Key, entry: Entry, how: Write) -> bool {
        let len = entry.encoded_len() as u64;
        let result = match (how, layer.tier.set_ready(key, entry)) {
            (_, SetReadiness::Done(result)) => result,
            (Write::Whole, SetReadiness::NeedsIo(entry)) => layer.tier.set(key, entry).await,
            (Write::Renewal, SetReadiness::NeedsIo(entry)) => layer.tier.renew(key, entry).await,
        };
        Self::count_write(layer, key, len, result)
    }

    /// Counts (and logs, if it failed) one tier's write of `len` bytes;
    /// `true` if it stored them.
    fn count_write(layer: &Layer, key: &Key, len: u64, result: Result<()>) -> bool {
        match result {
            Ok(()) => {
                bump(&layer.counters.local().writes);
                add(&layer.counters.local().bytes_written, len);
                true
            }
            Err(e) => {
                bump(&layer.counters.local().write_errors);
                tracing::warn!(tier = %layer.name, key = %key, error = %e.report(), "write skipped");
                false
            }
        }
    }

    pub(crate) async fn lookup<V: CacheValue>(&self, key: &Key) -> Lookup<V> {
        let top = self.ask_ready::<V>(key, Timestamp::now(), Tally::Count, Reach::InPlace);
        self.finish_lookup(key, top).await
    }

    /// [`TieredCache::lookup`] after the top tier was asked.
    pub(crate) async fn finish_lookup<V: CacheValue>(
        &self,
        key: &Key,
        top: TopAnswer<V>,
    ) -> Lookup<V> {
        let found = match top {
            TopAnswer::Hit(value, header) => Lookup::Found(value, header),
            top => self.look_through_from(key, Tally::Count, top).await,
        };
        self.count_for_source(
            key,
            match found {
                Lookup::Found(..) => |source| &source.hits,
                Lookup::Absent => |source| &source.negative_hits,
                Lookup::Missing { .. } => |source| &source.misses,
            },
        );
        found
    }

    /// Adds one to `counter` of `key`'s source: how every read path counts
    /// its answer per source.
    fn count_for_source(&self, key: &Key, counter: fn(&SourceCounts) -> &AtomicU64) {
        self.inner
            .sources
            .with(key.source(), |source| bump(counter(source)));
    }

    /// Looks through the tiers without counting a per-source hit or miss;
    /// `tally` says whether the tiers' hits and misses are counted.
    pub(crate) async fn look_through<V: CacheValue>(&self, key: &Key, tally: Tally) -> Lookup<V> {
        match self.ask_ready::<V>(key, Timestamp::now(), tally, Reach::InPlace) {
            TopAnswer::Hit(value, header) => Lookup::Found(value, header),
            top => self.look_through_from(key, tally, top).await,
        }
    }

    /// What the tiers answer at once ([`Tier::get_ready`]), asked in order
    /// for as long as each answers "not held" and every tier above the
    /// next is `answers_without_io` (so that a hit there is copied up at
    /// once): a fresh hit is finished here, counted and copied up, with no
    /// future created (and, in the top tier, nothing allocated); anything
    /// else is handed to [`TieredCache::look_through_from`], which does not
    /// ask those tiers again.
    ///
    /// Only a hit is counted here: whoever takes a `Missed` or `Held`
    /// answer counts the misses of the tiers above it, so a caller that
    /// drops the answer and looks again counts nothing twice.
    fn ask_ready<V: CacheValue>(
        &self,
        key: &Key,
        now: Timestamp,
        tally: Tally,
        reach: Reach,
    ) -> TopAnswer<V> {
        if !self.inner.enabled {
            return TopAnswer::Missed { asked: 0 };
        }
        // The top tier first, on a path of its own: a plain hit there is
        // the most common answer, and the walk below costs it instructions.
        let Some(top) = self.inner.layers.first() else {
            return TopAnswer::Missed { asked: 0 };
        };
        if !reach.asks(top) {
            return TopAnswer::Missed { asked: 0 };
        }
        let mut answer = None;
        let readiness = top.tier.get_ready(key, &mut |entry| {
            answer = Some(
                entry.map(|entry| match self.fresh_decoded::<V>(key, entry, now) {
                    Some(value) => {
                        Self::count_hit(top, entry, tally);
                        TopAnswer::Hit(value, entry.header)
                    }
                    None => self.answer_at(0, key, entry, now, tally),
                }),
            );
        });
        match (readiness, answer) {
            (Readiness::Answered, Some(Some(found))) => found,
            (Readiness::Answered, Some(None)) if top.answers_without_io => {
                self.ask_below(key, now, tally, reach)
            }
            (Readiness::Answered, Some(None)) => TopAnswer::Missed { asked: 1 },
            _ => TopAnswer::Missed { asked: 0 },
        }
    }

    /// [`TieredCache::ask_ready`] of the tiers under a top tier that
    /// answers without I/O and does not hold the key.
    #[inline(never)]
    fn ask_below<V: CacheValue>(
        &self,
        key: &Key,
        now: Timestamp,
        tally: Tally,
        reach: Reach,
    ) -> TopAnswer<V> {
        for (index, layer) in self.inner.layers.iter().enumerate().skip(1) {
            if !reach.asks(layer) {
                return TopAnswer::Missed { asked: index };
            }
            let mut answer = None;
            let readiness = layer.tier.get_ready(key, &mut |entry| {
                answer = Some(entry.map(|entry| self.answer_at(index, key, entry, now, tally)));
            });
            match (readiness, answer) {
                (Readiness::Answered, Some(None)) => {
                    if !layer.answers_without_io {
                        // A hit below could not be copied up at once.
                        return TopAnswer::Missed { asked: index + 1 };
                    }
                }
                (Readiness::Answered, Some(Some(found))) => return found,
                _ => return TopAnswer::Missed { asked: index },
            }
        }
        TopAnswer::Missed {
            asked: self.inner.layers.len(),
        }
    }

    /// What the entry tier `index` lent means, when every tier above it
    /// missed: a plain fresh hit (counted, and copied up at once), or the
    /// entry held for the full lookup.
    fn answer_at<V: CacheValue>(
        &self,
        index: usize,
        key: &Key,
        entry: &Entry,
        now: Timestamp,
        tally: Tally,
    ) -> TopAnswer<V> {
        let layer = &self.inner.layers[index];
        let value = self
            .fresh_decoded::<V>(key, entry, now)
            .or_else(|| self.fresh_undecoded::<V>(key, entry, now));
        match value {
            Some(value) if self.copy_up_at_once(key, entry, &value, index, now) => {
                for above in &self.inner.layers[..index] {
                    tally.bump(&above.counters.local().misses);
                }
                Self::count_hit(layer, entry, tally);
                TopAnswer::Hit(value, entry.header)
            }
            _ => TopAnswer::Held {
                at: index,
                entry: Box::new(entry.clone()),
            },
        }
    }

    /// [`TieredCache::fresh_decoded`] for an entry a store read from its
    /// bytes: decoded here, and `None` for anything `classify` must see
    /// (it decodes again, to count and log a failure).
    fn fresh_undecoded<V: CacheValue>(
        &self,
        key: &Key,
        entry: &Entry,
        now: Timestamp,
    ) -> Option<Arc<V>> {
        if entry.decoded.is_some() || !self.is_plain_fresh(key, &entry.header, now) {
            return None;
        }
        self.decode::<V>(entry).ok()
    }

    /// Copies a hit of tier `index` into the tiers above it, all of which
    /// answer without I/O; `false` if one of them handed its copy back,
    /// and the full lookup copies it up instead.
    fn copy_up_at_once<V: CacheValue>(
        &self,
        key: &Key,
        entry: &Entry,
        value: &Arc<V>,
        index: usize,
        now: Timestamp,
    ) -> bool {
        if index == 0 {
            return true;
        }
        let decoded = Decoded::new(Arc::clone(value));
        for layer in &self.inner.layers[..index] {
            let copy = Self::copy_for(layer, entry, Some(decoded.clone()), now);
            let len = copy.encoded_len() as u64;
            match layer.tier.set_ready(key, copy) {
                SetReadiness::Done(result) => {
                    bump(&layer.counters.local().copy_ups);
                    Self::count_write(layer, key, len, result);
                }
                // Only a tier that breaks its `answers_without_io` promise
                // (the conformance suite checks it) gets here; the tiers
                // written so far are written again.
                SetReadiness::NeedsIo(_) => return false,
            }
        }
        true
    }

    /// Asks the tiers in order, starting with what the top tier already
    /// answered, if it did.
    async fn look_through_from<V: CacheValue>(
        &self,
        key: &Key,
        tally: Tally,
        top: TopAnswer<V>,
    ) -> Lookup<V> {
        if !self.inner.enabled {
            return Lookup::Missing {
                stale: None,
                retained: None,
            };
        }
        let (start, mut held) = match top {
            TopAnswer::Hit(value, header) => return Lookup::Found(value, header),
            TopAnswer::Held { at, entry } => (at, Some(entry)),
            TopAnswer::Missed { asked } => (asked, None),
        };
        for layer in &self.inner.layers[..start] {
            tally.bump(&layer.counters.local().misses);
        }
        let now = Timestamp::now();
        let mut stale: Option<Option<Arc<V>>> = None;
        let mut retained: Option<Box<Entry>> = None;
        for (index, layer) in self.inner.layers.iter().enumerate().skip(start) {
            let result = match held.take() {
                Some(entry) => Ok(Some(*entry)),
                None => layer.tier.get(key).await,
            };
            let entry = match result {
                Ok(entry) => entry,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    tally.bump(&layer.counters.local().decode_failures);
                    tally.bump(&layer.counters.local().misses);
                    tracing::debug!(tier = %layer.name, key = %key, error = %e.report(), "undecodable entry");
                    continue;
                }
                Err(e) => {
                    bump(&layer.counters.local().errors);
                    tracing::warn!(tier = %layer.name, key = %key, error = %e.report(), "tier skipped");
                    continue;
                }
            };
            if index == 0 {
                // A top tier that keeps decoded values but cannot answer
                // without I/O still skips `classify` for a plain hit.
                if let Some(entry) = &entry {
                    if let Some(value) = self.fresh_decoded::<V>(key, entry, now) {
                        Self::count_hit(layer, entry, tally);
                        return Lookup::Found(value, entry.header);
                    }
                }
            }
            match self
                .classify::<V>(layer, index, key, entry, now, tally)
                .await
            {
                Some(Lookup::Missing {
                    stale: found,
                    retained: kept,
                }) => {
                    // A lower tier may hold a fresher copy; keep the first
                    // stale one as the fallback, and the first retained one.
                    if let Some(s) = found {
                        stale.get_or_insert(s);
                    }
                    if retained.is_none() {
                        retained = kept;
                    }
                }
                None => {}
                Some(found) => return found,
            }
        }
        Lookup::Missing { stale, retained }
    }

    /// The value of `entry` when it is the most common answer: fresh, not
    /// negative, of this schema, bound to `key` and kept decoded as a `V`.
    /// Anything else (`None`) goes through [`TieredCache::classify`].
    fn fresh_decoded<V: CacheValue>(
        &self,
        key: &Key,
        entry: &Entry,
        now: Timestamp,
    ) -> Option<Arc<V>> {
        if !self.is_plain_fresh(key, &entry.header, now) {
            return None;
        }
        entry.decoded.as_ref().and_then(Decoded::downcast::<V>)
    }

    /// Whether an entry with this header is the most common answer, which
    /// needs no `classify`: fresh, not negative, of this schema and bound
    /// to `key`.
    fn is_plain_fresh(&self, key: &Key, header: &Header, now: Timestamp) -> bool {
        header.is_fresh(now)
            && !header.is_negative()
            && header.schema_version == self.inner.schema_version
            && header.belongs_to(key)
    }

    /// Counts a hit as [`TieredCache::classify`] would.
    fn count_hit(layer: &Layer, entry: &Entry, tally: Tally) {
        let counts = layer.counters.local();
        add(&counts.bytes_read, entry.encoded_len() as u64);
        tally.bump(&counts.hits);
    }

    /// What one tier's answer for `key` means: a fresh value or "not found"
    /// (copied up into the tiers above), a stale fallback, or nothing
    /// (`None`: missing, dead or undecodable; counted).
    pub(crate) async fn classify<V: CacheValue>(
        &self,
        layer: &Layer,
        index: usize,
        key: &Key,
        entry: Option<Entry>,
        now: Timestamp,
        tally: Tally,
    ) -> Option<Lookup<V>> {
        let Some(entry) = entry else {
            tally.bump(&layer.counters.local().misses);
            return None;
        };
        if let Err(e) = entry.check_key(key) {
            // Bytes copied under another key (by hand, or by a bug): never
            // that other key's value.
            tally.bump(&layer.counters.local().decode_failures);
            tally.bump(&layer.counters.local().misses);
            tracing::debug!(tier = %layer.name, key = %key, reason = e.reason(), "entry is a miss");
            return None;
        }
        add(
            &layer.counters.local().bytes_read,
            entry.encoded_len() as u64,
        );
        let fresh = entry.header.is_fresh(now);
        if !fresh {
            tally.bump(&layer.counters.local().expired);
            tally.bump(&layer.counters.local().misses);
            if !entry.header.is_servable_stale(now) {
                return self
                    .revalidatable(&entry, now)
                    .map(|entry| Lookup::Missing {
                        stale: None,
                        retained: Some(Box::new(entry)),
                    });
            }
        }
        if entry.header.is_negative() {
            if entry.header.schema_version != self.inner.schema_version {
                tally.bump(&layer.counters.local().decode_failures);
                if fresh {
                    // Expired entries were counted as misses above.
                    tally.bump(&layer.counters.local().misses);
                }
                return None;
            }
            if !fresh {
                return Some(Lookup::Missing {
                    stale: Some(None),
                    retained: None,
                });
            }
            tally.bump(&layer.counters.local().hits);
            if index > 0 {
                Box::pin(self.copy_up(key, &entry, None, index, now)).await;
            }
            return Some(Lookup::Absent);
        }
        match self.decode::<V>(&entry) {
            Ok(value) if fresh => {
                tally.bump(&layer.counters.local().hits);
                if index > 0 {
                    let decoded = Decoded::new(Arc::clone(&value));
                    // Boxed, like the other awaits here: inline, their
                    // state would make every read's future (a hit in a
                    // lower tier, a miss) larger, and moving it costs more
                    // than the box on the paths that await them.
                    Box::pin(self.copy_up(key, &entry, Some(decoded), index, now)).await;
                }
                Some(Lookup::Found(value, entry.header))
            }
            Ok(value) => Some(Lookup::Missing {
                stale: Some(Some(value)),
                retained: self.revalidatable(&entry, now).map(Box::new),
            }),
            Err(e) => {
                tally.bump(&layer.counters.local().decode_failures);
                if fresh {
                    tally.bump(&layer.counters.local().misses);
                }
                tracing::debug!(tier = %layer.name, key = %key, reason = e.reason(), error = %e, "entry is a miss");
                Box::pin(self.discard_if_outdated(layer, key, &e)).await;
                None
            }
        }
    }

    /// The first entry of `key` a tier holds that a revalidation can make
    /// fresh again (fresh or expired; see [`TieredCache::revalidatable`]),
    /// read quietly: for a fresh value the caller refused.
    pub(crate) async fn held_for_revalidation(&self, key: &Key) -> Option<Entry> {
        let now = Timestamp::now();
        for layer in &self.inner.layers {
            let Ok(Some(entry)) = layer.tier.get(key).await else {
                continue;
            };
            if entry.check_key(key).is_ok() {
                if let Some(entry) = self.revalidatable(&entry, now) {
                    return Some(entry);
                }
            }
        }
        None
    }

    /// `entry` if a revalidation can make it fresh again: retained, not
    /// "not found", of this schema, and with validators to send.
    fn revalidatable(&self, entry: &Entry, now: Timestamp) -> Option<Entry> {
        let header = &entry.header;
        let usable = header.is_retained(now)
            && !header.is_negative()
            && header.schema_version == self.inner.schema_version
            && crate::revalidate::has_validators(entry);
        usable.then(|| entry.clone())
    }

    pub(crate) fn decode<V: CacheValue>(
        &self,
        entry: &Entry,
    ) -> std::result::Result<Arc<V>, DecodeError> {
        if entry.header.schema_version != self.inner.schema_version {
            return Err(DecodeError::SchemaMismatch {
                found: entry.header.schema_version,
                expected: self.inner.schema_version,
            });
        }
        if let Some(decoded) = &entry.decoded {
            if let Some(value) = decoded.downcast::<V>() {
                return Ok(value);
            }
        }
        entry
            .decode_value::<V>(self.inner.limits, &self.inner.dictionaries)
            .map(Arc::new)
    }

    /// Entries of an older schema are garbage for every reader from now on;
    /// newer ones belong to a newer tool sharing the store and stay.
    async fn discard_if_outdated(&self, layer: &Layer, key: &Key, error: &DecodeError) {
        if let DecodeError::SchemaMismatch { found, expected } = error {
            if found < expected {
                if let Err(e) = layer.tier.delete(key).await {
                    tracing::debug!(tier = %layer.name, key = %key, error = %e.report(), "could not delete outdated entry");
                }
            }
        }
    }

    /// Copies a hit from tier `index` into the tiers above it, keeping the
    /// entry's remaining TTL, capped by each tier's own.
    async fn copy_up(
        &self,
        key: &Key,
        entry: &Entry,
        decoded: Option<Decoded>,
        index: usize,
        now: Timestamp,
    ) {
        let writes = self.inner.layers[..index].iter().map(|layer| {
            bump(&layer.counters.local().copy_ups);
            self.write_one(
                layer,
                key,
                Self::copy_for(layer, entry, decoded.clone(), now),
            )
        });
        join_all(writes).await;
    }

    /// The copy of a lower tier's hit that `layer` stores: the entry's
    /// remaining TTL, capped by the tier's own.
    fn copy_for(layer: &Layer, entry: &Entry, decoded: Option<Decoded>, now: Timestamp) -> Entry {
        let capped = layer
            .tier
            .max_ttl()
            .map_or(Timestamp::NEVER, |cap| now.saturating_add(cap));
        let header = entry
            .header
            .with_expiry(entry.header.expires_at.min(capped));
        Entry {
            decoded,
            ..entry.with_header(header)
        }
    }
}

/// How a tier is written: the entry whole, or as a renewal of the one it
/// holds ([`Tier::renew`]).
#[derive(Debug, Clone, Copy)]
enum Write {
    Whole,
    Renewal,
}

fn tier_error(error: Error, tier: &str, op: Operation) -> Error {
    let error = if error.tier().is_none() {
        error.with_tier(tier)
    } else {
        error
    };
    if error.operation().is_none() {
        error.with_operation(op)
    } else {
        error
    }
}

const _: () = {
    const fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<TieredCache>();
};
