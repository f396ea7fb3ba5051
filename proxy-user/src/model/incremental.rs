//! The desired state kept up to date one change at a time: each Service's translation is
//! cached and recomputed only when the Service, one of its EndpointSlices or the node
//! changed, and address conflicts are settled per address rather than over all Services.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use crate::fast::{HashMap, HashSet};

use super::{
    DesiredState, SkipReason, Skipped,
    node::NodeContext,
    slice::SliceInput,
    translate::{ServiceInput, Translated, translate_input},
    types::{Frontend, FrontendKind, HealthCheck, Protocol, ServiceName},
};

type Address = (IpAddr, u16, Protocol);

/// One Service's claim on an address. Ordered as conflicts are settled: ClusterIPs before any
/// other kind, then by Service name, so the same Service wins on every node and every run.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    not_cluster_ip: bool,
    service: ServiceName,
}

#[derive(Debug, Default)]
struct Entry {
    input: Option<Arc<ServiceInput>>,
    /// `None` until translated, and for Services that are not proxied.
    translated: Option<Result<Translated, Skipped>>,
    /// Addresses this Service asks for but another Service holds, sorted.
    lost: Vec<Address>,
}

/// Services, EndpointSlices and the node, plus every Service's translation.
#[derive(Debug, Default)]
pub struct Model {
    node: NodeContext,
    services: HashMap<ServiceName, Entry>,
    slices: HashMap<ServiceName, Arc<SliceInput>>,
    /// Slices by the Service they name, whether or not that Service exists (yet). Vecs
    /// rather than sets: a Service has a few slices, and an address a few claimants, and at
    /// 100,000 Services a B-tree node per entry would cost more than everything else.
    slices_of: HashMap<ServiceName, Vec<ServiceName>>,
    /// Sorted.
    claims: HashMap<Address, Vec<Claim>>,
    dirty: HashSet<ServiceName>,
}

/// What the model holds for one Service.
#[derive(Clone, Copy, Debug)]
pub struct ServiceView<'a> {
    model: &'a Model,
    name: &'a ServiceName,
    entry: &'a Entry,
}

impl Model {
    pub fn new(node: NodeContext) -> Self {
        Self {
            node,
            ..Self::default()
        }
    }

    pub fn slice(&self, name: &ServiceName) -> Option<&Arc<SliceInput>> {
        self.slices.get(name)
    }

    pub fn service_names(&self) -> impl Iterator<Item = &ServiceName> {
        self.services
            .iter()
            .filter(|(_, e)| e.input.is_some())
            .map(|(name, _)| name)
    }

    /// Adds or replaces a Service; returns whether anything changed.
    pub fn upsert_service(&mut self, input: Arc<ServiceInput>) -> bool {
        let entry = self.services.entry(input.name.clone()).or_default();
        if entry.input.as_deref() == Some(&*input) {
            return false;
        }
        self.dirty.insert(input.name.clone());
        entry.input = Some(input);
        true
    }

    pub fn delete_service(&mut self, name: &ServiceName) -> bool {
        let Some(entry) = self.services.get_mut(name) else {
            return false;
        };
        if entry.input.take().is_none() {
            return false;
        }
        self.dirty.insert(name.clone());
        true
    }

    /// Adds or replaces the EndpointSlice `name` (its namespace/name); returns whether
    /// anything changed. A slice that moves to another Service dirties both.
    pub fn upsert_slice(&mut self, name: ServiceName, slice: Arc<SliceInput>) -> bool {
        if self.slices.get(&name).map(|s| &**s) == Some(&*slice) {
            return false;
        }
        self.unlink_slice(&name);
        if let Some(owner) = &slice.owner {
            self.slices_of
                .entry(owner.clone())
                .or_insert_with(|| Vec::with_capacity(1))
                .push(name.clone());
            self.dirty.insert(owner.clone());
        }
        self.slices.insert(name, slice);
        true
    }

    pub fn delete_slice(&mut self, name: &ServiceName) -> bool {
        let existed = self.slices.contains_key(name);
        self.unlink_slice(name);
        self.slices.remove(name);
        existed
    }

    fn unlink_slice(&mut self, name: &ServiceName) {
        let Some(owner) = self.slices.get(name).and_then(|s| s.owner.clone()) else {
            return;
        };
        if let Some(names) = self.slices_of.get_mut(&owner) {
            names.retain(|n| n != name);
            if names.is_empty() {
                self.slices_of.remove(&owner);
            }
        }
        self.dirty.insert(owner);
    }

    /// A new node context changes which endpoints are local, the NodePort addresses and the
    /// zone: every Service is recomputed.
    pub fn set_node(&mut self, node: NodeContext) -> bool {
        if node == self.node {
            return false;
        }
        self.node = node;
        self.dirty.extend(self.services.keys().cloned());
        true
    }

    /// Recomputes what changed since the last call; returns the Services whose frontends,
    /// health check or skip reports may differ, sorted.
    pub fn settle(&mut self) -> Vec<ServiceName> {
        let dirty: Vec<ServiceName> = std::mem::take(&mut self.dirty)
            .into_iter()
            .filter(|name| self.services.contains_key(name))
            .collect();
        let translations = self.translate_all(&dirty);
        let mut affected: BTreeSet<ServiceName> = BTreeSet::new();
        let mut touched: BTreeMap<Address, Option<ServiceName>> = BTreeMap::new();
        for (name, translated) in dirty.into_iter().zip(translations) {
            let entry = &self.services[&name];
            let old = claimed(entry.translated.as_ref());
            let new = claimed(translated.as_ref());
            for address in old.keys().chain(new.keys()) {
                touched
                    .entry(*address)
                    .or_insert_with(|| self.winner(address).cloned());
            }
            for (address, kind) in &old {
                if new.get(address) != Some(kind) {
                    self.unclaim(address, &claim(*kind, &name));
                }
            }
            for (address, kind) in &new {
                if old.get(address) != Some(kind) {
                    let claims = self
                        .claims
                        .entry(*address)
                        .or_insert_with(|| Vec::with_capacity(1));
                    let claim = claim(*kind, &name);
                    if let Err(at) = claims.binary_search(&claim) {
                        claims.insert(at, claim);
                    }
                }
            }
            let entry = self.services.get_mut(&name).expect("looked up above");
            entry.translated = translated;
            if entry.input.is_none() {
                self.services.remove(&name);
            }
            affected.insert(name);
        }
        // A new winner changes what its rivals keep and what their conflict reports name.
        for (address, before) in touched {
            let after = self.winner(&address).cloned();
            if before != after {
                affected.extend(before);
                affected.extend(after);
                affected.extend(
                    self.claims
                        .get(&address)
                        .into_iter()
                        .flatten()
                        .map(|c| c.service.clone()),
                );
            }
        }
        for name in &affected {
            let lost = match self.services.get(name) {
                Some(entry) => claimed(entry.translated.as_ref())
                    .into_keys()
                    .filter(|address| self.winner(address) != Some(name))
                    .collect(),
                None => continue,
            };
            self.services.get_mut(name).expect("exists").lost = lost;
        }
        affected.into_iter().collect()
    }

    /// Translations of `names` (which exist), on every core when there are many: a cold
    /// start translates every Service at once, and translations are independent.
    fn translate_all(&self, names: &[ServiceName]) -> Vec<Option<Result<Translated, Skipped>>> {
        const PER_THREAD: usize = 4096;
        let translate = |names: &[ServiceName]| -> Vec<_> {
            names.iter().map(|name| self.translate(name)).collect()
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        if threads < 2 || names.len() < 2 * PER_THREAD {
            return translate(names);
        }
        let chunk = names.len().div_ceil(threads);
        std::thread::scope(|scope| {
            let workers: Vec<_> = names
                .chunks(chunk)
                .map(|part| scope.spawn(move || translate(part)))
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
                .collect()
        })
    }

    fn translate(&self, name: &ServiceName) -> Option<Result<Translated, Skipped>> {
        let input = self.services.get(name)?.input.as_ref()?;
        let slices: Vec<&SliceInput> = self
            .slices_of
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|s| self.slices.get(s).map(|s| &**s))
            .collect();
        translate_input(input, &slices, &self.node).transpose()
    }

    fn winner(&self, address: &Address) -> Option<&ServiceName> {
        self.claims
            .get(address)
            .and_then(|c| c.first())
            .map(|c| &c.service)
    }

    fn unclaim(&mut self, address: &Address, claim: &Claim) {
        if let Some(claims) = self.claims.get_mut(address) {
            claims.retain(|c| c != claim);
            if claims.is_empty() {
                self.claims.remove(address);
            }
        }
    }

    /// The Service as of the last [`Model::settle`]; `None` when it does not exist.
    pub fn service<'a>(&'a self, name: &'a ServiceName) -> Option<ServiceView<'a>> {
        let entry = self.services.get(name)?;
        entry.input.as_ref()?;
        Some(ServiceView {
            model: self,
            name,
            entry,
        })
    }

    /// The whole desired state (O(Services); for tests and tools).
    pub fn state(&self) -> DesiredState {
        let mut names: Vec<&ServiceName> = self.services.keys().collect();
        names.sort();
        let mut state = DesiredState::default();
        let mut conflicts = Vec::new();
        for name in names {
            let Some(view) = self.service(name) else {
                continue;
            };
            for skipped in view.skipped() {
                if skipped.reason == SkipReason::FrontendConflict {
                    conflicts.push(skipped);
                } else {
                    state.skipped.push(skipped);
                }
            }
            if let Some(frontends) = view.frontends() {
                state
                    .services
                    .insert(name.clone(), frontends.cloned().collect());
            }
            if let Some(check) = view.health_check() {
                state.health_checks.insert(name.clone(), check);
            }
        }
        state.skipped.extend(conflicts);
        state
    }
}

impl<'a> ServiceView<'a> {
    fn translated(self) -> Option<&'a Translated> {
        self.entry.translated.as_ref()?.as_ref().ok()
    }

    /// The frontends the Service keeps, sorted by key; `None` when it is not served at all
    /// (skipped, or not proxied).
    pub fn frontends(self) -> Option<impl Iterator<Item = &'a Frontend> + 'a> {
        let lost = &self.entry.lost;
        Some(
            self.translated()?
                .frontends
                .iter()
                .filter(move |f| lost.binary_search(&f.key.address()).is_err()),
        )
    }

    pub fn health_check(self) -> Option<HealthCheck> {
        self.translated()?.health_check
    }

    /// Why the Service, or some of its frontends, are left out.
    pub fn skipped(self) -> Vec<Skipped> {
        let mut out = Vec::new();
        if let Some(Err(skipped)) = &self.entry.translated {
            out.push(skipped.clone());
        }
        let duplicates = self.entry.input.as_ref().map_or(0, |i| i.duplicates);
        out.extend((0..duplicates).map(|_| Skipped {
            service: self.name.clone(),
            reason: SkipReason::DuplicateService,
            detail: "another Service object has the same namespace and name".into(),
        }));
        if let Some(translated) = self.translated() {
            for address in &self.entry.lost {
                // One report per address, not per scope of a split frontend.
                let (Some(frontend), Some(owner)) = (
                    translated
                        .frontends
                        .iter()
                        .find(|f| f.key.address() == *address),
                    self.model.winner(address),
                ) else {
                    continue;
                };
                out.push(Skipped {
                    service: self.name.clone(),
                    reason: SkipReason::FrontendConflict,
                    detail: format!(
                        "{} is already served for {owner}; the Service's other frontends are \
                         kept",
                        frontend.key
                    ),
                });
            }
        }
        out
    }
}

fn claim(kind: FrontendKind, service: &ServiceName) -> Claim {
    Claim {
        not_cluster_ip: kind != FrontendKind::ClusterIp,
        service: service.clone(),
    }
}

/// The addresses a translation asks for, with the kind that asks (one per address: the
/// listeners are deduplicated by address).
fn claimed(translated: Option<&Result<Translated, Skipped>>) -> BTreeMap<Address, FrontendKind> {
    match translated {
        Some(Ok(t)) => t
            .frontends
            .iter()
            .map(|f| (f.key.address(), f.kind))
            .collect(),
        _ => BTreeMap::new(),
    }
}
