//! Group commit for stores with a single writer (SQLite, redb).
//!
//! One thread owns the store's write handle. Callers queue requests and wait;
//! the thread takes everything queued meanwhile and commits it in one
//! transaction, then answers each caller. A `set` therefore returns only
//! after its transaction committed, and 1,000 concurrent sets become a
//! handful of transactions instead of 1,000 commits and lock handovers.
//!
//! If a batch fails with a lasting error (not a temporary one such as a lock
//! held by another process), each request is retried in its own transaction,
//! so one bad request cannot fail its neighbours.
//!
//! When nothing is queued and the thread is idle, a store whose commits cost
//! microseconds (SQLite without a sync per commit) may commit a request on
//! the caller's thread instead ([`CommitStore::commit_now`]): the two thread
//! wake-ups of the hand-off would cost more than the commit. Under load the
//! requests queue up and are grouped as before.

use std::sync::atomic::Ordering;
use std::sync::{Arc, TryLockError};

// Under `--cfg shuttle` the queue runs on shuttle's thread, channel, lock and
// counter, so the model checker can switch threads at each of them
// (`group_commit::tests`); `tokio`'s oneshot wakes through shuttle's wakers.
#[cfg(shuttle)]
use shuttle::{
    sync::atomic::{AtomicBool, AtomicUsize},
    sync::mpsc::{self, Receiver, Sender, TryRecvError},
    sync::{Mutex, MutexGuard},
    thread::{self, JoinHandle},
};
#[cfg(not(shuttle))]
use std::{
    sync::atomic::{AtomicBool, AtomicUsize},
    sync::mpsc::{self, Receiver, Sender, TryRecvError},
    sync::{Mutex, MutexGuard},
    thread::{self, JoinHandle},
};

use tokio::sync::oneshot;

use crate::envelope::Entry;
use crate::error::{Error, ErrorKind, Operation, Result};
use crate::key::Key;
use crate::tier::ClearScope;

/// One change to the store.
#[derive(Debug)]
pub enum WriteOp {
    /// Store an entry, replacing any previous one.
    Put(Key, Entry),
    /// Store an entry that has the body of the stored one
    /// ([`Tier::renew`](crate::Tier::renew)): a store that can rewrite the
    /// header alone when the stored body is that one does; otherwise as
    /// `Put`.
    Renew(Key, Entry),
    /// Remove an entry.
    Delete(Key),
}

/// What the writer thread does with the store. Runs on that thread only.
pub trait CommitStore: Send + 'static {
    /// Applies the requests in one transaction. Returns, per request, how
    /// many entries its deletes removed. Called with no requests when the
    /// store asked to be woken ([`GroupCommit::wake`]).
    fn commit(&mut self, requests: &[&[WriteOp]]) -> Result<Vec<u64>>;

    /// Removes the entries of `scope`; returns how many.
    fn clear(&mut self, scope: &ClearScope) -> Result<u64>;

    /// Removes dead entries and gives space back; returns how many.
    fn purge(&mut self) -> Result<u64>;

    /// Runs after each batch of commands (for example to enforce a size cap).
    fn after_batch(&mut self) {}

    /// Applies one request on the caller's thread, if that can be done
    /// without waiting (no lock held by another process, no sync to disk).
    /// `None` sends the request to the writer thread. The default always
    /// does.
    fn commit_now(&mut self, _request: &[WriteOp]) -> Option<Result<Vec<u64>>> {
        None
    }
}

/// The store, shared by the writer thread and callers committing in place.
type SharedStore = Arc<Mutex<dyn CommitStore>>;

fn lock(store: &SharedStore) -> MutexGuard<'_, dyn CommitStore + 'static> {
    store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type Reply = oneshot::Sender<Result<u64>>;

enum Command {
    Write(Vec<WriteOp>, Reply),
    Clear(ClearScope, Reply),
    Purge(Reply),
    Wake,
}

/// The handle to a group-commit writer thread. Dropping it lets the thread
/// finish what is queued and waits for it to close the store.
pub struct GroupCommit {
    tier: String,
    what: String,
    store: SharedStore,
    /// Callers waiting for the thread's answer.
    queued: AtomicUsize,
    tx: Option<Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    /// Cleared when the thread ends, returned or unwound (a flag rather
    /// than `JoinHandle::is_finished`, which shuttle's threads lack).
    running: Arc<AtomicBool>,
}

impl GroupCommit {
    /// Starts the writer thread for `store` of the tier named `tier`. `what`
    /// names the store in errors (usually its path); at most `max_batch`
    /// commands are taken per batch.
    pub fn spawn(
        tier: &str,
        what: String,
        store: impl CommitStore,
        max_batch: usize,
    ) -> std::io::Result<Self> {
        let thread_name = format!("tierstack-{tier}");
        let (tx, rx) = mpsc::channel();
        let max_batch = max_batch.max(1);
        let store: SharedStore = Arc::new(Mutex::new(store));
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let store = Arc::clone(&store);
            let running = Running(Arc::clone(&running));
            thread::Builder::new().name(thread_name).spawn(move || {
                let _running = running;
                run(&store, &rx, max_batch);
            })?
        };
        Ok(Self {
            tier: tier.to_owned(),
            what,
            store,
            queued: AtomicUsize::new(0),
            tx: Some(tx),
            thread: Some(thread),
            running,
        })
    }

    /// Stores one entry; returns after its commit.
    pub async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        let ops = vec![WriteOp::Put(key.clone(), entry)];
        self.write(Operation::Set, ops).await.map(drop)
    }

    /// Stores an entry with the stored one's body ([`WriteOp::Renew`]);
    /// returns after its commit.
    pub async fn renew(&self, key: &Key, entry: Entry) -> Result<()> {
        let ops = vec![WriteOp::Renew(key.clone(), entry)];
        self.write(Operation::Set, ops).await.map(drop)
    }

    /// Stores several entries in one transaction; returns after its commit.
    pub async fn set_many(&self, entries: Vec<(Key, Entry)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ops = entries
            .into_iter()
            .map(|(k, e)| WriteOp::Put(k, e))
            .collect();
        self.write(Operation::SetMany, ops).await.map(drop)
    }

    /// Removes one entry; `true` if it was there.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let ops = vec![WriteOp::Delete(key.clone())];
        let removed = self.write(Operation::Delete, ops).await?;
        Ok(removed > 0)
    }

    /// Clears `scope`, after everything queued before.
    pub async fn clear(&self, scope: ClearScope) -> Result<u64> {
        self.call(Operation::Clear, |reply| Command::Clear(scope, reply))
            .await
    }

    /// Purges dead entries, after everything queued before.
    pub async fn purge(&self) -> Result<u64> {
        self.call(Operation::Clear, Command::Purge).await
    }

    /// Asks the writer to run an empty commit soon (the store may have
    /// buffered work of its own, such as access times).
    pub fn wake(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Command::Wake);
        }
    }

    /// Whether the writer thread is still running.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Commits `ops` in place when the writer is idle and the store can,
    /// else through the writer thread.
    async fn write(&self, op: Operation, ops: Vec<WriteOp>) -> Result<u64> {
        if let Some(result) = self.commit_in_place(&ops) {
            return result
                .map(|counts| counts.first().copied().unwrap_or(0))
                .map_err(|e| e.with_tier(self.tier.as_str()).with_operation(op));
        }
        self.call(op, |reply| Command::Write(ops, reply)).await
    }

    fn commit_in_place(&self, ops: &[WriteOp]) -> Option<Result<Vec<u64>>> {
        if self.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        let mut store = match self.store.try_lock() {
            Ok(store) => store,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let result = store.commit_now(ops)?;
        store.after_batch();
        Some(result)
    }

    async fn call(&self, op: Operation, make: impl FnOnce(Reply) -> Command) -> Result<u64> {
        let stopped = || {
            Error::new(
                ErrorKind::Unavailable,
                format!("the writer of {} has stopped", self.what),
            )
        };
        let answer = async {
            let tx = self.tx.as_ref().ok_or_else(stopped)?;
            let (reply, answer) = oneshot::channel();
            let _waiting = Waiting::new(&self.queued);
            tx.send(make(reply)).map_err(|_| stopped())?;
            answer.await.map_err(|_| stopped())?
        };
        answer
            .await
            .map_err(|e| e.with_tier(self.tier.as_str()).with_operation(op))
    }
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("tier", &self.tier)
            .field("what", &self.what)
            .field("waiting", &self.queued.load(Ordering::Relaxed))
            .field("running", &self.is_running())
            .finish_non_exhaustive()
    }
}

/// Held by the writer thread; clears the running flag when the thread ends.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Counts a caller waiting for the writer thread, until it is answered or
/// gives up (its future dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &SharedStore, rx: &Receiver<Command>, max_batch: usize) {
    while let Ok(first) = rx.recv() {
        let mut queue = vec![first];
        while queue.len() < max_batch {
            match rx.try_recv() {
                Ok(cmd) => queue.push(cmd),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let mut guard = lock(shared);
        let store = &mut *guard;
        let mut writes: Vec<(Vec<WriteOp>, Reply)> = Vec::new();
        let mut woken = false;
        for cmd in queue {
            match cmd {
                Command::Write(ops, reply) => writes.push((ops, reply)),
                Command::Wake => woken = true,
                Command::Clear(scope, reply) => {
                    commit(store, std::mem::take(&mut writes));
                    let _ = reply.send(store.clear(&scope));
                }
                Command::Purge(reply) => {
                    commit(store, std::mem::take(&mut writes));
                    let _ = reply.send(store.purge());
                }
            }
        }
        if writes.is_empty() && woken {
            if let Err(e) = store.commit(&[]) {
                tracing::debug!(error = %e, "empty commit failed");
            }
        }
        commit(store, writes);
        store.after_batch();
    }
}

fn commit(store: &mut dyn CommitStore, group: Vec<(Vec<WriteOp>, Reply)>) {
    if group.is_empty() {
        return;
    }
    let requests: Vec<&[WriteOp]> = group.iter().map(|(ops, _)| ops.as_slice()).collect();
    match store.commit(&requests) {
        Ok(counts) => {
            for ((_, reply), removed) in group.into_iter().zip(counts) {
                let _ = reply.send(Ok(removed));
            }
        }
        Err(e) if group.len() > 1 && !e.is_temporary() => {
            for (ops, reply) in group {
                let result = store
                    .commit(&[ops.as_slice()])
                    .map(|counts| counts.first().copied().unwrap_or(0));
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            for (_, reply) in group {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests;
