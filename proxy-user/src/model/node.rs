//! What the translation needs to know about the node it runs on.

use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Node;

use crate::config::NodePortAddresses;

/// The Node label naming this node's zone, matched against `hints.forZones`.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The cluster autoscaler's taint on a node it is about to remove.
pub const TO_BE_DELETED_TAINT: &str = "ToBeDeletedByClusterAutoscaler";

/// Whether load balancers should still send this node traffic, as kube-proxy's /healthz
/// reports it: not while the Node is being deleted or the autoscaler is about to remove it.
pub fn node_eligible(node: &Node) -> bool {
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TO_BE_DELETED_TAINT));
    node.metadata.deletion_timestamp.is_none() && !tainted
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeContext {
    /// This node's name as EndpointSlices spell it (`endpoints[].nodeName`). `None`: no
    /// endpoint is node-local, so `Local` traffic policies find none.
    pub node_name: Option<String>,
    /// `topology.kubernetes.io/zone`; `None` turns zone hints off.
    pub zone: Option<String>,
    /// Local addresses NodePorts may answer on, before `node_port_addresses` filters them.
    pub node_addresses: Vec<IpAddr>,
    /// The node's primary IP per family, for `nodePortAddresses: ["primary"]`.
    pub primary_addresses: Vec<IpAddr>,
    pub node_port_addresses: NodePortAddresses,
    /// kube-proxy's `localhostNodePorts`: NodePorts also answer on 127.0.0.1.
    pub localhost_node_ports: bool,
}

impl NodeContext {
    /// A node known only by name and addresses: every address serves NodePorts, no zone.
    pub fn new(node_name: Option<String>, node_addresses: Vec<IpAddr>) -> Self {
        Self {
            node_name,
            node_addresses,
            ..Self::default()
        }
    }

    /// Reads name, zone and addresses from the Node object. `hostname_override` wins over the
    /// object's name, trimmed and lower-cased like kube-proxy's, because it is what
    /// EndpointSlices will call this node if the object's name differs.
    pub fn from_node(node: &Node, hostname_override: Option<&str>) -> Self {
        let node_name = hostname_override
            .map(|h| h.trim().to_lowercase())
            .filter(|h| !h.is_empty())
            .or_else(|| node.metadata.name.clone());
        let zone = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .cloned();
        let addresses = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref())
            .map(Vec::as_slice)
            .unwrap_or_default();
        // Internal addresses first: that is the order Kubernetes picks a primary IP in.
        let mut node_addresses: Vec<IpAddr> = Vec::new();
        for wanted in ["InternalIP", "ExternalIP"] {
            for addr in addresses.iter().filter(|a| a.type_ == wanted) {
                if let Ok(ip) = addr.address.parse::<IpAddr>()
                    && !node_addresses.contains(&ip)
                {
                    node_addresses.push(ip);
                }
            }
        }
        Self {
            node_name,
            zone,
            primary_addresses: primary_per_family(&node_addresses),
            node_addresses,
            ..Self::default()
        }
    }

    /// Whether an endpoint on `endpoint_node` runs on this node.
    pub fn is_local(&self, endpoint_node: Option<&str>) -> bool {
        matches!((&self.node_name, endpoint_node), (Some(me), Some(it)) if me == it)
    }

    /// The addresses of one family that accept NodePort traffic, sorted.
    ///
    /// kube-proxy's rules: a `nodePortAddresses` list without a prefix of this family accepts
    /// every address of it; loopback addresses never do, except IPv4 ones (127.0.0.1 among
    /// them) with `localhostNodePorts` when the list admits them — IPv6 has no equivalent of
    /// `route_localnet`.
    pub fn node_port_ips(&self, ipv6: bool) -> Vec<IpAddr> {
        let cidrs: Vec<_> = match &self.node_port_addresses {
            NodePortAddresses::Cidrs(all) => all.iter().filter(|c| c.is_ipv6() == ipv6).collect(),
            _ => Vec::new(),
        };
        let admits = |ip: IpAddr| cidrs.is_empty() || cidrs.iter().any(|c| c.contains(ip));
        let base = match &self.node_port_addresses {
            NodePortAddresses::Primary if !self.primary_addresses.is_empty() => {
                self.primary_addresses.clone()
            }
            // Without a Node object, the first address of each family stands in for it.
            NodePortAddresses::Primary => primary_per_family(&self.node_addresses),
            _ => self.node_addresses.clone(),
        };
        let mut out: Vec<IpAddr> = base
            .into_iter()
            .filter(|ip| ip.is_ipv6() == ipv6)
            .filter(|ip| !ip.is_loopback() || (ip.is_ipv4() && self.localhost_node_ports))
            .filter(|&ip| admits(ip))
            .collect();
        let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let list_admits_localhost = match self.node_port_addresses {
            NodePortAddresses::Primary => false,
            _ => admits(localhost),
        };
        if !ipv6 && self.localhost_node_ports && list_admits_localhost {
            out.push(localhost);
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Kubernetes' choice of a node's primary IPs: the first address, then the first of the other
/// family if there is one.
fn primary_per_family(addresses: &[IpAddr]) -> Vec<IpAddr> {
    let Some(&first) = addresses.first() else {
        return Vec::new();
    };
    let mut out = vec![first];
    out.extend(
        addresses
            .iter()
            .find(|ip| ip.is_ipv6() != first.is_ipv6())
            .copied(),
    );
    out
}
