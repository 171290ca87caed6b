//! redis-rs errors as `tierstack_core::Error`s, and the few server answers
//! that mean "this entry is not ours" rather than "the server failed".

use redis::{ErrorKind as RedisKind, RedisError};
use tierstack_core::{Error, ErrorKind, Operation};

/// A failure talking to the server.
pub(crate) fn redis(error: RedisError, op: Operation) -> Error {
    let kind = if error.is_timeout() {
        ErrorKind::Timeout
    } else if error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_cluster_error()
    {
        ErrorKind::Unavailable
    } else {
        match error.kind() {
            RedisKind::AuthenticationFailed => ErrorKind::PermissionDenied,
            RedisKind::InvalidClientConfig
            | RedisKind::MasterNameNotFoundBySentinel
            | RedisKind::EmptySentinelList => ErrorKind::Config,
            _ if error.code() == Some("NOPERM") => ErrorKind::PermissionDenied,
            _ if error.code() == Some("OOM") => ErrorKind::Full,
            _ if matches!(
                error.code(),
                Some("LOADING" | "READONLY" | "MASTERDOWN" | "CLUSTERDOWN" | "TRYAGAIN")
            ) =>
            {
                ErrorKind::Unavailable
            }
            _ => ErrorKind::Other,
        }
    };
    Error::new(kind, "Redis command failed")
        .with_operation(op)
        .with_source(error)
}

/// Whether the server's answer concerns the key's contents (another type of
/// value stored under our name), which is a counted miss, not an outage.
pub(crate) fn is_foreign_value(error: &RedisError) -> bool {
    error.code() == Some("WRONGTYPE")
}

/// A command that did not answer within the response timeout.
pub(crate) fn timeout(op: Operation) -> Error {
    Error::new(
        ErrorKind::Timeout,
        "Redis did not answer within the response timeout",
    )
    .with_operation(op)
}

/// The breaker is open: the server failed repeatedly and is left alone for
/// a cool-down.
pub(crate) fn circuit_open(op: Operation) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "Redis is unavailable (circuit breaker open after repeated failures)",
    )
    .with_operation(op)
}

/// An entry whose bytes are not a tierstack entry.
pub(crate) fn corrupt(reason: impl std::fmt::Display, op: Operation) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!("not a tierstack entry: {reason}"),
    )
    .with_operation(op)
}
