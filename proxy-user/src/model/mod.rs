//! The desired state: what the datapath should do, derived from Kubernetes objects by pure
//! code. Nothing here touches the kernel or the network.

mod translate;
mod types;

pub use translate::{NodeContext, SkipReason, Skipped, translate_service};
pub use types::{Endpoint, Frontend, FrontendKey, FrontendKind, Protocol, ServiceName};

use std::collections::BTreeMap;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

/// Label linking an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Every frontend Sluice should serve, grouped by the Service that asked for it so one
/// Service's change can be recomputed on its own.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DesiredState {
    pub services: BTreeMap<ServiceName, Vec<Frontend>>,
    pub skipped: Vec<Skipped>,
}

impl DesiredState {
    /// Translates a whole set of Services and EndpointSlices.
    pub fn build(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> Self {
        let mut by_service: BTreeMap<ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
        for slice in slices {
            if let Some(owner) = slice_owner(slice) {
                by_service.entry(owner).or_default().push(slice);
            }
        }
        let mut state = DesiredState::default();
        // Deterministic order, so that when two Services claim one frontend the same one
        // wins on every node and every run.
        let mut sorted: Vec<&Service> = services.iter().collect();
        sorted.sort_by_key(|s| ServiceName::of(&s.metadata));
        let mut claimed: BTreeMap<FrontendKey, ServiceName> = BTreeMap::new();
        for svc in sorted {
            let name = ServiceName::of(&svc.metadata);
            let own = by_service.get(&name).map(Vec::as_slice).unwrap_or(&[]);
            match translate_service(svc, own, node) {
                Ok(None) => {}
                Ok(Some(frontends)) => {
                    if let Some((key, owner)) = frontends
                        .iter()
                        .find_map(|f| claimed.get(&f.key).map(|o| (f.key, o)))
                    {
                        state.skipped.push(Skipped {
                            service: name,
                            reason: SkipReason::FrontendConflict,
                            detail: format!("{key} is already served for {owner}"),
                        });
                        continue;
                    }
                    for f in &frontends {
                        claimed.insert(f.key, name.clone());
                    }
                    state.services.insert(name, frontends);
                }
                Err(skipped) => state.skipped.push(skipped),
            }
        }
        state
    }

    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.services.values().flatten()
    }
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
