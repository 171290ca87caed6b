//! The group-commit queue's scenarios, run two ways:
//!
//! - as tokio tests in every build, so a change to the queue that breaks a
//!   scenario fails core's own tests (and the mutation run sees it);
//! - under `--cfg shuttle` (`scripts/interleavings.sh`) as model checks: the
//!   queue's thread, channel, lock and waiting counter are then shuttle's,
//!   and each scenario runs under many random schedules, with a switch of
//!   thread possible at every one of those operations.
//!
//! What is checked is the queue, so the store is a ledger in memory that
//! records what each transaction applied; the storage engines are tested
//! for real by their own suites.

use std::collections::BTreeMap;
use std::future::Future;

use super::*;
use crate::{Codec, Compression, DecodeLimits, EntryMeta, Timestamp};

#[cfg(shuttle)]
use shuttle::future::spawn;
#[cfg(not(shuttle))]
use tokio::spawn;

fn key(name: &str) -> Key {
    Key::new("model", [("k", name)])
}

fn entry(key: &Key) -> Entry {
    let meta = EntryMeta::new(key, 1, Timestamp::from_millis(1));
    Entry::encode(
        &key.to_string(),
        Codec::MsgPack,
        &Compression::default(),
        meta,
        DecodeLimits::default(),
    )
    .unwrap()
}

/// What the store holds, and how many transactions it committed.
#[derive(Default)]
struct Ledger {
    rows: BTreeMap<String, Entry>,
    transactions: usize,
}

/// A store over a shared ledger. A `Put` of a key named "poison" fails its
/// whole transaction with a lasting error; `in_place` lets callers commit
/// on their own thread when the writer is idle, as SQLite without a sync
/// per commit does.
struct LedgerStore {
    ledger: Arc<Mutex<Ledger>>,
    in_place: bool,
}

impl LedgerStore {
    fn apply(&self, requests: &[&[WriteOp]]) -> Result<Vec<u64>> {
        let mut ledger = self.ledger.lock().unwrap();
        let poisoned = requests
            .iter()
            .flat_map(|r| r.iter())
            .any(|op| matches!(op, WriteOp::Put(k, _) if k.to_string().ends_with("k=poison")));
        if poisoned {
            return Err(Error::new(ErrorKind::Encode, "a row the store refuses"));
        }
        ledger.transactions += 1;
        let mut counts = Vec::with_capacity(requests.len());
        for request in requests {
            let mut removed = 0;
            for op in *request {
                match op {
                    WriteOp::Put(k, e) => {
                        ledger.rows.insert(k.to_string(), e.clone());
                    }
                    WriteOp::Delete(k) => {
                        removed += u64::from(ledger.rows.remove(&k.to_string()).is_some());
                    }
                }
            }
            counts.push(removed);
        }
        Ok(counts)
    }
}

impl CommitStore for LedgerStore {
    fn commit(&mut self, requests: &[&[WriteOp]]) -> Result<Vec<u64>> {
        self.apply(requests)
    }

    fn clear(&mut self, _scope: &ClearScope) -> Result<u64> {
        let mut ledger = self.ledger.lock().unwrap();
        let n = ledger.rows.len() as u64;
        ledger.rows.clear();
        Ok(n)
    }

    fn purge(&mut self) -> Result<u64> {
        Ok(0)
    }

    fn commit_now(&mut self, request: &[WriteOp]) -> Option<Result<Vec<u64>>> {
        self.in_place.then(|| self.apply(&[request]))
    }
}

fn queue(in_place: bool) -> (Arc<GroupCommit>, Arc<Mutex<Ledger>>) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let store = LedgerStore {
        ledger: Arc::clone(&ledger),
        in_place,
    };
    let queue = GroupCommit::spawn("model", "the ledger".into(), store, 64).unwrap();
    (Arc::new(queue), ledger)
}

fn holds(ledger: &Mutex<Ledger>, key: &Key) -> bool {
    ledger.lock().unwrap().rows.contains_key(&key.to_string())
}

fn check<F: Future<Output = ()> + 'static>(scenario: fn() -> F) {
    tierstack_interleavings::check(1, scenario);
}

/// Three callers set, one sets then deletes: each `set` returns only once
/// its row is committed, every caller is answered, nothing is lost.
async fn every_caller_is_answered_after_its_commit(in_place: bool) {
    let (queue, ledger) = queue(in_place);
    let mut tasks = Vec::new();
    for name in ["a", "b", "c"] {
        let (queue, ledger) = (Arc::clone(&queue), Arc::clone(&ledger));
        tasks.push(spawn(async move {
            let k = key(name);
            queue.set(&k, entry(&k)).await.unwrap();
            assert!(holds(&ledger, &k), "set of {k} returned before its commit");
        }));
    }
    let deleter = {
        let queue = Arc::clone(&queue);
        spawn(async move {
            let k = key("d");
            queue.set(&k, entry(&k)).await.unwrap();
            assert!(queue.delete(&k).await.unwrap(), "the delete found no row");
            assert!(
                !queue.delete(&k).await.unwrap(),
                "a second delete found a row"
            );
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    deleter.await.unwrap();
    let ledger = ledger.lock().unwrap();
    let keys: Vec<&String> = ledger.rows.keys().collect();
    assert_eq!(keys.len(), 3, "rows after the run: {keys:?}");
}

#[test]
fn every_caller_is_answered_after_its_commit_through_the_writer() {
    check(|| every_caller_is_answered_after_its_commit(false));
}

#[test]
fn every_caller_is_answered_after_its_commit_in_place_or_queued() {
    check(|| every_caller_is_answered_after_its_commit(true));
}

/// A row the store refuses fails only its own request: when it shares a
/// transaction with others, each request is retried alone.
#[test]
fn a_refused_row_fails_only_its_own_request() {
    check(|| async {
        let (queue, ledger) = queue(false);
        let mut tasks = Vec::new();
        for name in ["a", "poison", "b"] {
            let queue = Arc::clone(&queue);
            tasks.push(spawn(async move {
                let k = key(name);
                (name, queue.set(&k, entry(&k)).await)
            }));
        }
        for task in tasks {
            let (name, result) = task.await.unwrap();
            match result {
                Ok(()) => assert_ne!(name, "poison", "the refused row was acknowledged"),
                Err(e) => {
                    assert_eq!(name, "poison", "{name} failed: {e}");
                    assert_eq!(e.tier(), Some("model"), "{e}");
                    assert_eq!(e.operation(), Some(Operation::Set), "{e}");
                }
            }
        }
        assert!(holds(&ledger, &key("a")) && holds(&ledger, &key("b")));
    });
}

/// A clear applies after everything queued before it: a caller that sets,
/// clears, then sets again holds exactly the last row, whatever another
/// caller does meanwhile.
#[test]
fn a_clear_is_ordered_with_the_writes_around_it() {
    check(|| async {
        let (queue, ledger) = queue(true);
        let other = {
            let queue = Arc::clone(&queue);
            spawn(async move {
                let k = key("other");
                queue.set(&k, entry(&k)).await.unwrap();
            })
        };
        let (first, last) = (key("first"), key("last"));
        queue.set(&first, entry(&first)).await.unwrap();
        queue.clear(ClearScope::All).await.unwrap();
        assert!(
            !holds(&ledger, &first),
            "the clear left a row set before it"
        );
        queue.set(&last, entry(&last)).await.unwrap();
        other.await.unwrap();
        assert!(holds(&ledger, &last), "a row set after the clear is gone");
        assert_eq!(queue.purge().await.unwrap(), 0);
    });
}

/// A caller that gives up while queued (its future dropped) leaves the
/// queue as it found it: later writes are answered, and the count of
/// waiting callers falls back to zero, so writes may commit in place again.
#[test]
fn a_caller_that_gives_up_leaves_the_queue_usable() {
    check(|| async {
        let (queue, ledger) = queue(true);
        let quitter = {
            let queue = Arc::clone(&queue);
            spawn(async move {
                let k = key("quitter");
                queue.set(&k, entry(&k)).await
            })
        };
        let k = key("stayer");
        queue.set(&k, entry(&k)).await.unwrap();
        quitter.abort();
        // Answered or cancelled: either way its future is gone now.
        let _ = quitter.await;
        assert!(holds(&ledger, &k));
        let again = key("again");
        queue.set(&again, entry(&again)).await.unwrap();
        assert!(holds(&ledger, &again));
        let debug = format!("{queue:?}");
        assert!(debug.contains("waiting: 0"), "{debug}");
        assert!(queue.is_running(), "{debug}");
    });
}

/// Many writes while the writer is busy are grouped: fewer transactions
/// than requests, each request answered once its transaction committed.
#[cfg(not(shuttle))]
#[test]
fn writes_that_queue_up_share_transactions() {
    check(|| async {
        let (queue, ledger) = queue(false);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let queue = Arc::clone(&queue);
            tasks.push(spawn(async move {
                let k = key(&i.to_string());
                queue.set(&k, entry(&k)).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let ledger = ledger.lock().unwrap();
        assert_eq!(ledger.rows.len(), 200);
        assert!(
            ledger.transactions < 200,
            "{} transactions for 200 queued writes",
            ledger.transactions
        );
    });
}

/// The writer thread's end is seen: a store that panics stops the thread,
/// `is_running` says so, and callers get `Unavailable` instead of hanging.
#[cfg(not(shuttle))]
#[test]
fn a_writer_that_stopped_is_reported() {
    struct Panics;
    impl CommitStore for Panics {
        fn commit(&mut self, _: &[&[WriteOp]]) -> Result<Vec<u64>> {
            std::panic::resume_unwind(Box::new("store bug"))
        }
        fn clear(&mut self, _: &ClearScope) -> Result<u64> {
            Ok(0)
        }
        fn purge(&mut self) -> Result<u64> {
            Ok(0)
        }
    }
    check(|| async {
        let queue = GroupCommit::spawn("model", "the store".into(), Panics, 8).unwrap();
        assert!(queue.is_running());
        let k = key("x");
        let err = queue.set(&k, entry(&k)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
        for _ in 0..200 {
            if !queue.is_running() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!queue.is_running(), "{queue:?}");
        let err = queue.set(&k, entry(&k)).await.unwrap_err();
        assert!(err.to_string().contains("has stopped"), "{err}");
    });
}
