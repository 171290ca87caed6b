//! Warming: fetching a list of keys ahead of use, politely.

use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt as _;
use governor::{Quota, RateLimiter};
use tierstack_core::Key;

use crate::cache::{CacheValue, TieredCache};
use crate::fetch::{BoxError, FetchOptions, Outcome};

/// How [`TieredCache::warm`] fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmOptions {
    /// Keys fetched at the same time. Default 4.
    pub concurrency: usize,
    /// Most fetches started per second (a token bucket with a burst of one
    /// second's worth). `None`: no limit.
    pub rate_per_sec: Option<NonZeroU32>,
    /// TTL and timeouts of the fetched values.
    pub fetch: FetchOptions,
}

impl Default for WarmOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            rate_per_sec: None,
            fetch: FetchOptions::default(),
        }
    }
}

impl WarmOptions {
    /// At most `rate` fetches per second.
    #[must_use]
    pub fn rate_per_sec(mut self, rate: u32) -> Self {
        self.rate_per_sec = NonZeroU32::new(rate);
        self
    }

    /// `n` fetches at a time.
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }
}

/// What a warm did, so far or in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WarmReport {
    /// Keys looked at.
    pub done: u64,
    /// Keys that were already fresh in some tier (not fetched).
    pub fresh: u64,
    /// Keys fetched and cached.
    pub fetched: u64,
    /// Keys the source does not know (cached as "not found").
    pub not_found: u64,
    /// Keys whose fetch failed (nothing cached).
    pub failed: u64,
    /// Keys fetched whose value no tier stored: it cannot be encoded within
    /// the entry cap ([`TieredCache::max_value_len`]), or every tier failed
    /// to write it. Not counted in `fetched`.
    pub not_stored: u64,
}

#[derive(Default)]
struct Counts {
    done: AtomicU64,
    fresh: AtomicU64,
    fetched: AtomicU64,
    not_found: AtomicU64,
    failed: AtomicU64,
    not_stored: AtomicU64,
}

impl Counts {
    fn report(&self) -> WarmReport {
        WarmReport {
            done: self.done.load(Ordering::Relaxed),
            fresh: self.fresh.load(Ordering::Relaxed),
            fetched: self.fetched.load(Ordering::Relaxed),
            not_found: self.not_found.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            not_stored: self.not_stored.load(Ordering::Relaxed),
        }
    }
}

impl TieredCache {
    /// Fetches every key that is not fresh in some tier, at most
    /// `options.concurrency` at a time and `options.rate_per_sec` per second,
    /// and caches the answers (`Ok(None)`: "not found"). Fresh keys are
    /// skipped without touching the source. `progress` is called after each
    /// key. A failing key is counted and the warm goes on.
    pub async fn warm<V, I, F, Fut, E>(
        &self,
        keys: I,
        options: WarmOptions,
        fetch: F,
        progress: impl Fn(&WarmReport) + Sync,
    ) -> WarmReport
    where
        V: CacheValue,
        I: IntoIterator<Item = Key>,
        F: Fn(Key) -> Fut + Sync,
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        let limiter = options
            .rate_per_sec
            .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
        let counts = Counts::default();
        futures_util::stream::iter(keys)
            .map(|key| {
                let (limiter, counts, fetch, progress) = (&limiter, &counts, &fetch, &progress);
                async move {
                    let fetch_key = key.clone();
                    // The limiter only runs when a fetch is needed.
                    let fetch = |_| async move {
                        if let Some(limiter) = limiter {
                            limiter.until_ready().await;
                        }
                        fetch(fetch_key).await
                    };
                    let counter = match self
                        .resolve::<V, _, _, _, _>(
                            &key,
                            options.fetch,
                            true,
                            &mut None,
                            crate::fetch::Judge::none(),
                            None,
                            fetch,
                        )
                        .await
                    {
                        Ok(Outcome::Cached(_)) => &counts.fresh,
                        // A warm fetch never answers "not modified".
                        Ok(Outcome::Fetched(Some(_)) | Outcome::Revalidated(_)) => &counts.fetched,
                        Ok(Outcome::Fetched(None)) => &counts.not_found,
                        Ok(Outcome::Unstored(_)) => &counts.not_stored,
                        Ok(Outcome::Stale(_)) | Err(_) => &counts.failed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    counts.done.fetch_add(1, Ordering::Relaxed);
                    progress(&counts.report());
                }
            })
            .buffer_unordered(options.concurrency.max(1))
            .collect::<()>()
            .await;
        counts.report()
    }
}
