//! `TieredCache`: a stack of tiers behind one typed API.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::join_all;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tierstack_core::{
    Bytes, ClearScope, Codec, Compression, CompressionKind, DecodeError, DecodeLimits, Decoded,
    Dictionaries, Entry, EntryFlags, EntryMeta, Error, ErrorKind, Header, Health, Key, Operation,
    Result, Tier, TierSize, Timestamp,
};
use tracing::Instrument as _;

use crate::flight::{self, Answer, Flights, Joined};
use crate::policy::{Policies, SourcePolicy};
use crate::stats::{CacheStats, LayerCounters, LayerStats, Sources, add, bump};

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

/// How one `get_or_fetch` call fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FetchOptions {
    /// Freshness of the fetched value.
    pub ttl: Ttl,
    /// When a stale value is at hand and the fetch has not answered after
    /// this long, the stale value is returned (and the fetch dropped).
    pub soft_timeout: Option<Duration>,
    /// The longest wait for the fetch; past it the call returns the stale
    /// value if there is one, else an error of kind [`ErrorKind::Timeout`].
    pub hard_timeout: Option<Duration>,
    /// Overrides the stale window of the source's policy for this write.
    pub stale_for: Option<Duration>,
}

impl FetchOptions {
    /// Options with a TTL.
    pub fn ttl(ttl: impl Into<Ttl>) -> Self {
        Self {
            ttl: ttl.into(),
            ..Self::default()
        }
    }

    /// Sets the soft timeout.
    #[must_use]
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.soft_timeout = Some(timeout);
        self
    }

    /// Sets the hard timeout.
    #[must_use]
    pub fn hard_timeout(mut self, timeout: Duration) -> Self {
        self.hard_timeout = Some(timeout);
        self
    }

    /// Sets the stale window of the written value.
    #[must_use]
    pub fn stale_for(mut self, window: Duration) -> Self {
        self.stale_for = Some(window);
        self
    }
}

impl From<Ttl> for FetchOptions {
    fn from(ttl: Ttl) -> Self {
        Self::ttl(ttl)
    }
}

impl From<Duration> for FetchOptions {
    fn from(ttl: Duration) -> Self {
        Self::ttl(ttl)
    }
}

/// Where a value returned by [`TieredCache::get_or_fetch_with`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched<V> {
    /// A fresh entry of some tier.
    Cached(Arc<V>),
    /// The fetch, just now (or a concurrent caller's fetch).
    Fetched(Arc<V>),
    /// An expired entry inside its stale window, because the fetch failed,
    /// was too slow, or the cache is offline.
    Stale(Arc<V>),
}

impl<V> Fetched<V> {
    /// The value, wherever it came from.
    pub fn value(&self) -> &Arc<V> {
        match self {
            Self::Cached(v) | Self::Fetched(v) | Self::Stale(v) => v,
        }
    }

    /// The value, wherever it came from.
    pub fn into_value(self) -> Arc<V> {
        match self {
            Self::Cached(v) | Self::Fetched(v) | Self::Stale(v) => v,
        }
    }

    /// Whether the value is a stale fallback.
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::Stale(_))
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    pub(crate) tier: Arc<dyn Tier>,
    pub(crate) name: Arc<str>,
    pub(crate) counters: LayerCounters,
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
    pub(crate) sources: Sources,
    pub(crate) policies: Policies,
    pub(crate) default_stale_for: Duration,
    pub(crate) default_negative_ttl: Duration,
    pub(crate) offline: std::sync::atomic::AtomicBool,
    /// Keys with a background refresh under way (one per key at a time).
    pub(crate) refreshing: std::sync::Mutex<std::collections::HashSet<Key>>,
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
pub trait CacheValue: Serialize + DeserializeOwned + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> CacheValue for T {}

/// What the tiers hold for a key.
enum Lookup<V> {
    /// A fresh value and its header (for its age).
    Found(Arc<V>, Header),
    /// A fresh "not found" answer.
    Absent,
    /// Nothing fresh; `stale` is the first entry found inside its stale
    /// window (`Some(None)`: a stale "not found").
    #[allow(clippy::option_option)] // the inner `None` is a cached "not found"
    Missing { stale: Option<Option<Arc<V>>> },
}

/// The outcome of the shared fetch path; `None` values are "not found".
pub(crate) enum Outcome<V> {
    Cached(Option<Arc<V>>),
    Fetched(Option<Arc<V>>),
    Stale(Option<Arc<V>>),
}

impl<V> Outcome<V> {
    /// For callers that need a value: where it came from. Never sees
    /// "not found" (such callers resolve with `negatives: false`).
    pub(crate) fn into_fetched(self, key: &Key) -> Result<Fetched<V>> {
        let missing = || {
            Error::new(ErrorKind::Other, format!("{key}: no value"))
                .with_operation(Operation::Fetch)
        };
        match self {
            Self::Cached(v) => v.map(Fetched::Cached).ok_or_else(missing),
            Self::Fetched(v) => v.map(Fetched::Fetched).ok_or_else(missing),
            Self::Stale(v) => v.map(Fetched::Stale).ok_or_else(missing),
        }
    }
}

impl TieredCache {
    /// Starts a builder.
    pub fn builder() -> crate::TieredCacheBuilder {
        crate::TieredCacheBuilder::default()
    }

    pub(crate) fn from_inner(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Reads a fresh value. A miss, an expired, negative or undecodable entry
    /// and a failing tier all give `None` (and are counted); reads never fail.
    pub async fn get<V: CacheValue>(&self, key: &Key) -> Option<Arc<V>> {
        match self.lookup(key).await {
            Lookup::Found(v, _) => Some(v),
            Lookup::Absent | Lookup::Missing { .. } => None,
        }
    }

    /// Writes a value through every tier. Fails only if the value cannot be
    /// encoded; a tier that fails to store it is skipped, logged and counted
    /// (see [`TieredCache::stats`]).
    pub async fn set<V: CacheValue>(&self, key: &Key, value: V, ttl: impl Into<Ttl>) -> Result<()> {
        if !self.inner.enabled {
            return Ok(());
        }
        let value = Arc::new(value);
        let entry = self.encode(&*value)?;
        let options = FetchOptions::ttl(ttl);
        self.write_through(key, &entry, Some(value as Decoded), options, false)
            .await;
        Ok(())
    }

    /// Returns the cached value, or runs `fetch` once, caches its result and
    /// returns it.
    ///
    /// - Concurrent callers of the same cold key share one `fetch` call. If it
    ///   fails, nothing is cached and every waiting caller gets the error (of
    ///   kind [`ErrorKind::Fetch`], with the fetch error as its source). If it
    ///   panics, waiting callers get an [`ErrorKind::FetchPanicked`] error and
    ///   the panic continues in the caller that ran it. If that caller is
    ///   cancelled, a waiting caller takes over.
    /// - Stale-if-error: when the fetch fails or times out and an expired
    ///   entry is inside its stale window, that value is returned (and
    ///   counted as stale served). [`TieredCache::get_or_fetch_with`] says
    ///   which it was.
    /// - Offline ([`TieredCache::set_offline`]): `fetch` is never called;
    ///   fresh or stale cached values are returned, anything else is an
    ///   [`ErrorKind::Unavailable`] error.
    /// - A tier that fails while caching the value does not turn the fetched
    ///   value into an error.
    pub async fn get_or_fetch<V, F, Fut, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> Result<Arc<V>>
    where
        V: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<BoxError>,
    {
        self.get_or_fetch_with(key, options, fetch)
            .await
            .map(Fetched::into_value)
    }

    /// [`TieredCache::get_or_fetch`], saying whether the value was cached,
    /// fetched, or a stale fallback.
    pub async fn get_or_fetch_with<V, F, Fut, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> Result<Fetched<V>>
    where
        V: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<BoxError>,
    {
        let fetch = || async { fetch().await.map(Some) };
        let outcome = self
            .resolve(key, options.into(), false, &mut None, fetch)
            .await?;
        outcome.into_fetched(key)
    }

    /// Like [`TieredCache::get_or_fetch`] for sources that can answer "not
    /// found": `fetch` returns `Ok(None)` for that, and the answer is cached
    /// as a negative entry for the source's negative TTL (default 5 minutes),
    /// so a missing item is not asked for again on every call.
    pub async fn get_or_fetch_optional<V, F, Fut, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> Result<Option<Arc<V>>>
    where
        V: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        match self
            .resolve(key, options.into(), true, &mut None, fetch)
            .await?
        {
            Outcome::Cached(v) | Outcome::Fetched(v) | Outcome::Stale(v) => Ok(v),
        }
    }

    /// Looks up many keys with one batched read per tier, then calls
    /// `fetch_missing` once with only the keys no tier could answer (the
    /// partial hit case), and writes its answers through with one batched
    /// write per tier.
    ///
    /// - The result has one slot per input key, in order; duplicate keys
    ///   share one lookup and one fetch slot.
    /// - `fetch_missing` answers `(key, Some(value))`, or `(key, None)` for
    ///   "not found" (cached as a negative entry); keys it leaves out are
    ///   `None` and not cached.
    /// - If `fetch_missing` fails, keys with a stale value get it; if any
    ///   missing key has none, the call fails with the fetch error.
    /// - Offline, `fetch_missing` is not called: missing keys are `None`.
    /// - Batch fetches do not join the single-flight of `get_or_fetch`.
    pub async fn get_or_fetch_many<V, F, Fut, E>(
        &self,
        keys: &[Key],
        options: impl Into<FetchOptions>,
        fetch_missing: F,
    ) -> Result<Vec<Option<Arc<V>>>>
    where
        V: CacheValue,
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<(Key, Option<V>)>, E>>,
        E: Into<BoxError>,
    {
        let options = options.into();
        let mut unique: Vec<Key> = Vec::with_capacity(keys.len());
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        for key in keys {
            if seen.insert(key.clone()) {
                unique.push(key.clone());
            }
        }
        let mut answers: std::collections::HashMap<Key, Option<Arc<V>>> =
            std::collections::HashMap::with_capacity(unique.len());
        let mut stale: std::collections::HashMap<Key, Option<Arc<V>>> =
            std::collections::HashMap::new();
        if !self.inner.enabled {
            return self
                .fetch_batch(keys, unique, fetch_missing, options, answers, stale)
                .await;
        }
        let mut pending = unique;
        let now = Timestamp::now();
        for (index, layer) in self.inner.layers.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            let found = match layer
                .tier
                .get_many(&pending)
                .instrument(tracing::trace_span!("tier", tier = %layer.name, op = "get_many"))
                .await
            {
                Ok(found) => found,
                Err(e) => {
                    bump(&layer.counters.errors);
                    tracing::warn!(tier = %layer.name, error = %e, "tier skipped");
                    continue;
                }
            };
            let mut still = Vec::with_capacity(pending.len());
            for (key, entry) in pending.into_iter().zip(found) {
                match self.classify::<V>(layer, index, &key, entry, now).await {
                    Some(Lookup::Found(v, _)) => {
                        answers.insert(key, Some(v));
                    }
                    Some(Lookup::Absent) => {
                        answers.insert(key, None);
                    }
                    Some(Lookup::Missing { stale: Some(s) }) => {
                        stale.entry(key.clone()).or_insert(s);
                        still.push(key);
                    }
                    Some(Lookup::Missing { stale: None }) | None => still.push(key),
                }
            }
            pending = still;
        }
        for key in answers.keys().chain(pending.iter()) {
            let source = self.inner.sources.get(key.source());
            if answers.contains_key(key) {
                bump(&source.hits);
            } else {
                bump(&source.misses);
            }
        }
        if pending.is_empty() || self.is_offline() {
            for key in pending {
                if let Some(value) = stale.remove(&key) {
                    bump(&self.inner.sources.get(key.source()).stale_served);
                    answers.insert(key, value);
                }
            }
            return Ok(keys
                .iter()
                .map(|k| answers.get(k).cloned().flatten())
                .collect());
        }
        self.fetch_batch(keys, pending, fetch_missing, options, answers, stale)
            .await
    }

    /// The fetch half of [`TieredCache::get_or_fetch_many`].
    async fn fetch_batch<V, F, Fut, E>(
        &self,
        keys: &[Key],
        pending: Vec<Key>,
        fetch_missing: F,
        options: FetchOptions,
        mut answers: std::collections::HashMap<Key, Option<Arc<V>>>,
        mut stale: std::collections::HashMap<Key, Option<Arc<V>>>,
    ) -> Result<Vec<Option<Arc<V>>>>
    where
        V: CacheValue,
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<(Key, Option<V>)>, E>>,
        E: Into<BoxError>,
    {
        let mut sources: Vec<&str> = pending.iter().map(Key::source).collect();
        sources.sort_unstable();
        sources.dedup();
        for source in &sources {
            bump(&self.inner.sources.get(source).fetches);
        }
        let asked: std::collections::HashSet<Key> = pending.iter().cloned().collect();
        let fetched = self
            .within_timeouts(fetch_missing(pending.clone()), &options, false)
            .await;
        let error = match fetched {
            Some(Ok(list)) => {
                let mut writes = Vec::with_capacity(list.len());
                for (key, value) in list {
                    if !asked.contains(&key) || answers.contains_key(&key) {
                        continue;
                    }
                    let value = value.map(Arc::new);
                    writes.push((key.clone(), value.clone()));
                    answers.insert(key, value);
                }
                if self.inner.enabled {
                    self.store_many(writes, options).await;
                }
                return Ok(keys
                    .iter()
                    .map(|k| answers.get(k).cloned().flatten())
                    .collect());
            }
            Some(Err(e)) => fetch_error(&pending[0], e.into()),
            None => Error::new(ErrorKind::Timeout, "batch fetch did not answer in time")
                .with_operation(Operation::Fetch),
        };
        for source in &sources {
            bump(&self.inner.sources.get(source).fetch_errors);
        }
        for key in &pending {
            match stale.remove(key) {
                Some(value) => {
                    bump(&self.inner.sources.get(key.source()).stale_served);
                    answers.insert(key.clone(), value);
                }
                None => return Err(error),
            }
        }
        Ok(keys
            .iter()
            .map(|k| answers.get(k).cloned().flatten())
            .collect())
    }

    /// Writes fetched values and "not found" answers, one batch per tier.
    async fn store_many<V: CacheValue>(
        &self,
        items: Vec<(Key, Option<Arc<V>>)>,
        options: FetchOptions,
    ) {
        let now = Timestamp::now();
        let mut encoded = Vec::with_capacity(items.len());
        for (key, value) in items {
            match &value {
                Some(v) => match self.encode(&**v) {
                    Ok(entry) => encoded.push((key, entry, Some(Arc::clone(v) as Decoded), false)),
                    Err(e) => tracing::warn!(key = %key, error = %e, "fetched value not cached"),
                },
                None => encoded.push((key, self.negative_entry(), None, true)),
            }
        }
        if encoded.is_empty() {
            return;
        }
        let writes = self.inner.layers.iter().map(|layer| {
            let batch: Vec<(Key, Entry)> = encoded
                .iter()
                .map(|(key, entry, decoded, negative)| {
                    let entry =
                        self.entry_for(layer, key, entry, decoded.clone(), options, *negative, now);
                    (key.clone(), entry)
                })
                .collect();
            async move {
                let (count, len) = (
                    batch.len() as u64,
                    batch.iter().map(|(_, e)| e.encoded_len() as u64).sum(),
                );
                match layer.tier.set_many(batch).await {
                    Ok(()) => {
                        add(&layer.counters.writes, count);
                        add(&layer.counters.bytes_written, len);
                    }
                    Err(e) => {
                        add(&layer.counters.write_errors, count);
                        tracing::warn!(tier = %layer.name, error = %e, "batch write skipped");
                    }
                }
            }
        });
        join_all(writes).await;
    }

    /// Turns offline mode on or off: while offline, no fetch runs and only
    /// cached values (fresh or stale) are served.
    pub fn set_offline(&self, offline: bool) {
        self.inner
            .offline
            .store(offline, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether the cache is offline.
    pub fn is_offline(&self) -> bool {
        self.inner.offline.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The policy that applies to `source`.
    pub fn policy(&self, source: &str) -> SourcePolicy {
        self.inner.policies.get(source)
    }

    /// The shared path of every `get_or_fetch` flavour. `negatives`: whether
    /// cached "not found" answers count (callers that cannot return one
    /// fetch again instead).
    pub(crate) async fn resolve<V, F, Fut, E>(
        &self,
        key: &Key,
        options: FetchOptions,
        negatives: bool,
        cached_header: &mut Option<Header>,
        fetch: F,
    ) -> Result<Outcome<V>>
    where
        V: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        let source = self.inner.sources.get(key.source());
        if !self.inner.enabled {
            bump(&source.fetches);
            return match fetch().await {
                Ok(v) => Ok(Outcome::Fetched(v.map(Arc::new))),
                Err(e) => {
                    bump(&source.fetch_errors);
                    Err(fetch_error(key, e.into()))
                }
            };
        }
        let mut stale = match self.lookup(key).await {
            Lookup::Found(v, header) => {
                *cached_header = Some(header);
                return Ok(Outcome::Cached(Some(v)));
            }
            Lookup::Absent if negatives => return Ok(Outcome::Cached(None)),
            Lookup::Absent => None,
            Lookup::Missing { stale } => stale,
        };
        if self.is_offline() {
            return match stale {
                Some(v) => {
                    bump(&source.stale_served);
                    Ok(Outcome::Stale(v))
                }
                None => Err(Error::new(
                    ErrorKind::Unavailable,
                    format!("offline, and {key} is not cached"),
                )
                .with_operation(Operation::Fetch)),
            };
        }
        let leader = loop {
            match self.inner.flights.join(key) {
                Joined::Leader(guard) => break guard,
                Joined::Waiter(rx) => {
                    bump(&source.coalesced);
                    match flight::wait(rx).await {
                        Some(Ok(answer)) => match typed::<V>(&answer) {
                            Some(value) if answer.stale => return Ok(Outcome::Stale(value)),
                            Some(value) if value.is_some() || negatives => {
                                return Ok(Outcome::Fetched(value));
                            }
                            // Another caller fetched the key as a different
                            // type, or as "not found" that we cannot return.
                            _ => tokio::task::yield_now().await,
                        },
                        Some(Err(e)) => return Err(e),
                        None => {}
                    }
                }
            }
        };
        // A leader that finished just before we joined has already written
        // the value: look again before fetching.
        match self.lookup_quietly::<V>(key).await {
            Lookup::Found(v, _) => {
                leader.publish(Ok(answer(Some(&v), false)));
                return Ok(Outcome::Cached(Some(v)));
            }
            Lookup::Absent if negatives => {
                leader.publish(Ok(answer::<V>(None, false)));
                return Ok(Outcome::Cached(None));
            }
            Lookup::Absent => {}
            Lookup::Missing { stale: again } => stale = stale.or(again),
        }
        bump(&source.fetches);
        let run = AssertUnwindSafe(fetch()).catch_unwind();
        let error = match self.within_timeouts(run, &options, stale.is_some()).await {
            Some(Ok(Ok(value))) => {
                let value = value.map(Arc::new);
                self.store_fetched(key, value.as_ref(), options).await;
                leader.publish(Ok(answer(value.as_ref(), false)));
                return Ok(Outcome::Fetched(value));
            }
            Some(Ok(Err(e))) => fetch_error(key, e.into()),
            Some(Err(panic)) => {
                bump(&source.fetch_errors);
                leader.publish(Err(Error::new(
                    ErrorKind::FetchPanicked,
                    format!("fetch for {key} panicked"),
                )
                .with_operation(Operation::Fetch)));
                std::panic::resume_unwind(panic)
            }
            None => Error::new(
                ErrorKind::Timeout,
                format!("fetch for {key} did not answer in time"),
            )
            .with_operation(Operation::Fetch),
        };
        bump(&source.fetch_errors);
        if let Some(value) = stale {
            bump(&source.stale_served);
            tracing::info!(key = %key, error = %error, "serving a stale value");
            leader.publish(Ok(answer(value.as_ref(), true)));
            return Ok(Outcome::Stale(value));
        }
        leader.publish(Err(error.clone()));
        Err(error)
    }

    /// Waits for `run`: up to the soft timeout when a stale fallback exists,
    /// and never past the hard timeout. `None` when a timeout fired.
    async fn within_timeouts<T>(
        &self,
        run: impl Future<Output = T>,
        options: &FetchOptions,
        has_stale: bool,
    ) -> Option<T> {
        let limit = match (
            options.soft_timeout.filter(|_| has_stale),
            options.hard_timeout,
        ) {
            (Some(soft), Some(hard)) => Some(soft.min(hard)),
            (Some(t), None) | (None, Some(t)) => Some(t),
            (None, None) => None,
        };
        match limit {
            Some(limit) => tokio::time::timeout(limit, run).await.ok(),
            None => Some(run.await),
        }
    }

    /// Writes a fetched value, or a negative entry for "not found".
    pub(crate) async fn store_fetched<V: CacheValue>(
        &self,
        key: &Key,
        value: Option<&Arc<V>>,
        options: FetchOptions,
    ) {
        let Some(value) = value else {
            let entry = self.negative_entry();
            self.write_through(key, &entry, None, options, true).await;
            return;
        };
        match self.encode(&**value) {
            Ok(entry) => {
                let decoded = Some(Arc::clone(value) as Decoded);
                self.write_through(key, &entry, decoded, options, false)
                    .await;
            }
            Err(e) => tracing::warn!(key = %key, error = %e, "fetched value not cached"),
        }
    }

    /// Removes a key from every tier. Every tier is tried; the first failure
    /// is returned after all were tried. `true` if any tier held the key.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let results = join_all(self.inner.layers.iter().map(|layer| {
            layer
                .tier
                .delete(key)
                .instrument(tracing::trace_span!("tier", tier = %layer.name, op = "delete"))
        }))
        .await;
        self.first_error(results, Operation::Delete)
            .map(|found| found.into_iter().any(|f| f))
    }

    /// Clears `scope` in every tier; returns the number removed per tier,
    /// top first. Every tier is tried; the first failure is returned after.
    pub async fn clear(&self, scope: ClearScope) -> Result<Vec<(String, u64)>> {
        let results = join_all(self.inner.layers.iter().map(|layer| {
            layer
                .tier
                .clear(scope.clone())
                .instrument(tracing::trace_span!("tier", tier = %layer.name, op = "clear"))
        }))
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
        CacheStats {
            layers: self
                .inner
                .layers
                .iter()
                .map(|l| LayerStats::from_counters(&l.name, &l.counters, l.tier.stats()))
                .collect(),
            sources: self.inner.sources.snapshot(),
        }
    }

    /// The tiers, top (L1) first.
    pub fn tiers(&self) -> impl Iterator<Item = &Arc<dyn Tier>> {
        self.inner.layers.iter().map(|l| &l.tier)
    }

    /// The application schema version entries are written with and must
    /// carry to be read.
    pub fn schema_version(&self) -> u32 {
        self.inner.schema_version
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
                    bump(&layer.counters.errors);
                    tracing::warn!(tier = %layer.name, op = op.name(), error = %e, "tier failed");
                    first.get_or_insert(tier_error(e, &layer.name, op));
                }
            }
        }
        first.map_or(Ok(out), Err)
    }

    fn encode<V: Serialize>(&self, value: &V) -> Result<Entry> {
        let now = Timestamp::now();
        let meta = EntryMeta {
            schema_version: self.inner.schema_version,
            created_at: now,
            expires_at: Timestamp::NEVER,
            stale_until: Timestamp::NEVER,
            flags: EntryFlags::empty(),
        };
        Ok(Entry::encode(
            value,
            self.inner.codec,
            &self.inner.compression,
            meta,
            self.inner.limits,
        )?)
    }

    /// An entry recording that the source answered "not found".
    fn negative_entry(&self) -> Entry {
        let now = Timestamp::now();
        let meta = EntryMeta {
            schema_version: self.inner.schema_version,
            created_at: now,
            expires_at: Timestamp::NEVER,
            stale_until: Timestamp::NEVER,
            flags: EntryFlags::NEGATIVE,
        };
        Entry::from_body(meta, Codec::Json, CompressionKind::None, 0, 0, Bytes::new())
    }

    /// When a write expires in `layer`: the call's TTL, else the source's
    /// policy, else the tier's own TTL, else the cache's default; always
    /// capped by the tier's TTL. Negative entries use the negative TTL.
    fn expiry_for(
        &self,
        layer: &Layer,
        ttl: Ttl,
        policy: &SourcePolicy,
        negative: bool,
        now: Timestamp,
    ) -> Timestamp {
        let cap = layer.tier.max_ttl();
        let wanted = if negative {
            Some(
                policy
                    .negative_ttl
                    .unwrap_or(self.inner.default_negative_ttl),
            )
        } else {
            match ttl {
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
    fn entry_for(
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
        let expiry = self.expiry_for(layer, options.ttl, &policy, negative, now);
        Entry {
            header: entry.header.with_expiry_and_window(expiry, window),
            body: entry.body.clone(),
            decoded,
        }
    }

    async fn write_through(
        &self,
        key: &Key,
        entry: &Entry,
        decoded: Option<Decoded>,
        options: FetchOptions,
        negative: bool,
    ) {
        let now = Timestamp::now();
        let writes = self.inner.layers.iter().map(|layer| {
            let copy = self.entry_for(layer, key, entry, decoded.clone(), options, negative, now);
            self.write_one(layer, key, copy)
        });
        join_all(writes).await;
    }

    async fn write_one(&self, layer: &Layer, key: &Key, entry: Entry) {
        let len = entry.encoded_len() as u64;
        let result = layer
            .tier
            .set(key, entry)
            .instrument(tracing::trace_span!("tier", tier = %layer.name, op = "set"))
            .await;
        match result {
            Ok(()) => {
                bump(&layer.counters.writes);
                add(&layer.counters.bytes_written, len);
            }
            Err(e) => {
                bump(&layer.counters.write_errors);
                tracing::warn!(tier = %layer.name, key = %key, error = %e, "write skipped");
            }
        }
    }

    async fn lookup<V: CacheValue>(&self, key: &Key) -> Lookup<V> {
        let found = self.lookup_quietly(key).await;
        let source = self.inner.sources.get(key.source());
        match found {
            Lookup::Found(..) => bump(&source.hits),
            Lookup::Absent => bump(&source.negative_hits),
            Lookup::Missing { .. } => bump(&source.misses),
        }
        found
    }

    /// Looks through the tiers without counting a per-source hit or miss.
    async fn lookup_quietly<V: CacheValue>(&self, key: &Key) -> Lookup<V> {
        if !self.inner.enabled {
            return Lookup::Missing { stale: None };
        }
        let now = Timestamp::now();
        let mut stale: Option<Option<Arc<V>>> = None;
        for (index, layer) in self.inner.layers.iter().enumerate() {
            let result = layer
                .tier
                .get(key)
                .instrument(tracing::trace_span!("tier", tier = %layer.name, op = "get"))
                .await;
            let entry = match result {
                Ok(entry) => entry,
                Err(e) if e.kind() == ErrorKind::Corrupt => {
                    bump(&layer.counters.decode_failures);
                    bump(&layer.counters.misses);
                    tracing::debug!(tier = %layer.name, key = %key, error = %e, "undecodable entry");
                    continue;
                }
                Err(e) => {
                    bump(&layer.counters.errors);
                    tracing::warn!(tier = %layer.name, key = %key, error = %e, "tier skipped");
                    continue;
                }
            };
            match self.classify::<V>(layer, index, key, entry, now).await {
                Some(Lookup::Missing { stale: Some(s) }) => {
                    // A lower tier may hold a fresher copy; keep the first
                    // stale one as the fallback.
                    stale.get_or_insert(s);
                }
                Some(Lookup::Missing { stale: None }) | None => {}
                Some(found) => return found,
            }
        }
        Lookup::Missing { stale }
    }

    /// What one tier's answer for `key` means: a fresh value or "not found"
    /// (copied up into the tiers above), a stale fallback, or nothing
    /// (`None`: missing, dead or undecodable; counted).
    async fn classify<V: CacheValue>(
        &self,
        layer: &Layer,
        index: usize,
        key: &Key,
        entry: Option<Entry>,
        now: Timestamp,
    ) -> Option<Lookup<V>> {
        let Some(entry) = entry else {
            bump(&layer.counters.misses);
            return None;
        };
        add(&layer.counters.bytes_read, entry.encoded_len() as u64);
        let fresh = entry.header.is_fresh(now);
        if !fresh {
            bump(&layer.counters.expired);
            bump(&layer.counters.misses);
            if !entry.header.is_servable_stale(now) {
                return None;
            }
        }
        if entry.header.is_negative() {
            if entry.header.schema_version != self.inner.schema_version {
                bump(&layer.counters.decode_failures);
                return None;
            }
            if !fresh {
                return Some(Lookup::Missing { stale: Some(None) });
            }
            bump(&layer.counters.hits);
            if index > 0 {
                self.copy_up(key, &entry, None, index, now).await;
            }
            return Some(Lookup::Absent);
        }
        match self.decode::<V>(&entry) {
            Ok(value) if fresh => {
                bump(&layer.counters.hits);
                if index > 0 {
                    let decoded = Arc::clone(&value) as Decoded;
                    self.copy_up(key, &entry, Some(decoded), index, now).await;
                }
                Some(Lookup::Found(value, entry.header))
            }
            Ok(value) => Some(Lookup::Missing {
                stale: Some(Some(value)),
            }),
            Err(e) => {
                bump(&layer.counters.decode_failures);
                if fresh {
                    bump(&layer.counters.misses);
                }
                tracing::debug!(tier = %layer.name, key = %key, reason = e.reason(), error = %e, "entry is a miss");
                self.discard_if_outdated(layer, key, &e).await;
                None
            }
        }
    }

    fn decode<V: CacheValue>(&self, entry: &Entry) -> std::result::Result<Arc<V>, DecodeError> {
        if entry.header.schema_version != self.inner.schema_version {
            return Err(DecodeError::SchemaMismatch {
                found: entry.header.schema_version,
                expected: self.inner.schema_version,
            });
        }
        if let Some(decoded) = &entry.decoded {
            if let Ok(value) = Arc::clone(decoded).downcast::<V>() {
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
                    tracing::debug!(tier = %layer.name, key = %key, error = %e, "could not delete outdated entry");
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
            let capped = layer
                .tier
                .max_ttl()
                .map_or(Timestamp::NEVER, |cap| now.saturating_add(cap));
            let header = entry
                .header
                .with_expiry(entry.header.expires_at.min(capped));
            bump(&layer.counters.copy_ups);
            self.write_one(
                layer,
                key,
                Entry {
                    header,
                    body: entry.body.clone(),
                    decoded: decoded.clone(),
                },
            )
        });
        join_all(writes).await;
    }
}

/// A flight answer from a value (`None`: "not found").
fn answer<V: CacheValue>(value: Option<&Arc<V>>, stale: bool) -> Answer {
    Answer {
        value: value.map(|v| Arc::clone(v) as Decoded),
        stale,
    }
}

/// The typed value of a flight answer: `Some(None)` for "not found", `None`
/// when the leader fetched another type.
#[allow(clippy::option_option)] // the inner `None` is a "not found" answer
fn typed<V: CacheValue>(answer: &Answer) -> Option<Option<Arc<V>>> {
    match &answer.value {
        None => Some(None),
        Some(decoded) => Arc::clone(decoded).downcast::<V>().ok().map(Some),
    }
}

fn fetch_error(key: &Key, error: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::new(ErrorKind::Fetch, format!("fetch for {key} failed"))
        .with_operation(Operation::Fetch)
        .with_shared_source(Arc::from(error))
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
