use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::{RedisResult, Value};
use tierstack_core::envelope::MAX_HEADER_LEN;
use tierstack_core::{
    Backplane, Bytes, Capabilities, ClearScope, Coordinator, DecodeLimits, Entry, ErrorKind,
    Header, Health, Key, Operation, Result, ScanCursor, ScanPage, Tier, TierSize, TierStats,
    Timestamp, async_trait,
};

use crate::backplane::RedisBackplane;
use crate::breaker::{Admit, Breaker};
use crate::config::{BREAKER_COOLDOWN, LEASE_POLL, RESPONSE_TIMEOUT, RedisConfig};
use crate::connection::{Conn, NodeConn, Target};
use crate::coordinator::RedisCoordinator;
use crate::wake::Wakes;
use crate::{CAPABILITIES, error};

/// Keys fetched and removed per round trip by `clear`, `size` and `scan`.
const SCAN_COUNT: usize = 1000;

/// A tier on Redis: a single server, a Cluster or a Sentinel-managed master,
/// shared by every process and host that uses the same namespace.
///
/// Every key is `{prefix}:{schema_version}:{key}`; expiry is Redis's own
/// (`SET … PX` until the entry's stale window ends). Each command gets the
/// response timeout; after repeated failures a circuit breaker turns reads
/// into misses and drops writes without contacting the server, until a
/// probe after the cool-down succeeds.
#[derive(Debug, Clone)]
pub struct RedisTier {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) name: String,
    target: Target,
    conn: RwLock<Option<Conn>>,
    connecting: tokio::sync::Mutex<()>,
    /// `{prefix}:e:{schema_version}:`
    pub(crate) namespace: String,
    /// The application schema version whose entries this tier holds.
    pub(crate) schema_version: u32,
    /// `{prefix}:c:`, where coordination state lives (leases, rate
    /// buckets, circuits, the invalidation channel): never scanned, counted
    /// or cleared as entries.
    pub(crate) coordination: String,
    /// Keys seen in the namespace that are not entries of this tier.
    pub(crate) foreign: std::sync::atomic::AtomicU64,
    /// `SCAN MATCH` pattern of the namespace (glob characters escaped).
    pattern: String,
    ttl: Option<Duration>,
    timeout: Duration,
    breaker: Breaker,
    backplane: Option<Arc<RedisBackplane>>,
    /// Wakes this tier's lease waiters when a lease is released.
    pub(crate) wakes: Wakes,
    /// Longest pause between two checks of a waited-on lease while
    /// releases arrive as messages.
    pub(crate) lease_poll: Duration,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTier")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("breaker_open", &self.breaker.is_open())
            .finish_non_exhaustive()
    }
}

/// Escapes the characters `SCAN MATCH` treats as a pattern.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Releases the breaker's probe if a call is abandoned half-way (its future
/// dropped), so one cancelled caller cannot keep the circuit open.
struct InFlight<'a> {
    breaker: &'a Breaker,
    done: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.release_probe();
        }
    }
}

impl RedisTier {
    /// Opens the tier. Only the config is checked here: a server that is
    /// down when the program starts makes the tier unavailable (reads miss,
    /// writes are dropped) until it comes up, not the program fail.
    pub async fn open(config: &RedisConfig, schema_version: u32) -> Result<Self> {
        check_prefix(&config.prefix)?;
        let target = Target::from_config(config)?;
        let conn = target.lazy()?;
        let namespace = entry_namespace(&config.prefix, schema_version);
        let pattern = format!("{}*", glob_escape(&namespace));
        let wakes = Wakes::new(
            format!(
                "{}released:{schema_version}",
                coordination_namespace(&config.prefix)
            ),
            target.clone(),
        );
        let shared = Arc::new_cyclic(|weak| Shared {
            name: config.name.clone(),
            target,
            conn: RwLock::new(conn),
            connecting: tokio::sync::Mutex::new(()),
            namespace: namespace.clone(),
            schema_version,
            coordination: coordination_namespace(&config.prefix),
            foreign: std::sync::atomic::AtomicU64::new(0),
            pattern,
            ttl: config.ttl,
            timeout: config.response_timeout.unwrap_or(RESPONSE_TIMEOUT),
            breaker: Breaker::new(
                config.breaker_threshold,
                config.breaker_cooldown.unwrap_or(BREAKER_COOLDOWN),
            ),
            backplane: config.backplane.then(|| {
                Arc::new(RedisBackplane::new(
                    weak.clone(),
                    format!(
                        "{}invalidations:{schema_version}",
                        coordination_namespace(&config.prefix)
                    ),
                ))
            }),
            wakes,
            lease_poll: config.lease_poll.unwrap_or(LEASE_POLL),
        });
        let tier = Self { shared };
        if tier.current().is_none() {
            // Cluster and Sentinel learn the topology up front when they can.
            if let Err(e) = tier.shared.connection(false).await {
                tracing::warn!(tier = %config.name, error = %e, "Redis is not reachable yet; the tier stays unavailable until it is");
            }
        }
        Ok(tier)
    }

    fn current(&self) -> Option<Conn> {
        self.shared.current()
    }

    /// The storage key of `key`.
    fn storage_key(&self, key: &Key) -> String {
        let mut out = String::with_capacity(self.shared.namespace.len() + key.as_str().len());
        out.push_str(&self.shared.namespace);
        out.push_str(key.as_str());
        out
    }

    /// The key stored under `name`, if it is one of ours.
    fn key_of(&self, name: &[u8]) -> Option<Key> {
        let name = std::str::from_utf8(name).ok()?;
        Key::parse(name.strip_prefix(&self.shared.namespace)?).ok()
    }

    fn decode(bytes: Vec<u8>, op: Operation) -> Result<Entry> {
        Entry::from_bytes(Bytes::from(bytes), DecodeLimits::default())
            .map_err(|e| error::corrupt(e, op))
    }

    /// `SET` arguments for `entry`: its bytes, and how long Redis keeps
    /// them (until its retention ends); `None` if it is already dead.
    fn set_command(&self, key: &Key, entry: &Entry, now: Timestamp) -> Option<redis::Cmd> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.storage_key(key)).arg(entry.to_vec());
        match entry.header.retain_until.remaining_from(now) {
            None => {}
            Some(left) if left.is_zero() => return None,
            Some(left) => {
                cmd.arg("PX")
                    .arg(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1));
            }
        }
        Some(cmd)
    }

    /// Visits every key of the namespace, a `SCAN` page at a time, on every
    /// node; `visit` gets each page's keys and that node's connection.
    async fn for_each_page<F, Fut>(&self, op: Operation, mut visit: F) -> Result<()>
    where
        F: FnMut(NodeConn, Vec<Vec<u8>>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let conn = self.shared.checked_connection(op).await?;
        let nodes = self.shared.target.nodes(&conn).await?;
        for node in nodes {
            let mut cursor = 0_u64;
            loop {
                let (next, keys) = self.scan_step(node.clone(), cursor, SCAN_COUNT, op).await?;
                if !keys.is_empty() {
                    visit(node.clone(), keys).await?;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(())
    }

    async fn scan_step(
        &self,
        mut node: NodeConn,
        cursor: u64,
        count: usize,
        op: Operation,
    ) -> Result<(u64, Vec<Vec<u8>>)> {
        let scanned = self
            .shared
            .timed(
                op,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&self.shared.pattern)
                    .arg("COUNT")
                    .arg(count)
                    .query_async::<(u64, Vec<Vec<u8>>)>(&mut node),
            )
            .await?;
        Ok(scanned)
    }

    /// Runs one pipeline of single-key commands on a node and returns the
    /// replies.
    async fn pipeline<T: redis::FromRedisValue>(
        &self,
        mut node: NodeConn,
        pipe: &redis::Pipeline,
        op: Operation,
    ) -> Result<Vec<T>> {
        self.shared
            .timed(op, pipe.query_async::<Vec<T>>(&mut node))
            .await
    }

    /// Runs a pipeline whose commands may fail one by one (`WRONGTYPE` on a
    /// foreign key): each reply is the value, or `None` for a failed command.
    async fn pipeline_tolerant(
        &self,
        node: NodeConn,
        pipe: &mut redis::Pipeline,
        op: Operation,
    ) -> Result<Vec<Option<Value>>> {
        pipe.ignore_errors();
        let values: Vec<Value> = self.pipeline(node, pipe, op).await?;
        Ok(values
            .into_iter()
            .map(|v| match v {
                Value::ServerError(_) => None,
                other => Some(other),
            })
            .collect())
    }

    /// The names of `names` that hold entries of this tier (a header that
    /// parses and is bound to the key the name says), with their headers.
    /// Everything else in the namespace is counted as foreign and left alone.
    async fn own_entries(
        &self,
        node: NodeConn,
        names: Vec<Vec<u8>>,
        op: Operation,
    ) -> Result<Vec<OwnEntry>> {
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.cmd("GETRANGE")
                .arg(name)
                .arg(0)
                .arg(MAX_HEADER_LEN - 1);
        }
        let heads = self.pipeline_tolerant(node, &mut pipe, op).await?;
        let mut own = Vec::with_capacity(names.len());
        for (name, head) in names.into_iter().zip(heads) {
            let parsed = self.key_of(&name).and_then(|key| match head {
                Some(Value::BulkString(bytes)) => {
                    let header = Header::parse(&bytes, DecodeLimits::STRUCTURE_ONLY)
                        .ok()
                        .filter(|h| h.belongs_to(&key))?;
                    let len = Header::declared_len(&bytes)? as u64 + u64::from(header.body_len);
                    Some((key, header, len))
                }
                _ => None,
            });
            match parsed {
                Some((key, header, len)) => own.push(OwnEntry {
                    name,
                    key,
                    header,
                    len,
                }),
                None => self.count_foreign(&name),
            }
        }
        Ok(own)
    }

    fn count_foreign(&self, name: &[u8]) {
        self.shared
            .foreign
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(tier = %self.shared.name, key = %String::from_utf8_lossy(name), "skipped a key that is not an entry of this tier");
    }

    async fn remove(&self, node: NodeConn, keys: &[Vec<u8>], op: Operation) -> Result<u64> {
        let mut pipe = redis::pipe();
        for key in keys {
            // One key per command: keys of one node may sit in different slots.
            pipe.cmd("UNLINK").arg(key);
        }
        let removed: Vec<u64> = self.pipeline(node, &pipe, op).await?;
        Ok(removed.iter().sum())
    }
}

impl Shared {
    fn current(&self) -> Option<Conn> {
        self.conn
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The connection, connecting first if there is none yet (or, for a
    /// probe under Sentinel, asking again where the master is).
    async fn connection(&self, probe: bool) -> Result<Conn> {
        if !(probe && self.target.may_move()) {
            if let Some(conn) = self.current() {
                return Ok(conn);
            }
        }
        let _one_at_a_time = self.connecting.lock().await;
        if !(probe && self.target.may_move()) {
            if let Some(conn) = self.current() {
                return Ok(conn);
            }
        }
        let conn = self.target.connect().await?;
        *self
            .conn
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn.clone());
        Ok(conn)
    }

    /// A connection for an operation the caller asked for explicitly
    /// (delete, clear, scan): an open circuit is an error, not a silent skip.
    async fn checked_connection(&self, op: Operation) -> Result<Conn> {
        match self.call(op, None, |conn| async move { Ok(conn) }).await? {
            Some(conn) => Ok(conn),
            None => Err(error::circuit_open(op)),
        }
    }

    /// Awaits `fut` within the response timeout, without breaker
    /// bookkeeping (for the steps of a long operation).
    async fn timed<T>(
        &self,
        op: Operation,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(error::redis(e, op)),
            Err(_) => Err(error::timeout(op)),
        }
    }

    /// Runs `f` on the connection through the breaker: `Ok(None)` when the
    /// circuit is open (nothing was sent). `budget` bounds the whole call
    /// (default: the response timeout).
    pub(crate) async fn call<T, F, Fut>(
        &self,
        op: Operation,
        budget: Option<Duration>,
        f: F,
    ) -> Result<Option<T>>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let admit = self.breaker.admit();
        if admit == Admit::No {
            return Ok(None);
        }
        let mut in_flight = InFlight {
            breaker: &self.breaker,
            done: false,
        };
        let budget = budget.unwrap_or(self.timeout);
        let outcome = tokio::time::timeout(budget, async {
            let conn = self.connection(admit == Admit::Probe).await?;
            f(conn).await.map_err(Failure::Redis)
        })
        .await;
        in_flight.done = true;
        match outcome {
            Ok(Ok(value)) => {
                self.breaker.success();
                Ok(Some(value))
            }
            Ok(Err(Failure::Redis(e))) if error::is_foreign_value(&e) => {
                self.breaker.success();
                Err(error::corrupt("the key holds another Redis type", op))
            }
            Ok(Err(Failure::Redis(e))) => {
                let e = error::redis(e, op);
                self.count(&e);
                Err(e)
            }
            Ok(Err(Failure::Tier(e))) => {
                self.count(&e);
                Err(e)
            }
            Err(_) => {
                self.breaker.failure();
                Err(error::timeout(op))
            }
        }
    }

    /// An outage counts towards opening the circuit; an answer that the
    /// server gave (a permission error, say) shows it is up.
    fn count(&self, e: &tierstack_core::Error) {
        if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) {
            self.breaker.failure();
        } else {
            self.breaker.success();
        }
    }
}

/// Why a call failed: the server's answer, or not reaching it at all.
enum Failure {
    Redis(redis::RedisError),
    Tier(tierstack_core::Error),
}

impl From<tierstack_core::Error> for Failure {
    fn from(e: tierstack_core::Error) -> Self {
        Self::Tier(e)
    }
}

#[async_trait]
impl Tier for RedisTier {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn schema_version(&self) -> Option<u32> {
        Some(self.shared.schema_version)
    }

    fn capabilities(&self) -> Capabilities {
        CAPABILITIES
    }

    fn max_ttl(&self) -> Option<Duration> {
        self.shared.ttl
    }

    async fn get(&self, key: &Key) -> Result<Option<Entry>> {
        let name = self.storage_key(key);
        let found = self
            .shared
            .call(Operation::Get, None, |mut conn| async move {
                redis::cmd("GET")
                    .arg(&name)
                    .query_async::<Option<Vec<u8>>>(&mut conn)
                    .await
            })
            .await?;
        match found.flatten() {
            Some(bytes) => Self::decode(bytes, Operation::Get).map(Some),
            None => Ok(None),
        }
    }

    async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Entry>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.storage_key(k)).collect();
        let found = self
            .shared
            .call(Operation::GetMany, None, |mut conn| async move {
                // On a Cluster, redis-rs splits MGET by slot.
                redis::cmd("MGET")
                    .arg(&names)
                    .query_async::<Vec<Option<Vec<u8>>>>(&mut conn)
                    .await
            })
            .await?;
        let Some(found) = found else {
            return Ok(vec![None; keys.len()]);
        };
        // A damaged entry in a batch is a miss for that key alone.
        Ok(found
            .into_iter()
            .map(|bytes| bytes.and_then(|b| Self::decode(b, Operation::GetMany).ok()))
            .collect())
    }

    async fn set(&self, key: &Key, entry: Entry) -> Result<()> {
        let now = Timestamp::now();
        let Some(cmd) = self.set_command(key, &entry, now) else {
            return self.delete(key).await.map(|_| ());
        };
        self.shared
            .call(Operation::Set, None, |mut conn| async move {
                cmd.query_async::<()>(&mut conn).await
            })
            .await?;
        Ok(())
    }

    async fn set_many(&self, entries: Vec<(Key, Entry)>) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = Timestamp::now();
        let mut commands = Vec::with_capacity(entries.len());
        let mut dead = Vec::new();
        for (key, entry) in &entries {
            match self.set_command(key, entry, now) {
                Some(cmd) => commands.push(cmd),
                None => dead.push(self.storage_key(key)),
            }
        }
        let cluster = self.shared.target.is_cluster();
        let budget = Some(self.shared.timeout.saturating_mul(2));
        self.shared
            .call(Operation::SetMany, budget, |conn| async move {
                if cluster {
                    // Keys spread over slots: one command each, multiplexed
                    // on the cluster connection's node links.
                    try_join_all(commands.iter().map(|cmd| {
                        let mut conn = conn.clone();
                        async move { cmd.query_async::<()>(&mut conn).await }
                    }))
                    .await?;
                    if !dead.is_empty() {
                        redis::cmd("UNLINK")
                            .arg(&dead)
                            .query_async::<()>(&mut conn.clone())
                            .await?;
                    }
                } else {
                    let mut pipe = redis::pipe();
                    for cmd in commands {
                        pipe.add_command(cmd).ignore();
                    }
                    for name in &dead {
                        pipe.cmd("UNLINK").arg(name).ignore();
                    }
                    pipe.query_async::<()>(&mut conn.clone()).await?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn delete(&self, key: &Key) -> Result<bool> {
        let name = self.storage_key(key);
        let removed = self
            .shared
            .call(Operation::Delete, None, |mut conn| async move {
                redis::cmd("UNLINK")
                    .arg(&name)
                    .query_async::<u64>(&mut conn)
                    .await
            })
            .await?
            .ok_or_else(|| error::circuit_open(Operation::Delete))?;
        Ok(removed > 0)
    }

    async fn clear(&self, scope: ClearScope) -> Result<u64> {
        let op = Operation::Clear;
        let removed = std::sync::atomic::AtomicU64::new(0);
        let now = Timestamp::now();
        self.for_each_page(op, |node, names| {
            let scope = &scope;
            let removed = &removed;
            async move {
                // Only what parses as this tier's own entries is removed:
                // a foreign key that shares the namespace stays.
                let own = self.own_entries(node.clone(), names, op).await?;
                let doomed: Vec<Vec<u8>> = own
                    .into_iter()
                    .filter(|own| match scope {
                        ClearScope::Source(source) => own.key.source() == source,
                        ClearScope::Expired => !own.header.is_fresh(now),
                        // `ClearScope::All` and any scope added later.
                        _ => true,
                    })
                    .map(|own| own.name)
                    .collect();
                if !doomed.is_empty() {
                    let n = self.remove(node, &doomed, op).await?;
                    removed.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(())
            }
        })
        .await?;
        Ok(removed.into_inner())
    }

    async fn size(&self) -> Result<TierSize> {
        let op = Operation::Len;
        let size = std::sync::Mutex::new(TierSize::default());
        self.for_each_page(op, |node, names| {
            let size = &size;
            async move {
                let own = self.own_entries(node, names, op).await?;
                let mut size = size
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                size.entries += own.len() as u64;
                size.bytes += own.iter().map(|own| own.len).sum::<u64>();
                Ok(())
            }
        })
        .await?;
        Ok(size
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    async fn scan(&self, cursor: Option<ScanCursor>, limit: usize) -> Result<ScanPage> {
        let op = Operation::Scan;
        let (node_index, redis_cursor) = match cursor {
            None => (0_usize, 0_u64),
            Some(ScanCursor(bytes)) => {
                let raw: [u8; 12] = bytes.as_slice().try_into().map_err(|_| {
                    tierstack_core::Error::new(ErrorKind::Other, "not a Redis scan cursor")
                })?;
                let node = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
                let mut at = [0_u8; 8];
                at.copy_from_slice(&raw[4..]);
                (node, u64::from_le_bytes(at))
            }
        };
        let conn = self.shared.checked_connection(op).await?;
        let nodes = self.shared.target.nodes(&conn).await?;
        let Some(node) = nodes.get(node_index).cloned() else {
            return Ok(ScanPage::default());
        };
        let (next, names) = self
            .scan_step(node.clone(), redis_cursor, limit.max(1), op)
            .await?;
        let mut entries = Vec::with_capacity(names.len());
        if !names.is_empty() {
            let mut pipe = redis::pipe();
            for name in &names {
                pipe.cmd("GET").arg(name);
            }
            let values = self.pipeline_tolerant(node, &mut pipe, op).await?;
            for (name, value) in names.iter().zip(values) {
                let decoded = match (self.key_of(name), value) {
                    (Some(key), Some(Value::BulkString(bytes))) => Self::decode(bytes, op)
                        .ok()
                        .filter(|entry| entry.header.belongs_to(&key))
                        .map(|entry| (key, entry)),
                    _ => None,
                };
                match decoded {
                    Some(found) => entries.push(found),
                    None => self.count_foreign(name),
                }
            }
        }
        let next = if next != 0 {
            Some((node_index, next))
        } else if node_index + 1 < nodes.len() {
            Some((node_index + 1, 0))
        } else {
            None
        };
        Ok(ScanPage {
            entries,
            next: next.map(|(node, at)| {
                let mut bytes = (node as u32).to_le_bytes().to_vec();
                bytes.extend_from_slice(&at.to_le_bytes());
                ScanCursor(bytes)
            }),
        })
    }

    /// Redis expires entries by itself when their stale window ends.
    async fn purge(&self) -> Result<u64> {
        Ok(0)
    }

    fn stats(&self) -> TierStats {
        TierStats {
            foreign: self
                .shared
                .foreign
                .load(std::sync::atomic::Ordering::Relaxed),
            unavailable: self
                .shared
                .breaker
                .rejected
                .load(std::sync::atomic::Ordering::Relaxed),
            ..TierStats::default()
        }
    }

    async fn health(&self) -> Health {
        if self.shared.breaker.is_open() {
            return Health::Unhealthy(
                "circuit breaker open after repeated failures; probing".to_owned(),
            );
        }
        let pong = self
            .shared
            .call(Operation::Health, None, |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await;
        match pong {
            Ok(Some(_)) => Health::Healthy,
            Ok(None) => Health::Unhealthy("circuit breaker open".to_owned()),
            Err(e) => Health::Unhealthy(e.to_string()),
        }
    }

    fn backplane(&self) -> Option<Arc<dyn Backplane>> {
        self.shared
            .backplane
            .clone()
            .map(|b| b as Arc<dyn Backplane>)
    }

    /// Leases, the shared rate budget and circuits in `{prefix}:c:`, on the
    /// tier's connection and behind its breaker (see the crate docs).
    fn coordinator(&self) -> Option<Arc<dyn Coordinator>> {
        Some(Arc::new(RedisCoordinator::new(Arc::clone(&self.shared))))
    }
}

impl Shared {
    /// Publishes `payload` on `channel` (through the breaker).
    pub(crate) async fn publish(&self, channel: &str, payload: Vec<u8>) -> Result<()> {
        self.call(Operation::Publish, None, |mut conn| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await?
        .ok_or_else(|| error::circuit_open(Operation::Publish))?;
        Ok(())
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }
}

/// A key of the namespace that holds one of this tier's entries.
struct OwnEntry {
    name: Vec<u8>,
    key: Key,
    header: Header,
    /// The entry's length in bytes.
    len: u64,
}

/// Where a tier's entries live: `{prefix}:e:{schema_version}:`. With `:`
/// banned from prefixes this is prefix-free: no other prefix or schema
/// version produces a namespace that starts with this one, so no tier reads
/// or clears another's entries. `{prefix}:c:` is reserved for coordination
/// state (leases, rate limits, the invalidation channel).
pub(crate) fn entry_namespace(prefix: &str, schema_version: u32) -> String {
    format!("{prefix}:e:{schema_version}:")
}

/// Where coordination state lives: `{prefix}:c:`. Entries are under
/// `{prefix}:e:`, so no scan, size or clear of entries ever meets a lease,
/// a rate bucket or a circuit.
pub(crate) fn coordination_namespace(prefix: &str) -> String {
    format!("{prefix}:c:")
}

/// Prefixes are one segment of a Redis key name: no `:` (it separates the
/// namespace's parts), no `{`/`}` (Redis Cluster hash tags), no spaces or
/// control characters.
pub(crate) fn check_prefix(prefix: &str) -> Result<()> {
    let bad = prefix
        .chars()
        .find(|c| matches!(c, ':' | '{' | '}') || c.is_whitespace() || c.is_control());
    if prefix.is_empty() || prefix.len() > 128 || bad.is_some() {
        return Err(tierstack_core::Error::config(format!(
            "redis.prefix {prefix:?} must be 1 to 128 characters without ':', '{{', '}}', spaces or control characters \
             (':' separates the namespace's parts, so that one prefix's keys can never be another's; \
             use '-' or '_' instead, e.g. \"team-cache\")"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_in_the_namespace_are_escaped() {
        assert_eq!(glob_escape("team[1]*:2:"), "team\\[1\\]\\*:2:");
        assert_eq!(glob_escape("plain:1:"), "plain:1:");
    }
}
