//! Feeds arbitrary bytes to the entry decoder: it must return an error or a
//! value, never panic, hang or allocate past the cap.
//!
//! Random bytes almost never carry valid checksums, which would keep the
//! fuzzer in the header parser. When the first input byte is odd, the target
//! writes correct checksums into the remaining bytes first (with an
//! extension area of the length the second byte says), so that the
//! extension parser, decompression and the codecs see hostile input too.
//! Every input also goes through the format-1 upgrade path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tierstack_core::envelope::{FIXED_LEN, HEADER_LEN, v1};
use tierstack_core::{Bytes, DecodeLimits, Dictionaries, Dictionary, Entry, Key};
use xxhash_rust::xxh3::xxh3_64;

fn reseal(bytes: &mut [u8], ext_len: usize) {
    let head = HEADER_LEN + ext_len;
    if bytes.len() < head {
        return;
    }
    bytes[0..4].copy_from_slice(b"TSTK");
    bytes[4] = 2;
    bytes[72..74].copy_from_slice(&(ext_len as u16).to_le_bytes());
    bytes[74..76].copy_from_slice(&[0, 0]);
    let body_len = (bytes.len() - head) as u32;
    bytes[60..64].copy_from_slice(&body_len.to_le_bytes());
    let body_check = xxh3_64(&bytes[head..]);
    bytes[64..72].copy_from_slice(&body_check.to_le_bytes());
    let checked = FIXED_LEN + ext_len;
    let header_check = xxh3_64(&bytes[..checked]) as u32;
    bytes[checked..head].copy_from_slice(&header_check.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let [mode, ext, rest @ ..] = data else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        reseal(&mut bytes, usize::from(*ext) * usize::from(mode >> 1 & 1));
    }
    let limits = DecodeLimits { max_raw_len: 1 << 20 };
    let mut dictionaries = Dictionaries::default();
    dictionaries.insert(Dictionary::new(&b"tierstack fuzz dictionary"[..]));
    let _ = v1::upgrade(&bytes, &Key::bare("fuzz"), limits);
    if let Ok(entry) = Entry::from_bytes(Bytes::from(bytes), limits) {
        let _ = entry.decode_value::<serde_json::Value>(limits, &dictionaries);
        let _ = entry.decode_value::<Vec<String>>(limits, &dictionaries);
    }
});
