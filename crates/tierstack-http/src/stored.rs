//! What is stored for a response, and the index of a URL.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::CachePolicy;
use serde::{Deserialize, Serialize};
use tierstack::ResponseMeta;

/// A stored response: its policy (made from the request without its
/// credentials, which are never stored), status, headers and body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredResponse {
    pub(crate) policy: CachePolicy,
    pub(crate) status: u16,
    /// Until when, once stale, it may be served while it is revalidated
    /// in the background (`stale-while-revalidate`); `None`: never.
    #[serde(default)]
    pub(crate) revalidate_until: Option<SystemTime>,
    pub(crate) headers: Vec<(String, Bytes)>,
    pub(crate) body: Bytes,
}

/// The `Vary` names of a URL's responses and the generation their variants
/// are stored under (a write to the URL starts a new one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VaryIndex {
    pub(crate) vary: Vec<String>,
    pub(crate) generation: u64,
}

/// How long an index entry lives: longer than the responses it leads to
/// in practice; a lost index only costs a fetch.
pub(crate) const INDEX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Headers that belong to one connection (RFC 9110 §7.6.1) and `Age`,
/// which is computed for each answer: not stored, not replayed.
const NOT_REPLAYED: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "age",
    "x-cache",
];

pub(crate) fn stored_headers(headers: &HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .filter(|(name, _)| !NOT_REPLAYED.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

pub(crate) fn header_map(headers: &[(String, Bytes)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(name, value);
        }
    }
    map
}

/// The response's `Cache-Control` directives, names in lower case.
pub(crate) fn directives(headers: &HeaderMap) -> Vec<(String, Option<String>)> {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| {
            let part = part.trim();
            if part.is_empty() {
                return None;
            }
            let (name, value) = part.split_once('=').map_or((part, None), |(n, v)| {
                (n, Some(v.trim().trim_matches('"').to_owned()))
            });
            Some((name.trim().to_ascii_lowercase(), value))
        })
        .collect()
}

pub(crate) fn seconds(directives: &[(String, Option<String>)], name: &str) -> Option<Duration> {
    directives
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| v.as_deref()?.parse().ok())
        .map(Duration::from_secs)
}

pub(crate) fn has(directives: &[(String, Option<String>)], name: &str) -> bool {
    directives.iter().any(|(n, _)| n == name)
}

/// What a response says about itself, for the cache underneath: its
/// validators, its freshness (`ttl` from the policy unless an override
/// forces one), the stale window (`stale-if-error` and
/// `stale-while-revalidate`, RFC 5861, which http-cache-semantics does not
/// read), and whether it must never be served stale; and until when it
/// may be served stale while it is revalidated.
pub(crate) fn response_meta(
    policy: &CachePolicy,
    headers: &HeaderMap,
    shared: bool,
    forced_ttl: Option<Duration>,
    ignore_no_cache: bool,
    now: SystemTime,
) -> (ResponseMeta, Option<SystemTime>) {
    let cc = directives(headers);
    let ttl = forced_ttl.unwrap_or_else(|| policy.time_to_live(now));
    let mut meta = ResponseMeta::none().ttl(ttl);
    if let Some(etag) = headers.get(http::header::ETAG) {
        meta = meta.etag(etag.as_bytes());
    }
    if let Some(at) = headers
        .get(http::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
    {
        meta = meta.last_modified(at);
    }
    let no_cache = has(&cc, "no-cache") && !ignore_no_cache;
    let must_revalidate =
        has(&cc, "must-revalidate") || no_cache || (shared && has(&cc, "proxy-revalidate"));
    if must_revalidate {
        // Never served stale: no window, whatever it says.
        return (meta.must_revalidate(), None);
    }
    let if_error = seconds(&cc, "stale-if-error");
    let while_revalidating = seconds(&cc, "stale-while-revalidate");
    // Stale-if-error past the revalidation window as well: a stale answer
    // may be served inside either.
    if let Some(window) = if_error.max(while_revalidating) {
        meta = meta.stale_for(window);
    }
    let revalidate_until = while_revalidating.map(|window| now + ttl + window);
    (meta, revalidate_until)
}

/// A response head for the policy crate.
pub(crate) fn response_parts(status: StatusCode, headers: HeaderMap) -> http::response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = status;
    parts.headers = headers;
    parts
}

/// `no-cache` removed from a response's headers (an override), so the
/// policy crate sees it as storable and fresh for its other directives.
pub(crate) fn without_no_cache(headers: &HeaderMap) -> HeaderMap {
    let mut out = headers.clone();
    let kept: Vec<String> = directives(headers)
        .into_iter()
        .filter(|(name, _)| name != "no-cache")
        .map(|(name, value)| value.map_or_else(|| name.clone(), |v| format!("{name}={v}")))
        .collect();
    out.remove(http::header::CACHE_CONTROL);
    out.remove(http::header::PRAGMA);
    if !kept.is_empty() {
        if let Ok(value) = HeaderValue::from_str(&kept.join(", ")) {
            out.insert(http::header::CACHE_CONTROL, value);
        }
    }
    out
}
