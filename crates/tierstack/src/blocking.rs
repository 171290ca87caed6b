//! A blocking API for synchronous programs, like `reqwest::blocking`.
//!
//! [`blocking::TieredCache`](TieredCache) wraps the async
//! [`crate::TieredCache`] and owns a runtime thread of its own, where the
//! tiers' background work lives (the Redis connection's driver, the
//! invalidation backplane, lease renewals, refresh-ahead): the cache works
//! in a program without a Tokio runtime, and outlives any runtime its
//! caller happens to run in.
//!
//! ```
//! use std::sync::Arc;
//! use tierstack::{Config, Key, Ttl, blocking};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let yaml = format!("cache:\n  location: {:?}\n", dir.path().display().to_string());
//! let config = Config::parse(&yaml, "yaml")?; // or Config::discover(None)?
//! let cache = blocking::TieredCache::from_config(&config)?;
//!
//! /// A synchronous function, as many CLIs have.
//! fn extract_path_info(path: &str) -> Result<String, std::io::Error> {
//!     Ok(path.trim_start_matches('/').to_uppercase())
//! }
//!
//! let key = Key::new("pathinfo", [("path", "/books/dune")]);
//! let info: Arc<String> =
//!     cache.get_or_fetch(&key, Ttl::TierDefault, |_| extract_path_info("/books/dune"))?;
//! assert_eq!(*info, "BOOKS/DUNE");
//! // A hit in the memory tier is answered on this thread, with no hand-off.
//! assert_eq!(cache.get::<String>(&key).as_deref(), Some(&"BOOKS/DUNE".to_owned()));
//! # Ok(())
//! # }
//! ```
//!
//! # How a call runs
//!
//! A fresh hit of a top tier that answers without I/O (the memory tier) is
//! answered on the calling thread, exactly as the async `get` answers it at
//! its first poll: no allocation, no hand-off. Anything else runs the async
//! call on the calling thread, blocking it until the call finishes, with
//! the cache's runtime as the context its timers, sockets and spawned tasks
//! belong to. So the closures given to
//! [`get_or_fetch`](TieredCache::get_or_fetch) may borrow what they like
//! (they need not be `Send` or `'static`), and they run on the caller's
//! thread.
//!
//! Calls work from any thread, including from inside a Tokio runtime of
//! either flavour (they block that worker thread for their duration, as any
//! blocking call does; in async code prefer the async cache,
//! [`TieredCache::as_async`]). One thing cannot work: on a current-thread
//! runtime, a blocking call for a key whose fetch an async task of that
//! same runtime is running waits for that task, which the blocked thread
//! is the only one to run; give such calls a
//! [`hard_timeout`](FetchOptions::hard_timeout), or use the async cache
//! there.
//!
//! A fetch closure may call the cache again for other keys; asking for its
//! own key is an error of kind [`ErrorKind::Fetch`] (it would wait for
//! itself).
//!
//! A fetch closure is a plain function: it runs to its end once called, so
//! [`FetchOptions::soft_timeout`] and [`FetchOptions::hard_timeout`] cannot
//! interrupt it (they still bound the wait for another caller's fetch of
//! the same key, and for a lease held by another process).

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tierstack_core::{ClearScope, Error, ErrorKind, Key, Result};

use crate::cache::{CacheValue, Ttl};
use crate::config_file::Config;
use crate::fetch::{BoxError, FetchContext, FetchOptions, Fetched};
use crate::stats::CacheStats;

/// How long the runtime thread waits, when the last handle is dropped, for
/// blocking tasks still running (an SQLite open, a sled flush) before it
/// leaves them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A [`crate::TieredCache`] for synchronous code. Cheap to clone: clones
/// share the cache and its runtime thread, which stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct TieredCache {
    // Declared first, so dropped before the runtime it may use.
    cache: crate::TieredCache,
    runtime: Arc<RuntimeThread>,
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("blocking::TieredCache")
            .field("tiers", &self.cache.tiers().count())
            .finish_non_exhaustive()
    }
}

impl TieredCache {
    /// Builds the cache a config describes (see
    /// [`crate::TieredCache::from_config`]), with a runtime thread of its
    /// own.
    pub fn from_config(config: &Config) -> Result<Self> {
        Self::build(|| crate::TieredCache::from_config(config))
    }

    /// Builds a cache with async code — opening tiers takes `.await` — run
    /// on the new cache's runtime, so the tiers' background tasks live
    /// there:
    ///
    /// ```
    /// use tierstack::{MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, blocking};
    /// # fn main() -> tierstack::Result<()> {
    /// # let dir = tempfile::tempdir().map_err(|e| tierstack::Error::new(tierstack::ErrorKind::Io, e.to_string()))?;
    /// # let path = dir.path().join("metadata.db");
    /// let cache = blocking::TieredCache::build(|| async {
    ///     TieredCache::builder()
    ///         .tier(MemoryTier::new(&MemoryConfig::with_max_entries(1000))?)
    ///         .tier(SqliteTier::open(&SqliteConfig::new(path), 1).await?)
    ///         .try_build()
    /// })?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn build<F, Fut>(build: F) -> Result<Self>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<crate::TieredCache>>,
    {
        let runtime = Arc::new(RuntimeThread::start()?);
        let cache = runtime.block_on(build())?;
        Ok(Self { cache, runtime })
    }

    /// The async cache underneath, for the async parts of a program: both
    /// APIs share entries, single-flight and counters. Its background
    /// tasks run on this blocking cache's runtime thread, which stops when
    /// the last blocking handle is dropped.
    pub fn as_async(&self) -> &crate::TieredCache {
        &self.cache
    }

    /// The runtime the cache's background tasks run on.
    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime.handle
    }

    /// Reads a fresh value (see [`crate::TieredCache::get`]).
    pub fn get<V: CacheValue>(&self, key: &Key) -> Option<Arc<V>> {
        if let Some((value, _)) = self.cache.ready_hit::<V>(key) {
            return Some(value);
        }
        self.runtime.block_on(self.cache.get(key))
    }

    /// Writes a value through every tier (see [`crate::TieredCache::set`]).
    pub fn set<V: CacheValue>(&self, key: &Key, value: V, ttl: impl Into<Ttl>) -> Result<()> {
        self.runtime.block_on(self.cache.set(key, value, ttl))
    }

    /// Removes a key from every tier (see [`crate::TieredCache::delete`]).
    pub fn delete(&self, key: &Key) -> Result<bool> {
        self.runtime.block_on(self.cache.delete(key))
    }

    /// Removes entries from every tier (see [`crate::TieredCache::clear`]).
    pub fn clear(&self, scope: ClearScope) -> Result<Vec<(String, u64)>> {
        self.runtime.block_on(self.cache.clear(scope))
    }

    /// Returns the cached value, or calls `fetch` once, caches its result
    /// and returns it: the semantics of [`crate::TieredCache::get_or_fetch`]
    /// (single-flight across threads and callers of the async API,
    /// stale-if-error, offline mode, the source's rate limit), with a plain
    /// closure.
    pub fn get_or_fetch<V, F, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> Result<Arc<V>>
    where
        V: CacheValue,
        F: FnOnce(FetchContext) -> std::result::Result<V, E>,
        E: Into<BoxError>,
    {
        self.hit_or_block_on(key, || {
            self.cache.get_or_fetch(key, options, |context| {
                std::future::ready(Fetching::run(key, || fetch(context)))
            })
        })
    }

    /// A memory hit of `key` at once; else `call` run on this thread, unless
    /// a fetch of the same key runs on it already (it would wait for itself).
    fn hit_or_block_on<V, Fut>(&self, key: &Key, call: impl FnOnce() -> Fut) -> Result<Arc<V>>
    where
        V: CacheValue,
        Fut: Future<Output = Result<Arc<V>>>,
    {
        if let Some((value, _)) = self.cache.ready_hit::<V>(key) {
            return Ok(value);
        }
        refuse_own_key(key)?;
        self.runtime.block_on(call())
    }

    /// Like [`TieredCache::get_or_fetch`] for sources that can answer "not
    /// found" (see [`crate::TieredCache::get_or_fetch_optional`]): `None`
    /// is cached as a negative entry.
    pub fn get_or_fetch_optional<V, F, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> Result<Option<Arc<V>>>
    where
        V: CacheValue,
        F: FnOnce(FetchContext) -> std::result::Result<Option<V>, E>,
        E: Into<BoxError>,
    {
        refuse_own_key(key)?;
        self.runtime
            .block_on(self.cache.get_or_fetch_optional(key, options, |context| {
                std::future::ready(Fetching::run(key, || fetch(context)))
            }))
    }

    /// [`TieredCache::get_or_fetch`] for an upstream that can answer "not
    /// modified" (see [`crate::TieredCache::get_or_revalidate`]): `fetch`
    /// gets the kept entry's validators in its [`FetchContext`].
    pub fn get_or_revalidate<V, F, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> Result<Arc<V>>
    where
        V: CacheValue,
        F: FnOnce(FetchContext) -> std::result::Result<crate::Revalidated<V>, E>,
        E: Into<BoxError>,
    {
        self.hit_or_block_on(key, || {
            self.cache.get_or_revalidate(key, options, |context| {
                std::future::ready(Fetching::run(key, || fetch(context)))
            })
        })
    }

    /// [`crate::TieredCache::get_or_revalidate_accepting`] with a plain
    /// closure.
    pub fn get_or_revalidate_accepting<V, A, F, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        accept: A,
        fetch: F,
    ) -> Result<Fetched<V>>
    where
        V: CacheValue,
        A: FnOnce(&V, &tierstack_core::Header) -> bool + Send,
        F: FnOnce(FetchContext) -> std::result::Result<crate::Revalidated<V>, E>,
        E: Into<BoxError>,
    {
        self.runtime
            .block_on(
                self.cache
                    .get_or_revalidate_accepting(key, options, accept, |context| {
                        std::future::ready(Fetching::run(key, || fetch(context)))
                    }),
            )
    }

    /// [`crate::TieredCache::get_stale_while_revalidate`] with plain
    /// closures: `background`, when `revalidate` returns one, runs on a
    /// blocking thread of the cache's runtime after the stale value is
    /// answered.
    pub fn get_stale_while_revalidate<V, R, B, F, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        revalidate: R,
        fetch: F,
    ) -> Result<Fetched<V>>
    where
        V: CacheValue,
        R: FnOnce(&V) -> Option<B> + Send,
        B: FnOnce(FetchContext) -> std::result::Result<crate::Revalidated<V>, E> + Send + 'static,
        F: FnOnce(FetchContext) -> std::result::Result<crate::Revalidated<V>, E>,
        E: Into<BoxError> + Send + 'static,
    {
        let background = |stale: &V| {
            revalidate(stale).map(|background| {
                move |context: FetchContext| async move {
                    match tokio::task::spawn_blocking(move || background(context)).await {
                        Ok(answer) => answer.map_err(Into::into),
                        Err(panicked) => Err(BoxError::from(panicked)),
                    }
                }
            })
        };
        self.runtime.block_on(self.cache.get_stale_while_revalidate(
            key,
            options,
            background,
            |context| std::future::ready(Fetching::run(key, || fetch(context)).map_err(Into::into)),
        ))
    }

    /// Turns offline mode on or off (see
    /// [`crate::TieredCache::set_offline`]).
    pub fn set_offline(&self, offline: bool) {
        self.cache.set_offline(offline);
    }

    /// A snapshot of the cache's counters (see
    /// [`crate::TieredCache::stats`]).
    pub fn stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Runs any async call of the cache (or other async code that needs
    /// its runtime) to its end on this thread.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

thread_local! {
    /// The keys whose fetch closures are running on this thread, innermost
    /// last.
    static FETCHING: std::cell::RefCell<Vec<Key>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks a fetch of `key` as running on this thread while it runs.
struct Fetching;

impl Fetching {
    fn run<T>(key: &Key, fetch: impl FnOnce() -> T) -> T {
        FETCHING.with(|keys| keys.borrow_mut().push(key.clone()));
        // Popped on unwind too: a panicking fetch leaves no mark.
        let _popped = Fetching;
        fetch()
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        FETCHING.with(|keys| keys.borrow_mut().pop());
    }
}

/// A fetch closure that asks for its own key would join its own flight
/// and wait for itself forever: refuse it instead.
fn refuse_own_key(key: &Key) -> Result<()> {
    if FETCHING.with(|keys| keys.borrow().contains(key)) {
        return Err(Error::new(
            ErrorKind::Fetch,
            format!(
                "{key}: the fetch of this key asked the cache for the same key, which would wait for itself"
            ),
        ));
    }
    Ok(())
}

/// The cache's own current-thread runtime, driven by a thread that waits
/// for the stop signal.
struct RuntimeThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl RuntimeThread {
    fn start() -> Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("tierstack-blocking")
            .build()
            .map_err(|e| {
                Error::new(ErrorKind::Io, "cannot start the blocking cache's runtime")
                    .with_source(e)
            })?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("tierstack-blocking".into())
            .spawn(move || {
                // Sitting in `block_on` is what drives the runtime's timers
                // and sockets and runs the tasks spawned onto it.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(SHUTDOWN_GRACE);
            })
            .map_err(|e| {
                Error::new(
                    ErrorKind::Io,
                    "cannot start the blocking cache's runtime thread",
                )
                .with_source(e)
            })?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Polls `future` on this thread in the runtime's context.
    ///
    /// `unconstrained`: called from inside a Tokio task, the future would
    /// otherwise draw on that task's cooperative budget, which only that
    /// task's scheduler refills, so once spent every Tokio resource would
    /// answer "pending" forever.
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        let _context = self.handle.enter();
        pollster::block_on(tokio::task::unconstrained(future))
    }
}

impl Drop for RuntimeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The last handle may be dropped by a task on the runtime thread
            // itself; joining it from there would wait forever.
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}
