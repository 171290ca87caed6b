//! Partial batch hits: `get_or_fetch_many`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use tierstack_core::{Decoded, Entry, Error, ErrorKind, Key, Operation, Result, Timestamp};

use crate::budget::Budget;
use crate::cache::{CacheValue, Lookup, TieredCache};
use crate::fetch::{BatchContext, BoxError, FetchOptions};
use crate::stats::{Tally, add, bump};

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
    ///
    /// `fetch_missing` is called with the missing keys and a
    /// [`BatchContext`]; like the closure of
    /// [`TieredCache::get_or_fetch`] it may borrow what it captures
    /// (`|missing, _| api.books(missing)`), or be an async closure that
    /// borrows its arguments too.
    pub async fn get_or_fetch_many<V, F, Fut, E>(
        &self,
        keys: &[Key],
        options: impl Into<FetchOptions>,
        fetch_missing: F,
    ) -> Result<Vec<Option<Arc<V>>>>
    where
        V: CacheValue,
        F: FnOnce(Vec<Key>, BatchContext) -> Fut,
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
            let found = match layer.tier.get_many(&pending).await {
                Ok(found) => found,
                Err(e) => {
                    bump(&layer.counters.local().errors);
                    tracing::warn!(tier = %layer.name, error = %e.report(), "tier skipped");
                    continue;
                }
            };
            let mut still = Vec::with_capacity(pending.len());
            for (key, entry) in pending.into_iter().zip(found) {
                match self
                    .classify::<V>(layer, index, &key, entry, now, Tally::Count)
                    .await
                {
                    Some(Lookup::Found(v, _)) => {
                        answers.insert(key, Some(v));
                    }
                    Some(Lookup::Absent) => {
                        answers.insert(key, None);
                    }
                    Some(Lookup::Missing { stale: Some(s), .. }) => {
                        stale.entry(key.clone()).or_insert(s);
                        still.push(key);
                    }
                    Some(Lookup::Missing { stale: None, .. }) | None => still.push(key),
                }
            }
            pending = still;
        }
        for key in answers.keys().chain(pending.iter()) {
            let source = self.inner.sources.get(key.source());
            if answers.contains_key(key) {
                bump(&source.local().hits);
            } else {
                bump(&source.local().misses);
            }
        }
        if pending.is_empty() || self.is_offline() {
            for key in pending {
                if let Some(value) = stale.remove(&key) {
                    bump(&self.inner.sources.get(key.source()).local().stale_served);
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

    /// The budget of each source among `pending`, for the batch closure.
    fn batch_budgets(&self, pending: &[Key]) -> HashMap<String, Budget> {
        let mut budgets = HashMap::new();
        for key in pending {
            if !budgets.contains_key(key.source()) {
                let policy = self.policy(key.source());
                budgets.insert(key.source().to_owned(), self.budget(&policy, key));
            }
        }
        budgets
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
        F: FnOnce(Vec<Key>, BatchContext) -> Fut,
        Fut: Future<Output = std::result::Result<Vec<(Key, Option<V>)>, E>>,
        E: Into<BoxError>,
    {
        let mut sources: Vec<&str> = pending.iter().map(Key::source).collect();
        sources.sort_unstable();
        sources.dedup();
        for source in &sources {
            bump(&self.inner.sources.get(source).local().fetches);
        }
        let asked: HashSet<Key> = pending.iter().cloned().collect();
        let budgets = self.batch_budgets(&pending);
        let started = std::time::Instant::now();
        let fetched = match spend_for_batch(&budgets, &options, &stale).await {
            Err(error) => Some(Err(error)),
            Ok(spent) => {
                let context = BatchContext::new(
                    pending
                        .iter()
                        .filter(|key| stale.contains_key(*key))
                        .cloned()
                        .collect(),
                    budgets.clone(),
                );
                let options = options.less(started.elapsed());
                let run = fetch_missing(pending.clone(), context);
                #[cfg(feature = "metrics")]
                let run = crate::metrics::timed_fetch(&self.inner, &sources, run);
                match self.within_timeouts(run, &options, false).await {
                    Some(Ok(list)) => Some(Ok(list)),
                    Some(Err(e)) => {
                        let e: BoxError = e.into();
                        let slow_down = crate::fetch::slow_down(&*e);
                        for (budget, probe) in &spent {
                            budget.answered(slow_down, *probe).await;
                        }
                        Some(Err(batch_fetch_error(&pending, e, slow_down)))
                    }
                    None => None,
                }
                .inspect(|fetched| {
                    if fetched.is_ok() {
                        for (budget, probe) in spent {
                            // A probe that got an answer closes its circuit.
                            tokio::spawn(async move { budget.answered(None, probe).await });
                        }
                    }
                })
            }
        };
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
            Some(Err(error)) => error,
            None => Error::new(
                ErrorKind::Timeout,
                format!(
                    "batch fetch of {} did not answer in time",
                    key_list(&pending)
                ),
            )
            .with_operation(Operation::Fetch),
        };
        for source in &sources {
            bump(&self.inner.sources.get(source).local().fetch_errors);
        }
        for key in &pending {
            match stale.remove(key) {
                Some(value) => {
                    bump(&self.inner.sources.get(key.source()).local().stale_served);
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
                    Ok(entry) => {
                        encoded.push((key, entry, Some(Decoded::new(Arc::clone(v))), false));
                    }
                    Err(e) => {
                        tracing::warn!(key = %key, error = %e.report(), "fetched value not cached");
                    }
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
                        add(&layer.counters.local().writes, count);
                        add(&layer.counters.local().bytes_written, len);
                    }
                    Err(e) => {
                        add(&layer.counters.local().write_errors, count);
                        tracing::warn!(tier = %layer.name, error = %e.report(), "batch write skipped");
                    }
                }
            }
        });
        join_all(writes).await;
    }
}

/// Spends one request of each rate group the batch's sources belong to,
/// before the batch fetch runs. The first group that turns the batch away
/// fails it (keys with a stale value are served it).
async fn spend_for_batch<V>(
    budgets: &HashMap<String, Budget>,
    options: &FetchOptions,
    stale: &HashMap<Key, Option<Arc<V>>>,
) -> Result<Vec<(Budget, bool)>> {
    let limit = crate::fetch::wait_limit(options, !stale.is_empty(), None);
    let mut spent: Vec<(Budget, bool)> = Vec::with_capacity(budgets.len());
    for budget in budgets.values() {
        if spent.iter().any(|(b, _)| b.group() == budget.group()) {
            continue;
        }
        let probe = budget.pass(limit).await?;
        spent.push((budget.clone(), probe));
    }
    Ok(spent)
}

/// Keys named in a failed batch's message; the rest are counted.
const NAMED_KEYS: usize = 3;

/// `n keys (a, b, c and 47 more)`: every key of a short batch, the first few
/// of a long one.
fn key_list(keys: &[Key]) -> String {
    let named: Vec<String> = keys.iter().take(NAMED_KEYS).map(Key::to_string).collect();
    let more = keys.len().saturating_sub(NAMED_KEYS);
    let count = match keys.len() {
        1 => "1 key".to_owned(),
        n => format!("{n} keys"),
    };
    if more == 0 {
        format!("{count} ({})", named.join(", "))
    } else {
        format!("{count} ({} and {more} more)", named.join(", "))
    }
}

fn batch_fetch_error(
    keys: &[Key],
    error: BoxError,
    slow_down: Option<std::time::Duration>,
) -> Error {
    let failed = match slow_down {
        Some(wait) => Error::new(
            ErrorKind::Throttled,
            format!(
                "batch fetch of {}: the upstream asked to slow down",
                key_list(keys)
            ),
        )
        .with_retry_after(wait),
        None => Error::new(
            ErrorKind::Fetch,
            format!("batch fetch of {} failed", key_list(keys)),
        ),
    };
    failed
        .with_operation(Operation::Fetch)
        .with_shared_source(Arc::from(error))
}
