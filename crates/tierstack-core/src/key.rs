//! Cache keys in the canonical `source:name=value&name=value` form.
//!
//! The rendering follows the form users already know from hand-written key
//! schemes (`audnexus:book:asin=B002V1A0WE`) but is **injective**: two
//! different `(source, params)` inputs never render to the same key. That
//! property is what lets a cache be trusted with data; a naive
//! `join("&")` renders `{a: "1&b=2"}` and `{a: "1", b: "2"}` identically.
//!
//! Rules (see also `docs/architecture.md`):
//! - parameters are a map, sorted by name; a later value for the same name
//!   replaces an earlier one;
//! - `None` values are omitted, so `{q: "x", author: None}` equals `{q: "x"}`;
//!   an empty string is kept (`author=`);
//! - all text is normalised to Unicode NFC first, so visually equal input from
//!   different sources (macOS file names are NFD) gives the same key;
//! - in names and values, `%`, `&`, `=`, `:`, `#` and control characters are
//!   percent-encoded (`%26`); in the source, the same except `:`, which stays
//!   readable as the RFC's segment separator (`audnexus:search`). `/` and
//!   spaces are not escaped, so paths stay readable;
//! - keys longer than [`MAX_KEY_LEN`] bytes keep a readable prefix and end in
//!   `#` followed by the 128-bit xxh3 hash of the full key. `#` never appears
//!   unescaped elsewhere, so a hashed key cannot equal a plain one.

use std::borrow::{Borrow, Cow};
use std::cell::RefCell;
use std::fmt;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfc_quick};

/// Longest canonical key, in bytes. Longer keys are shortened with a hash.
pub const MAX_KEY_LEN: usize = 512;

/// `#` plus 32 lowercase hex digits of a 128-bit hash.
const HASH_SUFFIX_LEN: usize = 33;

/// A canonical cache key: cheap to clone (one `Arc`), hashed and compared by
/// its canonical string.
#[derive(Clone)]
pub struct Key {
    canonical: Arc<str>,
    /// xxh3-64 of `canonical`, computed once: every hit checks it against
    /// the entry's header, and rehashing the text there would cost more
    /// than the rest of an in-memory hit's check.
    digest: u64,
    /// Byte length of the source part (before the separating `:`); at most
    /// [`MAX_KEY_LEN`], so `u16` keeps `Key` at 32 bytes.
    source_len: u16,
    hashed: bool,
}

/// Why a string is not a canonical key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key has no `:` separating the source from the parameters.
    #[error("key has no ':' between source and parameters")]
    MissingSeparator,
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("key is {len} bytes long, the maximum is {MAX_KEY_LEN}")]
    TooLong {
        /// Length of the rejected key.
        len: usize,
    },
    /// A `%` escape is malformed or decodes to invalid UTF-8.
    #[error("invalid percent escape at byte {at}")]
    BadEscape {
        /// Byte offset of the bad escape.
        at: usize,
    },
    /// A parameter has no `=`.
    #[error("parameter {index} has no '='")]
    MissingEquals {
        /// Index of the parameter.
        index: usize,
    },
    /// The hashed tail (`#` + 32 hex digits) is malformed.
    #[error("malformed hashed key tail")]
    BadHashTail,
    /// The string parses, but is not how [`Key::new`] renders its parts
    /// (unsorted, duplicate names, unescaped reserved characters, not NFC).
    #[error("key is not in canonical form; canonical form is {canonical:?}")]
    NotCanonical {
        /// The canonical rendering of the same parts.
        canonical: String,
    },
}

/// A value that can be a key parameter. `None` omits the parameter.
///
/// The text may borrow from the value (`'a`), so that a `&str` or `&Path`
/// parameter is rendered without a copy of its own.
pub trait ParamValue<'a> {
    /// The parameter's text, or `None` to leave the parameter out.
    fn into_param(self) -> Option<Cow<'a, str>>;
}

impl<'a> ParamValue<'a> for &'a str {
    fn into_param(self) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(self))
    }
}

impl<'a> ParamValue<'a> for String {
    fn into_param(self) -> Option<Cow<'a, str>> {
        Some(Cow::Owned(self))
    }
}

impl<'a> ParamValue<'a> for &'a String {
    fn into_param(self) -> Option<Cow<'a, str>> {
        Some(Cow::Borrowed(self.as_str()))
    }
}

impl<'a> ParamValue<'a> for Cow<'a, str> {
    fn into_param(self) -> Option<Cow<'a, str>> {
        Some(self)
    }
}

/// Paths are rendered with `to_string_lossy`: two non-UTF-8 paths that differ
/// only in invalid bytes share a key.
impl<'a> ParamValue<'a> for &'a Path {
    fn into_param(self) -> Option<Cow<'a, str>> {
        Some(self.to_string_lossy())
    }
}

/// See the `&Path` implementation.
impl<'a> ParamValue<'a> for &'a PathBuf {
    fn into_param(self) -> Option<Cow<'a, str>> {
        self.as_path().into_param()
    }
}

impl<'a, T: ParamValue<'a>> ParamValue<'a> for Option<T> {
    fn into_param(self) -> Option<Cow<'a, str>> {
        self.and_then(ParamValue::into_param)
    }
}

macro_rules! display_param {
    ($($t:ty),*) => {$(
        impl<'a> ParamValue<'a> for $t {
            fn into_param(self) -> Option<Cow<'a, str>> {
                Some(Cow::Owned(self.to_string()))
            }
        }
    )*};
}
display_param!(
    bool, char, u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

/// A value that renders as a key parameter from a shared reference: what
/// `#[tierstack::cached]` asks of each parameter of the function it
/// caches, so that making the key borrows the arguments instead of taking
/// them. Implemented for text, paths, integers, `bool`, `char`, references
/// to these and `Option`s of them (`None` leaves the parameter out). Not
/// for floats: `0.1 + 0.2` and `0.3`, `-0.0` and `0.0` would be different
/// keys for what a caller thinks is one value.
///
/// ```
/// use tierstack_core::AsParam;
/// assert_eq!(AsParam::as_param(&Some("dune")).as_deref(), Some("dune"));
/// assert_eq!(AsParam::as_param(&None::<u32>), None);
/// assert_eq!(AsParam::as_param(&42u64).as_deref(), Some("42"));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a key parameter",
    label = "this parameter would be part of the cache key",
    note = "key parameters are text, paths, integers, `bool`, `char` or `Option`s of them (floats have no one spelling: round or format them yourself); leave the parameter out of the key with `skip(name)`, or implement `tierstack::AsParam` for it"
)]
pub trait AsParam {
    /// The parameter's text, or `None` to leave the parameter out.
    fn as_param(&self) -> Option<Cow<'_, str>>;
}

impl AsParam for str {
    fn as_param(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self))
    }
}

impl AsParam for String {
    fn as_param(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self))
    }
}

impl AsParam for Cow<'_, str> {
    fn as_param(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self))
    }
}

/// See the `&Path` implementation of [`ParamValue`].
impl AsParam for Path {
    fn as_param(&self) -> Option<Cow<'_, str>> {
        Some(self.to_string_lossy())
    }
}

impl AsParam for PathBuf {
    fn as_param(&self) -> Option<Cow<'_, str>> {
        Some(self.to_string_lossy())
    }
}

impl<T: AsParam + ?Sized> AsParam for &T {
    fn as_param(&self) -> Option<Cow<'_, str>> {
        (**self).as_param()
    }
}

impl<T: AsParam> AsParam for Option<T> {
    fn as_param(&self) -> Option<Cow<'_, str>> {
        self.as_ref().and_then(AsParam::as_param)
    }
}

macro_rules! display_as_param {
    ($($t:ty),*) => {$(
        impl AsParam for $t {
            fn as_param(&self) -> Option<Cow<'_, str>> {
                Some(Cow::Owned(self.to_string()))
            }
        }
    )*};
}
display_as_param!(
    bool, char, u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

/// Parameters kept on the stack before spilling to the heap: keys of the
/// RFC's scheme have one to three.
const INLINE_PARAMS: usize = 4;

/// One parameter after normalisation, still borrowing what it can.
struct Param<'a, N> {
    name: N,
    /// The NFC form of `name` when it differs from `name` itself.
    normalised_name: Option<String>,
    value: Cow<'a, str>,
}

impl<'a, N: AsRef<str>> Param<'a, N> {
    #[inline]
    fn new(name: N, value: Cow<'a, str>) -> Self {
        let normalised_name = match nfc(name.as_ref()) {
            Cow::Borrowed(_) => None,
            Cow::Owned(text) => Some(text),
        };
        let value = match nfc(&value) {
            Cow::Borrowed(_) => value,
            Cow::Owned(text) => Cow::Owned(text),
        };
        Self {
            name,
            normalised_name,
            value,
        }
    }

    #[inline]
    fn name(&self) -> &str {
        self.normalised_name
            .as_deref()
            .unwrap_or_else(|| self.name.as_ref())
    }
}

/// The parameters of one key, in input order: on the stack up to
/// [`INLINE_PARAMS`], then in a `Vec`. Replaces the `BTreeMap` the general
/// path needed, which allocated a node and two strings per key.
struct Params<'a, N> {
    inline: [Option<Param<'a, N>>; INLINE_PARAMS],
    len: usize,
    spilled: Vec<Option<Param<'a, N>>>,
}

impl<'a, N: AsRef<str>> Params<'a, N> {
    fn new() -> Self {
        Self {
            inline: [const { None }; INLINE_PARAMS],
            len: 0,
            spilled: Vec::new(),
        }
    }

    fn push(&mut self, param: Param<'a, N>) {
        if self.spilled.is_empty() && self.len < INLINE_PARAMS {
            self.inline[self.len] = Some(param);
            self.len += 1;
            return;
        }
        if self.spilled.is_empty() {
            self.spilled = Vec::with_capacity(INLINE_PARAMS * 2);
            self.spilled
                .extend(self.inline.iter_mut().take(self.len).map(Option::take));
        }
        self.spilled.push(Some(param));
    }

    /// The parameters sorted by name, equal names in input order.
    fn sorted(&mut self) -> &[Option<Param<'a, N>>] {
        let items = if self.spilled.is_empty() {
            &mut self.inline[..self.len]
        } else {
            &mut self.spilled[..]
        };
        if items.len() > 1 {
            // Stable, so that among equal names the last one given stays
            // last, and wins below, as `BTreeMap::insert` made it win.
            // (Small slices are insertion-sorted without allocating.)
            items.sort_by(|a, b| {
                a.as_ref()
                    .map(Param::name)
                    .cmp(&b.as_ref().map(Param::name))
            });
        }
        items
    }
}

impl Key {
    /// Renders a key from a source and its parameters.
    ///
    /// ```
    /// use tierstack_core::Key;
    /// let key = Key::new("audnexus:search", [("q", Some("dune")), ("author", Some("herbert"))]);
    /// assert_eq!(key.as_str(), "audnexus:search:author=herbert&q=dune");
    /// let key = Key::new("audnexus:search", [("q", Some("dune")), ("author", None)]);
    /// assert_eq!(key.as_str(), "audnexus:search:q=dune");
    /// ```
    pub fn new<'a, S, I, N, V>(source: S, params: I) -> Self
    where
        S: AsRef<str>,
        I: IntoIterator<Item = (N, V)>,
        N: AsRef<str>,
        V: ParamValue<'a>,
    {
        let mut params = params
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.into_param()?)));
        let Some((first_name, first_value)) = params.next() else {
            return Self::bare(source);
        };
        let Some((second_name, second_value)) = params.next() else {
            // One parameter, the most common key: nothing to sort or merge,
            // and plain ASCII text needs no normalising either.
            let source = source.as_ref();
            let plain = std::iter::once((first_name.as_ref(), &*first_value));
            return Self::render_plain(source, plain).unwrap_or_else(|| {
                let first = Param::new(first_name, first_value);
                let params = std::iter::once((first.name(), &*first.value));
                with_scratch(|out| Self::render_into(&nfc(source), params, out))
            });
        };
        let mut collected = Params::new();
        collected.push(Param::new(first_name, first_value));
        collected.push(Param::new(second_name, second_value));
        for (name, value) in params {
            collected.push(Param::new(name, value));
        }
        let sorted = collected.sorted();
        // A name followed by an equal one was replaced by it.
        let kept = sorted.iter().enumerate().filter_map(|(i, p)| {
            let p = p.as_ref()?;
            let replaced = sorted
                .get(i + 1)
                .and_then(Option::as_ref)
                .is_some_and(|next| next.name() == p.name());
            (!replaced).then(|| (p.name(), &*p.value))
        });
        Self::render(&nfc(source.as_ref()), kept)
    }

    /// A key with a source and no parameters (`source:`).
    pub fn bare(source: impl AsRef<str>) -> Self {
        Self::render(&nfc(source.as_ref()), std::iter::empty())
    }

    /// Starts a key with named parameters added one at a time.
    pub fn builder(source: impl AsRef<str>) -> KeyBuilder {
        KeyBuilder {
            source: source.as_ref().to_owned(),
            params: Vec::new(),
        }
    }

    /// Renders parts that are already in NFC.
    fn render<'p>(source: &str, params: impl Iterator<Item = (&'p str, &'p str)> + Clone) -> Self {
        Self::render_plain(source, params.clone())
            .unwrap_or_else(|| with_scratch(|out| Self::render_into(source, params, out)))
    }

    /// Renders a short key whose parts are ASCII with nothing to escape
    /// (most keys) on the stack: one pass over each part checks and copies
    /// it, and the key's one allocation copies the result. `None` when a
    /// part needs escaping or normalising, or the key is longer than
    /// [`PLAIN_KEY_LEN`].
    #[inline]
    fn render_plain<'p>(
        source: &str,
        params: impl Iterator<Item = (&'p str, &'p str)>,
    ) -> Option<Self> {
        let mut out = PlainBuf::new();
        out.text(source, Part::Source)?;
        let source_len = out.len;
        out.byte(b':')?;
        for (i, (name, value)) in params.enumerate() {
            if i > 0 {
                out.byte(b'&')?;
            }
            out.text(name, Part::Param)?;
            out.byte(b'=')?;
            out.text(value, Part::Param)?;
        }
        // Always valid: only ASCII was copied.
        let canonical = std::str::from_utf8(&out.buf[..out.len]).ok()?;
        Some(Self::from_canonical(canonical, source_len, false))
    }

    /// Renders into `out` (empty), then copies the result into the key's
    /// one allocation.
    fn render_into<'p>(
        source: &str,
        params: impl Iterator<Item = (&'p str, &'p str)>,
        out: &mut String,
    ) -> Self {
        escape_into(source, out, Part::Source);
        let source_len = out.len();
        out.push(':');
        for (i, (name, value)) in params.enumerate() {
            if i > 0 {
                out.push('&');
            }
            escape_into(name, out, Part::Param);
            out.push('=');
            escape_into(value, out, Part::Param);
        }
        if out.len() <= MAX_KEY_LEN {
            return Self::from_canonical(out, source_len, false);
        }
        let digest = xxhash_rust::xxh3::xxh3_128(out.as_bytes());
        let mut cut = MAX_KEY_LEN - HASH_SUFFIX_LEN;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        let _ = write!(out, "#{digest:032x}");
        let source_len = hashed_source_len(&out[..cut]);
        Self::from_canonical(out, source_len, true)
    }

    /// `canonical` is at most [`MAX_KEY_LEN`] bytes, `source_len` within it.
    // Inlined: returning the key through the stack cost a store-forwarding
    // stall worth a fifth of a plain key's rendering; `#[inline]` alone
    // left it out of line.
    #[allow(clippy::inline_always)]
    #[inline(always)]
    fn from_canonical(canonical: &str, source_len: usize, hashed: bool) -> Self {
        Self {
            digest: xxhash_rust::xxh3::xxh3_64(canonical.as_bytes()),
            canonical: canonical.into(),
            source_len: u16::try_from(source_len).unwrap_or(u16::MAX),
            hashed,
        }
    }

    /// Parses a canonical key string, as printed by [`Key::as_str`].
    ///
    /// Only the canonical form is accepted, so that one logical key has one
    /// spelling: `Key::parse(k.as_str()) == Ok(k)` for every key.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        if text.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong { len: text.len() });
        }
        if let Some(hash_at) = text.find('#') {
            return Self::parse_hashed(text, hash_at);
        }
        let sep = text.rfind(':').ok_or(KeyError::MissingSeparator)?;
        let source = unescape(&text[..sep], 0)?;
        let mut params = Vec::new();
        let rest = &text[sep + 1..];
        if !rest.is_empty() {
            let mut offset = sep + 1;
            for (index, pair) in rest.split('&').enumerate() {
                let (name, value) = pair
                    .split_once('=')
                    .ok_or(KeyError::MissingEquals { index })?;
                params.push((
                    unescape(name, offset)?,
                    unescape(value, offset + name.len() + 1)?,
                ));
                offset += pair.len() + 1;
            }
        }
        let key = Self::new(&source, params.iter().map(|(n, v)| (n, v)));
        if &*key.canonical == text {
            Ok(key)
        } else {
            Err(KeyError::NotCanonical {
                canonical: key.canonical.to_string(),
            })
        }
    }

    fn parse_hashed(text: &str, hash_at: usize) -> Result<Self, KeyError> {
        let tail = &text[hash_at + 1..];
        let well_formed = tail.len() == HASH_SUFFIX_LEN - 1
            && tail.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            // A hashed key is only ever made from a key that was too long, so
            // its prefix fills the space up to a char boundary.
            && text.len() > MAX_KEY_LEN - 4
            && !text[..hash_at].chars().any(char::is_control);
        if !well_formed {
            return Err(KeyError::BadHashTail);
        }
        Ok(Self::from_canonical(
            text,
            hashed_source_len(&text[..hash_at]),
            true,
        ))
    }

    /// The canonical string.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// The source part (`audnexus:search` of `audnexus:search:q=dune`), in its
    /// escaped form. Used for per-source statistics, policies and clearing.
    pub fn source(&self) -> &str {
        &self.canonical[..usize::from(self.source_len)]
    }

    /// xxh3-64 of [`Key::as_str`], computed when the key was made (what
    /// [`crate::envelope::key_hash`] returns, without hashing again).
    pub fn xxh3_64(&self) -> u64 {
        self.digest
    }

    /// Whether the key was too long and ends in a hash. Hashed keys cannot
    /// give back their parameters.
    pub fn is_hashed(&self) -> bool {
        self.hashed
    }

    /// The decoded parameters in canonical order, or `None` for a hashed key.
    pub fn params(&self) -> Option<Vec<(String, String)>> {
        if self.hashed {
            return None;
        }
        let rest = &self.canonical[usize::from(self.source_len) + 1..];
        if rest.is_empty() {
            return Some(Vec::new());
        }
        rest.split('&')
            .map(|pair| {
                let (n, v) = pair.split_once('=')?;
                Some((unescape(n, 0).ok()?, unescape(v, 0).ok()?))
            })
            .collect()
    }

    /// Shares the canonical string without copying it.
    pub fn as_arc_str(&self) -> &Arc<str> {
        &self.canonical
    }
}

fn hashed_source_len(prefix: &str) -> usize {
    prefix.rfind(':').unwrap_or(prefix.len())
}

/// Adds named parameters one at a time; see [`Key::builder`].
#[derive(Debug, Clone)]
pub struct KeyBuilder {
    source: String,
    params: Vec<(String, Option<Cow<'static, str>>)>,
}

impl KeyBuilder {
    /// Adds a parameter; a `None` value is left out of the key.
    #[must_use]
    pub fn param<'a>(mut self, name: impl Into<String>, value: impl ParamValue<'a>) -> Self {
        // The builder outlives the values it is given, so it keeps copies.
        let value = value.into_param().map(|v| Cow::Owned(v.into_owned()));
        self.params.push((name.into(), value));
        self
    }

    /// Renders the key.
    pub fn build(self) -> Key {
        Key::new(self.source, self.params)
    }
}

/// Longest key [`Key::render_plain`] renders on the stack; under
/// [`MAX_KEY_LEN`], so a plain key never needs its hash tail.
const PLAIN_KEY_LEN: usize = 128;

/// The stack buffer of [`Key::render_plain`].
struct PlainBuf {
    buf: [u8; PLAIN_KEY_LEN],
    len: usize,
}

impl PlainBuf {
    #[inline]
    fn new() -> Self {
        Self {
            buf: [0; PLAIN_KEY_LEN],
            len: 0,
        }
    }

    /// Appends `text` if it is ASCII with nothing to escape in `part` and
    /// fits.
    #[inline]
    fn text(&mut self, text: &str, part: Part) -> Option<()> {
        let bytes = text.as_bytes();
        let end = self.len + bytes.len();
        let slot = self.buf.get_mut(self.len..end)?;
        // Branch-free over the whole part: parts are a few dozen bytes, all
        // plain, and an exit test per byte costs more than it saves.
        let found = bytes
            .iter()
            .fold(0, |found, &b| found | ESCAPE[usize::from(b)]);
        if found & (part.mask() | NOT_ASCII) != 0 {
            return None;
        }
        slot.copy_from_slice(bytes);
        self.len = end;
        Some(())
    }

    #[inline]
    fn byte(&mut self, b: u8) -> Option<()> {
        *self.buf.get_mut(self.len)? = b;
        self.len += 1;
        Some(())
    }
}

/// Runs `render` with this thread's scratch buffer, empty.
fn with_scratch(render: impl FnOnce(&mut String) -> Key) -> Key {
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut out) => {
            out.clear();
            let key = render(&mut out);
            if out.capacity() > SCRATCH_KEEP {
                *out = String::new();
            }
            key
        }
        // Only reachable if rendering re-entered itself; never on the hot
        // path.
        Err(_) => render(&mut String::new()),
    })
}

/// Scratch capacity kept per thread between renderings; a larger buffer
/// (left by a very long key) is freed.
const SCRATCH_KEEP: usize = 4 * MAX_KEY_LEN;

thread_local! {
    /// Where keys are rendered before their one copy into an `Arc<str>`, so
    /// that making a key allocates once, as a `format!` does.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

#[inline]
fn nfc(text: &str) -> Cow<'_, str> {
    // ASCII is NFC; checking for it is much cheaper than the quick check's
    // per-character table lookups.
    if text.is_ascii() || is_nfc_quick(text.chars()) == IsNormalized::Yes {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(text.nfc().collect())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Source,
    Param,
}

/// Bytes that start a character which must be percent-encoded, per part:
/// bit 0 in the source, bit 1 in names and values. `%`, `&`, `=`, `#`, `:`
/// (not in the source) and ASCII controls (U+0000–U+001F, U+007F) are
/// always encoded; `0xC2` starts the other controls (U+0080–U+009F, `C2 80`
/// to `C2 9F`) but also other characters, so it is only a candidate.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = 0b11;
        b += 1;
    }
    table[0x7f] = 0b11;
    table[b'%' as usize] = 0b11;
    table[b'&' as usize] = 0b11;
    table[b'=' as usize] = 0b11;
    table[b'#' as usize] = 0b11;
    table[b':' as usize] = 0b10;
    table[0xC2] = 0b11;
    // Bit 2 marks every byte of a non-ASCII character, which the plain
    // path leaves to the normalising one.
    let mut b = 0x80;
    while b < 0x100 {
        table[b] |= NOT_ASCII;
        b += 1;
    }
    table
};

/// The [`ESCAPE`] bit of bytes outside ASCII.
const NOT_ASCII: u8 = 0b100;

impl Part {
    const fn mask(self) -> u8 {
        match self {
            Part::Source => 0b01,
            Part::Param => 0b10,
        }
    }
}

/// Copies `text` into `out`, percent-encoding what must be (see
/// [`ESCAPE`]). Runs of plain text are copied whole; most texts are one run.
#[inline]
fn escape_into(text: &str, out: &mut String, part: Part) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mask = part.mask();
    let bytes = text.as_bytes();
    let mut plain_from = 0;
    let mut i = 0;
    while let Some(at) = bytes[i..]
        .iter()
        .position(|&b| ESCAPE[usize::from(b)] & mask != 0)
    {
        i += at;
        let n = match bytes.get(i..i + 2) {
            Some([0xC2, 0x80..=0x9F]) => 2,
            // Another character starting with `C2`: plain.
            _ if bytes[i] == 0xC2 => 0,
            _ => 1,
        };
        if n == 0 {
            i += 1;
            continue;
        }
        // `i` is at an ASCII byte or a lead byte: a character boundary.
        out.push_str(&text[plain_from..i]);
        for &b in &bytes[i..i + n] {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
        i += n;
        plain_from = i;
    }
    out.push_str(&text[plain_from..]);
}

fn unescape(text: &str, offset: usize) -> Result<String, KeyError> {
    if !text.contains('%') {
        return Ok(text.to_owned());
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(KeyError::BadEscape { at: offset + i })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| KeyError::BadEscape { at: offset })
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Must match `str`'s hash because of `Borrow<str>`.
        self.canonical.as_ref().hash(state);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.canonical.cmp(&other.canonical)
    }
}

impl Borrow<str> for Key {
    fn borrow(&self) -> &str {
        &self.canonical
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.canonical
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({:?})", &*self.canonical)
    }
}

impl std::str::FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl serde::Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.canonical)
    }
}

impl<'de> serde::Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_parameter_renders_by_reference() {
        fn text<T: AsParam + ?Sized>(value: &T) -> Option<String> {
            value.as_param().map(Cow::into_owned)
        }
        assert_eq!(text("dune").as_deref(), Some("dune"));
        assert_eq!(text(&"dune".to_owned()).as_deref(), Some("dune"));
        assert_eq!(text(&Cow::Borrowed("dune")).as_deref(), Some("dune"));
        assert_eq!(text(Path::new("/a/b")).as_deref(), Some("/a/b"));
        assert_eq!(text(&PathBuf::from("/a/b")).as_deref(), Some("/a/b"));
        assert_eq!(text(&&&"deep").as_deref(), Some("deep"));
        assert_eq!(text(&Some("herbert")).as_deref(), Some("herbert"));
        assert_eq!(text(&None::<&str>), None);
        assert_eq!(text(&Some(None::<u8>)), None);
        assert_eq!(text(&7u8).as_deref(), Some("7"));
        assert_eq!(text(&-3i64).as_deref(), Some("-3"));
        assert_eq!(text(&true).as_deref(), Some("true"));
        assert_eq!(text(&'x').as_deref(), Some("x"));
        // The rendering is the one `ParamValue` gives the same value.
        let by_value = Key::new("s", [("p", Some("x"))]);
        let by_reference = Key::new("s", [("p", Some("x").as_param())]);
        assert_eq!(by_value, by_reference);
    }

    #[test]
    fn rfc_examples_render_as_written() {
        let search = Key::new(
            "audnexus:search",
            [("q", Some("dune")), ("author", Some("herbert"))],
        );
        assert_eq!(search.as_str(), "audnexus:search:author=herbert&q=dune");
        assert_eq!(search.source(), "audnexus:search");
        let book = Key::new("audnexus:book", [("asin", "B002V1A0WE")]);
        assert_eq!(book.as_str(), "audnexus:book:asin=B002V1A0WE");
        let path = Key::new("pathinfo", [("path", "/audiobooks/fantasy/dune")]);
        assert_eq!(path.as_str(), "pathinfo:path=/audiobooks/fantasy/dune");
        assert_eq!(path.source(), "pathinfo");
    }

    #[test]
    fn reserved_characters_do_not_collide() {
        let a = Key::new("s", [("a", "1&b=2")]);
        let b = Key::new("s", [("a", "1"), ("b", "2")]);
        assert_ne!(a, b);
        assert_eq!(a.as_str(), "s:a=1%26b%3D2");
        assert_eq!(b.as_str(), "s:a=1&b=2");
    }

    #[test]
    fn none_is_omitted_and_empty_is_kept() {
        let none = Key::new("s", [("q", Some("x")), ("author", None)]);
        let empty = Key::new("s", [("q", Some("x")), ("author", Some(""))]);
        assert_eq!(none.as_str(), "s:q=x");
        assert_eq!(empty.as_str(), "s:author=&q=x");
    }

    #[test]
    fn nfc_normalises_equal_text() {
        let composed = Key::new("s", [("t", "caf\u{e9}")]);
        let decomposed = Key::new("s", [("t", "cafe\u{301}")]);
        assert_eq!(composed, decomposed);
    }

    #[test]
    fn long_keys_are_hashed_and_still_distinct() {
        let long_a = "x".repeat(2000);
        let mut long_b = long_a.clone();
        long_b.push('y');
        let a = Key::new("pathinfo", [("path", &long_a)]);
        let b = Key::new("pathinfo", [("path", &long_b)]);
        assert!(a.is_hashed());
        assert!(a.as_str().len() <= MAX_KEY_LEN);
        assert_ne!(a, b);
        assert_eq!(a.source(), "pathinfo");
        assert!(a.as_str().starts_with("pathinfo:path=xxx"));
        assert_eq!(Key::parse(a.as_str()).unwrap(), a);
        assert_eq!(Key::parse(a.as_str()).unwrap().source(), "pathinfo");
        assert_eq!(a.params(), None);
    }

    #[test]
    fn parse_rejects_non_canonical_spellings() {
        assert!(matches!(
            Key::parse("s:b=1&a=2"),
            Err(KeyError::NotCanonical { .. })
        ));
        assert!(matches!(
            Key::parse("s:a=1&a=2"),
            Err(KeyError::NotCanonical { .. })
        ));
        assert!(matches!(
            Key::parse("s:a=%zz"),
            Err(KeyError::BadEscape { .. })
        ));
        assert!(matches!(
            Key::parse("s:a=%26x%3d"),
            Err(KeyError::NotCanonical { .. })
        ));
        assert_eq!(Key::parse("nosep"), Err(KeyError::MissingSeparator));
        assert_eq!(
            Key::parse("s:novalue"),
            Err(KeyError::MissingEquals { index: 0 })
        );
        assert_eq!(Key::parse("s:a=1#abc"), Err(KeyError::BadHashTail));
        assert!(matches!(
            Key::parse(&"x".repeat(600)),
            Err(KeyError::TooLong { len: 600 })
        ));
    }

    /// A bad escape is reported at its byte offset in the whole key, in
    /// any parameter, name or value.
    #[test]
    fn parse_errors_point_at_the_byte_at_fault() {
        for (text, at) in [
            ("s:a=%zz", 4),
            ("src:a=1&b%zz=2", 9),
            ("src:a=1&b=2%zz", 11),
            ("src:a=1&bb=22&c=%g1", 16),
        ] {
            assert_eq!(Key::parse(text), Err(KeyError::BadEscape { at }), "{text}");
        }
        assert_eq!(
            Key::parse("s:a=1&b=2&novalue"),
            Err(KeyError::MissingEquals { index: 2 })
        );
    }

    /// A hashed key parses only in the form rendering gives it: a prefix
    /// that filled the space to a char boundary, then `#` and 32 lowercase
    /// hex digits, no control character.
    #[test]
    fn parse_accepts_a_hashed_key_only_in_its_rendered_form() {
        let key = Key::new("s", [("p", "x".repeat(600))]);
        assert!(key.is_hashed());
        let text = key.as_str();
        assert_eq!(text.len(), MAX_KEY_LEN);
        assert_eq!(Key::parse(text).unwrap(), key);
        let (prefix, tail) = text.split_at(text.len() - HASH_SUFFIX_LEN);
        let bad = [
            // A tail of hex digits one short, or one not hex.
            format!("{prefix}#{}", &tail[2..]),
            format!("{prefix}{}g", &tail[..tail.len() - 1]),
            // A prefix shorter than rendering leaves (by 4 bytes, by half).
            format!("{}{tail}", &prefix[4..]),
            format!("{}{tail}", &prefix[MAX_KEY_LEN / 2..]),
            // A control character in the prefix.
            format!("s:p=\u{1}{}{tail}", &prefix[5..]),
        ];
        for text in &bad {
            assert_eq!(Key::parse(text), Err(KeyError::BadHashTail), "{text}");
        }
    }

    /// A key is a `str` to maps and sets: it hashes and compares as its
    /// text, so a `HashMap<Key, _>` is looked up by `&str` and a
    /// `BTreeMap<Key, _>` is in text order.
    #[test]
    fn keys_hash_order_and_borrow_as_their_text() {
        use std::collections::{BTreeSet, HashMap};
        use std::hash::BuildHasher;
        let (a, b) = (Key::new("s", [("a", "1")]), Key::new("s", [("a", "2")]));
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(state.hash_one(&a), state.hash_one("s:a=1"));
        assert_ne!(state.hash_one(&a), state.hash_one(&b));
        let map: HashMap<Key, u32> = [(a.clone(), 1), (b.clone(), 2)].into();
        assert_eq!(map.get("s:a=2"), Some(&2));
        assert_eq!(a.partial_cmp(&b), Some(std::cmp::Ordering::Less));
        let set: BTreeSet<Key> = [b.clone(), a.clone()].into();
        assert_eq!(set.into_iter().collect::<Vec<_>>(), [a.clone(), b]);
        let text: &str = a.as_ref();
        assert_eq!(text, "s:a=1");
        assert_eq!(format!("{a:?}"), "Key(\"s:a=1\")");
    }

    #[test]
    fn builder_and_typed_params() {
        let k = Key::builder("audnexus:search")
            .param("q", "dune")
            .param("author", None::<&str>)
            .param("page", 2u32)
            .build();
        assert_eq!(k.as_str(), "audnexus:search:page=2&q=dune");
        assert_eq!(Key::bare("stats").as_str(), "stats:");
        assert_eq!(Key::parse("stats:").unwrap(), Key::bare("stats"));
    }

    #[test]
    fn later_duplicates_win_and_none_does_not_remove() {
        let k = Key::new("s", [("a", Some("1")), ("b", Some("x")), ("a", Some("2"))]);
        assert_eq!(k.as_str(), "s:a=2&b=x");
        let k = Key::new("s", [("a", Some("1")), ("a", None)]);
        assert_eq!(k.as_str(), "s:a=1");
        // Names equal after NFC are the same name.
        let k = Key::new("s", [("caf\u{e9}", "1"), ("cafe\u{301}", "2")]);
        assert_eq!(k.as_str(), "s:caf\u{e9}=2");
        // More parameters than fit on the stack, with duplicates on both sides
        // of the spill.
        let many: Vec<(String, String)> = (0..10)
            .map(|i| (format!("p{}", i % 6), i.to_string()))
            .collect();
        let k = Key::new("s", many.iter().map(|(n, v)| (n, v)));
        assert_eq!(k.as_str(), "s:p0=6&p1=7&p2=8&p3=9&p4=4&p5=5");
    }

    #[test]
    fn escapes_unicode_controls_but_not_other_two_byte_characters() {
        let k = Key::new("s", [("t", "\u{80}\u{9f}\u{a0}\u{e9}:")]);
        assert_eq!(k.as_str(), "s:t=%C2%80%C2%9F\u{a0}\u{e9}%3A");
    }

    fn scratch_capacity() -> usize {
        SCRATCH.with(|scratch| scratch.borrow().capacity())
    }

    /// The fast path is only visible in what it does not touch: the
    /// thread's scratch buffer, which the normalising path renders into.
    #[test]
    fn plain_keys_render_on_the_stack_and_a_grown_scratch_is_freed() {
        std::thread::spawn(|| {
            assert_eq!(scratch_capacity(), 0);
            let key = Key::new("audnexus:book", [("asin", "B0001")]);
            assert_eq!(key.as_str(), "audnexus:book:asin=B0001");
            let key = Key::new("s", [("b", "2"), ("a", "1")]);
            assert_eq!(key.as_str(), "s:a=1&b=2");
            assert_eq!(Key::bare("plain").as_str(), "plain:");
            assert_eq!(scratch_capacity(), 0, "plain keys render on the stack");
            let escaped = Key::new("s", [("q", "a&b")]);
            assert_eq!(escaped.as_str(), "s:q=a%26b");
            let kept = scratch_capacity();
            assert!(
                kept > 0 && kept <= SCRATCH_KEEP,
                "a small scratch is kept: {kept}"
            );
            let long = Key::new("s", [("q", "\u{e9}".repeat(2000))]);
            assert!(long.is_hashed());
            assert_eq!(
                scratch_capacity(),
                0,
                "a scratch grown past SCRATCH_KEEP is freed"
            );
        })
        .join()
        .expect("the checks pass");
    }

    #[test]
    fn plain_keys_on_either_side_of_the_stack_buffer_render_alike() {
        // "s:" + "p=" around the buffer's length, then past MAX_KEY_LEN.
        for len in [
            PLAIN_KEY_LEN - 5,
            PLAIN_KEY_LEN - 4,
            PLAIN_KEY_LEN - 3,
            MAX_KEY_LEN,
        ] {
            let value = "v".repeat(len);
            let key = Key::new("s", [("p", value.as_str())]);
            let expected = reference::render("s", &[("p".into(), Some(value.clone()))]);
            assert_eq!(key.as_str(), expected, "value of {len} bytes");
            assert_eq!(key.source(), "s");
            assert_eq!(
                key.is_hashed(),
                expected.len() > MAX_KEY_LEN || expected.contains('#')
            );
        }
    }

    #[test]
    fn the_digest_is_the_canonical_texts_xxh3() {
        for k in [
            Key::new("audnexus:book", [("asin", "B002V1A0WE")]),
            Key::bare("stats"),
            Key::new("p", [("path", "x".repeat(2000))]),
            Key::parse("audnexus:search:q=dune").unwrap(),
        ] {
            assert_eq!(
                k.xxh3_64(),
                xxhash_rust::xxh3::xxh3_64(k.as_str().as_bytes())
            );
        }
        let long = Key::new("p", [("path", "x".repeat(2000))]);
        assert_eq!(Key::parse(long.as_str()).unwrap().xxh3_64(), long.xxh3_64());
        assert_eq!(std::mem::size_of::<Key>(), 32);
    }

    /// The rendering as it was before the fast paths: every text through
    /// the NFC iterator, parameters through a `BTreeMap`, every character
    /// through `char` checks. The fast path must agree with it byte for byte.
    mod reference {
        use std::collections::BTreeMap;
        use std::fmt::Write as _;

        use unicode_normalization::UnicodeNormalization;

        use super::super::{HASH_SUFFIX_LEN, MAX_KEY_LEN};

        fn needs_escape(c: char, param: bool) -> bool {
            match c {
                '%' | '&' | '=' | '#' => true,
                ':' => param,
                c => c.is_control(),
            }
        }

        fn escape_into(text: &str, out: &mut String, param: bool) {
            for c in text.chars() {
                if needs_escape(c, param) {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        let _ = write!(out, "%{b:02X}");
                    }
                } else {
                    out.push(c);
                }
            }
        }

        pub(super) fn render(source: &str, params: &[(String, Option<String>)]) -> String {
            let mut map: BTreeMap<String, String> = BTreeMap::new();
            for (name, value) in params {
                if let Some(value) = value {
                    map.insert(name.nfc().collect(), value.nfc().collect());
                }
            }
            let mut out = String::new();
            escape_into(&source.nfc().collect::<String>(), &mut out, false);
            out.push(':');
            for (i, (name, value)) in map.iter().enumerate() {
                if i > 0 {
                    out.push('&');
                }
                escape_into(name, &mut out, true);
                out.push('=');
                escape_into(value, &mut out, true);
            }
            if out.len() <= MAX_KEY_LEN {
                return out;
            }
            let digest = xxhash_rust::xxh3::xxh3_128(out.as_bytes());
            let mut cut = MAX_KEY_LEN - HASH_SUFFIX_LEN;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
            let _ = write!(out, "#{digest:032x}");
            out
        }
    }

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let atoms = prop::sample::select(vec![
            "a",
            "b",
            "1",
            "&",
            "=",
            ":",
            "%",
            "#",
            " ",
            "/",
            "\u{0}",
            "\n",
            "\u{7f}",
            "\u{80}",
            "\u{9f}",
            "\u{a0}",
            "\u{e9}",
            "e\u{301}",
            "\u{1e0b}\u{323}",
            "\u{212b}",
            "\u{1F600}",
            "\u{fffd}",
        ]);
        prop_oneof![
            prop::collection::vec(atoms, 0..5).prop_map(|parts| parts.concat()),
            // Anything at all, including unassigned and combining characters.
            any::<String>(),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2000, ..proptest::prelude::ProptestConfig::default()
        })]

        #[test]
        fn fast_path_renders_as_the_reference(
            source in text(),
            // Up to 9 parameters: past the inline ones, with repeated names.
            params in proptest::collection::vec(
                (proptest::prop_oneof![text(), proptest::sample::select(vec!["a".to_owned(), "b".to_owned()])],
                 proptest::option::of(text())),
                0..9,
            ),
            // Long keys: ASCII padding crosses the plain path's stack buffer
            // and the hash threshold, two-byte padding the normalising path's.
            pad in proptest::option::of((0usize..700, proptest::bool::ANY)),
        ) {
            let mut params = params;
            if let Some((pad, ascii)) = pad {
                let unit = if ascii { "a" } else { "\u{e9}" };
                params.push(("pad".into(), Some(unit.repeat(pad))));
            }
            let expected = reference::render(&source, &params);
            let key = Key::new(&source, params.iter().map(|(n, v)| (n, v.as_deref())));
            proptest::prop_assert_eq!(key.as_str(), expected.as_str());
            proptest::prop_assert_eq!(key.xxh3_64(), xxhash_rust::xxh3::xxh3_64(expected.as_bytes()));
            // Owned values take the same path as borrowed ones.
            let owned = Key::new(&source, params.iter().map(|(n, v)| (n.clone(), v.clone())));
            proptest::prop_assert_eq!(owned.as_str(), expected.as_str());
        }
    }
}
