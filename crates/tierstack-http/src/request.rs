//! What a request's own `Cache-Control` asks of a stored answer
//! (RFC 9111 §5.2.1): `no-store` is handled before the cache is asked
//! (the request passes through); this is the rest.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use tierstack::{Header, Timestamp};

use crate::stored::{StoredResponse, directives, has, seconds};

/// A request's demands on a stored answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Wants {
    /// `no-cache` (or `Pragma: no-cache` without `Cache-Control`): only
    /// after a successful revalidation.
    no_cache: bool,
    /// `max-age=N`: no older than N.
    max_age: Option<Duration>,
    /// `min-fresh=N`: fresh for at least N more.
    min_fresh: Option<Duration>,
    /// `only-if-cached`: a stored answer, or `504`; never the upstream.
    pub(crate) only_if_cached: bool,
}

impl Wants {
    pub(crate) fn of(headers: &HeaderMap) -> Self {
        let cc = directives(headers);
        let pragma_no_cache = cc.is_empty()
            && headers
                .get_all(http::header::PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.to_ascii_lowercase().contains("no-cache"));
        Self {
            no_cache: has(&cc, "no-cache") || pragma_no_cache,
            max_age: seconds(&cc, "max-age"),
            min_fresh: seconds(&cc, "min-fresh"),
            only_if_cached: has(&cc, "only-if-cached"),
        }
    }

    /// Whether any fresh stored answer will do.
    pub(crate) fn takes_any_fresh(&self) -> bool {
        !self.no_cache && self.max_age.is_none() && self.min_fresh.is_none()
    }

    /// Whether `stored`, fresh in a tier until its `header`'s expiry, will
    /// do for this request without a revalidation.
    pub(crate) fn accepts(
        &self,
        stored: &StoredResponse,
        header: &Header,
        now: SystemTime,
    ) -> bool {
        if self.no_cache {
            return false;
        }
        if self.max_age.is_some_and(|max| stored.policy.age(now) > max) {
            return false;
        }
        let left = Duration::from_millis(header.expires_at.millis_since(Timestamp::now()));
        self.min_fresh
            .is_none_or(|min| header.expires_at.is_never() || left >= min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wants(cache_control: Option<&str>, pragma: Option<&str>) -> Wants {
        let mut headers = HeaderMap::new();
        if let Some(v) = cache_control {
            headers.insert(http::header::CACHE_CONTROL, v.parse().unwrap());
        }
        if let Some(v) = pragma {
            headers.insert(http::header::PRAGMA, v.parse().unwrap());
        }
        Wants::of(&headers)
    }

    #[test]
    fn the_request_directives_are_read_and_pragma_only_without_cache_control() {
        assert!(wants(None, None).takes_any_fresh());
        assert!(!wants(Some("no-cache"), None).takes_any_fresh());
        assert!(!wants(None, Some("no-cache")).takes_any_fresh());
        assert!(wants(Some("max-stale"), Some("no-cache")).takes_any_fresh());
        let w = wants(Some("max-age=10, min-fresh=5, only-if-cached"), None);
        assert_eq!(
            (w.max_age, w.min_fresh, w.only_if_cached),
            (
                Some(Duration::from_secs(10)),
                Some(Duration::from_secs(5)),
                true
            )
        );
        // A malformed value is no demand, not an error.
        assert!(wants(Some("max-age=soon"), None).takes_any_fresh());
    }
}
