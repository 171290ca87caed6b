//! What a backend gets from `Tier` without writing it: the provided methods
//! over a tier that implements only the required ones (a map behind a
//! lock, the smallest store there is), and the names of `Capabilities`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use tierstack_core::{
    Capabilities, ClearScope, Codec, Compression, DecodeLimits, Dictionaries, Entry, EntryMeta,
    Health, Key, Readiness, Result, ScanCursor, ScanPage, SetReadiness, Tier, TierSize, Timestamp,
    async_trait,
};

#[derive(Debug, Default)]
struct OnlyTheRequired {
    rows: Mutex<BTreeMap<Key, Entry>>,
}

#[async_trait]
impl Tier for OnlyTheRequired {
    fn name(&self) -> &'static str {
        "required-only"
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::NONE
    }
    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        Ok(self.rows.lock().unwrap().get(key).cloned())
    }
    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        self.rows.lock().unwrap().insert(key.clone(), entry);
        Ok(())
    }
    async fn delete(&self, key: &Key) -> Result<bool> {
        Ok(self.rows.lock().unwrap().remove(key).is_some())
    }
    async fn clear(&self, _scope: ClearScope) -> Result<u64> {
        let mut rows = self.rows.lock().unwrap();
        let n = rows.len() as u64;
        rows.clear();
        Ok(n)
    }
    async fn size(&self) -> Result<TierSize> {
        Ok(TierSize {
            entries: self.rows.lock().unwrap().len() as u64,
            bytes: 0,
        })
    }
    async fn scan(&self, _cursor: Option<ScanCursor>, _limit: usize) -> Result<ScanPage> {
        Ok(ScanPage {
            entries: Vec::new(),
            next: None,
        })
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

fn key(name: &str) -> Key {
    Key::new("defaults", [("k", name)])
}

fn entry(key: &Key) -> Entry {
    Entry::encode(
        &key.to_string(),
        Codec::MsgPack,
        &Compression::None,
        EntryMeta::new(key, 1, Timestamp::from_millis(1)),
        DecodeLimits::default(),
    )
    .unwrap()
}

fn decoded(entry: &Entry) -> String {
    entry
        .decode_value(DecodeLimits::default(), &Dictionaries::default())
        .unwrap()
}

fn value(entry: Option<&Entry>) -> Option<String> {
    entry.map(decoded)
}

/// A tier that cannot rewrite a header alone renews by setting the entry.
#[tokio::test]
async fn renew_defaults_to_set() {
    let tier = OnlyTheRequired::default();
    let k = key("renewed");
    tier.renew(&k, entry(&k)).await.unwrap();
    let stored = tier.get(&k).await.unwrap().expect("stored");
    assert_eq!(decoded(&stored), k.to_string());
}

#[tokio::test]
async fn batches_default_to_one_call_per_key_in_order() {
    let tier = OnlyTheRequired::default();
    let (a, b, c) = (key("a"), key("b"), key("c"));
    tier.set_many(vec![(a.clone(), entry(&a)), (c.clone(), entry(&c))])
        .await
        .unwrap();
    assert_eq!(tier.size().await.unwrap().entries, 2);
    let got = tier.get_many(&[c.clone(), b, a.clone()]).await.unwrap();
    let got: Vec<Option<String>> = got.iter().map(Option::as_ref).map(value).collect();
    assert_eq!(
        got,
        [Some(c.to_string()), None, Some(a.to_string())],
        "one slot per key, in the order asked"
    );
    assert!(tier.get_many(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_other_provided_methods_do_nothing_and_say_so() {
    let tier = OnlyTheRequired::default();
    let k = key("a");
    tier.set(&k, entry(&k)).await.unwrap();
    assert_eq!(
        tier.purge().await.unwrap(),
        0,
        "nothing is purged by default"
    );
    assert_eq!(tier.size().await.unwrap().entries, 1);
    assert!(tier.compact().await.unwrap().is_none());
    assert_eq!(tier.schema_version(), None);
    assert_eq!(tier.max_ttl(), None);
    let mut called = false;
    let readiness = tier.get_ready(&k, &mut |_| called = true);
    assert_eq!(readiness, Readiness::NeedsIo);
    assert!(!called, "get_ready answered without being able to");
    match tier.set_ready(&k, entry(&k)) {
        SetReadiness::NeedsIo(back) => assert_eq!(decoded(&back), k.to_string()),
        SetReadiness::Done(_) => panic!("set_ready stored without being able to"),
    }
    assert!(tier.backplane().is_none());
}

#[test]
fn capability_names_list_what_is_set_in_declaration_order() {
    assert!(Capabilities::NONE.names().is_empty());
    let caps = Capabilities::new()
        .with_persistent()
        .with_scan()
        .with_answers_without_io()
        .with_reads_in_place();
    assert_eq!(
        caps.names(),
        ["persistent", "scan", "answers_without_io", "reads_in_place"]
    );
}

/// `Readiness::lend`: a read's entry (or its absence) is lent and answered;
/// a failed read is left to `get` without calling the reader.
#[test]
fn lend_answers_a_read_and_leaves_a_failed_one_to_get() {
    let key = Key::new("defaults", [("k", "lend")]);
    let stored = entry(&key);
    let mut seen = None;
    let readiness = Readiness::lend(Ok(Some(stored.clone())), &mut |found| {
        seen = Some(found.map(|e| e.header));
    });
    assert_eq!(readiness, Readiness::Answered);
    assert_eq!(seen, Some(Some(stored.header)));

    let mut seen = None;
    let readiness = Readiness::lend(Ok(None), &mut |found| seen = Some(found.is_some()));
    assert_eq!(readiness, Readiness::Answered);
    assert_eq!(seen, Some(false));

    let mut called = false;
    let failed = Err(tierstack_core::Error::new(
        tierstack_core::ErrorKind::Unavailable,
        "the store is gone",
    ));
    let readiness = Readiness::lend(failed, &mut |_| called = true);
    assert_eq!(readiness, Readiness::NeedsIo);
    assert!(!called, "a failed read called the reader");
}
