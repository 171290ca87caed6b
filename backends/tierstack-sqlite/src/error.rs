//! rusqlite errors as `tierstack_core::Error`s, always naming the file.

use std::path::Path;

use rusqlite::ErrorCode;
use tierstack_core::{Error, ErrorKind, Operation};

pub(crate) fn sqlite(error: rusqlite::Error, path: &Path, op: Operation) -> Error {
    let kind = match error.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Unavailable,
        Some(ErrorCode::DiskFull) => ErrorKind::Full,
        Some(
            ErrorCode::ReadOnly
            | ErrorCode::PermissionDenied
            | ErrorCode::AuthorizationForStatementDenied,
        ) => ErrorKind::PermissionDenied,
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => ErrorKind::Corrupt,
        Some(ErrorCode::CannotOpen | ErrorCode::SystemIoFailure) => ErrorKind::Io,
        _ => ErrorKind::Other,
    };
    let message = match kind {
        ErrorKind::Corrupt => format!("{} is not a usable SQLite database", path.display()),
        ErrorKind::Full => format!("no space left for {}", path.display()),
        ErrorKind::PermissionDenied => format!("no permission to write {}", path.display()),
        _ => format!("SQLite error on {}", path.display()),
    };
    Error::new(kind, message)
        .with_operation(op)
        .with_source(error)
}

pub(crate) use tierstack_core::paths::io_error as io;

/// Whether a failed transaction is worth retrying: another process holds the
/// write lock longer than the busy timeout.
pub(crate) fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}
