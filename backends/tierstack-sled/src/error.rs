//! sled errors as `tierstack_core::Error`s, always naming the directory.

use std::path::Path;

use tierstack_core::{Error, ErrorKind, Operation};

/// Whether sled failed because another handle holds the directory's lock.
pub(crate) fn is_locked(error: &sled::Error) -> bool {
    matches!(error, sled::Error::Io(io)
        if io.kind() == std::io::ErrorKind::WouldBlock
            || io.to_string().contains("could not acquire lock"))
}

pub(crate) fn sled(error: sled::Error, path: &Path, op: Operation) -> Error {
    let (kind, message) = match &error {
        // sled wraps the lock failure in an I/O error of kind `Other`.
        _ if is_locked(&error) => (
            ErrorKind::Unavailable,
            format!(
                "{} is locked by another process (sled allows one process at a time)",
                path.display()
            ),
        ),
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => (
            ErrorKind::PermissionDenied,
            format!("no permission to write {}", path.display()),
        ),
        sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => (
            ErrorKind::Full,
            format!("no space left for {}", path.display()),
        ),
        sled::Error::Io(_) => (ErrorKind::Io, format!("I/O error on {}", path.display())),
        sled::Error::Corruption { .. } => {
            (ErrorKind::Corrupt, format!("{} is damaged", path.display()))
        }
        sled::Error::Unsupported(_) => (
            ErrorKind::Config,
            format!("{} cannot be used", path.display()),
        ),
        _ => (
            ErrorKind::Other,
            format!("sled error on {}", path.display()),
        ),
    };
    Error::new(kind, message)
        .with_operation(op)
        .with_source(error)
}
