//! Coordination state on Redis: leases (who fetches a cold key), a GCRA
//! request budget shared by every process, and shared "slow down" circuits.
//!
//! Every operation is one command or one Lua script on exactly one key, so
//! it is atomic on a single server and runs on the key's own node on a
//! Cluster, whatever `{`/`}` (hash tags) the key or the bucket name holds.
//! Times come from the server (`PX`, `TIME`), never from the hosts' clocks.
//! A release also publishes on the tier's release channel, which wakes the
//! waiters (see [`crate::wake`]); publishing touches no key.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::{FromRedisValue, Script};
use tierstack_core::{
    CircuitState, Coordinator, Error, Key, LeaseOwner, Operation, Rate, Result, Spend, async_trait,
};

use crate::backend::Shared;
use crate::error;

/// How long a circuit's key outlives the end of its open period (or of its
/// probe), so that a probe that never reports back does not leave the
/// circuit open forever, while a circuit that just ended is still seen as
/// "open period over: probe" rather than "closed".
pub(crate) const CIRCUIT_LINGER: Duration = Duration::from_secs(60);

/// The longest time sent to a script. Lua numbers are doubles: integers are
/// exact only below 2^53, and a `Duration::MAX` wait must not turn into
/// garbage. 2^50 µs is 35 years.
const LARGEST_LUA_NUMBER: u64 = 1 << 50;

/// First pause between two polls in `wait_released`. Short, because
/// before the tier's first subscription is confirmed polling is the only
/// way to see a release, and most leases are held for a short fetch; the
/// pause doubles, so a long wait costs a few polls more, not a poll every
/// 5 ms.
const FIRST_POLL: Duration = Duration::from_millis(5);
/// Longest pause between two polls while no subscription is live (the
/// subscriber is reconnecting, or the server refuses it): without messages,
/// a release is seen this late at most, as before wake-ups existed. The
/// configured `lease_poll` applies while releases arrive as messages.
const POLL_WITHOUT_WAKE: Duration = Duration::from_millis(50);

/// Extends a lease only if `ARGV[1]` still holds it.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});

/// Deletes a lease only if `ARGV[1]` holds it (a holder whose lease expired
/// and was taken over never frees the new holder's), then announces it on
/// the channel `ARGV[2]` with the lease's key name. `PUBLISH` is no key
/// access: the script still touches one key, and on a Cluster the message
/// reaches every node's subscribers. `pcall`: a refused `PUBLISH` (an ACL
/// user without rights on the channel) must not fail the release, whose
/// `DEL` already happened; waiters then see it by polling. Returns 0 (not
/// the owner), 1 (released and announced), 2 (released, not announced).
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
local sent = redis.pcall('PUBLISH', ARGV[2], KEYS[1])
if type(sent) == 'table' and sent.err then
  return 2
end
return 1
",
    )
});

/// GCRA with reservations. The key holds the theoretical arrival time (TAT,
/// µs of the server's clock). `ARGV`: emission interval, tolerance (the
/// emission interval times the burst), longest wait, all in µs. Returns
/// `{1, wait}` with the slot reserved, or `{0, wait}` with nothing stored.
static SPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + emission
local wait = new_tat - tolerance - now
if wait < 0 then wait = 0 end
if wait > max_wait then
  return {0, wait}
end
local keep_ms = math.ceil((new_tat - now) / 1000)
if keep_ms < 1 then keep_ms = 1 end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', keep_ms))
return {1, wait}
",
    )
});

/// Opens a circuit until `now + ARGV[1]` ms, or keeps its later end, and
/// forgets any probe. `ARGV[2]`: how long the key outlives the end (ms).
static OPEN_CIRCUIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local open_until = now + tonumber(ARGV[1])
local before = tonumber(redis.call('HGET', KEYS[1], 'until'))
if before and before > open_until then open_until = before end
redis.call('HSET', KEYS[1], 'until', string.format('%.0f', open_until))
redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', open_until - now + tonumber(ARGV[2])))
return 1
",
    )
});

/// The circuit as `ARGV[1]` sees it; `ARGV[2]`: probe time (ms), `ARGV[3]`:
/// how long the key outlives a probe (ms). Returns `{0, 0}` closed,
/// `{1, ms}` open for `ms`, `{2, 0}` this caller probes.
static CIRCUIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local fields = redis.call('HMGET', KEYS[1], 'until', 'probe', 'probe_until')
local open_until = tonumber(fields[1])
if not open_until then
  return {0, 0}
end
if now < open_until then
  return {1, open_until - now}
end
local probe = fields[2]
local probe_until = tonumber(fields[3])
if (not probe) or (not probe_until) or probe_until <= now or probe == ARGV[1] then
  local probe_ms = tonumber(ARGV[2])
  redis.call('HSET', KEYS[1], 'probe', ARGV[1], 'probe_until', string.format('%.0f', now + probe_ms))
  local keep = probe_ms + tonumber(ARGV[3])
  if redis.call('PTTL', KEYS[1]) < keep then
    redis.call('PEXPIRE', KEYS[1], string.format('%.0f', keep))
  end
  return {2, 0}
end
return {3, probe_until - now}
",
    )
});

/// [`Coordinator`] on the tier's Redis (single server, Sentinel master or
/// Cluster), through the tier's connection, response timeout and circuit
/// breaker.
///
/// Keys, all under `{prefix}:c:`, the namespace reserved for coordination:
/// leases `{prefix}:c:l:{schema_version}:{key}`, rate buckets
/// `{prefix}:c:r:{bucket}`, circuits `{prefix}:c:o:{name}`; releases are
/// announced on the channel `{prefix}:c:released:{schema_version}`.
pub(crate) struct RedisCoordinator {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RedisCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoordinator")
            .field("keys", &self.shared.coordination)
            .finish_non_exhaustive()
    }
}

/// Milliseconds for Redis, at least 1 (`PX 0` is an error) and small enough
/// for a Lua number.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, LARGEST_LUA_NUMBER / 1000)
}

/// Microseconds for a script, small enough for a Lua number.
fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .min(LARGEST_LUA_NUMBER)
}

/// A count of µs a script returned; a negative one, which the scripts never
/// return, is zero.
fn returned_micros(count: i64) -> Duration {
    Duration::from_micros(u64::try_from(count).unwrap_or(0))
}

/// A count of ms a script returned; a negative one is zero.
fn returned_millis(count: i64) -> Duration {
    Duration::from_millis(u64::try_from(count).unwrap_or(0))
}

impl RedisCoordinator {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn lease_key(&self, key: &Key) -> String {
        format!(
            "{}l:{}:{}",
            self.shared.coordination,
            self.shared.schema_version,
            key.as_str()
        )
    }

    fn bucket_key(&self, bucket: &str) -> String {
        format!("{}r:{bucket}", self.shared.coordination)
    }

    fn circuit_key(&self, name: &str) -> String {
        format!("{}o:{name}", self.shared.coordination)
    }

    fn failed(&self, e: Error) -> Error {
        e.with_tier(self.shared.name.as_str())
    }

    /// Runs one command through the tier's breaker and response timeout; an
    /// open breaker is an error (the cache then coordinates in-process).
    async fn command<T: FromRedisValue + Send>(&self, cmd: redis::Cmd) -> Result<T> {
        self.shared
            .call(Operation::Coordinate, None, |mut conn| async move {
                cmd.query_async::<T>(&mut conn).await
            })
            .await
            .and_then(|answer| answer.ok_or_else(|| error::circuit_open(Operation::Coordinate)))
            .map_err(|e| self.failed(e))
    }

    /// Runs `script` on `key` with `args` (`EVALSHA`, loading the script
    /// first where the server does not know it yet).
    async fn script<T: FromRedisValue + Send>(
        &self,
        script: &'static Script,
        key: String,
        args: Vec<String>,
    ) -> Result<T> {
        self.shared
            .call(Operation::Coordinate, None, |mut conn| async move {
                let mut invocation = script.key(&key);
                for arg in &args {
                    invocation.arg(arg);
                }
                invocation.invoke_async::<T>(&mut conn).await
            })
            .await
            .and_then(|answer| answer.ok_or_else(|| error::circuit_open(Operation::Coordinate)))
            .map_err(|e| self.failed(e))
    }
}

#[async_trait]
impl Coordinator for RedisCoordinator {
    /// `SET {key} {owner} NX PX {ttl}`.
    async fn acquire(&self, key: &Key, owner: &LeaseOwner, ttl: Duration) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.lease_key(key))
            .arg(owner.as_str())
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let answer: Option<String> = self.command(cmd).await?;
        Ok(answer.is_some())
    }

    async fn renew(&self, key: &Key, owner: &LeaseOwner, ttl: Duration) -> Result<bool> {
        let renewed: i64 = self
            .script(
                &RENEW,
                self.lease_key(key),
                vec![owner.as_str().to_owned(), millis(ttl).to_string()],
            )
            .await?;
        Ok(renewed == 1)
    }

    /// Deletes the lease if `owner` holds it and publishes its key name on
    /// the release channel, which wakes the waiters of every process.
    async fn release(&self, key: &Key, owner: &LeaseOwner) -> Result<()> {
        let released: i64 = self
            .script(
                &RELEASE,
                self.lease_key(key),
                vec![
                    owner.as_str().to_owned(),
                    self.shared.wakes.channel().to_owned(),
                ],
            )
            .await?;
        if released == 2 {
            tracing::debug!(
                tier = %self.shared.name,
                channel = self.shared.wakes.channel(),
                "lease released but the release could not be published (no channel rights?); waiters see it by polling"
            );
        }
        Ok(())
    }

    /// Registers for the release message, then polls `EXISTS` with a
    /// backoff from 5 ms to `lease_poll` (250 ms by default) while the
    /// tier's subscription is live, or to 50 ms while it is not. A message
    /// about the lease (or the subscription coming or going) cuts the pause
    /// short. The wait never outlasts `timeout` by more than one `EXISTS`.
    async fn wait_released(&self, key: &Key, timeout: Duration) -> Result<bool> {
        let name = self.lease_key(key);
        let deadline = Instant::now() + timeout;
        // Before the first check: a release between the check and the
        // pause must still cut the pause short.
        let mut waiter = self.shared.wakes.register(name.clone());
        let longest = self.shared.lease_poll.max(Duration::from_millis(1));
        let mut pause = FIRST_POLL.min(longest);
        loop {
            waiter.checking();
            let mut cmd = redis::cmd("EXISTS");
            cmd.arg(&name);
            let held: i64 = self.command(cmd).await?;
            if held == 0 {
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Read at every pause: a subscription lost during a long pause
            // wakes the waiter, which then polls at the short interval.
            let cap = if self.shared.wakes.subscribed() {
                longest
            } else {
                longest.min(POLL_WITHOUT_WAKE)
            };
            pause = pause.min(cap);
            tokio::select! {
                () = tokio::time::sleep(pause.min(left)) => pause = pause.saturating_mul(2),
                () = waiter.woken() => {}
            }
        }
    }

    async fn spend(&self, bucket: &str, rate: Rate, max_wait: Duration) -> Result<Spend> {
        let emission = micros(rate.interval()).max(1);
        let tolerance = emission
            .saturating_mul(u64::from(rate.burst()))
            .min(LARGEST_LUA_NUMBER);
        let (granted, wait): (i64, i64) = self
            .script(
                &SPEND,
                self.bucket_key(bucket),
                vec![
                    emission.to_string(),
                    tolerance.to_string(),
                    micros(max_wait).to_string(),
                ],
            )
            .await?;
        let wait = returned_micros(wait);
        Ok(if granted == 1 {
            Spend::Granted(wait)
        } else {
            Spend::Denied(wait)
        })
    }

    async fn open_circuit(&self, name: &str, period: Duration) -> Result<()> {
        let _: i64 = self
            .script(
                &OPEN_CIRCUIT,
                self.circuit_key(name),
                vec![
                    millis(period).to_string(),
                    millis(CIRCUIT_LINGER).to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    async fn circuit(
        &self,
        name: &str,
        owner: &LeaseOwner,
        probe_ttl: Duration,
    ) -> Result<CircuitState> {
        let (state, left): (i64, i64) = self
            .script(
                &CIRCUIT,
                self.circuit_key(name),
                vec![
                    owner.as_str().to_owned(),
                    millis(probe_ttl).to_string(),
                    millis(CIRCUIT_LINGER).to_string(),
                ],
            )
            .await?;
        Ok(match state {
            0 => CircuitState::Closed,
            2 => CircuitState::Probe,
            3 => CircuitState::Probing(returned_millis(left)),
            _ => CircuitState::Open(returned_millis(left)),
        })
    }

    async fn close_circuit(&self, name: &str) -> Result<()> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.circuit_key(name));
        let _: i64 = self.command(cmd).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_sent_to_scripts_stay_exact_lua_integers() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), LARGEST_LUA_NUMBER / 1000);
        assert_eq!(micros(Duration::from_millis(3)), 3000);
        assert_eq!(micros(Duration::MAX), LARGEST_LUA_NUMBER);
        assert_eq!(returned_millis(250), Duration::from_millis(250));
        assert_eq!(returned_micros(1_500), Duration::from_micros(1_500));
        assert_eq!(returned_micros(-5), Duration::ZERO);
    }
}
