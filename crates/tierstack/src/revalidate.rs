//! Revalidation: an expired entry that carries validators (an HTTP `ETag`,
//! a `Last-Modified` time) is kept past its stale window, and a fetch that
//! is given them can answer "not modified" instead of sending the value
//! again; the entry is then fresh again in every tier, its bytes kept.
//! See `docs/decisions/0019-revalidation.md`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tierstack_core::{EncodeError, Entry, Extensions, Header, Key, Result, Timestamp};

use crate::cache::{CacheValue, TieredCache};
use crate::fetch::{BoxError, FetchContext, FetchOptions, Fetched};

/// How long an expired entry with validators is kept after its stale
/// window, unless the source's policy or the call says otherwise
/// ([`SourcePolicy::retain_for`](crate::SourcePolicy::retain_for),
/// [`FetchOptions::retain_for`]).
pub const DEFAULT_RETAIN_FOR: Duration = Duration::from_secs(7 * 86_400);

/// What an upstream's answer says about itself: the validators a later
/// conditional request sends (an HTTP `ETag`, a `Last-Modified` time,
/// stored in the entry's extension area), and how long this answer stays
/// fresh when that is the answer's to say (HTTP `max-age`), overriding the
/// call's [`FetchOptions`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResponseMeta {
    etag: Option<Vec<u8>>,
    last_modified: Option<SystemTime>,
    ttl: Option<Duration>,
    stale_for: Option<Duration>,
    must_revalidate: bool,
}

impl ResponseMeta {
    /// Nothing: no validators (the entry is not kept for revalidation)
    /// and the call's own freshness.
    pub fn none() -> Self {
        Self::default()
    }

    /// An `ETag`, as the response sent it (quotes and `W/` included).
    #[must_use]
    pub fn etag(mut self, etag: impl AsRef<[u8]>) -> Self {
        self.etag = Some(etag.as_ref().to_vec());
        self
    }

    /// A `Last-Modified` time (kept to the millisecond).
    #[must_use]
    pub fn last_modified(mut self, at: SystemTime) -> Self {
        self.last_modified = Some(at);
        self
    }

    /// This answer's freshness, instead of the call's TTL (still capped by
    /// each tier's own).
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// This answer's stale window, instead of the call's or the source's.
    #[must_use]
    pub fn stale_for(mut self, window: Duration) -> Self {
        self.stale_for = Some(window);
        self
    }

    /// This answer may never be served stale, only revalidated (HTTP
    /// `must-revalidate`), whatever the stale window.
    #[must_use]
    pub fn must_revalidate(mut self) -> Self {
        self.must_revalidate = true;
        self
    }

    /// The stored `ETag`, to send as `If-None-Match`.
    pub fn etag_bytes(&self) -> Option<&[u8]> {
        self.etag.as_deref()
    }

    /// The stored `ETag` as text, when it is UTF-8 (it is ASCII in practice).
    pub fn etag_str(&self) -> Option<&str> {
        self.etag
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }

    /// The stored `Last-Modified`, to send as `If-Modified-Since`.
    pub fn last_modified_at(&self) -> Option<SystemTime> {
        self.last_modified
    }

    /// Whether there is no validator to send.
    pub fn has_validators(&self) -> bool {
        self.etag.is_some() || self.last_modified.is_some()
    }

    /// The call's options with this answer's freshness applied.
    pub(crate) fn applied_to(&self, mut options: FetchOptions) -> FetchOptions {
        if let Some(ttl) = self.ttl {
            options.ttl = crate::Ttl::For(ttl);
        }
        if let Some(window) = self.stale_for {
            options.stale_for = Some(window);
        }
        options.must_revalidate |= self.must_revalidate;
        options
    }

    /// These validators, with the ones `newer` has replacing them (a
    /// `304` may send a new `ETag`; what it leaves out stays), and
    /// `newer`'s freshness.
    #[must_use]
    pub(crate) fn updated_by(self, newer: Self) -> Self {
        Self {
            etag: newer.etag.or(self.etag),
            last_modified: newer.last_modified.or(self.last_modified),
            ..newer
        }
    }

    /// The validators an entry carries, if any.
    pub(crate) fn of(entry: &Entry) -> Option<Self> {
        let extensions = &entry.extensions;
        let found = Self {
            etag: extensions.etag().map(<[u8]>::to_vec),
            last_modified: extensions
                .last_modified()
                .map(|at| UNIX_EPOCH + Duration::from_millis(at.as_millis())),
            ..Self::default()
        };
        found.has_validators().then_some(found)
    }

    /// `extensions` with these validators set in it.
    pub(crate) fn stored_in(
        &self,
        extensions: &Extensions,
    ) -> std::result::Result<Extensions, EncodeError> {
        let mut out = extensions.clone();
        if let Some(etag) = &self.etag {
            out = out.with(Extensions::ETAG, etag)?;
        }
        if let Some(at) = self.last_modified {
            let millis = at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            out = out.with(
                Extensions::LAST_MODIFIED,
                &Timestamp::from_millis(millis).as_millis().to_le_bytes(),
            )?;
        }
        Ok(out)
    }
}

/// Whether `entry` carries validators, so that it is kept for a
/// revalidation.
pub(crate) fn has_validators(entry: &Entry) -> bool {
    entry.extensions.etag().is_some() || entry.extensions.last_modified().is_some()
}

/// What a revalidating fetch ([`TieredCache::get_or_revalidate`]) answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Revalidated<V> {
    /// A value (new, or the first), with what its response said
    /// ([`ResponseMeta::none`] if nothing: then the entry is not kept for
    /// revalidation).
    Modified(V, ResponseMeta),
    /// The upstream said the kept entry ([`FetchContext::kept`]) is still
    /// current: it is fresh again in every tier, its bytes kept. The
    /// validators this answer carried replace the stored ones; those it
    /// left out stay.
    NotModified(ResponseMeta),
    /// The kept entry is still current but its details changed (an HTTP
    /// `304` updates the stored headers): this value, made from the kept
    /// one ([`FetchContext::kept_value`]), is stored in its place and the
    /// call counts as a revalidation. The validators merge as for
    /// `NotModified`.
    Updated(V, ResponseMeta),
}

/// What a fetch answered, whichever entry point it came through.
pub(crate) enum Answered<V> {
    /// A value (`None`: "not found") and what its response said;
    /// `revalidated`: the value replaces the kept entry after a "not
    /// modified".
    Value {
        value: Option<V>,
        meta: ResponseMeta,
        revalidated: bool,
    },
    /// The kept entry is current; the validators update its own.
    NotModified(ResponseMeta),
}

/// The answers fetch closures give: a plain value (`Option<V>`, from the
/// `get_or_fetch` family) or a [`Revalidated`].
pub(crate) trait IntoAnswered<V> {
    fn into_answered(self) -> Answered<V>;
}

impl<V> IntoAnswered<V> for Option<V> {
    fn into_answered(self) -> Answered<V> {
        Answered::Value {
            value: self,
            meta: ResponseMeta::none(),
            revalidated: false,
        }
    }
}

impl<V> IntoAnswered<V> for Revalidated<V> {
    fn into_answered(self) -> Answered<V> {
        match self {
            Self::Modified(value, meta) => Answered::Value {
                value: Some(value),
                meta,
                revalidated: false,
            },
            Self::Updated(value, meta) => Answered::Value {
                value: Some(value),
                meta,
                revalidated: true,
            },
            Self::NotModified(meta) => Answered::NotModified(meta),
        }
    }
}

impl TieredCache {
    /// [`TieredCache::get_or_fetch`] for an upstream that can answer "not
    /// modified": on a miss, `fetch` gets the validators of the expired
    /// entry the tiers still keep ([`FetchContext::kept`]; `None` when
    /// there is none) and answers [`Revalidated::NotModified`] to make it
    /// fresh again, or [`Revalidated::Modified`] with a value and what its
    /// response said ([`ResponseMeta`]: validators to store, and its own
    /// freshness if it has one).
    ///
    /// Everything else is as for `get_or_fetch`: single-flight,
    /// stale-if-error, timeouts, the source's budget. An entry stored with
    /// validators is kept for the source's `retain_for` (default
    /// [`DEFAULT_RETAIN_FOR`]) after its stale window; it is never served
    /// in that time, only revalidated. `NotModified` when no entry is kept
    /// (it was evicted, or the fetch got no validators) is an error of kind
    /// [`ErrorKind::Fetch`](crate::ErrorKind::Fetch).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierstack::Result<()> {
    /// use std::time::Duration;
    /// use tierstack::{Key, MemoryConfig, MemoryTier, Revalidated, TieredCache, ResponseMeta};
    ///
    /// let cache = TieredCache::builder()
    ///     .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100))?)
    ///     .build();
    /// let key = Key::new("books", [("id", "1")]);
    /// let title: std::sync::Arc<String> = cache
    ///     .get_or_revalidate(&key, Duration::from_secs(60), |context| async move {
    ///         // A real fetch sends `If-None-Match` when it has an ETag.
    ///         match context.kept().and_then(|v| v.etag_str()) {
    ///             Some("\"v1\"") => Ok::<_, std::io::Error>(Revalidated::NotModified(ResponseMeta::none())),
    ///             _ => Ok(Revalidated::Modified("Dune".to_owned(), ResponseMeta::none().etag("\"v1\""))),
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(*title, "Dune");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_revalidate<V, F, Fut, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> Result<Arc<V>>
    where
        V: CacheValue,
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<Revalidated<V>, E>>,
        E: Into<BoxError>,
    {
        if let Some((value, _)) = self.ready_hit::<V>(key) {
            return Ok(value);
        }
        Box::pin(self.get_or_revalidate_with(key, options, fetch))
            .await
            .map(Fetched::into_value)
    }

    /// [`TieredCache::get_or_revalidate`], saying where the value came
    /// from ([`Fetched::Revalidated`] after a "not modified").
    pub async fn get_or_revalidate_with<V, F, Fut, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        fetch: F,
    ) -> Result<Fetched<V>>
    where
        V: CacheValue,
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<Revalidated<V>, E>>,
        E: Into<BoxError>,
    {
        let outcome = self
            .resolve(
                key,
                options.into(),
                false,
                &mut None,
                crate::fetch::Judge::none(),
                None,
                fetch,
            )
            .await?;
        outcome.into_fetched(key)
    }

    /// [`TieredCache::get_or_revalidate_with`] for a caller with its own
    /// demands on a fresh value (HTTP request directives: `no-cache`,
    /// `max-age`, `min-fresh`): a fresh value is answered only if `accept`
    /// says so, given the value and its header (its age, its expiry);
    /// refused, it is revalidated as if it had expired: `fetch` is offered
    /// its validators ([`FetchContext::kept`]) and its answer is stored as
    /// `get_or_revalidate`'s would be. The lookup still counts the refused
    /// value as a hit of its tier and source; the fetch counts as a fetch.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierstack::Result<()> {
    /// use std::time::Duration;
    /// use tierstack::{Fetched, Key, MemoryConfig, MemoryTier, ResponseMeta, Revalidated, TieredCache};
    ///
    /// let cache = TieredCache::builder()
    ///     .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100))?)
    ///     .build();
    /// let key = Key::new("books", [("id", "1")]);
    /// let fetch = |_| async { Ok::<_, std::io::Error>(Revalidated::Modified("Dune".to_owned(), ResponseMeta::none().etag("\"v1\""))) };
    /// cache.get_or_revalidate_with(&key, Duration::from_secs(60), fetch).await?;
    /// // Refuse anything, however fresh: asked again, with its ETag.
    /// let again = cache
    ///     .get_or_revalidate_accepting(&key, Duration::from_secs(60), |_: &String, _| false, |context| async move {
    ///         assert_eq!(context.kept().and_then(|m| m.etag_str()), Some("\"v1\""));
    ///         Ok::<_, std::io::Error>(Revalidated::NotModified(ResponseMeta::none()))
    ///     })
    ///     .await?;
    /// assert!(matches!(again, Fetched::Revalidated(_)));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_revalidate_accepting<V, A, F, Fut, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        accept: A,
        fetch: F,
    ) -> Result<Fetched<V>>
    where
        V: CacheValue,
        A: FnOnce(&V, &Header) -> bool + Send,
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<Revalidated<V>, E>>,
        E: Into<BoxError>,
    {
        let mut accept = Some(accept);
        let mut judge =
            |value: &Arc<V>, header: &Header| accept.take().is_none_or(|a| a(value, header));
        let outcome = self
            .resolve(
                key,
                options.into(),
                false,
                &mut None,
                crate::fetch::Judge {
                    fresh: Some(&mut judge),
                    stale: None,
                },
                None,
                fetch,
            )
            .await?;
        outcome.into_fetched(key)
    }

    /// [`TieredCache::get_or_revalidate_with`] for an upstream that lets a
    /// stale answer be served while it is revalidated (HTTP
    /// `stale-while-revalidate`, RFC 5861): when no tier holds `key` fresh
    /// but one holds it expired inside its stale window, `revalidate` is
    /// asked about that value before anything is fetched or waited for.
    /// `Some(background)` answers the value at once ([`Fetched::Stale`],
    /// counted as stale served) and runs `background`, an owned fetch, in a
    /// task of its own: one per key at a time, spending the source's
    /// budget like any fetch (skipped when the budget would make it wait
    /// past the call's timeouts), offered the kept entry's validators, its
    /// answer stored as `fetch`'s would be. `None` goes on as
    /// `get_or_revalidate_with` with `fetch`.
    ///
    /// The background task runs on the caller's Tokio runtime; with none,
    /// nothing is revalidated and the stale value is still answered.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> tierstack::Result<()> {
    /// use std::time::Duration;
    /// use tierstack::{FetchOptions, Key, MemoryConfig, MemoryTier, ResponseMeta, Revalidated, TieredCache};
    ///
    /// let cache = TieredCache::builder()
    ///     .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100))?)
    ///     .build();
    /// let key = Key::new("quotes", [("symbol", "ACME")]);
    /// let options = FetchOptions::ttl(Duration::from_secs(60)).stale_for(Duration::from_secs(30));
    /// let quote = cache
    ///     .get_stale_while_revalidate(
    ///         &key,
    ///         options,
    ///         // Any stale quote will do while a new one is asked for.
    ///         |_stale: &u32| {
    ///             Some(|_| async { Ok::<_, std::io::Error>(Revalidated::Modified(43, ResponseMeta::none())) })
    ///         },
    ///         |_| async { Ok::<_, std::io::Error>(Revalidated::Modified(42, ResponseMeta::none())) },
    ///     )
    ///     .await?;
    /// assert_eq!(**quote.value(), 42);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_stale_while_revalidate<V, R, B, BFut, F, Fut, E>(
        &self,
        key: &Key,
        options: impl Into<FetchOptions>,
        revalidate: R,
        fetch: F,
    ) -> Result<Fetched<V>>
    where
        V: CacheValue,
        R: FnOnce(&V) -> Option<B> + Send,
        B: FnOnce(FetchContext) -> BFut + Send + 'static,
        BFut: Future<Output = std::result::Result<Revalidated<V>, E>> + Send + 'static,
        F: FnOnce(FetchContext) -> Fut,
        Fut: Future<Output = std::result::Result<Revalidated<V>, E>>,
        E: Into<BoxError> + 'static,
    {
        let options = options.into();
        let mut revalidate = Some(revalidate);
        let mut background = None;
        let mut accept = |stale: &Arc<V>, kept: Option<&Entry>| match revalidate
            .take()
            .and_then(|ask| ask(stale))
        {
            Some(fetch) => {
                background = Some((fetch, kept.cloned()));
                true
            }
            None => false,
        };
        let outcome = self
            .resolve(
                key,
                options,
                false,
                &mut None,
                crate::fetch::Judge {
                    fresh: None,
                    stale: Some(&mut accept),
                },
                None,
                fetch,
            )
            .await?;
        if let Some((fetch, kept)) = background {
            self.refresh_in_background(
                None,
                key.clone(),
                options,
                kept,
                move |context| async move { fetch(context).await.map_err(Into::into) },
            );
        }
        outcome.into_fetched(key)
    }
}
