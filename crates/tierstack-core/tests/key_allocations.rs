//! What building a key allocates: its parameters stay on the stack up to
//! four (most keys have one to three), so a key of plain ASCII
//! parameters costs the allocations of its text alone, whether it has one
//! parameter or four; a fifth spills them to the heap.
//!
//! Counted per thread by `allocation-counter`'s global allocator.

use std::path::{Path, PathBuf};

use tierstack_core::Key;

/// Allocations `f` makes, after a first key has grown this thread's
/// rendering buffer (which later keys reuse).
fn allocations(f: impl FnOnce() -> Key) -> (Key, u64) {
    let _warm = Key::new("warm", [("up", "x".repeat(200))]);
    let mut key = None;
    let info = allocation_counter::measure(|| key = Some(f()));
    (key.expect("built"), info.count_total)
}

#[test]
fn up_to_four_parameters_stay_on_the_stack() {
    let (_, one) = allocations(|| Key::new("books", [("id", "1")]));
    let (four, four_allocations) =
        allocations(|| Key::new("books", [("d", "4"), ("c", "3"), ("b", "2"), ("a", "1")]));
    assert_eq!(four.as_str(), "books:a=1&b=2&c=3&d=4");
    assert_eq!(
        four_allocations, one,
        "four parameters allocated more than one does"
    );
    let (five, five_allocations) = allocations(|| {
        Key::new(
            "books",
            [("e", "5"), ("d", "4"), ("c", "3"), ("b", "2"), ("a", "1")],
        )
    });
    assert_eq!(five.as_str(), "books:a=1&b=2&c=3&d=4&e=5");
    assert!(
        five_allocations > one,
        "the counter must see a spill to the heap ({five_allocations} vs {one})"
    );
}

/// A key of a kilobyte or so (hashed, since it is over 512 bytes) leaves
/// the thread's rendering buffer in place for the next one: only a buffer
/// grown past 2 KiB is given back.
#[test]
fn a_long_key_keeps_the_rendering_buffer_for_the_next() {
    let long = "x".repeat(1_200);
    let (_, short) = allocations(|| Key::new("books", [("id", "1")]));
    let _first = Key::new("books", [("p", long.as_str())]);
    let mut again = None;
    let info =
        allocation_counter::measure(|| again = Some(Key::new("books", [("p", long.as_str())])));
    assert!(again.unwrap().is_hashed());
    assert_eq!(
        info.count_total, short,
        "the second long key grew the buffer again"
    );
}

/// Text already in NFC is used as it is, not normalised into a copy:
/// accented text costs what ASCII does.
#[test]
fn text_already_in_nfc_is_not_copied() {
    let (_, ascii) = allocations(|| Key::new("books", [("title", "cafe")]));
    let _warm = Key::new("books", [("title", "caf\u{e9}")]);
    let (key, accented) = allocations(|| Key::new("books", [("title", "caf\u{e9}")]));
    assert_eq!(key.as_str(), "books:title=caf\u{e9}");
    assert_eq!(accented, ascii, "NFC text was normalised into a copy");
    // Text not in NFC is normalised, which the counter sees.
    let (key, decomposed) = allocations(|| Key::new("books", [("title", "cafe\u{301}")]));
    assert_eq!(key.as_str(), "books:title=caf\u{e9}");
    assert!(decomposed > ascii, "{decomposed} vs {ascii}");
}

#[test]
fn paths_are_parameters_as_their_lossy_text() {
    let path = Path::new("/data/reports/q3 (final).pdf");
    let key = Key::new("files", [("path", path)]);
    assert_eq!(
        key,
        Key::new("files", [("path", "/data/reports/q3 (final).pdf")])
    );
    let owned = PathBuf::from("/data/reports/q4.pdf");
    assert_eq!(
        Key::new("files", [("path", &owned)]),
        Key::new("files", [("path", "/data/reports/q4.pdf")])
    );
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let foreign = Path::new(std::ffi::OsStr::from_bytes(b"/data/\xff.pdf"));
        assert_eq!(
            Key::new("files", [("path", foreign)]),
            Key::new("files", [("path", "/data/\u{FFFD}.pdf")])
        );
    }
}
