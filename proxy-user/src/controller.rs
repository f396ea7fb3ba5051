//! The sync loop: waits for input changes, coalesces them, recomputes the Services they
//! touch and writes the frontends that changed; periodically re-reads the kernel's maps and
//! reconsiders everything to repair drift.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Node;
use tracing::{error, info, warn};

use proxy_common::{FrontendMeta, ServiceKey, map_names};

use crate::{
    config::{MapSizes, Scheduler},
    dataplane::{
        fallback::RuleDataplane,
        layout::{
            DesiredMaps, FrontendEntry, ServiceLayout, SourceRangeEntry, Unserved, frontend_side,
            service_entries,
        },
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

/// Drives the maps towards the inputs until the source goes away.
pub struct Controller {
    /// The eBPF maps; `None` when a fallback dataplane serves instead.
    maps: Option<PinnedMaps>,
    rules: Option<Box<dyn RuleDataplane>>,
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
    /// The maps beside the frontend maps: what should be in them, what was written, which
    /// keys each Service contributes, and the keys changed since the last write.
    side_desired: SideMaps,
    side: SideMaps,
    side_of: HashMap<ServiceName, OwnedSide>,
    side_dirty: SideKeys,

    /// Services using each ClusterIP (normally one).
    vip_users: HashMap<u32, u32>,
    /// The node's addresses, admitted by every `loadBalancerSourceRanges`.
    node_addresses: Vec<IpAddr>,
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
            maps: Some(maps),
            rules: None,
            side,
            side_desired: SideMaps::default(),
            side_of: HashMap::default(),
            side_dirty: SideKeys::default(),
            vip_users: HashMap::default(),
            node_addresses: node.node_addresses.clone(),
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

    /// A controller that hands each desired state to a fallback dataplane; no BPF map exists.
    pub fn with_rules(
        rules: Box<dyn RuleDataplane>,
        node: NodeContext,
        settings: SyncSettings,
        observer: Observer,
    ) -> Self {
        Self {
            maps: None,
            rules: Some(rules),
            side: SideMaps::default(),
            side_desired: SideMaps::default(),
            side_of: HashMap::default(),
            side_dirty: SideKeys::default(),
            vip_users: HashMap::default(),
            node_addresses: node.node_addresses.clone(),
            mirror: Snapshot::default(),
            model: Model::new(node.clone()),
            node,
            settings,
            observer,
            capacities: MapSizes::default(),
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
        let Some(mut maps) = self.maps.take() else {
            return self.sync_rules(full, started);
        };
        if full {
            let actual = maps.snapshot();
            if actual != self.mirror {
                warn!("map contents differ from what Sluice wrote; repairing");
            }
            self.mirror = actual;
            self.side = SideMaps::read(&maps);
        }
        // Side entries are added before the frontends that use them and removed after, so a
        // frontend never consults a half-written set.
        let dirty = std::mem::take(&mut self.side_dirty);
        let scope = (!full).then_some(&dirty);
        self.side.sync(
            &self.side_desired,
            scope,
            Phase::Upsert,
            &mut maps,
            &self.observer.metrics,
        );
        if full {
            self.reconcile_meta(&mut maps);
        }
        let report = if full {
            plan::sync(&mut maps, &mut self.mirror, &self.desired)
        } else {
            if !self.synced_once {
                // The frontends an earlier run left are compared too, so those no longer
                // wanted go now; slots it left without a master entry wait for the first
                // full sync.
                self.mirror.reindex();
                changed_keys.extend(self.mirror.services.keys().copied());
            }
            plan::sync_changed(&mut maps, &mut self.mirror, &self.desired, &changed_keys)
        };
        self.side.sync(
            &self.side_desired,
            scope,
            Phase::Remove,
            &mut maps,
            &self.observer.metrics,
        );
        if full {
            let frontends = self
                .desired
                .keys()
                .filter(|k| k.scope == proxy_common::scope::ANY)
                .copied()
                .collect();
            let backends = self
                .desired
                .values()
                .flat_map(|e| e.backends.iter().copied())
                .collect();
            maps.prune_traffic(&frontends, &backends);
        }
        self.maps = Some(maps);
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
            self.node_addresses = context.node_addresses.clone();
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
        let mut sides = Vec::new();
        // Old keys are all removed before new ones go in: a key can pass from one Service to
        // another within one settle.
        for name in &affected {
            for key in self.keys_of.remove(name).unwrap_or_default() {
                if let Some(entry) = self.desired.remove(&key) {
                    old.insert(key, entry);
                }
            }
            let view = self.model.service(name);
            let ServiceLayout { entries, unserved } = service_entries(
                view.and_then(|v| v.frontends()).into_iter().flatten(),
                self.settings.scheduler,
            );
            let side = view
                .and_then(|v| v.frontends())
                .into_iter()
                .flatten()
                .map(|f| frontend_side(f, &self.node_addresses))
                .fold(SideKeysWithValues::default(), SideKeysWithValues::add);
            sides.push((name.clone(), side));
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
        self.set_sides(sides);
        if health_changed {
            self.publish_health_checks();
        }
        changed
    }

    /// Replaces the side-map entries of the Services in `sides`: every old entry first, as
    /// for frontend keys, since one can pass from one Service to another within one settle.
    ///
    /// Frontend metadata, which no program reads, is written to the kernel at once and kept
    /// nowhere else: at 100,000 frontends a copy would cost tens of megabytes.
    fn set_sides(&mut self, sides: Vec<(ServiceName, SideKeysWithValues)>) {
        let mut old_meta: Vec<ServiceKey> = Vec::new();
        for (name, _) in &sides {
            let Some(old) = self.side_of.remove(name) else {
                continue;
            };
            for key in old.source_ranges {
                self.side_desired.source_ranges.remove(&key);
                self.side_dirty.source_ranges.insert(key);
            }
            for vip in old.vips {
                let users = self.vip_users.entry(vip).or_default();
                *users = users.saturating_sub(1);
                if *users == 0 {
                    self.vip_users.remove(&vip);
                    self.side_desired.vips.remove(&vip);
                    self.side_dirty.vips.insert(vip);
                }
            }
            old_meta.extend(old.meta.iter().copied());
        }
        for (name, new) in sides {
            let mut vips: Vec<u32> = new.vips;
            vips.sort_unstable();
            vips.dedup();
            for key in &new.source_ranges {
                self.side_desired.source_ranges.insert(*key, ());
                self.side_dirty.source_ranges.insert(*key);
            }
            for vip in &vips {
                *self.vip_users.entry(*vip).or_default() += 1;
                self.side_desired.vips.insert(*vip, ());
                self.side_dirty.vips.insert(*vip);
            }
            let mut meta_keys = Vec::with_capacity(new.meta.len());
            for (key, meta) in new.meta {
                self.write_meta(key, Some(meta));
                meta_keys.push(key);
            }
            let owned = OwnedSide {
                source_ranges: new.source_ranges.into_boxed_slice(),
                vips: vips.into_boxed_slice(),
                meta: meta_keys.into_boxed_slice(),
            };
            if !owned.is_empty() {
                self.side_of.insert(name, owned);
            }
        }
        // Keys no Service owns any more; a key passed to another Service was rewritten above.
        for key in old_meta {
            let still_owned = self.meta_owner_exists(&key);
            if !still_owned {
                self.write_meta(key, None);
            }
        }
    }

    /// Whether some Service's frontends still have metadata under `key`: true for the keys
    /// just rewritten. Checked only for the keys the settled Services gave up.
    fn meta_owner_exists(&self, key: &ServiceKey) -> bool {
        self.desired.contains_key(key)
    }

    /// Writes (`Some`) or deletes one frontend's metadata, if there are maps.
    fn write_meta(&mut self, key: ServiceKey, meta: Option<FrontendMeta>) {
        let Some(maps) = self.maps.as_mut() else {
            return;
        };
        if let Err(err) = maps.set_meta(key, meta) {
            error!(?key, error = %err, "frontend metadata not written");
            self.observer.metrics.record_store_error(&err);
        }
    }

    /// A full sync's metadata pass, repairing drift: every frontend's entry is written again
    /// from the model, and entries of frontends that are gone are deleted.
    fn reconcile_meta(&mut self, maps: &mut PinnedMaps) {
        let mut desired = BTreeSet::new();
        let names: Vec<ServiceName> = self.model.service_names().cloned().collect();
        for name in &names {
            let Some(frontends) = self.model.service(name).and_then(|v| v.frontends()) else {
                continue;
            };
            for frontend in frontends {
                for (key, meta) in frontend_side(frontend, &self.node_addresses).meta {
                    desired.insert(key);
                    if let Err(err) = maps.set_meta(key, Some(meta)) {
                        error!(?key, error = %err, "frontend metadata not written");
                        self.observer.metrics.record_store_error(&err);
                    }
                }
            }
        }
        let stale: Vec<ServiceKey> = maps
            .meta
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !desired.contains(k))
            .collect();
        for key in stale {
            let _ = maps.set_meta(key, None);
        }
    }

    /// The fallback half of a sync: the dataplane renders and applies the whole state itself
    /// (as kube-proxy's modes do, O(all)). A failed apply is logged and counted as a failed
    /// sync; the next change or full sync retries.
    fn sync_rules(&mut self, full: bool, started: Instant) -> SyncReport {
        let state = self.model.state();
        let Some(rules) = self.rules.as_mut() else {
            return SyncReport::default();
        };
        let name = rules.name();
        let applied = rules.apply(&state, full);
        self.observer
            .metrics
            .set_frontends(state.frontends().count());
        match applied {
            Ok(applied) => {
                self.observer.synced(full, started.elapsed());
                for trigger in self.programmed_pending.drain(..) {
                    self.observer.network_programmed_annotation(Some(&trigger));
                }
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
                Unserved::Maglev => format!(
                    "{key}: Maglev (mh) is not in the datapath yet; backends are chosen at random"
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

/// The maps beside the frontend maps. They need no bank protocol: an entry is written before
/// the frontends that use it and removed after the last one is gone.
#[derive(Debug, Default, PartialEq)]
struct SideMaps {
    source_ranges: BTreeMap<SourceRangeEntry, ()>,
    vips: BTreeMap<u32, ()>,
}

/// Keys of the side maps: those one Service contributes, or those changed since the last
/// write.
#[derive(Debug, Default)]
struct SideKeys {
    source_ranges: BTreeSet<SourceRangeEntry>,
    vips: BTreeSet<u32>,
}

/// The side-map keys one Service contributes, kept at their exact size: there is one of these
/// per Service.
#[derive(Debug, Default)]
struct OwnedSide {
    source_ranges: Box<[SourceRangeEntry]>,
    vips: Box<[u32]>,
    meta: Box<[ServiceKey]>,
}

impl OwnedSide {
    fn is_empty(&self) -> bool {
        self.source_ranges.is_empty() && self.vips.is_empty() && self.meta.is_empty()
    }
}

/// One Service's side-map entries.
#[derive(Debug, Default)]
struct SideKeysWithValues {
    source_ranges: Vec<SourceRangeEntry>,
    vips: Vec<u32>,
    meta: Vec<(ServiceKey, FrontendMeta)>,
}

impl SideKeysWithValues {
    fn add(mut self, side: crate::dataplane::layout::FrontendSide) -> Self {
        self.source_ranges.extend(side.source_ranges);
        self.vips.extend(side.vip);
        self.meta.extend(side.meta);
        self
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Add missing entries and update changed ones.
    Upsert,
    /// Remove entries no longer desired.
    Remove,
}

impl SideMaps {
    fn read(maps: &PinnedMaps) -> Self {
        Self {
            source_ranges: maps.source_range_entries(),
            vips: maps.vip_entries(),
        }
    }

    /// Moves `self` (the mirror of what was written) and the kernel towards `desired`, for the
    /// keys in `scope`, or for every key.
    fn sync(
        &mut self,
        desired: &Self,
        scope: Option<&SideKeys>,
        phase: Phase,
        maps: &mut PinnedMaps,
        metrics: &Metrics,
    ) {
        sync_entries(
            &mut self.source_ranges,
            &desired.source_ranges,
            scope.map(|s| &s.source_ranges),
            phase,
            metrics,
            |k, v| maps.set_source_range(k, v),
        );
        sync_entries(
            &mut self.vips,
            &desired.vips,
            scope.map(|s| &s.vips),
            phase,
            metrics,
            |k, v| maps.set_vip(k, v),
        );
    }
}

/// One phase of bringing a key → value map towards `desired` (only `scope`'s keys when
/// given), keeping `mirror` equal to what was written. A failed write is logged and counted,
/// and retried at the next full sync.
fn sync_entries<K: Ord + Copy + std::fmt::Debug, V: Copy + PartialEq>(
    mirror: &mut BTreeMap<K, V>,
    desired: &BTreeMap<K, V>,
    scope: Option<&BTreeSet<K>>,
    phase: Phase,
    metrics: &Metrics,
    mut write: impl FnMut(K, Option<V>) -> Result<(), plan::StoreError>,
) {
    let changes: Vec<(K, Option<V>)> = match (phase, scope) {
        (Phase::Upsert, Some(keys)) => keys
            .iter()
            .filter_map(|k| desired.get(k).map(|v| (*k, *v)))
            .filter(|(k, v)| mirror.get(k) != Some(v))
            .map(|(k, v)| (k, Some(v)))
            .collect(),
        (Phase::Upsert, None) => desired
            .iter()
            .filter(|(k, v)| mirror.get(k) != Some(v))
            .map(|(k, v)| (*k, Some(*v)))
            .collect(),
        (Phase::Remove, Some(keys)) => keys
            .iter()
            .filter(|k| !desired.contains_key(k) && mirror.contains_key(k))
            .map(|k| (*k, None))
            .collect(),
        (Phase::Remove, None) => mirror
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
