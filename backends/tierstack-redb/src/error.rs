//! redb errors as `tierstack_core::Error`s, always naming the file.

use std::path::Path;

use tierstack_core::{Error, ErrorKind, Operation};

pub(crate) fn redb(error: impl Into<redb::Error>, path: &Path, op: Operation) -> Error {
    let error: redb::Error = error.into();
    let (kind, message) = match &error {
        redb::Error::DatabaseAlreadyOpen => (
            ErrorKind::Unavailable,
            format!(
                "{} is locked by another process (redb allows one process at a time)",
                path.display()
            ),
        ),
        redb::Error::Corrupted(_) => (ErrorKind::Corrupt, format!("{} is damaged", path.display())),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => (
            ErrorKind::Full,
            format!("no space left for {}", path.display()),
        ),
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::PermissionDenied => (
            ErrorKind::PermissionDenied,
            format!("no permission to write {}", path.display()),
        ),
        redb::Error::Io(_) => (ErrorKind::Io, format!("I/O error on {}", path.display())),
        // redb refuses every write after an I/O error until reopened.
        redb::Error::PreviousIo => (
            ErrorKind::Io,
            format!(
                "{} cannot be written after an earlier I/O error (a full disk?) until the tier is opened again",
                path.display()
            ),
        ),
        redb::Error::UpgradeRequired(_) => (
            ErrorKind::Config,
            format!("{} was written by another redb file format", path.display()),
        ),
        redb::Error::ValueTooLarge(_) => (ErrorKind::Other, "value too large for redb".to_owned()),
        _ => (
            ErrorKind::Other,
            format!("redb error on {}", path.display()),
        ),
    };
    Error::new(kind, message)
        .with_operation(op)
        .with_source(error)
}
