//! The sync loop: waits for input changes, coalesces them, computes the desired state and
//! applies what changed; periodically re-reads the kernel's maps to repair drift.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use tracing::{error, info, warn};

use proxy_common::{FrontendMeta, ServiceKey, map_names};

use crate::{
    config::{MapSizes, Scheduler},
    dataplane::{
        fallback::RuleDataplane,
        layout::{
            SourceRangeEntry, Unserved, desired_maps, desired_meta, desired_source_ranges,
            desired_vips,
        },
        maps::PinnedMaps,
        plan::{self, SyncReport},
        snapshot::Snapshot,
    },
    model::{DesiredState, NodeContext},
    observe::{
        DATAPATH_COUNTERS, Metrics, Observer,
        service_health::{HealthChecks, ServiceCheck},
    },
    source::InputsRx,
};

#[derive(Clone, Copy, Debug)]
pub struct SyncSettings {
    /// Changes arriving within this period after a sync are applied together.
    pub min_sync_period: Duration,
    /// Interval of full reconciles against the kernel's maps.
    pub sync_period: Duration,
    /// How backends are chosen where a Service does not say (`sluice.dev/scheduler`).
    pub scheduler: Scheduler,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
            scheduler: Scheduler::Random,
        }
    }
}

/// Drives the maps towards the inputs until `inputs` closes.
pub struct Controller {
    /// The eBPF maps; `None` when a fallback dataplane serves instead (`rules`).
    maps: Option<PinnedMaps>,
    /// A fallback dataplane (nftables, iptables, IPVS) given each desired state instead of
    /// the maps being written.
    rules: Option<Box<dyn RuleDataplane>>,
    mirror: Snapshot,
    node: NodeContext,
    settings: SyncSettings,
    observer: Observer,
    capacities: MapSizes,
    last_skipped: BTreeSet<String>,
    last_unserved: BTreeSet<String>,
    /// healthCheckNodePort answers, published for the listeners after each sync.
    health_checks: tokio::sync::watch::Sender<HealthChecks>,
    /// The inputs of the last sync, to count what changed since.
    last_inputs: std::sync::Arc<crate::source::Inputs>,
    /// Last-change trigger time per EndpointSlice already reported as programmed.
    programmed: BTreeMap<(String, String), String>,
    /// What Sluice wrote into the maps beside the frontend maps.
    side: SideMaps,
}

impl Controller {
    /// `node` is used as it is when the source knows no Node object (the manifests folder);
    /// otherwise the Node's own name, zone and addresses replace its node fields.
    pub fn new(
        maps: PinnedMaps,
        node: NodeContext,
        settings: SyncSettings,
        observer: Observer,
        capacities: MapSizes,
    ) -> Self {
        // Adopt whatever an earlier run left in the maps: the first sync diffs against it
        // instead of flushing, so live flows keep their backends.
        let mirror = maps.snapshot();
        let side = SideMaps::read(&maps);
        Self {
            side,
            maps: Some(maps),
            rules: None,
            mirror,
            node,
            settings,
            observer,
            capacities,
            last_skipped: BTreeSet::new(),
            last_unserved: BTreeSet::new(),
            last_inputs: Default::default(),
            health_checks: tokio::sync::watch::channel(HealthChecks::default()).0,
            programmed: BTreeMap::new(),
        }
    }

    /// A controller that hands each desired state to a fallback dataplane; no BPF map exists.
    pub fn with_rules(
        rules: Box<dyn RuleDataplane>,
        node: NodeContext,
        settings: SyncSettings,
        observer: Observer,
    ) -> Self {
        Self {
            side: SideMaps::default(),
            maps: None,
            rules: Some(rules),
            mirror: Snapshot::default(),
            node,
            settings,
            observer,
            capacities: MapSizes::default(),
            last_skipped: BTreeSet::new(),
            last_unserved: BTreeSet::new(),
            last_inputs: Default::default(),
            health_checks: tokio::sync::watch::channel(HealthChecks::default()).0,
            programmed: BTreeMap::new(),
        }
    }

    /// The healthCheckNodePort answers, updated after each sync.
    pub fn health_checks(&self) -> tokio::sync::watch::Receiver<HealthChecks> {
        self.health_checks.subscribe()
    }

    fn node_context(&self, node: Option<&k8s_openapi::api::core::v1::Node>) -> NodeContext {
        match node {
            Some(node) => NodeContext {
                node_port_addresses: self.node.node_port_addresses.clone(),
                localhost_node_ports: self.node.localhost_node_ports,
                ..NodeContext::from_node(node, self.node.node_name.as_deref())
            },
            None => self.node.clone(),
        }
    }

    pub async fn run(mut self, mut inputs: InputsRx) {
        // Nothing is written before the source has delivered its first complete view:
        // syncing an empty view would wipe the datapath on every restart.
        if inputs.changed().await.is_err() {
            return;
        }
        self.observer.queued();
        let mut last_sync = Instant::now() - self.settings.min_sync_period;
        let mut next_full = Instant::now() + self.settings.sync_period;
        let mut pending = true;
        loop {
            if pending {
                let ready_at = last_sync + self.settings.min_sync_period;
                tokio::time::sleep_until(ready_at.into()).await;
                self.sync_once(&mut inputs, false);
                last_sync = Instant::now();
                pending = false;
            }
            tokio::select! {
                changed = inputs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.observer.queued();
                    let (services, slices) = inputs.borrow().changes_since(&self.last_inputs);
                    self.observer.metrics.set_pending_changes(services, slices);
                    pending = true;
                }
                _ = tokio::time::sleep_until(next_full.into()) => {
                    self.sync_once(&mut inputs, true);
                    last_sync = Instant::now();
                    next_full = Instant::now() + self.settings.sync_period;
                }
            }
        }
    }

    /// One sync. `full` re-reads the kernel's maps first, so entries changed or deleted behind
    /// Sluice's back are put right.
    pub fn sync_once(&mut self, inputs: &mut InputsRx, full: bool) -> SyncReport {
        let started = Instant::now();
        // Marks the value seen: a change that arrived while waiting out minSyncPeriod is applied
        // now and must not wake the loop for a second, identical sync.
        let snapshot = inputs.borrow_and_update().clone();
        let (services_changed, slices_changed) = snapshot.changes_since(&self.last_inputs);
        self.observer
            .metrics
            .record_changes(services_changed, slices_changed);
        self.observer.metrics.set_pending_changes(0, 0);
        self.last_inputs = snapshot.clone();
        if let Some(node) = &snapshot.node {
            self.observer
                .health
                .set_node_eligible(crate::model::node_eligible(node));
        }
        let node = self.node_context(snapshot.node.as_ref());
        let state = DesiredState::build(&snapshot.services, &snapshot.slices, &node);
        self.report_skipped(&state);
        self.publish_health_checks(&state);
        let Some(mut maps) = self.maps.take() else {
            return self.sync_rules(&state, &snapshot.slices, full, started);
        };
        let report = self.sync_maps(&mut maps, &state, &node, &snapshot.slices, full, started);
        self.maps = Some(maps);
        report
    }

    /// The eBPF half of a sync: writes the maps.
    fn sync_maps(
        &mut self,
        maps: &mut PinnedMaps,
        state: &DesiredState,
        node: &NodeContext,
        slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
        full: bool,
        started: Instant,
    ) -> SyncReport {
        let (desired, unserved) = desired_maps(state, self.settings.scheduler);
        self.report_unserved(&unserved);
        if full {
            let actual = maps.snapshot();
            if actual != self.mirror {
                warn!("map contents differ from what Sluice wrote; repairing");
            }
            self.mirror = actual;
        }
        let side = SideMaps::desired(state, node);
        if full {
            self.side = SideMaps::read(maps);
        }
        self.side
            .sync(&side, Phase::Upsert, maps, &self.observer.metrics);
        let report = plan::sync(maps, &mut self.mirror, &desired);
        self.side
            .sync(&side, Phase::Remove, maps, &self.observer.metrics);
        if full {
            let frontends = desired
                .keys()
                .filter(|k| k.scope == proxy_common::scope::ANY)
                .copied()
                .collect();
            let backends = desired
                .values()
                .flat_map(|e| e.backends.iter().copied())
                .collect();
            maps.prune_traffic(&frontends, &backends);
        }
        for (key, err) in &report.failed {
            error!(frontend = ?key, error = %err, "frontend not updated; its previous entry keeps serving");
            self.observer.metrics.record_store_error(err);
        }
        self.report_metrics(desired.len(), &report, full, started.elapsed());
        if report.failed.is_empty() {
            self.report_programmed(slices);
        }
        let level_info = report.writes + report.deletes > 0;
        if level_info {
            info!(
                frontends = desired.len(),
                writes = report.writes,
                deletes = report.deletes,
                failed = report.failed.len(),
                full,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "maps synced"
            );
        }
        report
    }

    /// The fallback half of a sync: the dataplane renders and applies the state itself. A
    /// failed apply is logged and counted as a failed sync; the next change or full sync
    /// retries (the dataplane then rewrites everything).
    fn sync_rules(
        &mut self,
        state: &DesiredState,
        slices: &[k8s_openapi::api::discovery::v1::EndpointSlice],
        full: bool,
        started: Instant,
    ) -> SyncReport {
        let Some(rules) = self.rules.as_mut() else {
            return SyncReport::default();
        };
        let name = rules.name();
        let applied = rules.apply(state, full);
        self.observer
            .metrics
            .set_frontends(state.frontends().count());
        match applied {
            Ok(applied) => {
                self.observer.synced(full, started.elapsed());
                self.report_programmed(slices);
                if applied.changed > 0 {
                    info!(
                        dataplane = name,
                        frontends = applied.frontends,
                        chains_changed = applied.changed,
                        full = applied.full,
                        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                        "rules synced"
                    );
                }
            }
            Err(e) => {
                error!(dataplane = name, error = %format!("{e:#}"), "applying the rules failed; retrying at the next sync");
                self.observer.sync_failed(full, started.elapsed());
            }
        }
        SyncReport::default()
    }

    fn report_skipped(&mut self, state: &DesiredState) {
        let now: BTreeSet<String> = state.skipped.iter().map(ToString::to_string).collect();
        for skipped in &state.skipped {
            let line = skipped.to_string();
            if !self.last_skipped.contains(&line) {
                error!("{line}; other Services are unaffected");
                self.observer
                    .metrics
                    .record_skipped(skipped.reason.as_str());
            }
        }
        self.last_skipped = now;
    }

    fn publish_health_checks(&self, state: &DesiredState) {
        let checks: BTreeMap<u16, ServiceCheck> = state
            .health_checks
            .iter()
            .map(|(service, check)| {
                (
                    check.port,
                    ServiceCheck {
                        namespace: service.namespace.clone(),
                        name: service.name.clone(),
                        local_endpoints: check.local_endpoints,
                    },
                )
            })
            .collect();
        self.health_checks.send_if_modified(|current| {
            let changed = **current != checks;
            if changed {
                *current = std::sync::Arc::new(checks);
            }
            changed
        });
    }

    /// Warns once per frontend the datapath cannot serve as the Service asks, so an operator
    /// relying on externalTrafficPolicy: Local or IPv6 hears of it at the default log level.
    fn report_unserved(&mut self, unserved: &[(crate::model::FrontendKey, Unserved)]) {
        let now: BTreeSet<String> = unserved
            .iter()
            .map(|(key, why)| match why {
                Unserved::Ipv6 => {
                    format!("{key}: IPv6 frontends are not served by this datapath yet")
                }
                Unserved::Maglev => format!(
                    "{key}: Maglev (mh) is not in the datapath yet; backends are chosen at random"
                ),
            })
            .collect();
        for line in now.difference(&self.last_unserved) {
            warn!("{line}");
        }
        self.last_unserved = now;
    }

    /// Observes network programming latency once per EndpointSlice change: a slice whose
    /// trigger time is unchanged since the last sync was already counted.
    fn report_programmed(&mut self, slices: &[k8s_openapi::api::discovery::v1::EndpointSlice]) {
        let mut now = BTreeMap::new();
        for slice in slices {
            let Some(trigger) = slice
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::observe::LAST_CHANGE_TRIGGER_TIME))
            else {
                continue;
            };
            let key = (
                slice.metadata.namespace.clone().unwrap_or_default(),
                slice.metadata.name.clone().unwrap_or_default(),
            );
            if self.programmed.get(&key) != Some(trigger) {
                self.observer.network_programmed_annotation(Some(trigger));
            }
            now.insert(key, trigger.clone());
        }
        self.programmed = now;
    }

    fn report_metrics(&self, frontends: usize, report: &SyncReport, full: bool, took: Duration) {
        let metrics = &self.observer.metrics;
        metrics.set_frontends(frontends);
        let usage = [
            (
                map_names::SERVICES,
                self.mirror.services.len(),
                self.capacities.services,
            ),
            (
                map_names::SLOTS,
                self.mirror.slots.len(),
                self.capacities.slots,
            ),
            (
                map_names::BACKENDS,
                self.mirror.backends.len(),
                self.capacities.backends,
            ),
        ];
        for (map, entries, capacity) in usage {
            metrics.set_map_usage(map, entries as u64, u64::from(capacity));
        }
        if report.failed.is_empty() {
            self.observer.synced(full, took);
        } else {
            self.observer.sync_failed(full, took);
        }
    }
}

/// The maps beside the frontend maps. They need no bank protocol: an entry is written before
/// the frontends that use it and removed after the last one is gone, so a frontend never
/// consults a half-written set.
#[derive(Debug, Default, PartialEq)]
struct SideMaps {
    source_ranges: BTreeMap<SourceRangeEntry, ()>,
    vips: BTreeMap<u32, ()>,
    meta: BTreeMap<ServiceKey, FrontendMeta>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Add missing entries and update changed ones.
    Upsert,
    /// Remove entries no longer desired.
    Remove,
}

impl SideMaps {
    fn desired(state: &DesiredState, node: &NodeContext) -> Self {
        Self {
            source_ranges: desired_source_ranges(state, &node.node_addresses)
                .into_iter()
                .map(|k| (k, ()))
                .collect(),
            vips: desired_vips(state).into_iter().map(|k| (k, ())).collect(),
            meta: desired_meta(state),
        }
    }

    fn read(maps: &PinnedMaps) -> Self {
        Self {
            source_ranges: maps.source_range_entries(),
            vips: maps.vip_entries(),
            meta: maps.meta_entries(),
        }
    }

    /// Moves `self` (the mirror of what was written) and the kernel towards `desired`.
    fn sync(&mut self, desired: &Self, phase: Phase, maps: &mut PinnedMaps, metrics: &Metrics) {
        sync_entries(
            &mut self.source_ranges,
            &desired.source_ranges,
            phase,
            metrics,
            |k, v| maps.set_source_range(k, v),
        );
        sync_entries(&mut self.vips, &desired.vips, phase, metrics, |k, v| {
            maps.set_vip(k, v)
        });
        sync_entries(&mut self.meta, &desired.meta, phase, metrics, |k, v| {
            maps.set_meta(k, v)
        });
    }
}

/// One phase of bringing a key → value map towards `desired`, keeping `mirror` equal to what
/// was written. A failed write is logged and counted, and retried at the next sync.
fn sync_entries<K: Ord + Copy + std::fmt::Debug, V: Copy + PartialEq>(
    mirror: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    phase: Phase,
    metrics: &Metrics,
    mut write: impl FnMut(K, Option<V>) -> Result<(), plan::StoreError>,
) {
    let changes: Vec<(K, Option<V>)> = match phase {
        Phase::Upsert => desired
            .iter()
            .filter(|(k, v)| mirror.get(k) != Some(v))
            .map(|(k, v)| (*k, Some(*v)))
            .collect(),
        Phase::Remove => mirror
            .keys()
            .filter(|k| !desired.contains_key(k))
            .map(|k| (*k, None))
            .collect(),
    };
    for (key, value) in changes {
        match write(key, value) {
            Ok(()) => match value {
                Some(v) => {
                    mirror.insert(key, v);
                }
                None => {
                    mirror.remove(&key);
                }
            },
            Err(err) => {
                error!(?key, error = %err, "map entry not written");
                metrics.record_store_error(&err);
            }
        }
    }
}

/// Mirrors the datapath's per-CPU counters into the metrics every `interval`, so a scrape
/// sees current traffic rather than the traffic at the last sync.
pub async fn mirror_datapath_counters(
    maps: PinnedMaps,
    metrics: std::sync::Arc<Metrics>,
    interval: Duration,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let counters: Vec<(&str, u64)> = DATAPATH_COUNTERS
            .iter()
            .map(|(index, name)| (*name, maps.counter(*index)))
            .collect();
        metrics.set_datapath_counters(&counters);
    }
}
