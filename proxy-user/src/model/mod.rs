//! The desired state: what the datapath should do, derived from Kubernetes objects by pure
//! code. Nothing here touches the kernel or the network.
//!
//! Per Service: `translate` validates it (with `settings`) and lists its frontends;
//! `endpoints` picks each Service port's endpoints (ready, else serving-and-terminating,
//! cluster-wide or node-local), `topology` narrows the cluster-wide ones by hints, and
//! `policy` turns the traffic policies into [`Scope`]s and [`EmptyAction`]s. `slim` strips
//! objects down to what all of this reads.

mod endpoints;
mod node;
mod policy;
mod settings;
mod skip;
mod slim;
mod topology;
mod translate;
mod types;

pub use node::{NodeContext, TO_BE_DELETED_TAINT, ZONE_LABEL, node_eligible};
pub use settings::{DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT, SCHEDULER_ANNOTATION};
pub use skip::{SkipReason, Skipped};
pub use slim::{slim_node, slim_service, slim_slice};
pub use translate::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL, Translated, translate_service};
pub use types::{
    EmptyAction, Endpoint, Frontend, FrontendKey, FrontendKind, HealthCheck, Protocol, Scope,
    ServiceName,
};

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every frontend Sluice should serve, grouped by the Service that asked for it so one
/// Service's change can be recomputed on its own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    /// Each Service's frontends, sorted by key.
    pub services: BTreeMap<ServiceName, Vec<Frontend>>,
    pub skipped: Vec<Skipped>,
    /// `healthCheckNodePort`s to serve, for Services in `services`.
    pub health_checks: BTreeMap<ServiceName, HealthCheck>,
}

impl DesiredState {
    /// Translates a whole set of Services and EndpointSlices. The result does not depend on
    /// the order of either list.
    pub fn build(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> Self {
        let mut by_service: BTreeMap<ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in slices {
            if let Some(owner) = slice_owner(slice) {
                by_service.entry(owner).or_default().push(slice);
            }
        }
        let mut state = DesiredState::default();
        let mut translated_all: Vec<(ServiceName, Translated)> = Vec::new();
        let mut previous: Option<ServiceName> = None;
        for svc in sorted(services) {
            let name = ServiceName::of(&svc.metadata);
            if previous.as_ref() == Some(&name) {
                state.skipped.push(Skipped {
                    service: name,
                    reason: SkipReason::DuplicateService,
                    detail: "another Service object has the same namespace and name".into(),
                });
                continue;
            }
            previous = Some(name.clone());
            let own = by_service.get(&name).map(Vec::as_slice).unwrap_or(&[]);
            match translate_service(svc, own, node) {
                Ok(None) => {}
                Ok(Some(translated)) => translated_all.push((name, translated)),
                Err(skipped) => state.skipped.push(skipped),
            }
        }
        // Conflicts are settled per frontend, and ClusterIPs are claimed first: a Service that
        // names another Service's ClusterIP as its externalIP or load-balancer address loses
        // that one frontend, never taking the other Service (kube-dns, say) down with it.
        let mut claimed: BTreeMap<(IpAddr, u16, Protocol), ServiceName> = BTreeMap::new();
        let mut kept: BTreeMap<ServiceName, Vec<Frontend>> = BTreeMap::new();
        let mut lost = std::collections::BTreeSet::new();
        for cluster_ips_round in [true, false] {
            for (name, translated) in &translated_all {
                for frontend in &translated.frontends {
                    if (frontend.kind == FrontendKind::ClusterIp) != cluster_ips_round {
                        continue;
                    }
                    let address = frontend.key.address();
                    match claimed.get(&address) {
                        Some(owner) if owner != name => {
                            // One report per address, not per scope of a split frontend.
                            if lost.insert((name.clone(), address)) {
                                state.skipped.push(Skipped {
                                    service: name.clone(),
                                    reason: SkipReason::FrontendConflict,
                                    detail: format!(
                                        "{} is already served for {owner}; the Service's other \
                                         frontends are kept",
                                        frontend.key
                                    ),
                                });
                            }
                        }
                        _ => {
                            claimed.insert(address, name.clone());
                            kept.entry(name.clone()).or_default().push(frontend.clone());
                        }
                    }
                }
            }
        }
        for (name, translated) in translated_all {
            let mut frontends = kept.remove(&name).unwrap_or_default();
            frontends.sort_by_key(|f| f.key);
            if let Some(check) = translated.health_check {
                state.health_checks.insert(name.clone(), check);
            }
            state.services.insert(name, frontends);
        }
        state
    }

    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.services.values().flatten()
    }
}

/// Services by name, so that when two claim one frontend the same one wins on every node and
/// every run. Objects sharing a name (a manifest folder can hold two) are ordered by content
/// so that the same one is kept whatever order they came in.
fn sorted(services: &[Service]) -> Vec<&Service> {
    let mut sorted: Vec<(ServiceName, &Service)> = services
        .iter()
        .map(|s| (ServiceName::of(&s.metadata), s))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = Vec::with_capacity(sorted.len());
    for group in sorted.chunk_by(|a, b| a.0 == b.0) {
        if let [(_, only)] = group {
            out.push(*only);
            continue;
        }
        let mut group: Vec<(String, &Service)> = group
            .iter()
            .map(|(_, s)| {
                // Compared slimmed, so that slimming never changes which one is kept.
                let mut slimmed = (*s).clone();
                slim_service(&mut slimmed);
                (serde_json::to_string(&slimmed).unwrap_or_default(), *s)
            })
            .collect();
        group.sort_by(|a, b| a.0.cmp(&b.0));
        out.extend(group.into_iter().map(|(_, s)| s));
    }
    out
}

/// The Service an EndpointSlice belongs to, from its `kubernetes.io/service-name` label.
pub fn slice_owner(slice: &EndpointSlice) -> Option<ServiceName> {
    let labels = slice.metadata.labels.as_ref()?;
    let name = labels.get(SERVICE_NAME_LABEL)?;
    Some(ServiceName {
        namespace: slice
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into()),
        name: name.clone(),
    })
}

#[cfg(test)]
mod tests;
