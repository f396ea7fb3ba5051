//! Desired state → desired map contents (pure).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use proxy_common::{
    Backend, FrontendMeta, ServiceKey, SourceRangeKey, algorithm, frontend_kind, scope,
    service_flags,
};

use crate::{
    config::Scheduler,
    model::{DesiredState, EmptyAction, Frontend, FrontendKey, FrontendKind, Scope},
};

/// What one frontend should look like in the maps, before ids are assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendEntry {
    /// Backends in slot order.
    pub backends: Vec<Backend>,
    pub algorithm: u8,
    /// [`service_flags`] other than `PRESENT`, which the planner adds.
    pub flags: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0: none.
    pub affinity_timeout: u32,
}

pub type DesiredMaps = BTreeMap<ServiceKey, FrontendEntry>;

/// Why a frontend of the desired state is not in the maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unserved {
    /// The datapath serves IPv4 only so far.
    Ipv6,
    /// Maglev (`mh`) is asked for, but the datapath has no Maglev tables yet: the frontend is
    /// served, choosing at random.
    Maglev,
}

/// Map contents for every frontend the IPv4 datapath can serve, plus the frontends it cannot
/// (yet) serve, so the caller can report them.
///
/// A frontend the model emits once ([`Scope::Both`]) is one entry of scope `ANY`. One emitted
/// per scope (its traffic policies give internal and external clients different endpoints)
/// becomes an entry per scope plus an `ANY` entry flagged `SPLIT_SCOPES` that sends the
/// datapath to them.
pub fn desired_maps(
    state: &DesiredState,
    default_scheduler: Scheduler,
) -> (DesiredMaps, Vec<(FrontendKey, Unserved)>) {
    let mut maps = DesiredMaps::new();
    let mut unserved = Vec::new();
    for frontends in state.services.values() {
        let layout = service_entries(frontends, default_scheduler);
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
pub fn service_entries<'a>(
    frontends: impl IntoIterator<Item = &'a Frontend>,
    default_scheduler: Scheduler,
) -> ServiceLayout {
    let mut entries = Vec::new();
    let mut unsupported = Vec::new();
    for frontend in frontends {
        let Some(key) = service_key(&frontend.key) else {
            unsupported.push((frontend.key, Unserved::Ipv6));
            continue;
        };
        let entry = frontend_entry(frontend, default_scheduler);
        if entry.algorithm == algorithm::MAGLEV {
            unsupported.push((frontend.key, Unserved::Maglev));
        }
        match frontend.key.scope {
            Scope::Both => entries.push((key, entry)),
            Scope::Internal | Scope::External => {
                let scope = if frontend.key.scope == Scope::Internal {
                    scope::INTERNAL
                } else {
                    scope::EXTERNAL
                };
                // Both scopes of a split frontend push the marker; one is kept below.
                entries.push((
                    key,
                    FrontendEntry {
                        backends: Vec::new(),
                        algorithm: entry.algorithm,
                        flags: service_flags::SPLIT_SCOPES,
                        affinity_timeout: 0,
                    },
                ));
                entries.push((key.with_scope(scope), entry));
            }
        }
    }
    entries.sort_by_key(|(k, _)| *k);
    entries.dedup_by_key(|(k, _)| *k);
    ServiceLayout {
        entries,
        unserved: unsupported,
    }
}

/// One frontend's entries in the maps beside the frontend maps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FrontendSide {
    /// Its address for `SLUICE_VIPS4`, if it is an IPv4 ClusterIP.
    pub vip: Option<u32>,
    pub source_ranges: Vec<SourceRangeEntry>,
    pub meta: Vec<(ServiceKey, FrontendMeta)>,
}

/// [`FrontendSide`] of one frontend (see [`desired_vips`], [`desired_source_ranges`],
/// [`desired_meta`] for what each part is).
pub fn frontend_side(frontend: &Frontend, node_addresses: &[IpAddr]) -> FrontendSide {
    let Some(key) = service_key(&frontend.key) else {
        return FrontendSide::default();
    };
    let vip = (frontend.kind == FrontendKind::ClusterIp).then_some(key.addr);
    let range = |net: std::net::Ipv4Addr, len: u8| {
        (
            SourceRangeKey::FRONTEND_BITS + u32::from(len),
            SourceRangeKey {
                vip: key.addr,
                port: key.port,
                proto: key.proto,
                _pad: 0,
                saddr: u32::from_ne_bytes(net.octets()),
            },
        )
    };
    let mut source_ranges = Vec::new();
    if !frontend.source_ranges.is_empty() {
        for cidr in &frontend.source_ranges {
            if let IpAddr::V4(net) = cidr.network() {
                source_ranges.push(range(net, cidr.prefix_len()));
            }
        }
        for address in node_addresses {
            if let IpAddr::V4(ip) = address {
                source_ranges.push(range(*ip, 32));
            }
        }
    }
    let meta = FrontendMeta {
        namespace: padded(&frontend.service.namespace),
        name: padded(&frontend.service.name),
        port_name: padded(&frontend.port_name),
        kind: match frontend.kind {
            FrontendKind::ClusterIp => frontend_kind::CLUSTER_IP,
            FrontendKind::NodePort => frontend_kind::NODE_PORT,
            FrontendKind::LoadBalancer => frontend_kind::LOAD_BALANCER,
            FrontendKind::ExternalIp => frontend_kind::EXTERNAL_IP,
        },
        _pad: [0; 3],
        affinity_timeout: frontend.affinity_timeout.unwrap_or(0),
    };
    let mut metas = vec![(key, meta)];
    match frontend.key.scope {
        Scope::Both => {}
        Scope::Internal => metas.push((key.with_scope(scope::INTERNAL), meta)),
        Scope::External => metas.push((key.with_scope(scope::EXTERNAL), meta)),
    }
    FrontendSide {
        vip,
        source_ranges,
        meta: metas,
    }
}

/// The ClusterIPs (IPv4, network byte order) for `SLUICE_VIPS4`: traffic to one of them on a
/// port no Service has is refused, as kube-proxy's nftables mode does. Only ClusterIPs: a
/// load-balancer or external IP may be one of the node's own addresses, whose other ports
/// (ssh, the kubelet) must keep working.
pub fn desired_vips(state: &DesiredState) -> BTreeSet<u32> {
    state
        .frontends()
        .filter_map(|f| frontend_side(f, &[]).vip)
        .collect()
}

/// `SLUICE_META4`: which Service, port and kind every frontend entry (each scope entry and the
/// split marker included) serves, for `sluice inspect`.
pub fn desired_meta(state: &DesiredState) -> BTreeMap<ServiceKey, FrontendMeta> {
    state
        .frontends()
        .flat_map(|f| frontend_side(f, &[]).meta)
        .collect()
}

/// `text` NUL-padded to `N` bytes, cut at a character boundary if it is longer (Kubernetes
/// names always fit; a cut one still identifies the object for a person).
fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
}

/// One `SLUICE_SRC_RANGES4` entry: its total prefix length and key data.
pub type SourceRangeEntry = (u32, SourceRangeKey);

/// The `SLUICE_SRC_RANGES4` entries for every IPv4 frontend with `loadBalancerSourceRanges`:
/// its ranges, and the node's own addresses, which kube-proxy always admits so that the node
/// (and hairpinning pods masqueraded to it) can reach its load balancers.
pub fn desired_source_ranges(
    state: &DesiredState,
    node_addresses: &[IpAddr],
) -> BTreeSet<SourceRangeEntry> {
    state
        .frontends()
        .flat_map(|f| frontend_side(f, node_addresses).source_ranges)
        .collect()
}

/// The `ANY`-scope map key of an IPv4 frontend.
fn service_key(key: &FrontendKey) -> Option<ServiceKey> {
    let IpAddr::V4(vip) = key.ip else {
        return None;
    };
    Some(ServiceKey::new(
        u32::from_ne_bytes(vip.octets()),
        key.port.to_be(),
        key.protocol.number(),
    ))
}

fn frontend_entry(frontend: &Frontend, default_scheduler: Scheduler) -> FrontendEntry {
    let proto = frontend.key.protocol.number();
    let backends = frontend
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
    let mut flags = match frontend.on_empty {
        EmptyAction::Reject => 0,
        EmptyAction::Drop => service_flags::DROP_WHEN_EMPTY,
    };
    if frontend.kind.is_external() {
        flags |= service_flags::ROUTE_REPLIES;
    }
    if frontend.masquerade_external {
        flags |= service_flags::MASQUERADE_EXTERNAL;
    }
    if !frontend.source_ranges.is_empty() {
        flags |= service_flags::SOURCE_RANGES;
    }
    FrontendEntry {
        backends,
        algorithm: match frontend.scheduler.unwrap_or(default_scheduler) {
            Scheduler::Random => algorithm::RANDOM,
            Scheduler::RoundRobin => algorithm::ROUND_ROBIN,
            Scheduler::SourceHash => algorithm::SOURCE_HASH,
            Scheduler::Maglev => algorithm::MAGLEV,
        },
        flags,
        affinity_timeout: frontend.affinity_timeout.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

    use super::*;
    use crate::model::NodeContext;

    /// An eTP=Local NodePort Service on a node with one of its two endpoints: internal and
    /// external traffic want different sets, so the NodePort gets an entry per scope behind a
    /// split marker, while the ClusterIP (internal traffic only) stays one entry.
    #[test]
    fn split_scopes_get_an_entry_each_behind_a_split_marker() {
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
        let (maps, unserved) = desired_maps(&state, Scheduler::Random);
        let node_port = ServiceKey::new(u32::from_ne_bytes([192, 0, 2, 1]), 30080u16.to_be(), 6);
        assert_eq!(maps[&node_port].flags, service_flags::SPLIT_SCOPES);
        assert!(maps[&node_port].backends.is_empty());
        let internal = &maps[&node_port.with_scope(scope::INTERNAL)];
        let external = &maps[&node_port.with_scope(scope::EXTERNAL)];
        assert_eq!(internal.backends.len(), 2, "cluster-wide set");
        assert_eq!(external.backends.len(), 1, "node-local set");
        assert_eq!(external.backends[0].addr, u32::from_ne_bytes([10, 0, 0, 1]));
        assert!(unserved.is_empty());
        let cluster_ip = ServiceKey::new(u32::from_ne_bytes([10, 96, 0, 10]), 80u16.to_be(), 6);
        assert_eq!(
            maps[&cluster_ip].flags, 0,
            "ClusterIP replies go through the stack"
        );
        assert_eq!(internal.flags, service_flags::ROUTE_REPLIES);
        assert_eq!(
            maps.len(),
            4,
            "ClusterIP, and NodePort as marker + two scopes"
        );
    }

    /// eTP=Local on a node with no endpoint of a Service that has some elsewhere: external
    /// clients are dropped (not refused); internal ones get the cluster-wide set.
    #[test]
    fn external_scope_without_local_endpoints_drops() {
        let svc: Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.10\n  ports: [{port: 80, nodePort: 30080}]\n",
        )
        .unwrap();
        let slice: EndpointSlice = serde_yaml::from_str(
            "metadata:\n  name: web-1\n  namespace: default\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{port: 8080}]\nendpoints:\n  - {addresses: [10.0.0.2], nodeName: there}\n",
        )
        .unwrap();
        let node = NodeContext::new(Some("here".into()), vec!["192.0.2.1".parse().unwrap()]);
        let state = DesiredState::build(&[svc], &[slice], &node);
        let (maps, _) = desired_maps(&state, Scheduler::Random);
        let node_port = ServiceKey::new(u32::from_ne_bytes([192, 0, 2, 1]), 30080u16.to_be(), 6);
        let external = &maps[&node_port.with_scope(scope::EXTERNAL)];
        assert!(external.backends.is_empty());
        assert_eq!(
            external.flags,
            service_flags::DROP_WHEN_EMPTY | service_flags::ROUTE_REPLIES
        );
        assert_eq!(
            maps[&node_port.with_scope(scope::INTERNAL)].flags,
            service_flags::ROUTE_REPLIES
        );
    }

    /// A LoadBalancer's source ranges become LPM entries for its load-balancer frontend only,
    /// with the node's addresses admitted too; its ClusterIP and NodePort stay unfiltered.
    #[test]
    fn source_ranges_filter_the_load_balancer_frontend_and_admit_the_node() {
        let svc: Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.10\n  loadBalancerSourceRanges: [203.0.113.0/24]\n  ports: [{port: 80, nodePort: 30080}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.7}]\n",
        )
        .unwrap();
        let node = NodeContext::new(Some("here".into()), vec!["192.0.2.1".parse().unwrap()]);
        let state = DesiredState::build(&[svc], &[], &node);
        let (maps, _) = desired_maps(&state, Scheduler::Random);
        let lb = ServiceKey::new(u32::from_ne_bytes([198, 51, 100, 7]), 80u16.to_be(), 6);
        assert_ne!(maps[&lb].flags & service_flags::SOURCE_RANGES, 0);
        let filtered = maps
            .values()
            .filter(|e| e.flags & service_flags::SOURCE_RANGES != 0)
            .count();
        assert_eq!(filtered, 1, "only the load-balancer frontend");
        let ranges = desired_source_ranges(&state, &node.node_addresses);
        let got: Vec<(u32, [u8; 4])> = ranges
            .iter()
            .map(|(len, k)| (*len, k.saddr.to_ne_bytes()))
            .collect();
        assert_eq!(
            got,
            vec![(64 + 24, [203, 0, 113, 0]), (64 + 32, [192, 0, 2, 1])]
        );
        assert!(
            ranges
                .iter()
                .all(|(_, k)| k.vip == lb.addr && k.port == lb.port)
        );
        assert_eq!(
            desired_vips(&state),
            BTreeSet::from([u32::from_ne_bytes([10, 96, 0, 10])]),
            "only the ClusterIP refuses unknown ports"
        );
    }

    #[test]
    fn every_entry_of_a_split_frontend_names_its_service() {
        let svc: Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: shop}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, nodePort: 30080}]\n",
        )
        .unwrap();
        let slice: EndpointSlice = serde_yaml::from_str(
            "metadata:\n  name: web-1\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints:\n  - {addresses: [10.0.0.2], nodeName: there}\n",
        )
        .unwrap();
        let node = NodeContext::new(Some("here".into()), vec!["192.0.2.1".parse().unwrap()]);
        let state = DesiredState::build(&[svc], &[slice], &node);
        let (maps, _) = desired_maps(&state, Scheduler::Random);
        let meta = desired_meta(&state);
        assert_eq!(
            meta.keys().collect::<Vec<_>>(),
            maps.keys().collect::<Vec<_>>(),
            "one metadata entry per map entry"
        );
        let node_port = ServiceKey::new(u32::from_ne_bytes([192, 0, 2, 1]), 30080u16.to_be(), 6);
        let m = &meta[&node_port.with_scope(scope::EXTERNAL)];
        assert_eq!(&m.namespace[..5], b"shop\0");
        assert_eq!(&m.name[..4], b"web\0");
        assert_eq!(&m.port_name[..5], b"http\0");
        assert_eq!(m.kind, frontend_kind::NODE_PORT);
    }

    #[test]
    fn padding_cuts_at_a_character_boundary() {
        assert_eq!(padded::<4>("ab"), *b"ab\0\0");
        assert_eq!(padded::<4>("abcdef"), *b"abcd");
        assert_eq!(
            padded::<4>("abcé"),
            *b"abc\0",
            "é is two bytes and does not fit"
        );
    }

    /// No endpoint anywhere: refused (the default), never dropped.
    #[test]
    fn no_endpoints_anywhere_refuses() {
        let svc: Service = serde_yaml::from_str(
            "metadata: {name: web, namespace: default}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{port: 80}]\n",
        )
        .unwrap();
        let state = DesiredState::build(&[svc], &[], &NodeContext::default());
        let (maps, _) = desired_maps(&state, Scheduler::Random);
        let entry = maps.values().next().unwrap();
        assert!(entry.backends.is_empty());
        assert_eq!(entry.flags, 0);
    }
}
