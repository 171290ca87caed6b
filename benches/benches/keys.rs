//! `Key::new` next to the `format!` a user would write by hand for the same
//! key, in one run.
//!
//! The `format!` rows are the floor: they neither sort, escape, normalise
//! nor hash, so the ratio is what the key's guarantees (injective, NFC,
//! bounded length, hash cached for the entry check) cost on top.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use tierstack::Key;

const ASINS: usize = 1000;

fn keys(c: &mut Criterion) {
    let asins: Vec<String> = (0..ASINS).map(|i| format!("B{i:09}")).collect();
    let queries: Vec<(String, String, String)> = (0..ASINS)
        .map(|i| {
            (
                format!("dune {i}"),
                format!("herbert{}", i % 97),
                (i % 7).to_string(),
            )
        })
        .collect();
    let mut n = 0usize;
    let mut next = move || {
        n = (n + 1) % ASINS;
        n
    };

    let mut group = c.benchmark_group("key");
    group.bench_function("format_one_param", |b| {
        b.iter(|| {
            let asin = black_box(asins[next()].as_str());
            format!("audnexus:book:asin={asin}")
        });
    });
    group.bench_function("new_one_param", |b| {
        b.iter(|| {
            let asin = black_box(asins[next()].as_str());
            Key::new("audnexus:book", [("asin", asin)])
        });
    });
    group.bench_function("format_three_params", |b| {
        b.iter(|| {
            let (q, author, page) = black_box(&queries[next()]);
            format!("audnexus:search:author={author}&page={page}&q={q}")
        });
    });
    group.bench_function("new_three_params", |b| {
        b.iter(|| {
            let (q, author, page) = black_box(&queries[next()]);
            Key::new(
                "audnexus:search",
                [("q", q), ("author", author), ("page", page)],
            )
        });
    });
    // Not a target row: the builder keeps owned copies of what it is given.
    group.bench_function("builder_three_params", |b| {
        b.iter(|| {
            let (q, author, page) = black_box(&queries[next()]);
            Key::builder("audnexus:search")
                .param("q", q)
                .param("author", author)
                .param("page", page)
                .build()
        });
    });
    group.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
