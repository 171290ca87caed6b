//! Feeds arbitrary bytes to the entry decoder: it must return an error or a
//! value, never panic, hang or allocate past the cap.
//!
//! Random bytes almost never carry valid checksums, which would keep the
//! fuzzer in the header parser. When the first input byte is odd, the target
//! writes correct checksums into the remaining bytes first, so that
//! decompression and the codecs see hostile bodies too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tierstack_core::envelope::HEADER_LEN;
use tierstack_core::{Bytes, DecodeLimits, Dictionaries, Dictionary, Entry};
use xxhash_rust::xxh3::xxh3_64;

fn reseal(bytes: &mut [u8]) {
    if bytes.len() < HEADER_LEN {
        return;
    }
    bytes[0..4].copy_from_slice(b"TSTK");
    bytes[4] = 1;
    let body_len = (bytes.len() - HEADER_LEN) as u32;
    bytes[44..48].copy_from_slice(&body_len.to_le_bytes());
    let body_check = xxh3_64(&bytes[HEADER_LEN..]);
    bytes[48..56].copy_from_slice(&body_check.to_le_bytes());
    let header_check = xxh3_64(&bytes[..56]) as u32;
    bytes[56..60].copy_from_slice(&header_check.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    if mode & 1 == 1 {
        reseal(&mut bytes);
    }
    let limits = DecodeLimits { max_raw_len: 1 << 20 };
    let mut dictionaries = Dictionaries::default();
    dictionaries.insert(Dictionary::new(&b"tierstack fuzz dictionary"[..]));
    if let Ok(entry) = Entry::from_bytes(Bytes::from(bytes), limits) {
        let _ = entry.decode_value::<serde_json::Value>(limits, &dictionaries);
        let _ = entry.decode_value::<Vec<String>>(limits, &dictionaries);
    }
});
