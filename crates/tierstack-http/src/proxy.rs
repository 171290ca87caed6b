//! `tierstack proxy`: a caching reverse proxy in front of one or more
//! upstreams, so tools in any language use the stack by changing a base
//! URL. Every request goes through an [`HttpCache`], as a shared cache.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt as _;
use http::{HeaderMap, StatusCode};
use reqwest::Url;
use tierstack::TieredCache;

use crate::{HttpCache, HttpCacheOptions};

/// Where `/_tierstack/health` and `/_tierstack/stats` live: a prefix no
/// upstream path is sent to.
pub const CONTROL_PREFIX: &str = "/_tierstack/";

/// Largest request body forwarded (a POST to the upstream).
pub const MAX_REQUEST_BODY: usize = 16 << 20;

/// How long the proxy waits for an upstream (connect, answer and body)
/// unless the config's `proxy.timeout` says otherwise.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests whose path starts with `prefix` go to `upstream`, with the
/// prefix replaced by the upstream URL's path.
#[derive(Debug, Clone)]
pub struct Route {
    prefix: String,
    upstream: Url,
}

impl Route {
    /// A route; `prefix` starts with `/`, `upstream` is an `http` or
    /// `https` URL without query or fragment.
    pub fn new(prefix: impl Into<String>, upstream: &str) -> Result<Self, String> {
        let prefix = prefix.into();
        if !prefix.starts_with('/') {
            return Err(format!("route prefix {prefix:?} must start with /"));
        }
        if prefix.starts_with(CONTROL_PREFIX) {
            return Err(format!(
                "route prefix {prefix:?} is the proxy's own ({CONTROL_PREFIX})"
            ));
        }
        let upstream = Url::parse(upstream).map_err(|e| format!("upstream {upstream:?}: {e}"))?;
        if !matches!(upstream.scheme(), "http" | "https") || upstream.host_str().is_none() {
            return Err(format!(
                "upstream {upstream}: an http or https URL with a host"
            ));
        }
        if upstream.query().is_some() || upstream.fragment().is_some() {
            return Err(format!("upstream {upstream}: no query or fragment"));
        }
        Ok(Self { prefix, upstream })
    }

    /// The upstream URL of a request path and query.
    fn target(&self, path: &str, query: Option<&str>) -> Option<Url> {
        let rest = path.strip_prefix(self.prefix.trim_end_matches('/'))?;
        let base = self.upstream.as_str().trim_end_matches('/');
        let rest = if rest.starts_with('/') || rest.is_empty() {
            rest.to_owned()
        } else {
            return None;
        };
        let mut url = format!("{base}{rest}");
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        Url::parse(&url).ok()
    }
}

/// The proxy: a router of upstreams over one HTTP cache. [`Proxy::router`]
/// is an axum `Router` (a tower `Service`) to serve or nest;
/// [`Proxy::serve`] serves it until a shutdown signal, finishing the
/// requests in flight.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    metrics: Option<RenderMetrics>,
}

/// Renders the installed `metrics` recorder's text (Prometheus's handle).
pub type RenderMetrics = Arc<dyn Fn() -> String + Send + Sync>;

struct Inner {
    routes: Vec<Route>,
    client: reqwest_middleware::ClientWithMiddleware,
    http: HttpCache,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("routes", &self.inner.routes)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy of `routes` (the longest matching prefix wins) over `cache`.
    pub fn new(cache: TieredCache, routes: Vec<Route>, options: HttpCacheOptions) -> Self {
        let upstream = reqwest::Client::builder()
            // The client's own `Host` and redirects are the upstream's
            // business: pass 3xx on as they came.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        // Background revalidations go to the upstream the same way.
        let http = HttpCache::new(cache, options).with_background_client(upstream.clone());
        let client = reqwest_middleware::ClientBuilder::new(upstream)
            .with(http.clone())
            .build();
        let mut routes = routes;
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Self {
            inner: Arc::new(Inner {
                routes,
                client,
                http,
            }),
            metrics: None,
        }
    }

    /// Serves `/_tierstack/metrics`: the cache's counters published to the
    /// installed `metrics` recorder (`tierstack::metrics::Metrics`), then
    /// `render`'s text (with `metrics-exporter-prometheus`:
    /// `move || handle.render()`). Without it that path answers 404.
    #[must_use]
    pub fn with_metrics(mut self, render: RenderMetrics) -> Self {
        self.metrics = Some(render);
        self
    }

    /// The HTTP cache underneath.
    pub fn http_cache(&self) -> &HttpCache {
        &self.inner.http
    }

    /// The proxy as an axum router.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/_tierstack/health", axum::routing::get(health))
            .route("/_tierstack/stats", axum::routing::get(stats))
            .route("/_tierstack/metrics", axum::routing::get(metrics))
            .fallback(forward)
            .with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then finishes the
    /// requests in flight.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }

    fn route(&self, path: &str, query: Option<&str>) -> Option<Url> {
        self.inner.routes.iter().find_map(|r| r.target(path, query))
    }
}

async fn health(State(proxy): State<Proxy>) -> Response {
    let tiers = proxy.inner.http.cache().health().await;
    let down = tiers
        .iter()
        .any(|(_, h)| matches!(h, tierstack::Health::Unhealthy(_)));
    let degraded = tiers
        .iter()
        .any(|(_, h)| matches!(h, tierstack::Health::Degraded(_)));
    let body = serde_json::json!({
        "status": if down { "unhealthy" } else if degraded { "degraded" } else { "ok" },
        "tiers": tiers.iter().map(|(name, health)| serde_json::json!({ "tier": name, "health": health })).collect::<Vec<_>>(),
    });
    // A cache with a tier down still proxies; the status says so.
    let status = if down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(body)).into_response()
}

async fn stats(State(proxy): State<Proxy>) -> Response {
    let cache = proxy.inner.http.cache().stats();
    let http = proxy.inner.http.stats();
    axum::Json(serde_json::json!({
        "cache": cache,
        "http": { "too_large": http.too_large, "not_storable": http.not_storable, "bypassed": http.bypassed },
    }))
    .into_response()
}

async fn metrics(State(proxy): State<Proxy>) -> Response {
    let Some(render) = &proxy.metrics else {
        return (
            StatusCode::NOT_FOUND,
            "metrics are not enabled on this proxy\n",
        )
            .into_response();
    };
    tierstack::metrics::Metrics::new(proxy.inner.http.cache())
        .publish_with_sizes()
        .await;
    ([("content-type", "text/plain; version=0.0.4")], render()).into_response()
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and `Host`, which the client sets
/// for the upstream.
const NOT_FORWARDED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Whether no answer came from the upstream (a `504`), rather than a
/// failure of it (a `502`): the client's own timeout, the cache's, or the
/// cache being offline.
fn timed_out(error: &reqwest_middleware::Error) -> bool {
    use tierstack::ErrorKind;
    match error {
        reqwest_middleware::Error::Reqwest(e) => e.is_timeout(),
        reqwest_middleware::Error::Middleware(e) => e.chain().any(|cause| {
            cause
                .downcast_ref::<tierstack::Error>()
                .is_some_and(|e| matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable))
                || cause
                    .downcast_ref::<reqwest::Error>()
                    .is_some_and(reqwest::Error::is_timeout)
        }),
    }
}

fn forwarded(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    for name in NOT_FORWARDED {
        out.remove(name);
    }
    out
}

async fn forward(State(proxy): State<Proxy>, request: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let Some(url) = proxy.route(&path, parts.uri.query()) else {
        return (StatusCode::NOT_FOUND, format!("no upstream for {path}\n")).into_response();
    };
    let Ok(body) = axum::body::to_bytes(body, MAX_REQUEST_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body over 16 MiB\n").into_response();
    };
    let mut upstream = proxy
        .inner
        .client
        .request(parts.method.clone(), url.clone())
        .headers(forwarded(&parts.headers));
    if !body.is_empty() {
        upstream = upstream.body(body);
    }
    let response = match upstream.send().await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(method = %parts.method, path = %path, error = %e, "upstream failed");
            let status = if timed_out(&e) {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::BAD_GATEWAY
            };
            return (status, format!("upstream failed: {e}\n")).into_response();
        }
    };
    let status = response.status();
    let served = response
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let headers = forwarded(response.headers());
    let mut out = Response::new(Body::from_stream(
        response.bytes_stream().map_err(std::io::Error::other),
    ));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    tracing::info!(
        method = %parts.method,
        path = %path,
        status = status.as_u16(),
        cache = %served,
        ms = started.elapsed().as_millis() as u64,
        "proxied"
    );
    out
}

/// Resolves once SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        let Ok(mut terminate) = terminate else {
            let _ = interrupt.await;
            return;
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

impl Proxy {
    /// A proxy as a config file's `proxy:` section describes it, with
    /// `upstreams` from the command line added (`URL` for `/`, or
    /// `PREFIX=URL`) and `listen` replacing the section's; also the
    /// address to listen on (default `127.0.0.1:8787`).
    pub fn from_config(
        cache: TieredCache,
        section: &tierstack::ProxyConfig,
        upstreams: &[String],
        listen: Option<&str>,
    ) -> Result<(Self, SocketAddr), String> {
        let mut routes = Vec::new();
        for upstream in &section.upstreams {
            routes.push(
                Route::new(upstream.prefix.clone(), &upstream.url)
                    .map_err(|e| format!("proxy.upstreams: {e}"))?,
            );
        }
        for given in upstreams {
            let (prefix, url) = match given.split_once('=') {
                Some((prefix, url)) if prefix.starts_with('/') => (prefix.to_owned(), url),
                _ => ("/".to_owned(), given.as_str()),
            };
            routes.push(Route::new(prefix, url).map_err(|e| format!("--upstream: {e}"))?);
        }
        if routes.is_empty() {
            return Err(
                "no upstream: give --upstream URL, or proxy.upstreams in the config".to_owned(),
            );
        }
        let listen = listen
            .or(section.listen.as_deref())
            .unwrap_or(DEFAULT_LISTEN);
        let address: SocketAddr = listen
            .parse()
            .map_err(|e| format!("listen address {listen:?}: {e} (write it as 127.0.0.1:8787)"))?;
        let mut options = HttpCacheOptions::default().fetch(
            tierstack::FetchOptions::default()
                .hard_timeout(section.timeout.unwrap_or(DEFAULT_UPSTREAM_TIMEOUT)),
        );
        if let Some(shared) = section.shared {
            options.shared = shared;
        }
        if let Some(bytes) = section.max_body {
            options.max_body = usize::try_from(bytes).unwrap_or(usize::MAX);
        }
        if let Some(name) = &section.status_header {
            options.status_header = if name.is_empty() {
                None
            } else {
                Some(
                    http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| format!("proxy.status_header {name:?}: {e}"))?,
                )
            };
        }
        for template in &section.routes {
            options = options
                .route(template.clone())
                .map_err(|e| format!("proxy.routes: {e}"))?;
        }
        for rule in &section.overrides {
            let mut o = crate::Override::path(rule.path.clone());
            if let Some(host) = &rule.host {
                o = o.host(host.clone());
            }
            if let Some(source) = &rule.source {
                o = o.source(source.clone());
            }
            if let Some(ttl) = rule.ttl {
                o = o.ttl(ttl);
            }
            if rule.ignore_no_cache {
                o = o.ignore_no_cache();
            }
            if let Some(ttl) = rule.cache_not_found {
                o = o.cache_not_found(ttl);
            }
            options.overrides.push(o);
        }
        Ok((Self::new(cache, routes, options), address))
    }

    /// The routes, for a start-up line: `/ → https://api.example.com/`.
    pub fn describe_routes(&self) -> String {
        self.inner
            .routes
            .iter()
            .map(|r| format!("{} → {}", r.prefix, r.upstream))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where `tierstack proxy` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
