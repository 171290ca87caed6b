//! The memory tier's hit ratio next to raw moka's (TinyLFU) on the same
//! generated traces: Zipf(1.0) and Zipf(1.0) polluted by one-off scans, at a
//! capacity of 1% and 10% of the keys. Fails if the tier is more than one
//! point worse on any of them; prints every pair.
//!
//! Size: 20,000 keys and 200,000 requests by default (CI);
//! `TIERSTACK_HIT_RATIO_FULL=1` runs 100,000 keys and 1,000,000 requests.

use std::time::Duration;

use tierstack_core::{Codec, Compression, DecodeLimits, Entry, EntryMeta, Key, Tier, Timestamp};
use tierstack_memory::{MemoryConfig, MemoryTier};

/// A xorshift generator: the traces are the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    #[allow(clippy::cast_precision_loss)]
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Key ids drawn with probability proportional to 1 / rank^s. Ranks are
/// scattered over the ids so that hot keys do not sit together.
#[allow(clippy::cast_precision_loss)]
fn zipf(keys: usize, requests: usize, s: f64, seed: u64) -> Vec<usize> {
    let mut cdf = Vec::with_capacity(keys);
    let mut total = 0.0;
    for rank in 1..=keys {
        total += 1.0 / (rank as f64).powf(s);
        cdf.push(total);
    }
    let mut rng = Rng(seed);
    (0..requests)
        .map(|_| {
            let u = rng.unit() * total;
            let rank = cdf.partition_point(|&c| c < u).min(keys - 1);
            rank.wrapping_mul(7919) % keys
        })
        .collect()
}

/// Zipf(1.0), with every tenth block of 1% of the requests interleaved with
/// keys that are asked once and never again (a scan).
fn scan_polluted(keys: usize, requests: usize, seed: u64) -> Vec<usize> {
    let block = (requests / 100).max(1);
    let mut next_one_off = keys;
    let mut out = Vec::with_capacity(requests);
    for (i, id) in zipf(keys, requests, 1.0, seed).into_iter().enumerate() {
        out.push(id);
        if (i / block) % 10 == 9 {
            out.push(next_one_off);
            next_one_off += 1;
        }
    }
    out.truncate(requests);
    out
}

#[allow(clippy::cast_precision_loss)]
fn ratio(hits: usize, trace: &[usize]) -> f64 {
    hits as f64 / trace.len() as f64
}

fn moka_hit_ratio(trace: &[usize], capacity: u64) -> f64 {
    let cache: moka::sync::Cache<usize, ()> = moka::sync::Cache::builder()
        .max_capacity(capacity)
        .time_to_live(Duration::from_secs(3600))
        .build();
    let mut hits = 0;
    for &id in trace {
        if cache.get(&id).is_some() {
            hits += 1;
        } else {
            cache.insert(id, ());
        }
    }
    ratio(hits, trace)
}

async fn tier_hit_ratio(trace: &[usize], keys: &[Key], capacity: u64) -> f64 {
    let tier = MemoryTier::new(&MemoryConfig::with_max_entries(capacity)).expect("tier");
    let expires = Timestamp::now().saturating_add(Duration::from_secs(3600));
    let meta = EntryMeta::new(&keys[0], 1, Timestamp::now()).expiring(expires, expires);
    let entry = Entry::encode(
        &"value",
        Codec::MsgPack,
        &Compression::None,
        meta,
        DecodeLimits::default(),
    )
    .expect("encodes");
    let mut hits = 0;
    for &id in trace {
        let mut held = false;
        let _ = tier.get_ready(&keys[id], &mut |e| held = e.is_some());
        if held {
            hits += 1;
        } else {
            tier.set(&keys[id], entry.clone()).await.expect("set");
        }
    }
    ratio(hits, trace)
}

#[tokio::test]
async fn hit_ratio_is_within_one_point_of_moka_on_zipf_and_scan_traces() {
    let full = std::env::var_os("TIERSTACK_HIT_RATIO_FULL").is_some();
    let (keys, requests) = if full {
        (100_000, 1_000_000)
    } else {
        (20_000, 200_000)
    };
    let traces = [
        ("zipf(1.0)", zipf(keys, requests, 1.0, 7)),
        ("zipf(1.0) + scans", scan_polluted(keys, requests, 11)),
    ];
    let longest = traces
        .iter()
        .flat_map(|(_, t)| t.iter())
        .max()
        .copied()
        .unwrap_or(0);
    let key_of: Vec<Key> = (0..=longest)
        .map(|id| Key::new("trace", [("id", id)]))
        .collect();
    let mut worse = Vec::new();
    for (name, trace) in &traces {
        for percent in [1u64, 10] {
            let capacity = keys as u64 * percent / 100;
            let moka = moka_hit_ratio(trace, capacity);
            let ours = tier_hit_ratio(trace, &key_of, capacity).await;
            println!(
                "{name}, capacity {percent}% of {keys} keys, {requests} requests: memory tier {:.2}%, raw moka {:.2}%",
                ours * 100.0,
                moka * 100.0
            );
            if ours < moka - 0.01 {
                worse.push(format!("{name} at {percent}%: {ours:.4} vs moka {moka:.4}"));
            }
        }
    }
    assert!(
        worse.is_empty(),
        "more than one point worse than moka: {worse:?}"
    );
}
