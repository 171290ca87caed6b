//! Property tests for `Key`: injectivity and parse round trips.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use tierstack_core::Key;
use unicode_normalization::UnicodeNormalization;

/// Small alphabets full of reserved characters make collisions likely if the
/// rendering were not injective.
fn text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "a",
        "b",
        "1",
        "&",
        "=",
        ":",
        "%",
        "#",
        "%26",
        " ",
        "/",
        "\u{0}",
        "\n",
        "\u{7f}",
        "\u{e9}",
        "e\u{301}",
        "\u{1F600}",
    ]);
    prop::collection::vec(atoms, 0..4).prop_map(|parts| parts.concat())
}

type Params = Vec<(String, Option<String>)>;

fn input() -> impl Strategy<Value = (String, Params)> {
    (
        text(),
        prop::collection::vec((text(), prop::option::of(text())), 0..4),
    )
}

/// What the key is defined to depend on: NFC text, params as a map (last
/// value wins), `None` left out.
fn normalised((source, params): &(String, Params)) -> (String, BTreeMap<String, String>) {
    let mut map = BTreeMap::new();
    for (name, value) in params {
        if let Some(value) = value {
            map.insert(name.nfc().collect(), value.nfc().collect());
        }
    }
    (source.nfc().collect(), map)
}

fn key((source, params): &(String, Params)) -> Key {
    Key::new(source, params.iter().map(|(n, v)| (n, v.as_deref())))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// 200 batches of 1,000 inputs: 200,000 generated inputs, every pair within
    /// a batch compared through a map from key to normalised input.
    #[test]
    fn distinct_inputs_give_distinct_keys(batch in prop::collection::vec(input(), 1000)) {
        let mut seen: HashMap<Key, (String, BTreeMap<String, String>)> = HashMap::new();
        for item in &batch {
            let k = key(item);
            let norm = normalised(item);
            if let Some(previous) = seen.get(&k) {
                prop_assert_eq!(previous, &norm, "collision on {}", k);
            } else {
                seen.insert(k, norm);
            }
        }
    }

    #[test]
    fn parse_round_trips(item in input()) {
        let k = key(&item);
        let parsed = Key::parse(k.as_str()).expect("canonical keys parse");
        prop_assert_eq!(&parsed, &k);
        prop_assert_eq!(parsed.source(), k.source());
        let (source, map) = normalised(&item);
        let params: BTreeMap<String, String> = parsed.params().expect("short key").into_iter().collect();
        prop_assert_eq!(params, map);
        prop_assert!(!source.contains('#') || k.source().contains("%23"));
    }

    #[test]
    fn long_keys_stay_bounded_and_parse(item in input(), pad in 400usize..3000) {
        let (source, mut params) = item;
        params.push(("pad".into(), Some("x".repeat(pad))));
        let k = key(&(source, params));
        prop_assert!(k.as_str().len() <= tierstack_core::key::MAX_KEY_LEN);
        prop_assert_eq!(Key::parse(k.as_str()).expect("parses"), k);
    }

    #[test]
    fn parse_never_panics(s in ".{0,80}") {
        let _ = Key::parse(&s);
    }

    /// The `parse_key` fuzz target's property, on text shaped like keys
    /// (reserved characters, escapes, non-ASCII), for runs without
    /// cargo-fuzz.
    #[test]
    fn whatever_parses_renders_back_to_itself(
        parts in prop::collection::vec(prop_oneof![text(), Just("%2".to_owned()), Just("%C2%80".to_owned()), Just("%e9".to_owned())], 0..8),
    ) {
        let s = parts.concat();
        if let Ok(key) = Key::parse(&s) {
            prop_assert_eq!(key.as_str(), s.as_str());
            prop_assert_eq!(key.xxh3_64(), xxhash_rust::xxh3::xxh3_64(s.as_bytes()));
        }
    }
}
