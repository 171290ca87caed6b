//! An error a fetch closure returns to tell the cache more than "it failed":
//! that the upstream asked to slow down, and for how long.

use std::fmt;
use std::time::{Duration, SystemTime};

use crate::fetch::BoxError;

/// The upstream answered "slow down" (HTTP 429 or 503 with `Retry-After`).
///
/// Return it from a fetch closure, or keep it anywhere in the chain of
/// [`source`](std::error::Error::source)s of your own error: the cache opens
/// the source's circuit (its rate group's, when it has one) for
/// [`FetchError::retry_after`]. While it is open no fetch of the group is
/// made, stale values are served, and other callers get
/// [`ErrorKind::Throttled`](crate::ErrorKind::Throttled) at once; then one
/// probe goes. With a tier that coordinates, every process sharing it sees
/// the circuit.
///
/// ```
/// use std::time::Duration;
/// use tierstack::FetchError;
///
/// // In a fetch closure, after a 429:
/// let header = Some("7"); // response.headers().get("retry-after")
/// let wait = header
///     .and_then(FetchError::parse_retry_after)
///     .unwrap_or(Duration::from_secs(60));
/// let error = FetchError::throttled(wait).with_message("the API answered 429");
/// assert_eq!(error.retry_after(), Some(Duration::from_secs(7)));
/// ```
#[derive(Debug)]
pub struct FetchError {
    pub(crate) retry_after: Option<Duration>,
    pub(crate) not_stored: bool,
    message: Option<String>,
    source: Option<BoxError>,
}

impl FetchError {
    /// A failed fetch, saying what happened.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            retry_after: None,
            not_stored: false,
            message: Some(message.into()),
            source: None,
        }
    }

    /// The upstream answered, but with nothing the cache may store or hand
    /// to other callers (an HTTP `no-store` or `private` answer, which the
    /// caller that fetched passes on itself). Not a failure: no stale value
    /// is served in its place and it is not counted as a fetch error;
    /// callers that waited for this fetch get an error of kind
    /// [`ErrorKind::Fetch`](crate::ErrorKind::Fetch) that [`FetchError::is_not_stored`]
    /// finds, and ask for themselves.
    pub fn not_stored(message: impl Into<String>) -> Self {
        Self {
            not_stored: true,
            ..Self::new(message)
        }
    }

    /// Whether `error`, or an error in its chain of sources, is a
    /// [`FetchError::not_stored`].
    pub fn is_not_stored(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut next = Some(error);
        while let Some(e) = next {
            if e.downcast_ref::<Self>().is_some_and(|f| f.not_stored) {
                return true;
            }
            next = e.source();
        }
        false
    }

    /// The upstream asked to wait `retry_after` before the next request.
    pub fn throttled(retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            not_stored: false,
            message: None,
            source: None,
        }
    }

    /// Says what happened, for logs and the error the callers get.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Keeps the underlying error (the HTTP client's, say).
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// How long the upstream asked to wait.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Reads a `Retry-After` header value: a number of seconds (`120`) or
    /// an HTTP date (`Wed, 21 Oct 2026 07:28:00 GMT`, counted from now; a
    /// date in the past is zero). `None` for anything else.
    pub fn parse_retry_after(value: &str) -> Option<Duration> {
        Self::parse_retry_after_at(value, SystemTime::now())
    }

    /// [`FetchError::parse_retry_after`] with an explicit "now".
    pub fn parse_retry_after_at(value: &str, now: SystemTime) -> Option<Duration> {
        let value = value.trim();
        if let Ok(seconds) = value.parse::<u64>() {
            return Some(Duration::from_secs(seconds));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    }
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.message, self.retry_after) {
            (Some(message), _) => f.write_str(message),
            (None, Some(wait)) => write!(
                f,
                "the upstream asked to slow down for {}",
                tierstack_core::units::format_duration(wait)
            ),
            (None, None) => f.write_str("the fetch failed"),
        }
    }
}

/// A tierstack error inside a fetch (`ctx.spend().await?` turned away by
/// the budget) becomes a plain fetch failure with it as the source. Its
/// `retry_after` is not the upstream's "slow down", so it opens no circuit.
impl From<tierstack_core::Error> for FetchError {
    fn from(error: tierstack_core::Error) -> Self {
        Self {
            retry_after: None,
            not_stored: false,
            message: Some(error.message().to_owned()),
            source: Some(Box::new(error)),
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2026 07:28:00 GMT").unwrap();
        let at = |v| FetchError::parse_retry_after_at(v, now);
        assert_eq!(at("120"), Some(Duration::from_secs(120)));
        assert_eq!(at(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            at("Wed, 21 Oct 2026 07:28:30 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(at("Wed, 21 Oct 2026 07:00:00 GMT"), Some(Duration::ZERO));
        for bad in ["", "soon", "-5", "1.5", "Wed, 32 Oct 2026 07:28:00 GMT"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_cache_finds_it_under_the_users_own_error() {
        #[derive(Debug)]
        struct ApiError(FetchError);
        impl fmt::Display for ApiError {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("api error")
            }
        }
        impl std::error::Error for ApiError {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped: BoxError = Box::new(ApiError(FetchError::throttled(Duration::from_secs(2))));
        assert_eq!(
            crate::fetch::slow_down(&*wrapped),
            Some(Duration::from_secs(2))
        );
        let plain: BoxError = "timeout".into();
        assert_eq!(crate::fetch::slow_down(&*plain), None);
        assert_eq!(
            FetchError::throttled(Duration::from_secs(3)).to_string(),
            "the upstream asked to slow down for 3s"
        );
    }
}
