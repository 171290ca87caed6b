//! Per-source caching policy: how long answers of one source stay fresh, how
//! long they may be served stale when the source fails, how long a "not
//! found" is remembered, and how much of the upstream's request budget the
//! cache may spend.

use std::sync::Arc;
use std::time::Duration;

use tierstack_core::Rate;

/// Where the request budget of a rate-limited source is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RateScope {
    /// Each process spends its own budget.
    #[default]
    Local,
    /// Every process sharing the cache's coordinating tier (Redis, or one
    /// SQLite file) spends one budget together; while that tier cannot be
    /// reached, each process spends `rate / expected_processes` alone.
    Shared,
}

/// How far single-flight reaches: one fetch per cold key at a time in
/// the process, or across every process sharing the coordinating tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Coordination {
    /// No single-flight: every caller of a cold key fetches.
    Off,
    /// One fetch per key at a time in this process.
    Local,
    /// One fetch per key at a time across the processes (and hosts) that
    /// share the lowest tier that coordinates (a lease there); in-process
    /// only when no tier coordinates or it cannot be reached. Circuits
    /// opened by a `Retry-After` are shared the same way.
    #[default]
    Shared,
}

/// Policy for the keys of one source (or a family of sources).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SourcePolicy {
    /// Freshness of values written with [`Ttl::TierDefault`](crate::Ttl),
    /// capped by each tier's own TTL. `None`: each tier's TTL.
    pub ttl: Option<Duration>,
    /// How long after expiry a value may still be served when fetching fails
    /// or is too slow (stale-if-error). `None`: the cache's default.
    pub stale_for: Option<Duration>,
    /// How long a "not found" answer is cached. `None`: the cache's default.
    pub negative_ttl: Option<Duration>,
    /// How long an expired entry that carries validators is kept after its
    /// stale window, never served, for a revalidation
    /// ([`TieredCache::get_or_revalidate`](crate::TieredCache::get_or_revalidate)).
    /// `None`: [`DEFAULT_RETAIN_FOR`](crate::DEFAULT_RETAIN_FOR).
    pub retain_for: Option<Duration>,
    /// The upstream's request budget: calls that reach the upstream
    /// (misses, refreshes, warming) wait for a slot; hits never do.
    /// `None`: no limit.
    pub rate: Option<Rate>,
    /// Sources with the same group spend one budget and share one
    /// `Retry-After` circuit (several endpoints of one API quota).
    /// `None`: the source is its own group.
    pub rate_group: Option<Arc<str>>,
    /// Where the budget is counted. Default: each process alone.
    pub rate_scope: RateScope,
    /// The longest a call waits for a slot of the budget (also bounded by
    /// its soft and hard timeouts); past it the call is served stale or
    /// fails with [`ErrorKind::Throttled`](crate::ErrorKind::Throttled).
    /// `None`: as long as the budget needs.
    pub max_wait: Option<Duration>,
    /// How far single-flight reaches. `None`: the cache's default.
    pub coordination: Option<Coordination>,
}

impl SourcePolicy {
    /// A policy with a freshness TTL.
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl: Some(ttl),
            ..Self::default()
        }
    }

    /// Sets the stale window.
    #[must_use]
    pub fn stale_for(mut self, window: Duration) -> Self {
        self.stale_for = Some(window);
        self
    }

    /// Sets how long "not found" is cached.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Sets how long an expired entry with validators is kept for a
    /// revalidation.
    #[must_use]
    pub fn retain_for(mut self, retention: Duration) -> Self {
        self.retain_for = Some(retention);
        self
    }

    /// Limits the calls that reach the upstream to `rate`.
    #[must_use]
    pub fn rate(mut self, rate: Rate) -> Self {
        self.rate = Some(rate);
        self
    }

    /// Spends the budget and circuit of `group`, shared with every source
    /// in it.
    #[must_use]
    pub fn rate_group(mut self, group: impl Into<Arc<str>>) -> Self {
        self.rate_group = Some(group.into());
        self
    }

    /// Sets where the budget is counted.
    #[must_use]
    pub fn rate_scope(mut self, scope: RateScope) -> Self {
        self.rate_scope = scope;
        self
    }

    /// Sets the longest wait for a slot of the budget.
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = Some(wait);
        self
    }

    /// Sets how far single-flight reaches for this source.
    #[must_use]
    pub fn coordination(mut self, coordination: Coordination) -> Self {
        self.coordination = Some(coordination);
        self
    }

    /// The name of the budget and circuit `source` spends under this policy.
    pub(crate) fn group_of<'a>(&'a self, source: &'a str) -> &'a str {
        self.rate_group.as_deref().unwrap_or(source)
    }
}

/// Policies by source pattern: an exact source (`pathinfo`) or a prefix
/// ending in `*` (`audnexus:*`). The exact match wins, then the longest
/// prefix.
#[derive(Debug, Clone, Default)]
pub(crate) struct Policies {
    exact: Vec<(String, SourcePolicy)>,
    prefixes: Vec<(String, SourcePolicy)>,
}

impl Policies {
    pub(crate) fn insert(&mut self, pattern: &str, policy: SourcePolicy) {
        if let Some(prefix) = pattern.strip_suffix('*') {
            self.prefixes.retain(|(p, _)| p != prefix);
            self.prefixes.push((prefix.to_owned(), policy));
            // Longest prefix first.
            self.prefixes
                .sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        } else {
            self.exact.retain(|(p, _)| p != pattern);
            self.exact.push((pattern.to_owned(), policy));
        }
    }

    pub(crate) fn get(&self, source: &str) -> SourcePolicy {
        self.exact
            .iter()
            .find(|(s, _)| s == source)
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| source.starts_with(p.as_str()))
            })
            .map(|(_, policy)| policy.clone())
            .unwrap_or_default()
    }

    /// Every pattern (as written: prefixes end in `*`) and its policy.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (String, &SourcePolicy)> {
        let exact = self.exact.iter().map(|(p, policy)| (p.clone(), policy));
        let prefixes = self
            .prefixes
            .iter()
            .map(|(p, policy)| (format!("{p}*"), policy));
        exact.chain(prefixes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_beats_longest_prefix_beats_shorter_prefix() {
        let mut p = Policies::default();
        p.insert("audnexus:*", SourcePolicy::ttl(Duration::from_secs(1)));
        p.insert(
            "audnexus:search*",
            SourcePolicy::ttl(Duration::from_secs(2)),
        );
        p.insert("audnexus:book", SourcePolicy::ttl(Duration::from_secs(3)));
        assert_eq!(p.get("audnexus:book").ttl, Some(Duration::from_secs(3)));
        assert_eq!(p.get("audnexus:search").ttl, Some(Duration::from_secs(2)));
        assert_eq!(p.get("audnexus:chapters").ttl, Some(Duration::from_secs(1)));
        assert_eq!(p.get("pathinfo").ttl, None);
    }

    #[test]
    fn each_setter_sets_its_own_field() {
        let rate: Rate = "10/s".parse().unwrap();
        let policy = SourcePolicy::ttl(Duration::from_secs(60))
            .stale_for(Duration::from_secs(600))
            .negative_ttl(Duration::from_secs(5))
            .retain_for(Duration::from_secs(86_400))
            .rate(rate)
            .rate_group("api")
            .rate_scope(RateScope::Shared)
            .max_wait(Duration::from_secs(2))
            .coordination(Coordination::Local);
        assert_eq!(
            policy,
            SourcePolicy {
                ttl: Some(Duration::from_secs(60)),
                stale_for: Some(Duration::from_secs(600)),
                negative_ttl: Some(Duration::from_secs(5)),
                retain_for: Some(Duration::from_secs(86_400)),
                rate: Some(rate),
                rate_group: Some("api".into()),
                rate_scope: RateScope::Shared,
                max_wait: Some(Duration::from_secs(2)),
                coordination: Some(Coordination::Local),
            }
        );
        assert_eq!(policy.group_of("search"), "api");
        assert_eq!(SourcePolicy::default().group_of("search"), "search");
    }

    #[test]
    fn a_pattern_set_again_replaces_its_policy_and_is_listed_as_written() {
        let mut p = Policies::default();
        p.insert("files", SourcePolicy::ttl(Duration::from_secs(1)));
        p.insert("files", SourcePolicy::ttl(Duration::from_secs(2)));
        p.insert("api:*", SourcePolicy::ttl(Duration::from_secs(3)));
        p.insert("api:*", SourcePolicy::ttl(Duration::from_secs(4)));
        assert_eq!(p.get("files").ttl, Some(Duration::from_secs(2)));
        assert_eq!(p.get("api:search").ttl, Some(Duration::from_secs(4)));
        let listed: Vec<(String, Option<Duration>)> = p
            .iter()
            .map(|(pattern, policy)| (pattern, policy.ttl))
            .collect();
        assert_eq!(
            listed,
            [
                ("files".to_owned(), Some(Duration::from_secs(2))),
                ("api:*".to_owned(), Some(Duration::from_secs(4))),
            ]
        );
    }
}
