//! Misuse of `#[tierstack::cached]` fails to compile with an error that
//! says what to do, at the span at fault (`tests/ui/*.rs` and their
//! `.stderr`; regenerate with `TRYBUILD=overwrite` after a deliberate
//! change of a message).

#[test]
fn misuse_of_the_cached_attribute_is_a_readable_compile_error() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
