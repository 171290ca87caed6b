//! Cross-host invalidation: a channel on which the processes sharing a store
//! tell each other which keys they deleted, so that copies in their private
//! tiers (memory, a local file) go too.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::Result;
use crate::key::Key;
use crate::tier::ClearScope;

/// What was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Invalidation {
    /// One key.
    Key(Key),
    /// A clear of this scope.
    Clear(ClearScope),
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackplaneEvent {
    /// Another process removed this.
    Invalidate(Invalidation),
    /// The subscription was interrupted and is back: messages may have been
    /// lost in between, so private copies can no longer be trusted.
    Resync,
}

/// A publish/subscribe channel shared by every process using one store.
#[async_trait]
pub trait Backplane: Send + Sync + fmt::Debug {
    /// Tells the other processes. Messages a process published itself are
    /// not delivered back to its own subscription.
    async fn publish(&self, invalidation: &Invalidation) -> Result<()>;

    /// Starts receiving what other processes publish, reconnecting after
    /// failures (announced by [`BackplaneEvent::Resync`]) until the
    /// receiver is dropped.
    fn subscribe(&self) -> mpsc::Receiver<BackplaneEvent>;
}

/// The wire form of a message: who sent it and what it removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// A random id of the sending backplane instance.
    pub origin: u64,
    /// The canonical key, for a single-key invalidation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `all`, `expired`, or `source:<source>`, for a clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<String>,
}

impl Message {
    /// The message for `invalidation` sent by `origin`.
    pub fn new(origin: u64, invalidation: &Invalidation) -> Self {
        let (key, clear) = match invalidation {
            Invalidation::Key(key) => (Some(key.as_str().to_owned()), None),
            Invalidation::Clear(ClearScope::All) => (None, Some("all".to_owned())),
            Invalidation::Clear(ClearScope::Expired) => (None, Some("expired".to_owned())),
            Invalidation::Clear(ClearScope::Source(source)) => {
                (None, Some(format!("source:{source}")))
            }
        };
        Self { origin, key, clear }
    }

    /// What the message removes; `None` for a message this version does not
    /// understand (ignored, never an error).
    pub fn invalidation(&self) -> Option<Invalidation> {
        if let Some(key) = &self.key {
            return Key::parse(key).ok().map(Invalidation::Key);
        }
        let scope = match self.clear.as_deref()? {
            "all" => ClearScope::All,
            "expired" => ClearScope::Expired,
            other => ClearScope::Source(other.strip_prefix("source:")?.to_owned()),
        };
        Some(Invalidation::Clear(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_unknown_ones_are_ignored() {
        let key = Key::new("audnexus:book", [("asin", "B0&1")]);
        for invalidation in [
            Invalidation::Key(key),
            Invalidation::Clear(ClearScope::All),
            Invalidation::Clear(ClearScope::Expired),
            Invalidation::Clear(ClearScope::Source("pathinfo".to_owned())),
        ] {
            let message = Message::new(7, &invalidation);
            let wire = serde_json::to_string(&message).unwrap();
            let back: Message = serde_json::from_str(&wire).unwrap();
            assert_eq!(back.origin, 7);
            assert_eq!(back.invalidation(), Some(invalidation));
        }
        let odd: Message = serde_json::from_str(r#"{"origin":1,"clear":"everything"}"#).unwrap();
        assert_eq!(odd.invalidation(), None);
        let bad_key: Message =
            serde_json::from_str(r#"{"origin":1,"key":"no separator"}"#).unwrap();
        assert_eq!(bad_key.invalidation(), None);
    }
}
