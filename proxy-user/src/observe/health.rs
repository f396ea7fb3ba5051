//! Health as kube-proxy's ProxierHealthServer defines it, so that kubelet probes, load
//! balancer health checks and dashboards written for kube-proxy read Sluice the same way.
//!
//! The rule: an update that has been queued (inputs changed) but not yet synced for
//! `healthTimeout` or longer means the sync loop is stuck. kube-proxy sets `healthTimeout` to
//! twice `syncPeriod`. `/healthz` additionally needs one successful sync (a node that has never
//! programmed its datapath must not receive load-balancer traffic) and an eligible node (one
//! that is not being deleted); `/livez` asks neither, so a slow first sync or a draining node
//! does not get the pod restarted.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use serde::Serialize;

use super::clock::{Clock, SystemClock, ZERO_TIME, format_rfc3339};

/// kube-proxy's `healthTimeout` for a given `syncPeriod`.
pub fn health_timeout(sync_period: Duration) -> Duration {
    sync_period.saturating_mul(2)
}

/// The pure state machine behind the probes; every method takes the time explicitly.
#[derive(Clone, Debug)]
pub struct HealthState {
    timeout: Duration,
    last_updated: Option<Instant>,
    /// The *oldest* unsynced queueing: later ones must not push the deadline out, or a steady
    /// stream of changes would hide a loop that never syncs.
    oldest_pending: Option<Instant>,
}

impl HealthState {
    pub fn new(health_timeout: Duration) -> Self {
        Self {
            timeout: health_timeout,
            last_updated: None,
            oldest_pending: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Inputs changed; a sync is owed.
    pub fn queued(&mut self, now: Instant) {
        self.oldest_pending.get_or_insert(now);
    }

    /// A sync completed: everything queued before it is programmed.
    pub fn synced(&mut self, now: Instant) {
        self.oldest_pending = None;
        self.last_updated = Some(now);
    }

    pub fn last_updated(&self) -> Option<Instant> {
        self.last_updated
    }

    /// True when a queued update has waited `timeout` or longer (kube-proxy: healthy while
    /// `now - oldestQueued < healthTimeout`).
    pub fn is_overdue(&self, now: Instant) -> bool {
        self.oldest_pending
            .is_some_and(|queued| now.saturating_duration_since(queued) >= self.timeout)
    }

    /// `/livez`: the sync loop is not wedged. Holds before the first sync too, as kube-proxy's
    /// does while starting up, unless the first sync itself is overdue.
    pub fn is_live(&self, now: Instant) -> bool {
        !self.is_overdue(now)
    }

    /// `/healthz` without node eligibility: synced at least once and not overdue.
    pub fn is_healthy(&self, now: Instant) -> bool {
        self.last_updated.is_some() && !self.is_overdue(now)
    }
}

/// The answer to one probe: HTTP status and JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub healthy: bool,
    pub body: String,
}

impl Probe {
    pub fn status(&self) -> u16 {
        if self.healthy { 200 } else { 503 }
    }
}

/// kube-proxy's body, minus its per-IP-family `status` map (Sluice has one datapath).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    last_updated: &'a str,
    current_time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
}

struct Tracked {
    state: HealthState,
    /// Wall time of `state.last_updated`, for the report.
    last_updated_wall: Option<SystemTime>,
}

/// [`HealthState`] behind a lock, read against a [`Clock`]; share it in an `Arc` between the
/// sync loop (which calls [`queued`](Self::queued) and [`synced`](Self::synced)) and the HTTP
/// server.
pub struct Health {
    clock: Arc<dyn Clock>,
    tracked: Mutex<Tracked>,
    node_eligible: AtomicBool,
}

impl Health {
    /// With the real clock and kube-proxy's timeout, `2 * sync_period`.
    pub fn for_sync_period(sync_period: Duration) -> Self {
        Self::with_clock(health_timeout(sync_period), Arc::new(SystemClock))
    }

    pub fn with_clock(health_timeout: Duration, clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            tracked: Mutex::new(Tracked {
                state: HealthState::new(health_timeout),
                last_updated_wall: None,
            }),
            // kube-proxy reports ineligible until it has seen its Node; Sluice may run without
            // the API server (manifests), so it starts eligible and the Node watcher, when
            // there is one, withdraws that.
            node_eligible: AtomicBool::new(true),
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// Call when inputs change (a Service or EndpointSlice event, a new snapshot).
    pub fn queued(&self) {
        let now = self.clock.now();
        self.lock().state.queued(now);
    }

    /// Call when a sync has brought the datapath up to date.
    pub fn synced(&self) {
        let (now, wall) = (self.clock.now(), self.clock.wall());
        let mut tracked = self.lock();
        tracked.state.synced(now);
        tracked.last_updated_wall = Some(wall);
    }

    /// kube-proxy's node eligibility: false while the Node is being deleted or carries the
    /// `ToBeDeletedByClusterAutoscaler` taint, so load balancers drain this node first.
    pub fn set_node_eligible(&self, eligible: bool) {
        self.node_eligible.store(eligible, Ordering::Relaxed);
    }

    pub fn node_eligible(&self) -> bool {
        self.node_eligible.load(Ordering::Relaxed)
    }

    /// What `/healthz` answers now.
    pub fn healthz(&self) -> Probe {
        let eligible = self.node_eligible();
        self.probe(
            |state, now| state.is_healthy(now) && eligible,
            Some(eligible),
        )
    }

    /// What `/livez` answers now.
    pub fn livez(&self) -> Probe {
        self.probe(HealthState::is_live, None)
    }

    fn probe(&self, rule: impl Fn(&HealthState, Instant) -> bool, eligible: Option<bool>) -> Probe {
        let (now, wall) = (self.clock.now(), self.clock.wall());
        let (healthy, last_updated_wall) = {
            let tracked = self.lock();
            (rule(&tracked.state, now), tracked.last_updated_wall)
        };
        let current_time = format_rfc3339(wall);
        // As kube-proxy: a healthy answer reports `lastUpdated` as now, because older
        // releases bumped it on every loop iteration and clients compare it with the clock.
        let last_updated = match (healthy, last_updated_wall) {
            (true, _) => current_time.clone(),
            (false, Some(t)) => format_rfc3339(t),
            (false, None) => ZERO_TIME.to_owned(),
        };
        let body = serde_json::to_string(&Body {
            last_updated: &last_updated,
            current_time: &current_time,
            node_eligible: eligible,
            healthy,
        })
        .expect("a struct of strings and booleans serializes");
        Probe { healthy, body }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tracked> {
        // The state is plain data updated in one step; a panic elsewhere cannot leave it torn.
        self.tracked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::observe::clock::ManualClock;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn health_table() {
        let t0 = Instant::now();
        struct Case {
            name: &'static str,
            events: &'static [(&'static str, u64)],
            at: u64,
            healthy: bool,
            live: bool,
        }
        let cases = [
            Case {
                name: "never synced, nothing queued",
                events: &[],
                at: 1000,
                healthy: false,
                live: true,
            },
            Case {
                name: "never synced, first sync queued recently",
                events: &[("queued", 0)],
                at: 59,
                healthy: false,
                live: true,
            },
            Case {
                name: "never synced, first sync overdue",
                events: &[("queued", 0)],
                at: 60,
                healthy: false,
                live: false,
            },
            Case {
                name: "synced, nothing queued, long ago",
                events: &[("synced", 0)],
                at: 10_000,
                healthy: true,
                live: true,
            },
            Case {
                name: "queued recently",
                events: &[("synced", 0), ("queued", 100)],
                at: 159,
                healthy: true,
                live: true,
            },
            Case {
                name: "queued exactly the timeout ago",
                events: &[("synced", 0), ("queued", 100)],
                at: 160,
                healthy: false,
                live: false,
            },
            Case {
                name: "queued longer than the timeout",
                events: &[("synced", 0), ("queued", 100)],
                at: 500,
                healthy: false,
                live: false,
            },
            Case {
                name: "later queueing does not move the deadline",
                events: &[("synced", 0), ("queued", 100), ("queued", 150)],
                at: 165,
                healthy: false,
                live: false,
            },
            Case {
                name: "a sync clears what was queued",
                events: &[("synced", 0), ("queued", 100), ("synced", 120)],
                at: 500,
                healthy: true,
                live: true,
            },
            Case {
                name: "queued again after a sync counts from the new queueing",
                events: &[("queued", 0), ("synced", 50), ("queued", 100)],
                at: 130,
                healthy: true,
                live: true,
            },
        ];
        for case in cases {
            let mut state = HealthState::new(TIMEOUT);
            for &(event, at) in case.events {
                match event {
                    "queued" => state.queued(t0 + secs(at)),
                    "synced" => state.synced(t0 + secs(at)),
                    other => unreachable!("{other}"),
                }
            }
            let now = t0 + secs(case.at);
            assert_eq!(
                state.is_healthy(now),
                case.healthy,
                "healthy: {}",
                case.name
            );
            assert_eq!(state.is_live(now), case.live, "live: {}", case.name);
        }
    }

    #[test]
    fn timeout_is_twice_the_sync_period() {
        assert_eq!(health_timeout(secs(30)), secs(60));
        assert_eq!(health_timeout(Duration::MAX), Duration::MAX);
    }

    #[test]
    fn a_clock_that_went_backwards_is_not_overdue() {
        let t0 = Instant::now() + secs(10);
        let mut state = HealthState::new(TIMEOUT);
        state.synced(t0);
        state.queued(t0);
        assert!(state.is_healthy(t0 - secs(5)));
    }

    fn json(probe: &Probe) -> serde_json::Value {
        serde_json::from_str(&probe.body).unwrap()
    }

    #[test]
    fn probes_report_like_kube_proxy() {
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + secs(1_714_557_600)));
        let health = Health::with_clock(TIMEOUT, clock.clone());

        let before = health.healthz();
        assert_eq!(before.status(), 503);
        let body = json(&before);
        assert_eq!(body["lastUpdated"], ZERO_TIME);
        assert_eq!(body["currentTime"], "2024-05-01T10:00:00Z");
        assert_eq!(body["nodeEligible"], true);
        assert_eq!(body["healthy"], false);
        assert_eq!(health.livez().status(), 200);
        assert!(json(&health.livez()).get("nodeEligible").is_none());

        health.synced();
        clock.advance(secs(5));
        let ok = health.healthz();
        assert_eq!(ok.status(), 200);
        assert_eq!(json(&ok)["lastUpdated"], "2024-05-01T10:00:05Z");

        health.queued();
        clock.advance(TIMEOUT);
        let stuck = health.healthz();
        assert_eq!(stuck.status(), 503);
        assert_eq!(json(&stuck)["lastUpdated"], "2024-05-01T10:00:00Z");
        assert_eq!(health.livez().status(), 503);

        health.synced();
        health.set_node_eligible(false);
        assert_eq!(health.healthz().status(), 503);
        assert_eq!(json(&health.healthz())["nodeEligible"], false);
        assert_eq!(health.livez().status(), 200);
    }
}
