//! Desired state → desired map contents (pure).

use std::{collections::BTreeMap, net::IpAddr};

use proxy_common::{Backend, ServiceKey, algorithm};

use crate::model::{DesiredState, Frontend, FrontendKey, Scope};

/// What one frontend should look like in the maps, before ids are assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendEntry {
    /// Backends in slot order.
    pub backends: Vec<Backend>,
    pub algorithm: u8,
}

pub type DesiredMaps = BTreeMap<ServiceKey, FrontendEntry>;

/// Why a frontend of the desired state is not in the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unserved {
    /// The datapath serves IPv4 only so far.
    Ipv6,
    /// The datapath has one scope per address so far: a frontend whose external traffic
    /// should see other endpoints than its internal traffic (externalTrafficPolicy: Local)
    /// is served with its internal, cluster-wide set.
    ExternalScope,
}

/// Map contents for every frontend the IPv4 datapath can serve, plus the frontends it cannot
/// (yet) serve, so the caller can report them.
pub fn desired_maps(state: &DesiredState) -> (DesiredMaps, Vec<(FrontendKey, Unserved)>) {
    let mut maps = DesiredMaps::new();
    let mut unserved = Vec::new();
    for frontends in state.services.values() {
        let layout = service_entries(frontends);
        maps.extend(layout.entries);
        unserved.extend(layout.unserved);
    }
    (maps, unserved)
}

/// One Service's part of the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceLayout {
    pub entries: Vec<(ServiceKey, FrontendEntry)>,
    /// Its frontends the datapath cannot serve (yet), for the caller to report.
    pub unserved: Vec<(FrontendKey, Unserved)>,
}

/// The map entries of one Service's frontends. A Service's entries depend on nothing but its
/// own frontends, so one Service's change is laid out on its own.
pub fn service_entries<'a>(frontends: impl IntoIterator<Item = &'a Frontend>) -> ServiceLayout {
    let mut entries = Vec::new();
    let mut unsupported = Vec::new();
    for frontend in frontends {
        if frontend.key.scope == Scope::External {
            unsupported.push((frontend.key, Unserved::ExternalScope));
            continue;
        }
        let (IpAddr::V4(vip), proto) = (frontend.key.ip, frontend.key.protocol.number()) else {
            unsupported.push((frontend.key, Unserved::Ipv6));
            continue;
        };
        let key = ServiceKey::new(
            u32::from_ne_bytes(vip.octets()),
            frontend.key.port.to_be(),
            proto,
        );
        let mut backends: Vec<Backend> = frontend
            .endpoints
            .iter()
            .filter_map(|ep| match ep.ip {
                IpAddr::V4(ip) => Some(Backend {
                    addr: u32::from_ne_bytes(ip.octets()),
                    port: ep.port.to_be(),
                    proto,
                    flags: 0,
                }),
                IpAddr::V6(_) => None,
            })
            .collect();
        // Kept as the desired contents until the frontend changes.
        backends.shrink_to_fit();
        entries.push((
            key,
            FrontendEntry {
                backends,
                algorithm: algorithm::RANDOM,
            },
        ));
    }
    ServiceLayout {
        entries,
        unserved: unsupported,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

    use super::*;
    use crate::model::NodeContext;

    /// An eTP=Local NodePort Service on a node with one of its two endpoints: internal and
    /// external traffic want different sets, and the map serves the internal (cluster) one.
    #[test]
    fn split_scopes_serve_the_cluster_wide_set_and_report_the_external_one() {
        let svc: Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.10\n  ports: [{port: 80, nodePort: 30080}]\n",
        )
        .unwrap();
        let slice: EndpointSlice = serde_yaml::from_str(
            "metadata:\n  name: web-1\n  namespace: default\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n  - {addresses: [10.0.0.1], nodeName: here}\n  - {addresses: [10.0.0.2], nodeName: there}\n",
        )
        .unwrap();
        let node = NodeContext::new(Some("here".into()), vec!["192.0.2.1".parse().unwrap()]);
        let state = DesiredState::build(&[svc], &[slice], &node);
        let (maps, unserved) = desired_maps(&state);
        let node_port = ServiceKey::new(u32::from_ne_bytes([192, 0, 2, 1]), 30080u16.to_be(), 6);
        assert_eq!(maps[&node_port].backends.len(), 2, "cluster-wide set");
        assert_eq!(unserved.len(), 1);
        assert_eq!(unserved[0].1, Unserved::ExternalScope);
        assert_eq!(maps.len(), 2, "ClusterIP and NodePort");
    }
}
