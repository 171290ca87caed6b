//! The invalidation backplane on Redis pub/sub: one channel in the
//! namespace (`{prefix}:c:invalidations:{schema_version}`), messages in JSON
//! naming their sender, and a subscriber that reconnects by itself.

use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Weak;
use std::time::Duration;

use futures_util::StreamExt as _;
use tierstack_core::backplane::Message;
use tierstack_core::{
    Backplane, BackplaneEvent, Error, ErrorKind, Invalidation, Result, async_trait,
};
use tokio::sync::mpsc;

use crate::backend::Shared;

/// Events a subscriber may fall behind by before the oldest are dropped
/// (replaced by a resync, which is always safe).
const BUFFER: usize = 1024;

/// Redis pub/sub as a [`Backplane`].
pub(crate) struct RedisBackplane {
    tier: Weak<Shared>,
    channel: String,
    /// Random per instance, so that a process ignores its own messages.
    origin: u64,
}

impl std::fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("channel", &self.channel)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

fn random_origin() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl RedisBackplane {
    pub(crate) fn new(tier: Weak<Shared>, channel: String) -> Self {
        Self {
            tier,
            channel,
            origin: random_origin(),
        }
    }
}

#[async_trait]
impl Backplane for RedisBackplane {
    async fn publish(&self, invalidation: &Invalidation) -> Result<()> {
        let Some(tier) = self.tier.upgrade() else {
            return Err(Error::new(ErrorKind::Unavailable, "the Redis tier is gone"));
        };
        let payload =
            serde_json::to_vec(&Message::new(self.origin, invalidation)).map_err(|e| {
                Error::new(ErrorKind::Encode, "cannot encode an invalidation").with_source(e)
            })?;
        tier.publish(&self.channel, payload).await
    }

    fn subscribe(&self) -> mpsc::Receiver<BackplaneEvent> {
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(listen(
            self.tier.clone(),
            self.channel.clone(),
            self.origin,
            tx,
        ));
        rx
    }
}

/// Receives until the receiver is dropped or the tier is gone; after every
/// reconnection, a `Resync` says that messages may have been missed.
async fn listen(
    tier: Weak<Shared>,
    channel: String,
    origin: u64,
    tx: mpsc::Sender<BackplaneEvent>,
) {
    let mut connected_before = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(shared) = tier.upgrade() else { return };
        let target = shared.target().clone();
        drop(shared);
        let subscription = async {
            let client = target.pubsub_client().await?;
            let mut pubsub = client
                .get_async_pubsub()
                .await
                .map_err(|e| crate::error::redis(e, tierstack_core::Operation::Build))?;
            pubsub
                .subscribe(&channel)
                .await
                .map_err(|e| crate::error::redis(e, tierstack_core::Operation::Build))?;
            Ok::<_, Error>(pubsub)
        };
        let mut pubsub = tokio::select! {
            () = tx.closed() => return,
            result = subscription => match result {
                Ok(pubsub) => pubsub,
                Err(e) => {
                    tracing::debug!(channel, error = %e, "backplane: cannot subscribe; retrying");
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(100);
        if connected_before && tx.send(BackplaneEvent::Resync).await.is_err() {
            return;
        }
        connected_before = true;
        let mut messages = pubsub.on_message();
        loop {
            let message = tokio::select! {
                () = tx.closed() => return,
                message = messages.next() => message,
            };
            let Some(message) = message else {
                tracing::debug!(channel, "backplane: subscription lost; reconnecting");
                break;
            };
            let Ok(decoded) = serde_json::from_slice::<Message>(message.get_payload_bytes()) else {
                continue;
            };
            if decoded.origin == origin {
                continue;
            }
            if let Some(invalidation) = decoded.invalidation() {
                if tx
                    .send(BackplaneEvent::Invalidate(invalidation))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}
