//! Every tier call that may do I/O runs in a `tracing` span named `tier`
//! (TRACE level) with the fields `tier` and `op`; the synchronous hot path
//! (`get_ready`, `set_ready` of the memory tier) has none.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tierstack::{
    ClearScope, Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Records the `tier` and `op` fields of every span named `tier`.
#[derive(Default, Clone)]
struct Spans {
    seen: Arc<Mutex<Vec<(String, String)>>>,
    next: Arc<AtomicU64>,
}

#[derive(Default)]
struct Fields {
    tier: String,
    op: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}").trim_matches('"').to_owned();
        match field.name() {
            "tier" => self.tier = text,
            "op" => self.op = text,
            _ => {}
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }
}

impl Subscriber for Spans {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, span: &Attributes<'_>) -> Id {
        if span.metadata().name() == "tier" {
            assert_eq!(*span.metadata().level(), tracing::Level::TRACE);
            let mut fields = Fields::default();
            span.record(&mut fields);
            self.seen.lock().unwrap().push((fields.tier, fields.op));
        }
        Id::from_u64(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Spans {
    fn take(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn key(name: &str) -> Key {
    Key::new("spans", [("k", name)])
}

#[test]
fn every_tier_call_that_may_do_io_is_in_a_tier_span_and_l1_hits_have_none() {
    let spans = Spans::default();
    let _default = tracing::subscriber::set_default(spans.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let cache = TieredCache::builder()
            .tier(MemoryTier::new(&MemoryConfig::with_max_entries(100)).unwrap())
            .tier(
                SqliteTier::open(&SqliteConfig::new(dir.path().join("s.db")), 1)
                    .await
                    .unwrap(),
            )
            .build();
        spans.take();

        // A write: the memory tier takes it synchronously, SQLite in a span.
        cache
            .set(&key("a"), "a".to_string(), Ttl::TierDefault)
            .await
            .unwrap();
        assert_eq!(spans.take(), [("sqlite".to_owned(), "set".to_owned())]);

        // An L1 hit: no span at all.
        assert!(cache.get::<String>(&key("a")).await.is_some());
        assert_eq!(spans.take(), []);

        // A miss reaches SQLite, in a span.
        assert!(cache.get::<String>(&key("absent")).await.is_none());
        let seen = spans.take();
        assert!(
            seen.contains(&("sqlite".to_owned(), "get".to_owned())),
            "{seen:?}"
        );

        // Deletes and clears go to every tier, each in its span.
        cache.delete(&key("a")).await.unwrap();
        let seen = spans.take();
        for tier in ["memory", "sqlite"] {
            assert!(
                seen.contains(&(tier.to_owned(), "delete".to_owned())),
                "{tier}: {seen:?}"
            );
        }
        cache.clear(ClearScope::All).await.unwrap();
        let seen = spans.take();
        for tier in ["memory", "sqlite"] {
            assert!(
                seen.contains(&(tier.to_owned(), "clear".to_owned())),
                "{tier}: {seen:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    });
}
