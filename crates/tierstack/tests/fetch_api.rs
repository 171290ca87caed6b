//! The fetch-closure API as users write it: a clonable client captured by
//! the closure, closures used more than once, the per-call context, and a
//! stale "not found" that callers needing a value must not get.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tierstack::{
    ErrorKind, FetchContext, FetchOptions, Fetched, Key, MemoryConfig, MemoryTier, SqliteConfig,
    SqliteTier, TieredCache, Ttl,
};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Book {
    asin: String,
    title: String,
}

#[derive(Debug, thiserror::Error)]
#[error("upstream answered 503")]
struct ApiError;

/// A client as users have them: cheap to clone, methods borrow `self`.
#[derive(Clone, Default)]
struct MetadataApi {
    calls: Arc<AtomicUsize>,
    down: bool,
}

impl MetadataApi {
    async fn book(&self, asin: &str) -> Result<Book, ApiError> {
        // A request takes a while: callers that arrive meanwhile wait for it.
        tokio::task::yield_now().await;
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down {
            return Err(ApiError);
        }
        Ok(Book {
            asin: asin.to_owned(),
            title: format!("Title of {asin}"),
        })
    }

    async fn books(&self, keys: &[Key]) -> Result<Vec<(Key, Option<Book>)>, ApiError> {
        let mut found = Vec::with_capacity(keys.len());
        for key in keys {
            let asin = key.params().unwrap_or_default()[0].1.clone();
            found.push((key.clone(), Some(self.book(&asin).await?)));
        }
        Ok(found)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn key(asin: &str) -> Key {
    Key::new("audnexus:book", [("asin", asin)])
}

async fn stack(
    dir: &std::path::Path,
    builder: impl FnOnce(tierstack::TieredCacheBuilder) -> tierstack::TieredCacheBuilder,
) -> TieredCache {
    let l1 = MemoryTier::new(&MemoryConfig::with_max_entries(1000)).unwrap();
    let l2 = SqliteTier::open(&SqliteConfig::new(dir.join("cache.db")), 1)
        .await
        .unwrap();
    builder(TieredCache::builder().tier(l1).tier(l2)).build()
}

#[tokio::test]
async fn a_closure_borrowing_the_client_is_one_line_and_the_client_stays_usable() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let api = MetadataApi::default();
    for asin in ["B1", "B2", "B1"] {
        let book = cache
            .get_or_fetch(&key(asin), Ttl::TierDefault, |_| api.book(asin))
            .await
            .unwrap();
        assert_eq!(book.asin, asin);
    }
    assert_eq!(api.calls(), 2, "the third call was a hit");
    // An async closure may borrow its own argument, the context.
    let book = cache
        .get_or_fetch(
            &key("B3"),
            Ttl::TierDefault,
            async |context: FetchContext| {
                let asin = context.key().params().unwrap_or_default()[0].1.clone();
                api.book(&asin).await
            },
        )
        .await
        .unwrap();
    assert_eq!(book.asin, "B3");
}

#[tokio::test]
async fn a_batch_closure_borrowing_the_client_runs_twice_with_only_the_missing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let api = MetadataApi::default();
    let first = [key("A"), key("B")];
    let got = cache
        .get_or_fetch_many(&first, Ttl::TierDefault, async |missing: Vec<Key>, _| {
            api.books(&missing).await
        })
        .await
        .unwrap();
    assert!(got.iter().all(Option::is_some));
    let second = [key("A"), key("B"), key("C")];
    let got = cache
        .get_or_fetch_many(&second, Ttl::TierDefault, async |missing: Vec<Key>, _| {
            assert_eq!(missing, [key("C")]);
            api.books(&missing).await
        })
        .await
        .unwrap();
    assert_eq!(got[2].as_ref().map(|b| b.asin.as_str()), Some("C"));
    assert_eq!(api.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_fn_loader_clones_the_client_and_is_called_for_every_miss() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b).await;
    let api = MetadataApi::default();
    let book = cache.cached_fn(|asin: &String| key(asin), {
        let api = api.clone();
        move |asin: String, _| {
            let api = api.clone();
            async move { api.book(&asin).await }
        }
    });
    // The cached function is Send: it can run on spawned tasks.
    let tasks: Vec<_> = ["X", "Y", "X"]
        .into_iter()
        .map(|asin| {
            let book = book.clone();
            tokio::spawn(async move { book.call(asin.to_owned()).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(api.calls() >= 2 && api.calls() <= 3, "{}", api.calls());
    assert_eq!(book.call("X".into()).await.unwrap().asin, "X");
    assert!(api.calls() <= 3);
}

#[tokio::test]
async fn the_context_names_the_key_and_says_whether_a_fallback_is_at_hand() {
    let dir = tempfile::tempdir().unwrap();
    let cache = stack(dir.path(), |b| b.stale_for(Duration::from_secs(60))).await;
    let seen = |context: FetchContext| async move {
        Ok::<_, ApiError>((context.key().to_string(), context.has_fallback()))
    };
    let cold = cache
        .get_or_fetch(&key("K"), Duration::from_millis(30), seen)
        .await
        .unwrap();
    assert_eq!(*cold, (key("K").to_string(), false));
    tokio::time::sleep(Duration::from_millis(80)).await;
    let expired = cache
        .get_or_fetch(&key("K"), Duration::from_millis(30), seen)
        .await
        .unwrap();
    assert_eq!(*expired, (key("K").to_string(), true));
    let batch = cache
        .get_or_fetch_many(
            &[key("K"), key("L")],
            Ttl::TierDefault,
            |missing, context| async move {
                Ok::<_, ApiError>(
                    missing
                        .iter()
                        .map(|k| (k.clone(), Some((k.to_string(), context.has_fallback(k)))))
                        .collect(),
                )
            },
        )
        .await
        .unwrap();
    assert_eq!(batch[1].as_deref(), Some(&(key("L").to_string(), false)));
}

/// A cache whose only fallback for `key("GONE")` is a stale "not found".
async fn with_a_stale_not_found(dir: &std::path::Path) -> TieredCache {
    let cache = stack(dir, |b| {
        b.stale_for(Duration::from_secs(60))
            .negative_ttl(Duration::from_millis(30))
    })
    .await;
    let absent = cache
        .get_or_fetch_optional(&key("GONE"), Ttl::TierDefault, |_| async {
            Ok::<Option<Book>, ApiError>(None)
        })
        .await
        .unwrap();
    assert!(absent.is_none());
    tokio::time::sleep(Duration::from_millis(80)).await;
    cache
}

#[tokio::test]
async fn a_stale_not_found_is_no_fallback_for_a_failing_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let cache = with_a_stale_not_found(dir.path()).await;
    let api = MetadataApi {
        down: true,
        ..MetadataApi::default()
    };
    let err = cache
        .get_or_fetch(&key("GONE"), Ttl::TierDefault, |_| api.book("GONE"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fetch, "{err:?}");
    assert!(err.source_as::<ApiError>().is_some(), "{err:?}");
    assert_eq!(cache.stats().sources["audnexus:book"].stale_served, 0);
}

#[tokio::test]
async fn a_stale_not_found_does_not_arm_the_soft_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let cache = with_a_stale_not_found(dir.path()).await;
    let options = FetchOptions::ttl(Ttl::TierDefault).soft_timeout(Duration::from_millis(10));
    let got = cache
        .get_or_fetch_with(&key("GONE"), options, |_| async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, ApiError>("found after all".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(
        got,
        Fetched::Fetched(Arc::new("found after all".to_owned()))
    );
    assert_eq!(cache.stats().sources["audnexus:book"].stale_served, 0);
}

#[tokio::test]
async fn offline_a_stale_not_found_is_unavailable_for_callers_that_need_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let cache = with_a_stale_not_found(dir.path()).await;
    cache.set_offline(true);
    let err = cache
        .get_or_fetch(&key("GONE"), Ttl::TierDefault, |_| async {
            Ok::<_, ApiError>("never asked".to_owned())
        })
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err:?}");
    assert_eq!(cache.stats().sources["audnexus:book"].stale_served, 0);
    // Callers that can take "not found" still get the stale answer.
    let absent = cache
        .get_or_fetch_optional(&key("GONE"), Ttl::TierDefault, |_| async {
            Ok::<Option<String>, ApiError>(Some("never asked".to_owned()))
        })
        .await
        .unwrap();
    assert!(absent.is_none());
}
