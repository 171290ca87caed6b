//! The engine has no failing operations; the only errors of this tier are
//! configuration mistakes, reported before the tier exists.

use tierstack_core::{Error, Operation};

use crate::MemoryConfig;

pub(crate) fn validate(config: &MemoryConfig) -> Result<(), Error> {
    let fail = |message: String| {
        Err(Error::config(message)
            .with_tier(config.name.as_str())
            .with_operation(Operation::Build))
    };
    match (config.max_entries, config.max_bytes) {
        (Some(_), Some(_)) => fail("set either max_entries or max_bytes, not both".into()),
        (Some(0), None) => fail("max_entries must be at least 1".into()),
        (None, Some(0)) => fail("max_bytes must be at least 1".into()),
        _ if config.ttl.is_some_and(|t| t.is_zero()) => {
            fail("ttl must be longer than zero (remove the tier to disable it)".into())
        }
        _ => Ok(()),
    }
}
