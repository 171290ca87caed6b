//! Property and exhaustive tests for the entry envelope: round trips, every
//! bit flip detected, arbitrary bytes never panic.

use bytes::Bytes;
use proptest::prelude::*;
use tierstack_core::{
    Codec, Compression, DecodeLimits, Dictionaries, Entry, EntryMeta, Key, Timestamp,
};

fn meta() -> EntryMeta {
    EntryMeta::new(
        &Key::bare("books"),
        7,
        Timestamp::from_millis(1_700_000_000_000),
    )
    .expiring(
        Timestamp::from_millis(1_700_000_060_000),
        Timestamp::from_millis(1_700_000_120_000),
    )
}

fn decode(bytes: &[u8]) -> Result<Vec<String>, tierstack_core::DecodeError> {
    let entry = Entry::from_bytes(Bytes::copy_from_slice(bytes), DecodeLimits::default())?;
    entry.decode_value(DecodeLimits::default(), &Dictionaries::default())
}

/// A value whose encoding is about 1 KiB.
fn kib_value() -> Vec<String> {
    (0..66).map(|i| format!("title-{i:04}-abc")).collect()
}

fn assert_every_bit_flip_is_detected(compression: &Compression) -> usize {
    let value = kib_value();
    let entry = Entry::encode(
        &value,
        Codec::MsgPack,
        compression,
        meta(),
        DecodeLimits::default(),
    )
    .expect("encodes");
    let bytes = entry.to_vec();
    assert_eq!(decode(&bytes).expect("intact entry decodes"), value);
    let mut flips = 0;
    for byte in 0..bytes.len() {
        for bit in 0..8 {
            let mut damaged = bytes.clone();
            damaged[byte] ^= 1 << bit;
            assert!(
                decode(&damaged).is_err(),
                "flip of bit {bit} in byte {byte} was not detected"
            );
            flips += 1;
        }
    }
    flips
}

#[test]
fn every_bit_flip_of_a_1kib_entry_is_detected() {
    let flips = assert_every_bit_flip_is_detected(&Compression::None);
    assert!(flips >= 8192, "only {flips} flips");
}

#[test]
fn every_bit_flip_of_a_compressed_entry_is_detected() {
    let flips = assert_every_bit_flip_is_detected(&Compression::Zstd {
        level: 3,
        min_size: 0,
    });
    assert!(flips > 0);
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(tail in prop::collection::vec(any::<u8>(), 0..300), cut in 0usize..80) {
        let entry = Entry::encode(&kib_value(), Codec::MsgPack, &Compression::None, meta(), DecodeLimits::default()).unwrap();
        let mut bytes = entry.to_vec();
        bytes.truncate(tierstack_core::envelope::HEADER_LEN + cut);
        bytes.extend_from_slice(&tail);
        let _ = decode(&bytes);
    }

    #[test]
    fn values_round_trip_through_every_codec_and_compression(
        value in prop::collection::vec(".{0,40}", 0..50),
        codec in prop::sample::select(vec![Codec::MsgPack, Codec::Json]),
        zstd in any::<bool>(),
    ) {
        let compression = if zstd { Compression::Zstd { level: 3, min_size: 0 } } else { Compression::None };
        let entry = Entry::encode(&value, codec, &compression, meta(), DecodeLimits::default()).unwrap();
        let back = decode(&entry.to_vec()).unwrap();
        prop_assert_eq!(back, value);
    }

    /// Random damage either is detected or (never, in practice) leaves the
    /// value intact: a wrong value is the one outcome that must not happen.
    #[test]
    fn random_damage_never_yields_a_wrong_value(
        positions in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..5),
    ) {
        let value = kib_value();
        let entry = Entry::encode(&value, Codec::MsgPack, &Compression::None, meta(), DecodeLimits::default()).unwrap();
        let mut bytes = entry.to_vec();
        for (at, xor) in positions {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        if let Ok(decoded) = decode(&bytes) {
            prop_assert_eq!(decoded, value);
        }
    }
}
