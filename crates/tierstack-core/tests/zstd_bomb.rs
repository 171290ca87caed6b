//! A compressed body that inflates far past the cap is rejected without
//! allocating past the cap. The allocator counts every byte this test binary
//! allocates, so the assertion is on real allocations, not on a code path.

use std::alloc::System;

use bytes::Bytes;
use cap::Cap;
use tierstack_core::{
    Codec, CompressionKind, DecodeError, DecodeLimits, Dictionaries, Entry, EntryMeta, Key,
    Timestamp,
};

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

const CAP: u32 = 1024 * 1024;
const BOMB_LEN: usize = 512 * 1024 * 1024;

fn bomb_frame() -> Vec<u8> {
    // Compress in a streaming way so that building the bomb does not itself
    // need half a gigabyte.
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..BOMB_LEN / zeros.len() {
        std::io::Write::write_all(&mut encoder, &zeros).unwrap();
    }
    encoder.finish().unwrap()
}

fn entry_claiming(raw_len: u32, body: Vec<u8>) -> Bytes {
    let meta = EntryMeta::new(&Key::bare("bomb"), 1, Timestamp::from_millis(0));
    let entry = Entry::from_body(
        meta,
        Codec::MsgPack,
        CompressionKind::Zstd,
        0,
        raw_len,
        Bytes::from(body),
    );
    Bytes::from(entry.to_vec())
}

#[test]
fn zstd_bomb_is_rejected_without_allocating_past_the_cap() {
    let frame = bomb_frame();
    assert!(
        frame.len() < 64 * 1024,
        "bomb frame is {} bytes",
        frame.len()
    );
    let limits = DecodeLimits { max_raw_len: CAP };

    // The header lies: it claims a body within the cap.
    let lying = entry_claiming(CAP, frame.clone());
    // The header is honest: it claims the real size, above the cap.
    let honest = entry_claiming(u32::MAX, frame);

    // From here on, any allocation past the cap plus room for zstd's
    // decompression context fails, which aborts the test binary.
    let budget = CAP as usize + 8 * 1024 * 1024;
    ALLOCATOR
        .set_limit(ALLOCATOR.allocated() + budget)
        .expect("limit above current use");
    let lying_entry = Entry::from_bytes(lying, limits).expect("header is valid");
    let lying_result = lying_entry.decode_value::<Vec<u8>>(limits, &Dictionaries::default());
    let honest_result = Entry::from_bytes(honest, limits);
    ALLOCATOR.set_limit(usize::MAX).expect("unlimited");

    let err = lying_result.unwrap_err();
    assert!(matches!(err, DecodeError::Decompress(_)), "{err:?}");
    let err = honest_result.unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }), "{err:?}");
}
