//! Commands on one key: `key`, `get`, `set`, `inspect`, `delete`.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::time::Duration;

use serde::Serialize;
use tierstack::{Header, Key, TieredCache, Timestamp, Ttl};

use crate::json::Json;
use crate::output::{Failure, Outcome, emit, note, print_json, print_table};

pub(crate) fn parse_key(text: &str) -> Result<Key, Failure> {
    Key::parse(text).map_err(|e| {
        Failure::usage(format!(
            "{text:?} is not a canonical key ({e}); `tierstack key SOURCE NAME=VALUE…` prints one"
        ))
    })
}

pub(crate) fn key(source: &str, params: &[String], json: bool) -> Outcome {
    let mut pairs = Vec::with_capacity(params.len());
    let mut names = BTreeSet::new();
    for param in params {
        let (name, value) = param
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("parameter {param:?} is not NAME=VALUE")))?;
        if name.is_empty() {
            return Err(Failure::usage(format!("parameter {param:?} has no name")));
        }
        if !names.insert(name) {
            return Err(Failure::usage(format!("parameter {name:?} is given twice")));
        }
        pairs.push((name, Some(value)));
    }
    let key = Key::new(source, pairs);
    if json {
        print_json(&serde_json::json!({ "key": key.as_str(), "source": key.source() }))
    } else {
        emit(key.as_str());
        Ok(())
    }
}

/// Tiers that failed since `before` (their error counters went up).
pub(crate) fn failed_tiers(cache: &TieredCache, before: &tierstack::CacheStats) -> Vec<String> {
    cache
        .stats()
        .layers
        .iter()
        .zip(&before.layers)
        .filter(|(now, then)| now.errors + now.write_errors > then.errors + then.write_errors)
        .map(|(now, _)| now.name.clone())
        .collect()
}

pub(crate) async fn get(cache: &TieredCache, text: &str, json: bool) -> Outcome {
    let key = parse_key(text)?;
    let before = cache.stats();
    if let Some(value) = cache.get::<Json>(&key).await {
        if json || !std::io::stdout().is_terminal() {
            emit(&value.to_line());
        } else {
            emit(&value.to_pretty());
        }
        return Ok(());
    }
    let failed = failed_tiers(cache, &before);
    if !failed.is_empty() {
        // The tiers that failed may hold it: "not found" would be a guess.
        return Err(Failure::unavailable(format!(
            "{key}: not found in the tiers that answered; {} failed (see `tierstack config check`)",
            failed.join(", ")
        )));
    }
    let undecodable: u64 = cache
        .stats()
        .layers
        .iter()
        .zip(&before.layers)
        .map(|(now, then)| now.decode_failures - then.decode_failures)
        .sum();
    let hint = if undecodable > 0 {
        " (an entry is there but cannot be read as JSON by this cache: see `tierstack inspect`)"
    } else {
        ""
    };
    Err(Failure::not_found(format!("not found: {key}{hint}")))
}

pub(crate) async fn set(
    cache: &TieredCache,
    text: &str,
    value: &str,
    ttl: Option<Duration>,
    json: bool,
) -> Outcome {
    let key = parse_key(text)?;
    let value = Json::parse(value)
        .map_err(|e| Failure::usage(format!("the value is not valid JSON: {e}")))?;
    if !cache.is_enabled() {
        return Err(Failure::usage(
            "caching is disabled in the config (enabled: false); nothing was stored",
        ));
    }
    let before = cache.stats();
    let ttl = ttl.map_or(Ttl::TierDefault, Ttl::For);
    cache.set(&key, value, ttl).await?;
    let failed = failed_tiers(cache, &before);
    if !failed.is_empty() {
        return Err(Failure::unavailable(format!(
            "{key} was not stored in {}; see `tierstack stats`",
            failed.join(", ")
        )));
    }
    if json {
        print_json(&serde_json::json!({ "key": key.as_str(), "stored": true }))
    } else {
        note(&format!("stored {key}"));
        Ok(())
    }
}

/// One tier's view of a key, for `inspect`.
#[derive(Serialize)]
struct TierEntry {
    tier: String,
    present: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entry: Option<HeaderView>,
}

// The JSON of `inspect` is a flat record of the header's facts; each bool
// is a field scripts read, not a state to fold into an enum.
#[allow(clippy::struct_excessive_bools)]
#[derive(Serialize)]
struct HeaderView {
    format_version: u8,
    schema_version: u32,
    codec: String,
    compression: String,
    negative: bool,
    raw_len: u32,
    body_len: u32,
    created_at: String,
    expires_at: String,
    stale_until: String,
    retain_until: String,
    must_revalidate: bool,
    /// Whether the entry was written for the key it is stored under.
    bound_to_key: bool,
    fresh: bool,
}

impl HeaderView {
    fn new(header: &Header, key: &tierstack::Key) -> Self {
        Self {
            format_version: tierstack::envelope::FORMAT_VERSION,
            schema_version: header.schema_version,
            codec: format!("{:?}", header.codec).to_lowercase(),
            compression: format!("{:?}", header.compression).to_lowercase(),
            negative: header.is_negative(),
            raw_len: header.raw_len,
            body_len: header.body_len,
            created_at: header.created_at.to_string(),
            expires_at: header.expires_at.to_string(),
            stale_until: header.stale_until.to_string(),
            retain_until: header.retain_until.to_string(),
            must_revalidate: header
                .flags
                .contains(tierstack::EntryFlags::MUST_REVALIDATE),
            bound_to_key: header.belongs_to(key),
            fresh: header.is_fresh(Timestamp::now()),
        }
    }
}

pub(crate) async fn inspect(cache: &TieredCache, text: &str, json: bool) -> Outcome {
    let key = parse_key(text)?;
    let views: Vec<TierEntry> = cache
        .inspect(&key)
        .await
        .into_iter()
        .map(|(tier, found)| match found {
            Ok(header) => TierEntry {
                tier,
                present: header.is_some(),
                error: None,
                entry: header.as_ref().map(|h| HeaderView::new(h, &key)),
            },
            Err(e) => TierEntry {
                tier,
                present: false,
                error: Some(e.report().to_string()),
                entry: None,
            },
        })
        .collect();
    let present = views.iter().any(|v| v.present);
    if json {
        print_json(&serde_json::json!({ "key": key.as_str(), "tiers": views }))?;
    } else {
        emit(&format!("key: {key}"));
        let rows: Vec<Vec<String>> = views.iter().map(inspect_row).collect();
        print_table(
            &[
                "tier",
                "present",
                "schema",
                "codec",
                "compression",
                "raw",
                "stored",
                "created",
                "expires",
                "stale until",
            ],
            &rows,
        );
    }
    if present {
        Ok(())
    } else {
        Err(Failure::not_found(format!("not found in any tier: {key}")))
    }
}

fn inspect_row(view: &TierEntry) -> Vec<String> {
    let mut row = vec![view.tier.clone()];
    match (&view.entry, &view.error) {
        (Some(h), _) => {
            let state = match (h.bound_to_key, h.negative, h.fresh) {
                (false, _, _) => "yes (written for another key: a miss)",
                (true, true, true) => "yes (not-found answer)",
                (true, true, false) => "yes (not-found answer, expired)",
                (true, false, true) => "yes",
                (true, false, false) => "yes (expired)",
            };
            row.extend([
                state.to_owned(),
                h.schema_version.to_string(),
                h.codec.clone(),
                h.compression.clone(),
                format!("{} B", h.raw_len),
                format!("{} B", h.body_len + tierstack::envelope::HEADER_LEN as u32),
                h.created_at.clone(),
                h.expires_at.clone(),
                h.stale_until.clone(),
            ]);
        }
        (None, Some(error)) => row.push(format!("error: {error}")),
        (None, None) => row.push("no".to_owned()),
    }
    row
}

pub(crate) async fn delete(cache: &TieredCache, text: &str, json: bool) -> Outcome {
    let key = parse_key(text)?;
    let found = cache.delete(&key).await?;
    if json {
        print_json(&serde_json::json!({ "key": key.as_str(), "deleted": found }))?;
    } else if found {
        note(&format!("deleted {key}"));
    }
    if found {
        Ok(())
    } else {
        Err(Failure::not_found(format!("not found: {key}")))
    }
}
