//! What the HTTP cache does beyond RFC 9111's defaults: the cache's point
//! of view (shared or private), limits, and per-host/path overrides for
//! APIs that send unhelpful headers.

use std::time::Duration;

use reqwest::Url;
use tierstack::FetchOptions;

/// Largest response body stored, unless [`HttpCacheOptions::max_body`]
/// says otherwise; larger responses pass through uncached.
pub const DEFAULT_MAX_BODY: usize = 8 << 20;

/// How an [`HttpCache`](crate::HttpCache) caches.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpCacheOptions {
    /// A shared cache (the default: a tierstack cache is often shared by
    /// processes, hosts and people through Redis or a file): `private`
    /// responses are not stored, `s-maxage` wins over `max-age`, and a
    /// response to a request with `Authorization` is stored only when it
    /// says it may be (`public`, `s-maxage`, `must-revalidate`). A private
    /// cache (`false`) stores `private` responses and ignores `s-maxage`.
    pub shared: bool,
    /// Responses with a larger body pass through uncached.
    pub max_body: usize,
    /// The response header that says where an answer came from (`HIT`,
    /// `MISS`, `STALE`, `REVALIDATED`, `BYPASS`); `None` for none.
    pub status_header: Option<http::HeaderName>,
    /// The fraction of a response's age since `Last-Modified` it stays
    /// fresh for when it says nothing else (RFC 9111 §4.2.2; default 0.1).
    pub heuristic: f32,
    /// Timeouts and the stale window for upstream calls (the TTL comes
    /// from each response).
    pub fetch: FetchOptions,
    /// Departures from the response's own headers, by host and path; the
    /// first that matches a request applies.
    pub overrides: Vec<Override>,
    /// Route templates (`/books/{asin}`): a request whose path matches one
    /// is stored under key source `{host}{template}`, so `tierstack stats`
    /// shows each endpoint and a source policy (rate limit, retention)
    /// applies to it. The first match wins; an override's `source` wins
    /// over them; a path that matches none keeps the host as its source.
    pub routes: Vec<String>,
}

impl Default for HttpCacheOptions {
    fn default() -> Self {
        Self {
            shared: true,
            max_body: DEFAULT_MAX_BODY,
            status_header: Some(http::HeaderName::from_static("x-cache")),
            heuristic: 0.1,
            fetch: FetchOptions::default(),
            overrides: Vec::new(),
            routes: Vec::new(),
        }
    }
}

impl HttpCacheOptions {
    /// A private (single-user) cache: see [`HttpCacheOptions::shared`].
    #[must_use]
    pub fn private(mut self) -> Self {
        self.shared = false;
        self
    }

    /// Sets the largest body stored.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Names the header that says where an answer came from (`None`: no
    /// such header).
    #[must_use]
    pub fn status_header(mut self, name: Option<http::HeaderName>) -> Self {
        self.status_header = name;
        self
    }

    /// Sets the timeouts and stale window of upstream calls.
    #[must_use]
    pub fn fetch(mut self, options: FetchOptions) -> Self {
        self.fetch = options;
        self
    }

    /// Adds an override (checked in the order added).
    #[must_use]
    pub fn with_override(mut self, rule: Override) -> Self {
        self.overrides.push(rule);
        self
    }

    /// Adds a route template: `/`-separated segments, each a literal or a
    /// `{name}` that matches any one non-empty segment (`/books/{asin}`,
    /// `/authors/{id}/books`). A template that does not start with `/` is
    /// an error.
    pub fn route(mut self, template: impl Into<String>) -> Result<Self, String> {
        let template = template.into();
        check_template(&template)?;
        self.routes.push(template);
        Ok(self)
    }

    /// The first route template `url`'s path matches.
    pub(crate) fn route_for(&self, url: &Url) -> Option<&str> {
        self.routes
            .iter()
            .find(|template| template_matches(template, url.path()))
            .map(String::as_str)
    }

    /// The first override that matches `url`.
    pub(crate) fn rule_for(&self, url: &Url) -> Option<&Override> {
        self.overrides.iter().find(|rule| rule.matches(url))
    }
}

/// A departure from RFC 9111 for requests whose host and path match: each
/// is documented as such, and none applies unless configured.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Override {
    /// The host it applies to (`None`: any host).
    pub host: Option<String>,
    /// The path prefix it applies to (`/` for all).
    pub path_prefix: String,
    /// The key source of these requests (default: the host), so that
    /// `tierstack stats` shows them apart and a source policy (rate limit,
    /// retention) applies to them.
    pub source: Option<String>,
    /// Freshness of every stored response, whatever its headers say.
    pub ttl: Option<Duration>,
    /// Stores responses marked `no-cache` as if they were not (they are
    /// still never stored when marked `no-store`).
    pub ignore_no_cache: bool,
    /// Stores `404 Not Found` answers for this long.
    pub not_found_ttl: Option<Duration>,
}

impl Override {
    /// An override for paths starting with `prefix`, on any host.
    pub fn path(prefix: impl Into<String>) -> Self {
        Self {
            path_prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// Only on `host`.
    #[must_use]
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into().to_ascii_lowercase());
        self
    }

    /// Stores these responses under key source `source`.
    #[must_use]
    pub fn source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Keeps every stored response fresh for `ttl`.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Stores responses marked `no-cache`.
    #[must_use]
    pub fn ignore_no_cache(mut self) -> Self {
        self.ignore_no_cache = true;
        self
    }

    /// Stores `404` answers for `ttl`.
    #[must_use]
    pub fn cache_not_found(mut self, ttl: Duration) -> Self {
        self.not_found_ttl = Some(ttl);
        self
    }

    fn matches(&self, url: &Url) -> bool {
        self.host
            .as_deref()
            .is_none_or(|host| url.host_str() == Some(host))
            && url.path().starts_with(&self.path_prefix)
    }
}

/// Refuses a route template that cannot match a path.
pub(crate) fn check_template(template: &str) -> Result<(), String> {
    if !template.starts_with('/') {
        return Err(format!(
            "route {template:?}: a route starts with '/' (/books/{{asin}})"
        ));
    }
    for segment in template.split('/').skip(1) {
        let braces = segment.matches(['{', '}']).count();
        let whole = segment.len() > 2 && segment.starts_with('{') && segment.ends_with('}');
        if braces != 0 && !(braces == 2 && whole) {
            return Err(format!(
                "route {template:?}: segment {segment:?} is neither a literal nor one {{name}}"
            ));
        }
    }
    Ok(())
}

/// Whether `path` matches `template` segment by segment.
fn template_matches(template: &str, path: &str) -> bool {
    let mut path = path.split('/');
    let mut template = template.split('/');
    loop {
        match (template.next(), path.next()) {
            (None, None) => return true,
            (Some(t), Some(p)) if t.starts_with('{') => {
                if p.is_empty() {
                    return false;
                }
            }
            (Some(t), Some(p)) if t == p => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whole_segments_and_bad_ones_are_refused() {
        assert!(template_matches("/books/{asin}", "/books/B002V1A0WE"));
        assert!(template_matches("/authors/{id}/books", "/authors/7/books"));
        assert!(!template_matches("/books/{asin}", "/books/"));
        assert!(!template_matches("/books/{asin}", "/books/a/b"));
        assert!(!template_matches("/books/{asin}", "/bookshelf/a"));
        assert!(!template_matches("/books", "/books/a"));
        assert!(template_matches("/", "/"));
        assert!(check_template("/books/{asin}").is_ok());
        for bad in [
            "books/{asin}",
            "/books/{asin",
            "/books/x{asin}",
            "/books/{}",
        ] {
            assert!(check_template(bad).is_err(), "{bad}");
        }
    }
}
