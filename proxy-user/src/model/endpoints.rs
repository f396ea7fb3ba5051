//! Which of a Service port's endpoints serve, per kube-proxy's rules (`CategorizeEndpoints`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointSlice};

use super::{
    node::NodeContext,
    topology,
    types::{Endpoint, Protocol},
};

/// One endpoint of one Service port in one address family, merged across slices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Candidate {
    pub endpoint: Endpoint,
    pub local: bool,
    /// Ready, or the Service publishes not-ready addresses.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Sorted, without duplicates; empty when the endpoint has no such hint.
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
}

impl Candidate {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// kube-proxy keeps the node-local copy of an endpoint listed twice; the rest of the order
    /// only makes the choice independent of the order slices arrive in.
    #[allow(clippy::type_complexity)]
    fn preference(&self) -> (bool, bool, bool, bool, &[String], &[String]) {
        (
            self.local,
            self.ready,
            self.serving,
            !self.terminating,
            &self.zone_hints,
            &self.node_hints,
        )
    }
}

/// Which address family an EndpointSlice or endpoint address belongs to.
pub(super) fn address_type(ipv6: bool) -> &'static str {
    if ipv6 { "IPv6" } else { "IPv4" }
}

/// The endpoints' address, as kube-proxy reads it: the first one (the API says consumers may
/// ignore the rest), only if it belongs to the slice's family.
fn address(ep: &SliceEndpoint, ipv6: bool) -> Option<IpAddr> {
    let ip: IpAddr = ep.addresses.first()?.parse().ok()?;
    (ip.is_ipv6() == ipv6).then_some(ip)
}

/// The state of one slice endpoint, with kube-proxy's defaults for absent conditions (the
/// API contract): ready and serving mean true, terminating means false.
fn conditions(ep: &SliceEndpoint, publish_not_ready: bool) -> (bool, bool, bool) {
    let cond = ep.conditions.as_ref();
    let ready = cond.and_then(|c| c.ready).unwrap_or(true);
    let serving = cond.and_then(|c| c.serving).unwrap_or(true);
    let terminating = cond.and_then(|c| c.terminating).unwrap_or(false);
    (ready || publish_not_ready, serving, terminating)
}

fn valid_port(port: Option<i32>) -> Option<u16> {
    port.and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0)
}

/// Every endpoint that may serve the Service port named `port_name` over `protocol` in one
/// family, sorted by address.
pub(super) fn candidates(
    slices: &[&EndpointSlice],
    port_name: &str,
    protocol: Protocol,
    ipv6: bool,
    node: &NodeContext,
    publish_not_ready: bool,
) -> Vec<Candidate> {
    let mut merged: BTreeMap<Endpoint, Candidate> = BTreeMap::new();
    for slice in slices
        .iter()
        .filter(|s| s.address_type == address_type(ipv6))
    {
        // The EndpointSlice controller resolved targetPort (named or numeric) per slice and
        // publishes it under the Service port's name.
        let target_ports = slice.ports.iter().flatten().filter_map(|p| {
            let matches = p.name.as_deref().unwrap_or("") == port_name
                && Protocol::from_k8s(p.protocol.as_deref()) == Some(protocol);
            valid_port(p.port).filter(|_| matches)
        });
        for target_port in target_ports {
            for ep in &slice.endpoints {
                let Some(ip) = address(ep, ipv6) else {
                    continue;
                };
                let (ready, serving, terminating) = conditions(ep, publish_not_ready);
                let hints = ep.hints.as_ref();
                let candidate = Candidate {
                    endpoint: Endpoint {
                        ip,
                        port: target_port,
                    },
                    local: node.is_local(ep.node_name.as_deref()),
                    ready,
                    serving,
                    terminating,
                    zone_hints: sorted_names(
                        hints
                            .and_then(|h| h.for_zones.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|z| z.name.as_str()),
                    ),
                    node_hints: sorted_names(
                        hints
                            .and_then(|h| h.for_nodes.as_ref())
                            .into_iter()
                            .flatten()
                            .map(|n| n.name.as_str()),
                    ),
                };
                match merged.get_mut(&candidate.endpoint) {
                    Some(kept) if kept.preference() >= candidate.preference() => {}
                    Some(kept) => *kept = candidate,
                    None => {
                        merged.insert(candidate.endpoint.clone(), candidate);
                    }
                }
            }
        }
    }
    merged.into_values().collect()
}

fn sorted_names<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    names
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// Endpoints for new connections and endpoints to let drain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Selection {
    pub endpoints: Vec<Endpoint>,
    pub draining: Vec<Endpoint>,
}

/// What one Service port in one family offers to each traffic policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Sets {
    /// `Cluster` policy: every usable endpoint, narrowed by topology hints.
    pub cluster: Selection,
    /// `Local` policy: this node's usable endpoints; topology does not apply.
    pub local: Selection,
    /// Whether any endpoint anywhere is usable (ready, or serving and terminating).
    pub any_usable: bool,
}

impl Sets {
    pub fn new(candidates: &[Candidate], node: &NodeContext) -> Self {
        let mode = topology::mode(candidates, node);
        let all: Vec<&Candidate> = candidates.iter().collect();
        let local: Vec<&Candidate> = candidates.iter().filter(|c| c.local).collect();
        Self {
            cluster: usable(&all, |c| mode.admits(c)),
            local: usable(&local, |_| true),
            any_usable: candidates
                .iter()
                .any(|c| c.ready || c.serving_terminating()),
        }
    }
}

/// Ready endpoints `preferred` admits; if there are none, serving-and-terminating ones
/// (KEP-1669), so a rolling update never leaves a moment with nothing to send to. The
/// fallback is decided per pool: the local pool falls back when no local endpoint is
/// ready, even if remote ones are.
fn usable(pool: &[&Candidate], preferred: impl Fn(&Candidate) -> bool) -> Selection {
    let chosen: Vec<&Candidate> = pool
        .iter()
        .copied()
        .filter(|c| c.ready && preferred(c))
        .collect();
    let chosen = if chosen.is_empty() {
        pool.iter()
            .copied()
            .filter(|c| c.serving_terminating())
            .collect()
    } else {
        chosen
    };
    let endpoints: Vec<Endpoint> = chosen.iter().map(|c| c.endpoint.clone()).collect();
    let draining = pool
        .iter()
        .filter(|c| c.serving_terminating() && endpoints.binary_search(&c.endpoint).is_err())
        .map(|c| c.endpoint.clone())
        .collect();
    Selection {
        endpoints,
        draining,
    }
}

/// Distinct ready endpoint addresses on this node over every port of the given families, as
/// kube-proxy's health check counts them.
pub(super) fn local_ready_addresses(
    slices: &[&EndpointSlice],
    families: &[bool],
    node: &NodeContext,
    publish_not_ready: bool,
) -> usize {
    let mut ips = BTreeSet::new();
    for &ipv6 in families {
        for slice in slices
            .iter()
            .filter(|s| s.address_type == address_type(ipv6))
        {
            if !slice
                .ports
                .iter()
                .flatten()
                .any(|p| valid_port(p.port).is_some())
            {
                continue;
            }
            for ep in &slice.endpoints {
                if let Some(ip) = address(ep, ipv6)
                    && node.is_local(ep.node_name.as_deref())
                    && conditions(ep, publish_not_ready).0
                {
                    ips.insert(ip);
                }
            }
        }
    }
    ips.len()
}
