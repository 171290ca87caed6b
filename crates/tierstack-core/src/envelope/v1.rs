//! Reading entries of envelope format 1, to carry them into format 2 where
//! their key is known (a SQLite file migrated in place, an export written by
//! an earlier version). Caches never read format 1 on their read path: such
//! an entry is an `UnsupportedFormat` miss there.
//!
//! Format 1 is the 60-byte header specified in the history of
//! `docs/entry-format.md`: no key hash, no retention, no extension area, and
//! negative entries with an empty body.

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use super::{DecodeError, DecodeLimits, Entry, EntryFlags, EntryMeta, Header, MAGIC};
use crate::codec::Codec;
use crate::compression::CompressionKind;
use crate::key::Key;
use crate::time::Timestamp;

/// Length of a format-1 header.
pub const HEADER_LEN: usize = 60;
const HEADER_CHECKED: usize = 56;

/// Whether `bytes` start like a format-1 entry (magic and version byte),
/// before any other check.
pub fn looks_like(bytes: &[u8]) -> bool {
    bytes.len() > 4 && bytes[..4] == MAGIC && bytes[4] == 1
}

/// Parses a whole format-1 entry (header and body) and rebuilds it in the
/// current format, bound to `key`. Every check of format 1 applies
/// (checksums, ids, consistency, exact length); the body bytes are kept as
/// they are, except that a negative entry gets the codec's encoding of
/// nothing as its body.
pub fn upgrade(bytes: &[u8], key: &Key, limits: DecodeLimits) -> Result<Entry, DecodeError> {
    let header = parse(bytes, limits)?;
    let body = &bytes[HEADER_LEN..];
    let expected = HEADER_LEN + header.body_len as usize;
    if bytes.len() != expected {
        return Err(if bytes.len() < expected {
            DecodeError::Truncated {
                len: bytes.len(),
                expected,
            }
        } else {
            DecodeError::TrailingBytes {
                extra: bytes.len() - expected,
            }
        });
    }
    upgrade_parts(
        &bytes[..HEADER_LEN],
        Bytes::copy_from_slice(body),
        key,
        limits,
    )
}

/// [`upgrade`] for a header and a body stored apart.
pub fn upgrade_parts(
    header: &[u8],
    body: Bytes,
    key: &Key,
    limits: DecodeLimits,
) -> Result<Entry, DecodeError> {
    if header.len() != HEADER_LEN {
        return Err(DecodeError::Truncated {
            len: header.len(),
            expected: HEADER_LEN,
        });
    }
    let old = parse(header, limits)?;
    if body.len() != old.body_len as usize {
        return Err(DecodeError::Truncated {
            len: body.len(),
            expected: old.body_len as usize,
        });
    }
    if xxh3_64(&body) != old.body_checksum {
        return Err(DecodeError::BodyChecksum);
    }
    let meta = EntryMeta::new(key, old.schema_version, old.created_at)
        .expiring(old.expires_at, old.stale_until)
        .flagged(old.flags);
    if old.is_negative() {
        return Ok(Entry::negative(meta, old.codec));
    }
    Ok(Entry::from_body(
        meta,
        old.codec,
        old.compression,
        old.dict_id,
        old.raw_len,
        body,
    ))
}

/// Parses and validates a format-1 header into the current [`Header`] type
/// (no key hash: it is 0; retention ends with the stale window).
pub fn parse(bytes: &[u8], limits: DecodeLimits) -> Result<Header, DecodeError> {
    let Some(head) = bytes.get(..HEADER_LEN) else {
        return Err(DecodeError::Truncated {
            len: bytes.len(),
            expected: HEADER_LEN,
        });
    };
    if head[0..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if head[4] != 1 {
        return Err(DecodeError::UnsupportedFormat(head[4]));
    }
    let u64_at = |at: usize| u64::from_le_bytes(super::array(&head[at..at + 8]));
    let u32_at = |at: usize| u32::from_le_bytes(super::array(&head[at..at + 4]));
    if xxh3_64(&head[..HEADER_CHECKED]) as u32 != u32_at(56) {
        return Err(DecodeError::HeaderChecksum);
    }
    // Format 1 knew one flag, "negative".
    if head[7] & !EntryFlags::NEGATIVE.bits() != 0 {
        return Err(DecodeError::UnknownFlags(head[7]));
    }
    let stale_until = Timestamp::from_millis(u64_at(32));
    let header = Header {
        codec: Codec::from_id(head[5])?,
        compression: CompressionKind::from_id(head[6])?,
        flags: if head[7] == 0 {
            EntryFlags::empty()
        } else {
            EntryFlags::NEGATIVE
        },
        schema_version: u32_at(8),
        dict_id: u32_at(12),
        key_hash: 0,
        created_at: Timestamp::from_millis(u64_at(16)),
        expires_at: Timestamp::from_millis(u64_at(24)),
        stale_until,
        retain_until: stale_until,
        raw_len: u32_at(40),
        body_len: u32_at(44),
        body_checksum: u64_at(48),
    };
    header.validate(limits)?;
    Ok(header)
}

/// Writes a format-1 entry; for tests of the upgrade path only.
#[doc(hidden)]
pub fn encode_for_tests(header: &Header, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC);
    out[4] = 1;
    out[5] = header.codec.id();
    out[6] = header.compression.id();
    out[7] = header.flags.bits() & EntryFlags::NEGATIVE.bits();
    out[8..12].copy_from_slice(&header.schema_version.to_le_bytes());
    out[12..16].copy_from_slice(&header.dict_id.to_le_bytes());
    out[16..24].copy_from_slice(&header.created_at.as_millis().to_le_bytes());
    out[24..32].copy_from_slice(&header.expires_at.as_millis().to_le_bytes());
    out[32..40].copy_from_slice(&header.stale_until.as_millis().to_le_bytes());
    out[40..44].copy_from_slice(&header.raw_len.to_le_bytes());
    out[44..48].copy_from_slice(&(body.len() as u32).to_le_bytes());
    out[48..56].copy_from_slice(&xxh3_64(body).to_le_bytes());
    let check = xxh3_64(&out[..HEADER_CHECKED]) as u32;
    out[56..60].copy_from_slice(&check.to_le_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_format_1_entry_is_carried_over_bound_to_its_key() {
        let key = Key::bare("books");
        let body = br#"{"title":"Dune"}"#;
        let current = Entry::from_body(
            EntryMeta::new(&key, 4, Timestamp::from_millis(10))
                .expiring(Timestamp::from_millis(20), Timestamp::from_millis(30)),
            Codec::Json,
            CompressionKind::None,
            0,
            body.len() as u32,
            Bytes::from_static(body),
        );
        let old = encode_for_tests(&current.header, body);
        assert!(looks_like(&old));
        let up = upgrade(&old, &key, DecodeLimits::default()).unwrap();
        assert_eq!(up.header, current.header);
        assert_eq!(&up.body[..], body);
        let mut damaged = old.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(
            upgrade(&damaged, &key, DecodeLimits::default()).unwrap_err(),
            DecodeError::BodyChecksum
        );
        assert!(upgrade(&old[..old.len() - 1], &key, DecodeLimits::default()).is_err());
        let mut header = old.clone();
        header[9] ^= 1;
        assert_eq!(
            upgrade(&header, &key, DecodeLimits::default()).unwrap_err(),
            DecodeError::HeaderChecksum
        );
    }

    #[test]
    fn a_format_1_negative_entry_gets_a_valid_body() {
        let key = Key::bare("books");
        let mut header = Entry::negative(
            EntryMeta::new(&key, 1, Timestamp::from_millis(10)),
            Codec::Json,
        )
        .header;
        header.raw_len = 0;
        let old = encode_for_tests(&header, b"");
        let up = upgrade(&old, &key, DecodeLimits::default()).unwrap();
        assert!(up.header.is_negative());
        assert_eq!(&up.body[..], b"null");
    }

    /// A key and the format-1 bytes of a `{}` body stored under it.
    fn small_format_1_entry() -> (Key, Vec<u8>) {
        let key = Key::bare("books");
        let current = Entry::from_body(
            EntryMeta::new(&key, 1, Timestamp::from_millis(10)),
            Codec::Json,
            CompressionKind::None,
            0,
            2,
            Bytes::from_static(b"{}"),
        );
        let old = encode_for_tests(&current.header, b"{}");
        (key, old)
    }

    #[test]
    fn only_the_magic_and_version_1_look_like_format_1() {
        let (_, old) = small_format_1_entry();
        assert!(looks_like(&old));
        assert!(looks_like(&old[..5]), "the version byte is enough");
        assert!(!looks_like(&old[..4]), "the magic alone");
        assert!(!looks_like(b""));
        let mut other_magic = old.clone();
        other_magic[0] ^= 1;
        assert!(!looks_like(&other_magic));
        let mut version_2 = old.clone();
        version_2[4] = 2;
        assert!(!looks_like(&version_2));
    }

    #[test]
    fn a_format_1_entry_with_bytes_after_its_body_is_refused_saying_how_many() {
        let (key, old) = small_format_1_entry();
        let longer = [old.as_slice(), b"xyz"].concat();
        assert_eq!(
            upgrade(&longer, &key, DecodeLimits::default()).unwrap_err(),
            DecodeError::TrailingBytes { extra: 3 }
        );
        assert_eq!(
            upgrade(&old[..old.len() - 1], &key, DecodeLimits::default()).unwrap_err(),
            DecodeError::Truncated {
                len: old.len() - 1,
                expected: old.len()
            }
        );
    }
}
