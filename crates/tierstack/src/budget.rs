//! The upstream's request budget: a rate limit (GCRA) and a "slow down"
//! circuit per group of sources, kept in the process or shared through the
//! coordinating tier.
//!
//! Only calls that reach the upstream pass here (misses, refreshes,
//! warming); a hit never does. See `docs/decisions/0012-upstream-budget.md`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tierstack_core::{
    CircuitState, Coordinator, Error, ErrorKind, LeaseOwner, Operation, Rate, Result, Spend,
};

use crate::policy::{RateScope, SourcePolicy};
use crate::stats::{SourceCounters, bump};

/// How long a probe may take before another caller may probe instead.
const PROBE_TTL: Duration = Duration::from_secs(30);

/// The wait told to callers turned away while another caller probes: the
/// probe's answer usually comes within a request's time, so telling them
/// the whole probe slot would make them back off for nothing.
const WHILE_PROBING: Duration = Duration::from_secs(1);

/// The longest wait asked of a shared budget when the caller has no
/// deadline (the store needs a number).
const NO_DEADLINE: Duration = Duration::from_secs(365 * 86_400);

/// The coordinating tier's state, and who this cache is there.
#[derive(Clone, Debug)]
pub(crate) struct Shared {
    pub(crate) coordinator: Arc<dyn Coordinator>,
    pub(crate) owner: LeaseOwner,
    /// The coordinating tier's name, for messages.
    pub(crate) tier: Arc<str>,
}

/// Every group's budget and circuit, made on first use.
#[derive(Debug)]
pub(crate) struct Budgets {
    groups: Mutex<HashMap<Arc<str>, Arc<Group>>>,
    /// The budget of each named rate group, agreed by its sources' policies.
    named: HashMap<Arc<str>, (Option<Rate>, RateScope)>,
    shared: Option<Shared>,
    expected_processes: u32,
}

impl Budgets {
    /// Budgets for `policies`; fails when two policies of one rate group
    /// disagree about its rate or scope.
    pub(crate) fn new(
        policies: &crate::policy::Policies,
        shared: Option<Shared>,
        expected_processes: u32,
    ) -> Result<Self> {
        let mut named: HashMap<Arc<str>, (Option<Rate>, RateScope, String)> = HashMap::new();
        for (pattern, policy) in policies.iter() {
            if policy.rate_scope == RateScope::Shared
                && policy.rate.is_none()
                && policy.rate_group.is_none()
            {
                return Err(Error::config(format!(
                    "source {pattern:?}: rate_scope is shared, but the source has no rate to share; set its rate"
                ))
                .with_operation(Operation::Build));
            }
            let Some(group) = &policy.rate_group else {
                continue;
            };
            match named.get_mut(group) {
                None => {
                    named.insert(
                        Arc::clone(group),
                        (policy.rate, policy.rate_scope, pattern.clone()),
                    );
                }
                Some((rate, scope, first)) => {
                    let agrees = (policy.rate.is_none() || *rate == policy.rate || rate.is_none())
                        && *scope == policy.rate_scope;
                    if !agrees {
                        return Err(Error::config(format!(
                            "rate_group {group:?}: the policies of {first:?} and {pattern:?} give it different rates or rate_scopes; a group has one budget, so set its rate once (or the same everywhere)"
                        ))
                        .with_operation(Operation::Build));
                    }
                    *rate = rate.or(policy.rate);
                }
            }
        }
        Ok(Self {
            groups: Mutex::default(),
            named: named
                .into_iter()
                .map(|(group, (rate, scope, _))| (group, (rate, scope)))
                .collect(),
            shared,
            expected_processes: expected_processes.max(1),
        })
    }

    pub(crate) fn shared(&self) -> Option<&Shared> {
        self.shared.as_ref()
    }

    /// The group `source` spends under `policy`.
    pub(crate) fn group(&self, policy: &SourcePolicy, source: &str) -> Arc<Group> {
        let name = policy.group_of(source);
        let mut groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(group) = groups.get(name) {
            return Arc::clone(group);
        }
        let (rate, scope) = self
            .named
            .get(name)
            .copied()
            .unwrap_or((policy.rate, policy.rate_scope));
        let group = Arc::new(Group::new(
            Arc::from(name),
            rate,
            scope,
            self.expected_processes,
        ));
        groups.insert(Arc::clone(&group.name), Arc::clone(&group));
        group
    }
}

/// The budget and circuit of one group of sources.
#[derive(Debug)]
pub(crate) struct Group {
    name: Arc<str>,
    rate: Option<Rate>,
    scope: RateScope,
    /// The process's own limiter: the whole rate for a local budget, its
    /// share (`rate / expected_processes`) for a shared one whose store
    /// cannot be reached.
    local: Option<DefaultDirectRateLimiter>,
    circuit: Mutex<Circuit>,
}

/// What a call may do about the upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Go; `probe`: this call decides whether an open circuit closes.
    Go { probe: bool },
    /// The upstream asked to slow down; no request for this long.
    Open(Duration),
    /// The open period is over and another call is probing; try again
    /// after this long.
    Probing(Duration),
}

/// How a call went through the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spent {
    /// No limit, or a slot was free.
    AtOnce,
    /// The call waited this long for its slot.
    Waited(Duration),
}

impl Group {
    fn new(name: Arc<str>, rate: Option<Rate>, scope: RateScope, processes: u32) -> Self {
        let local = rate.map(|rate| {
            let rate = match scope {
                RateScope::Local => rate,
                RateScope::Shared => rate.divided_by(processes),
            };
            DefaultDirectRateLimiter::direct(quota(rate))
        });
        Self {
            name,
            rate,
            scope,
            local,
            circuit: Mutex::default(),
        }
    }

    /// The group's name (its sources' `rate_group`, or the one source).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether a request may go now: the shared circuit decides when there
    /// is one (`shared`), this process's otherwise and while the shared one
    /// cannot be asked. The shared answer is not copied here: another
    /// process's probe may close it any time.
    pub(crate) async fn gate(&self, shared: Option<&Shared>, counters: &SourceCounters) -> Gate {
        let Some(shared) = shared else {
            return self.lock_circuit().gate(Instant::now());
        };
        match shared
            .coordinator
            .circuit(&self.name, &shared.owner, PROBE_TTL)
            .await
        {
            Ok(CircuitState::Closed) => {
                self.lock_circuit().close();
                Gate::Go { probe: false }
            }
            Ok(CircuitState::Probe) => Gate::Go { probe: true },
            Ok(CircuitState::Open(wait)) => Gate::Open(wait),
            Ok(CircuitState::Probing(wait)) => Gate::Probing(wait.min(WHILE_PROBING)),
            Err(e) => {
                fell_back(shared, counters, "circuit", &e);
                self.lock_circuit().gate(Instant::now())
            }
        }
    }

    /// Lets a call through the circuit: `Ok(probe)`, or the `Throttled`
    /// error (counted as `circuit_open`) of a call turned away.
    pub(crate) async fn admit(
        &self,
        source: &str,
        shared: Option<&Shared>,
        counters: &SourceCounters,
    ) -> Result<bool> {
        let (why, wait) = match self.gate(shared, counters).await {
            Gate::Go { probe } => return Ok(probe),
            Gate::Open(wait) => ("the upstream asked to slow down", wait),
            Gate::Probing(wait) => (
                "the upstream asked to slow down, and one request is probing whether it recovered",
                wait,
            ),
        };
        bump(&counters.local().circuit_open);
        Err(throttled(source, why, wait))
    }

    /// Waits for a slot of the budget (at most `limit`), counting the wait
    /// or the refusal. A call that waited asks the circuit again, since an
    /// upstream may have said "slow down" meanwhile (a probe never is
    /// stopped by the circuit it probes).
    pub(crate) async fn take_slot(
        &self,
        source: &str,
        shared: Option<&Shared>,
        shared_circuit: Option<&Shared>,
        limit: Option<Duration>,
        probe: bool,
        counters: &SourceCounters,
    ) -> Result<()> {
        match self.spend(shared, limit, counters).await {
            Ok(Spent::AtOnce) => Ok(()),
            Ok(Spent::Waited(_)) => {
                bump(&counters.local().throttled_waits);
                if probe {
                    return Ok(());
                }
                self.admit(source, shared_circuit, counters)
                    .await
                    .map(|_| ())
            }
            Err(wait) => {
                bump(&counters.local().throttled_rejections);
                Err(throttled(
                    source,
                    "the rate limit's next slot is past the call's deadline",
                    wait,
                ))
            }
        }
    }

    /// Takes the upstream's answer to a call that went: a "slow down" opens
    /// the circuit (here and in the shared store); any other answer to a
    /// probe closes it.
    pub(crate) async fn answered(
        &self,
        slow_down: Option<Duration>,
        probe: bool,
        shared: Option<&Shared>,
        counters: &SourceCounters,
    ) {
        match slow_down {
            Some(period) => {
                tracing::warn!(group = %self.name, retry_after = ?period, "the upstream asked to slow down; no request until then");
                self.lock_circuit().open(Instant::now(), period);
                if let Some(shared) = shared {
                    if let Err(e) = shared.coordinator.open_circuit(&self.name, period).await {
                        fell_back(shared, counters, "circuit", &e);
                    }
                }
            }
            None if probe => {
                self.lock_circuit().close();
                if let Some(shared) = shared {
                    if let Err(e) = shared.coordinator.close_circuit(&self.name).await {
                        fell_back(shared, counters, "circuit", &e);
                    }
                }
            }
            None => {}
        }
    }

    /// Waits for a slot of the budget, for at most `limit`. `Err(wait)`:
    /// the slot is further away than that; nothing was spent.
    pub(crate) async fn spend(
        &self,
        shared: Option<&Shared>,
        limit: Option<Duration>,
        counters: &SourceCounters,
    ) -> std::result::Result<Spent, Duration> {
        let Some(rate) = self.rate else {
            return Ok(Spent::AtOnce);
        };
        if let (RateScope::Shared, Some(shared)) = (self.scope, shared) {
            match shared
                .coordinator
                .spend(&self.name, rate, limit.unwrap_or(NO_DEADLINE))
                .await
            {
                Ok(Spend::Granted(wait)) if wait.is_zero() => return Ok(Spent::AtOnce),
                Ok(Spend::Granted(wait)) => {
                    tokio::time::sleep(wait).await;
                    return Ok(Spent::Waited(wait));
                }
                Ok(Spend::Denied(wait)) => return Err(wait),
                Err(e) => fell_back(shared, counters, "rate limit", &e),
            }
        }
        match &self.local {
            Some(limiter) => spend_locally(limiter, limit).await,
            None => Ok(Spent::AtOnce),
        }
    }

    fn lock_circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// governor checks, it does not reserve: a caller that finds no slot sleeps
/// until the next one and checks again, and gives up once the next slot is
/// past its deadline.
async fn spend_locally(
    limiter: &DefaultDirectRateLimiter,
    limit: Option<Duration>,
) -> std::result::Result<Spent, Duration> {
    let start = Instant::now();
    let clock = DefaultClock::default();
    let mut slept = false;
    loop {
        match limiter.check() {
            Ok(()) if slept => return Ok(Spent::Waited(start.elapsed())),
            Ok(()) => return Ok(Spent::AtOnce),
            Err(not_until) => {
                let wait = not_until.wait_time_from(clock.now());
                if limit.is_some_and(|limit| start.elapsed() + wait > limit) {
                    return Err(wait);
                }
                tokio::time::sleep(wait).await;
                slept = true;
            }
        }
    }
}

fn quota(rate: Rate) -> Quota {
    let burst = std::num::NonZeroU32::new(rate.burst()).unwrap_or(std::num::NonZeroU32::MIN);
    // `Rate` refuses a zero count or period, so the interval is not zero.
    Quota::with_period(rate.interval().max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MIN))
        .allow_burst(burst)
}

/// A coordination call failed: this process decides alone until the store
/// answers again. Counted; logged at most once a minute per cache.
pub(crate) fn fell_back(shared: &Shared, counters: &SourceCounters, what: &str, error: &Error) {
    bump(&counters.local().coordination_fallbacks);
    crate::lease::warn_sometimes(&shared.tier, what, error);
}

/// A "slow down" circuit in this process: open until a time, then one probe
/// at a time.
#[derive(Debug, Default)]
struct Circuit {
    open_until: Option<Instant>,
    probe_until: Option<Instant>,
}

impl Circuit {
    fn gate(&mut self, now: Instant) -> Gate {
        match self.open_until {
            None => Gate::Go { probe: false },
            Some(until) if now < until => Gate::Open(until - now),
            Some(_) => match self.probe_until {
                Some(probing) if now < probing => Gate::Probing((probing - now).min(WHILE_PROBING)),
                _ => {
                    self.probe_until = Some(now + PROBE_TTL);
                    Gate::Go { probe: true }
                }
            },
        }
    }

    fn open(&mut self, now: Instant, period: Duration) {
        let until = now + period;
        self.open_until = Some(self.open_until.map_or(until, |u| u.max(until)));
        self.probe_until = None;
    }

    fn close(&mut self) {
        *self = Self::default();
    }
}

/// The error of a call the budget turned away.
pub(crate) fn throttled(source: &str, why: &str, wait: Duration) -> Error {
    Error::new(
        ErrorKind::Throttled,
        format!(
            "{source}: {why}; the next request may go in {}",
            tierstack_core::units::format_duration(wait.max(Duration::from_millis(1)))
        ),
    )
    .with_operation(Operation::Fetch)
    .with_retry_after(wait)
}

/// The budget of one source's group as a fetch closure's context holds it
/// (`FetchContext::spend`, `BatchContext::spend`): a single-key fetch spends
/// one request before its closure runs, a batch fetch one per group, and a
/// closure that sends more requests spends the others through this.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    group: Arc<Group>,
    shared: Option<Shared>,
    max_wait: Option<Duration>,
    source: Arc<str>,
    counters: Arc<SourceCounters>,
}

impl Budget {
    pub(crate) fn new(
        group: Arc<Group>,
        shared: Option<Shared>,
        max_wait: Option<Duration>,
        source: &str,
        counters: Arc<SourceCounters>,
    ) -> Self {
        Self {
            group,
            shared,
            max_wait,
            source: Arc::from(source),
            counters,
        }
    }

    /// Waits for one request's slot. Fails with
    /// [`ErrorKind::Throttled`] when the slot is further away than the
    /// source's `max_wait`, or the upstream's circuit is open.
    pub(crate) async fn spend(&self) -> Result<()> {
        self.pass(None).await.map(|_| ())
    }

    /// Passes the circuit and waits for a slot, for at most the source's
    /// `max_wait` and `limit`. `Ok(true)`: this request is the circuit's
    /// probe ([`Budget::answered`] tells how it went).
    pub(crate) async fn pass(&self, limit: Option<Duration>) -> Result<bool> {
        let shared = self.shared.as_ref();
        let probe = self
            .group
            .admit(&self.source, shared, &self.counters)
            .await?;
        let limit = [self.max_wait, limit].into_iter().flatten().min();
        self.group
            .take_slot(&self.source, shared, shared, limit, probe, &self.counters)
            .await?;
        Ok(probe)
    }

    /// Takes the upstream's answer to a request that passed (see
    /// [`Group::answered`]).
    pub(crate) async fn answered(&self, slow_down: Option<Duration>, probe: bool) {
        self.group
            .answered(slow_down, probe, self.shared.as_ref(), &self.counters)
            .await;
    }

    /// The group whose budget this spends.
    pub(crate) fn group(&self) -> &str {
        self.group.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_circuit_opens_then_lets_one_probe_through() {
        let mut c = Circuit::default();
        let t0 = Instant::now();
        assert_eq!(c.gate(t0), Gate::Go { probe: false });
        c.open(t0, Duration::from_secs(2));
        assert_eq!(
            c.gate(t0 + Duration::from_secs(1)),
            Gate::Open(Duration::from_secs(1))
        );
        // A shorter period does not shorten it.
        c.open(t0, Duration::from_secs(1));
        assert!(matches!(
            c.gate(t0 + Duration::from_millis(1500)),
            Gate::Open(_)
        ));
        let after = t0 + Duration::from_secs(2);
        assert_eq!(c.gate(after), Gate::Go { probe: true });
        assert!(
            matches!(c.gate(after), Gate::Probing(w) if w <= WHILE_PROBING),
            "one probe at a time"
        );
        assert_eq!(
            c.gate(after + PROBE_TTL),
            Gate::Go { probe: true },
            "a lost probe is replaced"
        );
        c.close();
        assert_eq!(c.gate(after), Gate::Go { probe: false });
    }

    #[test]
    fn quotas_follow_the_rate() {
        let q = quota("10/s".parse::<Rate>().unwrap().with_burst(3).unwrap());
        assert_eq!(q.replenish_interval(), Duration::from_millis(100));
        assert_eq!(q.burst_size().get(), 3);
    }

    #[tokio::test]
    async fn a_local_budget_paces_and_refuses_past_the_deadline() {
        let limiter = DefaultDirectRateLimiter::direct(quota("10/s".parse().unwrap()));
        assert_eq!(spend_locally(&limiter, None).await, Ok(Spent::AtOnce));
        let refused = spend_locally(&limiter, Some(Duration::from_millis(10))).await;
        assert!(
            matches!(refused, Err(wait) if wait > Duration::from_millis(10)),
            "{refused:?}"
        );
    }
}
