//! Codecs and compression on realistic metadata records (~3 KB of JSON per
//! book), each next to the raw library call it wraps, in one run. The
//! compression ratios are printed at the start.
//!
//! - encode / decode: `rmp_serde`, `serde_json`, `bincode` called directly
//!   vs `tierstack::Codec`;
//! - zstd level 3 and zstd with a trained dictionary: a reused
//!   `zstd::bulk::Compressor` vs `tierstack::Compression::compress`;
//! - a whole entry read: raw decompress + decode vs `Entry::decode_value`
//!   (which also verifies the body checksum).
#![allow(missing_docs)]
// Sizes and ratios for printing; small test data.
#![allow(clippy::cast_precision_loss, clippy::cast_sign_loss)]

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tierstack::{
    Codec, Compression, DecodeLimits, Dictionaries, Dictionary, Entry, EntryMeta, Key, Timestamp,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Chapter {
    title: String,
    start_ms: u64,
    length_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
    subtitle: Option<String>,
    authors: Vec<String>,
    narrators: Vec<String>,
    publisher: String,
    release_date: String,
    language: String,
    genres: Vec<String>,
    series: Option<(String, u32)>,
    runtime_minutes: u32,
    rating: f32,
    description: String,
    chapters: Vec<Chapter>,
}

const WORDS: &[&str] = &[
    "desert",
    "spice",
    "empire",
    "house",
    "prophecy",
    "water",
    "storm",
    "sand",
    "navigator",
    "guild",
    "throne",
    "betrayal",
    "journey",
    "memory",
    "machine",
    "ocean",
    "city",
    "war",
];

fn book(i: u64) -> Book {
    let word = |n: u64| WORDS[(n % WORDS.len() as u64) as usize];
    let description = (0..300)
        .map(|n| word(i * 7 + n * 13))
        .collect::<Vec<_>>()
        .join(" ");
    Book {
        asin: format!("B{i:09}"),
        title: format!("The {} of the {}", word(i), word(i + 3)),
        subtitle: (i % 3 == 0).then(|| format!("Book {} of the {} Cycle", i % 7, word(i + 5))),
        authors: vec![format!("Author {}", i % 97)],
        narrators: vec![
            format!("Narrator {}", i % 31),
            format!("Narrator {}", i % 17),
        ],
        publisher: format!("Publisher {}", i % 11),
        release_date: format!("20{:02}-{:02}-{:02}", i % 25, i % 12 + 1, i % 28 + 1),
        language: "english".to_owned(),
        genres: vec!["Science Fiction".to_owned(), "Fantasy".to_owned()],
        series: Some((format!("{} Saga", word(i + 1)), (i % 9) as u32)),
        runtime_minutes: 600 + (i % 300) as u32,
        rating: 4.0 + (i % 10) as f32 / 10.0,
        description,
        chapters: (0..12)
            .map(|c| Chapter {
                title: format!("Chapter {c}"),
                start_ms: c * 1_800_000,
                length_ms: 1_800_000,
            })
            .collect(),
    }
}

fn meta() -> EntryMeta {
    EntryMeta::new(&Key::bare("audnexus:book"), 1, Timestamp::now())
}

fn codecs(c: &mut Criterion) {
    let record = book(42);
    let json = serde_json::to_vec(&record).expect("json");
    let msgpack = rmp_serde::to_vec_named(&record).expect("msgpack");
    let bincode_config = bincode::config::standard();
    let bincode_bytes = bincode::serde::encode_to_vec(&record, bincode_config).expect("bincode");
    println!(
        "record sizes: json {} B, msgpack {} B, bincode {} B",
        json.len(),
        msgpack.len(),
        bincode_bytes.len()
    );

    let mut group = c.benchmark_group("codec/encode_msgpack");
    group.bench_function("raw", |b| {
        b.iter(|| rmp_serde::to_vec_named(&record).expect("encode"));
    });
    group.bench_function("tierstack", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            Codec::MsgPack.encode(&record, &mut out).expect("encode");
            out
        });
    });
    group.finish();

    let mut group = c.benchmark_group("codec/decode_msgpack");
    group.bench_function("raw", |b| {
        b.iter(|| rmp_serde::from_slice::<Book>(&msgpack).expect("decode"));
    });
    group.bench_function("tierstack", |b| {
        b.iter(|| Codec::MsgPack.decode::<Book>(&msgpack).expect("decode"));
    });
    group.finish();

    let mut group = c.benchmark_group("codec/encode_json");
    group.bench_function("raw", |b| {
        b.iter(|| serde_json::to_vec(&record).expect("encode"));
    });
    group.bench_function("tierstack", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            Codec::Json.encode(&record, &mut out).expect("encode");
            out
        });
    });
    group.finish();

    let mut group = c.benchmark_group("codec/decode_json");
    group.bench_function("raw", |b| {
        b.iter(|| serde_json::from_slice::<Book>(&json).expect("decode"));
    });
    group.bench_function("tierstack", |b| {
        b.iter(|| Codec::Json.decode::<Book>(&json).expect("decode"));
    });
    group.finish();

    let mut group = c.benchmark_group("codec/encode_bincode");
    group.bench_function("raw", |b| {
        b.iter(|| bincode::serde::encode_to_vec(&record, bincode_config).expect("encode"));
    });
    group.bench_function("tierstack", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            Codec::Bincode.encode(&record, &mut out).expect("encode");
            out
        });
    });
    group.finish();

    let mut group = c.benchmark_group("codec/decode_bincode");
    group.bench_function("raw", |b| {
        b.iter(|| {
            bincode::serde::decode_from_slice::<Book, _>(&bincode_bytes, bincode_config)
                .expect("decode")
        });
    });
    group.bench_function("tierstack", |b| {
        b.iter(|| {
            Codec::Bincode
                .decode::<Book>(&bincode_bytes)
                .expect("decode")
        });
    });
    group.finish();
}

fn compression(c: &mut Criterion) {
    let samples: Vec<Vec<u8>> = (0..500)
        .map(|i| rmp_serde::to_vec_named(&book(i)).expect("sample"))
        .collect();
    let dictionary = Dictionary::train(&samples, 16 * 1024).expect("train");
    let raw = rmp_serde::to_vec_named(&book(4242)).expect("record");
    let zstd3 = Compression::Zstd {
        level: 3,
        min_size: 0,
    };
    let with_dict = Compression::ZstdDict {
        level: 3,
        min_size: 0,
        dictionary: dictionary.clone(),
    };
    let (_, _, plain) = zstd3.compress(raw.clone()).expect("zstd");
    let (_, _, dicted) = with_dict.compress(raw.clone()).expect("zstd dict");
    println!(
        "msgpack record {} B: zstd 3 -> {} B ({:.2}x), zstd 3 + 16 KiB dictionary -> {} B ({:.2}x)",
        raw.len(),
        plain.len(),
        raw.len() as f64 / plain.len() as f64,
        dicted.len(),
        raw.len() as f64 / dicted.len() as f64
    );

    let mut compressor = zstd::bulk::Compressor::new(3).expect("compressor");
    let mut group = c.benchmark_group("compression/zstd3");
    group.bench_function("raw", |b| {
        b.iter(|| compressor.compress(&raw).expect("compress"));
    });
    group.bench_function("tierstack", |b| {
        b.iter_batched(
            || raw.clone(),
            |input| zstd3.compress(input).expect("compress"),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    let mut dict_compressor =
        zstd::bulk::Compressor::with_dictionary(3, dictionary.bytes()).expect("compressor");
    let mut group = c.benchmark_group("compression/zstd3_dictionary");
    group.bench_function("raw", |b| {
        b.iter(|| dict_compressor.compress(&raw).expect("compress"));
    });
    group.bench_function("tierstack", |b| {
        b.iter_batched(
            || raw.clone(),
            |input| with_dict.compress(input).expect("compress"),
            BatchSize::SmallInput,
        );
    });
    group.finish();

    // A whole read of a compressed entry: decompress and decode.
    let entry = Entry::encode(
        &book(4242),
        Codec::MsgPack,
        &zstd3,
        meta(),
        DecodeLimits::default(),
    )
    .expect("entry");
    let dictionaries = Dictionaries::default();
    let mut decompressor = zstd::bulk::Decompressor::new().expect("decompressor");
    let mut group = c.benchmark_group("compression/read_zstd3_entry");
    group.bench_function("raw_decompress_decode", |b| {
        b.iter(|| {
            let bytes = decompressor
                .decompress(&entry.body, raw.len())
                .expect("decompress");
            rmp_serde::from_slice::<Book>(&bytes).expect("decode")
        });
    });
    group.bench_function("tierstack", |b| {
        b.iter(|| {
            entry
                .decode_value::<Book>(DecodeLimits::default(), &dictionaries)
                .expect("decode")
        });
    });
    group.finish();
}

criterion_group!(benches, codecs, compression);
criterion_main!(benches);
