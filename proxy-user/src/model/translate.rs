//! One Service plus its EndpointSlices → its frontends.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{
    core::v1::{Service, ServiceSpec},
    discovery::v1::EndpointSlice,
};

use super::{
    endpoints::{Sets, candidates, local_ready_addresses},
    node::NodeContext,
    policy::scopes,
    settings::{ServiceType, Settings, source_ranges},
    skip::{Invalid, SkipReason, Skipped},
    slice::SliceInput,
    types::{Frontend, FrontendKey, FrontendKind, HealthCheck, Protocol, ServiceName},
};

/// Services carrying this label belong to another proxy (kube-proxy skips them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Services carrying this label are headless for the proxy.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// What one Service asks of this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Translated {
    /// Sorted by key; no key appears twice.
    pub frontends: Vec<Frontend>,
    pub health_check: Option<HealthCheck>,
}

/// A Service as the model keeps it: everything about it that does not depend on its
/// endpoints or the node, parsed and validated once when it arrives. Far smaller than the
/// object, and comparing two tells whether the change matters to the datapath.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceInput {
    pub name: ServiceName,
    /// `Ok(None)`: deliberately not proxied (ExternalName, headless, another proxy's).
    parsed: Result<Option<Parsed>, Invalid>,
    /// Other objects with the same namespace and name that lost to this one (only a
    /// manifests folder can hold them); each is reported as skipped.
    pub duplicates: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Parsed {
    settings: Settings,
    addresses: Addresses,
    ports: Vec<PortSpec>,
    health_check_port: Option<u16>,
    /// `loadBalancerSourceRanges`, for the load-balancer frontends.
    source_ranges: Vec<crate::config::Cidr>,
}

impl ServiceInput {
    pub fn from_service(svc: &Service) -> Self {
        Self {
            name: ServiceName::of(&svc.metadata),
            parsed: parse(svc),
            duplicates: 0,
        }
    }
}

fn parse(svc: &Service) -> Result<Option<Parsed>, Invalid> {
    let Some(spec) = svc.spec.as_ref().filter(|_| !opted_out(svc)) else {
        return Ok(None);
    };
    if is_headless(spec) {
        return Ok(None);
    }
    let Some(settings) = Settings::parse(svc, spec)? else {
        return Ok(None);
    };
    let addresses = Addresses::parse(svc, spec, settings.service_type)?;
    let ports = parse_ports(spec, settings.serves_node_ports())?;
    let source_ranges = source_ranges(spec)?;
    let health_check_port = health_check(spec, &settings)?;
    Ok(Some(Parsed {
        settings,
        addresses,
        ports,
        health_check_port,
        source_ranges,
    }))
}

/// Translates one Service. `Ok(None)` means the Service is deliberately not proxied
/// (ExternalName, headless, or owned by another proxy).
pub fn translate_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeContext,
) -> Result<Option<Translated>, Skipped> {
    let slices: Vec<SliceInput> = slices.iter().map(|s| SliceInput::from_slice(s)).collect();
    let slices: Vec<&SliceInput> = slices.iter().collect();
    translate_input(&ServiceInput::from_service(svc), &slices, node)
}

/// [`translate_service`] for a Service and slices already converted.
pub fn translate_input(
    input: &ServiceInput,
    slices: &[&SliceInput],
    node: &NodeContext,
) -> Result<Option<Translated>, Skipped> {
    let parsed = match &input.parsed {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err((reason, detail)) => {
            return Err(Skipped {
                service: input.name.clone(),
                reason: *reason,
                detail: detail.clone(),
            });
        }
    };
    Ok(Some(translate(&input.name, parsed, slices, node)))
}

fn translate(
    service: &ServiceName,
    parsed: &Parsed,
    slices: &[&SliceInput],
    node: &NodeContext,
) -> Translated {
    let Parsed {
        settings,
        addresses,
        ports,
        health_check_port,
        source_ranges,
    } = parsed;
    let mut sets: BTreeMap<(usize, bool), Sets> = BTreeMap::new();
    let mut frontends = Vec::new();
    for listener in listeners(addresses, ports, node) {
        let port = &ports[listener.port_index];
        let ipv6 = listener.ip.is_ipv6();
        let sets = sets.entry((listener.port_index, ipv6)).or_insert_with(|| {
            let found = candidates(
                slices,
                &port.name,
                port.protocol,
                ipv6,
                node,
                settings.publish_not_ready,
            );
            Sets::new(&found, node)
        });
        for scoped in scopes(
            listener.kind,
            settings.internal_local,
            settings.external_local,
            sets,
        ) {
            frontends.push(Frontend {
                key: FrontendKey {
                    ip: listener.ip,
                    port: listener.port,
                    protocol: port.protocol,
                    scope: scoped.scope,
                },
                kind: listener.kind,
                service: service.clone(),
                port_name: port.name.clone(),
                endpoints: scoped.selection.endpoints,
                draining: scoped.selection.draining,
                on_empty: scoped.on_empty,
                affinity_timeout: settings.affinity_timeout,
                scheduler: settings.scheduler,
                masquerade_external: listener.kind.is_external() && !settings.external_local,
                source_ranges: if listener.kind == FrontendKind::LoadBalancer {
                    source_ranges.clone()
                } else {
                    Vec::new()
                },
            });
        }
    }
    frontends.sort_by_key(|f| f.key);
    // Kept for as long as the Service exists, usually with one or two frontends.
    frontends.shrink_to_fit();

    let health_check = health_check_port.map(|port| HealthCheck {
        port,
        local_endpoints: local_ready_addresses(
            slices,
            &addresses.families,
            node,
            settings.publish_not_ready,
        ),
    });
    Translated {
        frontends,
        health_check,
    }
}

fn opted_out(svc: &Service) -> bool {
    let labelled = svc.metadata.labels.as_ref().is_some_and(|labels| {
        labels.contains_key(SERVICE_PROXY_NAME_LABEL) || labels.contains_key(HEADLESS_LABEL)
    });
    let external_name = svc
        .spec
        .as_ref()
        .is_some_and(|s| s.type_.as_deref() == Some("ExternalName"));
    labelled || external_name
}

fn raw_cluster_ips(spec: &ServiceSpec) -> Vec<&str> {
    match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => spec.cluster_ip.iter().map(String::as_str).collect(),
    }
}

fn is_headless(spec: &ServiceSpec) -> bool {
    raw_cluster_ips(spec)
        .iter()
        .any(|raw| *raw == "None" || raw.is_empty())
}

/// The Service's own addresses, limited to the families it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Addresses {
    cluster: Vec<IpAddr>,
    external: Vec<IpAddr>,
    load_balancer: Vec<IpAddr>,
    /// `false` for IPv4, `true` for IPv6; sorted.
    families: Vec<bool>,
}

impl Addresses {
    fn parse(
        svc: &Service,
        spec: &ServiceSpec,
        service_type: ServiceType,
    ) -> Result<Self, Invalid> {
        let mut cluster = Vec::new();
        for raw in raw_cluster_ips(spec) {
            let ip =
                parse_ip(raw).map_err(|d| (SkipReason::InvalidIp, format!("clusterIPs: {d}")))?;
            if cluster.iter().any(|c: &IpAddr| c.is_ipv6() == ip.is_ipv6()) {
                return Err((
                    SkipReason::InvalidIp,
                    format!("clusterIPs: {ip} is a second address of its family"),
                ));
            }
            cluster.push(ip);
        }
        let declared = declared_families(spec)?;
        // Allocated cluster IPs are authoritative; ipFamilies only speaks for Services
        // written without them (manifests), and with neither, both families are served.
        let families: Vec<bool> = if !cluster.is_empty() {
            cluster.iter().map(IpAddr::is_ipv6).collect()
        } else if !declared.is_empty() {
            declared
        } else {
            vec![false, true]
        };
        let families: Vec<bool> = families
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let served = |ip: &IpAddr| families.contains(&ip.is_ipv6());

        // kube-proxy drops (with an event, not a failure) external addresses of a family the
        // Service does not have: nothing could answer them.
        let mut external = Vec::new();
        for raw in spec.external_ips.iter().flatten() {
            let ip =
                parse_ip(raw).map_err(|d| (SkipReason::InvalidIp, format!("externalIPs: {d}")))?;
            external.extend(Some(ip).filter(served));
        }
        let mut load_balancer = Vec::new();
        if service_type == ServiceType::LoadBalancer {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            for entry in ingress.into_iter().flatten() {
                // With ipMode Proxy the load balancer itself proxies to the nodes; capturing its
                // address here would bypass it.
                if entry.ip_mode.as_deref() == Some("Proxy") {
                    continue;
                }
                if let Some(raw) = &entry.ip {
                    let ip = parse_ip(raw)
                        .map_err(|d| (SkipReason::InvalidIp, format!("loadBalancer: {d}")))?;
                    load_balancer.extend(Some(ip).filter(served));
                }
            }
        }
        Ok(Self {
            cluster,
            external,
            load_balancer,
            families,
        })
    }
}

fn declared_families(spec: &ServiceSpec) -> Result<Vec<bool>, Invalid> {
    spec.ip_families
        .iter()
        .flatten()
        .map(|f| match f.as_str() {
            "IPv4" => Ok(false),
            "IPv6" => Ok(true),
            other => Err((
                SkipReason::InvalidIpFamily,
                format!("ipFamilies: {other:?} (want IPv4 or IPv6)"),
            )),
        })
        .collect()
}

fn parse_ip(raw: &str) -> Result<IpAddr, String> {
    raw.parse()
        .map_err(|_| format!("{raw:?} is not an IP address"))
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&p| p != 0)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PortSpec {
    name: String,
    protocol: Protocol,
    port: u16,
    node_port: Option<u16>,
}

fn parse_ports(spec: &ServiceSpec, serves_node_ports: bool) -> Result<Vec<PortSpec>, Invalid> {
    let mut out = Vec::new();
    let mut seen_ports = BTreeSet::new();
    let mut seen_node_ports = BTreeSet::new();
    for port in spec.ports.iter().flatten() {
        let protocol = Protocol::from_k8s(port.protocol.as_deref()).ok_or_else(|| {
            (
                SkipReason::UnknownProtocol,
                format!("port {}: protocol {:?}", port.port, port.protocol),
            )
        })?;
        let number = valid_port(port.port)
            .ok_or_else(|| (SkipReason::InvalidPort, format!("port {}", port.port)))?;
        if !seen_ports.insert((number, protocol)) {
            return Err((
                SkipReason::DuplicatePort,
                format!("port {number}/{protocol} is listed twice"),
            ));
        }
        // 0 is what an unallocated nodePort reads as; kube-proxy treats it as none.
        let node_port = match port.node_port.filter(|_| serves_node_ports) {
            None | Some(0) => None,
            Some(raw) => {
                let node_port = valid_port(raw)
                    .ok_or_else(|| (SkipReason::InvalidPort, format!("nodePort {raw}")))?;
                if !seen_node_ports.insert((node_port, protocol)) {
                    return Err((
                        SkipReason::DuplicatePort,
                        format!("nodePort {node_port}/{protocol} is listed twice"),
                    ));
                }
                Some(node_port)
            }
        };
        out.push(PortSpec {
            name: port.name.clone().unwrap_or_default(),
            protocol,
            port: number,
            node_port,
        });
    }
    out.shrink_to_fit();
    Ok(out)
}

/// kube-proxy only serves it for load balancers, the only Services the API server allocates
/// one for.
fn health_check(spec: &ServiceSpec, settings: &Settings) -> Result<Option<u16>, Invalid> {
    if settings.service_type != ServiceType::LoadBalancer || !settings.external_local {
        return Ok(None);
    }
    match spec.health_check_node_port {
        None | Some(0) => Ok(None),
        Some(raw) => valid_port(raw).map(Some).ok_or_else(|| {
            (
                SkipReason::InvalidPort,
                format!("healthCheckNodePort {raw}"),
            )
        }),
    }
}

/// An address and port the Service answers on, before scopes are decided.
struct Listener {
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    kind: FrontendKind,
    port_index: usize,
}

/// Every address, port and protocol the Service answers on, each once: when two sources
/// name the same one, the kind with precedence keeps it (see [`FrontendKind`]).
fn listeners(addresses: &Addresses, ports: &[PortSpec], node: &NodeContext) -> Vec<Listener> {
    let node_ips: Vec<IpAddr> = addresses
        .families
        .iter()
        .flat_map(|&ipv6| node.node_port_ips(ipv6))
        .collect();
    let mut out = Vec::new();
    for (port_index, port) in ports.iter().enumerate() {
        let mut add = |ips: &[IpAddr], number: u16, kind: FrontendKind| {
            out.extend(ips.iter().map(|&ip| Listener {
                ip,
                port: number,
                protocol: port.protocol,
                kind,
                port_index,
            }));
        };
        add(&addresses.cluster, port.port, FrontendKind::ClusterIp);
        add(&addresses.external, port.port, FrontendKind::ExternalIp);
        add(
            &addresses.load_balancer,
            port.port,
            FrontendKind::LoadBalancer,
        );
        if let Some(node_port) = port.node_port {
            add(&node_ips, node_port, FrontendKind::NodePort);
        }
    }
    out.sort_by_key(|l| (l.ip, l.port, l.protocol, l.kind, l.port_index));
    out.dedup_by_key(|l| (l.ip, l.port, l.protocol));
    out
}
