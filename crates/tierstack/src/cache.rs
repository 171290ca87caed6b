//! `TieredCache`: a stack of tiers behind one typed API.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::join_all;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tierstack_core::{
    ClearScope, Codec, Compression, DecodeError, DecodeLimits, Decoded, Dictionaries, Entry,
    EntryFlags, EntryMeta, Error, ErrorKind, Header, Health, Key, Operation, Result, Tier,
    TierSize, Timestamp,
};
use tracing::Instrument as _;

use crate::flight::{self, Flights, Joined};
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
    inner: Arc<Inner>,
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

enum Lookup<V> {
    Found(Arc<V>),
    Missing,
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

    /// Reads a fresh value. A miss, an expired or undecodable entry and a
    /// failing tier all give `None` (and are counted); reads never fail.
    pub async fn get<V: CacheValue>(&self, key: &Key) -> Option<Arc<V>> {
        match self.lookup(key).await {
            Lookup::Found(v) => Some(v),
            Lookup::Missing => None,
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
        self.write_through(key, &entry, Some(value as Decoded), ttl.into())
            .await;
        Ok(())
    }

    /// Returns the cached value, or runs `fetch` once, caches its result and
    /// returns it.
    ///
    /// Concurrent callers of the same cold key share one `fetch` call. If it
    /// fails, nothing is cached and every waiting caller gets the error (of
    /// kind [`ErrorKind::Fetch`], with the fetch error as its source). If it
    /// panics, waiting callers get an [`ErrorKind::FetchPanicked`] error and
    /// the panic continues in the caller that ran it. If that caller is
    /// cancelled, a waiting caller takes over.
    ///
    /// A tier that fails while caching the value does not turn the fetched
    /// value into an error.
    pub async fn get_or_fetch<V, F, Fut, E>(
        &self,
        key: &Key,
        ttl: impl Into<Ttl>,
        fetch: F,
    ) -> Result<Arc<V>>
    where
        V: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let ttl = ttl.into();
        if !self.inner.enabled {
            let source = self.inner.sources.get(key.source());
            bump(&source.fetches);
            return match fetch().await {
                Ok(v) => Ok(Arc::new(v)),
                Err(e) => {
                    bump(&source.fetch_errors);
                    Err(fetch_error(key, e.into()))
                }
            };
        }
        if let Lookup::Found(v) = self.lookup(key).await {
            return Ok(v);
        }
        let source = self.inner.sources.get(key.source());
        let leader = loop {
            match self.inner.flights.join(key) {
                Joined::Leader(guard) => break guard,
                Joined::Waiter(rx) => {
                    bump(&source.coalesced);
                    match flight::wait(rx).await {
                        Some(Ok(decoded)) => match decoded.downcast::<V>() {
                            Ok(v) => return Ok(v),
                            // Another caller fetched the key as a different
                            // type: fetch our own.
                            Err(_) => tokio::task::yield_now().await,
                        },
                        Some(Err(e)) => return Err(e),
                        None => {}
                    }
                }
            }
        };
        // A leader that finished just before we joined has already written
        // the value: look again before fetching.
        if let Lookup::Found(v) = self.lookup_quietly(key).await {
            leader.publish(Ok(Arc::clone(&v) as Decoded));
            return Ok(v);
        }
        bump(&source.fetches);
        let outcome = AssertUnwindSafe(fetch()).catch_unwind().await;
        match outcome {
            Ok(Ok(value)) => {
                let value = Arc::new(value);
                match self.encode(&*value) {
                    Ok(entry) => {
                        self.write_through(key, &entry, Some(Arc::clone(&value) as Decoded), ttl)
                            .await;
                    }
                    Err(e) => tracing::warn!(key = %key, error = %e, "fetched value not cached"),
                }
                leader.publish(Ok(Arc::clone(&value) as Decoded));
                Ok(value)
            }
            Ok(Err(e)) => {
                bump(&source.fetch_errors);
                let error = fetch_error(key, e.into());
                leader.publish(Err(error.clone()));
                Err(error)
            }
            Err(panic) => {
                bump(&source.fetch_errors);
                leader.publish(Err(Error::new(
                    ErrorKind::FetchPanicked,
                    format!("fetch for {key} panicked"),
                )
                .with_operation(Operation::Fetch)));
                std::panic::resume_unwind(panic)
            }
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

    /// When a write with `ttl` expires in `layer`.
    fn expiry_for(&self, layer: &Layer, ttl: Ttl, now: Timestamp) -> Timestamp {
        let cap = layer.tier.max_ttl();
        let ttl = match ttl {
            Ttl::For(d) => Some(cap.map_or(d, |c| c.min(d))),
            Ttl::TierDefault => cap.or(self.inner.default_ttl),
        };
        ttl.map_or(Timestamp::NEVER, |d| now.saturating_add(d))
    }

    async fn write_through(&self, key: &Key, entry: &Entry, decoded: Option<Decoded>, ttl: Ttl) {
        let now = Timestamp::now();
        let writes = self.inner.layers.iter().map(|layer| {
            let header = entry.header.with_expiry(self.expiry_for(layer, ttl, now));
            let copy = Entry {
                header,
                body: entry.body.clone(),
                decoded: decoded.clone(),
            };
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
            Lookup::Found(_) => bump(&source.hits),
            Lookup::Missing => bump(&source.misses),
        }
        found
    }

    /// Looks through the tiers without counting a per-source hit or miss.
    async fn lookup_quietly<V: CacheValue>(&self, key: &Key) -> Lookup<V> {
        if !self.inner.enabled {
            return Lookup::Missing;
        }
        let now = Timestamp::now();
        for (index, layer) in self.inner.layers.iter().enumerate() {
            let result = layer
                .tier
                .get(key)
                .instrument(tracing::trace_span!("tier", tier = %layer.name, op = "get"))
                .await;
            let entry = match result {
                Ok(Some(entry)) => entry,
                Ok(None) => {
                    bump(&layer.counters.misses);
                    continue;
                }
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
            add(&layer.counters.bytes_read, entry.encoded_len() as u64);
            if !entry.header.is_fresh(now) {
                bump(&layer.counters.expired);
                bump(&layer.counters.misses);
                continue;
            }
            match self.decode::<V>(&entry) {
                Ok(value) => {
                    bump(&layer.counters.hits);
                    if index > 0 {
                        self.copy_up(key, &entry, &value, index, now).await;
                    }
                    return Lookup::Found(value);
                }
                Err(e) => {
                    bump(&layer.counters.decode_failures);
                    bump(&layer.counters.misses);
                    tracing::debug!(tier = %layer.name, key = %key, reason = e.reason(), error = %e, "entry is a miss");
                    self.discard_if_outdated(layer, key, &e).await;
                }
            }
        }
        Lookup::Missing
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
    async fn copy_up<V: Any + Send + Sync>(
        &self,
        key: &Key,
        entry: &Entry,
        value: &Arc<V>,
        index: usize,
        now: Timestamp,
    ) {
        let decoded: Decoded = Arc::clone(value) as Decoded;
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
                    decoded: Some(Arc::clone(&decoded)),
                },
            )
        });
        join_all(writes).await;
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
