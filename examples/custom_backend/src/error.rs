//! File-system errors as `tierstack_core::Error`s, naming the file.

use std::path::Path;

use tierstack_core::{Error, Operation};

pub(crate) fn io(error: std::io::Error, path: &Path, op: Operation) -> Error {
    tierstack_core::paths::io_error(error, path, "cannot use").with_operation(op)
}
