//! Observability: Prometheus metrics, kube-proxy-compatible health, and the HTTP endpoints
//! that serve them (`/metrics` on `metricsBindAddress`, `/healthz` and `/livez` on
//! `healthzBindAddress`).
//!
//! Wiring, in short:
//! ```no_run
//! # async fn wire(config: sluice::config::Config) -> anyhow::Result<()> {
//! use sluice::observe::{Observer, Servers};
//! let observer = Observer::new(config.sync_period);
//! observer.metrics.set_dataplane_mode("ebpf");
//! let servers =
//!     Servers::bind(config.metrics_bind_address, config.healthz_bind_address, &observer).await?;
//! tokio::spawn(servers.run(std::future::pending::<()>()));
//! // in the sync loop:
//! observer.queued(); // inputs changed
//! let started = std::time::Instant::now();
//! // ... sync ...
//! observer.synced(false, started.elapsed());
//! # Ok(()) }
//! ```

pub mod clock;
pub mod health;
pub mod metrics;
pub mod server;
pub mod service_health;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

pub use clock::{Clock, ManualClock, SystemClock, parse_rfc3339};
pub use health::{Health, HealthState, Probe, health_timeout};
pub use metrics::{DATAPATH_COUNTERS, Metrics, SKIP_REASONS};
pub use server::{BindError, Routes, Server, Servers, serve};

/// The annotation the EndpointSlice controller stamps with the time of the change that
/// produced the slice; network programming latency is measured from it.
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// Metrics and health together, for the calls that must update both. Cheap to clone.
#[derive(Clone)]
pub struct Observer {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    started: SystemTime,
}

impl Observer {
    /// Real clocks; health times out after `2 * sync_period`, as kube-proxy's.
    pub fn new(sync_period: Duration) -> Self {
        Self::with_clock(sync_period, Arc::new(SystemClock))
    }

    pub fn with_clock(sync_period: Duration, clock: Arc<dyn Clock>) -> Self {
        let started = clock.wall();
        Self {
            metrics: Arc::new(Metrics::new()),
            health: Arc::new(Health::with_clock(health_timeout(sync_period), clock)),
            started,
        }
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        self.health.clock()
    }

    /// Inputs changed and a sync is owed.
    pub fn queued(&self) {
        self.health.queued();
        self.metrics.set_last_queued(self.clock().wall());
    }

    /// A sync (`full`: the periodic reconcile against the kernel) finished successfully after
    /// `duration`.
    pub fn synced(&self, full: bool, duration: Duration) {
        self.metrics.observe_sync(full, duration);
        self.health.synced();
        self.metrics.set_last_synced(self.clock().wall());
    }

    /// A sync finished without bringing the datapath up to date: its time is still observed,
    /// but health keeps counting from the oldest queued change.
    pub fn sync_failed(&self, full: bool, duration: Duration) {
        self.metrics.observe_sync(full, duration);
    }

    /// A change stamped `trigger` (see [`LAST_CHANGE_TRIGGER_TIME`]) is now programmed.
    /// Triggers from before this process started are ignored, as kube-proxy does: the first
    /// sync after a restart would otherwise report every slice's age as its latency.
    pub fn network_programmed(&self, trigger: SystemTime) {
        if trigger >= self.started {
            self.metrics
                .observe_network_programming(trigger, self.clock().wall());
        }
    }

    /// [`network_programmed`](Self::network_programmed) from the annotation's raw value;
    /// a missing or malformed value is skipped.
    pub fn network_programmed_annotation(&self, value: Option<&str>) {
        if let Some(trigger) = value.and_then(parse_rfc3339) {
            self.network_programmed(trigger);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    #[test]
    fn observer_updates_metrics_and_health_together() {
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000)));
        let obs = Observer::with_clock(Duration::from_secs(30), clock.clone());
        assert_eq!(obs.health.healthz().status(), 503);

        obs.queued();
        clock.advance(Duration::from_secs(2));
        obs.synced(false, Duration::from_millis(5));
        assert_eq!(obs.health.healthz().status(), 200);

        obs.queued();
        clock.advance(Duration::from_secs(30));
        obs.sync_failed(false, Duration::from_millis(5));
        clock.advance(Duration::from_secs(30));
        assert_eq!(
            obs.health.healthz().status(),
            503,
            "a failed sync is not progress"
        );

        let text = obs.metrics.render();
        assert!(text.contains("kubeproxy_sync_proxy_rules_last_timestamp_seconds 1002\n"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds 1002\n"));
        assert!(text.contains("kubeproxy_sync_proxy_rules_duration_seconds_count 2\n"));
    }

    #[test]
    fn network_programming_ignores_changes_older_than_the_process() {
        let clock = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(1_000)));
        let obs = Observer::with_clock(Duration::from_secs(30), clock.clone());
        clock.advance(Duration::from_secs(3));
        obs.network_programmed_annotation(Some("1970-01-01T00:16:39Z")); // before start
        obs.network_programmed_annotation(Some("1970-01-01T00:16:41.5Z")); // 1.5s ago
        obs.network_programmed_annotation(Some("not a time"));
        obs.network_programmed_annotation(None);
        let text = obs.metrics.render();
        assert!(text.contains("kubeproxy_network_programming_duration_seconds_count 1\n"));
        assert!(text.contains("kubeproxy_network_programming_duration_seconds_sum 1.5\n"));
    }
}
