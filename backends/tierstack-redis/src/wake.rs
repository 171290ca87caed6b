//! Waking lease waiters when a lease is released.
//!
//! The release script publishes the lease's key name on
//! `{prefix}:c:released:{schema_version}` after it deleted the lease it
//! owned; one subscriber connection per tier hands each message to the
//! calls of this process waiting on that lease. Waiters still poll, less
//! often while the subscription is up: a message lost while the subscriber
//! reconnects, a subscription the server refuses (an ACL without channel
//! rights), or a lease that expires because its holder crashed (no message
//! at all) is seen by polling.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tierstack_core::{Error, ErrorKind, Operation, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connection::Target;
use crate::error;

/// First pause before subscribing again after a failure or a lost
/// subscription; doubled after each failure up to [`LONGEST_RETRY`]. Short,
/// because waiters poll faster (and Redis more) until it is back.
const FIRST_RETRY: Duration = Duration::from_millis(100);
/// Longest pause between two attempts while the server is unreachable: one
/// connection attempt per tier every 2 s costs nothing next to the polls.
const LONGEST_RETRY: Duration = Duration::from_secs(2);
/// Pause after the server refused the subscription (`NOPERM`: the ACL user
/// has no right on the channel). Rights rarely change by themselves, so
/// asking again every 2 s would only fill the server's ACL log.
const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// A subscription that lived this long was healthy: the next loss starts
/// the backoff again from [`FIRST_RETRY`]. One that dies sooner (a server
/// or a proxy dropping it at once) keeps backing off instead of reconnecting
/// in a loop.
const STABLE: Duration = Duration::from_secs(1);
/// How often the subscriber pings the server. A connection that died
/// without a reset (a silent network partition) delivers nothing and
/// reports nothing; the ping notices it, so that waiters go back to the
/// short poll and the subscriber reconnects.
const PING_EVERY: Duration = Duration::from_secs(10);
/// At most one warning per this period while subscribing keeps failing;
/// the others are debug. A permanent refusal (an ACL) would otherwise log
/// every 30 s forever.
const COMPLAIN_EVERY: Duration = Duration::from_secs(300);

/// The wake-ups of one tier: its channel, the waiting calls, and the
/// subscriber task (started by the first wait, stopped when the tier is
/// dropped).
pub(crate) struct Wakes {
    channel: String,
    target: Target,
    state: Arc<State>,
    task: Mutex<Option<Task>>,
}

impl std::fmt::Debug for Wakes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wakes")
            .field("channel", &self.channel)
            .field("subscribed", &self.subscribed())
            .finish_non_exhaustive()
    }
}

/// What the subscriber task shares with the waiting calls. The task holds
/// this, never the tier, so that dropping the tier drops [`Wakes`] and with
/// it the task.
#[derive(Default)]
struct State {
    /// Lease key name → a value the subscriber bumps on each message about
    /// that lease; every waiting call holds a receiver. An entry lives as
    /// long as some call waits on the lease.
    waiting: Mutex<HashMap<String, watch::Sender<()>>>,
    /// Whether a subscription is confirmed and listening.
    subscribed: AtomicBool,
}

impl State {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self, name: &[u8]) {
        let Ok(name) = std::str::from_utf8(name) else {
            return;
        };
        if let Some(sender) = self.waiting().get(name) {
            sender.send_replace(());
        }
    }

    /// Every waiter checks again: messages may have been missed (the
    /// subscription was just made) or will not come (it was just lost, and
    /// a waiter sleeping the long poll must switch to the short one).
    fn wake_all(&self) {
        for sender in self.waiting().values() {
            sender.send_replace(());
        }
    }
}

/// Aborts the subscriber when the tier goes: its connection closes with it.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One call's interest in one lease, registered before the call first
/// checks the lease, so that a release between the check and the wait
/// still wakes it.
pub(crate) struct Waiter<'a> {
    state: &'a State,
    name: String,
    woken: Option<watch::Receiver<()>>,
}

impl Waiter<'_> {
    /// Marks every wake-up so far as seen: call it right before checking
    /// the lease; [`Waiter::woken`] then returns for a message that comes
    /// after the check.
    pub(crate) fn checking(&mut self) {
        if let Some(woken) = &mut self.woken {
            woken.borrow_and_update();
        }
    }

    /// Returns when a message about the lease came (or the subscription
    /// came or went) since [`Waiter::checking`].
    pub(crate) async fn woken(&mut self) {
        let changed = match &mut self.woken {
            Some(woken) => woken.changed().await.is_ok(),
            None => false,
        };
        if !changed {
            // Cannot happen while the entry exists; never wake in a loop.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        drop(self.woken.take());
        let mut waiting = self.state.waiting();
        if waiting
            .get(&self.name)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            waiting.remove(&self.name);
        }
    }
}

impl Wakes {
    pub(crate) fn new(channel: String, target: Target) -> Self {
        Self {
            channel,
            target,
            state: Arc::default(),
            task: Mutex::new(None),
        }
    }

    /// The channel the release script publishes on.
    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    /// Whether releases arrive as messages now; while not, waiters poll at
    /// the short interval.
    pub(crate) fn subscribed(&self) -> bool {
        self.state.subscribed.load(Ordering::Acquire)
    }

    /// Registers interest in the lease `name` and makes sure the subscriber
    /// runs.
    pub(crate) fn register(&self, name: String) -> Waiter<'_> {
        let woken = self
            .state
            .waiting()
            .entry(name.clone())
            .or_insert_with(|| watch::channel(()).0)
            .subscribe();
        self.start();
        Waiter {
            state: &self.state,
            name,
            woken: Some(woken),
        }
    }

    /// Starts the subscriber unless it runs. It is started again when it
    /// ended, which happens when the runtime it was spawned on shut down
    /// while the tier lives on (a tier shared by several runtimes).
    fn start(&self) {
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        if task.as_ref().is_some_and(|task| !task.0.is_finished()) {
            return;
        }
        // Outside a Tokio runtime (never, from an async call on Tokio) the
        // waiters poll.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let state = Arc::clone(&self.state);
        // A task aborted half-way could not say it stopped listening.
        state.subscribed.store(false, Ordering::Release);
        *task = Some(Task(runtime.spawn(subscribe_forever(
            self.target.clone(),
            self.channel.clone(),
            state,
        ))));
    }
}

/// Marks the subscription up for as long as it is alive (also when the task
/// is aborted while listening).
struct Listening<'a>(&'a State);

impl<'a> Listening<'a> {
    fn new(state: &'a State) -> Self {
        state.subscribed.store(true, Ordering::Release);
        state.wake_all();
        Self(state)
    }
}

impl Drop for Listening<'_> {
    fn drop(&mut self) {
        self.0.subscribed.store(false, Ordering::Release);
        self.0.wake_all();
    }
}

/// Subscribes, listens until the subscription is lost, and again, until
/// the task is aborted (the tier dropped).
async fn subscribe_forever(target: Target, channel: String, state: Arc<State>) {
    let mut retry = FIRST_RETRY;
    let mut complaints = Complaints::default();
    loop {
        let attempt = Instant::now();
        let pause = match subscribe(&target, &channel).await {
            Ok(pubsub) => {
                complaints.recovered(&channel);
                listen(pubsub, &state, target.response_timeout()).await;
                tracing::debug!(
                    channel,
                    "lease wake-ups: subscription lost; waiters poll until it is back"
                );
                if attempt.elapsed() >= STABLE {
                    retry = FIRST_RETRY;
                }
                retry
            }
            Err(e) => {
                let refused = e.kind() == ErrorKind::PermissionDenied;
                complaints.failed(&channel, &e, refused);
                if refused { REFUSED_RETRY } else { retry }
            }
        };
        tokio::time::sleep(pause).await;
        retry = (retry * 2).min(LONGEST_RETRY);
    }
}

/// A confirmed subscription to `channel`, within the time a connection and
/// one answer may take (redis-rs's pub/sub connection has no timeout of
/// its own).
async fn subscribe(target: &Target, channel: &str) -> Result<redis::aio::PubSub> {
    let failed = |e| error::redis(e, Operation::Coordinate);
    let attempt = async {
        let client = target.pubsub_client().await?;
        let mut pubsub = client.get_async_pubsub().await.map_err(failed)?;
        pubsub.subscribe(channel).await.map_err(failed)?;
        Ok::<_, Error>(pubsub)
    };
    tokio::time::timeout(target.subscribe_timeout(), attempt)
        .await
        .unwrap_or_else(|_| Err(error::timeout(Operation::Coordinate)))
}

/// Hands each message to the waiters of its lease until the subscription
/// is lost (the stream ends or a ping goes unanswered).
async fn listen(pubsub: redis::aio::PubSub, state: &State, response_timeout: Duration) {
    let (mut sink, mut messages) = pubsub.split();
    let _listening = Listening::new(state);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => state.wake(message.get_payload_bytes()),
                None => return,
            },
            _ = ping.tick() => {
                let pong = tokio::time::timeout(response_timeout, sink.ping::<redis::Value>()).await;
                if !matches!(pong, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// Rate-limits the warnings of a subscriber that keeps failing.
#[derive(Default)]
struct Complaints {
    last_warned: Option<Instant>,
    failing: bool,
    quiet: u64,
}

impl Complaints {
    fn failed(&mut self, channel: &str, e: &Error, refused: bool) {
        let hint = if refused {
            "lease wake-ups: the server refused the subscription (an ACL user needs `&` rights on the channel); waiters poll instead"
        } else {
            "lease wake-ups: cannot subscribe; waiters poll until this works again"
        };
        self.failing = true;
        if self
            .last_warned
            .is_none_or(|at| at.elapsed() >= COMPLAIN_EVERY)
        {
            tracing::warn!(channel, error = %e, suppressed = self.quiet, "{hint}");
            self.last_warned = Some(Instant::now());
            self.quiet = 0;
        } else {
            self.quiet += 1;
            tracing::debug!(channel, error = %e, "{hint}");
        }
    }

    fn recovered(&mut self, channel: &str) {
        if std::mem::take(&mut self.failing) {
            tracing::info!(channel, "lease wake-ups: subscribed again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RedisConfig;

    fn wakes() -> Wakes {
        let target = Target::from_config(&RedisConfig::new("redis://127.0.0.1:1")).unwrap();
        Wakes::new("p:c:released:1".to_owned(), target)
    }

    /// Outside a runtime no subscriber starts, which lets this test drive
    /// the registry by hand.
    #[test]
    fn a_message_wakes_the_waiters_of_its_lease_only_and_the_last_waiter_cleans_up() {
        let wakes = wakes();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut first = wakes.register("p:c:l:1:a".to_owned());
        let mut second = wakes.register("p:c:l:1:a".to_owned());
        let mut other = wakes.register("p:c:l:1:b".to_owned());
        assert_eq!(wakes.state.waiting().len(), 2);
        for waiter in [&mut first, &mut second, &mut other] {
            waiter.checking();
        }
        wakes.state.wake(b"p:c:l:1:a");
        let soon = Duration::from_millis(50);
        runtime.block_on(async {
            tokio::time::timeout(soon, first.woken()).await.unwrap();
            tokio::time::timeout(soon, second.woken()).await.unwrap();
            assert!(tokio::time::timeout(soon, other.woken()).await.is_err());
            // Seen: the next wait needs a new message.
            first.checking();
            assert!(tokio::time::timeout(soon, first.woken()).await.is_err());
            // A message that came before the pause is not missed.
            wakes.state.wake(b"p:c:l:1:a");
            tokio::time::timeout(soon, first.woken()).await.unwrap();
        });
        drop(second);
        assert_eq!(wakes.state.waiting().len(), 2, "one waiter of a is left");
        drop(first);
        drop(other);
        assert!(wakes.state.waiting().is_empty());
        wakes.state.wake(b"p:c:l:1:a");
        assert!(!wakes.subscribed());
    }
}
