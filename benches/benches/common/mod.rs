//! What every bench shares: the record, its keys, pre-encoded entries and
//! the runtime they run on.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use tierstack::{Codec, Compression, DecodeLimits, Entry, EntryMeta, Key, Timestamp};

/// A book record of about 400 bytes in MessagePack.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Book {
    pub(crate) asin: String,
    pub(crate) title: String,
    pub(crate) authors: Vec<String>,
    pub(crate) narrators: Vec<String>,
    pub(crate) runtime_minutes: u32,
    pub(crate) summary: String,
}

pub(crate) fn book(i: u64) -> Book {
    Book {
        asin: format!("B{i:09}"),
        title: format!("Book number {i}"),
        authors: vec![format!("Author {}", i % 97)],
        narrators: vec![format!("Narrator {}", i % 31)],
        runtime_minutes: 600 + (i % 300) as u32,
        summary: "A long summary of the book. ".repeat(8),
    }
}

/// Keys the benches cycle through.
pub(crate) const KEYS: u64 = 1000;

pub(crate) fn key(i: u64) -> Key {
    Key::new("audnexus:book", [("asin", format!("B{i:09}"))])
}

/// `book(i)` as a stored entry: MessagePack, uncompressed, no expiry.
pub(crate) fn entry(i: u64) -> Entry {
    let meta = EntryMeta::new(&key(i), 1, Timestamp::now());
    Entry::encode(
        &book(i),
        Codec::MsgPack,
        &Compression::None,
        meta,
        DecodeLimits::default(),
    )
    .expect("encodes")
}

/// A multi-thread runtime with two workers, as on the 2-core machines.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
