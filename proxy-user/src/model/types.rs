use std::{fmt, net::IpAddr, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::config::Scheduler;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Kubernetes spells protocols in upper case; an absent protocol means TCP.
    pub fn from_k8s(s: Option<&str>) -> Option<Self> {
        match s.unwrap_or("TCP") {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => proxy_common::PROTO_TCP,
            Self::Udp => proxy_common::PROTO_UDP,
            Self::Sctp => proxy_common::PROTO_SCTP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            proxy_common::PROTO_TCP => Some(Self::Tcp),
            proxy_common::PROTO_UDP => Some(Self::Udp),
            proxy_common::PROTO_SCTP => Some(Self::Sctp),
            _ => None,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// namespace/name of a Service (or of another namespaced object). Cheap to clone: the
/// model and the controller index by it in several places, and at 100,000 Services copies of
/// the strings themselves would add up to a hundred megabytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
}

impl ServiceName {
    pub fn new(namespace: impl Into<Arc<str>>, name: impl Into<Arc<str>>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(meta: &ObjectMeta) -> Self {
        Self {
            namespace: meta.namespace.as_deref().unwrap_or("default").into(),
            name: meta.name.as_deref().unwrap_or_default().into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which clients a frontend answers.
///
/// kube-proxy treats a packet differently depending on where it comes from only in one case,
/// and `Scope` exists to express exactly that case:
///
/// * **ClusterIP frontends are always [`Scope::Both`].** A ClusterIP is an in-cluster address,
///   so every packet sent to it is internal traffic: its endpoints follow
///   `internalTrafficPolicy` (only this node's endpoints with `Local`), whoever sent it.
/// * **NodePort, externalIP and LoadBalancer frontends** follow `externalTrafficPolicy` for
///   external traffic. Internal traffic to the same address is "subject to neither form of
///   traffic policy" (kube-proxy short-circuits it to the cluster-wide endpoints, as if it
///   had gone out to the load balancer and come back in): it uses every usable endpoint in
///   the cluster (topology-aware), even with `internalTrafficPolicy: Local`, which only
///   governs ClusterIP traffic. With `externalTrafficPolicy: Cluster` both sets are the same.
/// * When a frontend's internal and external endpoint sets (including what to do when empty)
///   are identical, it is emitted once with [`Scope::Both`]; when they differ, twice, as
///   [`Scope::Internal`] and [`Scope::External`], with the same address, port and protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Every client.
    Both,
    /// Traffic originating on this node: from its pods or from the host itself.
    Internal,
    /// Traffic arriving from the network (other nodes, their pods, outside clients).
    External,
}

impl Scope {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Both => "both",
            Self::Internal => "internal",
            Self::External => "external",
        }
    }
}

/// The address, port and protocol a client sends to, and which clients the entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendKey {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub scope: Scope,
}

impl FrontendKey {
    /// What a packet carries; two keys with the same address differ only in scope.
    pub fn address(&self) -> (IpAddr, u16, Protocol) {
        (self.ip, self.port, self.protocol)
    }
}

impl fmt::Display for FrontendKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{}", self.port, self.protocol)?,
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{}", self.port, self.protocol)?,
        }
        match self.scope {
            Scope::Both => Ok(()),
            scope => write!(f, " ({})", scope.as_str()),
        }
    }
}

/// Ordered by precedence: when one Service lists the same address and port twice (an
/// externalIP equal to its load balancer IP, say), the earlier kind is kept, as kube-proxy's
/// rules match ClusterIP, then externalIP, then load balancer, then NodePort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

impl FrontendKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIp => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::ExternalIp => "ExternalIP",
            Self::LoadBalancer => "LoadBalancer",
        }
    }

    /// Whether traffic policy for this kind is `externalTrafficPolicy`.
    pub const fn is_external(self) -> bool {
        !matches!(self, Self::ClusterIp)
    }
}

/// One backend a frontend may send to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

/// What happens to a new connection to a frontend without endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EmptyAction {
    /// Refuse it (ICMP unreachable / TCP reset), so the client fails fast: the Service has no
    /// usable endpoint anywhere.
    Reject,
    /// Drop it silently: the Service has endpoints, but a `Local` traffic policy forbids
    /// using them from this node. A refusal would tell the client the Service is down when it
    /// is not; a load balancer stops sending here once the health check fails, and the
    /// client's retransmission lands on a node that can serve it.
    Drop,
}

/// A frontend and everything the datapath needs to serve it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub key: FrontendKey,
    pub kind: FrontendKind,
    pub service: ServiceName,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// Backends for new connections, sorted, without duplicates.
    pub endpoints: Vec<Endpoint>,
    /// Serving-but-terminating backends passed over for new connections because ready ones
    /// exist. Connections already established to them should be left to finish rather than
    /// re-balanced. Sorted, without duplicates, disjoint from `endpoints`.
    pub draining: Vec<Endpoint>,
    /// What to do when `endpoints` is empty; always [`EmptyAction::Reject`] otherwise, so that
    /// equal frontends compare equal.
    pub on_empty: EmptyAction,
    /// `sessionAffinity: ClientIP`: seconds a client keeps going to the same backend.
    pub affinity_timeout: Option<u32>,
    /// The `sluice.dev/scheduler` annotation; `None` means the configured scheduler.
    pub scheduler: Option<Scheduler>,
    /// External clients are masqueraded to a node address, so that replies come back through
    /// this node whichever node the endpoint is on (kube-proxy does this for every external
    /// frontend with `externalTrafficPolicy: Cluster`; `Local` keeps the client's address).
    pub masquerade_external: bool,
    /// `loadBalancerSourceRanges` of a LoadBalancer frontend (empty: every client; other
    /// kinds are never filtered, as in kube-proxy).
    pub source_ranges: Vec<crate::config::Cidr>,
}

/// The health check kube-proxy serves for a `LoadBalancer` Service with
/// `externalTrafficPolicy: Local`, so that the load balancer only sends to nodes that have
/// an endpoint of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    /// `spec.healthCheckNodePort`.
    pub port: u16,
    /// Distinct ready endpoint addresses on this node, over all ports and families; the check
    /// passes when it is non-zero. Terminating endpoints do not count, so that a node whose
    /// pods are all shutting down is taken out of the load balancer.
    pub local_endpoints: usize,
}
