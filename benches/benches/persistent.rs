//! The persistent tiers next to the raw libraries beneath them, in one run.
//!
//! For each store the raw floor does the same work the tier must do:
//! - get: read the stored bytes of one key and decode the value with the
//!   same codec (MessagePack) — `raw` vs `cache` (`TieredCache::get` over the
//!   tier alone: lookup, header and checksum checks, decode);
//! - set: store one value durably — raw autocommit UPSERT / insert+commit vs
//!   `cache` (encode, header, group-commit round trip);
//! - set_many(1000): 1000 pre-encoded values in one transaction vs
//!   `Tier::set_many` of 1000 entries.
#![allow(missing_docs)]
// Bench bodies are long lists of measured closures, named as criterion's examples name them.
#![allow(clippy::too_many_lines, clippy::many_single_char_names)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

mod common;
use common::{Book, KEYS, book, entry, key, runtime};
use tierstack::{
    Codec, Compression, RedbConfig, RedbTier, SledConfig, SledTier, SqliteConfig, SqliteTier, Tier,
    TieredCache, Ttl,
};

fn cache_over(tier: Arc<dyn Tier>) -> TieredCache {
    TieredCache::builder()
        .compression(Compression::None)
        .shared_tier(tier)
        .build()
}

fn sqlite(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let tier: Arc<dyn Tier> = Arc::new(
        rt.block_on(SqliteTier::open(
            &SqliteConfig::new(dir.path().join("tier.db")),
            1,
        ))
        .expect("tier"),
    );
    let cache = cache_over(Arc::clone(&tier));
    let raw = rusqlite::Connection::open(dir.path().join("raw.db")).expect("raw");
    raw.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE TABLE metadata_cache (cache_key TEXT PRIMARY KEY, source TEXT NOT NULL, data JSON NOT NULL,
             expires_at TIMESTAMP NOT NULL, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);",
    )
    .expect("schema");
    let upsert = "INSERT INTO metadata_cache (cache_key, source, data, expires_at) VALUES (?1, ?2, ?3, ?4)
                  ON CONFLICT (cache_key) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at";
    rt.block_on(async {
        for i in 0..KEYS {
            cache
                .set(&key(i), book(i), Ttl::TierDefault)
                .await
                .expect("set");
        }
    });
    for i in 0..KEYS {
        let e = entry(i);
        raw.execute(
            upsert,
            (key(i).as_str(), "audnexus:book", &e.body[..], i64::MAX),
        )
        .expect("raw set");
    }

    let n = AtomicU64::new(0);
    let next = || n.fetch_add(1, Ordering::Relaxed) % KEYS;
    let mut group = c.benchmark_group("sqlite/get");
    group.bench_function("raw_select_decode", |b| {
        b.iter(|| {
            let k = key(next());
            let mut stmt = raw
                .prepare_cached("SELECT data FROM metadata_cache WHERE cache_key = ?1")
                .expect("prepare");
            let bytes: Vec<u8> = stmt.query_row([k.as_str()], |r| r.get(0)).expect("row");
            rmp_serde::from_slice::<Book>(&bytes).expect("decode")
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            let k = key(next());
            let cache = &cache;
            async move { cache.get::<Book>(&k).await.expect("hit") }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("sqlite/set");
    group.bench_function("raw_upsert", |b| {
        b.iter(|| {
            let i = next();
            let mut body = Vec::new();
            Codec::MsgPack.encode(&book(i), &mut body).expect("encode");
            raw.prepare_cached(upsert)
                .expect("prepare")
                .execute((key(i).as_str(), "audnexus:book", &body[..], i64::MAX))
                .expect("upsert")
        });
    });
    // The row above binds the bytes the row already holds, and SQLite then
    // skips the page write (an overwrite with identical content leaves the
    // page clean: `strace` shows no WAL frame per call). A hand-written
    // cache binds a new expiry on each write, as the tier binds new times;
    // this row is that floor.
    group.bench_function("raw_upsert_fresh_expiry", |b| {
        b.iter(|| {
            let i = next();
            let mut body = Vec::new();
            Codec::MsgPack.encode(&book(i), &mut body).expect("encode");
            raw.prepare_cached(upsert)
                .expect("prepare")
                .execute((key(i).as_str(), "audnexus:book", &body[..], expiry()))
                .expect("upsert")
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            let i = next();
            let cache = &cache;
            async move {
                cache
                    .set(&key(i), book(i), Ttl::TierDefault)
                    .await
                    .expect("set");
            }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("sqlite/set_many_1000");
    group.sample_size(20);
    let batch = || (0..KEYS).map(|i| (key(i), entry(i))).collect::<Vec<_>>();
    group.bench_function("raw_one_transaction", |b| {
        b.iter_batched(
            batch,
            |entries| {
                let tx = raw.unchecked_transaction().expect("tx");
                {
                    let mut stmt = tx.prepare_cached(upsert).expect("prepare");
                    for (k, e) in &entries {
                        stmt.execute((k.as_str(), "audnexus:book", &e.body[..], i64::MAX))
                            .expect("upsert");
                    }
                }
                tx.commit().expect("commit");
            },
            BatchSize::LargeInput,
        );
    });
    // See `raw_upsert_fresh_expiry`: the rows get a new expiry, so the
    // pages are written, as the tier's rows (new times) are.
    group.bench_function("raw_one_transaction_fresh_expiry", |b| {
        b.iter_batched(
            batch,
            |entries| {
                let tx = raw.unchecked_transaction().expect("tx");
                {
                    let expires = expiry();
                    let mut stmt = tx.prepare_cached(upsert).expect("prepare");
                    for (k, e) in &entries {
                        stmt.execute((k.as_str(), "audnexus:book", &e.body[..], expires))
                            .expect("upsert");
                    }
                }
                tx.commit().expect("commit");
            },
            BatchSize::LargeInput,
        );
    });
    group.bench_function("tier", |b| {
        b.to_async(&rt).iter_batched(
            batch,
            |entries| {
                let tier = &tier;
                async move { tier.set_many(entries).await.expect("set_many") }
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

/// Seven days from now in Unix milliseconds, a new value on every call
/// (the clock moves between calls; the counter makes sure of it).
fn expiry() -> i64 {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    now + 7 * 86_400_000 + CALLS.fetch_add(1, Ordering::Relaxed) as i64
}

fn redb(c: &mut Criterion) {
    const RAW: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("raw");
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let tier: Arc<dyn Tier> = Arc::new(
        rt.block_on(RedbTier::open(
            &RedbConfig::new(dir.path().join("tier.redb")),
            1,
        ))
        .expect("tier"),
    );
    let cache = cache_over(Arc::clone(&tier));
    let raw = redb::Database::create(dir.path().join("raw.redb")).expect("raw");
    rt.block_on(async {
        let entries = (0..KEYS).map(|i| (key(i), entry(i))).collect();
        tier.set_many(entries).await.expect("fill");
    });
    {
        let txn = raw.begin_write().expect("txn");
        {
            let mut t = txn.open_table(RAW).expect("table");
            for i in 0..KEYS {
                t.insert(key(i).as_str(), &entry(i).body[..])
                    .expect("insert");
            }
        }
        txn.commit().expect("commit");
    }
    let n = AtomicU64::new(0);
    let next = || n.fetch_add(1, Ordering::Relaxed) % KEYS;
    let mut group = c.benchmark_group("redb/get");
    group.bench_function("raw_get_decode", |b| {
        use redb::ReadableDatabase as _;
        b.iter(|| {
            let k = key(next());
            let txn = raw.begin_read().expect("read");
            let t = txn.open_table(RAW).expect("table");
            let v = t.get(k.as_str()).expect("get").expect("hit");
            rmp_serde::from_slice::<Book>(v.value()).expect("decode")
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            let k = key(next());
            let cache = &cache;
            async move { cache.get::<Book>(&k).await.expect("hit") }
        });
    });
    group.finish();

    let mut group = c.benchmark_group("redb/set");
    group.bench_function("raw_insert_commit", |b| {
        b.iter(|| {
            let i = next();
            let mut body = Vec::new();
            Codec::MsgPack.encode(&book(i), &mut body).expect("encode");
            let txn = raw.begin_write().expect("txn");
            txn.open_table(RAW)
                .expect("table")
                .insert(key(i).as_str(), &body[..])
                .expect("insert");
            txn.commit().expect("commit");
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            let i = next();
            let cache = &cache;
            async move {
                cache
                    .set(&key(i), book(i), Ttl::TierDefault)
                    .await
                    .expect("set");
            }
        });
    });
    group.finish();
}

fn sled(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    let tier: Arc<dyn Tier> =
        Arc::new(SledTier::open(&SledConfig::new(dir.path().join("tier")), 1).expect("tier"));
    let cache = cache_over(Arc::clone(&tier));
    let raw = sled::open(dir.path().join("raw")).expect("raw");
    rt.block_on(async {
        let entries = (0..KEYS).map(|i| (key(i), entry(i))).collect();
        tier.set_many(entries).await.expect("fill");
    });
    for i in 0..KEYS {
        raw.insert(key(i).as_str(), &entry(i).body[..])
            .expect("insert");
    }
    let n = AtomicU64::new(0);
    let next = || n.fetch_add(1, Ordering::Relaxed) % KEYS;
    let mut group = c.benchmark_group("sled/get");
    group.bench_function("raw_get_decode", |b| {
        b.iter(|| {
            let k = key(next());
            let v = raw.get(k.as_str()).expect("get").expect("hit");
            rmp_serde::from_slice::<Book>(&v).expect("decode")
        });
    });
    group.bench_function("cache", |b| {
        b.to_async(&rt).iter(|| {
            let k = key(next());
            let cache = &cache;
            async move { cache.get::<Book>(&k).await.expect("hit") }
        });
    });
    group.finish();
}

criterion_group!(benches, sqlite, redb, sled);
criterion_main!(benches);
