//! Which of a Service port's endpoints serve, per kube-proxy's rules (`CategorizeEndpoints`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use super::{
    node::NodeContext,
    slice::{SliceEndpoint, SliceInput},
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
    pub zone_hints: Box<[Arc<str>]>,
    pub node_hints: Box<[Arc<str>]>,
}

impl Candidate {
    fn serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// kube-proxy keeps the node-local copy of an endpoint listed twice; the rest of the order
    /// only makes the choice independent of the order slices arrive in.
    #[allow(clippy::type_complexity)]
    fn preference(&self) -> (bool, bool, bool, bool, &[Arc<str>], &[Arc<str>]) {
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

/// The endpoints' address, as kube-proxy reads it: the first one (the API says consumers may
/// ignore the rest), only if it belongs to the slice's family.
fn address(ep: &SliceEndpoint, ipv6: bool) -> Option<IpAddr> {
    ep.address.filter(|ip| ip.is_ipv6() == ipv6)
}

/// The state of one slice endpoint (absent conditions already defaulted as the API says).
fn conditions(ep: &SliceEndpoint, publish_not_ready: bool) -> (bool, bool, bool) {
    (ep.ready || publish_not_ready, ep.serving, ep.terminating)
}

/// Every endpoint that may serve the Service port named `port_name` over `protocol` in one
/// family, sorted by address.
pub(super) fn candidates(
    slices: &[&SliceInput],
    port_name: &str,
    protocol: Protocol,
    ipv6: bool,
    node: &NodeContext,
    publish_not_ready: bool,
) -> Vec<Candidate> {
    let mut merged: BTreeMap<Endpoint, Candidate> = BTreeMap::new();
    for slice in slices.iter().filter(|s| s.ipv6 == Some(ipv6)) {
        // The EndpointSlice controller resolved targetPort (named or numeric) per slice and
        // publishes it under the Service port's name.
        let target_ports = slice.ports.iter().filter_map(|p| {
            let matches = &*p.name == port_name && p.protocol == Some(protocol);
            p.port.filter(|_| matches)
        });
        for target_port in target_ports {
            for ep in &slice.endpoints {
                let Some(ip) = address(ep, ipv6) else {
                    continue;
                };
                let (ready, serving, terminating) = conditions(ep, publish_not_ready);
                let candidate = Candidate {
                    endpoint: Endpoint {
                        ip,
                        port: target_port,
                    },
                    local: node.is_local(ep.placement.node_name.as_deref()),
                    ready,
                    serving,
                    terminating,
                    zone_hints: ep.placement.zone_hints.clone(),
                    node_hints: ep.placement.node_hints.clone(),
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
    slices: &[&SliceInput],
    families: &[bool],
    node: &NodeContext,
    publish_not_ready: bool,
) -> usize {
    let mut ips = BTreeSet::new();
    for &ipv6 in families {
        for slice in slices.iter().filter(|s| s.ipv6 == Some(ipv6)) {
            if !slice.ports.iter().any(|p| p.port.is_some()) {
                continue;
            }
            for ep in &slice.endpoints {
                if let Some(ip) = address(ep, ipv6)
                    && node.is_local(ep.placement.node_name.as_deref())
                    && conditions(ep, publish_not_ready).0
                {
                    ips.insert(ip);
                }
            }
        }
    }
    ips.len()
}
