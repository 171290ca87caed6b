//! Single-flight: one fetch per key at a time within a process.
//!
//! The first caller of a cold key becomes the leader and runs the fetch;
//! later callers subscribe to the leader's result. If the leader goes away
//! without a result (its future was dropped, or it panicked before
//! publishing), the guard removes the flight and the waiters try again, one of
//! them becoming the new leader, so a key is never wedged.

use std::collections::HashMap;
// Under `--cfg shuttle` the map locks with shuttle's mutex, so the model
// checker can switch tasks at every join and removal (`flight::tests`).
#[cfg(shuttle)]
use shuttle::sync::Mutex;
#[cfg(not(shuttle))]
use std::sync::Mutex;

use tierstack_core::{Decoded, Error, Key};
use tokio::sync::watch;

/// What a leader hands its waiters: the value (`None`: the source said
/// "not found") and whether it is a stale fallback.
#[derive(Clone, Debug)]
pub(crate) struct Answer {
    pub(crate) value: Option<Decoded>,
    pub(crate) stale: bool,
}

pub(crate) type FlightResult = Result<Answer, Error>;
type Slot = watch::Sender<Option<FlightResult>>;

#[derive(Debug, Default)]
pub(crate) struct Flights(Mutex<HashMap<Key, Slot>>);

pub(crate) enum Joined<'a> {
    Leader(LeaderGuard<'a>),
    Waiter(watch::Receiver<Option<FlightResult>>),
}

impl Flights {
    /// Whether no flight is in the air (a test's check that none leaked).
    #[cfg(test)]
    pub(crate) fn is_idle(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    }

    pub(crate) fn join(&self, key: &Key) -> Joined<'_> {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(slot) = map.get(key) {
            return Joined::Waiter(slot.subscribe());
        }
        let (slot, _) = watch::channel(None);
        map.insert(key.clone(), slot.clone());
        Joined::Leader(LeaderGuard {
            flights: self,
            key: key.clone(),
            slot,
        })
    }
}

/// Held by the leader; removes the flight when dropped, published or not.
pub(crate) struct LeaderGuard<'a> {
    flights: &'a Flights,
    key: Key,
    slot: Slot,
}

impl LeaderGuard<'_> {
    /// Hands the result to every waiter. The flight is removed first, so a
    /// caller arriving after this finds the value in the cache instead.
    pub(crate) fn publish(self, result: FlightResult) {
        self.remove();
        self.slot.send_replace(Some(result));
    }

    fn remove(&self) {
        let mut map = self
            .flights
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map
            .get(&self.key)
            .is_some_and(|s| s.same_channel(&self.slot))
        {
            map.remove(&self.key);
        }
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Waits for the leader. `None` means the leader left without a result and
/// the caller should try again.
pub(crate) async fn wait(mut rx: watch::Receiver<Option<FlightResult>>) -> Option<FlightResult> {
    match rx.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests;
