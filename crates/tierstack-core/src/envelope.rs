//! The versioned entry envelope: a header (76 fixed bytes, an extension
//! area, a 4-byte checksum) followed by the body.
//!
//! The byte layout is specified in `docs/entry-format.md`; keep the two in
//! step. Every stored value carries this header so that a reader can tell,
//! before it trusts a single byte of the body, whether the entry was written
//! by a compatible writer, for which key, with which codec and compression,
//! whether it is still fresh, and whether it was damaged on the way.
//!
//! Decoding never panics and never allocates more than the configured
//! [`DecodeLimits::max_raw_len`]: every malformed input becomes a
//! [`DecodeError`], which the cache turns into a counted miss.

#[cfg(test)]
mod checks;
mod extensions;
pub mod v1;

use std::any::Any;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use xxhash_rust::xxh3::xxh3_64;

pub use extensions::Extensions;

use crate::codec::Codec;
use crate::compression::{Compression, CompressionKind, Dictionaries};
use crate::key::Key;
use crate::time::Timestamp;

/// First four bytes of every entry.
pub const MAGIC: [u8; 4] = *b"TSTK";
/// The envelope format this build writes and reads.
pub const FORMAT_VERSION: u8 = 2;
/// Length of the fixed part of the header, before the extension area.
pub const FIXED_LEN: usize = 76;
/// Length of the shortest header (no extension records): the fixed part and
/// the checksum.
pub const HEADER_LEN: usize = FIXED_LEN + CHECKSUM_LEN;
/// Length of the longest header: a reader that fetches this many bytes of an
/// entry has its whole header.
pub const MAX_HEADER_LEN: usize = HEADER_LEN + Extensions::MAX_LEN;
const CHECKSUM_LEN: usize = 4;

/// A decoded value kept by tiers that can hold one (the memory tier), so
/// that a hit costs no decode. It can encode itself again, so a tier may keep
/// the value alone ([`Entry::without_body`]) and still give bytes back when
/// they are asked for ([`Entry::with_body_restored`]).
#[derive(Clone)]
pub struct Decoded {
    value: Arc<dyn Any + Send + Sync>,
    encode: EncodeErased,
}

type EncodeErased = fn(&(dyn Any + Send + Sync), Codec, &mut Vec<u8>) -> Result<(), EncodeError>;

impl Decoded {
    /// Wraps a value the cache decoded or was given.
    pub fn new<V: serde::Serialize + Send + Sync + 'static>(value: Arc<V>) -> Self {
        Self {
            value,
            encode: encode_erased::<V>,
        }
    }

    /// The value as a `V`, if it is one.
    pub fn downcast<V: Send + Sync + 'static>(&self) -> Option<Arc<V>> {
        Arc::clone(&self.value).downcast::<V>().ok()
    }

    /// Encodes the value with `codec` into `out`.
    pub fn encode(&self, codec: Codec, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        (self.encode)(&*self.value, codec, out)
    }
}

fn encode_erased<V: serde::Serialize + 'static>(
    value: &(dyn Any + Send + Sync),
    codec: Codec,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    match value.downcast_ref::<V>() {
        Some(value) => codec.encode(value, out),
        // `Decoded::new` pairs the function with its own type.
        None => Err(EncodeError::Codec {
            codec: codec.name(),
            message: "the kept value is not of the type it was kept as".into(),
        }),
    }
}

impl fmt::Debug for Decoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoded").finish_non_exhaustive()
    }
}

/// Flags stored in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct EntryFlags(u8);

impl EntryFlags {
    /// The entry records that the upstream source answered "not found".
    pub const NEGATIVE: Self = Self(1);
    /// The entry may never be served stale, only revalidated (HTTP
    /// `must-revalidate`).
    pub const MUST_REVALIDATE: Self = Self(2);
    const KNOWN: u8 = 3;

    /// No flags.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Both sets of flags.
    #[must_use]
    pub const fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }
}

/// The hash that binds an entry to its key: xxh3-64 of the key's canonical
/// text. An entry read under another key is a miss, however it got there.
///
/// The key computed it when it was made ([`Key::xxh3_64`]), so this costs a
/// field read.
pub fn key_hash(key: &Key) -> u64 {
    key.xxh3_64()
}

/// The parsed, validated fixed fields of an entry's header.
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
    /// [`key_hash`] of the key the entry was written for.
    pub key_hash: u64,
    /// When the value was produced.
    pub created_at: Timestamp,
    /// When the value stops being fresh.
    pub expires_at: Timestamp,
    /// Until when an expired value may still be served as stale (≥ `expires_at`).
    pub stale_until: Timestamp,
    /// Until when tiers keep the entry (≥ `stale_until`), so that it can be
    /// revalidated after it may no longer be served.
    pub retain_until: Timestamp,
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

impl DecodeLimits {
    /// Checks structure only: for tiers, which hand entries to a cache that
    /// applies its own cap when it decodes them.
    pub const STRUCTURE_ONLY: Self = Self {
        max_raw_len: u32::MAX,
    };
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
    /// An extension record cannot be stored.
    #[error("bad extension: {0}")]
    Extension(String),
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
    /// A critical extension record type this build does not know.
    #[error("unknown critical extension type {0:#04x}")]
    UnsupportedExtension(u8),
    /// The entry was written for another key.
    #[error("entry belongs to another key")]
    KeyMismatch,
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
            Self::UnsupportedExtension(_) => "unsupported_extension",
            Self::KeyMismatch => "key_mismatch",
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
    /// Serialises the header with its extension area and checksum.
    pub fn to_bytes(&self, extensions: &Extensions) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + extensions.len());
        self.write(extensions, &mut out);
        out
    }

    /// Appends the header with its extension area and checksum to `out`.
    pub fn write(&self, extensions: &Extensions, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT_VERSION);
        out.push(self.codec.id());
        out.push(self.compression.id());
        out.push(self.flags.bits());
        out.extend_from_slice(&self.schema_version.to_le_bytes());
        out.extend_from_slice(&self.dict_id.to_le_bytes());
        out.extend_from_slice(&self.key_hash.to_le_bytes());
        for t in [
            self.created_at,
            self.expires_at,
            self.stale_until,
            self.retain_until,
        ] {
            out.extend_from_slice(&t.as_millis().to_le_bytes());
        }
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.extend_from_slice(&self.body_len.to_le_bytes());
        out.extend_from_slice(&self.body_checksum.to_le_bytes());
        // An extension area is at most `Extensions::MAX_LEN` bytes.
        out.extend_from_slice(&(extensions.len() as u16).to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(extensions.as_bytes());
        let check = xxh3_64(&out[start..]) as u32;
        out.extend_from_slice(&check.to_le_bytes());
    }

    /// Parses and validates a header (with its extension area) from the start
    /// of `bytes`: magic, format version, checksum, known ids, field
    /// consistency, the raw-length cap. It does not look at the body.
    pub fn parse(bytes: &[u8], limits: DecodeLimits) -> Result<Self, DecodeError> {
        Self::parse_with_extensions(bytes, limits).map(|(header, _, _)| header)
    }

    /// [`Header::parse`], also giving the extension area's bytes (validated)
    /// and the header's length.
    fn parse_with_extensions(
        bytes: &[u8],
        limits: DecodeLimits,
    ) -> Result<(Self, &[u8], usize), DecodeError> {
        let Some(fixed) = bytes.get(..FIXED_LEN) else {
            // A short buffer with foreign magic is foreign, not truncated.
            let n = bytes.len().min(4);
            if bytes[..n] != MAGIC[..n] {
                return Err(DecodeError::BadMagic);
            }
            if n == 4 && bytes.len() > 4 && bytes[4] != FORMAT_VERSION {
                return Err(DecodeError::UnsupportedFormat(bytes[4]));
            }
            return Err(DecodeError::Truncated {
                len: bytes.len(),
                expected: HEADER_LEN,
            });
        };
        if fixed[0..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if fixed[4] != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedFormat(fixed[4]));
        }
        let u64_at = |at: usize| u64::from_le_bytes(array(&fixed[at..at + 8]));
        let u32_at = |at: usize| u32::from_le_bytes(array(&fixed[at..at + 4]));
        let ext_len = usize::from(u16::from_le_bytes(array(&fixed[72..74])));
        if ext_len > Extensions::MAX_LEN {
            return Err(DecodeError::Inconsistent("extension area too long"));
        }
        let head_len = HEADER_LEN + ext_len;
        let Some(head) = bytes.get(..head_len) else {
            return Err(DecodeError::Truncated {
                len: bytes.len(),
                expected: head_len,
            });
        };
        let checked = head_len - CHECKSUM_LEN;
        let stored_check = u32::from_le_bytes(array(&head[checked..]));
        if xxh3_64(&head[..checked]) as u32 != stored_check {
            return Err(DecodeError::HeaderChecksum);
        }
        if fixed[7] & !EntryFlags::KNOWN != 0 {
            return Err(DecodeError::UnknownFlags(fixed[7]));
        }
        if fixed[74..76] != [0, 0] {
            return Err(DecodeError::Inconsistent(
                "reserved header bytes are not zero",
            ));
        }
        let header = Self {
            codec: Codec::from_id(fixed[5])?,
            compression: CompressionKind::from_id(fixed[6])?,
            flags: EntryFlags(fixed[7]),
            schema_version: u32_at(8),
            dict_id: u32_at(12),
            key_hash: u64_at(16),
            created_at: Timestamp::from_millis(u64_at(24)),
            expires_at: Timestamp::from_millis(u64_at(32)),
            stale_until: Timestamp::from_millis(u64_at(40)),
            retain_until: Timestamp::from_millis(u64_at(48)),
            raw_len: u32_at(56),
            body_len: u32_at(60),
            body_checksum: u64_at(64),
        };
        header.validate(limits)?;
        let ext = &head[FIXED_LEN..checked];
        Extensions::validate(ext)?;
        Ok((header, ext, head_len))
    }

    /// The length of the header at the start of `bytes` (fixed part,
    /// extension area and checksum), read from its length field without
    /// validating anything; `None` when too few bytes are there to tell.
    pub fn declared_len(bytes: &[u8]) -> Option<usize> {
        let ext = bytes.get(72..74)?;
        Some(HEADER_LEN + usize::from(u16::from_le_bytes([ext[0], ext[1]])))
    }

    fn validate(&self, limits: DecodeLimits) -> Result<(), DecodeError> {
        if self.stale_until < self.expires_at {
            return Err(DecodeError::Inconsistent("stale_until before expires_at"));
        }
        if self.retain_until < self.stale_until {
            return Err(DecodeError::Inconsistent("retain_until before stale_until"));
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

    /// Whether the entry may still be served as stale at `now`: inside its
    /// stale window, and not marked must-revalidate.
    pub fn is_servable_stale(&self, now: Timestamp) -> bool {
        now < self.stale_until && !self.flags.contains(EntryFlags::MUST_REVALIDATE)
    }

    /// Whether tiers still keep the entry at `now` (for serving stale or for
    /// revalidation); past this it is dead.
    pub fn is_retained(&self, now: Timestamp) -> bool {
        now < self.retain_until
    }

    /// Whether the entry is bound to `key`.
    pub fn belongs_to(&self, key: &Key) -> bool {
        self.key_hash == key_hash(key)
    }

    /// A copy with a new expiry that keeps the lengths of the stale window
    /// and of the retention after it, used when a lower tier's entry is
    /// copied up into a tier with a shorter TTL.
    #[must_use]
    pub fn with_expiry(self, expires_at: Timestamp) -> Self {
        let window = self.stale_until.millis_since(self.expires_at);
        self.with_expiry_and_window(expires_at, std::time::Duration::from_millis(window))
    }

    /// A copy expiring at `expires_at`, servable as stale for `window` after,
    /// and retained as long after that as before.
    #[must_use]
    pub fn with_expiry_and_window(
        mut self,
        expires_at: Timestamp,
        window: std::time::Duration,
    ) -> Self {
        let retained = self.retain_until.millis_since(self.stale_until);
        self.expires_at = expires_at;
        self.stale_until = if expires_at.is_never() {
            expires_at
        } else {
            expires_at.saturating_add(window)
        };
        self.retain_until = if self.stale_until.is_never() {
            self.stale_until
        } else {
            Timestamp::from_millis(self.stale_until.as_millis().saturating_add(retained))
        };
        self
    }

    /// A copy kept for `retention` after its stale window (for a
    /// revalidation, not served); an entry that never goes stale is kept
    /// forever already.
    #[must_use]
    pub fn with_retention(mut self, retention: std::time::Duration) -> Self {
        self.retain_until = self.stale_until.saturating_add(retention);
        self
    }

    /// Whether the entry records that the source answered "not found".
    pub fn is_negative(&self) -> bool {
        self.flags.contains(EntryFlags::NEGATIVE)
    }
}

/// Until when a stored entry of either format must be kept (format 2's
/// `retain_until`, format 1's `stale_until`), read from its header; `None`
/// for bytes that are no valid entry header. Lets tiers expire and index
/// entries that an earlier version wrote without reading them as values.
pub fn keep_until(bytes: &[u8]) -> Option<Timestamp> {
    match Header::parse(bytes, DecodeLimits::STRUCTURE_ONLY) {
        Ok(header) => Some(header.retain_until),
        Err(DecodeError::UnsupportedFormat(1)) => v1::parse(bytes, DecodeLimits::STRUCTURE_ONLY)
            .ok()
            .map(|h| h.retain_until),
        Err(_) => None,
    }
}

fn array<const N: usize>(slice: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    out
}

/// A stored entry: header, extension records, body, and (in tiers that keep
/// one) the decoded value.
#[derive(Clone)]
pub struct Entry {
    /// The validated header.
    pub header: Header,
    /// The extension records (HTTP validators and the like).
    pub extensions: Extensions,
    /// The body exactly as stored (compressed when the header says so).
    pub body: Bytes,
    /// The decoded value, if the tier keeps one.
    pub decoded: Option<Decoded>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("header", &self.header)
            .field("extensions", &self.extensions)
            .field("body_len", &self.body.len())
            .field("decoded", &self.decoded.is_some())
            .finish()
    }
}

/// Metadata for a new entry; built with [`EntryMeta::new`] so that fields
/// added later do not break callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryMeta {
    /// [`key_hash`] of the entry's key.
    pub key_hash: u64,
    /// The application's schema version.
    pub schema_version: u32,
    /// Creation time.
    pub created_at: Timestamp,
    /// Expiry time ([`Timestamp::NEVER`] for none).
    pub expires_at: Timestamp,
    /// End of the stale window (≥ `expires_at`).
    pub stale_until: Timestamp,
    /// End of retention (≥ `stale_until`).
    pub retain_until: Timestamp,
    /// Flags.
    pub flags: EntryFlags,
}

impl EntryMeta {
    /// An entry for `key` under `schema_version`, created at `created_at`,
    /// that never expires.
    pub fn new(key: &Key, schema_version: u32, created_at: Timestamp) -> Self {
        Self {
            key_hash: key_hash(key),
            schema_version,
            created_at,
            expires_at: Timestamp::NEVER,
            stale_until: Timestamp::NEVER,
            retain_until: Timestamp::NEVER,
            flags: EntryFlags::empty(),
        }
    }

    /// Fresh until `expires_at`, servable stale until `stale_until` and kept
    /// as long (raised to `expires_at` if earlier).
    #[must_use]
    pub fn expiring(mut self, expires_at: Timestamp, stale_until: Timestamp) -> Self {
        self.expires_at = expires_at;
        self.stale_until = stale_until.max(expires_at);
        self.retain_until = self.stale_until;
        self
    }

    /// Kept until `retain_until` (raised to the end of the stale window if earlier).
    #[must_use]
    pub fn retained_until(mut self, retain_until: Timestamp) -> Self {
        self.retain_until = retain_until.max(self.stale_until);
        self
    }

    /// With `flags` set (added to those already set).
    #[must_use]
    pub fn flagged(mut self, flags: EntryFlags) -> Self {
        self.flags = self.flags.union(flags);
        self
    }
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
        let stale_until = meta.stale_until.max(meta.expires_at);
        let header = Header {
            codec,
            compression,
            flags: meta.flags,
            schema_version: meta.schema_version,
            dict_id,
            key_hash: meta.key_hash,
            created_at: meta.created_at,
            expires_at: meta.expires_at,
            stale_until,
            retain_until: meta.retain_until.max(stale_until),
            raw_len,
            body_len: body.len() as u32,
            body_checksum: xxh3_64(&body),
        };
        Self {
            header,
            extensions: Extensions::empty(),
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

    /// An entry recording that the source answered "not found": its body is
    /// the codec's encoding of nothing (`null` in JSON, `nil` in
    /// MessagePack), so that readers of the stored bytes see a valid value.
    pub fn negative(meta: EntryMeta, codec: Codec) -> Self {
        let mut body = Vec::new();
        // Every codec can encode the unit value.
        if codec.encode(&(), &mut body).is_err() {
            body.clear();
        }
        let raw_len = body.len() as u32;
        Self::from_body(
            meta.flagged(EntryFlags::NEGATIVE),
            codec,
            CompressionKind::None,
            0,
            raw_len,
            Bytes::from(body),
        )
    }

    /// A copy with `header` (same extensions, body and decoded value).
    #[must_use]
    pub fn with_header(&self, header: Header) -> Self {
        Self {
            header,
            ..self.clone()
        }
    }

    /// A copy with `extensions`.
    #[must_use]
    pub fn with_extensions(mut self, extensions: Extensions) -> Self {
        self.extensions = extensions;
        self
    }

    /// Length of the serialised header (fixed part, extensions, checksum).
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.extensions.len()
    }

    /// Length of the serialised entry, as its header declares it (also for
    /// an entry kept without its body: the encoded size stands for the
    /// value's).
    pub fn encoded_len(&self) -> usize {
        self.header_len() + self.header.body_len as usize
    }

    /// Whether the body was left out ([`Entry::without_body`]) and only the
    /// decoded value is kept.
    pub fn body_left_out(&self) -> bool {
        self.decoded.is_some() && self.body.len() != self.header.body_len as usize
    }

    /// The entry without its body, for a tier that keeps the decoded value
    /// alone (the bytes are in the lower tiers already, and the value can
    /// encode itself again). Entries without a decoded value, negative
    /// entries and entries with an empty body are returned as they are.
    #[must_use]
    pub fn without_body(self) -> Self {
        if self.decoded.is_none() || self.header.is_negative() || self.body.is_empty() {
            return self;
        }
        Self {
            body: Bytes::new(),
            ..self
        }
    }

    /// The entry with a body: as it is when it has one; else its decoded
    /// value encoded again with the header's codec, uncompressed, under a
    /// header that says so (same key binding, times, flags and extensions).
    pub fn with_body_restored(self) -> Result<Self, EncodeError> {
        if !self.body_left_out() {
            return Ok(self);
        }
        let Some(decoded) = &self.decoded else {
            return Ok(self);
        };
        let mut raw = Vec::with_capacity(self.header.raw_len as usize);
        decoded.encode(self.header.codec, &mut raw)?;
        let body = Bytes::from(raw);
        let header = Header {
            compression: CompressionKind::None,
            dict_id: 0,
            raw_len: body.len() as u32,
            body_len: body.len() as u32,
            body_checksum: xxh3_64(&body),
            ..self.header
        };
        Ok(Self {
            header,
            body,
            ..self
        })
    }

    /// The serialised header, for tiers that store it apart from the body.
    pub fn header_bytes(&self) -> Vec<u8> {
        self.header.to_bytes(&self.extensions)
    }

    /// Serialises header and body into one buffer, for tiers that store blobs.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.header.write(&self.extensions, &mut out);
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses a serialised entry without copying the body. The body checksum
    /// is verified later by [`Entry::raw_body`], once the caller decides to
    /// use the body.
    #[allow(clippy::needless_pass_by_value)] // takes the buffer so the body can share it
    pub fn from_bytes(bytes: Bytes, limits: DecodeLimits) -> Result<Self, DecodeError> {
        let (header, _, head_len) = Header::parse_with_extensions(&bytes, limits)?;
        let expected = head_len + header.body_len as usize;
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
        // A slice of a `Bytes` made from a `Vec` (what a tier's read gives)
        // turns it into a shared buffer, one allocation; an empty slice
        // (no extensions, most entries) does not. The body keeps the
        // buffer itself, advanced past the header.
        let extensions = Extensions::trusted(bytes.slice(FIXED_LEN..head_len - CHECKSUM_LEN));
        let mut body = bytes;
        body.advance(head_len);
        Ok(Self {
            header,
            extensions,
            body,
            decoded: None,
        })
    }

    /// Rebuilds an entry from a header stored apart from its body (as the
    /// SQLite tier keeps them).
    pub fn from_parts(
        header: &[u8],
        body: Bytes,
        limits: DecodeLimits,
    ) -> Result<Self, DecodeError> {
        let (parsed, ext, head_len) = Header::parse_with_extensions(header, limits)?;
        if header.len() != head_len {
            return Err(DecodeError::TrailingBytes {
                extra: header.len().saturating_sub(head_len),
            });
        }
        let expected = parsed.body_len as usize;
        if body.len() < expected {
            return Err(DecodeError::Truncated {
                len: body.len(),
                expected,
            });
        }
        if body.len() > expected {
            return Err(DecodeError::TrailingBytes {
                extra: body.len() - expected,
            });
        }
        Ok(Self {
            header: parsed,
            extensions: Extensions::trusted(Bytes::copy_from_slice(ext)),
            body,
            decoded: None,
        })
    }

    /// Fails with [`DecodeError::KeyMismatch`] unless the entry was written
    /// for `key`.
    pub fn check_key(&self, key: &Key) -> Result<(), DecodeError> {
        if self.header.belongs_to(key) {
            Ok(())
        } else {
            Err(DecodeError::KeyMismatch)
        }
    }

    /// Verifies the body checksum and returns the uncompressed body (for an
    /// entry kept without its body, its value encoded again).
    pub fn raw_body(
        &self,
        limits: DecodeLimits,
        dictionaries: &Dictionaries,
    ) -> Result<Cow<'_, [u8]>, DecodeError> {
        if let (true, Some(decoded)) = (self.body_left_out(), &self.decoded) {
            let mut raw = Vec::with_capacity(self.header.raw_len as usize);
            decoded
                .encode(self.header.codec, &mut raw)
                .map_err(|e| DecodeError::Codec {
                    codec: self.header.codec.name(),
                    message: format!("the kept value could not be encoded again: {e}"),
                })?;
            return Ok(Cow::Owned(raw));
        }
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

    #[test]
    fn an_entry_kept_without_its_body_gives_an_equal_value_back() {
        let value: Vec<String> = (0..50).map(|i| format!("item {i}")).collect();
        let key = Key::bare("kept");
        let meta = EntryMeta::new(&key, 1, Timestamp::from_millis(1_000))
            .expiring(Timestamp::from_millis(2_000), Timestamp::from_millis(3_000));
        let mut entry = Entry::encode(
            &value,
            Codec::MsgPack,
            &Compression::Zstd {
                level: 3,
                min_size: 0,
            },
            meta,
            DecodeLimits::default(),
        )
        .expect("encodes");
        assert_eq!(entry.header.compression, CompressionKind::Zstd);
        entry.decoded = Some(Decoded::new(Arc::new(value.clone())));
        let kept = entry.clone().without_body();
        assert!(kept.body.is_empty() && kept.body_left_out());
        assert_eq!(kept.encoded_len(), entry.encoded_len(), "sized as written");
        let limits = DecodeLimits::default();
        let dictionaries = Dictionaries::default();
        assert_eq!(
            kept.decode_value::<Vec<String>>(limits, &dictionaries)
                .expect("decodes"),
            value
        );
        let restored = kept.with_body_restored().expect("encodes again");
        assert!(!restored.body_left_out());
        assert_eq!(restored.header.compression, CompressionKind::None);
        assert!(restored.header.belongs_to(&key));
        assert_eq!(restored.header.expires_at, entry.header.expires_at);
        let bytes = Bytes::from(restored.to_vec());
        let parsed = Entry::from_bytes(bytes, limits).expect("a whole entry");
        assert_eq!(
            parsed
                .decode_value::<Vec<String>>(limits, &dictionaries)
                .expect("decodes"),
            value
        );
    }

    #[test]
    fn entries_without_a_value_and_negative_entries_keep_their_bytes() {
        let plain = sample(40);
        assert_eq!(plain.clone().without_body().body, plain.body);
        let meta = EntryMeta::new(&Key::bare("gone"), 1, Timestamp::from_millis(1));
        let mut negative = Entry::negative(meta, Codec::Json);
        negative.decoded = Some(Decoded::new(Arc::new(())));
        assert_eq!(negative.clone().without_body().body, negative.body);
    }

    fn sample(len: usize) -> Entry {
        let value: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let meta = EntryMeta::new(&Key::bare("test"), 3, Timestamp::from_millis(1_000))
            .expiring(Timestamp::from_millis(2_000), Timestamp::from_millis(3_000));
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
    fn with_expiry_keeps_the_stale_window_and_the_retention() {
        let mut header = sample(1).header;
        header.retain_until = Timestamp::from_millis(5_000);
        let h = header.with_expiry(Timestamp::from_millis(10_000));
        assert_eq!(h.expires_at.as_millis(), 10_000);
        assert_eq!(h.stale_until.as_millis(), 11_000);
        assert_eq!(h.retain_until.as_millis(), 13_000);
        let never = header.with_expiry(Timestamp::NEVER);
        assert!(never.stale_until.is_never() && never.retain_until.is_never());
    }

    #[test]
    fn an_entry_is_bound_to_its_key() {
        let entry = sample(10);
        assert_eq!(entry.check_key(&Key::bare("test")), Ok(()));
        assert_eq!(
            entry.check_key(&Key::bare("other")),
            Err(DecodeError::KeyMismatch)
        );
    }

    #[test]
    fn extensions_round_trip_and_are_checksummed() {
        let entry = sample(10).with_extensions(
            Extensions::empty()
                .with(Extensions::ETAG, b"\"abc\"")
                .unwrap(),
        );
        let bytes = entry.to_vec();
        assert_eq!(bytes.len(), HEADER_LEN + 3 + 5 + entry.body.len());
        let back = Entry::from_bytes(Bytes::from(bytes.clone()), DecodeLimits::default()).unwrap();
        assert_eq!(back.extensions.etag(), Some(&b"\"abc\""[..]));
        let mut damaged = bytes;
        damaged[FIXED_LEN + 4] ^= 1;
        assert_eq!(
            Entry::from_bytes(Bytes::from(damaged), DecodeLimits::default()).unwrap_err(),
            DecodeError::HeaderChecksum
        );
    }

    #[test]
    fn must_revalidate_is_never_servable_stale() {
        let mut header = sample(1).header;
        let inside = Timestamp::from_millis(2_500);
        assert!(header.is_servable_stale(inside));
        header.flags = header.flags.union(EntryFlags::MUST_REVALIDATE);
        assert!(!header.is_servable_stale(inside));
        assert!(header.is_retained(inside));
        assert!(!header.is_retained(Timestamp::from_millis(3_000)));
    }

    #[test]
    fn retention_runs_from_the_end_of_the_stale_window() {
        let header = sample(1).header;
        let kept = header.with_retention(std::time::Duration::from_millis(500));
        assert_eq!(
            kept.retain_until.as_millis(),
            header.stale_until.as_millis() + 500
        );
        assert_eq!(kept.stale_until, header.stale_until);
        // A later change of expiry keeps the retention's length.
        let moved = kept.with_expiry(Timestamp::from_millis(10_000));
        assert_eq!(moved.retain_until.millis_since(moved.stale_until), 500);
        let mut forever = header;
        forever.stale_until = Timestamp::NEVER;
        assert!(
            forever
                .with_retention(std::time::Duration::from_secs(1))
                .retain_until
                .is_never()
        );
    }

    #[test]
    fn negative_entries_hold_a_valid_nothing() {
        let meta = EntryMeta::new(&Key::bare("test"), 1, Timestamp::from_millis(1));
        let json = Entry::negative(meta, Codec::Json);
        assert_eq!(&json.body[..], b"null");
        assert!(json.header.is_negative());
        let msgpack = Entry::negative(meta, Codec::MsgPack);
        assert_eq!(&msgpack.body[..], [0xc0]);
    }

    #[test]
    fn header_parses_from_stored_parts() {
        let entry = sample(20);
        let back = Entry::from_parts(
            &entry.header_bytes(),
            entry.body.clone(),
            DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(back.header, entry.header);
        let mut longer = entry.header_bytes();
        longer.push(0);
        assert!(Entry::from_parts(&longer, entry.body.clone(), DecodeLimits::default()).is_err());
        assert!(
            Entry::from_parts(
                &entry.header_bytes(),
                entry.body.slice(1..),
                DecodeLimits::default()
            )
            .is_err()
        );
    }
}
