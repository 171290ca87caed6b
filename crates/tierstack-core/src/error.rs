//! The one error type of tierstack.
//!
//! A miss is not an error (`Ok(None)`), and neither is a damaged entry (a
//! counted miss). Errors say what kind of failure happened, whether retrying
//! later may help, which tier and operation failed, and carry the native error
//! as their source.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// What went wrong, coarsely: what a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The store cannot be reached (connection refused, circuit open).
    Unavailable,
    /// The store did not answer in time.
    Timeout,
    /// An I/O error on local storage.
    Io,
    /// Stored data is damaged beyond an entry-level miss (a foreign or broken
    /// database file).
    Corrupt,
    /// The store is full (disk full, size cap that cannot be met).
    Full,
    /// The process may not read or write the store.
    PermissionDenied,
    /// A configuration value is invalid.
    Config,
    /// A value could not be encoded.
    Encode,
    /// The user's fetch function failed.
    Fetch,
    /// The user's fetch function panicked.
    FetchPanicked,
    /// The tier does not support the operation.
    Unsupported,
    /// An upstream's request budget is spent: its rate limit would make the
    /// call wait past its deadline, or the upstream asked to slow down
    /// (`Retry-After`) and its circuit is open.
    /// [`Error::retry_after`] says when a request may go again.
    Throttled,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Whether errors of this kind are usually temporary.
    pub const fn is_usually_temporary(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout | Self::Throttled)
    }
}

/// The operation that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Operation {
    Build,
    Get,
    GetMany,
    Set,
    SetMany,
    Delete,
    Clear,
    Len,
    Scan,
    Health,
    Encode,
    Fetch,
    /// Announcing a change to other processes (a backplane message).
    Publish,
    /// Rewriting a store to give space back.
    Compact,
    /// A coordination call on a shared store (a lease, the shared rate
    /// budget, a shared circuit; see [`Coordinator`](crate::Coordinator)).
    Coordinate,
}

impl Operation {
    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Build => "build",
            Self::Get => "get",
            Self::GetMany => "get_many",
            Self::Set => "set",
            Self::SetMany => "set_many",
            Self::Delete => "delete",
            Self::Clear => "clear",
            Self::Len => "len",
            Self::Scan => "scan",
            Self::Health => "health",
            Self::Encode => "encode",
            Self::Fetch => "fetch",
            Self::Publish => "publish",
            Self::Compact => "compact",
            Self::Coordinate => "coordinate",
        }
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The error type of every tierstack crate. Cheap to clone, so that one
/// failed fetch can be handed to every caller waiting on it.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    temporary: bool,
    message: Cow<'static, str>,
    tier: Option<Arc<str>>,
    operation: Option<Operation>,
    retry_after: Option<std::time::Duration>,
    source: Option<Source>,
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error; temporariness defaults from the kind.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            temporary: kind.is_usually_temporary(),
            message: message.into(),
            tier: None,
            operation: None,
            retry_after: None,
            source: None,
        }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Attaches an already shared underlying error.
    #[must_use]
    pub fn with_shared_source(mut self, source: Source) -> Self {
        self.source = Some(source);
        self
    }

    /// Names the tier.
    #[must_use]
    pub fn with_tier(mut self, tier: impl Into<Arc<str>>) -> Self {
        self.tier = Some(tier.into());
        self
    }

    /// Names the operation.
    #[must_use]
    pub fn with_operation(mut self, operation: Operation) -> Self {
        self.operation = Some(operation);
        self
    }

    /// Says when the call may be tried again (a [`ErrorKind::Throttled`]
    /// error's wait).
    #[must_use]
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// How long to wait before trying again, when the error knows it.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// Overrides whether the error is temporary.
    #[must_use]
    pub fn set_temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying later may succeed.
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// The tier that failed, if any.
    pub fn tier(&self) -> Option<&str> {
        self.tier.as_deref()
    }

    /// The operation that failed, if known.
    pub fn operation(&self) -> Option<Operation> {
        self.operation
    }

    /// The message, without tier, operation or source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying error downcast to `E`, for example the fetch function's
    /// own error type.
    pub fn source_as<E: std::error::Error + 'static>(&self) -> Option<&E> {
        self.source.as_deref()?.downcast_ref::<E>()
    }

    /// The error and every cause under it on one line
    /// (`get failed: …: disk I/O error`), for logs and messages where only
    /// the `Display` of one value is printed.
    pub fn report(&self) -> Report<'_> {
        Report(self)
    }

    /// Shorthand for a configuration error.
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(tier) = &self.tier {
            write!(f, "tier {tier}: ")?;
        }
        if let Some(op) = self.operation {
            write!(f, "{} failed: ", op.name())?;
        }
        // The source is not repeated here: `source()` hands it out, and
        // printing both shows every cause twice in an error report.
        f.write_str(&self.message)
    }
}

/// An error followed by its chain of causes, each printed once and
/// separated by `": "`; made by [`Error::report`].
#[derive(Debug, Clone, Copy)]
pub struct Report<'a>(&'a (dyn std::error::Error + 'static));

impl<'a> Report<'a> {
    /// The report of any error, for chains that do not start with an
    /// [`Error`].
    pub fn of(error: &'a (dyn std::error::Error + 'static)) -> Self {
        Self(error)
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("temporary", &self.temporary)
            .field("tier", &self.tier)
            .field("operation", &self.operation)
            .field("retry_after", &self.retry_after)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl From<crate::envelope::EncodeError> for Error {
    fn from(e: crate::envelope::EncodeError) -> Self {
        Self::new(ErrorKind::Encode, "could not encode the value")
            .with_operation(Operation::Encode)
            .with_source(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("upstream said 503")]
    struct Upstream;

    #[test]
    fn display_names_tier_and_operation_and_leaves_the_source_to_the_chain() {
        let e = Error::new(ErrorKind::Timeout, "no answer within 500ms")
            .with_tier("redis")
            .with_operation(Operation::Get)
            .with_source(Upstream);
        assert_eq!(
            e.to_string(),
            "tier redis: get failed: no answer within 500ms"
        );
        let chain: Vec<String> =
            std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                .map(ToString::to_string)
                .collect();
        assert_eq!(
            chain,
            [
                "tier redis: get failed: no answer within 500ms",
                "upstream said 503"
            ]
        );
        assert_eq!(
            e.report().to_string(),
            "tier redis: get failed: no answer within 500ms: upstream said 503"
        );
        assert!(e.is_temporary());
        assert!(e.source_as::<Upstream>().is_some());
        assert!(!Error::config("bad").is_temporary());
    }

    #[test]
    fn accessors_return_what_was_set() {
        let e = Error::new(ErrorKind::Throttled, "429 from upstream");
        assert_eq!(e.message(), "429 from upstream");
        assert_eq!(e.retry_after(), None);
        let e = e.with_retry_after(std::time::Duration::from_millis(1500));
        assert_eq!(
            e.retry_after(),
            Some(std::time::Duration::from_millis(1500))
        );
        let debug = format!("{e:?}");
        for part in ["Error", "Throttled", "429 from upstream", "1.5s"] {
            assert!(debug.contains(part), "{part} missing from {debug}");
        }
    }
}
