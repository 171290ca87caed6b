use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tierstack_core::{BuildContext, Result, Tier, TierConfig, async_trait, units};

use crate::RedisTier;

/// Configuration of the Redis tier (`kind: redis`).
///
/// One of three deployments: a single server (`url`), a Cluster (`cluster`,
/// a list of seed nodes), or a master found through Sentinel (`sentinel`).
///
/// ```yaml
/// kind: redis
/// url: redis://cache.internal:6379
/// username: team-cache
/// password: $TEAM_CACHE_PASSWORD
/// prefix: mk_torrent
/// ttl: 30d
/// backplane: true
/// ```
///
/// The `Debug` output hides the password, also one written inside a URL.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Name in statistics and logs. Default `redis`.
    pub name: String,
    /// A single server: `redis://host:port/db` or `rediss://` for TLS;
    /// `$VAR` is expanded. Default `redis://127.0.0.1:6379` when neither
    /// `cluster` nor `sentinel` is set.
    pub url: Option<String>,
    /// A Redis Cluster: seed node URLs (`redis://host:port`, `rediss://`).
    pub cluster: Vec<String>,
    /// A master found through Sentinel.
    pub sentinel: Option<SentinelConfig>,
    /// ACL user name (`AUTH username password`); `$VAR` is expanded.
    pub username: Option<String>,
    /// Password (`requirepass` or the ACL user's); `$VAR` is expanded, so the
    /// file need not hold it. Never serialized, never printed.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// A PEM file of the certificate authority that signed the servers'
    /// certificates, for `rediss://` with a private CA; default: the
    /// system's trust store.
    pub tls_ca_file: Option<String>,
    /// Namespace: entries are `{prefix}:e:{schema_version}:{key}`, and
    /// `clear` touches nothing outside it. No `:`, `{`, `}`, spaces or
    /// control characters (so that no prefix's namespace holds another's).
    /// Default `tierstack`.
    pub prefix: String,
    /// Longest time an entry stays fresh in this tier. Default 7 days.
    #[serde(with = "units::duration_opt")]
    pub ttl: Option<Duration>,
    /// Time allowed to connect. Default 1 s.
    #[serde(with = "units::duration_opt")]
    pub connect_timeout: Option<Duration>,
    /// Time allowed for one command's answer; past it the call fails (and
    /// the cache goes on without this tier). Default 500 ms.
    #[serde(with = "units::duration_opt")]
    pub response_timeout: Option<Duration>,
    /// Reconnection attempts per failed connection. Default 1.
    pub retries: u32,
    /// Consecutive failures that open the circuit breaker; while it is
    /// open, reads are misses and writes are dropped without contacting
    /// the server. Default 5.
    pub breaker_threshold: u32,
    /// How long the breaker stays open before one call probes the server.
    /// Default 1 s.
    #[serde(with = "units::duration_opt")]
    pub breaker_cooldown: Option<Duration>,
    /// Publish deletes and clears on a pub/sub channel in the namespace,
    /// and drop what other processes delete from this process's private
    /// tiers. Default off.
    pub backplane: bool,
    /// Longest pause between two checks of a lease by a call waiting for
    /// it, while releases arrive as pub/sub messages (which wake waiters at
    /// once): the bound on how late a lease that expired without a release
    /// (a crashed holder) is seen. Without a live subscription waiters
    /// check at least every 50 ms. Default 250 ms.
    #[serde(with = "units::duration_opt")]
    pub lease_poll: Option<Duration>,
}

/// Sentinel: the master's name and the sentinels to ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SentinelConfig {
    /// The monitored master's name (`sentinel monitor NAME …`).
    pub master: String,
    /// Sentinel URLs (`redis://host:26379`).
    pub nodes: Vec<String>,
}

impl SentinelConfig {
    /// A master named `master`, found through `nodes`.
    pub fn new(master: impl Into<String>, nodes: Vec<String>) -> Self {
        Self {
            master: master.into(),
            nodes,
        }
    }
}

/// Default response timeout.
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// Default connect timeout.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default breaker cool-down.
pub(crate) const BREAKER_COOLDOWN: Duration = Duration::from_secs(1);
/// Default longest lease poll while releases wake waiters. 5% of the
/// cache's default lease TTL (5 s): a crashed holder's lease is taken over
/// at most 250 ms after it expired, and a waiter checks 4 times a second
/// instead of the 20 of polling alone (50 ms), which is what a fleet of
/// waiters costs Redis.
pub(crate) const LEASE_POLL: Duration = Duration::from_millis(250);

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            name: "redis".to_owned(),
            url: None,
            cluster: Vec::new(),
            sentinel: None,
            username: None,
            password: None,
            tls_ca_file: None,
            prefix: "tierstack".to_owned(),
            ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            connect_timeout: Some(CONNECT_TIMEOUT),
            response_timeout: Some(RESPONSE_TIMEOUT),
            retries: 1,
            breaker_threshold: 5,
            breaker_cooldown: Some(BREAKER_COOLDOWN),
            backplane: false,
            lease_poll: Some(LEASE_POLL),
        }
    }
}

/// Hides `user:password@` in a URL.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_deref().map(redact_url))
            .field(
                "cluster",
                &self
                    .cluster
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("sentinel", &self.sentinel.as_ref().map(SentinelView))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_ca_file", &self.tls_ca_file)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("retries", &self.retries)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("backplane", &self.backplane)
            .field("lease_poll", &self.lease_poll)
            .finish()
    }
}

struct SentinelView<'a>(&'a SentinelConfig);

impl fmt::Debug for SentinelView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentinelConfig")
            .field("master", &self.0.master)
            .field(
                "nodes",
                &self
                    .0
                    .nodes
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl RedisConfig {
    /// A single server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::default()
        }
    }

    /// A Redis Cluster reached through `seeds`.
    pub fn cluster(seeds: Vec<String>) -> Self {
        Self {
            cluster: seeds,
            ..Self::default()
        }
    }

    /// A master found through Sentinel.
    pub fn sentinel(sentinel: SentinelConfig) -> Self {
        Self {
            sentinel: Some(sentinel),
            ..Self::default()
        }
    }

    /// Sets the namespace prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the TTL cap.
    #[must_use]
    pub fn ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the ACL user and password.
    #[must_use]
    pub fn credentials(mut self, username: Option<String>, password: Option<String>) -> Self {
        self.username = username;
        self.password = password;
        self
    }

    /// Sets the response timeout.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = Some(timeout);
        self
    }

    /// Sets the breaker's threshold and cool-down.
    #[must_use]
    pub fn breaker(mut self, threshold: u32, cooldown: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cooldown = Some(cooldown);
        self
    }

    /// Turns the invalidation backplane on or off.
    #[must_use]
    pub fn backplane(mut self, on: bool) -> Self {
        self.backplane = on;
        self
    }

    /// Sets the longest pause between two checks of a waited-on lease while
    /// releases wake waiters (see [`RedisConfig::lease_poll`]).
    #[must_use]
    pub fn lease_poll(mut self, longest: Duration) -> Self {
        self.lease_poll = Some(longest);
        self
    }

    /// Sets the CA file for TLS.
    #[must_use]
    pub fn tls_ca_file(mut self, path: impl Into<String>) -> Self {
        self.tls_ca_file = Some(path.into());
        self
    }

    /// Sets the name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

#[typetag::serde(name = "redis")]
#[async_trait]
impl TierConfig for RedisConfig {
    async fn build(&self, ctx: &BuildContext) -> Result<Arc<dyn Tier>> {
        Ok(Arc::new(RedisTier::open(self, ctx.schema_version).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_passwords_also_inside_urls() {
        let mut config = RedisConfig::new("rediss://app:hunter2@cache:6380/0");
        config.password = Some("s3cret".to_owned());
        config.cluster = vec!["redis://:clusterpw@node1:7000".to_owned()];
        config.sentinel = Some(SentinelConfig::new(
            "main",
            vec!["redis://:sentinelpw@s1:26379".to_owned()],
        ));
        let text = format!("{config:?}");
        for secret in ["hunter2", "s3cret", "clusterpw", "sentinelpw"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(
            text.contains("cache:6380") && text.contains("***"),
            "{text}"
        );
    }

    #[test]
    fn the_password_is_never_serialized() {
        let mut config = RedisConfig::new("redis://cache:6379");
        config.password = Some("s3cret".to_owned());
        let json = serde_json::to_string(&config).unwrap();
        assert!(!json.contains("s3cret"), "{json}");
    }
}
