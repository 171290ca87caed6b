//! Backend choices side by side: every config file in `benches/configs/`
//! (or the files `TIERSTACK_BENCH_CONFIGS` lists, separated by `:`) is
//! built into a cache and benchmarked as one line of the same groups, one
//! group per operation (`configs/get_hit`, `configs/get_miss`,
//! `configs/set`, `configs/mixed`), through `tierstack-bench`.
//!
//! In a config, `{dir}` is a fresh temporary directory, `{redis}` the URL
//! of a `redis-server` the bench starts (or `TIERSTACK_REDIS_URL`), and
//! `{prefix}` a Redis namespace of this run's own.
#![allow(missing_docs)]

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use tierstack::{Config, TieredCache};
use tierstack_bench::{Distribution, Workload, bench_stacks};
use tierstack_conformance::redis_server::{RedisServer, unique_prefix};

fn config_files() -> Vec<PathBuf> {
    if let Ok(list) = std::env::var("TIERSTACK_BENCH_CONFIGS") {
        return std::env::split_paths(&list).collect();
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "toml" || ext == "json")
        })
        .collect();
    files.sort();
    files
}

fn configs(c: &mut Criterion) {
    let rt = common::runtime();
    let files = config_files();
    let needs_redis = files
        .iter()
        .any(|file| std::fs::read_to_string(file).is_ok_and(|text| text.contains("{redis}")));
    let redis = needs_redis.then(RedisServer::shared_or_start);
    let mut dirs = Vec::new();
    let mut stacks: Vec<(String, TieredCache)> = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let dir = tempfile::tempdir().expect("dir");
        let text = text
            .replace("{dir}", &dir.path().display().to_string())
            .replace("{redis}", redis.as_ref().map_or("", RedisServer::url))
            .replace("{prefix}", &unique_prefix("configs"));
        let format = file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("yaml")
            .to_owned();
        let config = Config::parse(&text, &format)
            .unwrap_or_else(|e| panic!("{}: {}", file.display(), e.report()));
        let cache = rt
            .block_on(TieredCache::from_config(&config))
            .unwrap_or_else(|e| panic!("{}: {}", file.display(), e.report()));
        let name = file.file_stem().map_or_else(
            || file.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        stacks.push((name, cache));
        dirs.push(dir);
    }
    let stacks: Vec<(&str, TieredCache)> = stacks
        .iter()
        .map(|(name, cache)| (name.as_str(), cache.clone()))
        .collect();
    let workload = Workload::default()
        .keys(1000)
        .distribution(Distribution::Zipf(1.0));
    bench_stacks(c, &rt, "configs", &workload, &stacks);
}

mod common;

criterion_group!(benches, configs);
criterion_main!(benches);
