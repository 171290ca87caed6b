//! `stats`, `clear` and `purge`: commands on the whole cache.

use std::collections::BTreeMap;
use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::Arc;

use serde::Serialize;
use tierstack::{ClearScope, Health, ScanCursor, Tier, TieredCache, Timestamp, units};

use crate::info::health_text;
use crate::output::{Failure, Outcome, emit, note, print_json, print_table, progress};

#[derive(Serialize)]
struct TierView {
    tier: String,
    entries: u64,
    bytes: u64,
    health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Serialize, Default, Clone)]
struct SourceView {
    tier: String,
    source: String,
    entries: u64,
    bytes: u64,
    fresh: u64,
    expired: u64,
    not_found_answers: u64,
}

/// The stats file's counters that a tier can move: the stored record has
/// fetch counters too, which only sources move.
#[derive(Serialize)]
struct TierCounters {
    hits: u64,
    misses: u64,
    errors: u64,
    decode_failures: u64,
    writes: u64,
    write_errors: u64,
}

impl From<&tierstack::StoredCounters> for TierCounters {
    fn from(c: &tierstack::StoredCounters) -> Self {
        Self {
            hits: c.hits,
            misses: c.misses,
            errors: c.errors,
            decode_failures: c.decode_failures,
            writes: c.writes,
            write_errors: c.write_errors,
        }
    }
}

/// The stats file's counters that a key source can move.
#[derive(Serialize)]
struct SourceCounters {
    hits: u64,
    misses: u64,
    fetches: u64,
    fetch_errors: u64,
    stale_served: u64,
    throttled_waits: u64,
    throttled_rejections: u64,
    circuit_open: u64,
    lease_won: u64,
    lease_waited: u64,
    lease_takeovers: u64,
    coordination_fallbacks: u64,
}

impl From<&tierstack::StoredCounters> for SourceCounters {
    fn from(c: &tierstack::StoredCounters) -> Self {
        Self {
            hits: c.hits,
            misses: c.misses,
            fetches: c.fetches,
            fetch_errors: c.fetch_errors,
            stale_served: c.stale_served,
            throttled_waits: c.throttled_waits,
            throttled_rejections: c.throttled_rejections,
            circuit_open: c.circuit_open,
            lease_won: c.lease_won,
            lease_waited: c.lease_waited,
            lease_takeovers: c.lease_takeovers,
            coordination_fallbacks: c.coordination_fallbacks,
        }
    }
}

/// Counts the entries of one tier by source.
async fn scan_sources(
    tier: &dyn Tier,
    bar: &indicatif::ProgressBar,
) -> tierstack::Result<Vec<SourceView>> {
    let mut by_source: BTreeMap<String, SourceView> = BTreeMap::new();
    let mut cursor: Option<ScanCursor> = None;
    let now = Timestamp::now();
    loop {
        let page = tier.scan(cursor.take(), 1024).await?;
        for (key, entry) in &page.entries {
            let view = by_source
                .entry(key.source().to_owned())
                .or_insert_with(|| SourceView {
                    tier: tier.name().to_owned(),
                    source: key.source().to_owned(),
                    ..SourceView::default()
                });
            view.entries += 1;
            view.bytes += entry.encoded_len() as u64;
            if entry.header.is_fresh(now) {
                view.fresh += 1;
            } else {
                view.expired += 1;
            }
            if entry.header.is_negative() {
                view.not_found_answers += 1;
            }
        }
        bar.inc(page.entries.len() as u64);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(by_source.into_values().collect()),
        }
    }
}

/// Size and health of each tier.
async fn tier_views(cache: &TieredCache) -> Vec<TierView> {
    let sizes = cache.sizes().await;
    let health = cache.health().await;
    sizes
        .into_iter()
        .zip(health)
        .map(|((tier, size), (_, health))| match size {
            Ok(size) => TierView {
                tier,
                entries: size.entries,
                bytes: size.bytes,
                health,
                error: None,
            },
            Err(e) => TierView {
                tier,
                entries: 0,
                bytes: 0,
                health,
                error: Some(e.report().to_string()),
            },
        })
        .collect()
}

pub(crate) async fn stats(cache: &TieredCache, json: bool) -> Outcome {
    let tiers = tier_views(cache).await;
    let total = tiers.iter().map(|t| t.entries).sum();
    let bar = progress(json, Some(total), "scanning");
    let mut sources = Vec::new();
    let mut problems = Vec::new();
    for tier in cache.tiers() {
        if !tier.capabilities().scan {
            continue;
        }
        match scan_sources(tier.as_ref(), &bar).await {
            Ok(found) => sources.extend(found),
            Err(e) => problems.push(format!("{}: {}", tier.name(), e.report())),
        }
    }
    bar.finish_and_clear();
    let counters = load_counters(cache, &mut problems);
    if json {
        let counters = counters.as_ref().map(|(file, stored)| {
            let tiers: BTreeMap<&str, TierCounters> = stored
                .tiers
                .iter()
                .map(|(name, c)| (name.as_str(), TierCounters::from(c)))
                .collect();
            let sources: BTreeMap<&str, SourceCounters> = stored
                .sources
                .iter()
                .map(|(name, c)| (name.as_str(), SourceCounters::from(c)))
                .collect();
            serde_json::json!({ "file": file, "since": stored.since, "tiers": tiers, "sources": sources })
        });
        print_json(
            &serde_json::json!({ "tiers": tiers, "sources": sources, "counters": counters }),
        )?;
    } else {
        let rows: Vec<Vec<String>> = tiers
            .iter()
            .map(|t| {
                vec![
                    t.tier.clone(),
                    t.entries.to_string(),
                    units::format_size_approx(t.bytes),
                    t.error.clone().unwrap_or_else(|| health_text(&t.health)),
                ]
            })
            .collect();
        print_table(&["tier", "entries", "bytes", "health"], &rows);
        if !sources.is_empty() {
            emit("");
            let rows: Vec<Vec<String>> = sources
                .iter()
                .map(|s| {
                    vec![
                        s.tier.clone(),
                        s.source.clone(),
                        s.entries.to_string(),
                        units::format_size_approx(s.bytes),
                        s.fresh.to_string(),
                        s.expired.to_string(),
                        s.not_found_answers.to_string(),
                    ]
                })
                .collect();
            print_table(
                &[
                    "tier",
                    "source",
                    "entries",
                    "bytes",
                    "fresh",
                    "expired",
                    "not found",
                ],
                &rows,
            );
        }
    }
    if !json {
        print_counters(counters.as_ref());
    }
    failed_reading(&tiers, problems)
}

/// `stats --prometheus`: the stats file's totals (every process that used
/// the cache) and each tier's size, as Prometheus text. Without a stats
/// file only the sizes are known, which stderr says; the exit code is that
/// of `stats`.
pub(crate) async fn prometheus(cache: &TieredCache) -> Outcome {
    let tiers = tier_views(cache).await;
    let mut problems = Vec::new();
    let counters = load_counters(cache, &mut problems);
    if counters.is_none() && problems.is_empty() {
        note(
            "no stats_file in the config: only tier sizes are known (hit and miss counters are kept per process)",
        );
    }
    let stored = counters.map(|(_, stored)| stored).unwrap_or_default();
    let sizes = tiers.iter().filter(|t| t.error.is_none()).map(|t| {
        (
            t.tier.as_str(),
            tierstack::TierSize {
                entries: t.entries,
                bytes: t.bytes,
            },
        )
    });
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let rendered = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        tierstack::metrics::publish_stored(
            &stored,
            sizes,
            &tierstack::metrics::MetricsOptions::default(),
        );
    });
    // `emit` adds the final newline; a closed pipe loses the text quietly.
    emit(&sorted_exposition(&rendered.render()));
    failed_reading(&tiers, problems)
}

/// The outcome of a command that read every tier: unavailable, naming
/// each tier that failed and each other problem, if any did.
fn failed_reading(tiers: &[TierView], problems: Vec<String>) -> Outcome {
    let failed: Vec<String> = tiers
        .iter()
        .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.tier)))
        .chain(problems)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::unavailable(failed.join("; ")))
    }
}

/// The exporter's text in a stable order (it renders in hash order):
/// metric families by name, series by labels, so that two runs over the
/// same figures print the same bytes and diff cleanly.
pub(crate) fn sorted_exposition(text: &str) -> String {
    let mut families: Vec<(Vec<&str>, Vec<&str>)> = text
        .split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let (comments, mut series): (Vec<&str>, Vec<&str>) =
                block.lines().partition(|line| line.starts_with('#'));
            series.sort_unstable();
            (comments, series)
        })
        .collect();
    let name = |family: &(Vec<&str>, Vec<&str>)| -> String {
        family
            .1
            .first()
            .map(|s| s.split(['{', ' ']).next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    families.sort_by_key(name);
    families
        .iter()
        .map(|(comments, series)| {
            comments
                .iter()
                .chain(series)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The stats file's totals, if the cache has one; a file that cannot be
/// read is reported as a problem.
fn load_counters(
    cache: &TieredCache,
    problems: &mut Vec<String>,
) -> Option<(std::path::PathBuf, tierstack::StoredStats)> {
    let file = cache.stats_file()?;
    match tierstack::StoredStats::load(file) {
        Ok(stored) => Some((file.to_owned(), stored)),
        Err(e) => {
            problems.push(format!("cannot read {}: {e}", file.display()));
            None
        }
    }
}

fn ratio(counters: &tierstack::StoredCounters) -> String {
    counters
        .hit_ratio()
        .map_or_else(|| "–".to_owned(), |r| format!("{:.1}%", r * 100.0))
}

/// Hits and misses of every process that used the cache, from its stats file.
fn print_counters(counters: Option<&(std::path::PathBuf, tierstack::StoredStats)>) {
    let Some((file, stored)) = counters else {
        emit("");
        emit("no stats_file in the config: hit and miss counters are kept per process only");
        return;
    };
    emit("");
    emit(&format!(
        "lookups since {} (all processes, {}):",
        if stored.since.is_empty() {
            "the start"
        } else {
            &stored.since
        },
        file.display()
    ));
    let rows: Vec<Vec<String>> = stored
        .tiers
        .iter()
        .map(|(tier, c)| {
            vec![
                tier.clone(),
                c.hits.to_string(),
                c.misses.to_string(),
                ratio(c),
                c.writes.to_string(),
                c.errors.to_string(),
                c.decode_failures.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "tier",
            "hits",
            "misses",
            "hit ratio",
            "writes",
            "errors",
            "decode failures",
        ],
        &rows,
    );
    if !stored.sources.is_empty() {
        emit("");
        let rows: Vec<Vec<String>> = stored
            .sources
            .iter()
            .map(|(source, c)| {
                vec![
                    source.clone(),
                    c.hits.to_string(),
                    c.misses.to_string(),
                    ratio(c),
                    c.fetches.to_string(),
                    c.fetch_errors.to_string(),
                    c.stale_served.to_string(),
                ]
            })
            .collect();
        print_table(
            &[
                "source",
                "hits",
                "misses",
                "hit ratio",
                "fetches",
                "fetch errors",
                "stale served",
            ],
            &rows,
        );
    }
    print_budget_table(stored);
}

/// The upstream budget's counters per source, for the sources that moved
/// one (a cache without rate limits or coordination prints nothing).
fn print_budget_table(stored: &tierstack::StoredStats) {
    let rows: Vec<Vec<String>> = stored
        .sources
        .iter()
        .filter(|(_, c)| {
            [
                c.throttled_waits,
                c.throttled_rejections,
                c.circuit_open,
                c.lease_won,
                c.lease_waited,
                c.lease_takeovers,
                c.coordination_fallbacks,
            ]
            .iter()
            .any(|n| *n > 0)
        })
        .map(|(source, c)| {
            vec![
                source.clone(),
                c.throttled_waits.to_string(),
                c.throttled_rejections.to_string(),
                c.circuit_open.to_string(),
                c.lease_won.to_string(),
                c.lease_waited.to_string(),
                c.lease_takeovers.to_string(),
                c.coordination_fallbacks.to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return;
    }
    emit("");
    print_table(
        &[
            "source",
            "throttled waits",
            "throttled rejections",
            "circuit open",
            "leases won",
            "leases waited",
            "lease takeovers",
            "coordination fallbacks",
        ],
        &rows,
    );
}

/// What `tierstack clear` was asked to remove.
pub(crate) struct ClearRequest {
    pub(crate) tier: Option<String>,
    pub(crate) source: Option<String>,
    pub(crate) expired: bool,
    pub(crate) yes: bool,
}

fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "{question}: stdin is not a terminal, so nothing was removed; pass --yes to confirm"
        )));
    }
    {
        // The prompt is best effort: a broken stderr must not panic.
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{question}? [y/N] ");
        let _ = err.flush();
    }
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| Failure::usage(format!("cannot read the answer: {e}")))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// The tiers a command applies to: all, or the one named.
fn chosen_tiers<'a>(
    cache: &'a TieredCache,
    name: Option<&str>,
) -> Result<Vec<&'a Arc<dyn Tier>>, Failure> {
    let all: Vec<_> = cache.tiers().collect();
    let Some(name) = name else {
        return Ok(all);
    };
    let chosen: Vec<_> = all.iter().copied().filter(|t| t.name() == name).collect();
    if chosen.is_empty() {
        let names: Vec<&str> = all.iter().map(|t| t.name()).collect();
        return Err(Failure::usage(format!(
            "no tier named {name:?}; the tiers are: {}",
            names.join(", ")
        )));
    }
    Ok(chosen)
}

pub(crate) async fn clear(cache: &TieredCache, request: ClearRequest, json: bool) -> Outcome {
    let tiers = chosen_tiers(cache, request.tier.as_deref())?;
    let (scope, what) = match (&request.source, request.expired) {
        (Some(source), _) => (
            ClearScope::Source(source.clone()),
            format!("every entry of source {source:?}"),
        ),
        (None, true) => (ClearScope::Expired, "every expired entry".to_owned()),
        (None, false) => (ClearScope::All, "every entry".to_owned()),
    };
    let names: Vec<&str> = tiers.iter().map(|t| t.name()).collect();
    // Expired entries are dead weight; everything else needs a yes.
    if !request.expired && !request.yes {
        let question = format!("remove {what} from {}", names.join(", "));
        if !confirm(&question)? {
            return Err(Failure::usage("cancelled; nothing was removed"));
        }
    }
    if request.tier.is_none() {
        // Through the cache, so that a backplane tells other processes.
        let bar = progress(json, None, "clearing");
        let removed = cache.clear(scope).await;
        bar.finish_and_clear();
        return report_removed(&removed?, json);
    }
    remove_from(&tiers, json, "clearing", |tier| {
        let scope = scope.clone();
        async move { tier.clear(scope).await }
    })
    .await
}

/// Runs a removing operation on each tier in turn, reports the counts, and
/// fails (exit 3) if any tier failed; the other tiers are still done.
async fn remove_from<F, Fut>(
    tiers: &[&Arc<dyn Tier>],
    json: bool,
    message: &'static str,
    remove: F,
) -> Outcome
where
    F: Fn(Arc<dyn Tier>) -> Fut,
    Fut: Future<Output = tierstack::Result<u64>>,
{
    let bar = progress(json, Some(tiers.len() as u64), message);
    let mut removed = Vec::with_capacity(tiers.len());
    let mut failures = Vec::new();
    for tier in tiers {
        match remove(Arc::clone(tier)).await {
            Ok(n) => removed.push((tier.name().to_owned(), n)),
            Err(e) => failures.push(format!("{}: {}", tier.name(), e.report())),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    report_removed(&removed, json)?;
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::unavailable(failures.join("; ")))
    }
}

fn report_removed(removed: &[(String, u64)], json: bool) -> Outcome {
    let total: u64 = removed.iter().map(|(_, n)| n).sum();
    if json {
        let tiers: BTreeMap<&str, u64> = removed.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        return print_json(&serde_json::json!({ "removed": total, "tiers": tiers }));
    }
    for (tier, n) in removed {
        emit(&format!("{tier}: removed {n}"));
    }
    emit(&format!("removed {total} entries"));
    Ok(())
}

pub(crate) async fn purge(cache: &TieredCache, json: bool) -> Outcome {
    let tiers: Vec<_> = cache.tiers().collect();
    remove_from(
        &tiers,
        json,
        "purging",
        |tier| async move { tier.purge().await },
    )
    .await
}

/// `VACUUM` where a tier needs it, one tier at a time; says per tier what it
/// did and fails (exit 3) if any tier failed (the others are still done).
pub(crate) async fn compact(cache: &TieredCache, json: bool) -> Outcome {
    let tiers: Vec<_> = cache.tiers().collect();
    let bar = progress(json, Some(tiers.len() as u64), "compacting");
    let mut done = BTreeMap::new();
    let mut failures = Vec::new();
    for tier in tiers {
        match tier.compact().await {
            Ok(Some(c)) => {
                done.insert(
                    tier.name().to_owned(),
                    serde_json::json!({"bytes_before": c.bytes_before, "bytes_after": c.bytes_after}),
                );
                if !json {
                    emit(&format!(
                        "{}: {} -> {}",
                        tier.name(),
                        tierstack::units::format_size(c.bytes_before),
                        tierstack::units::format_size(c.bytes_after)
                    ));
                }
            }
            Ok(None) => {
                if !json {
                    emit(&format!("{}: nothing to compact", tier.name()));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", tier.name())),
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    if json {
        print_json(&serde_json::json!({ "tiers": done }))?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Failure::unavailable(failures.join("; ")))
    }
}
