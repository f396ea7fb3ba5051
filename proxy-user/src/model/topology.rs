//! Topology-aware routing: honouring the hints the EndpointSlice controller writes for
//! `trafficDistribution` and the `topology-mode` annotation.
//!
//! Like kube-proxy (since `trafficDistribution` went GA), the Service's own fields are not
//! consulted: the controller only writes hints when the Service asks for them, and removes
//! them when it stops asking, so the hints are the single source of truth.

use std::sync::Arc;

use super::{endpoints::Candidate, node::NodeContext};

/// Which ready endpoints the cluster-wide set keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode<'a> {
    /// No usable hints: every ready endpoint.
    All,
    /// `PreferSameNode`: endpoints hinted for this node.
    SameNode(&'a str),
    /// `PreferSameZone` / `PreferClose` / `topology-mode: Auto`: endpoints hinted for this
    /// node's zone.
    SameZone(&'a str),
}

impl Mode<'_> {
    pub fn admits(&self, c: &Candidate) -> bool {
        match self {
            Mode::All => true,
            Mode::SameNode(node) => c.node_hints.iter().any(|h| &**h == *node),
            Mode::SameZone(zone) => c.zone_hints.iter().any(|h| &**h == *zone),
        }
    }
}

/// Node hints win if every ready endpoint has one and some endpoint is hinted for this node;
/// otherwise zone hints, under the same two conditions for this node's zone; otherwise none.
/// A hint set that leaves this node or zone without an endpoint would strand its clients, so
/// it is ignored as a whole rather than followed. Only ready endpoints count: the hints
/// describe how ready capacity is shared out.
pub(super) fn mode<'a>(candidates: &[Candidate], node: &'a NodeContext) -> Mode<'a> {
    let ready: Vec<&Candidate> = candidates.iter().filter(|c| c.ready).collect();
    if ready.is_empty() {
        return Mode::All;
    }
    let decide = |hints: fn(&Candidate) -> &[Arc<str>], mine: Option<&'a str>| {
        let mine = mine?;
        let all_hinted = ready.iter().all(|c| !hints(c).is_empty());
        let one_for_me = ready.iter().any(|c| hints(c).iter().any(|h| &**h == mine));
        (all_hinted && one_for_me).then_some(mine)
    };
    if let Some(name) = decide(|c| &c.node_hints, node.node_name.as_deref()) {
        return Mode::SameNode(name);
    }
    if let Some(zone) = decide(|c| &c.zone_hints, node.zone.as_deref()) {
        return Mode::SameZone(zone);
    }
    Mode::All
}
