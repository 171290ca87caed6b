//! The `reqwest-middleware` adapter.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_cache_semantics::{AfterResponse, CacheOptions, CachePolicy};
use reqwest::{Request, Response, ResponseBuilderExt as _, Url};
use reqwest_middleware::{Middleware, Next};
use tierstack::{FetchContext, FetchError, Fetched, Revalidated, TieredCache, Ttl};

use crate::key;
use crate::options::{HttpCacheOptions, Override};
use crate::request::Wants;
use crate::stored::{
    INDEX_TTL, StoredResponse, VaryIndex, header_map, response_meta, response_parts,
    stored_headers, without_no_cache,
};

/// An HTTP cache over a [`TieredCache`], as a `reqwest-middleware`
/// [`Middleware`]: GET and HEAD answers are stored and reused as RFC 9111
/// says, expired ones are revalidated (`If-None-Match`,
/// `If-Modified-Since`; a `304` makes the stored answer fresh again in
/// every tier), unsafe methods invalidate the URL, and the cache's own
/// semantics apply underneath (single-flight, stale-if-error, offline
/// mode, the source's rate limit and `Retry-After` circuit).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> tierstack::Result<()> {
/// use tierstack::{MemoryConfig, MemoryTier, TieredCache};
/// use tierstack_http::{HttpCache, HttpCacheOptions};
///
/// let cache = TieredCache::builder()
///     .tier(MemoryTier::new(&MemoryConfig::with_max_entries(10_000))?)
///     .build();
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(HttpCache::new(cache, HttpCacheOptions::default()))
///     .build();
/// # let _ = client;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HttpCache {
    cache: TieredCache,
    options: Arc<HttpCacheOptions>,
    counts: Arc<Counts>,
    /// What revalidates in the background (`stale-while-revalidate`):
    /// the request that served stale has gone on with its answer, and
    /// the client it came through is only borrowed for that request.
    background: Arc<OnceLock<Option<reqwest::Client>>>,
}

#[derive(Debug, Default)]
struct Counts {
    too_large: AtomicU64,
    not_storable: AtomicU64,
    bypassed: AtomicU64,
}

/// What an [`HttpCache`] passed on without storing (the cache's own
/// counters, [`TieredCache::stats`], count the rest).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HttpStats {
    /// Responses with a body over [`HttpCacheOptions::max_body`].
    pub too_large: u64,
    /// Responses RFC 9111 does not let the cache store (`no-store`,
    /// `private` in a shared cache, a status that is not cached…).
    pub not_storable: u64,
    /// Requests not looked up at all: other methods, `no-store` requests,
    /// the client's own conditional or range requests.
    pub bypassed: u64,
}

/// Where an answer came from, as the status header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    Hit,
    Miss,
    Stale,
    Revalidated,
    Bypass,
}

impl Served {
    fn label(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
            Self::Revalidated => "REVALIDATED",
            Self::Bypass => "BYPASS",
        }
    }
}

/// An answer the cache may not store (`no-store`, `private` in a shared
/// cache, too large, a status that is not cached…): the caller that
/// fetched passes it on as it came; callers that waited ask for themselves.
fn not_stored() -> Box<dyn std::error::Error + Send + Sync> {
    FetchError::not_stored("the answer is not stored").into()
}

impl HttpCache {
    /// An HTTP cache over `cache`.
    pub fn new(cache: TieredCache, options: HttpCacheOptions) -> Self {
        Self {
            cache,
            options: Arc::new(options),
            counts: Arc::default(),
            background: Arc::default(),
        }
    }

    /// Sends background revalidations (of answers served stale under
    /// `stale-while-revalidate`) through `client`, so they share its
    /// settings (timeouts, TLS roots, proxy). Without it they go through a
    /// plain `reqwest::Client` made at the first one. They do not pass
    /// through the middleware stack of the request that served stale: that
    /// request has been answered.
    #[must_use]
    pub fn with_background_client(mut self, client: reqwest::Client) -> Self {
        self.background = Arc::new(OnceLock::from(Some(client)));
        self
    }

    fn background_client(&self) -> Option<reqwest::Client> {
        self.background
            .get_or_init(|| reqwest::Client::builder().build().ok())
            .clone()
    }

    /// The background revalidation of `stale`, when it may be served while
    /// it is revalidated (inside its `stale-while-revalidate` window) and
    /// there is a client and a request to revalidate with.
    fn revalidate_in_background(
        &self,
        stale: &StoredResponse,
        request: Option<Request>,
    ) -> Option<impl FnOnce(FetchContext) -> BoxFuture<'static, FetchResult> + Send + use<>> {
        if stale.revalidate_until? < SystemTime::now() {
            return None;
        }
        let request = request?;
        let client = self.background_client()?;
        let this = self.clone();
        Some(
            move |context: FetchContext| -> BoxFuture<'static, FetchResult> {
                Box::pin(async move {
                    let options = Arc::clone(&this.options);
                    let rule = options.rule_for(request.url());
                    let (mut passed, mut failed) = (None, None);
                    let slots = Slots {
                        passed: &mut passed,
                        failed: &mut failed,
                    };
                    this.fetch(context, request, Upstream::Client(client), slots, rule)
                        .await
                })
            },
        )
    }

    /// What was passed on without storing.
    pub fn stats(&self) -> HttpStats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HttpStats {
            too_large: read(&self.counts.too_large),
            not_storable: read(&self.counts.not_storable),
            bypassed: read(&self.counts.bypassed),
        }
    }

    /// The cache underneath.
    pub fn cache(&self) -> &TieredCache {
        &self.cache
    }

    fn policy_options(&self) -> CacheOptions {
        CacheOptions {
            shared: self.options.shared,
            cache_heuristic: self.options.heuristic,
            ..CacheOptions::default()
        }
    }

    /// The key source of `url`'s entries: the override's, else the host
    /// and the route template the path matches, else the host.
    fn source(&self, url: &Url, rule: Option<&Override>) -> String {
        rule.and_then(|r| r.source.clone()).unwrap_or_else(|| {
            let host = url.host_str().unwrap_or("http");
            // A port other than the scheme's default names another API.
            let host = match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            match self.options.route_for(url) {
                Some(route) => format!("{host}{route}"),
                None => host,
            }
        })
    }

    /// Starts a new generation for `url`'s GET and HEAD answers: the
    /// variants stored so far are no longer reached.
    async fn invalidate(&self, url: &Url) {
        let rule = self.options.rule_for(url);
        let source = self.source(url, rule);
        for method in [Method::GET, Method::HEAD] {
            let index_key = key::index_key(&source, &method, url);
            let vary = self
                .cache
                .get::<VaryIndex>(&index_key)
                .await
                .map(|index| index.vary.clone())
                .unwrap_or_default();
            let index = VaryIndex {
                vary,
                generation: new_generation(),
            };
            if let Err(e) = self.cache.set(&index_key, index, Ttl::For(INDEX_TTL)).await {
                tracing::warn!(url = %url, error = %e.report(), "could not invalidate the URL's cached answers");
            }
        }
    }

    async fn cached(
        &self,
        request: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let (Some(fetched), background) = (request.try_clone(), request.try_clone()) else {
            return self.bypass(request, extensions, next).await;
        };
        let method = request.method().clone();
        let url = request.url().clone();
        let rule = self.options.rule_for(&url);
        let source = self.source(&url, rule);
        let index_key = key::index_key(&source, &method, &url);
        let index = self.url_index(&index_key).await;
        let variant = key::variant_key(
            &source,
            &method,
            &url,
            index.generation,
            &index.vary,
            request.headers(),
            self.options.shared,
        );
        let wants = Wants::of(request.headers());
        if wants.only_if_cached {
            return Ok(self
                .only_if_cached(&variant, method == Method::HEAD, &url)
                .await);
        }
        let mut passed = None;
        let mut failed = None;
        let slots = Slots {
            passed: &mut passed,
            failed: &mut failed,
        };
        let fetch = |context| {
            let upstream = Upstream::Next {
                next: next.clone(),
                extensions: &mut *extensions,
            };
            self.fetch(context, fetched, upstream, slots, rule)
        };
        let outcome = if wants.takes_any_fresh() {
            Box::pin(self.cache.get_stale_while_revalidate(
                &variant,
                self.options.fetch,
                |stale: &StoredResponse| self.revalidate_in_background(stale, background),
                fetch,
            ))
            .await
        } else {
            // The request's own demands: a stored answer that does not
            // meet them is revalidated first; none is served stale.
            Box::pin(self.cache.get_or_revalidate_accepting(
                &variant,
                self.options.fetch,
                |stored: &StoredResponse, header| wants.accepts(stored, header, SystemTime::now()),
                fetch,
            ))
            .await
        };
        let head = method == Method::HEAD;
        match outcome {
            Ok(answer) => {
                let (stored, served) = match answer {
                    Fetched::Cached(s) => (s, Served::Hit),
                    Fetched::Stale(s) => (s, Served::Stale),
                    Fetched::Revalidated(s) => (s, Served::Revalidated),
                    // A new answer, and anything a later version adds.
                    other => (other.into_value(), Served::Miss),
                };
                if served != Served::Hit {
                    self.update_index(
                        &index_key,
                        index,
                        &stored,
                        &source,
                        &method,
                        &url,
                        request.headers(),
                        &variant,
                    )
                    .await;
                }
                Ok(self.respond(&stored, served, head, &url))
            }
            Err(error) => match passed {
                Some(response) => Ok(self.label(response, Served::Bypass)),
                // Another caller's fetch was not stored: this caller asks
                // for itself.
                None if FetchError::is_not_stored(&error) => {
                    self.bypass(request, extensions, next).await
                }
                // The client's own error when this caller's request failed
                // (a refused connection stays `is_connect`).
                None => Err(failed.unwrap_or_else(|| reqwest_middleware::Error::middleware(error))),
            },
        }
    }

    /// The index of a URL's answers. Concurrent first requests for a URL
    /// share one new index, so they share one variant key and one fetch.
    async fn url_index(&self, index_key: &tierstack::Key) -> VaryIndex {
        self.cache
            .get_or_fetch(index_key, Ttl::For(INDEX_TTL), |_| async {
                Ok::<_, std::convert::Infallible>(VaryIndex {
                    vary: Vec::new(),
                    generation: new_generation(),
                })
            })
            .await
            .map_or_else(
                // Offline, or no tier can hold it: this request alone.
                |_| VaryIndex {
                    vary: Vec::new(),
                    generation: 0,
                },
                |index| (*index).clone(),
            )
    }

    /// Records the `Vary` names of a response whose URL had none (or
    /// others), and stores it again under the key those names give.
    #[allow(clippy::too_many_arguments)]
    async fn update_index(
        &self,
        index_key: &tierstack::Key,
        index: VaryIndex,
        stored: &StoredResponse,
        source: &str,
        method: &Method,
        url: &Url,
        request_headers: &HeaderMap,
        stored_under: &tierstack::Key,
    ) {
        let vary = vary_names(&header_map(&stored.headers));
        let known = self.cache.get::<VaryIndex>(index_key).await;
        if known.as_deref()
            == Some(&VaryIndex {
                vary: vary.clone(),
                generation: index.generation,
            })
        {
            return;
        }
        let index = VaryIndex {
            vary,
            generation: index.generation,
        };
        if let Err(e) = self
            .cache
            .set(index_key, index.clone(), Ttl::For(INDEX_TTL))
            .await
        {
            tracing::warn!(url = %url, error = %e.report(), "could not record the URL's Vary names");
            return;
        }
        let variant = key::variant_key(
            source,
            method,
            url,
            index.generation,
            &index.vary,
            request_headers,
            self.options.shared,
        );
        if variant != *stored_under {
            let ttl = stored.policy.time_to_live(SystemTime::now());
            if let Err(e) = self
                .cache
                .set(&variant, stored.clone(), Ttl::For(ttl))
                .await
            {
                tracing::debug!(url = %url, error = %e.report(), "variant not stored");
            }
        }
    }

    /// The upstream call of a miss: conditional when the cache keeps an
    /// expired answer with validators.
    async fn fetch(
        &self,
        context: FetchContext,
        mut request: Request,
        mut upstream: Upstream<'_>,
        slots: Slots<'_>,
        rule: Option<&Override>,
    ) -> FetchResult {
        let passed = slots.passed;
        // Sent again without validators if the 304 cannot be used.
        let plain = request.try_clone();
        if let Some(kept) = context.kept() {
            ask_if_modified(request.headers_mut(), kept);
        }
        let full = request_parts(&request, false);
        let anonymous = request_parts(&request, true);
        let conditional = context.kept().is_some();
        let mut response = send(&mut upstream, request, slots.failed).await?;
        let mut status = response.status();
        let now = SystemTime::now();
        let forced_ttl = rule.and_then(|r| r.ttl);
        let ignore_no_cache = rule.is_some_and(|r| r.ignore_no_cache);
        if status == StatusCode::NOT_MODIFIED && conditional {
            if let Some(updated) =
                self.merge_not_modified(&context, &response, &anonymous, rule, now)
            {
                return Ok(updated);
            }
            // Nothing to update (it went since the lookup): ask again,
            // unconditionally, so the caller gets a whole answer.
            if let Some(plain) = plain {
                response = send(&mut upstream, plain, slots.failed).await?;
                status = response.status();
            }
        }
        if status == StatusCode::NOT_MODIFIED {
            *passed = Some(response);
            return Err(not_stored());
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(FetchError::parse_retry_after);
            *passed = Some(response);
            return Err(match retry_after {
                // Opens the source's circuit, as any fetch that says so.
                Some(wait) => FetchError::throttled(wait)
                    .with_message(format!("the upstream answered {status}"))
                    .into(),
                None => FetchError::new(format!("the upstream answered {status}")).into(),
            });
        }
        let headers = if ignore_no_cache {
            without_no_cache(response.headers())
        } else {
            response.headers().clone()
        };
        let parts = response_parts(status, headers.clone());
        let policy = CachePolicy::new_options(&full, &parts, now, self.policy_options());
        let not_found =
            status == StatusCode::NOT_FOUND && rule.and_then(|r| r.not_found_ttl).is_some();
        if !(policy.is_storable() || not_found) {
            self.counts.not_storable.fetch_add(1, Ordering::Relaxed);
            *passed = Some(response);
            return Err(not_stored());
        }
        let forced_ttl = if not_found {
            rule.and_then(|r| r.not_found_ttl)
        } else {
            forced_ttl
        };
        let body = match read_capped(response, self.options.max_body).await? {
            Ok(body) => body,
            Err(whole) => {
                self.counts.too_large.fetch_add(1, Ordering::Relaxed);
                *passed = Some(whole);
                return Err(not_stored());
            }
        };
        // Stored without the request's credentials.
        let policy = CachePolicy::new_options(&anonymous, &parts, now, self.policy_options());
        let (meta, revalidate_until) = response_meta(
            &policy,
            &headers,
            self.options.shared,
            forced_ttl,
            ignore_no_cache,
            now,
        );
        Ok(Revalidated::Modified(
            StoredResponse {
                policy,
                status: status.as_u16(),
                revalidate_until,
                headers: stored_headers(&headers),
                body,
            },
            meta,
        ))
    }

    /// A `304` to the cache's conditional request: the kept answer with
    /// the `304`'s headers merged in (RFC 9111 §4.3.4), as an update of
    /// the kept entry. `None` when nothing is kept to update (it went
    /// between the lookup and the answer) or the `304` is not for it.
    fn merge_not_modified(
        &self,
        context: &FetchContext,
        response: &Response,
        anonymous: &http::request::Parts,
        rule: Option<&Override>,
        now: SystemTime,
    ) -> Option<Revalidated<StoredResponse>> {
        let old = context.kept_value::<StoredResponse>()?;
        let parts = response_parts(response.status(), response.headers().clone());
        let (policy, merged) = match old.policy.after_response(anonymous, &parts, now) {
            AfterResponse::NotModified(policy, merged) => (policy, merged),
            // A 304 with other validators than the stored answer's is not
            // for it (RFC 9111 §4.3.4): ask again.
            AfterResponse::Modified(..)
                if response.headers().contains_key(http::header::ETAG)
                    || response.headers().contains_key(http::header::LAST_MODIFIED) =>
            {
                return None;
            }
            // A 304 without validators answers the one stored response
            // this conditional request was made for (RFC 9111 §4.3.4):
            // its headers update that one.
            AfterResponse::Modified(..) => {
                let mut headers = header_map(&old.headers);
                for (name, value) in response.headers() {
                    if !matches!(
                        name.as_str(),
                        "content-length" | "transfer-encoding" | "connection"
                    ) {
                        headers.insert(name.clone(), value.clone());
                    }
                }
                let status = StatusCode::from_u16(old.status).ok()?;
                let merged = response_parts(status, headers);
                let policy =
                    CachePolicy::new_options(anonymous, &merged, now, self.policy_options());
                (policy, merged)
            }
        };
        let (meta, revalidate_until) = response_meta(
            &policy,
            &merged.headers,
            self.options.shared,
            rule.and_then(|r| r.ttl),
            rule.is_some_and(|r| r.ignore_no_cache),
            now,
        );
        let updated = StoredResponse {
            policy,
            status: old.status,
            revalidate_until,
            headers: stored_headers(&merged.headers),
            body: old.body.clone(),
        };
        Some(Revalidated::Updated(updated, meta))
    }

    /// A request with `only-if-cached`: a fresh stored answer, else a
    /// `504` (RFC 9111 §5.2.1.7); the upstream is never asked.
    async fn only_if_cached(&self, variant: &tierstack::Key, head: bool, url: &Url) -> Response {
        if let Some(stored) = self.cache.get::<StoredResponse>(variant).await {
            return self.respond(&stored, Served::Hit, head, url);
        }
        let mut response = http::Response::builder()
            .status(StatusCode::GATEWAY_TIMEOUT)
            .url(url.clone());
        if let (Some(headers), Some(name)) = (response.headers_mut(), &self.options.status_header) {
            headers.insert(name.clone(), HeaderValue::from_static(Served::Miss.label()));
        }
        Response::from(response.body(Bytes::new()).unwrap_or_default())
    }

    async fn bypass(
        &self,
        request: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.counts.bypassed.fetch_add(1, Ordering::Relaxed);
        let response = next.run(request, extensions).await?;
        Ok(self.label(response, Served::Bypass))
    }

    fn label(&self, mut response: Response, served: Served) -> Response {
        if let Some(name) = &self.options.status_header {
            response
                .headers_mut()
                .insert(name.clone(), HeaderValue::from_static(served.label()));
        }
        response
    }

    fn respond(&self, stored: &StoredResponse, served: Served, head: bool, url: &Url) -> Response {
        let mut builder = http::Response::builder()
            .status(stored.status)
            .url(url.clone());
        if let Some(headers) = builder.headers_mut() {
            *headers = header_map(&stored.headers);
            let age = stored.policy.age(SystemTime::now()).as_secs();
            headers.insert(http::header::AGE, HeaderValue::from(age));
            if let Some(name) = &self.options.status_header {
                headers.insert(name.clone(), HeaderValue::from_static(served.label()));
            }
        }
        let body = if head {
            Bytes::new()
        } else {
            stored.body.clone()
        };
        match builder.body(body) {
            Ok(response) => Response::from(response),
            // The parts were checked when stored; an entry that no longer
            // makes a response is answered as a gateway failure.
            Err(_) => Response::from(
                http::Response::builder()
                    .status(StatusCode::BAD_GATEWAY)
                    .body(Bytes::new())
                    .unwrap_or_default(),
            ),
        }
    }
}

#[async_trait::async_trait]
impl Middleware for HttpCache {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let method = request.method().clone();
        if method != Method::GET && method != Method::HEAD {
            let url = request.url().clone();
            let response = next.run(request, extensions).await?;
            // RFC 9111 §4.4: a non-error answer to an unsafe method
            // invalidates the URL.
            let unsafe_method = !matches!(method, Method::OPTIONS | Method::TRACE);
            if unsafe_method
                && (response.status().is_success() || response.status().is_redirection())
            {
                self.invalidate(&url).await;
                // And the URLs it names on the same origin (never another
                // host's, which this answer cannot speak for).
                for named in named_urls(&url, response.headers()) {
                    self.invalidate(&named).await;
                }
            }
            self.counts.bypassed.fetch_add(1, Ordering::Relaxed);
            return Ok(self.label(response, Served::Bypass));
        }
        let headers = request.headers();
        let no_store = crate::stored::directives(headers)
            .iter()
            .any(|(name, _)| name == "no-store");
        // The client's own conditional or range requests are its to make.
        let own_request = [
            http::header::IF_NONE_MATCH,
            http::header::IF_MODIFIED_SINCE,
            http::header::RANGE,
            http::header::IF_RANGE,
        ]
        .iter()
        .any(|name| headers.contains_key(name));
        if no_store || own_request {
            return self.bypass(request, extensions, next).await;
        }
        Box::pin(self.cached(request, extensions, next)).await
    }
}

/// Makes a request conditional on the kept answer's validators.
fn ask_if_modified(headers: &mut HeaderMap, kept: &tierstack::ResponseMeta) {
    if let Some(etag) = kept
        .etag_bytes()
        .and_then(|e| HeaderValue::from_bytes(e).ok())
    {
        headers.insert(http::header::IF_NONE_MATCH, etag);
    }
    if let Some(at) = kept.last_modified_at() {
        if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
            headers.insert(http::header::IF_MODIFIED_SINCE, value);
        }
    }
}

/// The request head the policy crate reads; without credentials for the
/// policy that is stored.
fn request_parts(request: &Request, anonymous: bool) -> http::request::Parts {
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = request.method().clone();
    parts.uri = request.url().as_str().parse().unwrap_or_default();
    parts.headers = request.headers().clone();
    if anonymous {
        for name in &key::CREDENTIALS {
            parts.headers.remove(name);
        }
    }
    parts
}

/// The `Location` and `Content-Location` URLs of an answer to `target`
/// that are on its origin (RFC 9111 §4.4), other than `target` itself.
fn named_urls(target: &Url, headers: &HeaderMap) -> Vec<Url> {
    let mut urls: Vec<Url> = [http::header::LOCATION, http::header::CONTENT_LOCATION]
        .iter()
        .filter_map(|name| headers.get(name)?.to_str().ok())
        .filter_map(|value| target.join(value.trim()).ok())
        .filter(|url| url.origin() == target.origin() && url != target)
        .collect();
    urls.dedup();
    urls
}

/// The response's `Vary` names, lower case, sorted, without duplicates.
fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A new index generation: the time in microseconds, so one started
/// after another is larger and none repeats an earlier one.
fn new_generation() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// What a fetch answers the cache.
type FetchResult = Result<Revalidated<StoredResponse>, Box<dyn std::error::Error + Send + Sync>>;

/// Where a fetch sends its requests: on through the middleware stack of
/// the request being answered, or (in the background, after that request
/// was answered) through a client of the cache's own.
enum Upstream<'a> {
    Next {
        next: Next<'a>,
        extensions: &'a mut http::Extensions,
    },
    Client(reqwest::Client),
}

impl Upstream<'_> {
    async fn run(&mut self, request: Request) -> reqwest_middleware::Result<Response> {
        match self {
            Self::Next { next, extensions } => next.clone().run(request, extensions).await,
            Self::Client(client) => client.execute(request).await.map_err(Into::into),
        }
    }
}

/// Sends `request` on; a failure is kept for this caller (its own error
/// type) and handed to the cache as a fetch error.
async fn send(
    upstream: &mut Upstream<'_>,
    request: Request,
    failed: &mut Option<reqwest_middleware::Error>,
) -> Result<Response, Box<dyn std::error::Error + Send + Sync>> {
    match upstream.run(request).await {
        Ok(response) => Ok(response),
        Err(e) => {
            let message = e.to_string();
            *failed = Some(e);
            Err(FetchError::new(message).into())
        }
    }
}

/// Where a fetch leaves what only its own caller gets: an answer not
/// stored, or the client's error.
struct Slots<'a> {
    passed: &'a mut Option<Response>,
    failed: &'a mut Option<reqwest_middleware::Error>,
}

/// The body, if it fits in `cap` bytes; else the whole response again
/// (what was read, then the rest as it arrives), to pass on uncached.
async fn read_capped(
    response: Response,
    cap: usize,
) -> reqwest_middleware::Result<Result<Bytes, Response>> {
    let declared = response.content_length();
    if declared.is_some_and(|len| len > cap as u64) {
        return Ok(Err(response));
    }
    let status = response.status();
    let headers = response.headers().clone();
    let url = response.url().clone();
    let mut stream = response.bytes_stream();
    let mut body = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        body.extend_from_slice(&chunk);
        if body.len() > cap {
            let prefix = futures_util::stream::iter([Ok::<_, reqwest::Error>(body.freeze())]);
            let mut builder = http::Response::builder().status(status).url(url);
            if let Some(h) = builder.headers_mut() {
                *h = headers;
            }
            let passed = builder
                .body(reqwest::Body::wrap_stream(prefix.chain(stream)))
                .map_err(reqwest_middleware::Error::middleware)?;
            return Ok(Err(Response::from(passed)));
        }
    }
    Ok(Ok(body.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(target: &str, location: &str, content_location: &str) -> Vec<String> {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::LOCATION, location.parse().unwrap());
        headers.insert(
            http::header::CONTENT_LOCATION,
            content_location.parse().unwrap(),
        );
        named_urls(&target.parse().unwrap(), &headers)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn only_urls_on_the_targets_origin_are_invalidated() {
        assert_eq!(
            named(
                "http://api.test/books",
                "/books/1",
                "http://api.test/books/2?x=1"
            ),
            ["http://api.test/books/1", "http://api.test/books/2?x=1"]
        );
        // Another host, scheme or port is another origin; the target
        // itself is invalidated already.
        assert!(
            named(
                "http://api.test/books",
                "http://other.test/books/1",
                "https://api.test/books/1"
            )
            .is_empty()
        );
        assert!(named("http://api.test/books", "http://api.test:8080/b", "/books").is_empty());
        assert_eq!(
            named("http://api.test/a/b", "c", "c"),
            ["http://api.test/a/c"]
        );
    }
}
