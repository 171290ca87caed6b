//! The `get_or_fetch` family: single-flight, stale-if-error, timeouts,
//! offline mode and negative caching, on one shared path (`resolve`).

use std::future::Future;
use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use tierstack_core::{Decoded, Entry, Error, ErrorKind, Header, Key, Operation, Result, Timestamp};

use crate::budget::{self, Budget};
use crate::cache::{CacheValue, Lookup, TieredCache, TopAnswer, Ttl};
use crate::fetch_error::FetchError;
use crate::flight::{self, Answer, Joined, LeaderGuard};
use crate::lease::Lease;
use crate::policy::{Coordination, SourcePolicy};
use crate::revalidate::{Answered, IntoAnswered, ResponseMeta};
use crate::stats::{SourceCounters, Tally, bump};

/// How one `get_or_fetch` call fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct FetchOptions {
    /// Freshness of the fetched value.
    pub ttl: Ttl,
    /// When a stale value is at hand and the fetch has not answered after
    /// this long, the stale value is returned (and the fetch dropped).
    /// A caller waiting for another caller's fetch of the same key gets its
    /// stale value at its own soft timeout; that fetch goes on for the
    /// caller that runs it.
    pub soft_timeout: Option<Duration>,
    /// The longest wait for the fetch, this caller's own or another
    /// caller's of the same key; past it the call returns the stale value
    /// if there is one, else an error of kind [`ErrorKind::Timeout`].
    pub hard_timeout: Option<Duration>,
    /// Overrides the stale window of the source's policy for this write.
    pub stale_for: Option<Duration>,
    /// Overrides the negative TTL of the source's policy when this call
    /// caches a "not found".
    pub negative_ttl: Option<Duration>,
    /// Overrides how long the source's policy keeps an expired entry with
    /// validators after its stale window, for a revalidation.
    pub retain_for: Option<Duration>,
    /// The written value may never be served stale, only revalidated.
    pub must_revalidate: bool,
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

    /// Sets how long a "not found" this call caches is kept.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Sets the stale window of the written value.
    #[must_use]
    pub fn stale_for(mut self, window: Duration) -> Self {
        self.stale_for = Some(window);
        self
    }

    /// Sets how long the written value, if it carries validators, is kept
    /// after its stale window for a revalidation.
    #[must_use]
    pub fn retain_for(mut self, retention: Duration) -> Self {
        self.retain_for = Some(retention);
        self
    }

    /// Marks the written value as never to be served stale, only
    /// revalidated (HTTP `must-revalidate`).
    #[must_use]
    pub fn must_revalidate(mut self) -> Self {
        self.must_revalidate = true;
        self
    }
}

impl FetchOptions {
    /// These options for a fetch that starts `waited` into its call (it
    /// waited for a lease or a slot of the budget): the timeouts count the
    /// whole call.
    pub(crate) fn less(mut self, waited: Duration) -> Self {
        self.soft_timeout = self.soft_timeout.map(|t| t.saturating_sub(waited));
        self.hard_timeout = self.hard_timeout.map(|t| t.saturating_sub(waited));
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
///
/// `#[non_exhaustive]`: more places a value can come from may be added.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fetched<V> {
    /// A fresh entry of some tier.
    Cached(Arc<V>),
    /// The fetch, just now (or a concurrent caller's fetch).
    Fetched(Arc<V>),
    /// An expired entry inside its stale window, because the fetch failed,
    /// was too slow, or the cache is offline.
    Stale(Arc<V>),
    /// An expired entry the upstream said is still current
    /// ([`Revalidated::NotModified`](crate::Revalidated::NotModified)),
    /// fresh again in every tier.
    Revalidated(Arc<V>),
}

impl<V> Fetched<V> {
    /// The value, wherever it came from.
    pub fn value(&self) -> &Arc<V> {
        match self {
            Self::Cached(v) | Self::Fetched(v) | Self::Stale(v) | Self::Revalidated(v) => v,
        }
    }

    /// The value, wherever it came from.
    pub fn into_value(self) -> Arc<V> {
        match self {
            Self::Cached(v) | Self::Fetched(v) | Self::Stale(v) | Self::Revalidated(v) => v,
        }
    }

    /// Whether the value is a stale fallback.
    pub fn is_stale(&self) -> bool {
        matches!(self, Self::Stale(_))
    }
}

/// What a fetch closure is told about the call it answers.
///
/// Handed by value to every fetch closure (`get_or_fetch`, `CachedFn`
/// loaders, background refreshes), so the closure's future can keep it
/// without borrowing from the cache. The struct is `#[non_exhaustive]`: new
/// facts about a call (an upstream budget to spend, the validators of the
/// retained entry) arrive as new methods, never as a new closure signature.
/// See `docs/decisions/0008-fetch-closure.md`.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct FetchContext {
    key: Key,
    has_fallback: bool,
    budget: Option<Budget>,
    kept: Option<Kept>,
}

/// The expired entry a revalidating fetch may answer "not modified" for.
#[derive(Debug, Clone)]
struct Kept {
    meta: ResponseMeta,
    entry: Arc<Entry>,
    cache: TieredCache,
}

impl FetchContext {
    pub(crate) fn new(key: &Key, has_fallback: bool, budget: Option<Budget>) -> Self {
        Self {
            key: key.clone(),
            has_fallback,
            budget,
            kept: None,
        }
    }

    /// This context, offering `retained` (an expired entry with
    /// validators) for a revalidation.
    pub(crate) fn keeping(mut self, retained: Option<&Entry>, cache: &TieredCache) -> Self {
        self.kept = retained.and_then(|entry| {
            Some(Kept {
                meta: ResponseMeta::of(entry)?,
                entry: Arc::new(entry.clone()),
                cache: cache.clone(),
            })
        });
        self
    }

    /// The validators of the expired entry the tiers keep for this key,
    /// for a conditional request (`If-None-Match`, `If-Modified-Since`);
    /// `None` when no such entry is kept. A fetch of
    /// [`TieredCache::get_or_revalidate`] that sends them may answer
    /// [`Revalidated::NotModified`](crate::Revalidated::NotModified).
    pub fn kept(&self) -> Option<&ResponseMeta> {
        self.kept.as_ref().map(|kept| &kept.meta)
    }

    /// The value of the kept entry ([`FetchContext::kept`]), decoded, for
    /// an answer made from it ([`Revalidated::Updated`](crate::Revalidated::Updated));
    /// `None` when nothing is kept or it is not a `V`.
    pub fn kept_value<V: CacheValue>(&self) -> Option<Arc<V>> {
        let kept = self.kept.as_ref()?;
        let entry = Entry::clone(&kept.entry).with_body_restored().ok()?;
        kept.cache.decode::<V>(&entry).ok()
    }

    /// Spends one more request of the source's budget (its rate limit and
    /// `Retry-After` circuit), for a fetch that sends more than one request
    /// (pages, a second endpoint). The cache has already spent one before
    /// calling the fetch. Waits for the slot; fails with
    /// [`ErrorKind::Throttled`] when it is further away than the source's
    /// `max_wait`, or the upstream asked to slow down.
    pub async fn spend(&self) -> Result<()> {
        match &self.budget {
            Some(budget) => budget.spend().await,
            None => Ok(()),
        }
    }

    /// The key being fetched.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Whether a value of this key is at hand and is served if this fetch
    /// fails or is too slow: an expired one inside its stale window
    /// (stale-if-error), or the current one during a background refresh.
    pub fn has_fallback(&self) -> bool {
        self.has_fallback
    }
}

/// What a batch fetch closure ([`TieredCache::get_or_fetch_many`]) is told
/// about the call, next to the keys it is asked for. `#[non_exhaustive]` for
/// the same reason as [`FetchContext`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BatchContext {
    with_fallback: std::collections::HashSet<Key>,
    budgets: std::collections::HashMap<String, Budget>,
}

impl BatchContext {
    pub(crate) fn new(
        with_fallback: std::collections::HashSet<Key>,
        budgets: std::collections::HashMap<String, Budget>,
    ) -> Self {
        Self {
            with_fallback,
            budgets,
        }
    }

    /// Spends one more request of the budget of `key`'s source, for a batch
    /// fetch that sends more than one request: the cache has spent one per
    /// rate group before calling the fetch, so a closure that splits 50 keys
    /// into 5 requests calls this before each of the 4 after the first.
    /// Waits for the slot; fails with [`ErrorKind::Throttled`] like
    /// [`FetchContext::spend`].
    pub async fn spend(&self, key: &Key) -> Result<()> {
        match self.budgets.get(key.source()) {
            Some(budget) => budget.spend().await,
            None => Ok(()),
        }
    }

    /// Whether an expired value of `key` is at hand and is served if the
    /// batch fetch fails.
    pub fn has_fallback(&self, key: &Key) -> bool {
        self.with_fallback.contains(key)
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Asked, before anything is fetched, about an expired value inside its
/// stale window (and the entry kept for its revalidation, if any):
/// `true` answers it at once.
pub(crate) type AcceptStale<'a, V> = dyn FnMut(&Arc<V>, Option<&Entry>) -> bool + Send + 'a;

/// Asked about a fresh value before it is answered: `false` revalidates it
/// as if it had expired.
pub(crate) type AcceptFresh<'a, V> = dyn FnMut(&Arc<V>, &Header) -> bool + Send + 'a;

/// What a caller of the shared fetch path is asked about what the tiers
/// hold (both `None` for the plain entry points).
pub(crate) struct Judge<'a, 'b, V> {
    pub(crate) fresh: Option<&'a mut AcceptFresh<'b, V>>,
    pub(crate) stale: Option<&'a mut AcceptStale<'b, V>>,
}

impl<V> Judge<'_, '_, V> {
    pub(crate) fn none() -> Self {
        Self {
            fresh: None,
            stale: None,
        }
    }
}

/// The outcome of the shared fetch path; `None` values are "not found".
pub(crate) enum Outcome<V> {
    Cached(Option<Arc<V>>),
    Fetched(Option<Arc<V>>),
    /// Fetched, but no tier holds it (it cannot be encoded within the
    /// entry cap, or every tier failed to store it).
    Unstored(Option<Arc<V>>),
    Stale(Option<Arc<V>>),
    /// The retained entry, made fresh again by a "not modified".
    Revalidated(Option<Arc<V>>),
}

impl<V> Outcome<V> {
    fn fetched(value: Option<Arc<V>>, stored: bool) -> Self {
        if stored {
            Self::Fetched(value)
        } else {
            Self::Unstored(value)
        }
    }

    /// For callers that need a value: where it came from. Never sees
    /// "not found" (such callers resolve with `negatives: false`).
    pub(crate) fn into_fetched(self, key: &Key) -> Result<Fetched<V>> {
        let missing = || {
            Error::new(ErrorKind::Other, format!("{key}: no value"))
                .with_operation(Operation::Fetch)
        };
        match self {
            Self::Cached(v) => v.map(Fetched::Cached).ok_or_else(missing),
            Self::Fetched(v) | Self::Unstored(v) => v.map(Fetched::Fetched).ok_or_else(missing),
            Self::Stale(v) => v.map(Fetched::Stale).ok_or_else(missing),
            Self::Revalidated(v) => v.map(Fetched::Revalidated).ok_or_else(missing),
        }
    }
}

impl TieredCache {
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
    ///
    /// `fetch` is any closure taking the call's [`FetchContext`] and
    /// returning a future, or an async closure; it may borrow what it
    /// captures (`|_| api.book(asin)`).
    pub fn get_or_fetch<'a, V, F, Fut, E>(
        &'a self,
        key: &'a Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> impl Future<Output = Result<Arc<V>>> + 'a
    where
        F: 'a,
        Fut: 'a,
        E: 'a,
        V: CacheValue,
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<BoxError>,
    {
        let options = options.into();
        self.hit_or_else(
            key,
            |value, _| Ok(value),
            None::<fn() -> Result<Arc<V>>>,
            // The lookup goes on from what the tiers answered at once.
            move |top| async move {
                self.fetch_after(key, options, Some(top), fetch)
                    .await
                    .map(Fetched::into_value)
            },
        )
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
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<BoxError>,
    {
        self.fetch_after(key, options.into(), None, fetch).await
    }

    /// [`TieredCache::get_or_fetch_with`] after the tiers were asked at once
    /// (`asked`), or from the start (`None`).
    async fn fetch_after<V, F, Fut, E>(
        &self,
        key: &Key,
        options: FetchOptions,
        asked: Option<TopAnswer<V>>,
        fetch: F,
    ) -> Result<Fetched<V>>
    where
        V: CacheValue,
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<V, E>>,
        E: Into<BoxError>,
    {
        let fetch = |context| async { fetch(context).await.map(Some) };
        let outcome = self
            .resolve(key, options, false, &mut None, Judge::none(), asked, fetch)
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
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        match self
            .resolve(
                key,
                options.into(),
                true,
                &mut None,
                Judge::none(),
                None,
                fetch,
            )
            .await?
        {
            Outcome::Cached(v)
            | Outcome::Fetched(v)
            | Outcome::Unstored(v)
            | Outcome::Stale(v)
            | Outcome::Revalidated(v) => Ok(v),
        }
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
    // The one fetch path behind every public entry point; each argument is
    // one of their differences.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn resolve<V, F, Fut, A, E>(
        &self,
        key: &Key,
        options: FetchOptions,
        negatives: bool,
        cached_header: &mut Option<Header>,
        judge: Judge<'_, '_, V>,
        asked: Option<TopAnswer<V>>,
        fetch: F,
    ) -> Result<Outcome<V>>
    where
        V: CacheValue,
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<A, E>>,
        A: IntoAnswered<V>,
        E: Into<BoxError>,
    {
        if !self.inner.enabled {
            // Nothing is cached, but the upstream's budget still holds.
            let source = self.inner.sources.get(key.source());
            let budget = self.budget(&self.inner.policies.get(key.source()), key);
            let probe = budget.pass(wait_limit(&options, false, None)).await?;
            bump(&source.local().fetches);
            return match fetch(FetchContext::new(key, false, Some(budget.clone()))).await {
                Ok(answer) => {
                    budget.answered(None, probe).await;
                    match answer.into_answered() {
                        Answered::Value { value, .. } => {
                            Ok(Outcome::fetched(value.map(Arc::new), false))
                        }
                        // A disabled cache keeps nothing to revalidate.
                        Answered::NotModified(_) => Err(nothing_retained(key)),
                    }
                }
                Err(e) => {
                    let e = e.into();
                    let wait = slow_down(&*e);
                    budget.answered(wait, probe).await;
                    bump(&source.local().fetch_errors);
                    Err(fetch_error(key, e, wait))
                }
            };
        }
        let mut refused = false;
        let found = match asked {
            Some(top) => self.finish_lookup(key, top).await,
            None => self.lookup(key).await,
        };
        let (stale, retained) = match found {
            Lookup::Found(v, header) => {
                if judge.fresh.is_some_and(|accept| !accept(&v, &header)) {
                    // Refused: revalidated with the validators it carries.
                    refused = true;
                    (None, self.held_for_revalidation(key).await.map(Box::new))
                } else {
                    *cached_header = Some(header);
                    return Ok(Outcome::Cached(Some(v)));
                }
            }
            Lookup::Absent if negatives => return Ok(Outcome::Cached(None)),
            Lookup::Absent => (None, None),
            Lookup::Missing { stale, retained } => (usable_fallback(stale, negatives), retained),
        };
        // Fetched for the miss only: a hit counts through `lookup`.
        let source = self.inner.sources.get(key.source());
        if let (Some(accept), Some(Some(value))) = (judge.stale, &stale) {
            if accept(value, retained.as_deref()) {
                bump(&source.local().stale_served);
                return Ok(Outcome::Stale(Some(Arc::clone(value))));
            }
        }
        if self.is_offline() {
            return offline_answer(key, stale, &source.local().stale_served);
        }
        let policy = self.inner.policies.get(key.source());
        let coordination = policy.coordination.unwrap_or(self.inner.coordination);
        // One start for the wait for another caller's fetch and for this
        // caller's own: its timeouts bound both together.
        let started = std::time::Instant::now();
        let leader = match coordination {
            Coordination::Off => None,
            Coordination::Local | Coordination::Shared => {
                let waiting = Waiting {
                    limit: wait_limit(&options, stale.is_some(), None),
                    started,
                    stale: stale.as_ref(),
                };
                match self
                    .join_flight::<V>(key, negatives, &source, waiting)
                    .await
                {
                    Ok(leader) => Some(leader),
                    Err(answered) => return answered,
                }
            }
        };
        let mut miss = Miss {
            key,
            options,
            started,
            source,
            leader,
            stale,
            retained,
            refused,
            lease: None,
        };
        let ended = self
            .fetch_as_leader(&mut miss, &policy, coordination, negatives, fetch)
            .await;
        miss.end(ended).await
    }

    /// Joins the in-process flight of `key`: `Ok` with the guard when this
    /// caller leads, `Err` with the leader's answer when another did, or
    /// with this caller's stale value or a timeout error when the leader
    /// did not answer within this caller's timeouts.
    async fn join_flight<V: CacheValue>(
        &self,
        key: &Key,
        negatives: bool,
        source: &SourceCounters,
        waiting: Waiting<'_, V>,
    ) -> std::result::Result<LeaderGuard<'_>, Result<Outcome<V>>> {
        loop {
            match self.inner.flights.join(key) {
                Joined::Leader(guard) => return Ok(guard),
                Joined::Waiter(rx) => {
                    bump(&source.local().coalesced);
                    let answered = match remaining(waiting.limit, waiting.started) {
                        None => flight::wait(rx).await,
                        Some(left) => match tokio::time::timeout(left, flight::wait(rx)).await {
                            Ok(answered) => answered,
                            Err(_) => return Err(waiting.gave_up(key, source)),
                        },
                    };
                    match answered {
                        Some(Ok(answer)) => match typed::<V>(&answer) {
                            Some(value) if answer.stale && (value.is_some() || negatives) => {
                                return Err(Ok(Outcome::Stale(value)));
                            }
                            Some(value) if value.is_some() || negatives => {
                                return Err(Ok(Outcome::Fetched(value)));
                            }
                            // Another caller fetched the key as a different
                            // type, or as "not found" that we cannot return.
                            _ => tokio::task::yield_now().await,
                        },
                        Some(Err(e)) => return Err(Err(e)),
                        None => {}
                    }
                }
            }
        }
    }

    /// The leader's way to the upstream: the circuit, the cross-process
    /// lease, a last look, the budget, then the fetch. An `Err` is served
    /// stale where a stale value is at hand ([`Miss::end`]).
    async fn fetch_as_leader<V, F, Fut, A, E>(
        &self,
        miss: &mut Miss<'_, V>,
        policy: &SourcePolicy,
        coordination: Coordination,
        negatives: bool,
        fetch: F,
    ) -> Result<Outcome<V>>
    where
        V: CacheValue,
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<A, E>>,
        A: IntoAnswered<V>,
        E: Into<BoxError>,
    {
        let key = miss.key;
        let group = self.inner.budgets.group(policy, key.source());
        // Circuits and leases are shared only where single-flight is.
        let shared = match coordination {
            Coordination::Shared => self.inner.budgets.shared(),
            Coordination::Off | Coordination::Local => None,
        };
        let probe = match self
            .pass_circuit_and_lease(miss, &group, shared, negatives)
            .await?
        {
            ControlFlow::Continue(probe) => probe,
            ControlFlow::Break(answered) => return Ok(answered),
        };
        // A leader that finished just before we joined has already written
        // the value: look again before fetching.
        if let Some(answered) = self.look_again(miss, negatives).await {
            return Ok(answered);
        }
        let source = Arc::clone(&miss.source);
        let limit = wait_limit(&miss.options, miss.stale.is_some(), policy.max_wait);
        group
            .take_slot(
                key.source(),
                self.inner.budgets.shared(),
                shared,
                remaining(limit, miss.started),
                probe,
                &source,
            )
            .await?;
        bump(&source.local().fetches);
        let has_stale = miss.stale.is_some();
        let context = FetchContext::new(key, has_stale, Some(self.budget(policy, key)))
            .keeping(miss.retained.as_deref(), self);
        let run = AssertUnwindSafe(fetch(context)).catch_unwind();
        #[cfg(feature = "metrics")]
        let sources = [key.source()];
        #[cfg(feature = "metrics")]
        let run = crate::metrics::timed_fetch(&self.inner, &sources, run);
        let options = miss.options.less(miss.started.elapsed());
        let error = match self.within_timeouts(run, &options, has_stale).await {
            Some(Ok(Ok(answer))) => {
                group.answered(None, probe, shared, &source).await;
                return self
                    .store_answer(
                        key,
                        &miss.source,
                        &mut miss.retained,
                        answer.into_answered(),
                        options,
                    )
                    .await;
            }
            Some(Ok(Err(e))) => {
                let e = e.into();
                if FetchError::is_not_stored(&*e) {
                    // An answer, not a failure: the budget was spent well.
                    group.answered(None, probe, shared, &source).await;
                    return Err(fetch_error(key, e, None));
                }
                let slow_down = slow_down(&*e);
                group.answered(slow_down, probe, shared, &source).await;
                fetch_error(key, e, slow_down)
            }
            Some(Err(panic)) => {
                bump(&source.local().fetch_errors);
                drop(miss.lease.take());
                publish(
                    miss.leader.take(),
                    Err(Error::new(
                        ErrorKind::FetchPanicked,
                        format!("{key}: the fetch panicked"),
                    )
                    .with_operation(Operation::Fetch)),
                );
                std::panic::resume_unwind(panic)
            }
            None => Error::new(
                ErrorKind::Timeout,
                format!("{key}: the fetch did not answer in time"),
            )
            .with_operation(Operation::Fetch),
        };
        bump(&source.local().fetch_errors);
        Err(error)
    }

    /// Stores what a fetch answered: a value (with what its response
    /// said), or "not modified" for the kept entry `retained`.
    pub(crate) async fn store_answer<V: CacheValue>(
        &self,
        key: &Key,
        source: &SourceCounters,
        retained: &mut Option<Box<Entry>>,
        answer: Answered<V>,
        options: FetchOptions,
    ) -> Result<Outcome<V>> {
        match answer {
            Answered::Value {
                value,
                meta,
                revalidated,
            } => {
                // An update keeps the validators it does not replace.
                let meta = match (revalidated, retained.as_deref()) {
                    (true, Some(kept)) => {
                        ResponseMeta::of(kept).unwrap_or_default().updated_by(meta)
                    }
                    _ => meta,
                };
                let value = value.map(Arc::new);
                let stored = self
                    .store_answered(key, value.as_ref(), &meta, meta.applied_to(options))
                    .await;
                if revalidated {
                    bump(&source.local().revalidated);
                    return Ok(Outcome::Revalidated(value));
                }
                Ok(Outcome::fetched(value, stored))
            }
            Answered::NotModified(meta) => {
                let retained = retained.take().ok_or_else(|| nothing_retained(key))?;
                let value = self
                    .store_revalidated::<V>(key, *retained, meta, options)
                    .await?;
                bump(&source.local().revalidated);
                Ok(Outcome::Revalidated(Some(value)))
            }
        }
    }

    /// Passes the group's circuit, then takes the key's lease in the
    /// coordinating tier (when single-flight is shared), waiting while
    /// another process holds it. `Continue(probe)`: fetch (`probe`: this
    /// fetch decides whether the circuit closes); `Break`: the holder's
    /// value was found.
    async fn pass_circuit_and_lease<V: CacheValue>(
        &self,
        miss: &mut Miss<'_, V>,
        group: &budget::Group,
        shared: Option<&budget::Shared>,
        negatives: bool,
    ) -> Result<ControlFlow<Outcome<V>, bool>> {
        let (key, source) = (miss.key, Arc::clone(&miss.source));
        let mut waited = false;
        loop {
            let probe = group.admit(key.source(), shared, &source).await?;
            let Some(shared) = shared else {
                return Ok(ControlFlow::Continue(probe));
            };
            let ttl = self.inner.lease_ttl;
            match self.take_lease(shared, key, ttl).await {
                Ok(true) => {
                    // Free after a wait without a value: the holder died or failed.
                    let won = if waited {
                        &source.local().lease_takeovers
                    } else {
                        &source.local().lease_won
                    };
                    bump(won);
                    miss.lease = Some(Lease::hold(shared, key, ttl));
                    return Ok(ControlFlow::Continue(probe));
                }
                Ok(false) => {}
                Err(e) => {
                    budget::fell_back(shared, &source, "lease", &e);
                    return Ok(ControlFlow::Continue(probe));
                }
            }
            if !waited {
                bump(&source.local().lease_waited);
                waited = true;
            }
            let limit = wait_limit(&miss.options, miss.stale.is_some(), None);
            let left = remaining(limit, miss.started);
            if left == Some(Duration::ZERO) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{key}: another process's fetch did not answer in time"),
                )
                .with_operation(Operation::Fetch));
            }
            let wait = left.map_or(ttl, |left| left.min(ttl));
            if let Err(e) = shared.coordinator.wait_released(key, wait).await {
                budget::fell_back(shared, &source, "lease", &e);
                return Ok(ControlFlow::Continue(probe));
            }
            // The holder wrote the value before it let go.
            if let Some(answered) = self.look_again(miss, negatives).await {
                return Ok(ControlFlow::Break(answered));
            }
        }
    }

    /// Takes the lease of `key`. A lease this cache holds already is one
    /// whose release failed (the store was unreachable when the last fetch
    /// ended): single-flight makes this caller the only one of the process
    /// fetching the key, so it takes that lease back instead of waiting it
    /// out.
    async fn take_lease(&self, shared: &budget::Shared, key: &Key, ttl: Duration) -> Result<bool> {
        if shared.coordinator.acquire(key, &shared.owner, ttl).await? {
            return Ok(true);
        }
        shared.coordinator.renew(key, &shared.owner, ttl).await
    }

    /// Looks through the tiers again (quietly: the call's miss is counted
    /// once) for a value another leader wrote; keeps a stale one found.
    async fn look_again<V: CacheValue>(
        &self,
        miss: &mut Miss<'_, V>,
        negatives: bool,
    ) -> Option<Outcome<V>> {
        match self.look_through::<V>(miss.key, Tally::Quiet).await {
            // The value the caller refused is there still: fetch.
            Lookup::Found(..) if miss.refused => None,
            Lookup::Found(v, _) => Some(Outcome::Cached(Some(v))),
            Lookup::Absent if negatives => Some(Outcome::Cached(None)),
            Lookup::Absent => None,
            Lookup::Missing { stale, retained } => {
                let found = usable_fallback(stale, negatives);
                miss.stale = miss.stale.take().or(found);
                miss.retained = miss.retained.take().or(retained);
                None
            }
        }
    }

    /// The budget handle a fetch closure of `key` gets.
    pub(crate) fn budget(&self, policy: &SourcePolicy, key: &Key) -> Budget {
        let budgets = &self.inner.budgets;
        Budget::new(
            budgets.group(policy, key.source()),
            budgets.shared().cloned(),
            policy.max_wait,
            key.source(),
            self.inner.sources.get(key.source()),
        )
    }

    /// Waits for `run`: up to the soft timeout when a stale fallback exists,
    /// and never past the hard timeout. `None` when a timeout fired.
    pub(crate) async fn within_timeouts<T>(
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

    /// Writes a fetched value with the validators of the response it came
    /// from, or a negative entry for "not found"; `true` if some tier now
    /// holds it.
    async fn store_answered<V: CacheValue>(
        &self,
        key: &Key,
        value: Option<&Arc<V>>,
        meta: &ResponseMeta,
        options: FetchOptions,
    ) -> bool {
        let Some(value) = value else {
            let entry = self.negative_entry(key);
            return self.write_through(key, &entry, None, options, true).await;
        };
        let encoded = self.encode(key, &**value).and_then(|entry| {
            let extensions = meta.stored_in(&entry.extensions)?;
            Ok(entry.with_extensions(extensions))
        });
        match encoded {
            Ok(entry) => {
                let decoded = Some(Decoded::new(Arc::clone(value)));
                self.write_through(key, &entry, decoded, options, false)
                    .await
            }
            Err(e) => {
                tracing::warn!(key = %key, error = %e.report(), "fetched value not cached");
                false
            }
        }
    }
}

impl TieredCache {
    /// Makes a retained entry fresh again after a "not modified": a new
    /// creation time, the validators updated, the same body, written to
    /// every tier with the call's expiry. Returns its value.
    async fn store_revalidated<V: CacheValue>(
        &self,
        key: &Key,
        retained: Entry,
        meta: ResponseMeta,
        options: FetchOptions,
    ) -> Result<Arc<V>> {
        let value = self.decode::<V>(&retained).map_err(|e| {
            Error::new(
                ErrorKind::Fetch,
                format!(
                    "{key}: the upstream said \"not modified\", but the kept entry cannot be read"
                ),
            )
            .with_operation(Operation::Fetch)
            .with_source(e)
        })?;
        // A memory tier keeps the decoded value alone; the lower tiers
        // need the bytes.
        let retained = retained
            .with_body_restored()
            .map_err(|e| Error::from(e).with_operation(Operation::Fetch))?;
        let merged = ResponseMeta::of(&retained)
            .unwrap_or_default()
            .updated_by(meta);
        let options = merged.applied_to(options);
        let extensions = merged
            .stored_in(&retained.extensions)
            .map_err(|e| Error::from(e).with_operation(Operation::Fetch))?;
        let mut header = retained.header;
        header.created_at = Timestamp::now();
        let entry = retained.with_header(header).with_extensions(extensions);
        let decoded = Some(Decoded::new(Arc::clone(&value)));
        self.renew_through(key, &entry, decoded, options).await;
        Ok(value)
    }
}

/// The error of a "not modified" with no entry to keep.
fn nothing_retained(key: &Key) -> Error {
    Error::new(
        ErrorKind::Fetch,
        format!("{key}: the fetch answered \"not modified\", but no entry of the key is kept to revalidate"),
    )
    .with_operation(Operation::Fetch)
}

/// One leader's miss: what it must hand its waiters and give back when it
/// ends, however it ends.
struct Miss<'a, V> {
    key: &'a Key,
    options: FetchOptions,
    started: std::time::Instant,
    source: Arc<SourceCounters>,
    leader: Option<LeaderGuard<'a>>,
    #[allow(clippy::option_option)] // the inner `None` is a cached "not found"
    stale: Option<Option<Arc<V>>>,
    /// An expired entry with validators, for the fetch to revalidate.
    retained: Option<Box<Entry>>,
    /// The caller refused the fresh value the tiers hold: a fresh value
    /// found again is no answer.
    refused: bool,
    lease: Option<Lease>,
}

impl<V: CacheValue> Miss<'_, V> {
    /// Releases the lease, hands the result to the callers waiting in this
    /// process and returns it; an error is served stale when a stale value
    /// is at hand.
    async fn end(mut self, ended: Result<Outcome<V>>) -> Result<Outcome<V>> {
        release(self.lease.take()).await;
        let result = match ended {
            // An answer the fetching caller passes on is not replaced by a
            // stale one.
            Err(error) if FetchError::is_not_stored(&error) => Err(error),
            Err(error) => match self.stale.take() {
                Some(value) => {
                    bump(&self.source.local().stale_served);
                    tracing::info!(key = %self.key, error = %error.report(), "serving a stale value");
                    Ok(Outcome::Stale(value))
                }
                None => Err(error),
            },
            ok => ok,
        };
        let answer = match &result {
            Ok(
                Outcome::Cached(v)
                | Outcome::Fetched(v)
                | Outcome::Unstored(v)
                | Outcome::Revalidated(v),
            ) => Ok(answer(v.as_ref(), false)),
            Ok(Outcome::Stale(v)) => Ok(answer(v.as_ref(), true)),
            Err(e) => Err(e.clone()),
        };
        publish(self.leader.take(), answer);
        result
    }
}

/// What a caller that joins another caller's fetch may wait for: its
/// timeouts bound the wait as they bound a fetch of its own.
struct Waiting<'a, V> {
    limit: Option<Duration>,
    started: std::time::Instant,
    #[allow(clippy::option_option)] // the inner `None` is a cached "not found"
    stale: Option<&'a Option<Arc<V>>>,
}

impl<V> Waiting<'_, V> {
    /// The answer of a caller whose timeout fired before the leader
    /// answered: its stale value, else a timeout error.
    fn gave_up(self, key: &Key, source: &SourceCounters) -> Result<Outcome<V>> {
        stale_or(self.stale.cloned(), &source.local().stale_served, || {
            Error::new(
                ErrorKind::Timeout,
                format!("{key}: another caller's fetch did not answer in time"),
            )
        })
    }
}

/// Hands a result to the callers waiting in this process, if single-flight
/// is on.
fn publish(leader: Option<LeaderGuard<'_>>, result: flight::FlightResult) {
    if let Some(leader) = leader {
        leader.publish(result);
    }
}

async fn release(lease: Option<Lease>) {
    if let Some(lease) = lease {
        lease.release().await;
    }
}

/// How long a call may wait before its fetch starts: its `max_wait`, and
/// its soft (when a stale value is at hand) and hard timeouts.
pub(crate) fn wait_limit(
    options: &FetchOptions,
    has_stale: bool,
    max_wait: Option<Duration>,
) -> Option<Duration> {
    [
        max_wait,
        options.soft_timeout.filter(|_| has_stale),
        options.hard_timeout,
    ]
    .into_iter()
    .flatten()
    .min()
}

/// What is left of `limit` since `started`.
fn remaining(limit: Option<Duration>, started: std::time::Instant) -> Option<Duration> {
    limit.map(|limit| limit.saturating_sub(started.elapsed()))
}

/// The `Retry-After` a fetch error carries: a [`FetchError`] anywhere in its
/// chain of sources.
pub(crate) fn slow_down(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(found) = e.downcast_ref::<FetchError>() {
            return found.retry_after;
        }
        next = e.source();
    }
    None
}

/// Offline, only a cached fallback answers.
#[allow(clippy::option_option)] // the inner `None` is a cached "not found"
fn offline_answer<V>(
    key: &Key,
    stale: Option<Option<Arc<V>>>,
    stale_served: &std::sync::atomic::AtomicU64,
) -> Result<Outcome<V>> {
    stale_or(stale, stale_served, || {
        Error::new(
            ErrorKind::Unavailable,
            format!("offline, and {key} is not cached"),
        )
    })
}

/// The stale value, counted as served, when there is one; else the
/// fetch error `error` makes.
#[allow(clippy::option_option)] // the inner `None` is a cached "not found"
fn stale_or<V>(
    stale: Option<Option<Arc<V>>>,
    stale_served: &std::sync::atomic::AtomicU64,
    error: impl FnOnce() -> Error,
) -> Result<Outcome<V>> {
    match stale {
        Some(value) => {
            bump(stale_served);
            Ok(Outcome::Stale(value))
        }
        None => Err(error().with_operation(Operation::Fetch)),
    }
}

/// The stale fallback a caller can return: a stale "not found" is none for
/// callers that need a value, so for them the key is a plain miss (the fetch
/// error is theirs, no stale answer is counted, no soft timeout applies).
#[allow(clippy::option_option)] // the inner `None` is a cached "not found"
fn usable_fallback<V>(stale: Option<Option<Arc<V>>>, negatives: bool) -> Option<Option<Arc<V>>> {
    stale.filter(|value| negatives || value.is_some())
}

/// A flight answer from a value (`None`: "not found").
fn answer<V: CacheValue>(value: Option<&Arc<V>>, stale: bool) -> Answer {
    Answer {
        value: value.map(|v| Decoded::new(Arc::clone(v))),
        stale,
    }
}

/// The typed value of a flight answer: `Some(None)` for "not found", `None`
/// when the leader fetched another type.
#[allow(clippy::option_option)] // the inner `None` is a "not found" answer
fn typed<V: CacheValue>(answer: &Answer) -> Option<Option<Arc<V>>> {
    match &answer.value {
        None => Some(None),
        Some(decoded) => decoded.downcast::<V>().map(Some),
    }
}

/// "fetch failed: {key}", with the fetch's own error as the source (not in
/// the message, so a report shows it once). A fetch the upstream answered
/// with "slow down" is `Throttled`, like the calls its circuit turns away.
pub(crate) fn fetch_error(key: &Key, error: BoxError, slow_down: Option<Duration>) -> Error {
    let failed = match slow_down {
        Some(wait) => Error::new(
            ErrorKind::Throttled,
            format!("{key}: the upstream asked to slow down"),
        )
        .with_retry_after(wait),
        None => Error::new(ErrorKind::Fetch, key.to_string()),
    };
    failed
        .with_operation(Operation::Fetch)
        .with_shared_source(Arc::from(error))
}
