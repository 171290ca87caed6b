//! Codecs turn values into body bytes and back. The codec id is stored in
//! every entry header, so a reader decodes with the codec the writer used,
//! whatever its own default is.
//!
//! Codecs are a closed set of built-ins chosen at run time (from code or a
//! config file) rather than a trait object: serde's generic methods are not
//! object safe, and an erased-serde layer would cost every field a virtual
//! call. See `docs/decisions/0001-codec-default.md`.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::envelope::{DecodeError, EncodeError};

/// A body codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// MessagePack with named fields (rmp-serde `to_vec_named`): compact,
    /// self-describing, tolerant of added and removed optional fields. Default.
    #[default]
    #[serde(alias = "messagepack")]
    MsgPack,
    /// JSON (serde_json): human-readable, the SQLite tier can store it in a
    /// column that `sqlite3`'s JSON functions read.
    Json,
    /// bincode 2 (feature `bincode`): fastest, but not self-describing: adding,
    /// removing or reordering a field makes old entries undecodable (they
    /// become counted misses), so bump the schema version with every change.
    Bincode,
}

/// bincode's configuration, with an allocation limit so that a hostile length
/// prefix cannot make it allocate more than any entry may hold.
#[cfg(feature = "bincode")]
const BINCODE_LIMIT: usize = 64 * 1024 * 1024;

impl Codec {
    /// The stable id stored in entry headers.
    pub const fn id(self) -> u8 {
        match self {
            Self::MsgPack => 1,
            Self::Json => 2,
            Self::Bincode => 3,
        }
    }

    /// Looks up a header id.
    pub fn from_id(id: u8) -> Result<Self, DecodeError> {
        match id {
            1 => Ok(Self::MsgPack),
            2 => Ok(Self::Json),
            3 => Ok(Self::Bincode),
            other => Err(DecodeError::UnknownCodec(other)),
        }
    }

    /// Lower-case name, as used in config files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::MsgPack => "msgpack",
            Self::Json => "json",
            Self::Bincode => "bincode",
        }
    }

    /// Whether this build can encode and decode with the codec.
    pub const fn is_available(self) -> bool {
        match self {
            Self::MsgPack | Self::Json => true,
            Self::Bincode => cfg!(feature = "bincode"),
        }
    }

    /// Appends the encoding of `value` to `out`.
    pub fn encode<V: Serialize + ?Sized>(
        self,
        value: &V,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let fail = |message: String| EncodeError::Codec {
            codec: self.name(),
            message,
        };
        match self {
            Self::MsgPack => {
                rmp_serde::encode::write_named(out, value).map_err(|e| fail(e.to_string()))
            }
            Self::Json => serde_json::to_writer(out, value).map_err(|e| fail(e.to_string())),
            #[cfg(feature = "bincode")]
            Self::Bincode => bincode::serde::encode_into_std_write(
                value,
                out,
                bincode::config::standard().with_limit::<BINCODE_LIMIT>(),
            )
            .map(drop)
            .map_err(|e| fail(e.to_string())),
            #[cfg(not(feature = "bincode"))]
            Self::Bincode => Err(fail("compiled without the `bincode` feature".into())),
        }
    }

    /// Decodes a whole body; trailing bytes are an error.
    pub fn decode<V: DeserializeOwned>(self, bytes: &[u8]) -> Result<V, DecodeError> {
        let fail = |message: String| DecodeError::Codec {
            codec: self.name(),
            message,
        };
        match self {
            Self::MsgPack => {
                // The slice reader (as `rmp_serde::from_slice` uses) reads
                // strings in place; it does not say where it stopped, so
                // the end is checked by reading one more value: only "no
                // marker left" means the body held exactly one value.
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                let value = V::deserialize(&mut de).map_err(|e| fail(e.to_string()))?;
                match serde::de::IgnoredAny::deserialize(&mut de) {
                    Err(rmp_serde::decode::Error::InvalidMarkerRead(e))
                        if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                    {
                        Ok(value)
                    }
                    _ => Err(fail("trailing bytes after the value".to_owned())),
                }
            }
            Self::Json => serde_json::from_slice(bytes).map_err(|e| fail(e.to_string())),
            #[cfg(feature = "bincode")]
            Self::Bincode => {
                let (value, read) = bincode::serde::decode_from_slice(
                    bytes,
                    bincode::config::standard().with_limit::<BINCODE_LIMIT>(),
                )
                .map_err(|e| fail(e.to_string()))?;
                if read == bytes.len() {
                    Ok(value)
                } else {
                    Err(fail(format!("{} trailing bytes", bytes.len() - read)))
                }
            }
            #[cfg(not(feature = "bincode"))]
            Self::Bincode => Err(DecodeError::CodecUnavailable("bincode")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        asin: String,
        title: String,
        #[serde(default)]
        subtitle: Option<String>,
    }

    #[test]
    fn msgpack_refuses_anything_after_the_value() {
        let value = V1 {
            asin: "B002V1A0WE".into(),
            title: "Dune".into(),
            subtitle: None,
        };
        let mut exact = Vec::new();
        Codec::MsgPack.encode(&value, &mut exact).unwrap();
        assert_eq!(Codec::MsgPack.decode::<V1>(&exact).unwrap(), value);
        // A second whole value, a reserved marker, a marker whose data is
        // missing, and a lone positive fixint.
        let mut second = exact.clone();
        second.extend_from_slice(&exact);
        for (name, bytes) in [
            ("a second value", second),
            ("reserved marker", [exact.as_slice(), &[0xc1]].concat()),
            (
                "incomplete str8",
                [exact.as_slice(), &[0xd9, 5, b'a']].concat(),
            ),
            ("fixint", [exact.as_slice(), &[0x01]].concat()),
        ] {
            let err = Codec::MsgPack.decode::<V1>(&bytes).unwrap_err();
            assert!(err.to_string().contains("trailing"), "{name}: {err}");
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        asin: String,
        title: String,
        #[serde(default)]
        subtitle: Option<String>,
        #[serde(default)]
        narrators: Vec<String>,
    }

    fn each_codec() -> Vec<Codec> {
        [Codec::MsgPack, Codec::Json, Codec::Bincode]
            .into_iter()
            .filter(|c| c.is_available())
            .collect()
    }

    #[test]
    fn round_trip_every_codec() {
        let v = V1 {
            asin: "B002V1A0WE".into(),
            title: "Dune".into(),
            subtitle: None,
        };
        for codec in each_codec() {
            let mut out = Vec::new();
            codec.encode(&v, &mut out).unwrap();
            assert_eq!(codec.decode::<V1>(&out).unwrap(), v, "{codec:?}");
            assert!(
                codec.decode::<V1>(&out[..out.len() / 2]).is_err(),
                "{codec:?} truncated"
            );
        }
    }

    #[test]
    fn self_describing_codecs_tolerate_added_optional_fields() {
        let old = V1 {
            asin: "A".into(),
            title: "T".into(),
            subtitle: Some("S".into()),
        };
        for codec in [Codec::MsgPack, Codec::Json] {
            let mut out = Vec::new();
            codec.encode(&old, &mut out).unwrap();
            let new: V2 = codec.decode(&out).unwrap();
            assert_eq!(new.narrators, Vec::<String>::new());
            assert_eq!(new.subtitle.as_deref(), Some("S"));
        }
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        for codec in each_codec() {
            let mut out = Vec::new();
            codec.encode(&42u32, &mut out).unwrap();
            out.push(0xC0);
            assert!(codec.decode::<u32>(&out).is_err(), "{codec:?}");
        }
    }

    #[test]
    fn ids_are_stable() {
        for codec in [Codec::MsgPack, Codec::Json, Codec::Bincode] {
            assert_eq!(Codec::from_id(codec.id()).unwrap(), codec);
        }
        assert_eq!(Codec::from_id(0), Err(DecodeError::UnknownCodec(0)));
    }

    #[test]
    fn availability_follows_the_build() {
        assert!(Codec::MsgPack.is_available());
        assert!(Codec::Json.is_available());
        assert_eq!(Codec::Bincode.is_available(), cfg!(feature = "bincode"));
        // The loops above run over what is available: never over nothing.
        let expected = if cfg!(feature = "bincode") { 3 } else { 2 };
        assert_eq!(each_codec().len(), expected);
    }

    #[test]
    fn names_are_the_config_file_spellings() {
        assert_eq!(Codec::MsgPack.name(), "msgpack");
        assert_eq!(Codec::Json.name(), "json");
        assert_eq!(Codec::Bincode.name(), "bincode");
        // Errors name the codec that failed.
        let err = Codec::Json.decode::<u32>(b"{").unwrap_err();
        assert!(err.to_string().contains("json"), "{err}");
    }

    /// bincode's allocation limit is the entry cap (64 MiB): a value of a
    /// few MiB decodes, a length prefix claiming more than the cap is
    /// refused before anything that size is allocated.
    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_decodes_up_to_the_entry_cap_and_refuses_a_hostile_length() {
        let big = vec![7_u8; 3 << 20];
        let mut out = Vec::new();
        Codec::Bincode.encode(&big, &mut out).unwrap();
        assert_eq!(Codec::Bincode.decode::<Vec<u8>>(&out).unwrap(), big);
        // A varint length of 2^40 bytes (0xFD: a u64 follows), then nothing.
        let mut hostile = vec![0xFD];
        hostile.extend_from_slice(&(1_u64 << 40).to_le_bytes());
        let err = Codec::Bincode.decode::<Vec<u8>>(&hostile).unwrap_err();
        assert!(err.to_string().contains("bincode"), "{err}");
    }
}
