//! `backends` and `config check`.

use std::path::Path;

use serde::Serialize;
use tierstack::Health;

use crate::output::{Failure, Outcome, emit, print_json, print_table};

#[derive(Serialize)]
struct BackendView {
    name: &'static str,
    description: &'static str,
    capabilities: Vec<&'static str>,
    example_config: &'static str,
}

pub(crate) fn backends(json: bool) -> Outcome {
    let all: Vec<BackendView> = tierstack::backends()
        .into_iter()
        .map(|d| BackendView {
            name: d.name,
            description: d.description,
            capabilities: d.capabilities.names(),
            example_config: d.example_config,
        })
        .collect();
    if json {
        return print_json(&all);
    }
    let rows: Vec<Vec<String>> = all
        .iter()
        .map(|b| {
            vec![
                b.name.to_owned(),
                b.description.to_owned(),
                b.capabilities.join(", "),
            ]
        })
        .collect();
    print_table(&["kind", "description", "capabilities"], &rows);
    Ok(())
}

#[derive(Serialize)]
struct CheckView {
    valid: bool,
    origin: String,
    enabled: bool,
    schema_version: u32,
    overrides: Vec<String>,
    ignored_variables: Vec<String>,
    tiers: Vec<TierHealth>,
    /// The effective config as its Debug text (which hides secrets).
    effective: String,
}

#[derive(Serialize)]
struct TierHealth {
    name: String,
    capabilities: Vec<&'static str>,
    health: Health,
}

pub(crate) async fn check(path: Option<&Path>, json: bool) -> Outcome {
    let (config, cache) = crate::load(path).await?;
    let health = cache.health().await;
    let tiers: Vec<TierHealth> = cache
        .tiers()
        .zip(health)
        .map(|(tier, (name, health))| TierHealth {
            name,
            capabilities: tier.capabilities().names(),
            health,
        })
        .collect();
    let unhealthy: Vec<String> = tiers
        .iter()
        .filter_map(|t| match &t.health {
            Health::Unhealthy(why) => Some(format!("{}: {why}", t.name)),
            _ => None,
        })
        .collect();
    let view = CheckView {
        valid: unhealthy.is_empty(),
        origin: config.origin.to_string(),
        enabled: config.cache.enabled,
        schema_version: config.cache.schema_version,
        overrides: config.overrides.clone(),
        ignored_variables: config.ignored_variables.clone(),
        tiers,
        effective: format!("{:#?}", config.cache),
    };
    if json {
        print_json(&view)?;
    } else {
        emit(&format!("config: {}", view.origin));
        if !view.overrides.is_empty() {
            emit(&format!("overridden by: {}", view.overrides.join(", ")));
        }
        if !view.ignored_variables.is_empty() {
            emit(&format!(
                "ignored (not config fields): {}",
                view.ignored_variables.join(", ")
            ));
        }
        if !view.enabled {
            emit("caching is disabled (enabled: false): every get misses, nothing is stored");
        }
        let rows: Vec<Vec<String>> = view
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                vec![
                    format!("L{}", i + 1),
                    t.name.clone(),
                    health_text(&t.health),
                    t.capabilities.join(", "),
                ]
            })
            .collect();
        print_table(&["level", "tier", "health", "capabilities"], &rows);
        emit("effective config:");
        emit(&view.effective);
    }
    if unhealthy.is_empty() {
        Ok(())
    } else {
        Err(Failure::unavailable(format!(
            "unhealthy tiers: {}",
            unhealthy.join("; ")
        )))
    }
}

pub(crate) fn health_text(health: &Health) -> String {
    match health {
        Health::Healthy => "healthy".to_owned(),
        Health::Degraded(why) => format!("degraded: {why}"),
        Health::Unhealthy(why) => format!("unhealthy: {why}"),
    }
}
