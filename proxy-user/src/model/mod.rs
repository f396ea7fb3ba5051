//! The desired state: what the datapath should do, derived from Kubernetes objects by pure
//! code. Nothing here touches the kernel or the network.
//!
//! Objects arrive converted: a Service as a [`ServiceInput`] (parsed and validated by
//! `translate`, with `settings`), an EndpointSlice as a [`SliceInput`] (`slice`). Per
//! Service, `translate` lists its frontends; `endpoints` picks each Service port's endpoints
//! (ready, else serving-and-terminating, cluster-wide or node-local), `topology` narrows the
//! cluster-wide ones by hints, and `policy` turns the traffic policies into [`Scope`]s and
//! [`EmptyAction`]s. `incremental` keeps every Service's translation and settles address
//! conflicts one change at a time. `slim` strips objects down to what all of this reads.

mod endpoints;
mod incremental;
mod node;
mod policy;
mod settings;
mod skip;
mod slice;
mod slim;
mod topology;
mod translate;
mod types;

pub use incremental::{Model, ServiceView};
pub use slice::{Placement, SliceEndpoint, SliceInput, SlicePort, slice_keys, slice_owner};

pub use node::{NodeContext, TO_BE_DELETED_TAINT, ZONE_LABEL, node_eligible};
pub use settings::{DEFAULT_AFFINITY_TIMEOUT, MAX_AFFINITY_TIMEOUT, SCHEDULER_ANNOTATION};
pub use skip::{SkipReason, Skipped};
pub use slim::{slim_node, slim_service, slim_slice};
pub use translate::{
    HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL, ServiceInput, Translated, translate_input,
    translate_service,
};
pub use types::{
    EmptyAction, Endpoint, Frontend, FrontendKey, FrontendKind, HealthCheck, Protocol, Scope,
    ServiceName,
};

use std::{collections::BTreeMap, sync::Arc};

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
    /// the order of either list. Built through [`Model`], as the controller does one change
    /// at a time.
    pub fn build(services: &[Service], slices: &[EndpointSlice], node: &NodeContext) -> Self {
        let mut model = Model::new(node.clone());
        for input in service_inputs(services) {
            model.upsert_service(Arc::new(input));
        }
        for (key, slice) in slice_keys(slices) {
            model.upsert_slice(key, Arc::new(SliceInput::from_slice(slice)));
        }
        model.settle();
        model.state()
    }

    pub fn frontends(&self) -> impl Iterator<Item = &Frontend> {
        self.services.values().flatten()
    }
}

/// One [`ServiceInput`] per namespace/name. Objects sharing a name (a manifest folder can
/// hold two) are ordered by content so that the same one is kept whatever order they came
/// in; the others are counted on it as duplicates.
pub fn service_inputs(services: &[Service]) -> Vec<ServiceInput> {
    let mut by_name: BTreeMap<ServiceName, Vec<&Service>> = BTreeMap::new();
    for svc in services {
        by_name
            .entry(ServiceName::of(&svc.metadata))
            .or_default()
            .push(svc);
    }
    by_name
        .into_values()
        .map(|mut group| {
            if group.len() > 1 {
                // Compared slimmed, so that slimming never changes which one is kept.
                group.sort_by_cached_key(|s| {
                    let mut slimmed = (*s).clone();
                    slim_service(&mut slimmed);
                    serde_json::to_string(&slimmed).unwrap_or_default()
                });
            }
            let mut input = ServiceInput::from_service(group[0]);
            input.duplicates = group.len() - 1;
            input
        })
        .collect()
}

#[cfg(test)]
mod tests;
