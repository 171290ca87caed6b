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
    /// Commits tried, refused ones included.
    attempts: usize,
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
        ledger.attempts += 1;
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
                    WriteOp::Put(k, e) | WriteOp::Renew(k, e) => {
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

    /// Rows named "dead" are the dead entries.
    fn purge(&mut self) -> Result<u64> {
        let mut ledger = self.ledger.lock().unwrap();
        let before = ledger.rows.len();
        ledger.rows.retain(|k, _| !k.ends_with("k=dead"));
        Ok((before - ledger.rows.len()) as u64)
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

/// `set_many` stores every entry in one transaction, and an empty batch
/// commits nothing.
#[test]
fn set_many_commits_its_entries_in_one_transaction() {
    check(|| async {
        let (queue, ledger) = queue(false);
        queue.set_many(Vec::new()).await.unwrap();
        assert_eq!(ledger.lock().unwrap().transactions, 0);
        let keys: Vec<Key> = ["x", "y", "z"].into_iter().map(key).collect();
        let entries = keys.iter().map(|k| (k.clone(), entry(k))).collect();
        queue.set_many(entries).await.unwrap();
        assert!(keys.iter().all(|k| holds(&ledger, k)), "a row is missing");
        assert_eq!(ledger.lock().unwrap().transactions, 1);
    });
}

/// A renewal is committed like a set (the ledger, like a store that keeps
/// one value per key, writes it whole) and answered after its commit.
#[test]
fn a_renewal_is_committed_before_it_is_answered() {
    check(|| async {
        let (queue, ledger) = queue(false);
        let k = key("renewed");
        queue.renew(&k, entry(&k)).await.unwrap();
        assert!(holds(&ledger, &k), "the renewal was not committed");
        assert_eq!(ledger.lock().unwrap().transactions, 1);
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
        let dead = key("dead");
        queue.set(&dead, entry(&dead)).await.unwrap();
        assert_eq!(
            queue.purge().await.unwrap(),
            1,
            "purge counts what it removed"
        );
        assert!(!holds(&ledger, &dead) && holds(&ledger, &last));
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

/// A write commits on the caller's thread only while nobody waits for the
/// writer thread: one that went ahead of queued callers would reorder
/// their writes.
#[cfg(not(shuttle))]
#[test]
fn writes_commit_in_place_only_while_nobody_is_queued() {
    let (queue, ledger) = queue(true);
    let k = key("a");
    let ops = [WriteOp::Put(k.clone(), entry(&k))];
    let waiting = Waiting::new(&queue.queued);
    assert!(
        queue.commit_in_place(&ops).is_none(),
        "committed in place ahead of a queued caller"
    );
    drop(waiting);
    assert!(queue.commit_in_place(&ops).is_some(), "an idle writer");
    assert!(holds(&ledger, &k));
}

/// `wake` makes the writer run an empty commit (a store flushes buffered
/// work of its own in it).
#[cfg(not(shuttle))]
#[test]
fn wake_runs_an_empty_commit() {
    let (queue, ledger) = queue(false);
    queue.wake();
    for _ in 0..1_000 {
        if ledger.lock().unwrap().transactions == 1 {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    panic!("no commit followed wake");
}

/// A store whose first commit waits for the test to let it go, and that
/// records the size of every batch it commits and when it was dropped.
#[cfg(not(shuttle))]
struct Gated {
    gate: Option<std::sync::mpsc::Receiver<()>>,
    batches: Arc<Mutex<Vec<usize>>>,
    dropped: Arc<AtomicBool>,
}

#[cfg(not(shuttle))]
impl CommitStore for Gated {
    fn commit(&mut self, requests: &[&[WriteOp]]) -> Result<Vec<u64>> {
        if let Some(gate) = self.gate.take() {
            let _ = gate.recv();
        }
        self.batches.lock().unwrap().push(requests.len());
        Ok(vec![0; requests.len()])
    }
    fn clear(&mut self, _: &ClearScope) -> Result<u64> {
        Ok(0)
    }
    fn purge(&mut self) -> Result<u64> {
        Ok(0)
    }
}

#[cfg(not(shuttle))]
impl Drop for Gated {
    fn drop(&mut self) {
        // Slow, so that a queue that did not wait for its writer thread
        // returns before this runs.
        std::thread::sleep(std::time::Duration::from_millis(50));
        self.dropped.store(true, Ordering::SeqCst);
    }
}

/// A queue over a [`Gated`] store, and the store's handles.
#[cfg(not(shuttle))]
struct GatedQueue {
    queue: Arc<GroupCommit>,
    /// Lets the first commit go.
    open: std::sync::mpsc::Sender<()>,
    batches: Arc<Mutex<Vec<usize>>>,
    dropped: Arc<AtomicBool>,
}

#[cfg(not(shuttle))]
fn gated(max_batch: usize) -> GatedQueue {
    let (open, gate) = std::sync::mpsc::channel();
    let batches = Arc::new(Mutex::new(Vec::new()));
    let dropped = Arc::new(AtomicBool::new(false));
    let store = Gated {
        gate: Some(gate),
        batches: Arc::clone(&batches),
        dropped: Arc::clone(&dropped),
    };
    let queue = GroupCommit::spawn("model", "the gated store".into(), store, max_batch).unwrap();
    GatedQueue {
        queue: Arc::new(queue),
        open,
        batches,
        dropped,
    }
}

/// Requests that queue up while the writer is busy are committed in
/// batches of at most `max_batch`.
#[cfg(not(shuttle))]
#[test]
fn a_batch_holds_at_most_max_batch_requests() {
    check(|| async {
        let GatedQueue {
            queue,
            open,
            batches,
            ..
        } = gated(2);
        let set = |name: String| {
            let queue = Arc::clone(&queue);
            spawn(async move {
                let k = key(&name);
                queue.set(&k, entry(&k)).await.unwrap();
            })
        };
        // The first caller waits for the gated commit; the five after it
        // queue up behind it.
        let first = set("first".to_owned());
        while queue.queued.load(Ordering::SeqCst) < 1 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let rest: Vec<_> = (0..5).map(|i| set(i.to_string())).collect();
        while queue.queued.load(Ordering::SeqCst) < 6 {
            tokio::task::yield_now().await;
        }
        open.send(()).unwrap();
        first.await.unwrap();
        for task in rest {
            task.await.unwrap();
        }
        let batches = batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 6, "{batches:?}");
        assert!(
            batches.iter().all(|&n| n <= 2),
            "a batch over max_batch: {batches:?}"
        );
    });
}

/// Dropping the queue waits for its writer thread, which drops the store:
/// a file is closed when the tier is.
#[cfg(not(shuttle))]
#[test]
fn dropping_the_queue_waits_for_the_writer_to_close_the_store() {
    let GatedQueue {
        queue,
        open,
        dropped,
        ..
    } = gated(8);
    drop(open);
    let queue = Arc::into_inner(queue).unwrap();
    drop(queue);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the store outlived the queue"
    );
}

/// A batch with nothing to write and no wake-up commits nothing: a clear
/// or a purge alone is not followed by an empty transaction.
#[cfg(not(shuttle))]
#[test]
fn a_clear_alone_runs_no_empty_commit() {
    check(|| async {
        let (queue, ledger) = queue(false);
        queue.clear(ClearScope::All).await.unwrap();
        queue.purge().await.unwrap();
        // Once more, so that the batch of the first two has ended.
        queue.purge().await.unwrap();
        assert_eq!(ledger.lock().unwrap().transactions, 0);
    });
}

/// A lone request that the store refuses for good is answered with the
/// error after one try: only a batch of several is retried request by
/// request, to find the one at fault.
#[test]
fn a_lone_refused_request_is_not_retried() {
    check(|| async {
        let (queue, ledger) = queue(false);
        let poison = key("poison");
        let err = queue.set(&poison, entry(&poison)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Encode, "{err}");
        assert_eq!(
            ledger.lock().unwrap().attempts,
            1,
            "the store was asked again"
        );
    });
}
