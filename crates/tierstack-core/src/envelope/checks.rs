//! Every check of the header, one test per rule, each at its boundary:
//! written from the mutants `cargo mutants` found that core's own tests
//! let through (see `docs/testing.md`).

use super::*;

fn sample() -> Entry {
    let meta = EntryMeta::new(&Key::bare("checks"), 3, Timestamp::from_millis(1_000))
        .expiring(Timestamp::from_millis(2_000), Timestamp::from_millis(3_000))
        .retained_until(Timestamp::from_millis(4_000));
    Entry::encode(
        &"a value",
        Codec::Json,
        &Compression::None,
        meta,
        DecodeLimits::default(),
    )
    .expect("encodes")
}

/// The sample's header bytes after `change`, with a correct checksum.
fn forged(change: impl FnOnce(&mut Header)) -> Vec<u8> {
    let mut header = sample().header;
    change(&mut header);
    header.to_bytes(&Extensions::empty())
}

fn parsed(change: impl FnOnce(&mut Header)) -> Result<Header, DecodeError> {
    Header::parse(&forged(change), DecodeLimits::default())
}

#[test]
fn a_short_buffer_is_foreign_unsupported_or_truncated() {
    let whole = sample().to_vec();
    assert_eq!(
        Header::parse(b"XY", DecodeLimits::default()),
        Err(DecodeError::BadMagic)
    );
    for n in [0, 2, 4, 20, FIXED_LEN - 1] {
        assert_eq!(
            Header::parse(&whole[..n], DecodeLimits::default()),
            Err(DecodeError::Truncated {
                len: n,
                expected: HEADER_LEN
            }),
            "{n} bytes of an entry"
        );
    }
    let mut other_version = whole[..10].to_vec();
    other_version[4] = 9;
    assert_eq!(
        Header::parse(&other_version, DecodeLimits::default()),
        Err(DecodeError::UnsupportedFormat(9))
    );
}

#[test]
fn the_extension_area_may_reach_its_maximum_and_no_further() {
    let mut bytes = forged(|_| {});
    bytes[72..74].copy_from_slice(&(Extensions::MAX_LEN as u16).to_le_bytes());
    assert_eq!(
        Header::parse(&bytes, DecodeLimits::default()),
        Err(DecodeError::Truncated {
            len: bytes.len(),
            expected: MAX_HEADER_LEN
        }),
        "an area of the maximum length is read (here: not all there)"
    );
    assert_eq!(Header::declared_len(&bytes), Some(MAX_HEADER_LEN));
    bytes[72..74].copy_from_slice(&(Extensions::MAX_LEN as u16 + 1).to_le_bytes());
    assert_eq!(
        Header::parse(&bytes, DecodeLimits::default()),
        Err(DecodeError::Inconsistent("extension area too long"))
    );
}

#[test]
fn declared_len_reads_the_length_field() {
    let entry = sample().with_extensions(
        Extensions::empty()
            .with(Extensions::ETAG, b"\"v1\"")
            .expect("fits"),
    );
    let bytes = entry.to_vec();
    assert_eq!(Header::declared_len(&bytes), Some(entry.header_len()));
    assert_eq!(
        entry.header_len(),
        HEADER_LEN + 3 + 4,
        "kind, length, value"
    );
    assert_eq!(entry.encoded_len(), bytes.len());
    assert_eq!(sample().encoded_len(), sample().to_vec().len());
    assert_eq!(Header::declared_len(&bytes[..73]), None);
}

#[test]
fn flags_are_known_or_refused() {
    let negative = parsed(|h| h.flags = EntryFlags::NEGATIVE.union(EntryFlags::MUST_REVALIDATE))
        .expect("known flags");
    assert!(negative.is_negative());
    let mut bytes = forged(|_| {});
    bytes[7] = 0x80;
    let checked = HEADER_LEN - CHECKSUM_LEN;
    let check = xxh3_64(&bytes[..checked]) as u32;
    bytes[checked..HEADER_LEN].copy_from_slice(&check.to_le_bytes());
    assert_eq!(
        Header::parse(&bytes, DecodeLimits::default()),
        Err(DecodeError::UnknownFlags(0x80))
    );
}

#[test]
fn the_times_must_be_in_order() {
    let at = Timestamp::from_millis;
    assert!(
        parsed(|h| h.stale_until = h.expires_at).is_ok(),
        "no stale window"
    );
    assert_eq!(
        parsed(|h| h.stale_until = at(1_999)),
        Err(DecodeError::Inconsistent("stale_until before expires_at"))
    );
    assert!(parsed(|h| h.retain_until = h.stale_until).is_ok());
    assert_eq!(
        parsed(|h| h.retain_until = at(2_999)),
        Err(DecodeError::Inconsistent("retain_until before stale_until"))
    );
}

#[test]
fn lengths_and_dictionary_ids_must_agree_with_the_compression() {
    assert_eq!(
        parsed(|h| h.raw_len += 1),
        Err(DecodeError::Inconsistent(
            "uncompressed body length differs from raw length"
        ))
    );
    for compression in [CompressionKind::None, CompressionKind::Zstd] {
        assert_eq!(
            parsed(|h| {
                h.compression = compression;
                h.dict_id = 7;
            }),
            Err(DecodeError::Inconsistent(
                "dictionary id without dictionary compression"
            )),
            "{compression:?}"
        );
    }
    assert!(parsed(|h| h.compression = CompressionKind::Zstd).is_ok());
    assert_eq!(
        parsed(|h| h.compression = CompressionKind::ZstdDict),
        Err(DecodeError::Inconsistent(
            "dictionary compression without id"
        ))
    );
    assert!(
        parsed(|h| {
            h.compression = CompressionKind::ZstdDict;
            h.dict_id = 7;
        })
        .is_ok()
    );
}

#[test]
fn freshness_and_the_stale_window_end_at_their_instants() {
    let header = sample().header;
    let at = Timestamp::from_millis;
    assert!(header.is_fresh(at(1_999)));
    assert!(!header.is_fresh(at(2_000)));
    assert!(!header.is_fresh(at(2_001)));
    assert!(header.is_servable_stale(at(2_999)));
    assert!(!header.is_servable_stale(at(3_000)));
    assert!(header.is_retained(at(3_999)));
    assert!(!header.is_retained(at(4_000)));
}

#[test]
fn keep_until_reads_the_retention_of_either_format() {
    let entry = sample();
    assert_eq!(
        keep_until(&entry.to_vec()),
        Some(Timestamp::from_millis(4_000))
    );
    let v1 = v1::encode_for_tests(&entry.header, &entry.body);
    assert_eq!(keep_until(&v1), Some(Timestamp::from_millis(3_000)));
    assert_eq!(keep_until(b"not an entry at all"), None);
}

#[test]
fn with_header_takes_the_header_it_is_given() {
    let entry = sample();
    let later = entry.header.with_expiry(Timestamp::from_millis(9_000));
    assert_eq!(entry.with_header(later).header, later);
}

#[test]
fn a_restored_body_has_no_dictionary() {
    let mut entry = sample();
    entry.decoded = Some(Decoded::new(Arc::new("a value".to_owned())));
    let mut header = entry.header;
    header.compression = CompressionKind::ZstdDict;
    header.dict_id = 7;
    let restored = entry
        .with_header(header)
        .without_body()
        .with_body_restored()
        .expect("encodes again");
    assert_eq!(
        (restored.header.compression, restored.header.dict_id),
        (CompressionKind::None, 0)
    );
    Entry::from_bytes(Bytes::from(restored.to_vec()), DecodeLimits::default())
        .expect("a valid entry");
}

#[test]
fn decoded_values_come_back_only_as_their_type() {
    let decoded = Decoded::new(Arc::new(42u32));
    assert_eq!(decoded.downcast::<u32>().as_deref(), Some(&42));
    assert!(decoded.downcast::<String>().is_none());
    assert_eq!(format!("{decoded:?}"), "Decoded { .. }");
    let shown = format!("{:?}", sample());
    assert!(shown.starts_with("Entry { header: Header {"), "{shown}");
    assert!(
        shown.contains("body_len: 9") && shown.contains("decoded: false"),
        "{shown}"
    );
}

#[test]
fn every_decode_error_has_its_own_label() {
    let errors = [
        DecodeError::Truncated {
            len: 0,
            expected: 1,
        },
        DecodeError::TrailingBytes { extra: 1 },
        DecodeError::BadMagic,
        DecodeError::UnsupportedFormat(9),
        DecodeError::HeaderChecksum,
        DecodeError::BodyChecksum,
        DecodeError::UnknownFlags(0x80),
        DecodeError::UnsupportedExtension(200),
        DecodeError::KeyMismatch,
        DecodeError::UnknownCodec(9),
        DecodeError::UnknownCompression(9),
        DecodeError::UnknownDictionary(9),
        DecodeError::Inconsistent("x"),
        DecodeError::TooLarge { raw_len: 2, max: 1 },
        DecodeError::Decompress("x".into()),
        DecodeError::Codec {
            codec: "json",
            message: "x".into(),
        },
        DecodeError::SchemaMismatch {
            found: 1,
            expected: 2,
        },
    ];
    let labels: Vec<&str> = errors.iter().map(DecodeError::reason).collect();
    assert_eq!(labels[0], "truncated");
    assert_eq!(labels[12], "inconsistent_header");
    let mut unique = labels.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), labels.len(), "{labels:?}");
    assert!(
        labels
            .iter()
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
    );
}

#[test]
fn a_restored_body_declares_its_own_length() {
    // A body written by hand with spaces; encoding the value again gives
    // a shorter one, and the header must say so.
    let body = Bytes::from_static(b"{ \"a\" : 1 }");
    let meta = EntryMeta::new(&Key::bare("spaced"), 1, Timestamp::from_millis(1))
        .expiring(Timestamp::from_millis(2), Timestamp::from_millis(3));
    let mut entry = Entry::from_body(
        meta,
        Codec::Json,
        CompressionKind::None,
        0,
        body.len() as u32,
        body,
    );
    let value: std::collections::BTreeMap<String, u32> = [("a".to_owned(), 1)].into();
    entry.decoded = Some(Decoded::new(Arc::new(value)));
    let restored = entry.without_body().with_body_restored().expect("encodes");
    assert_eq!(&restored.body[..], br#"{"a":1}"#);
    assert_eq!((restored.header.raw_len, restored.header.body_len), (7, 7));
    Entry::from_bytes(Bytes::from(restored.to_vec()), DecodeLimits::default())
        .expect("a valid entry");
}

#[test]
fn short_and_long_entries_say_by_how_much() {
    let entry = sample();
    let whole = entry.to_vec();
    let n = whole.len();
    let cut = Bytes::copy_from_slice(&whole[..n - 3]);
    assert_eq!(
        Entry::from_bytes(cut, DecodeLimits::default()).unwrap_err(),
        DecodeError::Truncated {
            len: n - 3,
            expected: n
        }
    );
    let mut longer = whole.clone();
    longer.extend_from_slice(b"xyz");
    assert_eq!(
        Entry::from_bytes(Bytes::from(longer), DecodeLimits::default()).unwrap_err(),
        DecodeError::TrailingBytes { extra: 3 }
    );

    let header = entry.header_bytes();
    let body = entry.body.clone();
    let parts = |h: &[u8], b: &[u8]| {
        Entry::from_parts(h, Bytes::copy_from_slice(b), DecodeLimits::default())
    };
    assert_eq!(parts(&header, &body).expect("whole").body, body);
    let mut long_header = header.clone();
    long_header.extend_from_slice(b"zz");
    assert_eq!(
        parts(&long_header, &body).unwrap_err(),
        DecodeError::TrailingBytes { extra: 2 }
    );
    assert_eq!(
        parts(&header, &body[..body.len() - 2]).unwrap_err(),
        DecodeError::Truncated {
            len: body.len() - 2,
            expected: body.len()
        }
    );
    let mut long_body = body.to_vec();
    long_body.extend_from_slice(b"zzzz");
    assert_eq!(
        parts(&header, &long_body).unwrap_err(),
        DecodeError::TrailingBytes { extra: 4 }
    );
}
