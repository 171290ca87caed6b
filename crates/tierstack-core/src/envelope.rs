//! The versioned entry envelope: a fixed 60-byte header followed by the body.
//!
//! The byte layout is specified in `docs/entry-format.md`; keep the two in
//! step. Every stored value carries this header so that a reader can tell,
//! before it trusts a single byte of the body, whether the entry was written
//! by a compatible writer, with which codec and compression, whether it is
//! still fresh, and whether it was damaged on the way.
//!
//! Decoding never panics and never allocates more than the configured
//! [`DecodeLimits::max_raw_len`]: every malformed input becomes a
//! [`DecodeError`], which the cache turns into a counted miss.

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use crate::codec::Codec;
use crate::compression::{Compression, CompressionKind, Dictionaries};
use crate::time::Timestamp;

/// First four bytes of every entry.
pub const MAGIC: [u8; 4] = *b"TSTK";
/// The envelope format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the fixed header in bytes.
pub const HEADER_LEN: usize = 60;
/// Byte range covered by the header checksum.
const HEADER_CHECKED: usize = 56;

/// A decoded value kept next to the bytes by tiers that can hold one (the
/// memory tier), so that a hit costs no decode.
pub type Decoded = Arc<dyn Any + Send + Sync>;

/// Flags stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct EntryFlags(u8);

impl EntryFlags {
    /// The entry records that the upstream source answered "not found".
    pub const NEGATIVE: Self = Self(1);
    const KNOWN: u8 = 1;

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// The parsed, validated header of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Codec that produced the (uncompressed) body.
    pub codec: Codec,
    /// How the body is compressed.
    pub compression: CompressionKind,
    /// Entry flags.
    pub flags: EntryFlags,
    /// The application's schema version at write time.
    pub schema_version: u32,
    /// Identifier of the zstd dictionary, `0` when none is used.
    pub dict_id: u32,
    /// When the value was produced.
    pub created_at: Timestamp,
    /// When the value stops being fresh.
    pub expires_at: Timestamp,
    /// Until when an expired value may still be served as stale (≥ `expires_at`).
    pub stale_until: Timestamp,
    /// Length of the body after decompression.
    pub raw_len: u32,
    /// Length of the stored body.
    pub body_len: u32,
    /// xxh3-64 of the stored body.
    pub body_checksum: u64,
}

/// Limits applied while decoding untrusted bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted uncompressed body; larger entries are rejected before
    /// any allocation.
    pub max_raw_len: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_raw_len: 64 * 1024 * 1024,
        }
    }
}

/// Why a value could not be encoded into an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The codec cannot represent the value (for example a map with non-string
    /// keys in JSON).
    #[error("codec {codec} could not encode the value: {message}")]
    Codec {
        /// Codec name.
        codec: &'static str,
        /// The codec's message.
        message: String,
    },
    /// The encoded value is larger than readers accept.
    #[error("encoded value is {len} bytes, the cap is {max}")]
    TooLarge {
        /// Encoded length.
        len: usize,
        /// Configured maximum.
        max: u32,
    },
    /// The compressor failed.
    #[error("compression failed: {0}")]
    Compress(String),
}

/// Why stored bytes could not be turned into a value. Every variant is a
/// counted miss for the cache, never an error for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than the header or the declared body.
    #[error("entry truncated: {len} bytes, expected {expected}")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes the header requires.
        expected: usize,
    },
    /// More bytes than the header declares.
    #[error("entry has {extra} trailing bytes")]
    TrailingBytes {
        /// Bytes after the declared body.
        extra: usize,
    },
    /// Not a tierstack entry.
    #[error("bad magic bytes (not a tierstack entry)")]
    BadMagic,
    /// Written by a newer (or unknown) envelope format.
    #[error("unsupported envelope format version {0}")]
    UnsupportedFormat(u8),
    /// The header checksum does not match.
    #[error("header checksum mismatch")]
    HeaderChecksum,
    /// The body checksum does not match.
    #[error("body checksum mismatch")]
    BodyChecksum,
    /// Flag bits this build does not know.
    #[error("unknown flag bits {0:#04x}")]
    UnknownFlags(u8),
    /// A codec id this build does not know.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// A known codec that this build was compiled without.
    #[error("codec {0} is not compiled into this build")]
    CodecUnavailable(&'static str),
    /// A compression id this build does not know.
    #[error("unknown compression id {0}")]
    UnknownCompression(u8),
    /// The body needs a zstd dictionary that is not loaded.
    #[error("zstd dictionary {0:#010x} is not loaded")]
    UnknownDictionary(u32),
    /// Header fields contradict each other.
    #[error("inconsistent header: {0}")]
    Inconsistent(&'static str),
    /// The uncompressed body would exceed the configured cap.
    #[error("raw length {raw_len} exceeds the cap of {max}")]
    TooLarge {
        /// Declared raw length.
        raw_len: u64,
        /// Configured maximum.
        max: u32,
    },
    /// Decompression failed or produced a length other than declared.
    #[error("decompression failed: {0}")]
    Decompress(String),
    /// The codec rejected the body (including a different value type).
    #[error("codec {codec} could not decode the body: {message}")]
    Codec {
        /// Codec name.
        codec: &'static str,
        /// The codec's message.
        message: String,
    },
    /// Written under another application schema version.
    #[error("schema version {found}, this reader uses {expected}")]
    SchemaMismatch {
        /// Version in the entry.
        found: u32,
        /// Version of the reader.
        expected: u32,
    },
}

impl DecodeError {
    /// A short, stable label for statistics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::BadMagic => "bad_magic",
            Self::UnsupportedFormat(_) => "unsupported_format",
            Self::HeaderChecksum => "header_checksum",
            Self::BodyChecksum => "body_checksum",
            Self::UnknownFlags(_) => "unknown_flags",
            Self::UnknownCodec(_) | Self::CodecUnavailable(_) => "unknown_codec",
            Self::UnknownCompression(_) => "unknown_compression",
            Self::UnknownDictionary(_) => "unknown_dictionary",
            Self::Inconsistent(_) => "inconsistent_header",
            Self::TooLarge { .. } => "too_large",
            Self::Decompress(_) => "decompress",
            Self::Codec { .. } => "codec",
            Self::SchemaMismatch { .. } => "schema_mismatch",
        }
    }
}

impl Header {
    /// Serialises the header, computing its checksum.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4] = FORMAT_VERSION;
        out[5] = self.codec.id();
        out[6] = self.compression.id();
        out[7] = self.flags.bits();
        out[8..12].copy_from_slice(&self.schema_version.to_le_bytes());
        out[12..16].copy_from_slice(&self.dict_id.to_le_bytes());
        out[16..24].copy_from_slice(&self.created_at.as_millis().to_le_bytes());
        out[24..32].copy_from_slice(&self.expires_at.as_millis().to_le_bytes());
        out[32..40].copy_from_slice(&self.stale_until.as_millis().to_le_bytes());
        out[40..44].copy_from_slice(&self.raw_len.to_le_bytes());
        out[44..48].copy_from_slice(&self.body_len.to_le_bytes());
        out[48..56].copy_from_slice(&self.body_checksum.to_le_bytes());
        let check = xxh3_64(&out[..HEADER_CHECKED]) as u32;
        out[56..60].copy_from_slice(&check.to_le_bytes());
        out
    }

    /// Parses and validates a header from the start of `bytes`. Checks magic,
    /// format version, header checksum, known ids, field consistency and the
    /// raw-length cap; it does not look at the body.
    pub fn parse(bytes: &[u8], limits: DecodeLimits) -> Result<Self, DecodeError> {
        let Some(head) = bytes.get(..HEADER_LEN) else {
            // A short buffer with foreign magic is foreign, not truncated.
            let n = bytes.len().min(4);
            if bytes[..n] != MAGIC[..n] {
                return Err(DecodeError::BadMagic);
            }
            return Err(DecodeError::Truncated {
                len: bytes.len(),
                expected: HEADER_LEN,
            });
        };
        if head[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if head[4] != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedFormat(head[4]));
        }
        let stored_check = u32::from_le_bytes(array(&head[56..60]));
        if xxh3_64(&head[..HEADER_CHECKED]) as u32 != stored_check {
            return Err(DecodeError::HeaderChecksum);
        }
        if head[7] & !EntryFlags::KNOWN != 0 {
            return Err(DecodeError::UnknownFlags(head[7]));
        }
        let codec = Codec::from_id(head[5])?;
        let compression = CompressionKind::from_id(head[6])?;
        let u64_at = |at: usize| u64::from_le_bytes(array(&head[at..at + 8]));
        let u32_at = |at: usize| u32::from_le_bytes(array(&head[at..at + 4]));
        let header = Self {
            codec,
            compression,
            flags: EntryFlags(head[7]),
            schema_version: u32_at(8),
            dict_id: u32_at(12),
            created_at: Timestamp::from_millis(u64_at(16)),
            expires_at: Timestamp::from_millis(u64_at(24)),
            stale_until: Timestamp::from_millis(u64_at(32)),
            raw_len: u32_at(40),
            body_len: u32_at(44),
            body_checksum: u64_at(48),
        };
        header.validate(limits)?;
        Ok(header)
    }

    fn validate(&self, limits: DecodeLimits) -> Result<(), DecodeError> {
        if self.stale_until < self.expires_at {
            return Err(DecodeError::Inconsistent("stale_until before expires_at"));
        }
        if self.raw_len > limits.max_raw_len {
            return Err(DecodeError::TooLarge {
                raw_len: u64::from(self.raw_len),
                max: limits.max_raw_len,
            });
        }
        match self.compression {
            CompressionKind::None if self.raw_len != self.body_len => Err(
                DecodeError::Inconsistent("uncompressed body length differs from raw length"),
            ),
            CompressionKind::None | CompressionKind::Zstd if self.dict_id != 0 => Err(
                DecodeError::Inconsistent("dictionary id without dictionary compression"),
            ),
            CompressionKind::ZstdDict if self.dict_id == 0 => Err(DecodeError::Inconsistent(
                "dictionary compression without id",
            )),
            _ => Ok(()),
        }
    }

    /// Whether the entry is fresh at `now`.
    pub fn is_fresh(&self, now: Timestamp) -> bool {
        now < self.expires_at
    }

    /// Whether the entry may still be served as stale at `now`.
    pub fn is_servable_stale(&self, now: Timestamp) -> bool {
        now < self.stale_until
    }

    /// A copy with a new expiry that keeps the stale window's length, used when
    /// a lower tier's entry is copied up into a tier with a shorter TTL.
    #[must_use]
    pub fn with_expiry(mut self, expires_at: Timestamp) -> Self {
        let window = self
            .stale_until
            .as_millis()
            .saturating_sub(self.expires_at.as_millis());
        self.expires_at = expires_at;
        self.stale_until = Timestamp::from_millis(expires_at.as_millis().saturating_add(window));
        self
    }
}

impl Header {
    /// A copy expiring at `expires_at`, servable as stale for `window` after.
    #[must_use]
    pub fn with_expiry_and_window(
        mut self,
        expires_at: Timestamp,
        window: std::time::Duration,
    ) -> Self {
        self.expires_at = expires_at;
        self.stale_until = if expires_at.is_never() {
            expires_at
        } else {
            expires_at.saturating_add(window)
        };
        self
    }

    /// Whether the entry records that the source answered "not found".
    pub fn is_negative(&self) -> bool {
        self.flags.contains(EntryFlags::NEGATIVE)
    }
}

fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

/// A stored entry: header, body, and (in tiers that keep one) the decoded value.
#[derive(Clone)]
pub struct Entry {
    /// The validated header.
    pub header: Header,
    /// The body exactly as stored (compressed when the header says so).
    pub body: Bytes,
    /// The decoded value, if the tier keeps one.
    pub decoded: Option<Decoded>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("header", &self.header)
            .field("body_len", &self.body.len())
            .field("decoded", &self.decoded.is_some())
            .finish()
    }
}

/// Metadata for a new entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryMeta {
    /// The application's schema version.
    pub schema_version: u32,
    /// Creation time.
    pub created_at: Timestamp,
    /// Expiry time ([`Timestamp::NEVER`] for none).
    pub expires_at: Timestamp,
    /// End of the stale window (≥ `expires_at`).
    pub stale_until: Timestamp,
    /// Flags.
    pub flags: EntryFlags,
}

impl Entry {
    /// Builds an entry from an already encoded (and possibly compressed) body.
    pub fn from_body(
        meta: EntryMeta,
        codec: Codec,
        compression: CompressionKind,
        dict_id: u32,
        raw_len: u32,
        body: Bytes,
    ) -> Self {
        let header = Header {
            codec,
            compression,
            flags: meta.flags,
            schema_version: meta.schema_version,
            dict_id,
            created_at: meta.created_at,
            expires_at: meta.expires_at,
            stale_until: meta.stale_until.max(meta.expires_at),
            raw_len,
            body_len: body.len() as u32,
            body_checksum: xxh3_64(&body),
        };
        Self {
            header,
            body,
            decoded: None,
        }
    }

    /// Encodes `value` with `codec`, compresses it as configured and builds the
    /// header. Fails only when the codec cannot represent the value or the
    /// encoded value exceeds `limits.max_raw_len` (it could never be read back).
    pub fn encode<V: serde::Serialize + ?Sized>(
        value: &V,
        codec: Codec,
        compression: &Compression,
        meta: EntryMeta,
        limits: DecodeLimits,
    ) -> Result<Self, EncodeError> {
        let mut raw = Vec::with_capacity(256);
        codec.encode(value, &mut raw)?;
        let raw_len = u32::try_from(raw.len())
            .ok()
            .filter(|&n| n <= limits.max_raw_len)
            .ok_or(EncodeError::TooLarge {
                len: raw.len(),
                max: limits.max_raw_len,
            })?;
        let (kind, dict_id, body) = compression.compress(raw)?;
        Ok(Self::from_body(meta, codec, kind, dict_id, raw_len, body))
    }

    /// Length of the serialised entry.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// Serialises header and body into one buffer, for tiers that store blobs.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses a serialised entry without copying the body. The body checksum
    /// is verified later by [`Entry::raw_body`], once the caller decides to
    /// use the body.
    #[allow(clippy::needless_pass_by_value)] // takes the buffer so the body can share it
    pub fn from_bytes(bytes: Bytes, limits: DecodeLimits) -> Result<Self, DecodeError> {
        let header = Header::parse(&bytes, limits)?;
        let expected = HEADER_LEN + header.body_len as usize;
        match bytes.len().cmp(&expected) {
            std::cmp::Ordering::Less => {
                return Err(DecodeError::Truncated {
                    len: bytes.len(),
                    expected,
                });
            }
            std::cmp::Ordering::Greater => {
                return Err(DecodeError::TrailingBytes {
                    extra: bytes.len() - expected,
                });
            }
            std::cmp::Ordering::Equal => {}
        }
        Ok(Self {
            header,
            body: bytes.slice(HEADER_LEN..),
            decoded: None,
        })
    }

    /// Verifies the body checksum and returns the uncompressed body.
    pub fn raw_body(
        &self,
        limits: DecodeLimits,
        dictionaries: &Dictionaries,
    ) -> Result<Cow<'_, [u8]>, DecodeError> {
        if self.body.len() != self.header.body_len as usize {
            return Err(DecodeError::Truncated {
                len: self.body.len(),
                expected: self.header.body_len as usize,
            });
        }
        if xxh3_64(&self.body) != self.header.body_checksum {
            return Err(DecodeError::BodyChecksum);
        }
        crate::compression::decompress(&self.header, &self.body, limits, dictionaries)
    }

    /// Verifies, decompresses and decodes the body into `V`.
    pub fn decode_value<V: serde::de::DeserializeOwned>(
        &self,
        limits: DecodeLimits,
        dictionaries: &Dictionaries,
    ) -> Result<V, DecodeError> {
        let raw = self.raw_body(limits, dictionaries)?;
        self.header.codec.decode(&raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Entry {
        let value: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let meta = EntryMeta {
            schema_version: 3,
            created_at: Timestamp::from_millis(1_000),
            expires_at: Timestamp::from_millis(2_000),
            stale_until: Timestamp::from_millis(3_000),
            flags: EntryFlags::empty(),
        };
        Entry::encode(
            &value,
            Codec::Json,
            &Compression::None,
            meta,
            DecodeLimits::default(),
        )
        .unwrap()
    }

    #[test]
    fn round_trip() {
        let entry = sample(100);
        let bytes = Bytes::from(entry.to_vec());
        let back = Entry::from_bytes(bytes, DecodeLimits::default()).unwrap();
        assert_eq!(back.header, entry.header);
        let v: Vec<u8> = back
            .decode_value(DecodeLimits::default(), &Dictionaries::default())
            .unwrap();
        assert_eq!(v.len(), 100);
    }

    #[test]
    fn truncation_and_trailing_bytes_are_errors() {
        let bytes = sample(10).to_vec();
        for cut in 0..bytes.len() {
            let r = Entry::from_bytes(
                Bytes::copy_from_slice(&bytes[..cut]),
                DecodeLimits::default(),
            );
            assert!(r.is_err(), "cut at {cut} decoded");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Entry::from_bytes(Bytes::from(longer), DecodeLimits::default()).unwrap_err(),
            DecodeError::TrailingBytes { extra: 1 }
        );
    }

    #[test]
    fn raw_length_cap_is_enforced_before_decoding() {
        let bytes = sample(1000).to_vec();
        let tight = DecodeLimits { max_raw_len: 100 };
        assert!(matches!(
            Entry::from_bytes(Bytes::from(bytes), tight),
            Err(DecodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn with_expiry_keeps_the_stale_window() {
        let h = sample(1).header.with_expiry(Timestamp::from_millis(10_000));
        assert_eq!(h.expires_at.as_millis(), 10_000);
        assert_eq!(h.stale_until.as_millis(), 11_000);
    }
}
