//! EndpointSlices as the model keeps them: exactly the fields it reads, already parsed.
//!
//! At 100,000 Services × 10 endpoints the k8s-openapi structs cost several hundred bytes per
//! endpoint even slimmed (every optional field is inline); this form costs about 32. Node and
//! zone names and hint sets repeat across endpoints and are interned.

use std::{
    collections::{BTreeMap, HashSet},
    hash::Hash,
    net::IpAddr,
    sync::{Arc, LazyLock, Mutex},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::{SERVICE_NAME_LABEL, types::Protocol, types::ServiceName};

/// One EndpointSlice, converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceInput {
    /// The Service it belongs to (`kubernetes.io/service-name`).
    pub owner: Option<ServiceName>,
    /// `addressType`: `Some(false)` IPv4, `Some(true)` IPv6, `None` anything else (FQDN).
    pub ipv6: Option<bool>,
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[SliceEndpoint]>,
    /// `endpoints.kubernetes.io/last-change-trigger-time`, for the programming latency metric.
    pub trigger_time: Option<Box<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlicePort {
    /// "" when unnamed.
    pub name: Box<str>,
    /// `None`: a protocol Sluice does not know, which matches no Service port.
    pub protocol: Option<Protocol>,
    /// `None` when absent or out of range.
    pub port: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceEndpoint {
    /// The first address (the API says consumers may ignore the rest), if it parses.
    pub address: Option<IpAddr>,
    /// Conditions with the API's defaults for absent ones applied.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub placement: Arc<Placement>,
}

/// Where an endpoint runs and which topology hints it carries: one of few combinations in a
/// cluster, so each is stored once and shared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Placement {
    pub node_name: Option<Arc<str>>,
    /// Sorted, without duplicates.
    pub zone_hints: Box<[Arc<str>]>,
    pub node_hints: Box<[Arc<str>]>,
}

impl SliceInput {
    pub fn from_slice(slice: &EndpointSlice) -> Self {
        let ipv6 = match slice.address_type.as_str() {
            "IPv4" => Some(false),
            "IPv6" => Some(true),
            _ => None,
        };
        let ports = slice
            .ports
            .iter()
            .flatten()
            .map(|p| SlicePort {
                name: p.name.as_deref().unwrap_or("").into(),
                protocol: Protocol::from_k8s(p.protocol.as_deref()),
                port: p
                    .port
                    .and_then(|p| u16::try_from(p).ok())
                    .filter(|&p| p != 0),
            })
            .collect();
        let endpoints = slice
            .endpoints
            .iter()
            .map(|ep| {
                let cond = ep.conditions.as_ref();
                let hints = ep.hints.as_ref();
                SliceEndpoint {
                    address: ep.addresses.first().and_then(|a| a.parse().ok()),
                    ready: cond.and_then(|c| c.ready).unwrap_or(true),
                    serving: cond.and_then(|c| c.serving).unwrap_or(true),
                    terminating: cond.and_then(|c| c.terminating).unwrap_or(false),
                    placement: intern_placement(Placement {
                        node_name: ep.node_name.as_deref().map(intern_name),
                        zone_hints: names(
                            hints
                                .and_then(|h| h.for_zones.as_ref())
                                .into_iter()
                                .flatten()
                                .map(|z| z.name.as_str()),
                        ),
                        node_hints: names(
                            hints
                                .and_then(|h| h.for_nodes.as_ref())
                                .into_iter()
                                .flatten()
                                .map(|n| n.name.as_str()),
                        ),
                    }),
                }
            })
            .collect();
        Self {
            owner: slice_owner(slice),
            ipv6,
            ports,
            endpoints,
            trigger_time: slice
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::observe::LAST_CHANGE_TRIGGER_TIME))
                .map(|t| t.as_str().into()),
        }
    }
}

/// The Service an EndpointSlice belongs to, from its `kubernetes.io/service-name` label.
pub fn slice_owner(slice: &EndpointSlice) -> Option<ServiceName> {
    let labels = slice.metadata.labels.as_ref()?;
    let name = labels.get(SERVICE_NAME_LABEL)?;
    Some(ServiceName::new(
        slice.metadata.namespace.as_deref().unwrap_or("default"),
        name.as_str(),
    ))
}

/// Keys for a list of slices that may repeat a namespace/name (a manifests folder can): the
/// first of each name, ordered by content so the result does not depend on the list's order,
/// keeps the name, later ones get `#1`, `#2`…, so every slice is used as before.
pub fn slice_keys(slices: &[EndpointSlice]) -> Vec<(ServiceName, &EndpointSlice)> {
    let mut by_name: BTreeMap<ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        by_name
            .entry(ServiceName::of(&slice.metadata))
            .or_default()
            .push(slice);
    }
    let mut out = Vec::with_capacity(slices.len());
    for (name, mut group) in by_name {
        if group.len() > 1 {
            group.sort_by_cached_key(|s| serde_json::to_string(s).unwrap_or_default());
        }
        for (i, slice) in group.into_iter().enumerate() {
            let key = match i {
                0 => name.clone(),
                i => ServiceName::new(name.namespace.clone(), format!("{}#{i}", name.name)),
            };
            out.push((key, slice));
        }
    }
    out
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> Box<[Arc<str>]> {
    let mut out: Vec<Arc<str>> = names.map(intern_name).collect();
    out.sort();
    out.dedup();
    out.into_boxed_slice()
}

/// Shares equal values (node and zone names, placements) between every endpoint that has
/// them. There are only as many as the cluster has nodes, zones and hint combinations, so
/// they are never freed.
fn intern_in<T: Eq + Hash + ?Sized>(set: &Mutex<HashSet<Arc<T>>>, value: Arc<T>) -> Arc<T> {
    let mut set = set.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(known) = set.get(&value) {
        return known.clone();
    }
    set.insert(value.clone());
    value
}

fn intern_name(name: &str) -> Arc<str> {
    static NAMES: LazyLock<Mutex<HashSet<Arc<str>>>> = LazyLock::new(Mutex::default);
    intern_in(&NAMES, name.into())
}

fn intern_placement(placement: Placement) -> Arc<Placement> {
    static PLACEMENTS: LazyLock<Mutex<HashSet<Arc<Placement>>>> = LazyLock::new(Mutex::default);
    intern_in(&PLACEMENTS, Arc::new(placement))
}
