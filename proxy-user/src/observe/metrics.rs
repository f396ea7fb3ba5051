//! Prometheus metrics: kube-proxy's names where the meaning is the same (so its dashboards
//! and alerts keep working), `sluice_*` for what only Sluice has. docs/metrics.md lists them.
//!
//! Callers use the typed methods; prometheus types stay inside this module so that changing
//! the metrics library touches one file.

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use prometheus::{
    Encoder as _, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder, exponential_buckets, linear_buckets,
};
use proxy_common::{map_names, stat};

use super::clock::unix_seconds;
use crate::dataplane::plan::StoreError;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const TEXT_CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// `reason` label values of `sluice_skipped_objects_total`, created at zero so that a rate
/// exists before the first skip. Values other than these are accepted too.
pub const SKIP_REASONS: [&str; 6] = [
    "invalid_ip",
    "invalid_port",
    "unknown_protocol",
    "duplicate_port",
    "frontend_conflict",
    "malformed_manifest",
];

/// The datapath's `SLUICE_STATS` indexes and their `counter` label in
/// `sluice_datapath_packets_total`: pass `(name, PinnedMaps::counter(index))` pairs to
/// [`Metrics::set_datapath_counters`].
pub const DATAPATH_COUNTERS: [(u32, &str); 21] = [
    (stat::PACKETS_SEEN, "packets_seen"),
    (stat::DNAT_NEW_FLOW, "dnat_new_flow"),
    (stat::DNAT_TRACKED, "dnat_tracked"),
    (stat::REVERSE_NAT, "reverse_nat"),
    (stat::DROP_NO_BACKEND, "drop_no_backend"),
    (stat::DROP_BAD_SLOT, "drop_bad_slot"),
    (stat::CT_INSERT_FAILED, "ct_insert_failed"),
    (stat::REJECT_TCP, "reject_tcp"),
    (stat::REJECT_UDP, "reject_udp"),
    (stat::DROP_LOCAL_POLICY, "drop_local_policy"),
    (stat::ICMP_ERROR_RNAT, "icmp_error_rnat"),
    (stat::CT_EXPIRED, "ct_expired"),
    (stat::DROP_UNREJECTABLE, "drop_unrejectable"),
    (stat::SNAT_NEW_FLOW, "snat_new_flow"),
    (stat::DROP_SNAT_FAILED, "drop_snat_failed"),
    (stat::DROP_SOURCE_RANGE, "drop_source_range"),
    (stat::REJECT_UNKNOWN_PORT, "reject_unknown_port"),
    (stat::AFFINITY_HIT, "affinity_hit"),
    (stat::AFFINITY_EXPIRED, "affinity_expired"),
    (stat::XDP_REDIRECT, "xdp_redirect"),
    (stat::XDP_TO_TC, "xdp_to_tc"),
];

/// The maps the controller writes; their apply-error series start at zero.
const WRITTEN_MAPS: [&str; 3] = [map_names::SERVICES, map_names::SLOTS, map_names::BACKENDS];

/// Entries over capacity; 0 for a map without capacity (there is no such kernel map, and a
/// NaN would break alert expressions).
pub fn pressure(entries: u64, capacity: u64) -> f64 {
    if capacity == 0 {
        0.0
    } else {
        entries as f64 / capacity as f64
    }
}

/// kube-proxy's sync buckets: 1ms doubling to ~16s.
fn sync_buckets() -> Vec<f64> {
    exponential_buckets(0.001, 2.0, 15).expect("valid exponential buckets")
}

/// kube-proxy's network-programming buckets, exactly: 0.25s and 0.5s, every second to 59s,
/// every 5s to 115s, every 30s to 5min. Changes take seconds to reach nodes, and the SLO is
/// stated at that resolution.
fn network_programming_buckets() -> Vec<f64> {
    [
        linear_buckets(0.25, 0.25, 2),
        linear_buckets(1.0, 1.0, 59),
        linear_buckets(60.0, 5.0, 12),
        linear_buckets(120.0, 30.0, 7),
    ]
    .into_iter()
    .flat_map(|b| b.expect("valid linear buckets"))
    .collect()
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// All of Sluice's metrics, in their own registry.
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    sync_full_duration: Histogram,
    sync_partial_duration: Histogram,
    network_programming: Histogram,
    last_synced: Gauge,
    last_queued: Gauge,
    service_changes: IntCounter,
    endpoint_changes: IntCounter,
    service_changes_pending: IntGauge,
    endpoint_changes_pending: IntGauge,
    healthz_total: IntCounterVec,
    livez_total: IntCounterVec,
    map_entries: IntGaugeVec,
    map_capacity: IntGaugeVec,
    map_pressure: GaugeVec,
    skipped: IntCounterVec,
    apply_errors: IntCounterVec,
    frontends: IntGauge,
    datapath: IntCounterVec,
    /// Mirroring a kernel counter is read-then-add; two concurrent mirrors would add twice.
    datapath_lock: Mutex<()>,
    dataplane_info: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric. `sluice_build_info` is set here from the crate version.
    pub fn new() -> Self {
        let registry = Registry::new();
        // Registration only fails for a duplicate or malformed name: a bug in this function,
        // caught by the tests, never a runtime condition.
        macro_rules! reg {
            ($metric:expr) => {{
                let m = $metric.expect("valid metric definition");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        };
        let labelled = |name: &str, help: &str| Opts::new(name, help);

        let metrics = Self {
            sync_duration: reg!(histogram(
                "kubeproxy_sync_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds (full and partial syncs)",
                sync_buckets(),
            )),
            sync_full_duration: reg!(histogram(
                "kubeproxy_sync_full_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for full resyncs (maps re-read from the kernel)",
                sync_buckets(),
            )),
            sync_partial_duration: reg!(histogram(
                "kubeproxy_sync_partial_proxy_rules_duration_seconds",
                "SyncProxyRules latency in seconds for partial resyncs (diff against the mirror)",
                sync_buckets(),
            )),
            network_programming: reg!(histogram(
                "kubeproxy_network_programming_duration_seconds",
                "In Cluster Network Programming Latency in seconds",
                network_programming_buckets(),
            )),
            last_synced: reg!(Gauge::new(
                "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                "The last time proxy rules were successfully synced",
            )),
            last_queued: reg!(Gauge::new(
                "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
                "The last time a sync of proxy rules was queued",
            )),
            service_changes: reg!(IntCounter::new(
                "kubeproxy_sync_proxy_rules_service_changes_total",
                "Cumulative proxy rules Service changes",
            )),
            endpoint_changes: reg!(IntCounter::new(
                "kubeproxy_sync_proxy_rules_endpoint_changes_total",
                "Cumulative proxy rules Endpoint changes",
            )),
            service_changes_pending: reg!(IntGauge::new(
                "kubeproxy_sync_proxy_rules_service_changes_pending",
                "Pending proxy rules Service changes",
            )),
            endpoint_changes_pending: reg!(IntGauge::new(
                "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
                "Pending proxy rules Endpoint changes",
            )),
            healthz_total: reg!(IntCounterVec::new(
                labelled(
                    "kubeproxy_proxy_healthz_total",
                    "Cumulative proxy healthz HTTP status"
                ),
                &["code"],
            )),
            livez_total: reg!(IntCounterVec::new(
                labelled(
                    "kubeproxy_proxy_livez_total",
                    "Cumulative proxy livez HTTP status"
                ),
                &["code"],
            )),
            map_entries: reg!(IntGaugeVec::new(
                labelled("sluice_map_entries", "Entries in a datapath BPF map"),
                &["map"],
            )),
            map_capacity: reg!(IntGaugeVec::new(
                labelled(
                    "sluice_map_capacity",
                    "Maximum entries of a datapath BPF map"
                ),
                &["map"],
            )),
            map_pressure: reg!(GaugeVec::new(
                labelled(
                    "sluice_map_pressure",
                    "Fill ratio of a datapath BPF map (entries / capacity); writes fail at 1"
                ),
                &["map"],
            )),
            skipped: reg!(IntCounterVec::new(
                labelled(
                    "sluice_skipped_objects_total",
                    "Services and EndpointSlices left out of the datapath, by reason"
                ),
                &["reason"],
            )),
            apply_errors: reg!(IntCounterVec::new(
                labelled(
                    "sluice_apply_errors_total",
                    "Failed map writes; the frontend's previous entry kept serving"
                ),
                &["map"],
            )),
            frontends: reg!(IntGauge::new(
                "sluice_frontends",
                "Frontends (VIP, port, protocol) programmed into the datapath",
            )),
            datapath: reg!(IntCounterVec::new(
                labelled(
                    "sluice_datapath_packets_total",
                    "Datapath packet counters, summed over CPUs"
                ),
                &["counter"],
            )),
            datapath_lock: Mutex::new(()),
            dataplane_info: reg!(IntGaugeVec::new(
                labelled(
                    "sluice_dataplane_info",
                    "The active dataplane mode (value 1)"
                ),
                &["mode"],
            )),
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new("sluice_build_info", "Sluice's version (value 1)"),
            &["version"],
        )
        .expect("valid metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics
            .registry
            .register(Box::new(build_info))
            .expect("metric names are unique");

        for reason in SKIP_REASONS {
            metrics.skipped.with_label_values(&[reason]);
        }
        for map in WRITTEN_MAPS {
            metrics.apply_errors.with_label_values(&[map]);
        }
        for code in ["200", "503"] {
            metrics.healthz_total.with_label_values(&[code]);
            metrics.livez_total.with_label_values(&[code]);
        }
        metrics
    }

    /// One sync took `duration`. `full` is the periodic reconcile that re-reads the kernel's
    /// maps; otherwise it was a partial sync against the in-memory mirror. Observed for failed
    /// syncs too, as kube-proxy does.
    pub fn observe_sync(&self, full: bool, duration: Duration) {
        let secs = duration.as_secs_f64();
        self.sync_duration.observe(secs);
        if full {
            self.sync_full_duration.observe(secs);
        } else {
            self.sync_partial_duration.observe(secs);
        }
    }

    /// A sync succeeded at `at` (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`).
    pub fn set_last_synced(&self, at: SystemTime) {
        self.last_synced.set(unix_seconds(at));
    }

    /// A sync was requested at `at` (`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`).
    pub fn set_last_queued(&self, at: SystemTime) {
        self.last_queued.set(unix_seconds(at));
    }

    /// An EndpointSlice whose `endpoints.kubernetes.io/last-change-trigger-time` is `trigger`
    /// is now programmed (at `programmed`). A trigger in the future (clock skew between this
    /// node and the control plane) counts as zero rather than vanishing from the histogram.
    pub fn observe_network_programming(&self, trigger: SystemTime, programmed: SystemTime) {
        let latency = programmed.duration_since(trigger).unwrap_or(Duration::ZERO);
        self.network_programming.observe(latency.as_secs_f64());
    }

    /// Changed Services and EndpointSlices seen (each change counts once).
    pub fn record_changes(&self, services: u64, endpoints: u64) {
        self.service_changes.inc_by(services);
        self.endpoint_changes.inc_by(endpoints);
    }

    /// Changes received but not yet synced.
    pub fn set_pending_changes(&self, services: u64, endpoints: u64) {
        self.service_changes_pending.set(clamp_i64(services));
        self.endpoint_changes_pending.set(clamp_i64(endpoints));
    }

    /// A probe answered with `code` (`/healthz` when `healthz`, else `/livez`).
    pub fn record_probe(&self, healthz: bool, code: u16) {
        let vec = if healthz {
            &self.healthz_total
        } else {
            &self.livez_total
        };
        vec.with_label_values(&[code.to_string()]).inc();
    }

    /// A map's fill: entries, capacity and their ratio. `map` is the pinned map's name
    /// (`proxy_common::map_names`).
    pub fn set_map_usage(&self, map: &str, entries: u64, capacity: u64) {
        self.map_entries
            .with_label_values(&[map])
            .set(clamp_i64(entries));
        self.map_capacity
            .with_label_values(&[map])
            .set(clamp_i64(capacity));
        self.map_pressure
            .with_label_values(&[map])
            .set(pressure(entries, capacity));
    }

    /// An object was newly left out for `reason` (a stable snake_case string, see
    /// [`SKIP_REASONS`]). Count it when it starts being skipped, not on every sync that
    /// skips it again, so the rate means "new bad objects".
    pub fn record_skipped(&self, reason: &str) {
        self.skipped.with_label_values(&[reason]).inc();
    }

    /// A write to `map` (pinned name) failed.
    pub fn record_apply_error(&self, map: &str) {
        self.apply_errors.with_label_values(&[map]).inc();
    }

    /// A failed write, as `plan::sync` reports it.
    pub fn record_store_error(&self, error: &StoreError) {
        let (StoreError::Full { map, .. } | StoreError::Kernel { map, .. }) = error;
        self.record_apply_error(map);
    }

    pub fn set_frontends(&self, count: usize) {
        self.frontends.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Mirrors the datapath's cumulative counters (per-CPU values already summed). A value
    /// lower than the last one means the map was recreated; the series then restarts from it,
    /// which Prometheus' `rate()` reads as a counter reset.
    pub fn set_datapath_counters(&self, counters: &[(&str, u64)]) {
        let _serial = self
            .datapath_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for &(name, value) in counters {
            let counter = self.datapath.with_label_values(&[name]);
            let current = counter.get();
            if value >= current {
                counter.inc_by(value - current);
            } else {
                counter.reset();
                counter.inc_by(value);
            }
        }
    }

    /// The active dataplane (`ebpf`, …); any previously set mode is cleared.
    pub fn set_dataplane_mode(&self, mode: &str) {
        self.dataplane_info.reset();
        self.dataplane_info.with_label_values(&[mode]).set(1);
    }

    /// Everything, in Prometheus' text exposition format ([`TEXT_CONTENT_TYPE`]). Encoding
    /// cannot fail for metrics defined in this module; if it ever did, the error is logged and
    /// the text is empty (`/metrics` answers 500 instead, through [`try_render`](Self::try_render)).
    pub fn render(&self) -> String {
        self.try_render().unwrap_or_else(|e| {
            tracing::error!(error = %e, "encoding metrics failed");
            String::new()
        })
    }

    pub fn try_render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        // The text encoder writes only UTF-8 (names, label values and numbers).
        Ok(String::from_utf8(out).expect("the text format is UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    /// The value of the sample line `series` (name with labels, exactly as rendered).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn render_contains_every_metric_after_use() {
        let m = Metrics::new();
        m.observe_sync(true, Duration::from_millis(3));
        m.observe_sync(false, Duration::from_millis(1));
        m.observe_network_programming(UNIX_EPOCH, UNIX_EPOCH + Duration::from_secs(2));
        m.set_last_synced(UNIX_EPOCH + Duration::from_secs(10));
        m.set_last_queued(UNIX_EPOCH + Duration::from_secs(9));
        m.record_changes(1, 2);
        m.set_pending_changes(0, 1);
        m.record_probe(true, 200);
        m.record_probe(false, 503);
        m.set_map_usage(map_names::SERVICES, 1, 10);
        m.record_skipped("invalid_ip");
        m.record_apply_error(map_names::SLOTS);
        m.set_frontends(3);
        m.set_datapath_counters(&[("packets_seen", 5)]);
        m.set_dataplane_mode("ebpf");
        let text = m.render();
        for name in [
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "kubeproxy_network_programming_duration_seconds",
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "kubeproxy_sync_proxy_rules_service_changes_total",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total",
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "kubeproxy_proxy_healthz_total",
            "kubeproxy_proxy_livez_total",
            "sluice_map_entries",
            "sluice_map_capacity",
            "sluice_map_pressure",
            "sluice_skipped_objects_total",
            "sluice_apply_errors_total",
            "sluice_frontends",
            "sluice_datapath_packets_total",
            "sluice_dataplane_info",
            "sluice_build_info",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert_eq!(
            sample(&text, "kubeproxy_sync_proxy_rules_last_timestamp_seconds"),
            Some(10.0)
        );
        assert_eq!(
            sample(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_total"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "kubeproxy_proxy_livez_total{code=\"503\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
            Some(1.0)
        );
        let build = format!(
            "sluice_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(sample(&text, &build), Some(1.0));
    }

    #[test]
    fn histogram_observations_show_in_count_and_sum() {
        let m = Metrics::new();
        m.observe_sync(false, Duration::from_millis(250));
        m.observe_sync(true, Duration::from_millis(750));
        let text = m.render();
        let all = "kubeproxy_sync_proxy_rules_duration_seconds";
        assert_eq!(sample(&text, &format!("{all}_count")), Some(2.0));
        assert_eq!(sample(&text, &format!("{all}_sum")), Some(1.0));
        let partial = "kubeproxy_sync_partial_proxy_rules_duration_seconds";
        assert_eq!(sample(&text, &format!("{partial}_count")), Some(1.0));
        assert_eq!(sample(&text, &format!("{partial}_sum")), Some(0.25));
        let full = "kubeproxy_sync_full_proxy_rules_duration_seconds";
        assert_eq!(sample(&text, &format!("{full}_count")), Some(1.0));
        // 0.25s falls in the 0.256 bucket, not in 0.128.
        assert_eq!(
            sample(&text, &format!("{partial}_bucket{{le=\"0.128\"}}")),
            Some(0.0)
        );
        assert_eq!(
            sample(&text, &format!("{partial}_bucket{{le=\"0.256\"}}")),
            Some(1.0)
        );
    }

    #[test]
    fn buckets_match_kube_proxy() {
        let sync = sync_buckets();
        assert_eq!(sync.len(), 15);
        assert_eq!(sync[0], 0.001);
        assert_eq!(sync[14], 16.384);
        let np = network_programming_buckets();
        assert_eq!(np.len(), 2 + 59 + 12 + 7);
        assert_eq!(&np[..4], &[0.25, 0.5, 1.0, 2.0]);
        assert_eq!(np[60], 59.0);
        assert_eq!(np[61], 60.0);
        assert_eq!(np[72], 115.0);
        assert_eq!(np[73], 120.0);
        assert_eq!(*np.last().unwrap(), 300.0);
        assert!(np.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn network_programming_latency_and_clock_skew() {
        let m = Metrics::new();
        let t = UNIX_EPOCH + Duration::from_secs(1_000);
        m.observe_network_programming(t, t + Duration::from_millis(1_500));
        m.observe_network_programming(t + Duration::from_secs(5), t);
        let text = m.render();
        let name = "kubeproxy_network_programming_duration_seconds";
        assert_eq!(sample(&text, &format!("{name}_count")), Some(2.0));
        assert_eq!(sample(&text, &format!("{name}_sum")), Some(1.5));
        assert_eq!(
            sample(&text, &format!("{name}_bucket{{le=\"0.25\"}}")),
            Some(1.0)
        );
    }

    #[test]
    fn map_pressure_math() {
        assert_eq!(pressure(0, 100), 0.0);
        assert_eq!(pressure(25, 100), 0.25);
        assert_eq!(pressure(100, 100), 1.0);
        assert_eq!(pressure(5, 0), 0.0);
        let m = Metrics::new();
        m.set_map_usage("SLUICE_SLOTS", 3, 4);
        m.set_map_usage("SLUICE_SLOTS", 1, 4);
        let text = m.render();
        assert_eq!(
            sample(&text, "sluice_map_entries{map=\"SLUICE_SLOTS\"}"),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, "sluice_map_capacity{map=\"SLUICE_SLOTS\"}"),
            Some(4.0)
        );
        assert_eq!(
            sample(&text, "sluice_map_pressure{map=\"SLUICE_SLOTS\"}"),
            Some(0.25)
        );
    }

    #[test]
    fn skipped_reasons_start_at_zero_and_count() {
        let m = Metrics::new();
        m.record_skipped("invalid_port");
        m.record_skipped("invalid_port");
        m.record_skipped("something_new");
        let text = m.render();
        let series = |r: &str| {
            sample(
                &text,
                &format!("sluice_skipped_objects_total{{reason=\"{r}\"}}"),
            )
        };
        assert_eq!(series("invalid_port"), Some(2.0));
        assert_eq!(series("something_new"), Some(1.0));
        for reason in SKIP_REASONS.iter().filter(|r| **r != "invalid_port") {
            assert_eq!(series(reason), Some(0.0), "{reason}");
        }
    }

    #[test]
    fn skip_reasons_cover_the_model() {
        use crate::model::SkipReason::*;
        for reason in [
            InvalidIp,
            InvalidPort,
            UnknownProtocol,
            DuplicatePort,
            FrontendConflict,
        ] {
            assert!(SKIP_REASONS.contains(&reason.as_str()), "{reason:?}");
        }
    }

    #[test]
    fn apply_errors_by_map() {
        let m = Metrics::new();
        m.record_store_error(&StoreError::Full {
            map: map_names::SLOTS,
            setting: "maps.slots",
        });
        m.record_store_error(&StoreError::Kernel {
            map: map_names::SLOTS,
            source: std::io::Error::other("boom"),
        });
        let text = m.render();
        assert_eq!(
            sample(&text, "sluice_apply_errors_total{map=\"SLUICE_SLOTS\"}"),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, "sluice_apply_errors_total{map=\"SLUICE_SVC4\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn datapath_counters_mirror_the_kernel_and_follow_resets() {
        let m = Metrics::new();
        let series = |m: &Metrics| {
            sample(
                &m.render(),
                "sluice_datapath_packets_total{counter=\"packets_seen\"}",
            )
        };
        m.set_datapath_counters(&[("packets_seen", 10)]);
        m.set_datapath_counters(&[("packets_seen", 15)]);
        assert_eq!(series(&m), Some(15.0));
        m.set_datapath_counters(&[("packets_seen", 4)]);
        assert_eq!(series(&m), Some(4.0));
        let names: Vec<_> = DATAPATH_COUNTERS.iter().map(|(i, _)| *i).collect();
        assert!(names.iter().all(|i| *i < stat::COUNT));
    }

    #[test]
    fn only_the_active_dataplane_mode_is_set() {
        let m = Metrics::new();
        m.set_dataplane_mode("ebpf");
        m.set_dataplane_mode("nftables");
        let text = m.render();
        assert_eq!(
            sample(&text, "sluice_dataplane_info{mode=\"nftables\"}"),
            Some(1.0)
        );
        assert_eq!(sample(&text, "sluice_dataplane_info{mode=\"ebpf\"}"), None);
    }

    #[test]
    fn content_type_is_the_classic_text_format() {
        assert_eq!(TEXT_CONTENT_TYPE, "text/plain; version=0.0.4");
    }
}
