//! The sync loop: waits for input changes, coalesces them, recomputes the Services they
//! touch and writes the frontends that changed; periodically re-reads the kernel's maps and
//! reconsiders everything to repair drift.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use tracing::{error, info, warn};

use proxy_common::{ServiceKey, map_names};

use crate::{
    config::MapSizes,
    dataplane::{
        layout::{DesiredMaps, FrontendEntry, ServiceLayout, Unserved, service_entries},
        maps::PinnedMaps,
        plan::{self, SyncReport},
        snapshot::Snapshot,
    },
    fast::HashMap,
    model::{FrontendKey, HealthCheck, Model, NodeContext, ServiceName, Skipped},
    observe::{
        DATAPATH_COUNTERS, Metrics, Observer,
        service_health::{HealthChecks, ServiceCheck},
    },
    source::{Changes, FeedRx},
};

#[derive(Clone, Copy, Debug)]
pub struct SyncSettings {
    /// Changes arriving within this period after a sync are applied together.
    pub min_sync_period: Duration,
    /// Interval of full reconciles against the kernel's maps.
    pub sync_period: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
        }
    }
}

/// Drives the maps towards the inputs until the source goes away.
pub struct Controller {
    maps: PinnedMaps,
    mirror: Snapshot,
    /// The configured node; a Node object from the source refines it.
    node: NodeContext,
    settings: SyncSettings,
    observer: Observer,
    capacities: MapSizes,
    model: Model,
    /// Map contents of every frontend, and which keys each Service's frontends own.
    desired: DesiredMaps,
    keys_of: HashMap<ServiceName, Vec<ServiceKey>>,
    /// What each Service was last reported for, so each report is made once.
    skipped_of: HashMap<ServiceName, Vec<String>>,
    unserved_of: HashMap<ServiceName, Vec<String>>,
    health_of: BTreeMap<ServiceName, HealthCheck>,
    /// healthCheckNodePort answers, published for the listeners after each sync.
    health_checks: tokio::sync::watch::Sender<HealthChecks>,
    /// Trigger times of EndpointSlice changes applied but not yet programmed.
    programmed_pending: Vec<Box<str>>,
    /// The first sync indexes the adopted maps and also compares the frontends an earlier run
    /// left in them.
    synced_once: bool,
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
        Self {
            maps,
            mirror,
            model: Model::new(node.clone()),
            node,
            settings,
            observer,
            capacities,
            desired: DesiredMaps::new(),
            keys_of: HashMap::default(),
            skipped_of: HashMap::default(),
            unserved_of: HashMap::default(),
            health_of: BTreeMap::new(),
            health_checks: tokio::sync::watch::channel(HealthChecks::default()).0,
            programmed_pending: Vec::new(),
            synced_once: false,
        }
    }

    /// The healthCheckNodePort answers, updated after each sync.
    pub fn health_checks(&self) -> tokio::sync::watch::Receiver<HealthChecks> {
        self.health_checks.subscribe()
    }

    fn node_context(&self, node: Option<&Node>) -> NodeContext {
        match node {
            Some(node) => NodeContext {
                node_port_addresses: self.node.node_port_addresses.clone(),
                localhost_node_ports: self.node.localhost_node_ports,
                ..NodeContext::from_node(node, self.node.node_name.as_deref())
            },
            None => self.node.clone(),
        }
    }

    pub async fn run(mut self, mut inputs: FeedRx) {
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
                    let (services, slices) = inputs.feed().pending();
                    self.observer
                        .metrics
                        .set_pending_changes(services as u64, slices as u64);
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

    /// One sync: applies the changes the source recorded since the last one and writes the
    /// frontends they changed. `full` re-reads the kernel's maps first and reconsiders every
    /// frontend and entry, so entries changed or deleted behind Sluice's back are put right.
    pub fn sync_once(&mut self, inputs: &mut FeedRx, full: bool) -> SyncReport {
        let started = Instant::now();
        let (services_changed, slices_changed) = self.apply(inputs.take());
        self.observer
            .metrics
            .record_changes(services_changed, slices_changed);
        self.observer.metrics.set_pending_changes(0, 0);
        let mut changed_keys = self.update_desired();
        if full {
            let actual = self.maps.snapshot();
            if actual != self.mirror {
                warn!("map contents differ from what Sluice wrote; repairing");
            }
            self.mirror = actual;
        }
        let report = if full {
            plan::sync(&mut self.maps, &mut self.mirror, &self.desired)
        } else {
            if !self.synced_once {
                // The frontends an earlier run left are compared too, so those no longer
                // wanted go now; slots it left without a master entry wait for the first
                // full sync.
                self.mirror.reindex();
                changed_keys.extend(self.mirror.services.keys().copied());
            }
            plan::sync_changed(
                &mut self.maps,
                &mut self.mirror,
                &self.desired,
                &changed_keys,
            )
        };
        self.synced_once = true;
        for (key, err) in &report.failed {
            error!(frontend = ?key, error = %err, "frontend not updated; its previous entry keeps serving");
            self.observer.metrics.record_store_error(err);
        }
        self.report_metrics(self.desired.len(), &report, full, started.elapsed());
        if report.failed.is_empty() {
            for trigger in self.programmed_pending.drain(..) {
                self.observer.network_programmed_annotation(Some(&trigger));
            }
        }
        let level_info = report.writes + report.deletes > 0;
        if level_info {
            info!(
                frontends = self.desired.len(),
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

    /// Applies a source's changes to the model; returns how many Services and EndpointSlices
    /// really changed (added, changed or removed), for kube-proxy's change counters.
    fn apply(&mut self, changes: Changes) -> (u64, u64) {
        let Changes {
            services,
            slices,
            node,
        } = changes;
        let mut services_changed = 0;
        for (name, service) in services {
            let changed = match service {
                Some(service) => self.model.upsert_service(service),
                None => self.model.delete_service(&name),
            };
            services_changed += u64::from(changed);
        }
        let mut slices_changed = 0;
        for (name, slice) in slices {
            let changed = match slice {
                Some(slice) => {
                    let old_trigger = self.model.slice(&name).and_then(|s| s.trigger_time.clone());
                    // Network programming latency is observed once per slice change.
                    if let Some(trigger) = &slice.trigger_time
                        && old_trigger.as_ref() != Some(trigger)
                    {
                        self.programmed_pending.push(trigger.clone());
                    }
                    self.model.upsert_slice(name, slice)
                }
                None => self.model.delete_slice(&name),
            };
            slices_changed += u64::from(changed);
        }
        if let Some(node) = node {
            if let Some(node) = &node {
                self.observer
                    .health
                    .set_node_eligible(crate::model::node_eligible(node));
            }
            let context = self.node_context(node.as_deref());
            self.model.set_node(context);
        }
        (services_changed, slices_changed)
    }

    /// Brings the desired map contents up to date with the model; returns the keys whose
    /// contents changed (added, changed or removed).
    fn update_desired(&mut self) -> BTreeSet<ServiceKey> {
        let affected = self.model.settle();
        let mut old: HashMap<ServiceKey, FrontendEntry> = HashMap::default();
        let mut new: Vec<(ServiceKey, FrontendEntry)> = Vec::new();
        let mut health_changed = false;
        // Old keys are all removed before new ones go in: a key can pass from one Service to
        // another within one settle.
        for name in &affected {
            for key in self.keys_of.remove(name).unwrap_or_default() {
                if let Some(entry) = self.desired.remove(&key) {
                    old.insert(key, entry);
                }
            }
            let view = self.model.service(name);
            let ServiceLayout { entries, unserved } =
                service_entries(view.and_then(|v| v.frontends()).into_iter().flatten());
            let skipped = view.map(|v| v.skipped()).unwrap_or_default();
            let check = view.and_then(|v| v.health_check());
            if !entries.is_empty() {
                self.keys_of
                    .insert(name.clone(), entries.iter().map(|(k, _)| *k).collect());
            }
            new.extend(entries);
            self.report_unserved(name, &unserved);
            self.report_skipped(name, skipped);
            let previous = match check {
                Some(check) => self.health_of.insert(name.clone(), check),
                None => self.health_of.remove(name),
            };
            health_changed |= previous != check;
        }
        let mut changed = BTreeSet::new();
        for (key, entry) in new {
            if old.remove(&key).as_ref() != Some(&entry) {
                changed.insert(key);
            }
            self.desired.insert(key, entry);
        }
        changed.extend(old.into_keys());
        if health_changed {
            self.publish_health_checks();
        }
        changed
    }

    fn report_skipped(&mut self, name: &ServiceName, skipped: Vec<Skipped>) {
        let before = self.skipped_of.remove(name).unwrap_or_default();
        let now: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        for (skipped, line) in skipped.iter().zip(&now) {
            if !before.contains(line) {
                error!("{line}; other Services are unaffected");
                self.observer
                    .metrics
                    .record_skipped(skipped.reason.as_str());
            }
        }
        if !now.is_empty() {
            self.skipped_of.insert(name.clone(), now);
        }
    }

    fn publish_health_checks(&self) {
        let checks: BTreeMap<u16, ServiceCheck> = self
            .health_of
            .iter()
            .map(|(service, check)| {
                (
                    check.port,
                    ServiceCheck {
                        namespace: service.namespace.to_string(),
                        name: service.name.to_string(),
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
    fn report_unserved(&mut self, name: &ServiceName, unserved: &[(FrontendKey, Unserved)]) {
        let before = self.unserved_of.remove(name).unwrap_or_default();
        let now: Vec<String> = unserved
            .iter()
            .map(|(key, why)| match why {
                Unserved::Ipv6 => {
                    format!("{key}: IPv6 frontends are not served by this datapath yet")
                }
                Unserved::ExternalScope => format!(
                    "{key}: externalTrafficPolicy: Local is not honoured yet; external clients \
                     get the cluster-wide endpoints"
                ),
            })
            .collect();
        for line in now.iter().filter(|l| !before.contains(l)) {
            warn!("{line}");
        }
        if !now.is_empty() {
            self.unserved_of.insert(name.clone(), now);
        }
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
