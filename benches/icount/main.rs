//! The workload of the instruction-count gate (`scripts/icount.sh`).
//!
//! Criterion medians on the 2-core CI machines move by more than the 10% a
//! regression gate has to catch; instruction counts under callgrind do not.
//! Each run sets up one scenario, warms it, then calls exactly one operation
//! `iterations` times inside the `#[inline(never)]` function
//! `icount_measured_pass`. The script passes that name to callgrind's
//! `--toggle-collect`, so only the measured loop is counted, and divides
//! by the iteration count. One scenario per process, so one name suffices.
//!
//! Every run checks afterwards that the operation did what the scenario
//! claims (hits were hits, misses misses, the cache's counters agree) and
//! exits non-zero otherwise: a broken scenario must fail the gate rather
//! than be counted as fast.
//!
//! ```text
//! icount --list                  scenario names and default iteration counts
//! icount <scenario> [iterations] run one scenario
//! ```
#![allow(missing_docs)]

use std::hint::black_box;
use std::process::ExitCode;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tierstack::{
    Compression, DecodeLimits, Dictionaries, Key, MemoryConfig, MemoryTier, RedbConfig, RedbTier,
    SledConfig, SledTier, SqliteConfig, SqliteTier, Tier, TieredCache, Ttl,
};

/// The record the criterion benches use: about 400 bytes in MessagePack.
/// Kept here rather than shared so the gate does not move when the benches
/// change their fixtures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Book {
    asin: String,
    title: String,
    authors: Vec<String>,
    narrators: Vec<String>,
    runtime_minutes: u32,
    summary: String,
}

fn book(i: u64) -> Book {
    Book {
        asin: format!("B{i:09}"),
        title: format!("Book number {i}"),
        authors: vec![format!("Author {}", i % 97)],
        narrators: vec![format!("Narrator {}", i % 31)],
        runtime_minutes: 600 + (i % 300) as u32,
        summary: "A long summary of the book. ".repeat(8),
    }
}

fn key(i: u64) -> Key {
    Key::new("audnexus:book", [("asin", format!("B{i:09}"))])
}

/// Keys a scenario cycles through. Several keys rather than one, so that a
/// hash seed that happens to put one key in a crowded bucket does not move
/// the count: per-process hash seeds (std and foldhash `RandomState`) cannot
/// be pinned from outside.
const KEYS: u64 = 256;
/// Operations before the measured loop: fills pools, prepared-statement
/// caches and the runtime's first allocations.
const WARMUP: u64 = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    L1Hit,
    Miss,
    SqliteGet,
    Set,
    RedbGet,
    SledGet,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::L1Hit,
        Scenario::Miss,
        Scenario::SqliteGet,
        Scenario::Set,
        Scenario::RedbGet,
        Scenario::SledGet,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::L1Hit => "l1_hit",
            Scenario::Miss => "miss",
            Scenario::SqliteGet => "sqlite_get",
            Scenario::Set => "set",
            Scenario::RedbGet => "redb_get",
            Scenario::SledGet => "sled_get",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::L1Hit => "TieredCache::get, hit in memory (memory over SQLite)",
            Scenario::Miss => "TieredCache::get of an absent key (memory over SQLite)",
            Scenario::SqliteGet => "SqliteTier::get, hit",
            Scenario::Set => "TieredCache::set on memory + SQLite",
            Scenario::RedbGet => "TieredCache::get over redb alone, hit",
            Scenario::SledGet => "TieredCache::get over sled alone, hit",
        }
    }

    /// Enough iterations that the one `block_on` inside the counted
    /// function is below 0.1% of the count, few enough that the step stays
    /// short under callgrind. The SQLite read stays below the tier's buffer
    /// of 4096 recorded reads, whose flush by the writer thread would make
    /// the count depend on thread timing.
    fn default_iterations(self) -> u64 {
        match self {
            Scenario::L1Hit => 20_000,
            Scenario::Miss | Scenario::RedbGet | Scenario::SledGet => 5_000,
            Scenario::SqliteGet => 3_000,
            Scenario::Set => 2_000,
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The fixture every scenario gets: memory over SQLite in a temporary
/// directory, with `KEYS` records in both tiers.
struct Fixture {
    rt: tokio::runtime::Runtime,
    cache: TieredCache,
    /// For the redb and sled scenarios: a cache over that tier alone,
    /// holding the same records.
    alone: Option<TieredCache>,
    sqlite: Arc<SqliteTier>,
    present: Vec<Key>,
    absent: Vec<Key>,
    // Dropped last: the SQLite files live here.
    _dir: tempfile::TempDir,
}

fn fixture(scenario: Scenario) -> Result<Fixture, String> {
    // One thread and no worker pool: a multi-thread runtime's idle workers
    // would run (uncounted, but scheduling-dependent) work in between.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a Tokio runtime: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temporary dir: {e}"))?;
    let memory = MemoryTier::new(&MemoryConfig::with_max_entries(100_000))
        .map_err(|e| format!("memory tier: {e}"))?;
    let sqlite = Arc::new(
        rt.block_on(SqliteTier::open(
            &SqliteConfig::new(dir.path().join("icount.db")),
            1,
        ))
        .map_err(|e| format!("SQLite tier: {e}"))?,
    );
    let cache = rt.block_on(async {
        TieredCache::builder()
            .compression(Compression::None)
            .tier(memory)
            .shared_tier(Arc::clone(&sqlite) as Arc<dyn Tier>)
            .build()
    });
    let alone_tier: Option<Arc<dyn Tier>> = match scenario {
        Scenario::RedbGet => Some(Arc::new(
            rt.block_on(RedbTier::open(
                &RedbConfig::new(dir.path().join("icount.redb")),
                1,
            ))
            .map_err(|e| format!("redb tier: {e}"))?,
        )),
        Scenario::SledGet => Some(Arc::new(
            SledTier::open(&SledConfig::new(dir.path().join("icount.sled")), 1)
                .map_err(|e| format!("sled tier: {e}"))?,
        )),
        _ => None,
    };
    let alone = alone_tier.map(|tier| {
        TieredCache::builder()
            .compression(Compression::None)
            .shared_tier(tier)
            .build()
    });
    let present: Vec<Key> = (0..KEYS).map(key).collect();
    let absent: Vec<Key> = (KEYS..2 * KEYS).map(key).collect();
    rt.block_on(async {
        for (i, k) in present.iter().enumerate() {
            for cache in std::iter::once(&cache).chain(&alone) {
                cache
                    .set(k, book(i as u64), Ttl::TierDefault)
                    .await
                    .map_err(|e| format!("fill: {e}"))?;
            }
        }
        Ok::<_, String>(())
    })?;
    Ok(Fixture {
        rt,
        cache,
        alone,
        sqlite,
        present,
        absent,
        _dir: dir,
    })
}

/// What one pass of a scenario's operation works on, built before the pass.
enum Batch<'a> {
    Get(&'a [Key]),
    /// Gets through [`Fixture::alone`].
    GetAlone(&'a [Key]),
    SqliteGet(&'a [Key]),
    /// Values are built beforehand: encoding is part of `set`, building the
    /// caller's record is not.
    Set(Vec<(&'a Key, Book)>),
}

fn batch(f: &Fixture, scenario: Scenario, n: u64) -> Batch<'_> {
    match scenario {
        Scenario::L1Hit => Batch::Get(&f.present),
        Scenario::Miss => Batch::Get(&f.absent),
        Scenario::SqliteGet => Batch::SqliteGet(&f.present),
        Scenario::Set => Batch::Set(writes(&f.present, n)),
        Scenario::RedbGet | Scenario::SledGet => Batch::GetAlone(&f.present),
    }
}

/// Runs the operation `n` times inside one `block_on` (one runtime entry
/// per pass, not per operation) and returns how many succeeded (found, or
/// written) so that neither the check afterwards nor the optimiser can
/// ignore the results.
fn pass(f: &Fixture, batch: Batch<'_>, n: u64) -> u64 {
    f.rt.block_on(async {
        let mut succeeded = 0;
        match batch {
            Batch::Get(keys) => {
                for k in keys.iter().cycle().take(n as usize) {
                    if black_box(f.cache.get::<Book>(black_box(k)).await).is_some() {
                        succeeded += 1;
                    }
                }
            }
            Batch::GetAlone(keys) => {
                let cache = f.alone.as_ref().expect("a cache over the tier alone");
                for k in keys.iter().cycle().take(n as usize) {
                    if black_box(cache.get::<Book>(black_box(k)).await).is_some() {
                        succeeded += 1;
                    }
                }
            }
            Batch::SqliteGet(keys) => {
                for k in keys.iter().cycle().take(n as usize) {
                    if let Ok(Some(_)) = black_box(f.sqlite.get(black_box(k)).await) {
                        succeeded += 1;
                    }
                }
            }
            Batch::Set(writes) => {
                for (k, v) in writes {
                    let written = f.cache.set(black_box(k), v, Ttl::TierDefault).await;
                    if black_box(written).is_ok() {
                        succeeded += 1;
                    }
                }
            }
        }
        succeeded
    })
}

/// What callgrind counts (`--toggle-collect=*icount_measured_pass*`): this
/// call and everything under it, on this thread. The warm-up calls `pass`
/// directly, so it is not counted. `black_box` keeps work after the call,
/// so it is a real call rather than a jump that callgrind could attribute
/// elsewhere.
#[inline(never)]
fn icount_measured_pass(f: &Fixture, batch: Batch<'_>, n: u64) -> u64 {
    black_box(pass(f, batch, n))
}

/// Counters of the cache's two layers, memory first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    hits: [u64; 2],
    misses: [u64; 2],
    writes: [u64; 2],
}

fn counts(cache: &TieredCache) -> Result<Counts, String> {
    let stats = cache.stats();
    let [memory, sqlite] = stats.layers.as_slice() else {
        return Err(format!(
            "expected 2 layers in the stats, got {}",
            stats.layers.len()
        ));
    };
    Ok(Counts {
        hits: [memory.hits, sqlite.hits],
        misses: [memory.misses, sqlite.misses],
        writes: [memory.writes, sqlite.writes],
    })
}

fn expect(what: &str, got: u64, want: u64) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: expected {want}, got {got}"))
    }
}

/// Sets up `scenario`, warms it, runs the measured loop `n` times and checks
/// what happened. Returns a one-line summary of the checks.
fn run(scenario: Scenario, n: u64) -> Result<String, String> {
    let f = fixture(scenario)?;
    // Warm with the same operation on the same keys as the measured pass.
    let warmed = pass(&f, batch(&f, scenario, WARMUP), WARMUP);
    let before = counts(&f.cache)?;
    let alone_before = f.alone.as_ref().map(TieredCache::stats);
    let input = batch(&f, scenario, n);
    let done = icount_measured_pass(&f, input, n);
    let after = counts(&f.cache)?;
    let alone_after = f.alone.as_ref().map(TieredCache::stats);
    let delta = |a: [u64; 2], b: [u64; 2]| [a[0] - b[0], a[1] - b[1]];
    let (hits, misses, writes_done) = (
        delta(after.hits, before.hits),
        delta(after.misses, before.misses),
        delta(after.writes, before.writes),
    );
    match scenario {
        Scenario::L1Hit => {
            expect("warm-up hits", warmed, WARMUP)?;
            expect("gets that returned Some", done, n)?;
            expect("memory hits", hits[0], n)?;
            expect("memory misses", misses[0], 0)?;
            expect("SQLite reads", hits[1] + misses[1], 0)?;
        }
        Scenario::Miss => {
            expect("warm-up hits", warmed, 0)?;
            expect("gets that returned Some", done, 0)?;
            expect("memory misses", misses[0], n)?;
            expect("SQLite misses", misses[1], n)?;
            expect("hits", hits[0] + hits[1], 0)?;
        }
        Scenario::SqliteGet => {
            expect("warm-up hits", warmed, WARMUP)?;
            expect("SQLite gets that returned Some", done, n)?;
            // Read through the tier, not the cache: the cache saw nothing.
            expect("cache reads", hits[0] + hits[1] + misses[0] + misses[1], 0)?;
        }
        Scenario::RedbGet | Scenario::SledGet => {
            expect("warm-up hits", warmed, WARMUP)?;
            expect("gets that returned Some", done, n)?;
            let (Some(b), Some(a)) = (alone_before, alone_after) else {
                return Err("no cache over the tier alone".into());
            };
            let (Some(a), Some(b)) = (a.layers.first(), b.layers.first()) else {
                return Err("the cache over the tier alone has no layer".into());
            };
            expect("tier hits", a.hits - b.hits, n)?;
            expect("tier misses", a.misses - b.misses, 0)?;
            expect(
                "memory + SQLite reads",
                hits[0] + hits[1] + misses[0] + misses[1],
                0,
            )?;
        }
        Scenario::Set => {
            expect("warm-up sets", warmed, WARMUP)?;
            expect("sets that returned Ok", done, n)?;
            expect("memory writes", writes_done[0], n)?;
            expect("SQLite writes", writes_done[1], n)?;
            // The last value written must be what both tiers hold now.
            let last = (n - 1) % KEYS;
            let k = &f.present[last as usize];
            let from_sqlite =
                f.rt.block_on(f.sqlite.get(k))
                    .map_err(|e| format!("reading back from SQLite: {e}"))?
                    .ok_or("the last write is not in SQLite")?
                    .decode_value::<Book>(DecodeLimits::default(), &Dictionaries::default())
                    .map_err(|e| format!("decoding the last write: {e}"))?;
            let want = book(KEYS + last);
            if from_sqlite != want {
                return Err("SQLite holds another value than the last write".into());
            }
            let from_cache =
                f.rt.block_on(f.cache.get::<Book>(k))
                    .ok_or("the last write is not in the cache")?;
            if *from_cache != want {
                return Err("the cache holds another value than the last write".into());
            }
        }
    }
    Ok(format!(
        "hits {hits:?} misses {misses:?} writes {writes_done:?} (memory, SQLite)"
    ))
}

/// `n` writes cycling over `keys`, with values other than the fixture's
/// fill, so that the first pass replaces every record.
fn writes(keys: &[Key], n: u64) -> Vec<(&Key, Book)> {
    keys.iter()
        .cycle()
        .take(n as usize)
        .enumerate()
        .map(|(i, k)| (k, book(KEYS + (i as u64 % KEYS))))
        .collect()
}

fn usage() -> String {
    let names: Vec<_> = Scenario::ALL.iter().map(|s| s.name()).collect();
    format!(
        "usage: icount --list | icount <scenario> [iterations]\nscenarios: {}",
        names.join(", ")
    )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["--list"] => {
            // Read by scripts/icount.sh: name, iterations, description.
            for s in Scenario::ALL {
                println!("{}\t{}\t{}", s.name(), s.default_iterations(), s.describe());
            }
            ExitCode::SUCCESS
        }
        [name, rest @ ..] if rest.len() <= 1 => {
            let Some(scenario) = Scenario::parse(name) else {
                eprintln!("icount: unknown scenario {name:?}\n{}", usage());
                return ExitCode::from(2);
            };
            let n = match rest.first().map(|s| s.parse::<u64>()) {
                None => scenario.default_iterations(),
                Some(Ok(n)) if n > 0 => n,
                Some(_) => {
                    eprintln!("icount: iterations must be a positive integer\n{}", usage());
                    return ExitCode::from(2);
                }
            };
            match run(scenario, n) {
                Ok(summary) => {
                    println!("{} iterations={n} ok: {summary}", scenario.name());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("icount: scenario {} is broken: {e}", scenario.name());
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("{}", usage());
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{KEYS, Scenario, run};

    /// Every scenario does what it claims, including with more iterations
    /// than keys (the loops cycle).
    #[test]
    fn scenarios_check_out() {
        for scenario in Scenario::ALL {
            for n in [1, KEYS + 7] {
                if let Err(e) = run(scenario, n) {
                    panic!("{} with {n} iterations: {e}", scenario.name());
                }
            }
        }
    }

    #[test]
    fn names_round_trip() {
        for scenario in Scenario::ALL {
            assert_eq!(Scenario::parse(scenario.name()), Some(scenario));
        }
        assert_eq!(Scenario::parse("nope"), None);
    }
}
