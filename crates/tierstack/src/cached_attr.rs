//! The runtime side of `#[tierstack::cached]`: where the attribute finds
//! its cache ([`GlobalCache`] and the traits beneath it) and the functions
//! its expansion calls (`__macro`, not a public API).

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tierstack_core::{Error, ErrorKind, Key, Result};

use crate::blocking;
use crate::cache::{CacheValue, TieredCache};
use crate::fetch::FetchOptions;

/// A cache in a `static`, set once at startup, for `#[cached(cache =
/// NAME)]` functions: caches are built with `.await` (their tiers open
/// files and connect), so a `LazyLock` cannot build one.
///
/// `GlobalCache` (or `GlobalCache<TieredCache>`) serves `async` functions;
/// `GlobalCache<blocking::TieredCache>` serves plain ones.
///
/// ```
/// use tierstack::{GlobalCache, MemoryConfig, MemoryTier, TieredCache};
///
/// static CACHE: GlobalCache = GlobalCache::new();
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierstack::Result<()> {
/// CACHE.set(
///     TieredCache::builder()
///         .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000))?)
///         .build(),
/// )
/// .expect("set once, at startup");
/// assert!(CACHE.get().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct GlobalCache<C = TieredCache> {
    cell: OnceLock<C>,
}

impl<C> GlobalCache<C> {
    /// An empty slot, for a `static`.
    pub const fn new() -> Self {
        Self {
            cell: OnceLock::new(),
        }
    }

    /// Sets the cache; `Err` gives it back if one was set before.
    pub fn set(&self, cache: C) -> std::result::Result<(), C> {
        self.cell.set(cache)
    }

    /// The cache, once set.
    pub fn get(&self) -> Option<&C> {
        self.cell.get()
    }
}

impl<C> Default for GlobalCache<C> {
    fn default() -> Self {
        Self::new()
    }
}

fn not_set() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the GlobalCache of a #[cached] function was used before GlobalCache::set",
    )
}

/// What an `async` `#[cached]` function can take its cache from: a
/// [`TieredCache`], an `Arc` of one, a [`GlobalCache`], or a reference to
/// any of these.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a cache an async #[cached] function can use",
    note = "give `cache =` a `TieredCache`, an `Arc<TieredCache>`, a `GlobalCache` static, or a reference to one of these; a plain (not async) function needs a `blocking::TieredCache`"
)]
pub trait AsyncCacheRef {
    /// The cache, or an error if a [`GlobalCache`] was not set.
    fn tiered(&self) -> Result<&TieredCache>;
}

impl AsyncCacheRef for TieredCache {
    fn tiered(&self) -> Result<&TieredCache> {
        Ok(self)
    }
}

impl AsyncCacheRef for GlobalCache<TieredCache> {
    fn tiered(&self) -> Result<&TieredCache> {
        self.get().ok_or_else(not_set)
    }
}

impl<T: AsyncCacheRef + ?Sized> AsyncCacheRef for &T {
    fn tiered(&self) -> Result<&TieredCache> {
        (**self).tiered()
    }
}

impl<T: AsyncCacheRef + ?Sized> AsyncCacheRef for Arc<T> {
    fn tiered(&self) -> Result<&TieredCache> {
        (**self).tiered()
    }
}

/// What a plain (not `async`) `#[cached]` function can take its cache
/// from: a [`blocking::TieredCache`], an `Arc` of one, a
/// `GlobalCache<blocking::TieredCache>`, or a reference to any of these.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a cache a plain (not async) #[cached] function can use",
    note = "a plain function needs a `blocking::TieredCache` (or an `Arc`, a `GlobalCache<blocking::TieredCache>` static, or a reference to one)"
)]
pub trait BlockingCacheRef {
    /// The cache, or an error if a [`GlobalCache`] was not set.
    fn blocking(&self) -> Result<&blocking::TieredCache>;
}

impl BlockingCacheRef for blocking::TieredCache {
    fn blocking(&self) -> Result<&blocking::TieredCache> {
        Ok(self)
    }
}

impl BlockingCacheRef for GlobalCache<blocking::TieredCache> {
    fn blocking(&self) -> Result<&blocking::TieredCache> {
        self.get().ok_or_else(not_set)
    }
}

impl<T: BlockingCacheRef + ?Sized> BlockingCacheRef for &T {
    fn blocking(&self) -> Result<&blocking::TieredCache> {
        (**self).blocking()
    }
}

impl<T: BlockingCacheRef + ?Sized> BlockingCacheRef for Arc<T> {
    fn blocking(&self) -> Result<&blocking::TieredCache> {
        (**self).blocking()
    }
}

/// The error type of a `#[cached]` function returning `Result<_, E>`:
/// errors of the cache itself (offline and not cached, a timeout waiting
/// for another caller, a spent rate limit) reach the caller as an `E`.
#[diagnostic::on_unimplemented(
    message = "the error type `{Self}` of a #[cached] function must implement `From<tierstack::Error>`",
    note = "the cache's own errors (offline, timeouts, rate limits) are returned as this type; add a variant with `#[from] tierstack::Error` (thiserror) or implement `From<tierstack::Error>`"
)]
pub trait FromCacheError: From<Error> {}

impl<E: From<Error>> FromCacheError for E {}

/// What `#[tierstack::cached]` expands to. Not a public API: names and
/// signatures change without notice.
#[doc(hidden)]
pub mod __macro {
    use std::borrow::Cow;

    use super::{
        Arc, AsyncCacheRef, BlockingCacheRef, CacheValue, Error, FetchOptions, FromCacheError,
        Future, Key, Result,
    };
    pub use tierstack_core::AsParam;

    /// A parameter's text, by reference.
    pub fn param<T: AsParam + ?Sized>(value: &T) -> Option<Cow<'_, str>> {
        value.as_param()
    }

    /// Gives an `async` body its declared output type, so that `?` and
    /// `return` inside it mean what they meant in the function.
    pub fn typed_future<R, F: Future<Output = R>>(body: F) -> F {
        body
    }

    /// The same for a plain function's body.
    pub fn typed_closure<R, F: FnOnce() -> R>(body: F) -> F {
        body
    }

    /// The value a function returning `T` (not `Arc<T>`) gives its
    /// caller: the cache's copy if nothing else holds it, else a clone.
    pub fn unwrap_or_clone<T: Clone>(value: Arc<T>) -> T {
        Arc::unwrap_or_clone(value)
    }

    /// The error the cache records for a body that returned its own error;
    /// the caller that ran the body gets that error itself.
    #[derive(Debug)]
    pub struct BodyFailed;

    impl std::fmt::Display for BodyFailed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the cached function returned an error")
        }
    }

    impl std::error::Error for BodyFailed {}

    /// The error of this caller's own body, kept beside the call: the
    /// cache records [`BodyFailed`] (never cached), and this caller gets
    /// its error back as it was; other callers, and the cache's own
    /// errors, get an `E` made from the cache's error.
    struct OwnError<E>(Option<E>);

    impl<E: FromCacheError> OwnError<E> {
        fn keep<T>(
            &mut self,
            outcome: std::result::Result<T, E>,
        ) -> std::result::Result<T, BodyFailed> {
            outcome.map_err(|e| {
                self.0 = Some(e);
                BodyFailed
            })
        }

        fn or_cache(self, error: Error) -> E {
            self.0.unwrap_or_else(|| E::from(error))
        }
    }

    /// A fresh memory hit of `key`, answered before the body or any
    /// future of the lookup is made.
    pub fn hit<C, T>(cache: &C, key: &Key) -> Option<Arc<T>>
    where
        C: AsyncCacheRef + ?Sized,
        T: CacheValue,
    {
        let (value, _) = cache.tiered().ok()?.ready_hit::<T>(key)?;
        Some(value)
    }

    /// [`hit`] for plain functions.
    pub fn blocking_hit<C, T>(cache: &C, key: &Key) -> Option<Arc<T>>
    where
        C: BlockingCacheRef + ?Sized,
        T: CacheValue,
    {
        let (value, _) = cache.blocking().ok()?.as_async().ready_hit::<T>(key)?;
        Some(value)
    }

    /// [`hit`] for a function with `refresh_ahead`: the hit, and whether
    /// it lived past `fraction` of its TTL.
    pub fn hit_due<C, T>(cache: &C, key: &Key, fraction: f64) -> Option<(Arc<T>, bool)>
    where
        C: AsyncCacheRef + ?Sized,
        T: CacheValue,
    {
        let (value, header) = cache.tiered().ok()?.ready_hit::<T>(key)?;
        Some((
            value,
            crate::cached_fn::refresh_due(&header, fraction, tierstack_core::Timestamp::now()),
        ))
    }

    /// [`hit_due`] for plain functions.
    pub fn blocking_hit_due<C, T>(cache: &C, key: &Key, fraction: f64) -> Option<(Arc<T>, bool)>
    where
        C: BlockingCacheRef + ?Sized,
        T: CacheValue,
    {
        let (value, header) = cache.blocking().ok()?.as_async().ready_hit::<T>(key)?;
        Some((
            value,
            crate::cached_fn::refresh_due(&header, fraction, tierstack_core::Timestamp::now()),
        ))
    }

    /// What a refreshed body answered, as the cache stores it: a value, a
    /// negative entry (`None`), or an error, which leaves the current value.
    pub type Refreshed<T> = std::result::Result<Option<T>, BodyFailed>;

    /// [`Refreshed`] of a `Result<T, E>` body.
    pub fn refreshed_result<T, E>(outcome: std::result::Result<T, E>) -> Refreshed<T> {
        outcome.map(Some).map_err(|_| BodyFailed)
    }

    /// [`Refreshed`] of a `Result<Option<T>, E>` body.
    pub fn refreshed_result_option<T, E>(
        outcome: std::result::Result<Option<T>, E>,
    ) -> Refreshed<T> {
        outcome.map_err(|_| BodyFailed)
    }

    /// [`Refreshed`] of an `Option<T>` body.
    #[allow(clippy::unnecessary_wraps)] // one signature for all four shapes
    pub fn refreshed_option<T>(outcome: Option<T>) -> Refreshed<T> {
        Ok(outcome)
    }

    /// [`Refreshed`] of a plain `T` body.
    #[allow(clippy::unnecessary_wraps)]
    pub fn refreshed_plain<T>(outcome: T) -> Refreshed<T> {
        Ok(Some(outcome))
    }

    /// Runs `body` in the background to refresh `key` (one refresh per key
    /// at a time; the caller has its answer already). A cache that cannot
    /// be reached refreshes nothing.
    pub fn refresh<C, T, F>(
        cache: &C,
        key: Key,
        options: FetchOptions,
        body: F,
        stored: fn(F::Output) -> Refreshed<T>,
    ) where
        C: AsyncCacheRef + ?Sized,
        T: CacheValue,
        F: Future + Send + 'static,
    {
        if let Ok(cache) = cache.tiered() {
            cache.refresh_in_background(None, key, options, None, move |_| async move {
                stored(body.await).map_err(Into::into)
            });
        }
    }

    /// [`refresh`] for plain functions: the body runs on a blocking thread
    /// of the cache's own runtime.
    pub fn blocking_refresh<C, T, F, R>(
        cache: &C,
        key: Key,
        options: FetchOptions,
        body: F,
        stored: fn(R) -> Refreshed<T>,
    ) where
        C: BlockingCacheRef + ?Sized,
        T: CacheValue,
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        if let Ok(cache) = cache.blocking() {
            let on = Some(cache.runtime());
            cache
                .as_async()
                .refresh_in_background(on, key, options, None, move |_| async move {
                    // On the cache's runtime: the task was spawned there.
                    match tokio::task::spawn_blocking(body).await {
                        Ok(outcome) => stored(outcome).map_err(Into::into),
                        Err(panicked) => Err(panicked.into()),
                    }
                });
        }
    }

    /// `Result<T, E>` (or `Result<Arc<T>, E>` through `into_value`): errors
    /// are not cached; the caller whose body failed gets its error, others
    /// the cache's as an `E`.
    pub async fn result<C, T, E, F>(
        cache: &C,
        key: &Key,
        options: FetchOptions,
        body: F,
    ) -> std::result::Result<Arc<T>, E>
    where
        C: AsyncCacheRef + ?Sized,
        T: CacheValue,
        E: FromCacheError,
        F: Future<Output = std::result::Result<T, E>>,
    {
        let cache = cache.tiered().map_err(E::from)?;
        let mut own = OwnError(None);
        let kept = &mut own;
        let outcome = cache
            .get_or_fetch(key, options, |_| async move { kept.keep(body.await) })
            .await;
        outcome.map_err(|e| own.or_cache(e))
    }

    /// `Result<Option<T>, E>`: `None` is cached as a negative entry.
    pub async fn result_option<C, T, E, F>(
        cache: &C,
        key: &Key,
        options: FetchOptions,
        body: F,
    ) -> std::result::Result<Option<Arc<T>>, E>
    where
        C: AsyncCacheRef + ?Sized,
        T: CacheValue,
        E: FromCacheError,
        F: Future<Output = std::result::Result<Option<T>, E>>,
    {
        let cache = cache.tiered().map_err(E::from)?;
        let mut own = OwnError(None);
        let kept = &mut own;
        let outcome = cache
            .get_or_fetch_optional(key, options, |_| async move { kept.keep(body.await) })
            .await;
        outcome.map_err(|e| own.or_cache(e))
    }

    /// Says once per process, at WARN, that a function runs uncached
    /// because its cache cannot be reached (a `GlobalCache` not set).
    fn warn_uncached(error: &Error) {
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(error = %error.report(), "a #[cached] function runs uncached (said once)");
        }
    }

    /// `Option<T>`: `None` is cached as a negative entry. A function that
    /// cannot fail cannot report the cache's refusal (offline and not
    /// cached, a spent rate limit, a `GlobalCache` not set, said once at
    /// WARN): then its body runs uncached.
    pub async fn option<C, T, F>(
        cache: &C,
        key: &Key,
        options: FetchOptions,
        body: F,
    ) -> Option<Arc<T>>
    where
        C: AsyncCacheRef + ?Sized,
        T: CacheValue,
        F: Future<Output = Option<T>>,
    {
        let mut body = Some(body);
        let cache = cache.tiered().inspect_err(warn_uncached);
        if let Ok(cache) = cache {
            let slot = &mut body;
            let outcome = cache
                .get_or_fetch_optional(key, options, |_| async move {
                    match slot.take() {
                        Some(body) => Ok(body.await),
                        None => Err(Error::new(
                            tierstack_core::ErrorKind::Other,
                            "the body already ran",
                        )),
                    }
                })
                .await;
            if let Ok(value) = outcome {
                return value;
            }
        }
        match body {
            Some(body) => body.await.map(Arc::new),
            // The body ran and the cache still failed: it answered `None`
            // only if the cache could not store it, which is not an error.
            None => None,
        }
    }

    /// A plain `T`: as [`option`], for a function that always answers.
    pub async fn plain<C, T, F>(cache: &C, key: &Key, options: FetchOptions, body: F) -> Arc<T>
    where
        C: AsyncCacheRef + ?Sized,
        T: CacheValue,
        F: Future<Output = T>,
    {
        let mut body = Some(body);
        let cache = cache.tiered().inspect_err(warn_uncached);
        if let Ok(cache) = cache {
            let slot = &mut body;
            let outcome = cache
                .get_or_fetch(key, options, |_| async move {
                    match slot.take() {
                        Some(body) => Ok::<_, BodyFailed>(body.await),
                        None => Err(BodyFailed),
                    }
                })
                .await;
            if let Ok(value) = outcome {
                return value;
            }
        }
        match body {
            Some(body) => Arc::new(body.await),
            None => unreachable_ran(),
        }
    }

    /// Removes one call's entry from every tier.
    pub async fn invalidate<C: AsyncCacheRef + ?Sized>(cache: &C, key: &Key) -> Result<bool> {
        cache.tiered()?.delete(key).await
    }

    /// `Result<T, E>` of a plain function.
    pub fn blocking_result<C, T, E, F>(
        cache: &C,
        key: &Key,
        options: FetchOptions,
        body: F,
    ) -> std::result::Result<Arc<T>, E>
    where
        C: BlockingCacheRef + ?Sized,
        T: CacheValue,
        E: FromCacheError,
        F: FnOnce() -> std::result::Result<T, E>,
    {
        let cache = cache.blocking().map_err(E::from)?;
        let mut own = OwnError(None);
        let outcome = cache.get_or_fetch(key, options, |_| own.keep(body()));
        outcome.map_err(|e| own.or_cache(e))
    }

    /// `Result<Option<T>, E>` of a plain function.
    pub fn blocking_result_option<C, T, E, F>(
        cache: &C,
        key: &Key,
        options: FetchOptions,
        body: F,
    ) -> std::result::Result<Option<Arc<T>>, E>
    where
        C: BlockingCacheRef + ?Sized,
        T: CacheValue,
        E: FromCacheError,
        F: FnOnce() -> std::result::Result<Option<T>, E>,
    {
        let cache = cache.blocking().map_err(E::from)?;
        let mut own = OwnError(None);
        let outcome = cache.get_or_fetch_optional(key, options, |_| own.keep(body()));
        outcome.map_err(|e| own.or_cache(e))
    }

    /// `Option<T>` of a plain function (see [`option`]).
    pub fn blocking_option<C, T, F>(
        cache: &C,
        key: &Key,
        options: FetchOptions,
        body: F,
    ) -> Option<Arc<T>>
    where
        C: BlockingCacheRef + ?Sized,
        T: CacheValue,
        F: FnOnce() -> Option<T>,
    {
        let mut body = Some(body);
        let cache = cache.blocking().inspect_err(warn_uncached);
        if let Ok(cache) = cache {
            let outcome = cache.get_or_fetch_optional(key, options, |_| match body.take() {
                Some(body) => Ok(body()),
                None => Err(BodyFailed),
            });
            if let Ok(value) = outcome {
                return value;
            }
        }
        body.and_then(|body| body().map(Arc::new))
    }

    /// A plain `T` of a plain function (see [`plain`]).
    pub fn blocking_plain<C, T, F>(cache: &C, key: &Key, options: FetchOptions, body: F) -> Arc<T>
    where
        C: BlockingCacheRef + ?Sized,
        T: CacheValue,
        F: FnOnce() -> T,
    {
        let mut body = Some(body);
        let cache = cache.blocking().inspect_err(warn_uncached);
        if let Ok(cache) = cache {
            let outcome = cache.get_or_fetch(key, options, |_| match body.take() {
                Some(body) => Ok::<_, BodyFailed>(body()),
                None => Err(BodyFailed),
            });
            if let Ok(value) = outcome {
                return value;
            }
        }
        match body {
            Some(body) => Arc::new(body()),
            None => unreachable_ran(),
        }
    }

    /// Removes one call's entry from every tier (plain functions).
    pub fn blocking_invalidate<C: BlockingCacheRef + ?Sized>(cache: &C, key: &Key) -> Result<bool> {
        cache.blocking()?.delete(key)
    }

    /// A body that ran to its end gave `get_or_fetch` a value, which it
    /// returns (a tier failing to store it is not an error), and the
    /// attribute refuses timeouts, which could cancel the body, on
    /// functions that cannot report them. So a taken body always answered.
    #[cold]
    fn unreachable_ran() -> ! {
        unreachable!("get_or_fetch returns the value of the fetch it ran")
    }
}
