#![doc = include_str!("../README.md")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tierstack::{Key, TieredCache, Ttl};

/// Which keys the reads pick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Every key as likely as any other.
    Uniform,
    /// Key of rank `r` with probability proportional to `1 / r^s`
    /// (`Zipf(1.0)` is the usual "a few keys are most of the reads").
    Zipf(f64),
}

/// What the benchmarked operations do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Workload {
    /// Bytes of each value.
    pub value_size: usize,
    /// Keys written before the run.
    pub keys: u64,
    /// Which keys the reads pick.
    pub distribution: Distribution,
    /// The `mixed` group: percent of reads of present keys, of writes and
    /// of reads of absent keys (they are scaled to their sum).
    pub mix: (u32, u32, u32),
    /// Keys per batch read; a `get_many_N` group when above 1.
    pub batch: usize,
    /// Tasks issuing operations at once.
    pub concurrency: usize,
}

impl Default for Workload {
    fn default() -> Self {
        Self {
            value_size: 512,
            keys: 1000,
            distribution: Distribution::Uniform,
            mix: (90, 10, 0),
            batch: 1,
            concurrency: 1,
        }
    }
}

impl Workload {
    /// Sets the value size in bytes.
    #[must_use]
    pub fn value_size(mut self, bytes: usize) -> Self {
        self.value_size = bytes;
        self
    }

    /// Sets the number of keys (at least 1).
    #[must_use]
    pub fn keys(mut self, keys: u64) -> Self {
        self.keys = keys.max(1);
        self
    }

    /// Sets the read distribution.
    #[must_use]
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }

    /// Sets the `mixed` group's percent of hits, writes and misses.
    #[must_use]
    pub fn mix(mut self, reads: u32, writes: u32, misses: u32) -> Self {
        self.mix = (reads, writes, misses);
        self
    }

    /// Sets the keys per batch read.
    #[must_use]
    pub fn batch(mut self, keys: usize) -> Self {
        self.batch = keys.max(1);
        self
    }

    /// Sets the number of concurrent tasks.
    #[must_use]
    pub fn concurrency(mut self, tasks: usize) -> Self {
        self.concurrency = tasks.max(1);
        self
    }
}

/// The operations of one run, made before it: keys in the order the reads
/// take them, absent keys, the value, the `mixed` sequence.
struct Plan {
    reads: Vec<Key>,
    absent: Vec<Key>,
    written: Vec<Key>,
    value: String,
    mixed: Vec<Op>,
    batch: usize,
    concurrency: usize,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Hit,
    Write,
    Miss,
}

/// Reads drawn per run, cycled; enough that the pattern is not a handful
/// of keys, few enough to stay in cache.
const SEQUENCE: usize = 4096;

fn key(source: &str, id: u64) -> Key {
    Key::new(source, [("id", id)])
}

impl Plan {
    fn new(workload: &Workload) -> Self {
        let keys = workload.keys.max(1);
        let ids = draw(keys, workload.distribution, SEQUENCE);
        let (reads, writes, misses) = workload.mix;
        let total = (reads + writes + misses).max(1);
        // 100 slots in proportion, interleaved so runs of one kind are short.
        let mut mixed = Vec::with_capacity(100);
        for slot in 0..100u32 {
            let point = (slot * 37 % 100) * total / 100;
            mixed.push(if point < reads {
                Op::Hit
            } else if point < reads + writes {
                Op::Write
            } else {
                Op::Miss
            });
        }
        Self {
            reads: ids.iter().map(|&id| key("bench", id)).collect(),
            absent: (0..SEQUENCE as u64)
                .map(|id| key("bench:absent", id))
                .collect(),
            written: (0..keys).map(|id| key("bench", id)).collect(),
            value: "v".repeat(workload.value_size),
            mixed,
            batch: workload.batch,
            concurrency: workload.concurrency,
        }
    }
}

/// `count` key ids in `0..keys`, drawn by `distribution` with a fixed seed.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)] // a unit in [0, 1) times a key count
fn draw(keys: u64, distribution: Distribution, count: usize) -> Vec<u64> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut unit = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    match distribution {
        Distribution::Uniform => (0..count)
            .map(|_| ((unit() * keys as f64) as u64).min(keys - 1))
            .collect(),
        Distribution::Zipf(s) => {
            let mut cdf = Vec::with_capacity(keys as usize);
            let mut total = 0.0;
            for rank in 1..=keys {
                total += 1.0 / (rank as f64).powf(s);
                cdf.push(total);
            }
            (0..count)
                .map(|_| {
                    let u = unit() * total;
                    let rank = cdf.partition_point(|&c| c < u) as u64;
                    // Ranks scattered over the ids: hot keys not adjacent.
                    rank.min(keys - 1).wrapping_mul(7919) % keys
                })
                .collect()
        }
    }
}

/// Registers, for each operation, a criterion group `{name}/{operation}`
/// with one function per stack: `get_hit`, `get_miss`, `set`, `mixed`,
/// and `get_many_{batch}` when the batch is above 1. Every stack is filled
/// with the workload's keys first.
///
/// # Panics
///
/// When a stack cannot store the workload's values (a benchmark of a
/// broken stack measures nothing), or a read the workload expects to hit
/// misses.
pub fn bench_stacks(
    c: &mut Criterion,
    rt: &tokio::runtime::Runtime,
    name: &str,
    workload: &Workload,
    stacks: &[(&str, TieredCache)],
) {
    let plan = Arc::new(Plan::new(workload));
    for (stack, cache) in stacks {
        rt.block_on(async {
            for key in &plan.written {
                cache
                    .set(key, plan.value.clone(), Ttl::TierDefault)
                    .await
                    .unwrap_or_else(|e| panic!("{stack}: filling {key}: {}", e.report()));
            }
        });
    }
    let mut groups = vec![
        ("get_hit".to_owned(), Run::One(Op::Hit)),
        ("get_miss".to_owned(), Run::One(Op::Miss)),
        ("set".to_owned(), Run::One(Op::Write)),
        ("mixed".to_owned(), Run::Mixed),
    ];
    if plan.batch > 1 {
        groups.push((format!("get_many_{}", plan.batch), Run::Batch));
    }
    for (group_name, run) in groups {
        let mut group = c.benchmark_group(format!("{name}/{group_name}"));
        for (stack, cache) in stacks {
            group.bench_function(*stack, |b| {
                b.to_async(rt).iter_custom(|iters| {
                    let (cache, plan) = (cache.clone(), Arc::clone(&plan));
                    async move { timed(cache, plan, run, iters).await }
                });
            });
        }
        group.finish();
    }
}

#[derive(Debug, Clone, Copy)]
enum Run {
    One(Op),
    Mixed,
    Batch,
}

/// Runs `iters` operations over `plan.concurrency` tasks; the time of all.
async fn timed(cache: TieredCache, plan: Arc<Plan>, run: Run, iters: u64) -> Duration {
    let tasks = plan.concurrency as u64;
    let started = Instant::now();
    if tasks <= 1 {
        operate(&cache, &plan, run, 0, iters).await;
    } else {
        let mut handles = Vec::with_capacity(plan.concurrency);
        for task in 0..tasks {
            let (cache, plan) = (cache.clone(), Arc::clone(&plan));
            let share = iters / tasks + u64::from(task < iters % tasks);
            handles.push(tokio::spawn(async move {
                operate(&cache, &plan, run, task * 7919, share).await;
            }));
        }
        for handle in handles {
            if let Err(e) = handle.await {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
    started.elapsed()
}

#[allow(clippy::cast_possible_truncation)] // indices into short sequences
async fn operate(cache: &TieredCache, plan: &Plan, run: Run, offset: u64, count: u64) {
    for i in offset..offset + count {
        let at = i as usize;
        let op = match run {
            Run::One(op) => op,
            Run::Mixed => plan.mixed[at % plan.mixed.len()],
            Run::Batch => {
                let start = (at * plan.batch) % plan.reads.len();
                let keys: Vec<Key> = (0..plan.batch)
                    .map(|k| plan.reads[(start + k) % plan.reads.len()].clone())
                    .collect();
                let got: Vec<Option<Arc<String>>> = cache
                    .get_or_fetch_many(&keys, Ttl::TierDefault, |missing, _| async move {
                        Ok::<_, std::io::Error>(missing.into_iter().map(|k| (k, None)).collect())
                    })
                    .await
                    .unwrap_or_else(|e| panic!("get_many: {}", e.report()));
                assert!(got.iter().all(Option::is_some), "a batch read missed");
                continue;
            }
        };
        match op {
            Op::Hit => {
                let key = &plan.reads[at % plan.reads.len()];
                assert!(
                    cache.get::<String>(key).await.is_some(),
                    "{key}: a read of a written key missed"
                );
            }
            Op::Miss => {
                let key = &plan.absent[at % plan.absent.len()];
                assert!(cache.get::<String>(key).await.is_none(), "{key} is present");
            }
            Op::Write => {
                let key = &plan.reads[at % plan.reads.len()];
                cache
                    .set(key, plan.value.clone(), Ttl::TierDefault)
                    .await
                    .unwrap_or_else(|e| panic!("{key}: {}", e.report()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_draws_favour_a_few_keys_and_uniform_spreads() {
        let zipf = draw(1000, Distribution::Zipf(1.0), 10_000);
        let uniform = draw(1000, Distribution::Uniform, 10_000);
        assert!(zipf.iter().chain(&uniform).all(|&id| id < 1000));
        let top = |ids: &[u64]| {
            let mut counts = std::collections::HashMap::new();
            for id in ids {
                *counts.entry(id).or_insert(0u32) += 1;
            }
            counts.into_values().max().unwrap_or(0)
        };
        assert!(top(&zipf) > 1000, "the hottest Zipf key: {}", top(&zipf));
        assert!(
            top(&uniform) < 40,
            "the hottest uniform key: {}",
            top(&uniform)
        );
    }

    #[test]
    fn the_mix_is_in_proportion() {
        let plan = Plan::new(&Workload::default().mix(70, 20, 10));
        let count = |kind: fn(&Op) -> bool| plan.mixed.iter().filter(|op| kind(op)).count();
        assert_eq!(count(|op| matches!(op, Op::Hit)), 70);
        assert_eq!(count(|op| matches!(op, Op::Write)), 20);
        assert_eq!(count(|op| matches!(op, Op::Miss)), 10);
    }
}
