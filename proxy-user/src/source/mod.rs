//! Where Services and EndpointSlices come from. Every source publishes whole snapshots of its
//! objects on a watch channel; the sync loop only ever sees [`Inputs`].

pub mod kube;
pub mod manifests;

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

/// The objects the desired state is computed from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// This node's own Node object, when the source knows it (zone, addresses).
    pub node: Option<Node>,
}

pub type InputsRx = tokio::sync::watch::Receiver<Arc<Inputs>>;
