//! The `Tier` trait every storage backend implements.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::envelope::Entry;
use crate::error::Result;
use crate::key::Key;

/// What a backend can do. The cache and the conformance suite use these to
/// decide which behaviour applies; `tierstack backends` prints them.
///
/// `#[non_exhaustive]`, so that adding a flag is not a breaking change:
/// outside this crate a value is built from [`Capabilities::NONE`] (or
/// [`Capabilities::new`]) with the `with_*` setters, which are `const` so
/// that a backend can keep a `const CAPABILITIES`:
///
/// ```
/// use tierstack_core::Capabilities;
///
/// const CAPABILITIES: Capabilities = Capabilities::new().with_persistent().with_scan();
/// assert!(CAPABILITIES.persistent && !CAPABILITIES.native_ttl);
/// ```
///
/// Each flag is read by the cache or gates conformance cases that prove it
/// (see the `tierstack-conformance` README); a backend declares only what
/// those cases show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[allow(clippy::struct_excessive_bools)]
#[non_exhaustive]
pub struct Capabilities {
    /// Entries survive a restart of the process (the store is closed and
    /// opened again).
    pub persistent: bool,
    /// Several processes on one host can share the store.
    pub shared_across_processes: bool,
    /// Several hosts can share the store.
    pub shared_across_hosts: bool,
    /// The store expires entries itself: an entry past its retention is
    /// gone from reads, sizes and scans without a purge.
    pub native_ttl: bool,
    /// `get_many` / `set_many` are native batch operations.
    pub native_batch: bool,
    /// `scan` can list entries.
    pub scan: bool,
    /// The store enforces a size cap with eviction.
    pub size_limit: bool,
    /// The tier keeps decoded values, so a hit costs no decode.
    pub keeps_decoded: bool,
    /// The tier can answer a read without I/O or waiting
    /// ([`Tier::get_ready`]): the cache asks it before it creates any
    /// future, so a hit in it costs no allocation.
    pub answers_without_io: bool,
    /// The tier's reads never wait on anything outside the calling thread
    /// (no network, no other thread): an embedded store that reads its own
    /// file where it is called, as its `get` would. It answers
    /// [`Tier::get_ready`] (writes still go through `set`), so the cache
    /// reads it without creating a future; unlike `answers_without_io`, a
    /// read may touch the disk.
    pub reads_in_place: bool,
}

impl Capabilities {
    /// No capabilities.
    pub const NONE: Self = Self {
        persistent: false,
        shared_across_processes: false,
        shared_across_hosts: false,
        native_ttl: false,
        native_batch: false,
        scan: false,
        size_limit: false,
        keeps_decoded: false,
        answers_without_io: false,
        reads_in_place: false,
    };

    /// No capabilities, the start of a builder chain (the same as
    /// [`Capabilities::NONE`]).
    pub const fn new() -> Self {
        Self::NONE
    }

    /// Sets [`persistent`](Self::persistent).
    #[must_use]
    pub const fn with_persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// Sets [`shared_across_processes`](Self::shared_across_processes).
    #[must_use]
    pub const fn with_shared_across_processes(mut self) -> Self {
        self.shared_across_processes = true;
        self
    }

    /// Sets [`shared_across_hosts`](Self::shared_across_hosts).
    #[must_use]
    pub const fn with_shared_across_hosts(mut self) -> Self {
        self.shared_across_hosts = true;
        self
    }

    /// Sets [`native_ttl`](Self::native_ttl).
    #[must_use]
    pub const fn with_native_ttl(mut self) -> Self {
        self.native_ttl = true;
        self
    }

    /// Sets [`native_batch`](Self::native_batch).
    #[must_use]
    pub const fn with_native_batch(mut self) -> Self {
        self.native_batch = true;
        self
    }

    /// Sets [`scan`](Self::scan).
    #[must_use]
    pub const fn with_scan(mut self) -> Self {
        self.scan = true;
        self
    }

    /// Sets [`size_limit`](Self::size_limit).
    #[must_use]
    pub const fn with_size_limit(mut self) -> Self {
        self.size_limit = true;
        self
    }

    /// Sets [`keeps_decoded`](Self::keeps_decoded).
    #[must_use]
    pub const fn with_keeps_decoded(mut self) -> Self {
        self.keeps_decoded = true;
        self
    }

    /// Sets [`answers_without_io`](Self::answers_without_io).
    #[must_use]
    pub const fn with_answers_without_io(mut self) -> Self {
        self.answers_without_io = true;
        self
    }

    /// Sets [`reads_in_place`](Self::reads_in_place).
    #[must_use]
    pub const fn with_reads_in_place(mut self) -> Self {
        self.reads_in_place = true;
        self
    }

    /// The names of the capabilities that are set.
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            (self.persistent, "persistent"),
            (self.shared_across_processes, "shared_across_processes"),
            (self.shared_across_hosts, "shared_across_hosts"),
            (self.native_ttl, "native_ttl"),
            (self.native_batch, "native_batch"),
            (self.scan, "scan"),
            (self.size_limit, "size_limit"),
            (self.keeps_decoded, "keeps_decoded"),
            (self.answers_without_io, "answers_without_io"),
            (self.reads_in_place, "reads_in_place"),
        ];
        all.into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n)
            .collect()
    }
}

/// Which entries `clear` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClearScope {
    /// Every entry of this tier's namespace (never anything outside it).
    All,
    /// Entries whose key has this source (as [`Key::source`] returns it).
    Source(String),
    /// Entries that are no longer fresh, including those kept for
    /// stale-if-error.
    Expired,
}

/// How many entries and bytes a tier holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TierSize {
    /// Number of entries (including expired ones not yet removed).
    pub entries: u64,
    /// Bytes used by entries, as the backend measures them.
    pub bytes: u64,
}

/// Counters a backend keeps about itself. The cache keeps hits, misses and
/// errors per tier; these are what only the backend can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TierStats {
    /// Entries removed to respect a size cap.
    pub evictions: u64,
    /// Entries removed because they expired.
    pub expirations: u64,
    /// Operations not attempted because the store was known to be down (an
    /// open circuit breaker): reads answered as misses, writes dropped.
    pub unavailable: u64,
    /// Keys found in the tier's namespace that are not its entries (another
    /// tool's values, another type), skipped by scans, sizes and clears.
    pub foreign: u64,
}

/// Whether a tier is usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "snake_case")]
pub enum Health {
    /// Working.
    Healthy,
    /// Working, with a problem worth reporting.
    Degraded(String),
    /// Not working.
    Unhealthy(String),
}

/// Opaque position in a [`Tier::scan`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanCursor(pub Vec<u8>);

/// One page of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// Entries of this page.
    pub entries: Vec<(Key, Entry)>,
    /// Where to continue, `None` when the scan is complete.
    pub next: Option<ScanCursor>,
}

/// Whether [`Tier::get_ready`] answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Readiness {
    /// The tier answered: the reader was called, with the entry or with
    /// `None` for a key it does not hold.
    Answered,
    /// The tier cannot answer at once (it needs I/O it must wait for, or
    /// the read failed and [`Tier::get`] reports why); the reader was not
    /// called and `get` must be asked.
    NeedsIo,
}

impl Readiness {
    /// The answer of a tier that reads in place (capability
    /// `reads_in_place`) from the outcome of its read: the entry (or its
    /// absence) is lent to `read`; a failed read is left to [`Tier::get`],
    /// which reports the error, so nothing is lost by answering
    /// [`Readiness::NeedsIo`] for it.
    pub fn lend(outcome: Result<Option<Entry>>, read: &mut dyn FnMut(Option<&Entry>)) -> Self {
        match outcome {
            Ok(entry) => {
                read(entry.as_ref());
                Self::Answered
            }
            Err(_) => Self::NeedsIo,
        }
    }
}

/// What [`Tier::set_ready`] did with an entry.
#[derive(Debug)]
#[must_use]
pub enum SetReadiness {
    /// The tier stored the entry at once, or failed to.
    Done(Result<()>),
    /// The tier cannot store without I/O: the entry, handed back for
    /// [`Tier::set`].
    NeedsIo(Entry),
}

/// What [`Tier::compact`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Compacted {
    /// Bytes the store took before.
    pub bytes_before: u64,
    /// Bytes it takes now.
    pub bytes_after: u64,
}

/// A storage tier: memory, a file, a server.
///
/// Tiers store [`Entry`] values (header + body) under [`Key`]s and know
/// nothing of value types: encoding, freshness and copy-up are the cache's
/// job. A tier keeps an entry at least until its header's `retain_until` (or
/// its own TTL cap, or eviction), and may drop it any time after.
///
/// Errors are for the store failing; a missing or undecodable entry is
/// `Ok(None)` (undecodable bytes may be reported as an error of kind
/// [`ErrorKind::Corrupt`](crate::ErrorKind::Corrupt), which the cache
/// counts as a decode failure, not as a tier error).
#[async_trait]
pub trait Tier: Send + Sync + fmt::Debug {
    /// Name used in statistics, logs and errors (`memory`, `sqlite`, …).
    fn name(&self) -> &str;

    /// What the tier can do.
    fn capabilities(&self) -> Capabilities;

    /// The application schema version whose namespace this tier was opened
    /// for (`SqliteTier::open(&config, 2)`: `Some(2)`), so that a cache
    /// refuses to run over a tier of another version. `None` for tiers that
    /// keep no namespace per version.
    fn schema_version(&self) -> Option<u32> {
        None
    }

    /// The longest time this tier keeps an entry fresh; the cache caps each
    /// write (including copy-up) to it. `None` for no cap.
    fn max_ttl(&self) -> Option<Duration> {
        None
    }

    /// Reads one entry.
    async fn get(&self, key: &Key) -> Result<Option<Entry>>;

    /// Reads one entry at once, for tiers that hold their entries in memory
    /// (capability `answers_without_io`) or read them in place (capability
    /// `reads_in_place`: an embedded store read on the calling thread):
    /// calls `read` with the entry, or with `None` for a key the tier does
    /// not hold, and returns [`Readiness::Answered`]. The entry is lent, so
    /// that the caller takes only what it needs (for a hit, one `Arc` of the
    /// decoded value) and the tier need not clone it; it may be past its
    /// retention, which the caller reads from its header. Must not wait on
    /// the network or on another thread; a tier that cannot answer so, or
    /// whose read failed, returns [`Readiness::NeedsIo`] without calling
    /// `read` (the default), and the caller asks [`Tier::get`].
    ///
    /// The cache asks its tiers this way, in order, before it creates any
    /// future, for as long as every tier above the one it asks is
    /// `answers_without_io` (so that a hit can be copied up at once): a
    /// fresh hit in the top tier is answered without allocating, and one in
    /// an embedded store under it without a boxed future.
    fn get_ready(&self, key: &Key, read: &mut dyn FnMut(Option<&Entry>)) -> Readiness {
        let _ = (key, read);
        Readiness::NeedsIo
    }

    /// Reads several entries; the result has one slot per key, in order.
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Stores one entry, replacing any previous one.
    async fn set(&self, key: &Key, entry: Entry) -> Result<()>;

    /// Stores one entry at once, for tiers that hold their entries in
    /// memory (capability `answers_without_io`), with the effect of
    /// [`Tier::set`]; returns [`SetReadiness::Done`]. Must not block or do
    /// I/O; a tier that cannot store so hands the entry back in
    /// [`SetReadiness::NeedsIo`] (the default), and the caller calls `set`.
    ///
    /// The cache writes its top tier through this first, so a write to an
    /// in-memory tier costs no boxed future.
    fn set_ready(&self, key: &Key, entry: Entry) -> SetReadiness {
        let _ = key;
        SetReadiness::NeedsIo(entry)
    }

    /// Stores `entry`, which a revalidation made from the entry this tier
    /// may hold under `key`: the same body, a new header and extension
    /// area (a new expiry, new validators). A tier that can rewrite those
    /// alone keeps the stored body when it is that one (the same body
    /// checksum), so a revalidation costs it no body write; otherwise, and
    /// by default, this is [`Tier::set`].
    async fn renew(&self, key: &Key, entry: Entry) -> Result<()> {
        self.set(key, entry).await
    }

    /// Stores several entries.
    async fn set_many(&self, entries: Vec<(Key, Entry)>) -> Result<()> {
        for (key, entry) in entries {
            self.set(&key, entry).await?;
        }
        Ok(())
    }

    /// Removes one entry; `true` if it was present.
    async fn delete(&self, key: &Key) -> Result<bool>;

    /// Removes entries; returns how many.
    async fn clear(&self, scope: ClearScope) -> Result<u64>;

    /// Entries and bytes held.
    async fn size(&self) -> Result<TierSize>;

    /// One page of entries, for export. Tiers without the `scan` capability
    /// return an [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) error.
    async fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage>;

    /// Removes dead entries (past their retention) and gives the space
    /// back where the store can; returns how many entries were removed.
    async fn purge(&self) -> Result<u64> {
        Ok(0)
    }

    /// Rewrites the store so that it gives unused space back to the file
    /// system, for stores that need an explicit, exclusive step for it (a
    /// SQLite file created without incremental auto-vacuum). Slow, and may
    /// need free disk space about the store's size; never run implicitly.
    /// `None` for tiers with nothing to do.
    async fn compact(&self) -> Result<Option<Compacted>> {
        Ok(None)
    }

    /// Counters only the backend knows.
    fn stats(&self) -> TierStats {
        TierStats::default()
    }

    /// Whether the tier works right now.
    async fn health(&self) -> Health;

    /// The channel on which this tier's store tells the processes sharing
    /// it about deletes and clears, if it has one and it was enabled
    /// (`backplane: true` on the Redis tier). The cache publishes its own
    /// deletes and clears there and drops what others delete from its tiers
    /// that are not shared across hosts.
    fn backplane(&self) -> Option<std::sync::Arc<dyn crate::backplane::Backplane>> {
        None
    }

    /// Coordination state in this tier's shared store (cross-process leases,
    /// a shared rate limit, shared "slow down" circuits), if it keeps any.
    /// The cache uses the lowest shared tier that offers one.
    fn coordinator(&self) -> Option<std::sync::Arc<dyn crate::coordinator::Coordinator>> {
        None
    }
}
