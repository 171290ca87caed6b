//! Partial batch hits: `get_or_fetch_many`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use tierstack_core::{Decoded, Entry, Error, ErrorKind, Key, Operation, Result, Timestamp};
use tracing::Instrument as _;

use crate::cache::{CacheValue, Lookup, TieredCache};
use crate::fetch::{BoxError, FetchOptions, fetch_error};
use crate::stats::{add, bump};

impl TieredCache {
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
        let mut seen = HashSet::with_capacity(keys.len());
        for key in keys {
            if seen.insert(key.clone()) {
                unique.push(key.clone());
            }
        }
        let mut answers: HashMap<Key, Option<Arc<V>>> = HashMap::with_capacity(unique.len());
        let mut stale: HashMap<Key, Option<Arc<V>>> = HashMap::new();
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
        mut answers: HashMap<Key, Option<Arc<V>>>,
        mut stale: HashMap<Key, Option<Arc<V>>>,
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
        let asked: HashSet<Key> = pending.iter().cloned().collect();
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
            if let Some(v) = &value {
                match self.encode(&key, &**v) {
                    Ok(entry) => encoded.push((key, entry, Some(Arc::clone(v) as Decoded), false)),
                    Err(e) => tracing::warn!(key = %key, error = %e, "fetched value not cached"),
                }
            } else {
                let negative = self.negative_entry(&key);
                encoded.push((key, negative, None, true));
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
}
