//! Deliberately broken tiers: **test tooling, never a backend.**
//!
//! A [`BrokenTier`] wraps a real tier (usually the memory tier,
//! [`BrokenTier::memory`]) and delegates every operation to it except for
//! one [`Fault`]. The self-test (`tests/self_test.rs`) runs every
//! conformance case against each fault and checks that at least the
//! expected cases fail: a fault no case catches is a hole in the suite.
//!
//! Faults are deterministic (counters, never randomness), so a case either
//! always catches a fault or never does.
//!
//! The last faults are false claims: the tier declares a capability (or
//! keeps the memory tier's) that it does not have, and the case gated on
//! that capability must catch it. [`BrokenTier::harness`] gives each the
//! hooks (reopen, capped, config) that make the claim testable.
//!
//! Two deviations from pure delegation, the same for every fault (and for
//! [`Fault::None`], the control that must pass every case):
//!
//! - [`Tier::get_ready`] is not offered (`answers_without_io` and
//!   `reads_in_place` are cleared), so that every read goes through the
//!   faulty [`Tier::get`].
//! - [`Tier::scan`] honours `limit` by paging over the wrapped tier's
//!   entries in key order (the memory tier answers a scan in one page), so
//!   that the paging faults are observable.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Harness;
use tierstack::{
    Bytes, Capabilities, ClearScope, Entry, Health, Key, MemoryConfig, MemoryTier, Result,
    ScanCursor, ScanPage, Tier, TierSize, TierStats, Timestamp, async_trait,
};

/// The one thing a [`BrokenTier`] gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Nothing: the control, which must pass every case.
    None,
    /// Crude: drops every write (`set` and `set_many` answer `Ok`).
    DropsEveryWrite,
    /// Crude: ignores TTLs, storing every entry as never expiring (its
    /// header's expiry, stale window and retention rewritten to never).
    IgnoresTtl,
    /// Crude: ignores the [`ClearScope`], clearing everything whatever the
    /// scope.
    ClearsEverythingWhateverTheScope,
    /// Crude: `clear` removes nothing and says so.
    ClearsNothing,
    /// Subtle: drops one write in 50 (the 50th, 100th, … entry written).
    DropsOneWriteIn50,
    /// Subtle: stores expiries 1 ms late (stale window and retention kept
    /// as long, so shifted too).
    ExpiryOffBy1Ms,
    /// Subtle: a scan of more than one page loses its last page (the page
    /// before it says there is no more).
    LosesLastScanPage,
    /// Subtle: the cursor after a scan's first page points one entry back,
    /// so the second page repeats one entry (nothing is lost).
    DuplicateInScan,
    /// Subtle: `get_many` answers one slot short (the last key's).
    TruncatesGetMany,
    /// Subtle: loses the remaining TTL of what it is given, as a tier whose
    /// copy-up path applied its own default would: an entry written with an
    /// expiry is stored expiring a full hour from now instead.
    WritesFullDefaultTtl,
    /// Subtle: flips one bit of one body byte in 1 read of 100 (the 100th,
    /// 200th, … entry read by `get` or `get_many`).
    FlipsAByteIn1Of100Reads,
    /// Subtle: reports entries and bytes 10% low (whole tenths lost,
    /// rounding down: 3 entries stay 3, 20 become 18).
    SizesTenPercentLow,
    /// False claim: declares `persistent`, but the store it opens again
    /// ([`BrokenTier::harness`]'s reopen hook) is a new, empty one.
    ClaimsPersistentButForgets,
    /// False claim: declares `shared_across_processes`, but a second
    /// process that opens its config gets a store of its own (a memory
    /// tier).
    ClaimsSharedAcrossProcesses,
    /// False claim: declares `size_limit` (as the memory tier does), but
    /// the tier built with a cap ([`BrokenTier::harness`]'s capped hook)
    /// ignores it and never evicts.
    ClaimsSizeLimitButNeverEvicts,
    /// False claim: declares `native_ttl`, but only hides dead entries
    /// until a purge removes them (as the memory tier does).
    ClaimsNativeTtl,
    /// False claim: declares `keeps_decoded` (as the memory tier does), but
    /// drops the decoded value from every entry it reads, so every hit
    /// decodes.
    ForgetsDecoded,
    /// False claim: declares `answers_without_io`, but `get_ready` and
    /// `set_ready` never answer (the trait's defaults).
    ClaimsAnswersWithoutIo,
    /// False claim: declares `reads_in_place`, but `get_ready` never
    /// answers (the trait's default).
    ClaimsReadsInPlace,
    /// False claim: declares `shared_across_hosts` but not
    /// `shared_across_processes`, so the second-process case, which proves
    /// the sharing of both, would be skipped.
    ClaimsSharedAcrossHostsOnly,
}

impl Fault {
    /// Every fault, [`Fault::None`] first.
    pub const ALL: [Self; 21] = [
        Self::None,
        Self::DropsEveryWrite,
        Self::IgnoresTtl,
        Self::ClearsEverythingWhateverTheScope,
        Self::ClearsNothing,
        Self::DropsOneWriteIn50,
        Self::ExpiryOffBy1Ms,
        Self::LosesLastScanPage,
        Self::DuplicateInScan,
        Self::TruncatesGetMany,
        Self::WritesFullDefaultTtl,
        Self::FlipsAByteIn1Of100Reads,
        Self::SizesTenPercentLow,
        Self::ClaimsPersistentButForgets,
        Self::ClaimsSharedAcrossProcesses,
        Self::ClaimsSizeLimitButNeverEvicts,
        Self::ClaimsNativeTtl,
        Self::ForgetsDecoded,
        Self::ClaimsAnswersWithoutIo,
        Self::ClaimsReadsInPlace,
        Self::ClaimsSharedAcrossHostsOnly,
    ];
}

/// The default TTL [`Fault::WritesFullDefaultTtl`] applies.
const FULL_TTL: Duration = Duration::from_secs(3600);

/// A tier that delegates to `inner` except for one [`Fault`]. Test tooling.
#[derive(Debug)]
pub struct BrokenTier {
    inner: Arc<dyn Tier>,
    fault: Fault,
    writes: AtomicU64,
    reads: AtomicU64,
}

impl BrokenTier {
    /// Wraps `inner` with `fault`.
    pub fn new(inner: Arc<dyn Tier>, fault: Fault) -> Self {
        Self {
            inner,
            fault,
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        }
    }

    /// Wraps a fresh memory tier (10 000 entries, no TTL cap) with `fault`.
    pub fn memory(fault: Fault) -> Self {
        let tier = MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("valid config");
        Self::new(Arc::new(tier), fault)
    }

    /// A harness for a broken memory tier with `fault`, with every hook the
    /// gated cases use: its reopen hook opens the same memory tier again
    /// (a store that outlives its handle), except for
    /// [`Fault::ClaimsPersistentButForgets`]; its capped hook builds a
    /// memory tier capped by bytes, except for
    /// [`Fault::ClaimsSizeLimitButNeverEvicts`]; its config, which a second
    /// process opens, is a memory tier's (so a claim to share the store
    /// across processes is false).
    pub fn harness(fault: Fault) -> Harness {
        let inner: Arc<dyn Tier> = Arc::new(
            MemoryTier::new(&MemoryConfig::with_max_entries(10_000)).expect("valid config"),
        );
        let tier = Self::new(Arc::clone(&inner), fault);
        Harness::new(tier)
            .config(MemoryConfig::with_max_entries(10_000))
            .reopen_with(move || {
                let inner = if fault == Fault::ClaimsPersistentButForgets {
                    MemoryTier::new(&MemoryConfig::with_max_entries(10_000))
                        .map(|t| Arc::new(t) as Arc<dyn Tier>)
                } else {
                    Ok(Arc::clone(&inner))
                };
                async move { inner.map(|inner| Arc::new(Self::new(inner, fault)) as Arc<dyn Tier>) }
            })
            .capped(move |bytes| {
                let config = if fault == Fault::ClaimsSizeLimitButNeverEvicts {
                    MemoryConfig::with_max_entries(10_000)
                } else {
                    MemoryConfig::with_max_bytes(bytes)
                };
                let inner = MemoryTier::new(&config);
                async move {
                    inner.map(|inner| Arc::new(Self::new(Arc::new(inner), fault)) as Arc<dyn Tier>)
                }
            })
    }

    /// The fault this tier has.
    pub fn fault(&self) -> Fault {
        self.fault
    }

    /// The entry as this tier stores it, or `None` for a dropped write.
    fn written(&self, entry: Entry) -> Option<Entry> {
        let mut header = entry.header;
        match self.fault {
            Fault::DropsEveryWrite => return None,
            Fault::DropsOneWriteIn50 => {
                if self.writes.fetch_add(1, Ordering::Relaxed) % 50 == 49 {
                    return None;
                }
            }
            Fault::IgnoresTtl => header = header.with_expiry(Timestamp::NEVER),
            Fault::ExpiryOffBy1Ms if !header.expires_at.is_never() => {
                header = header.with_expiry(header.expires_at.saturating_add(ms(1)));
            }
            Fault::WritesFullDefaultTtl if !header.expires_at.is_never() => {
                header = header.with_expiry(Timestamp::now().saturating_add(FULL_TTL));
            }
            _ => return Some(entry),
        }
        Some(entry.with_header(header))
    }

    /// The entry as this tier answers a read of it.
    fn read(&self, entry: Option<Entry>) -> Option<Entry> {
        if self.fault == Fault::ForgetsDecoded {
            return entry.map(|mut e| {
                e.decoded = None;
                e
            });
        }
        if self.fault != Fault::FlipsAByteIn1Of100Reads
            || self.reads.fetch_add(1, Ordering::Relaxed) % 100 != 99
        {
            return entry;
        }
        entry.map(|mut e| {
            if !e.body.is_empty() {
                let mut body = e.body.to_vec();
                let at = body.len() / 2;
                body[at] ^= 0x04;
                e.body = Bytes::from(body);
                e.decoded = None;
            }
            e
        })
    }

    /// Every entry of the wrapped tier's scan, in key order.
    async fn everything(&self) -> Result<Vec<(Key, Entry)>> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.inner.scan(cursor, 1000).await?;
            all.extend(page.entries);
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn low(n: u64) -> u64 {
    n - n / 10
}

fn cursor_at(offset: usize) -> ScanCursor {
    ScanCursor((offset as u64).to_le_bytes().to_vec())
}

fn offset_of(cursor: Option<&ScanCursor>) -> usize {
    cursor
        .and_then(|c| <[u8; 8]>::try_from(c.0.as_slice()).ok())
        .map_or(0, |b| {
            usize::try_from(u64::from_le_bytes(b)).unwrap_or(usize::MAX)
        })
}

#[async_trait]
impl Tier for BrokenTier {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = self.inner.capabilities();
        capabilities.answers_without_io = false;
        capabilities.reads_in_place = false;
        match self.fault {
            Fault::ClaimsPersistentButForgets => capabilities.persistent = true,
            Fault::ClaimsSharedAcrossProcesses => capabilities.shared_across_processes = true,
            Fault::ClaimsNativeTtl => capabilities.native_ttl = true,
            Fault::ClaimsAnswersWithoutIo => capabilities.answers_without_io = true,
            Fault::ClaimsReadsInPlace => capabilities.reads_in_place = true,
            Fault::ClaimsSharedAcrossHostsOnly => capabilities.shared_across_hosts = true,
            _ => {}
        }
        capabilities
    }

    fn schema_version(&self) -> Option<u32> {
        self.inner.schema_version()
    }

    fn max_ttl(&self) -> Option<Duration> {
        self.inner.max_ttl()
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let entry = self.inner.get(key).await?;
        Ok(self.read(entry))
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        let got = self.inner.get_many(keys).await?;
        let mut got: Vec<Option<Entry>> = got.into_iter().map(|e| self.read(e)).collect();
        if self.fault == Fault::TruncatesGetMany {
            got.pop();
        }
        Ok(got)
    }

    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        match self.written(entry) {
            Some(entry) => self.inner.set(key, entry).await,
            None => Ok(()),
        }
    }

    async fn set_many(&self, entries: Vec<(Key, Entry)>) -> Result<()> {
        let kept: Vec<(Key, Entry)> = entries
            .into_iter()
            .filter_map(|(k, e)| self.written(e).map(|e| (k, e)))
            .collect();
        if kept.is_empty() {
            return Ok(());
        }
        self.inner.set_many(kept).await
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        self.inner.delete(key).await
    }

    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        match self.fault {
            Fault::ClearsEverythingWhateverTheScope => self.inner.clear(ClearScope::All).await,
            Fault::ClearsNothing => Ok(0),
            _ => self.inner.clear(scope).await,
        }
    }

    async fn size(&self) -> Result<TierSize> {
        let size = self.inner.size().await?;
        Ok(if self.fault == Fault::SizesTenPercentLow {
            TierSize {
                entries: low(size.entries),
                bytes: low(size.bytes),
            }
        } else {
            size
        })
    }

    async fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage> {
        let all = self.everything().await?;
        let start = offset_of(cursor.as_ref()).min(all.len());
        let end = start.saturating_add(limit.max(1)).min(all.len());
        if self.fault == Fault::LosesLastScanPage && start > 0 && end == all.len() {
            return Ok(ScanPage::default());
        }
        let next = if end == all.len() {
            None
        } else if self.fault == Fault::DuplicateInScan && start == 0 && end > 1 {
            Some(cursor_at(end - 1))
        } else {
            Some(cursor_at(end))
        };
        Ok(ScanPage {
            entries: all[start..end].to_vec(),
            next,
        })
    }

    async fn purge(&self) -> Result<u64> {
        self.inner.purge().await
    }

    fn stats(&self) -> TierStats {
        self.inner.stats()
    }

    async fn health(&self) -> Health {
        self.inner.health().await
    }
}
