//! One Service plus its EndpointSlices → its frontends.

use std::{collections::BTreeSet, fmt, net::IpAddr};

use k8s_openapi::api::{
    core::v1::{Service, ServicePort},
    discovery::v1::EndpointSlice,
};

use super::types::{Endpoint, Frontend, FrontendKey, FrontendKind, Protocol, ServiceName};

/// Services carrying this label belong to another proxy (kube-proxy skips them too).
pub const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Services carrying this label are headless for the proxy.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";

/// What the translation needs to know about the node it runs on.
#[derive(Clone, Debug, Default)]
pub struct NodeContext {
    pub node_name: Option<String>,
    /// Addresses NodePorts answer on.
    pub node_addresses: Vec<IpAddr>,
}

/// Why a Service was left out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    InvalidIp,
    InvalidPort,
    UnknownProtocol,
    DuplicatePort,
    FrontendConflict,
}

impl SkipReason {
    /// Stable label value for metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidIp => "invalid_ip",
            Self::InvalidPort => "invalid_port",
            Self::UnknownProtocol => "unknown_protocol",
            Self::DuplicatePort => "duplicate_port",
            Self::FrontendConflict => "frontend_conflict",
        }
    }
}

/// A Service that could not be translated, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub service: ServiceName,
    pub reason: SkipReason,
    pub detail: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {} skipped ({}): {}",
            self.service,
            self.reason.as_str(),
            self.detail
        )
    }
}

/// Translates one Service. `Ok(None)` means the Service is deliberately not proxied
/// (ExternalName, headless, or owned by another proxy).
pub fn translate_service(
    svc: &Service,
    slices: &[&EndpointSlice],
    node: &NodeContext,
) -> Result<Option<Vec<Frontend>>, Skipped> {
    let name = ServiceName::of(&svc.metadata);
    let skip = |reason, detail: String| Skipped {
        service: name.clone(),
        reason,
        detail,
    };
    if let Some(labels) = &svc.metadata.labels
        && (labels.contains_key(SERVICE_PROXY_NAME_LABEL) || labels.contains_key(HEADLESS_LABEL))
    {
        return Ok(None);
    }
    let Some(spec) = &svc.spec else {
        return Ok(None);
    };
    let svc_type = spec.type_.as_deref().unwrap_or("ClusterIP");
    if svc_type == "ExternalName" {
        return Ok(None);
    }

    let mut cluster_ips = Vec::new();
    let raw_ips: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    for raw in raw_ips {
        if raw == "None" || raw.is_empty() {
            return Ok(None);
        }
        cluster_ips.push(parse_ip(raw).map_err(|d| skip(SkipReason::InvalidIp, d))?);
    }
    let external_ips = spec
        .external_ips
        .iter()
        .flatten()
        .map(|raw| parse_ip(raw))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|d| skip(SkipReason::InvalidIp, format!("externalIPs: {d}")))?;
    let mut lb_ips = Vec::new();
    if svc_type == "LoadBalancer" {
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
                lb_ips.push(
                    parse_ip(raw)
                        .map_err(|d| skip(SkipReason::InvalidIp, format!("loadBalancer: {d}")))?,
                );
            }
        }
    }
    let serves_node_ports = matches!(svc_type, "NodePort" | "LoadBalancer");

    let mut frontends = Vec::new();
    let mut seen_ports = BTreeSet::new();
    for port in spec.ports.iter().flatten() {
        let protocol = Protocol::from_k8s(port.protocol.as_deref()).ok_or_else(|| {
            skip(
                SkipReason::UnknownProtocol,
                format!("port {}: protocol {:?}", port.port, port.protocol),
            )
        })?;
        let number = valid_port(port.port)
            .ok_or_else(|| skip(SkipReason::InvalidPort, format!("port {}", port.port)))?;
        if !seen_ports.insert((number, protocol)) {
            return Err(skip(
                SkipReason::DuplicatePort,
                format!("port {number}/{protocol} is listed twice"),
            ));
        }
        let port_name = port.name.clone().unwrap_or_default();
        let mut add = |ip: IpAddr, port_number: u16, kind: FrontendKind| {
            frontends.push(Frontend {
                key: FrontendKey {
                    ip,
                    port: port_number,
                    protocol,
                },
                kind,
                service: name.clone(),
                port_name: port_name.clone(),
                endpoints: endpoints_for(
                    slices,
                    port,
                    protocol,
                    ip.is_ipv6(),
                    spec.publish_not_ready_addresses == Some(true),
                ),
            });
        };
        for &ip in &cluster_ips {
            add(ip, number, FrontendKind::ClusterIp);
        }
        for &ip in &external_ips {
            add(ip, number, FrontendKind::ExternalIp);
        }
        for &ip in &lb_ips {
            add(ip, number, FrontendKind::LoadBalancer);
        }
        if serves_node_ports && let Some(node_port) = port.node_port {
            let node_port = valid_port(node_port)
                .ok_or_else(|| skip(SkipReason::InvalidPort, format!("nodePort {node_port}")))?;
            for &ip in &node.node_addresses {
                add(ip, node_port, FrontendKind::NodePort);
            }
        }
    }
    Ok(Some(frontends))
}

fn parse_ip(raw: &str) -> Result<IpAddr, String> {
    raw.parse()
        .map_err(|_| format!("{raw:?} is not an IP address"))
}

fn valid_port(port: i32) -> Option<u16> {
    u16::try_from(port).ok().filter(|&p| p != 0)
}

/// The endpoints that serve `port` for one address family: ready ones, or — only when none
/// is ready — serving-and-terminating ones (KEP-1669), or all of them when the Service
/// publishes not-ready addresses.
fn endpoints_for(
    slices: &[&EndpointSlice],
    port: &ServicePort,
    protocol: Protocol,
    ipv6: bool,
    publish_not_ready: bool,
) -> Vec<Endpoint> {
    let family = if ipv6 { "IPv6" } else { "IPv4" };
    let wanted_name = port.name.as_deref().unwrap_or("");
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    for slice in slices.iter().filter(|s| s.address_type == family) {
        // The EndpointSlice controller resolved targetPort (named or numeric) per slice and
        // publishes it under the Service port's name.
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == wanted_name
                && Protocol::from_k8s(p.protocol.as_deref()) == Some(protocol)
        }) else {
            continue;
        };
        let Some(target_port) = target.port.and_then(valid_port) else {
            continue;
        };
        for ep in &slice.endpoints {
            let cond = ep.conditions.as_ref();
            // Absent conditions mean "unknown", which the API defines as ready/serving.
            let is_ready = cond.and_then(|c| c.ready).unwrap_or(true);
            let serving = cond.and_then(|c| c.serving).unwrap_or(is_ready);
            let is_terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                let endpoint = Endpoint {
                    ip,
                    port: target_port,
                };
                if is_ready || publish_not_ready {
                    ready.insert(endpoint);
                } else if serving && is_terminating {
                    terminating.insert(endpoint);
                }
            }
        }
    }
    let chosen = if ready.is_empty() { terminating } else { ready };
    chosen.into_iter().collect()
}
