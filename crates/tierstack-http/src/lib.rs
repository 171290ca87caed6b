//! HTTP-aware caching over a [`tierstack::TieredCache`]: RFC 9111
//! freshness through `http-cache-semantics`, revalidation instead of
//! refetching (a `304` makes the stored answer fresh again in every tier),
//! and a `reqwest-middleware` adapter, [`HttpCache`].
//!
//! The crate's README (below) says what is stored, how requests are
//! keyed, and the overrides that depart from RFC 9111 when configured.
#![doc = include_str!("../README.md")]

mod key;
mod middleware;
mod options;
mod proxy;
mod request;
mod stored;

pub use middleware::{HttpCache, HttpStats};
pub use options::{DEFAULT_MAX_BODY, HttpCacheOptions, Override};
pub use proxy::{
    CONTROL_PREFIX, DEFAULT_LISTEN, DEFAULT_UPSTREAM_TIMEOUT, MAX_REQUEST_BODY, Proxy,
    RenderMetrics, Route, shutdown_signal,
};

/// The HTTP page of the guide, compiled.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/http.md")]
mod http_docs {}
