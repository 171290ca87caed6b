//! Body compression: none, zstd, or zstd with a trained dictionary.
//!
//! zstd contexts are expensive to create (measured 2.5–4.7× slower per call
//! than a reused one on 3 KB records), so each thread keeps its own contexts:
//! one compressor per level, one decompressor, and one of each per loaded
//! dictionary.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, DecodeLimits, EncodeError, Header};

/// How a stored body is compressed; the id is part of the entry header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompressionKind {
    /// Stored as encoded.
    None,
    /// One zstd frame.
    Zstd,
    /// One zstd frame made with the dictionary named by the header's `dict_id`.
    ZstdDict,
}

impl CompressionKind {
    /// The stable id stored in entry headers.
    pub const fn id(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Zstd => 1,
            Self::ZstdDict => 2,
        }
    }

    /// Looks up a header id.
    pub fn from_id(id: u8) -> Result<Self, DecodeError> {
        match id {
            0 => Ok(Self::None),
            1 => Ok(Self::Zstd),
            2 => Ok(Self::ZstdDict),
            other => Err(DecodeError::UnknownCompression(other)),
        }
    }

    /// Lower-case name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Zstd => "zstd",
            Self::ZstdDict => "zstd_dict",
        }
    }
}

/// A trained zstd dictionary with its id.
#[derive(Clone, PartialEq, Eq)]
pub struct Dictionary {
    id: u32,
    bytes: Arc<[u8]>,
}

impl Dictionary {
    /// Wraps dictionary bytes (as produced by `zstd --train` or
    /// `tierstack dict train`). The id is derived from the content, so the
    /// same dictionary has the same id on every host.
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        let bytes = bytes.into();
        let id = (xxhash_rust::xxh3::xxh3_64(&bytes) as u32).max(1);
        Self { id, bytes }
    }

    /// Trains a dictionary from sample bodies.
    pub fn train(samples: &[impl AsRef<[u8]>], max_size: usize) -> std::io::Result<Self> {
        let dict = zstd::dict::from_samples(samples, max_size)?;
        Ok(Self::new(dict))
    }

    /// The id stored in entry headers.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The dictionary bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

impl fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &format_args!("{:#010x}", self.id))
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// The dictionaries a reader knows, by id.
#[derive(Debug, Clone, Default)]
pub struct Dictionaries(HashMap<u32, Dictionary>);

impl Dictionaries {
    /// Adds a dictionary.
    pub fn insert(&mut self, dictionary: Dictionary) {
        self.0.insert(dictionary.id(), dictionary);
    }

    /// Looks up a dictionary.
    pub fn get(&self, id: u32) -> Option<&Dictionary> {
        self.0.get(&id)
    }
}

/// Writer-side compression policy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// Store bodies as encoded.
    None,
    /// zstd at `level` for bodies of at least `min_size` bytes.
    Zstd {
        /// zstd level (1–22; 3 is zstd's default).
        level: i32,
        /// Smaller bodies are stored uncompressed.
        min_size: usize,
    },
    /// zstd with a dictionary, for many small similar records.
    ZstdDict {
        /// zstd level.
        level: i32,
        /// Smaller bodies are stored uncompressed.
        min_size: usize,
        /// The dictionary.
        dictionary: Dictionary,
    },
}

impl Default for Compression {
    /// zstd level 3 for bodies of 1 KiB and more.
    fn default() -> Self {
        Self::Zstd {
            level: 3,
            min_size: 1024,
        }
    }
}

thread_local! {
    static COMPRESSORS: RefCell<HashMap<(u32, i32), zstd::bulk::Compressor<'static>>> =
        RefCell::new(HashMap::new());
    static DECOMPRESSORS: RefCell<HashMap<u32, zstd::bulk::Decompressor<'static>>> =
        RefCell::new(HashMap::new());
}

impl Compression {
    /// Compresses an encoded body, returning the kind, dictionary id and body.
    /// Bodies that do not shrink are stored uncompressed.
    pub fn compress(&self, raw: Vec<u8>) -> Result<(CompressionKind, u32, Bytes), EncodeError> {
        let (level, min_size, dictionary) = match self {
            Self::None => return Ok((CompressionKind::None, 0, Bytes::from(raw))),
            Self::Zstd { level, min_size } => (*level, *min_size, None),
            Self::ZstdDict {
                level,
                min_size,
                dictionary,
            } => (*level, *min_size, Some(dictionary)),
        };
        if raw.len() < min_size {
            return Ok((CompressionKind::None, 0, Bytes::from(raw)));
        }
        let dict_id = dictionary.map_or(0, Dictionary::id);
        let compressed = COMPRESSORS.with(|cell| -> std::io::Result<Vec<u8>> {
            let mut map = cell.borrow_mut();
            let ctx = match map.entry((dict_id, level)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(match dictionary {
                    Some(d) => zstd::bulk::Compressor::with_dictionary(level, d.bytes())?,
                    None => zstd::bulk::Compressor::new(level)?,
                }),
            };
            let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()));
            ctx.compress_to_buffer(&raw, &mut out)?;
            Ok(out)
        });
        let compressed = compressed.map_err(|e| EncodeError::Compress(e.to_string()))?;
        if compressed.len() >= raw.len() {
            return Ok((CompressionKind::None, 0, Bytes::from(raw)));
        }
        let kind = if dictionary.is_some() {
            CompressionKind::ZstdDict
        } else {
            CompressionKind::Zstd
        };
        Ok((kind, dict_id, Bytes::from(compressed)))
    }
}

/// Decompresses a verified body. The output buffer is exactly the header's
/// raw length (already checked against the cap), so a frame that inflates
/// further fails instead of allocating.
pub(crate) fn decompress<'a>(
    header: &Header,
    body: &'a [u8],
    limits: DecodeLimits,
    dictionaries: &Dictionaries,
) -> Result<Cow<'a, [u8]>, DecodeError> {
    if header.raw_len > limits.max_raw_len {
        return Err(DecodeError::TooLarge {
            raw_len: u64::from(header.raw_len),
            max: limits.max_raw_len,
        });
    }
    let dictionary = match header.compression {
        CompressionKind::None => return Ok(Cow::Borrowed(body)),
        CompressionKind::Zstd => None,
        CompressionKind::ZstdDict => Some(
            dictionaries
                .get(header.dict_id)
                .ok_or(DecodeError::UnknownDictionary(header.dict_id))?,
        ),
    };
    let raw_len = header.raw_len as usize;
    let out = DECOMPRESSORS.with(|cell| -> std::io::Result<Vec<u8>> {
        let mut map = cell.borrow_mut();
        let ctx = match map.entry(header.dict_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(match dictionary {
                Some(d) => zstd::bulk::Decompressor::with_dictionary(d.bytes())?,
                None => zstd::bulk::Decompressor::new()?,
            }),
        };
        let mut out = Vec::with_capacity(raw_len);
        ctx.decompress_to_buffer(body, &mut out)?;
        Ok(out)
    });
    let out = out.map_err(|e| DecodeError::Decompress(e.to_string()))?;
    if out.len() != raw_len {
        return Err(DecodeError::Decompress(format!(
            "inflated to {} bytes, header says {raw_len}",
            out.len()
        )));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use crate::envelope::{Entry, EntryMeta};
    use crate::key::Key;
    use crate::time::Timestamp;

    fn meta() -> EntryMeta {
        EntryMeta::new(&Key::bare("test"), 1, Timestamp::from_millis(0))
    }

    #[test]
    fn zstd_round_trip_and_small_values_stay_plain() {
        let big = "metadata ".repeat(500);
        let z = Compression::default();
        let e = Entry::encode(&big, Codec::MsgPack, &z, meta(), DecodeLimits::default()).unwrap();
        assert_eq!(e.header.compression, CompressionKind::Zstd);
        assert!(e.body.len() < big.len() / 10);
        let back: String = e
            .decode_value(DecodeLimits::default(), &Dictionaries::default())
            .unwrap();
        assert_eq!(back, big);
        let small =
            Entry::encode("tiny", Codec::MsgPack, &z, meta(), DecodeLimits::default()).unwrap();
        assert_eq!(small.header.compression, CompressionKind::None);
    }

    #[test]
    fn dictionary_round_trip_and_missing_dictionary_is_a_decode_error() {
        let samples: Vec<Vec<u8>> = (0..200)
            .map(|i| {
                format!(r#"{{"asin":"B00{i:07}","title":"Book number {i}","authors":["Author {}"],"narrators":["Narrator {}"],"runtime":{}}}"#, i % 17, i % 13, i * 7)
                    .into_bytes()
            })
            .collect();
        let dictionary = Dictionary::train(&samples, 4096).unwrap();
        let policy = Compression::ZstdDict {
            level: 3,
            min_size: 0,
            dictionary: dictionary.clone(),
        };
        let record = String::from_utf8(samples[5].clone()).unwrap();
        let e = Entry::encode(
            &record,
            Codec::Json,
            &policy,
            meta(),
            DecodeLimits::default(),
        )
        .unwrap();
        assert_eq!(e.header.compression, CompressionKind::ZstdDict);
        assert_eq!(e.header.dict_id, dictionary.id());
        let mut dicts = Dictionaries::default();
        assert_eq!(
            e.decode_value::<String>(DecodeLimits::default(), &dicts)
                .unwrap_err(),
            DecodeError::UnknownDictionary(dictionary.id())
        );
        dicts.insert(dictionary);
        let back: String = e.decode_value(DecodeLimits::default(), &dicts).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn names_and_dictionary_ids_and_bytes() {
        assert_eq!(CompressionKind::None.name(), "none");
        assert_eq!(CompressionKind::Zstd.name(), "zstd");
        assert_eq!(CompressionKind::ZstdDict.name(), "zstd_dict");
        let bytes = b"a dictionary of sorts".to_vec();
        let a = Dictionary::new(bytes.clone());
        assert_eq!(a.bytes(), bytes.as_slice());
        // The id comes from the content: the same bytes give the same id on
        // every host, other bytes another id, and 0 means "no dictionary".
        assert_eq!(Dictionary::new(bytes.clone()).id(), a.id());
        let b = Dictionary::new(b"another one".to_vec());
        assert_ne!(a.id(), b.id());
        assert!(a.id() != 0 && b.id() != 0);
        let mut known = Dictionaries::default();
        known.insert(a.clone());
        assert_eq!(known.get(a.id()), Some(&a));
        assert_eq!(known.get(b.id()), None);
        let debug = format!("{a:?}");
        assert!(
            debug.contains("Dictionary") && debug.contains(&format!("len: {}", bytes.len())),
            "{debug}"
        );
    }

    #[test]
    fn min_size_is_the_smallest_body_that_is_compressed() {
        let policy = Compression::Zstd {
            level: 3,
            min_size: 1024,
        };
        let (kind, _, _) = policy.compress(vec![b'a'; 1024]).unwrap();
        assert_eq!(kind, CompressionKind::Zstd, "a body of exactly min_size");
        let (kind, _, body) = policy.compress(vec![b'a'; 1023]).unwrap();
        assert_eq!(
            kind,
            CompressionKind::None,
            "a compressible body below min_size"
        );
        assert_eq!(body.len(), 1023);
    }
}
