//! `CachedFn`: caching a function is one line.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> tierstack::Result<()> {
//! use std::time::Duration;
//! use tierstack::{Key, MemoryConfig, MemoryTier, TieredCache};
//!
//! # #[derive(Debug)] struct ApiError;
//! # impl std::fmt::Display for ApiError { fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("api") } }
//! # impl std::error::Error for ApiError {}
//! async fn search_books(query: String, author: Option<String>) -> Result<Vec<String>, ApiError> {
//!     Ok(vec![format!("{query} by {}", author.unwrap_or_default())])
//! }
//!
//! let cache = TieredCache::builder().tier(MemoryTier::new(&MemoryConfig::with_max_entries(100))?).build();
//! let search = cache
//!     .cached_fn(
//!         |(q, author): &(String, Option<String>)| {
//!             Key::new("audnexus:search", [("q", Some(q.as_str())), ("author", author.as_deref())])
//!         },
//!         |(q, author): (String, Option<String>), _| search_books(q, author),
//!     )
//!     .ttl(Duration::from_secs(3600));
//!
//! let books = search.call(("dune".into(), Some("herbert".into()))).await?;
//! assert_eq!(books[0], "dune by herbert");
//! # Ok(()) }
//! ```

use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use tierstack_core::{Entry, Header, Key, Result, Timestamp};

use crate::cache::{CacheValue, TieredCache, Ttl};
use crate::fetch::{BoxError, FetchContext, FetchOptions, Fetched};
use crate::revalidate::IntoAnswered;
use crate::stats::bump;

type Loader<A, V> =
    dyn Fn(A, FetchContext) -> BoxFuture<'static, std::result::Result<V, BoxError>> + Send + Sync;

/// A function whose results go through a [`TieredCache`]: the key is built
/// from the arguments, the function runs only on a miss (once per key at a
/// time), and with [`CachedFn::refresh_ahead`] a hit late in its life
/// refreshes the entry in the background while the caller gets the current
/// value at once.
pub struct CachedFn<A, V> {
    cache: TieredCache,
    key: Arc<dyn Fn(&A) -> Key + Send + Sync>,
    load: Arc<Loader<A, V>>,
    options: FetchOptions,
    refresh_ahead: Option<f64>,
}

impl<A, V> Clone for CachedFn<A, V> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            key: Arc::clone(&self.key),
            load: Arc::clone(&self.load),
            options: self.options,
            refresh_ahead: self.refresh_ahead,
        }
    }
}

impl<A, V> std::fmt::Debug for CachedFn<A, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedFn")
            .field("options", &self.options)
            .field("refresh_ahead", &self.refresh_ahead)
            .finish_non_exhaustive()
    }
}

impl TieredCache {
    /// Wraps `load` so that its results are cached under the key `key`
    /// builds from the arguments. Arguments are one value (use a tuple for
    /// several).
    ///
    /// `load` is called with the arguments and the call's [`FetchContext`].
    /// It is kept and called again for every miss and background refresh, so
    /// its future must own what it uses: clone a client into it
    /// (`move |args, _| { let api = api.clone(); async move { api.search(args).await } }`).
    pub fn cached_fn<A, V, K, L, Fut, E>(&self, key: K, load: L) -> CachedFn<A, V>
    where
        A: Send + 'static,
        V: CacheValue,
        K: Fn(&A) -> Key + Send + Sync + 'static,
        L: Fn(A, FetchContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<V, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let load = move |args: A, context: FetchContext| {
            load(args, context).map(|r| r.map_err(Into::into)).boxed()
        };
        CachedFn {
            cache: self.clone(),
            key: Arc::new(key),
            load: Arc::new(load),
            options: FetchOptions::default(),
            refresh_ahead: None,
        }
    }
}

impl<A, V> CachedFn<A, V>
where
    A: Clone + Send + 'static,
    V: CacheValue,
{
    /// Sets the TTL of cached results (default: each tier's own).
    #[must_use]
    pub fn ttl(mut self, ttl: impl Into<Ttl>) -> Self {
        self.options.ttl = ttl.into();
        self
    }

    /// Sets all fetch options (TTL, timeouts, stale window).
    #[must_use]
    pub fn options(mut self, options: FetchOptions) -> Self {
        self.options = options;
        self
    }

    /// Refreshes an entry in the background once a hit finds it past this
    /// fraction of its TTL (`0.8`: in its last fifth). One refresh per key at
    /// a time; callers never wait for it.
    #[must_use]
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = Some(fraction.clamp(0.0, 1.0));
        self
    }

    /// The key the arguments map to.
    pub fn key(&self, args: &A) -> Key {
        (self.key)(args)
    }

    /// Calls the function through the cache.
    pub async fn call(&self, args: A) -> Result<Arc<V>> {
        let key = (self.key)(&args);
        if let Some((value, header)) = self.cache.ready_hit::<V>(&key) {
            self.refresh_if_due(&header, key, args);
            return Ok(value);
        }
        // Boxed: the lookup and fetch machinery would make this future
        // large, and a hit above would pay for moving it.
        Box::pin(self.call_keyed(key, args))
            .await
            .map(Fetched::into_value)
    }

    /// Calls the function through the cache, saying where the value came from.
    pub async fn call_with(&self, args: A) -> Result<Fetched<V>> {
        let key = (self.key)(&args);
        self.call_keyed(key, args).await
    }

    fn refresh_if_due(&self, header: &Header, key: Key, args: A) {
        if let Some(fraction) = self.refresh_ahead {
            if refresh_due(header, fraction, Timestamp::now()) {
                self.refresh_in_background(key, args);
            }
        }
    }

    async fn call_keyed(&self, key: Key, args: A) -> Result<Fetched<V>> {
        let load = Arc::clone(&self.load);
        let fetch_args = args.clone();
        let fetch = move |context| async move { load(fetch_args, context).await.map(Some) };
        let mut header = None;
        let outcome = self
            .cache
            .resolve(
                &key,
                self.options,
                false,
                &mut header,
                crate::fetch::Judge::none(),
                None,
                fetch,
            )
            .await?;
        if let Some(header) = header {
            self.refresh_if_due(&header, key.clone(), args);
        }
        outcome.into_fetched(&key)
    }

    fn refresh_in_background(&self, key: Key, args: A) {
        let load = Arc::clone(&self.load);
        self.cache.refresh_in_background(
            None,
            key,
            self.options,
            None,
            move |context| async move { load(args, context).await.map(Some) },
        );
    }
}

impl TieredCache {
    /// Refreshes `key` in a task of its own, unless a refresh of it runs
    /// already: `load` answers a value (`None`: a negative entry), which
    /// replaces the current one in every tier, or, offered the expired
    /// entry `kept` (with validators), "not modified" for it
    /// ([`Revalidated`](crate::Revalidated)). The current value stays
    /// whatever the refresh does. The task runs on `on`, else on the
    /// caller's Tokio runtime; with neither, nothing is refreshed (said at
    /// DEBUG) and the entry expires as it would have.
    pub(crate) fn refresh_in_background<V, L, Fut, A>(
        &self,
        on: Option<&tokio::runtime::Handle>,
        key: Key,
        options: FetchOptions,
        kept: Option<Entry>,
        load: L,
    ) where
        V: CacheValue,
        L: FnOnce(FetchContext) -> Fut + Send + 'static,
        Fut: Future<Output = std::result::Result<A, BoxError>> + Send + 'static,
        A: IntoAnswered<V> + Send,
    {
        let Some(runtime) = on
            .cloned()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        else {
            tracing::debug!(key = %key, "no Tokio runtime to refresh in; the current value stays until it expires");
            return;
        };
        let inner = &self.inner;
        let started = inner
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone());
        if !started {
            return;
        }
        bump(&inner.sources.get(key.source()).local().refreshes);
        let cache = self.clone();
        runtime.spawn(async move {
            // Clears the key even if `load` panics, so the key can refresh again.
            let _done = Refreshing {
                cache: cache.clone(),
                key: key.clone(),
            };
            // A refresh reaches the upstream, so it spends the budget; one
            // that would wait past the deadline is skipped.
            let budget = cache.budget(&cache.policy(key.source()), &key);
            let probe = match budget
                .pass(crate::fetch::wait_limit(&options, true, None))
                .await
            {
                Ok(probe) => probe,
                Err(e) => {
                    tracing::debug!(key = %key, error = %e.report(), "background refresh skipped; the current value stays");
                    return;
                }
            };
            let context = FetchContext::new(&key, true, Some(budget.clone()))
                .keeping(kept.as_ref(), &cache);
            match load(context).await {
                Ok(answer) => {
                    budget.answered(None, probe).await;
                    let source = cache.inner.sources.get(key.source());
                    let mut kept = kept.map(Box::new);
                    if let Err(e) = cache
                        .store_answer(&key, &source, &mut kept, answer.into_answered(), options)
                        .await
                    {
                        tracing::warn!(key = %key, error = %e.report(), "background refresh not stored; the current value stays");
                    }
                }
                // An answer not to store: the current value stays.
                Err(e) if crate::FetchError::is_not_stored(&*e) => {
                    budget.answered(None, probe).await;
                    tracing::debug!(key = %key, error = %tierstack_core::Report::of(&*e), "background refresh not stored; the current value stays");
                }
                Err(e) => {
                    budget.answered(crate::fetch::slow_down(&*e), probe).await;
                    tracing::warn!(key = %key, error = %tierstack_core::Report::of(&*e), "background refresh failed; the current value stays");
                }
            }
        });
    }
}

/// Marks a key's background refresh as finished when dropped.
struct Refreshing {
    cache: TieredCache,
    key: Key,
}

impl Drop for Refreshing {
    fn drop(&mut self) {
        self.cache
            .inner
            .refreshing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Whether an entry has lived past `fraction` of its TTL, so a hit of it
/// starts a background refresh.
pub(crate) fn refresh_due(header: &Header, fraction: f64, now: Timestamp) -> bool {
    if header.expires_at.is_never() {
        return false;
    }
    let lifetime = header
        .expires_at
        .as_millis()
        .saturating_sub(header.created_at.as_millis());
    let age = now
        .as_millis()
        .saturating_sub(header.created_at.as_millis());
    #[allow(clippy::cast_precision_loss)]
    let due = age as f64 >= lifetime as f64 * fraction;
    due
}
