//! Per-source caching policy: how long answers of one source stay fresh, how
//! long they may be served stale when the source fails, and how long a "not
//! found" is remembered.

use std::time::Duration;

/// Policy for the keys of one source (or a family of sources).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
            .map(|(_, policy)| *policy)
            .unwrap_or_default()
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
}
