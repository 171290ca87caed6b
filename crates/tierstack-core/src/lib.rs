#![doc = include_str!("../README.md")]
// Library code never unwraps what a user, a file or a server can influence.
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod backplane;
pub mod codec;
pub mod compression;
pub mod config;
pub mod coordinator;
pub mod envelope;
pub mod error;
pub mod group_commit;
pub mod key;
pub mod paths;
pub mod registry;
pub mod tier;
pub mod time;
pub mod units;

pub use async_trait::async_trait;
pub use backplane::{Backplane, BackplaneEvent, Invalidation};
pub use bytes::Bytes;
pub use codec::Codec;
pub use compression::{Compression, CompressionKind, Dictionaries, Dictionary};
pub use config::{BuildContext, TierConfig};
pub use coordinator::{CircuitState, Coordinator, LeaseOwner, Rate, Spend};
pub use envelope::{
    DecodeError, DecodeLimits, Decoded, EncodeError, Entry, EntryFlags, EntryMeta, Extensions,
    Header, key_hash,
};
pub use error::{Error, ErrorKind, Operation, Report, Result};
pub use key::{AsParam, Key, KeyBuilder, KeyError, ParamValue};
pub use registry::{BackendDescriptor, backend, backends};
pub use tier::{
    Capabilities, ClearScope, Compacted, Health, Readiness, ScanCursor, ScanPage, SetReadiness,
    Tier, TierSize, TierStats,
};
pub use time::Timestamp;

#[doc(hidden)]
pub mod __private {
    pub use inventory;
    pub use typetag;
}
