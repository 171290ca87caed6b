//! Config files: the stack described in YAML, TOML or JSON.
//!
//! Two forms are accepted under `cache:`:
//!
//! - the full form, a list of tiers selected by `kind`, each with its
//!   backend's own fields:
//!
//!   ```yaml
//!   cache:
//!     schema_version: 1
//!     codec: msgpack
//!     tiers:
//!       - kind: memory
//!         ttl: 1h
//!         max_entries: 1000
//!       - kind: sqlite
//!         path: ~/.cache/mk_torrent/metadata.db
//!         ttl: 7d
//!         max_size: 512MiB
//!   ```
//!
//! - the RFC's flat block, which means memory + SQLite
//!   (`{location}/metadata.db`):
//!
//!   ```yaml
//!   cache:
//!     enabled: true
//!     file_ttl_days: 7
//!     memory_ttl_seconds: 3600
//!     max_memory_entries: 1000
//!     location: "~/.cache/mk_torrent"
//!   ```
//!
//! Unknown fields are errors (a typo must not silently become a default),
//! and errors name the file and the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack_core::{
    BuildContext, Codec, Compression, Error, Operation, Rate, Result, TierConfig, units,
};

use crate::{Coordination, RateScope, SourcePolicy, TieredCache};

/// A config file: everything lives under `cache:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The cache section.
    pub cache: CacheConfig,
    /// The `proxy:` section, read by `tierstack proxy`.
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// Where the config came from.
    #[serde(skip)]
    pub origin: ConfigOrigin,
    /// The `TIERSTACK_…` variables that changed it.
    #[serde(skip)]
    pub overrides: Vec<String>,
    /// `TIERSTACK_…` variables that name no config field (left alone, but
    /// shown by `tierstack config check` in case one is a typo).
    #[serde(skip)]
    pub ignored_variables: Vec<String>,
}

/// Where a [`Config`] came from, in the order [`Config::discover`] looks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ConfigOrigin {
    /// Parsed from text handed to [`Config::parse`].
    #[default]
    Text,
    /// A file named by the caller (`--config FILE`, [`Config::load`]).
    Explicit(PathBuf),
    /// The file named by `TIERSTACK_CONFIG`.
    EnvVar(PathBuf),
    /// `./tierstack.yaml`, `.yml`, `.toml` or `.json` in the working directory.
    WorkingDir(PathBuf),
    /// `~/.config/tierstack/config.yaml` (the platform's config directory).
    UserConfig(PathBuf),
    /// No file: the embedded default (memory + SQLite in the user cache
    /// directory).
    Embedded,
}

impl fmt::Display for ConfigOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text => f.write_str("text"),
            Self::Explicit(p) => write!(f, "{}", p.display()),
            Self::EnvVar(p) => write!(f, "{} (from TIERSTACK_CONFIG)", p.display()),
            Self::WorkingDir(p) => write!(f, "{} (working directory)", p.display()),
            Self::UserConfig(p) => write!(f, "{} (user config)", p.display()),
            Self::Embedded => f.write_str("embedded default (memory + SQLite)"),
        }
    }
}

/// The config used when no file is found: memory (1 h, 1000 entries) over
/// SQLite (7 days) in the user cache directory.
pub const EMBEDDED_DEFAULT: &str = "\
cache:
  tiers:
    - kind: memory
      ttl: 1h
      max_entries: 1000
    - kind: sqlite
      ttl: 7d
";

/// Fields of `cache:`; a `TIERSTACK_…` variable whose first segment is not
/// one of them is ignored. A test keeps this list equal to the struct.
pub const CACHE_FIELDS: &[&str] = &[
    "enabled",
    "schema_version",
    "codec",
    "compression",
    "compression_level",
    "compression_min_size",
    "default_ttl",
    "stale_for",
    "negative_ttl",
    "offline",
    "sources",
    "coordination",
    "lease_ttl",
    "expected_processes",
    "stats_file",
    "tiers",
    "file_ttl_days",
    "memory_ttl_seconds",
    "max_memory_entries",
    "location",
];

/// Variables of the `TIERSTACK_` family that are not config overrides.
const NOT_OVERRIDES: &[&str] = &["TIERSTACK_CONFIG"];

/// Compression of new entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionChoice {
    /// No compression.
    None,
    /// zstd above `compression_min_size`.
    #[default]
    Zstd,
}

/// The `proxy:` section of a config file, for `tierstack proxy`
/// (`tierstack-http` turns it into a running proxy).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The address to listen on (default `127.0.0.1:8787`).
    #[serde(default)]
    pub listen: Option<String>,
    /// Where requests go, by path prefix (the longest match wins).
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// A shared cache (default `true`): `private` answers are not stored,
    /// `s-maxage` wins, answers to requests with `Authorization` are stored
    /// only when they say they may be.
    #[serde(default)]
    pub shared: Option<bool>,
    /// Larger answers pass through uncached (default 8 MiB).
    #[serde(default, with = "units::size_opt")]
    pub max_body: Option<u64>,
    /// The answer header that says where it came from (default `x-cache`;
    /// an empty string for none).
    #[serde(default)]
    pub status_header: Option<String>,
    /// Departures from the answers' own headers, by host and path (first
    /// match wins).
    #[serde(default)]
    pub overrides: Vec<OverrideConfig>,
    /// How long a request may wait for the upstream (connect, answer and
    /// body) before the proxy answers `504` (default
    /// 30 s; a stale answer is served instead where one is at hand).
    #[serde(default, with = "units::duration_opt")]
    pub timeout: Option<Duration>,
    /// Route templates (`/books/{asin}`): answers to matching paths are
    /// stored under key source `{host}{template}`, one per endpoint in
    /// `tierstack stats` (first match wins).
    #[serde(default)]
    pub routes: Vec<String>,
}

/// One upstream of the proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct UpstreamConfig {
    /// Requests whose path starts with this go here, the prefix replaced by
    /// the URL's path (default `/`).
    #[serde(default = "slash")]
    pub prefix: String,
    /// The upstream's base URL (`https://api.example.com`).
    pub url: String,
}

/// An override of the proxy (see `tierstack_http::Override`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OverrideConfig {
    /// Only this upstream host (default: any).
    #[serde(default)]
    pub host: Option<String>,
    /// Only paths starting with this (default `/`).
    #[serde(default = "slash")]
    pub path: String,
    /// The key source of these answers (default: the host).
    #[serde(default)]
    pub source: Option<String>,
    /// Every stored answer is fresh this long, whatever its headers.
    #[serde(default, with = "units::duration_opt")]
    pub ttl: Option<Duration>,
    /// Store answers marked `no-cache` (never those marked `no-store`).
    #[serde(default)]
    pub ignore_no_cache: bool,
    /// Store `404` answers this long.
    #[serde(default, with = "units::duration_opt")]
    pub cache_not_found: Option<Duration>,
}

fn slash() -> String {
    "/".to_owned()
}

/// The backends of this workspace and the cargo feature of `tierstack`
/// that compiles each in.
const BACKEND_FEATURES: [&str; 5] = ["memory", "sqlite", "redb", "sled", "redis"];

/// A parse error that names a backend kind this build lacks says which
/// cargo feature brings it (the parser only lists the kinds compiled in).
fn with_feature_hint(message: String) -> String {
    let missing = BACKEND_FEATURES
        .iter()
        .find(|kind| message.contains(&format!("unknown variant `{kind}`")));
    match missing {
        Some(kind) => format!(
            "{message} (the `{kind}` backend is compiled in by the `{kind}` cargo feature of `tierstack`: `tierstack = {{ version = \"…\", features = [\"{kind}\"] }}`)"
        ),
        None => message,
    }
}

/// Per-source policy in a config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SourceConfig {
    /// Freshness of the source's values.
    #[serde(default, with = "units::duration_opt")]
    pub ttl: Option<Duration>,
    /// Stale window after expiry.
    #[serde(default, with = "units::duration_opt")]
    pub stale_for: Option<Duration>,
    /// How long "not found" is cached.
    #[serde(default, with = "units::duration_opt")]
    pub negative_ttl: Option<Duration>,
    /// How long an expired entry with validators (an `ETag`,
    /// `Last-Modified`) is kept after its stale window for a revalidation
    /// (default 7 days).
    #[serde(default, with = "units::duration_opt")]
    pub retain_for: Option<Duration>,
    /// The upstream's request budget, `"10/s"`, `"600/min"`, `"3/10s"`.
    #[serde(default)]
    pub rate: Option<String>,
    /// Requests allowed at once after a quiet spell (default 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Sources with the same group spend one budget and share one circuit.
    #[serde(default)]
    pub rate_group: Option<String>,
    /// `local` (each process its own budget, the default) or `shared`
    /// (one budget for every process sharing the coordinating tier).
    #[serde(default)]
    pub rate_scope: Option<RateScope>,
    /// The longest a call waits for a slot of the budget.
    #[serde(default, with = "units::duration_opt")]
    pub max_wait: Option<Duration>,
    /// `off`, `local` or `shared` single-flight for this source.
    #[serde(default)]
    pub coordination: Option<Coordination>,
}

impl SourceConfig {
    /// The policy this block gives `pattern`'s sources.
    fn policy(&self, pattern: &str) -> Result<SourcePolicy> {
        let field = |name: &str| format!("cache.sources.{pattern:?}.{name}");
        let mut policy = SourcePolicy {
            ttl: self.ttl,
            stale_for: self.stale_for,
            negative_ttl: self.negative_ttl,
            retain_for: self.retain_for,
            max_wait: self.max_wait,
            coordination: self.coordination,
            rate_scope: self.rate_scope.unwrap_or_default(),
            ..SourcePolicy::default()
        };
        if let Some(group) = &self.rate_group {
            if group.trim().is_empty() {
                return Err(Error::config(format!("{} is empty", field("rate_group"))));
            }
            policy.rate_group = Some(Arc::from(group.as_str()));
        }
        match (&self.rate, self.burst) {
            (Some(rate), burst) => {
                let rate: Rate = rate
                    .parse()
                    .map_err(|e| Error::config(format!("{}: {e}", field("rate"))))?;
                let rate = rate.with_burst(burst.unwrap_or(1)).ok_or_else(|| {
                    Error::config(format!(
                        "{} is 0: no request could ever go; use 1 or more",
                        field("burst")
                    ))
                })?;
                policy.rate = Some(rate);
            }
            (None, Some(_)) => {
                return Err(Error::config(format!(
                    "{} is set without {}: a burst belongs to a rate",
                    field("burst"),
                    field("rate")
                )));
            }
            (None, None) => {}
        }
        if self.rate_scope == Some(RateScope::Shared)
            && policy.rate.is_none()
            && policy.rate_group.is_none()
        {
            return Err(Error::config(format!(
                "{} is shared, but the source has no rate to share; set {}",
                field("rate_scope"),
                field("rate")
            )));
        }
        Ok(policy)
    }
}

/// The `cache:` section.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// `false` makes a pass-through cache: nothing is opened or stored.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The application's schema version (default 1).
    #[serde(default = "one")]
    pub schema_version: u32,
    /// Codec of new entries (`msgpack`, `json`, `bincode`). Default:
    /// `msgpack`, except in the RFC's flat form, where it is `json` so that
    /// the `data JSON` column of its table holds JSON.
    #[serde(default)]
    pub codec: Option<Codec>,
    /// `zstd` or `none`. Default: `zstd`, except in the RFC's flat form,
    /// where it is `none` (readable `data` column).
    #[serde(default)]
    pub compression: Option<CompressionChoice>,
    /// zstd level (default 3).
    #[serde(default = "three")]
    pub compression_level: i32,
    /// Smaller encoded values are stored uncompressed (default 1 KiB).
    #[serde(default, with = "units::size_opt")]
    pub compression_min_size: Option<u64>,
    /// TTL for tiers without their own.
    #[serde(default, with = "units::duration_opt")]
    pub default_ttl: Option<Duration>,
    /// Default stale window.
    #[serde(default, with = "units::duration_opt")]
    pub stale_for: Option<Duration>,
    /// Default TTL of "not found" answers.
    #[serde(default, with = "units::duration_opt")]
    pub negative_ttl: Option<Duration>,
    /// Start offline: serve only from cache.
    #[serde(default)]
    pub offline: bool,
    /// Policies by source pattern (`audnexus:*`, `pathinfo`).
    #[serde(default)]
    pub sources: BTreeMap<String, SourceConfig>,
    /// `off`, `local` or `shared` (default) single-flight.
    #[serde(default)]
    pub coordination: Option<Coordination>,
    /// How long a cross-process lease lasts without renewal (default 5s).
    #[serde(default, with = "units::duration_opt")]
    pub lease_ttl: Option<Duration>,
    /// Processes sharing a `rate_scope: shared` budget, for each one's share
    /// while the coordinating tier cannot be reached (default 1).
    #[serde(default)]
    pub expected_processes: Option<u32>,
    /// A JSON file where every process adds its hit/miss counters when its
    /// cache is dropped (shown by `tierstack stats`); `~` and `$VAR` are
    /// expanded. Default: `{location}/stats.json` in the flat form and
    /// beside the embedded default's database, none otherwise.
    #[serde(default)]
    pub stats_file: Option<String>,
    /// The tiers, L1 first (full form).
    #[serde(default)]
    pub tiers: Option<Vec<Box<dyn TierConfig>>>,
    /// RFC form: SQLite TTL in days.
    #[serde(default)]
    pub file_ttl_days: Option<f64>,
    /// RFC form: memory TTL in seconds.
    #[serde(default)]
    pub memory_ttl_seconds: Option<u64>,
    /// RFC form: memory capacity.
    #[serde(default)]
    pub max_memory_entries: Option<u64>,
    /// RFC form: directory of `metadata.db`.
    #[serde(default)]
    pub location: Option<String>,
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

fn three() -> i32 {
    3
}

impl Config {
    /// Reads a config file, then applies the process's `TIERSTACK_…`
    /// environment overrides (see [`Config::load_with_env`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_env(path, environment()?)
    }

    /// Reads a config file; the format follows the extension (`.yaml`/`.yml`,
    /// `.toml`, `.json`). Errors name the file and, where the parser knows
    /// it, the line and column.
    ///
    /// Then each `TIERSTACK_NAME=value` in `vars` overrides a field of
    /// `cache:`: the name is split on `__` into a path, lower-cased, and a
    /// number indexes a list, so `TIERSTACK_TIERS__1__PATH=/tmp/c.db` sets
    /// `cache.tiers[1].path` and `TIERSTACK_ENABLED=false` turns caching
    /// off. Values are read as JSON when they parse as JSON (`false`, `3`,
    /// `"007"`), else as text (`7d`, `/tmp/c.db`). Variables whose first
    /// segment is not a field of `cache:` are left alone and listed in
    /// [`Config::ignored_variables`].
    pub fn load_with_env(
        path: impl AsRef<Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}", path.display())).with_source(e)
        })?;
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let mut config = Self::parse_with_env(&text, extension, vars).map_err(|e| {
            Error::config(format!("{}: {}", path.display(), e.message()))
                .with_operation(Operation::Build)
        })?;
        config.origin = ConfigOrigin::Explicit(path.to_owned());
        Ok(config)
    }

    /// Parses config text in `format` (`yaml`, `yml`, `toml` or `json`),
    /// without environment overrides.
    pub fn parse(text: &str, format: &str) -> Result<Self> {
        let parsed = match format.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => serde_saphyr::from_str(text).map_err(|e| e.to_string()),
            "toml" => toml::from_str(text).map_err(|e| e.to_string()),
            "json" => serde_json::from_str(text).map_err(|e| e.to_string()),
            other => Err(unknown_format(other)),
        };
        parsed.map_err(|e| Error::config(with_feature_hint(e)))
    }

    /// Parses config text, then applies the `TIERSTACK_…` overrides among
    /// `vars` (see [`Config::load_with_env`]).
    pub fn parse_with_env(
        text: &str,
        format: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let (overrides, ignored): (Vec<_>, Vec<_>) = vars
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with("TIERSTACK_") && !NOT_OVERRIDES.contains(&name.as_str())
            })
            .partition(|(name, _)| {
                let first = name["TIERSTACK_".len()..]
                    .split("__")
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase();
                CACHE_FIELDS.contains(&first.as_str())
            });
        let ignored = ignored.into_iter().map(|(name, _)| name).collect();
        if overrides.is_empty() {
            // Straight from the text, so errors keep their line and column.
            let mut config = Self::parse(text, format)?;
            config.ignored_variables = ignored;
            return Ok(config);
        }
        let mut tree = match format.to_ascii_lowercase().as_str() {
            "yaml" | "yml" => {
                serde_saphyr::from_str::<serde_json::Value>(text).map_err(|e| e.to_string())
            }
            "toml" => toml::from_str::<serde_json::Value>(text).map_err(|e| e.to_string()),
            "json" => serde_json::from_str::<serde_json::Value>(text).map_err(|e| e.to_string()),
            other => Err(unknown_format(other)),
        }
        .map_err(|e| Error::config(with_feature_hint(e)))?;
        let mut names = Vec::with_capacity(overrides.len());
        let mut sorted = overrides;
        // Sorted, so that the outcome does not depend on the environment's order.
        sorted.sort();
        for (name, value) in sorted {
            apply_override(&mut tree, &name, &value).map_err(Error::config)?;
            names.push(name);
        }
        let mut config: Self = serde_json::from_value(tree).map_err(|e| {
            Error::config(format!("{e} (after the overrides {})", names.join(", ")))
        })?;
        config.overrides = names;
        config.ignored_variables = ignored;
        Ok(config)
    }

    /// Finds the config the way the `tierstack` CLI does: `explicit` (its
    /// `--config FILE`), else the file named by `TIERSTACK_CONFIG`, else
    /// `./tierstack.yaml` (`.yml`, `.toml`, `.json`), else
    /// `~/.config/tierstack/config.yaml` (the platform's config directory),
    /// else [`EMBEDDED_DEFAULT`]. Environment overrides apply to whichever
    /// is found; [`Config::origin`] says which it was.
    pub fn discover(explicit: Option<&Path>) -> Result<Self> {
        let vars = environment()?;
        let with_origin = |path: PathBuf, origin: fn(PathBuf) -> ConfigOrigin| {
            let mut config = Self::load_with_env(&path, vars.clone())?;
            config.origin = origin(path);
            Ok(config)
        };
        if let Some(path) = explicit {
            return with_origin(path.to_owned(), ConfigOrigin::Explicit);
        }
        if let Some((_, path)) = vars
            .iter()
            .find(|(n, v)| n == "TIERSTACK_CONFIG" && !v.is_empty())
        {
            return with_origin(PathBuf::from(path), ConfigOrigin::EnvVar);
        }
        for name in [
            "tierstack.yaml",
            "tierstack.yml",
            "tierstack.toml",
            "tierstack.json",
        ] {
            let path = PathBuf::from(name);
            if path.is_file() {
                return with_origin(path, ConfigOrigin::WorkingDir);
            }
        }
        if let Some(dirs) = directories::BaseDirs::new() {
            let path = dirs.config_dir().join("tierstack").join("config.yaml");
            if path.is_file() {
                return with_origin(path, ConfigOrigin::UserConfig);
            }
        }
        let mut config = Self::parse_with_env(EMBEDDED_DEFAULT, "yaml", vars)?;
        config.origin = ConfigOrigin::Embedded;
        Ok(config)
    }
}

impl Config {
    /// The process's environment as [`Config::discover`] and
    /// [`Config::load`] read it, for callers that pass variables to
    /// [`Config::load_with_env`] themselves: a `TIERSTACK_…` variable that
    /// is not UTF-8 is an error naming it, other such variables are skipped.
    pub fn environment() -> Result<Vec<(String, String)>> {
        environment()
    }
}

/// The process's environment as text. A `TIERSTACK_…` variable that is not
/// UTF-8 is an error naming it (it was meant for us, and dropping it would
/// silently change the config); any other one is none of our business and
/// is skipped.
fn environment() -> Result<Vec<(String, String)>> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => vars.push((name, value)),
            (Ok(name), Err(_)) if name.starts_with("TIERSTACK_") => {
                return Err(Error::config(format!(
                    "environment variable {name} is not valid UTF-8; fix or unset it"
                )));
            }
            (Err(name), _) if name.as_encoded_bytes().starts_with(b"TIERSTACK_") => {
                return Err(Error::config(format!(
                    "the name of environment variable {} is not valid UTF-8; unset it",
                    name.to_string_lossy()
                )));
            }
            _ => {}
        }
    }
    Ok(vars)
}

fn unknown_format(format: &str) -> String {
    format!("unknown config format {format:?}; use .yaml, .toml or .json")
}

/// Sets the field `name` (`TIERSTACK_TIERS__1__PATH`) names inside `tree`'s
/// `cache:` section.
fn apply_override(
    tree: &mut serde_json::Value,
    name: &str,
    value: &str,
) -> std::result::Result<(), String> {
    use serde_json::Value;
    let path: Vec<String> = name["TIERSTACK_".len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        return Err(format!("{name}: empty segment in the variable name"));
    }
    if !tree.is_object() {
        return Err("the config file is not a table".to_owned());
    }
    let mut node = tree
        .as_object_mut()
        .map(|root| {
            root.entry("cache")
                .or_insert_with(|| Value::Object(serde_json::Map::default()))
        })
        .ok_or_else(|| "the config file is not a table".to_owned())?;
    let mut walked = String::from("cache");
    for segment in &path {
        node = match node {
            // A list item can only be overridden where the file has the list:
            // a new map keyed "1" would only fail later, as "expected a sequence".
            Value::Object(map)
                if walked == "cache" && segment == "tiers" && !map.contains_key("tiers") =>
            {
                return Err(format!(
                    "{name}: the config file has no `tiers` list to override{}",
                    if map.contains_key("location") || map.contains_key("file_ttl_days") {
                        " (it uses the flat form: override its fields instead, e.g. TIERSTACK_LOCATION)"
                    } else {
                        ""
                    }
                ));
            }
            Value::Object(map) => map
                .entry(segment.clone())
                .or_insert_with(|| Value::Object(serde_json::Map::default())),
            Value::Array(items) => {
                let len = items.len();
                let index: usize = segment.parse().map_err(|_| {
                    format!("{name}: {walked} is a list, so {segment:?} must be an index")
                })?;
                items.get_mut(index).ok_or_else(|| {
                    format!("{name}: {walked} has {len} entries, there is no index {index}")
                })?
            }
            _ => return Err(format!("{name}: {walked} is a value, not a table or list")),
        };
        walked = format!("{walked}.{segment}");
    }
    *node = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok(())
}

impl TieredCache {
    /// Builds the cache a config describes, opening every tier.
    pub async fn from_config(config: &Config) -> Result<Self> {
        let c = &config.cache;
        let flat = c.file_ttl_days.is_some()
            || c.memory_ttl_seconds.is_some()
            || c.max_memory_entries.is_some()
            || c.location.is_some();
        let (default_codec, default_compression) = if flat {
            (Codec::Json, CompressionChoice::None)
        } else {
            (Codec::MsgPack, CompressionChoice::Zstd)
        };
        let codec = c.codec.unwrap_or(default_codec);
        let compression = match c.compression.unwrap_or(default_compression) {
            CompressionChoice::None => Compression::None,
            CompressionChoice::Zstd => Compression::Zstd {
                level: c.compression_level,
                min_size: usize::try_from(c.compression_min_size.unwrap_or(1024))
                    .unwrap_or(usize::MAX),
            },
        };
        let mut builder = TieredCache::builder()
            .enabled(c.enabled)
            .schema_version(c.schema_version)
            .codec(codec)
            .compression(compression)
            .offline(c.offline);
        if let Some(ttl) = c.default_ttl {
            builder = builder.default_ttl(ttl);
        }
        if let Some(window) = c.stale_for {
            builder = builder.stale_for(window);
        }
        if let Some(ttl) = c.negative_ttl {
            builder = builder.negative_ttl(ttl);
        }
        check_ttls(c)?;
        for (pattern, policy) in &c.sources {
            builder = builder.source_policy(pattern, policy.policy(pattern)?);
        }
        builder = with_coordination(builder, c)?;
        if !c.enabled {
            // A pass-through cache opens nothing.
            return builder.try_build();
        }
        let stats_path = stats_path(c, &config.origin)?;
        if let Some(path) = &stats_path {
            builder = builder.stats_file(path.clone());
        }
        let ctx = BuildContext::new(c.schema_version);
        let tiers = match (&c.tiers, flat) {
            (Some(_), true) => {
                return Err(Error::config(
                    "cache: use either `tiers` or the flat form (file_ttl_days, memory_ttl_seconds, max_memory_entries, location), not both",
                ));
            }
            (Some(tiers), false) if tiers.is_empty() => {
                return Err(Error::config(
                    "cache.tiers is empty: nothing would be stored; list at least one tier, or set `enabled: false` for a cache that stores nothing",
                )
                .with_operation(Operation::Build));
            }
            (Some(tiers), false) => {
                let mut built = Vec::with_capacity(tiers.len());
                for (i, tier) in tiers.iter().enumerate() {
                    // The kind is kept: a read-only directory is not a
                    // config mistake, and the CLI's exit code tells them apart.
                    built.push(tier.build(&ctx).await.map_err(|e| {
                        Error::new(e.kind(), format!("cache.tiers[{i}]: {}", e.report()))
                            .with_operation(Operation::Build)
                    })?);
                }
                built
            }
            (None, _) => rfc_tiers(c, &ctx).await?,
        };
        for (i, tier) in tiers.into_iter().enumerate() {
            if tier.max_ttl() == Some(Duration::ZERO) {
                return Err(zero_ttl(&format!("cache.tiers[{i}].ttl")));
            }
            builder = builder.shared_tier(tier);
        }
        // Once more now that the tiers exist: a stats file naming the store
        // a tier has just created is refused on the first run too.
        if let Some(path) = &stats_path {
            check_stats_file(path)?;
        }
        builder.try_build()
    }
}

/// Where the cache adds up its counters: `cache.stats_file`, else beside the
/// flat form's database, else beside the embedded default's; checked to be
/// a file tierstack may replace.
fn stats_path(c: &CacheConfig, origin: &ConfigOrigin) -> Result<Option<std::path::PathBuf>> {
    if let Some(location) = &c.location {
        check_location(location)?;
    }
    let (file, field) = match (&c.stats_file, &c.location) {
        (Some(file), _) => (file.clone(), "cache.stats_file"),
        (None, Some(location)) => (
            format!("{}/stats.json", location.trim_end_matches('/')),
            "cache.location",
        ),
        (None, None) if *origin == ConfigOrigin::Embedded => (
            tierstack_core::paths::default_cache_path("stats.json"),
            "the embedded default config (no config file was found; it keeps its cache in the user cache directory)",
        ),
        (None, None) => return Ok(None),
    };
    let path =
        tierstack_core::paths::expand(&file).map_err(|e| Error::config(format!("{field}: {e}")))?;
    check_stats_file(&path)?;
    Ok(Some(path))
}

/// The flat form's `location` is a directory (made if missing): one that
/// names something else would otherwise surface as an error about a file
/// in it the user never named.
fn check_location(location: &str) -> Result<()> {
    let path = tierstack_core::paths::expand(location)
        .map_err(|e| Error::config(format!("cache.location: {e}")))?;
    match std::fs::metadata(&path) {
        Ok(meta) if !meta.is_dir() => Err(Error::config(format!(
            "cache.location: {} is not a directory (the flat form keeps metadata.db and stats.json in it)",
            path.display()
        ))),
        _ => Ok(()),
    }
}

fn check_stats_file(path: &std::path::Path) -> Result<()> {
    crate::stats_file::check_path(path)
        .map_err(|e| Error::config(format!("cache.stats_file: {}", e.message())))
}

/// The cache-wide coordination settings: single-flight's reach, the lease
/// TTL, and how many processes share a shared budget.
fn with_coordination(
    mut builder: crate::TieredCacheBuilder,
    c: &CacheConfig,
) -> Result<crate::TieredCacheBuilder> {
    if let Some(coordination) = c.coordination {
        builder = builder.coordination(coordination);
    }
    if let Some(ttl) = c.lease_ttl {
        if ttl < Duration::from_millis(100) {
            return Err(Error::config(format!(
                "cache.lease_ttl is {}: a lease must outlast a round trip to its store; use 100ms or more (default 5s)",
                units::format_duration(ttl)
            )));
        }
        builder = builder.lease_ttl(ttl);
    }
    if let Some(n) = c.expected_processes {
        if n == 0 {
            return Err(Error::config(
                "cache.expected_processes is 0: at least this process spends the budget; use 1 or more",
            ));
        }
        builder = builder.expected_processes(n);
    }
    Ok(builder)
}

/// A TTL of zero stores entries that are dead on arrival: every write
/// would be lost without a word.
fn zero_ttl(what: &str) -> Error {
    Error::config(format!(
        "{what} is 0: every entry would expire as it is written; remove it for the default, or set `enabled: false` to cache nothing"
    ))
    .with_operation(Operation::Build)
}

/// Refuses the cache-wide and per-source TTLs of zero (the tiers' own are
/// checked once built, as only they know their field).
fn check_ttls(c: &CacheConfig) -> Result<()> {
    if c.default_ttl == Some(Duration::ZERO) {
        return Err(zero_ttl("cache.default_ttl"));
    }
    match c
        .sources
        .iter()
        .find(|(_, policy)| policy.ttl == Some(Duration::ZERO))
    {
        Some((pattern, _)) => Err(zero_ttl(&format!("cache.sources.{pattern:?}.ttl"))),
        None => Ok(()),
    }
}

/// The RFC's flat block: memory, then SQLite at `{location}/metadata.db`.
async fn rfc_tiers(
    c: &CacheConfig,
    ctx: &BuildContext,
) -> Result<Vec<Arc<dyn tierstack_core::Tier>>> {
    #[cfg(all(feature = "memory", feature = "sqlite"))]
    {
        let mut memory =
            crate::MemoryConfig::with_max_entries(c.max_memory_entries.unwrap_or(1000));
        memory.ttl = Some(Duration::from_secs(c.memory_ttl_seconds.unwrap_or(3600)));
        let location = c
            .location
            .clone()
            .unwrap_or_else(|| "~/.cache/tierstack".to_owned());
        let days = c.file_ttl_days.unwrap_or(7.0);
        if !(days.is_finite() && days > 0.0) {
            return Err(Error::config(format!(
                "cache.file_ttl_days must be a positive number, not {days}"
            )));
        }
        let sqlite =
            crate::SqliteConfig::new(format!("{}/metadata.db", location.trim_end_matches('/')))
                .ttl(Some(Duration::from_secs_f64(days * 86_400.0)));
        Ok(vec![memory.build(ctx).await?, sqlite.build(ctx).await?])
    }
    #[cfg(not(all(feature = "memory", feature = "sqlite")))]
    {
        let _ = (c, ctx);
        Err(Error::config(
            "the flat cache form needs the `memory` and `sqlite` features of tierstack",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::with_feature_hint;

    #[test]
    fn a_backend_this_build_lacks_is_named_with_its_cargo_feature() {
        let hinted = with_feature_hint(
            "line 6 column 7: unknown variant `redb`, expected one of memory, sqlite".to_owned(),
        );
        assert!(
            hinted.contains("`redb` cargo feature of `tierstack`"),
            "{hinted}"
        );
        let other = "unknown variant `memcached`, expected one of memory, sqlite".to_owned();
        assert_eq!(
            with_feature_hint(other.clone()),
            other,
            "not a backend of ours"
        );
    }
}
