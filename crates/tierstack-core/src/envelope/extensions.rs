//! The extension area of an entry: typed, bounded records that carry what
//! only some entries need (HTTP validators, response metadata) without a new
//! format version each time a field is added.
//!
//! Records are `type: u8, len: u16 LE, value: [u8; len]`, sorted by type,
//! each type at most once, so that equal extensions have equal bytes. Types
//! below [`Extensions::CRITICAL`] may be skipped by a reader that does not
//! know them; a reader that meets an unknown type at or above it treats the
//! entry as one it cannot read (a miss that leaves the entry alone).

use bytes::Bytes;

use super::{DecodeError, EncodeError};
use crate::time::Timestamp;

/// Validated extension records of one entry.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Extensions(Bytes);

/// Length of a record's type and length fields.
const RECORD_HEAD: usize = 3;

impl Extensions {
    /// Largest extension area, in bytes; bounds what a reader allocates and
    /// how much of an entry a header-only read must fetch.
    pub const MAX_LEN: usize = 4096;
    /// Record types from here up must be understood to read the entry.
    pub const CRITICAL: u8 = 0x80;
    /// The response's `ETag`, as sent (opaque bytes, quotes included).
    pub const ETAG: u8 = 0x01;
    /// The response's `Last-Modified`, milliseconds since the Unix epoch (u64 LE).
    pub const LAST_MODIFIED: u8 = 0x02;
    /// The response's HTTP status code (u16 LE).
    pub const HTTP_STATUS: u8 = 0x03;
    /// Selected response headers: repeated `u16 LE name length, name, u16 LE
    /// value length, value`, names in lower case.
    pub const HTTP_HEADERS: u8 = 0x04;

    /// No records.
    pub fn empty() -> Self {
        Self(Bytes::new())
    }

    /// Whether there are no records.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The records' bytes as stored.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length of the stored records.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Validates stored records: bounded, well formed, sorted, no duplicate,
    /// no unknown critical type, known types of the right length.
    pub fn parse(bytes: Bytes) -> Result<Self, DecodeError> {
        Self::validate(&bytes)?;
        Ok(Self(bytes))
    }

    /// Records already checked by [`Extensions::validate`].
    pub(super) fn trusted(bytes: Bytes) -> Self {
        Self(bytes)
    }

    /// The checks of [`Extensions::parse`], without keeping the bytes.
    pub(super) fn validate(bytes: &[u8]) -> Result<(), DecodeError> {
        if bytes.len() > Self::MAX_LEN {
            return Err(DecodeError::Inconsistent("extension area too long"));
        }
        let mut last: Option<u8> = None;
        for record in Records(bytes) {
            let (kind, value) = record?;
            if kind == 0 {
                return Err(DecodeError::Inconsistent("extension type 0"));
            }
            if last.is_some_and(|l| l >= kind) {
                return Err(DecodeError::Inconsistent(
                    "extension records out of order or repeated",
                ));
            }
            last = Some(kind);
            check_known(kind, value)?;
        }
        Ok(())
    }

    /// The value of the record of type `kind`.
    pub fn get(&self, kind: u8) -> Option<&[u8]> {
        Records(&self.0)
            .map_while(Result::ok)
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| v)
    }

    /// Every record, in type order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        Records(&self.0).map_while(Result::ok)
    }

    /// A copy with the record of type `kind` set to `value` (replacing one of
    /// the same type).
    pub fn with(&self, kind: u8, value: &[u8]) -> Result<Self, EncodeError> {
        let invalid = |why: &str| EncodeError::Extension(format!("record type {kind:#04x}: {why}"));
        if kind == 0 {
            return Err(invalid("type 0 is reserved"));
        }
        check_known(kind, value).map_err(|_| invalid("wrong length for its type"))?;
        let len = u16::try_from(value.len()).map_err(|_| invalid("value too long"))?;
        let mut out = Vec::with_capacity(self.0.len() + RECORD_HEAD + value.len());
        let mut placed = false;
        for (k, v) in self.iter() {
            if k == kind {
                continue;
            }
            if k > kind && !placed {
                push_record(&mut out, kind, len, value);
                placed = true;
            }
            push_record(&mut out, k, v.len() as u16, v);
        }
        if !placed {
            push_record(&mut out, kind, len, value);
        }
        if out.len() > Self::MAX_LEN {
            return Err(invalid("extension area would exceed 4096 bytes"));
        }
        Ok(Self(Bytes::from(out)))
    }

    /// The stored `ETag`.
    pub fn etag(&self) -> Option<&[u8]> {
        self.get(Self::ETAG)
    }

    /// The stored `Last-Modified`.
    pub fn last_modified(&self) -> Option<Timestamp> {
        let v = self.get(Self::LAST_MODIFIED)?;
        Some(Timestamp::from_millis(u64::from_le_bytes(
            v.try_into().ok()?,
        )))
    }
}

impl std::fmt::Debug for Extensions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(k, v)| (k, v.len())))
            .finish()
    }
}

fn push_record(out: &mut Vec<u8>, kind: u8, len: u16, value: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(value);
}

fn check_known(kind: u8, value: &[u8]) -> Result<(), DecodeError> {
    let wrong = |what| Err(DecodeError::Inconsistent(what));
    match kind {
        Extensions::LAST_MODIFIED if value.len() != 8 => wrong("last_modified is not 8 bytes"),
        Extensions::HTTP_STATUS if value.len() != 2 => wrong("http_status is not 2 bytes"),
        Extensions::ETAG | Extensions::LAST_MODIFIED | Extensions::HTTP_STATUS => Ok(()),
        Extensions::HTTP_HEADERS => check_header_pairs(value),
        k if k >= Extensions::CRITICAL => Err(DecodeError::UnsupportedExtension(k)),
        _ => Ok(()),
    }
}

fn check_header_pairs(mut value: &[u8]) -> Result<(), DecodeError> {
    let take = |v: &mut &[u8]| -> Option<()> {
        let len = usize::from(u16::from_le_bytes(v.get(..2)?.try_into().ok()?));
        *v = v.get(2 + len..)?;
        Some(())
    };
    while !value.is_empty() {
        take(&mut value)
            .and_then(|()| take(&mut value))
            .ok_or(DecodeError::Inconsistent("malformed http_headers record"))?;
    }
    Ok(())
}

/// Walks records without trusting their lengths.
struct Records<'a>(&'a [u8]);

impl<'a> Iterator for Records<'a> {
    type Item = Result<(u8, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let parsed = (|| {
            let kind = *self.0.first()?;
            let len = usize::from(u16::from_le_bytes(self.0.get(1..3)?.try_into().ok()?));
            let value = self.0.get(RECORD_HEAD..RECORD_HEAD + len)?;
            Some((kind, value, RECORD_HEAD + len))
        })();
        if let Some((kind, value, used)) = parsed {
            self.0 = &self.0[used..];
            Some(Ok((kind, value)))
        } else {
            self.0 = &[];
            Some(Err(DecodeError::Inconsistent("truncated extension record")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_stay_sorted_and_replace_their_type() {
        let ext = Extensions::empty()
            .with(Extensions::HTTP_STATUS, &200u16.to_le_bytes())
            .unwrap()
            .with(Extensions::ETAG, b"\"v1\"")
            .unwrap()
            .with(Extensions::ETAG, b"\"v2\"")
            .unwrap();
        let kinds: Vec<u8> = ext.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [Extensions::ETAG, Extensions::HTTP_STATUS]);
        assert_eq!(ext.etag(), Some(&b"\"v2\""[..]));
        assert_eq!(
            Extensions::parse(Bytes::copy_from_slice(ext.as_bytes())),
            Ok(ext)
        );
    }

    #[test]
    fn malformed_areas_are_refused() {
        let cases: [&[u8]; 6] = [
            &[0x01, 5, 0, b'a'],                   // length past the end
            &[0x00, 0, 0],                         // type 0
            &[0x03, 2, 0, 1, 0, 0x01, 1, 0, b'x'], // out of order
            &[0x01, 1, 0, b'a', 0x01, 1, 0, b'b'], // repeated
            &[0x02, 1, 0, 7],                      // last_modified of 1 byte
            &[0x04, 3, 0, 1, 0, b'a'],             // header name without value
        ];
        for bytes in cases {
            assert!(
                Extensions::parse(Bytes::copy_from_slice(bytes)).is_err(),
                "{bytes:?} accepted"
            );
        }
        assert_eq!(
            Extensions::parse(Bytes::from_static(&[0x90, 0, 0])),
            Err(DecodeError::UnsupportedExtension(0x90))
        );
        // An unknown type below the critical range is skipped, and kept.
        let kept = Extensions::parse(Bytes::from_static(&[0x21, 1, 0, 9])).unwrap();
        assert_eq!(kept.get(0x21), Some(&[9u8][..]));
        assert!(Extensions::parse(Bytes::from(vec![0x21; Extensions::MAX_LEN + 1])).is_err());
    }

    #[test]
    fn the_area_is_bounded_when_built() {
        let big = vec![b'x'; 3000];
        let ext = Extensions::empty().with(0x10, &big).unwrap();
        assert!(ext.with(0x11, &big).is_err());
        assert!(
            Extensions::empty()
                .with(Extensions::HTTP_STATUS, b"x")
                .is_err()
        );
        assert!(Extensions::empty().with(0, b"x").is_err());
    }

    /// One record of an unknown, skippable type whose area is `total` bytes.
    fn area_of(total: usize) -> Vec<u8> {
        let len = total - RECORD_HEAD;
        let mut out = vec![0x10];
        out.extend_from_slice(&u16::try_from(len).unwrap().to_le_bytes());
        out.resize(total, b'v');
        out
    }

    #[test]
    fn the_area_may_fill_max_len_exactly() {
        let full = area_of(Extensions::MAX_LEN);
        assert_eq!(
            Extensions::parse(Bytes::from(full.clone())).unwrap().len(),
            4096
        );
        let over = area_of(Extensions::MAX_LEN + 1);
        assert!(Extensions::parse(Bytes::from(over)).is_err());
        // Built record by record: up to the limit, not past it.
        let value = vec![b'v'; Extensions::MAX_LEN - RECORD_HEAD];
        let built = Extensions::empty().with(0x10, &value).unwrap();
        assert_eq!(built.as_bytes(), full.as_slice());
        let err = Extensions::empty()
            .with(0x10, &[value.as_slice(), b"v"].concat())
            .unwrap_err();
        assert!(err.to_string().contains("4096"), "{err}");
    }

    #[test]
    fn with_keeps_records_sorted_and_replaces_its_own_type() {
        let ext = Extensions::empty()
            .with(Extensions::HTTP_STATUS, &200u16.to_le_bytes())
            .unwrap()
            .with(Extensions::ETAG, b"\"a\"")
            .unwrap()
            .with(0x10, b"skippable")
            .unwrap()
            .with(Extensions::LAST_MODIFIED, &1_000u64.to_le_bytes())
            .unwrap()
            .with(Extensions::ETAG, b"\"b\"")
            .unwrap();
        let kinds: Vec<u8> = ext.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [0x01, 0x02, 0x03, 0x10]);
        assert_eq!(ext.etag(), Some(b"\"b\"".as_slice()));
        assert_eq!(ext.last_modified(), Some(Timestamp::from_millis(1_000)));
        assert_eq!(
            Extensions::parse(Bytes::copy_from_slice(ext.as_bytes())).unwrap(),
            ext
        );
        assert!(!ext.is_empty() && Extensions::empty().is_empty());
        assert_eq!(format!("{ext:?}"), "{1: 3, 2: 8, 3: 2, 16: 9}");
        assert_eq!(Extensions::empty().last_modified(), None);
    }

    fn header_pairs(pairs: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in pairs {
            for part in [name, value] {
                out.extend_from_slice(&u16::try_from(part.len()).unwrap().to_le_bytes());
                out.extend_from_slice(part.as_bytes());
            }
        }
        out
    }

    #[test]
    fn http_header_records_are_walked_pair_by_pair() {
        let good = header_pairs(&[("content-type", "application/json"), ("via", "1.1 a")]);
        let ext = Extensions::empty()
            .with(Extensions::HTTP_HEADERS, &good)
            .unwrap();
        assert_eq!(ext.get(Extensions::HTTP_HEADERS), Some(good.as_slice()));
        // A name without its value, and a length past the end.
        for bad in [
            header_pairs(&[("via", "x")])[..6].to_vec(),
            [good.as_slice(), &[9, 0, b'a']].concat(),
        ] {
            assert!(
                Extensions::empty()
                    .with(Extensions::HTTP_HEADERS, &bad)
                    .is_err()
            );
        }
    }
}
