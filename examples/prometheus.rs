//! A service exposing its cache's metrics at `/metrics` for Prometheus,
//! through the `metrics` facade and `metrics-exporter-prometheus`.
//!
//! The cache counts into its own counters; the `/metrics` handler publishes
//! them (`Metrics::publish_with_sizes`) right before the exporter renders,
//! so every scrape is current and a hit pays nothing for it.
//!
//! The run fetches 3 books, reads them 100 times, looks for 64 absent
//! ones, scrapes its own `/metrics` on loopback, prints the tierstack
//! lines, and checks a few figures and that every metric name
//! `docs/observability.md` lists is there;
//! `--serve` keeps serving on the printed address afterwards.
//!
//! ```sh
//! cargo run --release --example prometheus            # run, check, exit
//! cargo run --release --example prometheus -- --serve # keep serving
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tierstack::metrics::{Metrics, MetricsOptions};
use tierstack::{Key, MemoryConfig, MemoryTier, SqliteConfig, SqliteTier, TieredCache, Ttl};

#[derive(Debug)]
struct Upstream;

impl std::fmt::Display for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("upstream unavailable")
    }
}

impl std::error::Error for Upstream {}

/// The `/metrics` handler's state.
#[derive(Clone)]
struct Scrape {
    metrics: Metrics,
    prometheus: PrometheusHandle,
}

async fn render(axum::extract::State(scrape): axum::extract::State<Scrape>) -> String {
    scrape.metrics.publish_with_sizes().await;
    scrape.prometheus.render()
}

/// The metric names of docs/observability.md's tables.
fn documented_names() -> Vec<String> {
    include_str!("../docs/observability.md")
        .lines()
        .filter_map(|line| line.strip_prefix("| `tierstack_"))
        .filter_map(|rest| rest.split('`').next())
        .map(|name| format!("tierstack_{name}"))
        .collect()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    // Buckets in seconds, from a memory-speed tier call to a slow fetch:
    // without them the exporter renders histograms as summaries.
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[
            0.000_01, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
        ])?
        .install_recorder()?;

    let home = tempfile::tempdir()?;
    let cache = TieredCache::builder()
        .tier(MemoryTier::new(
            &MemoryConfig::with_max_entries(1000).ttl(Duration::from_secs(3600)),
        )?)
        .tier(SqliteTier::open(&SqliteConfig::new(home.path().join("metadata.db")), 1).await?)
        .metrics(MetricsOptions::default().label("cache", "metadata"))
        .build();

    let books: Vec<Key> = ["B1", "B2", "B3"]
        .iter()
        .map(|asin| Key::new("audnexus:book", [("asin", *asin)]))
        .collect();
    for _ in 0..100 {
        for key in &books {
            let _: Arc<String> = cache
                .get_or_fetch(key, Ttl::TierDefault, |_| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, Upstream>(format!("book at {key}"))
                })
                .await?;
        }
    }

    // 64 reads of absent keys: SQLite calls, one in 16 timed.
    for i in 0..64 {
        let absent = Key::new("audnexus:book", [("asin", format!("X{i}"))]);
        assert!(cache.get::<String>(&absent).await.is_none());
    }

    let state = Scrape {
        metrics: Metrics::new(&cache),
        prometheus,
    };
    let app = axum::Router::new()
        .route("/metrics", get(render))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving http://{address}/metrics");

    let body = reqwest::get(format!("http://{address}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    for line in body
        .lines()
        .filter(|l| l.starts_with("tierstack_source_") || l.starts_with("tierstack_tier_hits"))
    {
        println!("{line}");
    }
    for expected in [
        r#"tierstack_source_fetches_total{cache="metadata",source="audnexus:book"} 3"#,
        r#"tierstack_source_hits_total{cache="metadata",source="audnexus:book"} 297"#,
        r#"tierstack_tier_hits_total{cache="metadata",tier="memory"} 297"#,
        r#"tierstack_tier_entries{cache="metadata",tier="sqlite"} 3"#,
    ] {
        if !body.lines().any(|l| l == expected) {
            return Err(format!("/metrics lacks the line {expected}").into());
        }
    }
    // Every name docs/observability.md lists is in the scrape.
    let documented = documented_names();
    let missing: Vec<&str> = documented
        .iter()
        .map(String::as_str)
        .filter(|name| !body.lines().any(|l| l.starts_with(name)))
        .collect();
    if documented.len() < 30 || !missing.is_empty() {
        return Err(format!(
            "{} documented names, missing from /metrics: {missing:?}",
            documented.len()
        )
        .into());
    }
    println!(
        "all {} documented metric names are in the scrape",
        documented.len()
    );
    if !body.contains("tierstack_fetch_duration_seconds_bucket") {
        return Err("the fetch duration is not rendered as a histogram".into());
    }
    if serve {
        println!("serving until interrupted");
        server.await??;
    }
    Ok(())
}
