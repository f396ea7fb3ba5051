//! Map contents → what each `sluice inspect` subcommand shows (pure). The structs serialise
//! to the documented JSON (docs/cli.md): a field may be added, never renamed or retyped.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{Ipv4Addr, SocketAddrV4},
    str::FromStr,
};

use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, DatapathConfig, FrontendMeta, PROTO_SCTP,
    PROTO_TCP, PROTO_UDP, ServiceKey, ServiceValue, SlotKey, TrafficCounters, algorithm, ct_dir,
    ct_flags, frontend_kind, scope, service_flags,
};
use serde::Serialize;

use super::source::{Contents, MapFill};

/// A Service named on the command line as `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for ServiceRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(Self {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                })
            }
            _ => Err(format!(
                "expected NAMESPACE/NAME (e.g. default/web), not {s:?}"
            )),
        }
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// An address, and optionally a port, that a conntrack filter matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointFilter {
    pub addr: Ipv4Addr,
    pub port: Option<u16>,
}

impl FromStr for EndpointFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(sock) = s.parse::<SocketAddrV4>() {
            return Ok(Self {
                addr: *sock.ip(),
                port: Some(sock.port()),
            });
        }
        s.parse::<Ipv4Addr>()
            .map(|addr| Self { addr, port: None })
            .map_err(|_| {
                format!("expected IPv4 or IPv4:PORT (the datapath serves IPv4 only), not {s:?}")
            })
    }
}

impl EndpointFilter {
    /// Whether a map's address and port (both network byte order) match.
    fn matches(&self, addr_be: u32, port_be: u16) -> bool {
        ip(addr_be) == self.addr && self.port.is_none_or(|p| p == u16::from_be(port_be))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolFilter {
    Tcp,
    Udp,
    Sctp,
}

impl ProtocolFilter {
    fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
            Self::Sctp => PROTO_SCTP,
        }
    }
}

/// What `inspect conntrack` keeps; every set field must match.
#[derive(Clone, Debug, Default)]
pub struct ConntrackFilter {
    /// The frontend the client addressed.
    pub vip: Option<EndpointFilter>,
    pub backend: Option<EndpointFilter>,
    pub client: Option<EndpointFilter>,
    pub protocol: Option<ProtocolFilter>,
    pub service: Option<ServiceRef>,
}

fn ip(addr_be: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr_be.to_ne_bytes())
}

/// Kubernetes' spelling of the protocol; the number for one Kubernetes does not have.
pub fn protocol_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_SCTP => "SCTP".into(),
        other => other.to_string(),
    }
}

fn scope_name(s: u8) -> &'static str {
    match s {
        scope::ANY => "any",
        scope::INTERNAL => "internal",
        scope::EXTERNAL => "external",
        _ => "unknown",
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        frontend_kind::CLUSTER_IP => "ClusterIP",
        frontend_kind::NODE_PORT => "NodePort",
        frontend_kind::LOAD_BALANCER => "LoadBalancer",
        frontend_kind::EXTERNAL_IP => "ExternalIP",
        _ => "unknown",
    }
}

fn algorithm_name(a: u8) -> String {
    match a {
        algorithm::RANDOM => "random".into(),
        algorithm::ROUND_ROBIN => "round-robin".into(),
        algorithm::SOURCE_HASH => "source-hash".into(),
        // Asked for, but served at random until the datapath has Maglev tables.
        algorithm::MAGLEV => "maglev".into(),
        // A newer datapath's algorithm: show its number rather than guess.
        other => format!("algorithm-{other}"),
    }
}

/// Names of the set bits, in bit order; bits this build does not know show as hex.
fn flag_names(flags: u64, known: &[(u64, &str)]) -> Vec<String> {
    let mut names: Vec<String> = known
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    let unknown = flags & !known.iter().fold(0, |acc, (bit, _)| acc | bit);
    if unknown != 0 {
        names.push(format!("{unknown:#x}"));
    }
    names
}

/// `PRESENT` is left out: every valid entry has it, so it tells an operator nothing.
fn service_flag_names(flags: u16) -> Vec<String> {
    use service_flags::*;
    flag_names(
        u64::from(flags & !PRESENT),
        &[
            (DROP_WHEN_EMPTY.into(), "drop-when-empty"),
            (SPLIT_SCOPES.into(), "split-scopes"),
            (ROUTE_REPLIES.into(), "route-replies"),
            (MASQUERADE_EXTERNAL.into(), "masquerade-external"),
            (SOURCE_RANGES.into(), "source-ranges"),
        ],
    )
}

fn ct_flag_names(flags: u16) -> Vec<String> {
    use ct_flags::*;
    flag_names(
        u64::from(flags),
        &[
            (SEEN_REPLY.into(), "seen-reply"),
            (CLOSING.into(), "closing"),
            (ROUTE_REPLIES.into(), "route-replies"),
            (SNAT.into(), "snat"),
        ],
    )
}

/// A NUL-padded string of `FrontendMeta`.
fn text(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn owner(meta: Option<&FrontendMeta>) -> (Option<String>, Option<String>) {
    match meta {
        Some(m) => (Some(text(&m.namespace)), Some(text(&m.name))),
        None => (None, None),
    }
}

/// `namespace/name`, or `-` for an entry without metadata.
pub fn service_label(namespace: &Option<String>, name: &Option<String>) -> String {
    match (namespace, name) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        _ => "-".into(),
    }
}

/// One frontend entry of `SLUICE_SVC4` and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Frontend {
    /// `None` when the entry has no `SLUICE_META4` record (written by an older Sluice, or
    /// read mid-update).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The Service port's name; `None` for an unnamed port.
    pub port_name: Option<String>,
    pub kind: &'static str,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    pub scope: &'static str,
    pub service_id: u32,
    pub bank: u8,
    pub algorithm: String,
    /// 0 without session affinity.
    pub affinity_timeout_seconds: u32,
    pub backend_count: u32,
    pub flags: Vec<String>,
}

impl Frontend {
    fn new(key: &ServiceKey, value: &ServiceValue, meta: Option<&FrontendMeta>) -> Self {
        let (namespace, name) = owner(meta);
        Self {
            namespace,
            name,
            port_name: meta.map(|m| text(&m.port_name)).filter(|p| !p.is_empty()),
            kind: meta.map_or("unknown", |m| kind_name(m.kind)),
            address: ip(key.addr),
            port: u16::from_be(key.port),
            protocol: protocol_name(key.proto),
            scope: scope_name(key.scope),
            service_id: value.id,
            bank: value.bank,
            algorithm: algorithm_name(value.algorithm),
            // The master entry's timeout is the one the datapath applies (a split marker has
            // none: its scope entries do).
            affinity_timeout_seconds: value.affinity_timeout,
            backend_count: value.count,
            flags: service_flag_names(value.flags),
        }
    }

    pub fn service(&self) -> String {
        service_label(&self.namespace, &self.name)
    }

    /// `address:port/PROTOCOL`, as an operator writes a frontend.
    pub fn endpoint(&self) -> String {
        format!("{}:{}/{}", self.address, self.port, self.protocol)
    }

    /// The ANY entry of a frontend whose clients are split by scope: it has no slots.
    pub fn is_split_marker(&self) -> bool {
        self.flags.iter().any(|f| f == "split-scopes")
    }
}

fn frontend_order(key: &ServiceKey, meta: Option<&FrontendMeta>) -> impl Ord {
    let (namespace, name) = owner(meta);
    (
        namespace,
        name,
        ip(key.addr),
        u16::from_be(key.port),
        key.proto,
        key.scope,
    )
}

fn sorted_frontends(
    c: &Contents,
    keep: impl Fn(&ServiceKey, Option<&FrontendMeta>) -> bool,
) -> Vec<(&ServiceKey, &ServiceValue)> {
    let mut entries: Vec<_> = c
        .services
        .iter()
        .filter(|(k, _)| keep(k, c.meta.get(k)))
        .collect();
    entries.sort_by_cached_key(|(k, _)| frontend_order(k, c.meta.get(k)));
    entries
}

#[derive(Clone, Debug, Serialize)]
pub struct ServicesView {
    pub frontends: Vec<Frontend>,
}

/// `inspect services`: every frontend entry, optionally of one namespace.
pub fn services(c: &Contents, namespace: Option<&str>) -> ServicesView {
    let keep = |_: &ServiceKey, meta: Option<&FrontendMeta>| {
        namespace.is_none_or(|ns| meta.is_some_and(|m| text(&m.namespace) == ns))
    };
    ServicesView {
        frontends: sorted_frontends(c, keep)
            .into_iter()
            .map(|(k, v)| Frontend::new(k, v, c.meta.get(k)))
            .collect(),
    }
}

/// Packets and bytes in each direction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Traffic {
    pub forward_packets: u64,
    pub forward_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

impl From<TrafficCounters> for Traffic {
    fn from(t: TrafficCounters) -> Self {
        Self {
            forward_packets: t.forward_packets,
            forward_bytes: t.forward_bytes,
            reply_packets: t.reply_packets,
            reply_bytes: t.reply_bytes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendRow {
    pub id: u32,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    /// `namespace/name` of every Service one of whose frontends' live slots names it.
    pub services: Vec<String>,
    /// Frontend entries whose live slots name it; 0 for a backend left over or being added.
    pub frontends: u32,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendsView {
    pub backends: Vec<BackendRow>,
}

/// Which frontends each backend id serves, from the live banks.
fn backend_users(c: &Contents) -> BTreeMap<u32, (BTreeSet<String>, u32)> {
    let mut users: BTreeMap<u32, (BTreeSet<String>, u32)> = BTreeMap::new();
    for (key, svc) in &c.services {
        let ids: BTreeSet<u32> = (0..svc.count)
            .filter_map(|i| c.slots.get(&SlotKey::new(svc.id, svc.bank, i)).copied())
            .collect();
        let (namespace, name) = owner(c.meta.get(key));
        for id in ids {
            let entry = users.entry(id).or_default();
            entry.1 += 1;
            if namespace.is_some() {
                entry.0.insert(service_label(&namespace, &name));
            }
        }
    }
    users
}

fn backend_order(b: &Backend) -> impl Ord {
    (ip(b.addr), u16::from_be(b.port), b.proto)
}

/// `inspect backends`: every backend, who uses it, and its traffic.
pub fn backends(c: &Contents) -> BackendsView {
    let users = backend_users(c);
    let mut rows: Vec<(&u32, &Backend)> = c.backends.iter().collect();
    rows.sort_by_key(|(id, b)| (backend_order(b), **id));
    BackendsView {
        backends: rows
            .into_iter()
            .map(|(&id, b)| {
                let (services, frontends) = users.get(&id).cloned().unwrap_or_default();
                BackendRow {
                    id,
                    address: ip(b.addr),
                    port: u16::from_be(b.port),
                    protocol: protocol_name(b.proto),
                    services: services.into_iter().collect(),
                    frontends,
                    traffic: c
                        .backend_traffic
                        .get(b)
                        .copied()
                        .map(Traffic::from)
                        .unwrap_or_default(),
                }
            })
            .collect(),
    }
}

/// The state of one backend slot.
pub mod slot_state {
    /// In the live bank, naming an existing backend: packets are sent there.
    pub const LIVE: &str = "live";
    /// In the live bank's range but absent from `SLUICE_SLOTS`: packets that pick it are
    /// dropped (`drop_bad_slot`).
    pub const MISSING: &str = "missing";
    /// Names a backend id absent from `SLUICE_BACKENDS4`: packets that pick it are dropped.
    pub const DANGLING: &str = "dangling";
    /// In the idle bank (or past the live count): an update being written, or left over from
    /// one; no packet uses it.
    pub const IDLE: &str = "idle";
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SlotRow {
    pub bank: u8,
    pub slot: u32,
    /// `None` for a missing slot.
    pub backend_id: Option<u32>,
    /// `None` for a missing slot or a dangling backend id.
    pub address: Option<Ipv4Addr>,
    pub port: Option<u16>,
    pub state: &'static str,
    /// Tracked flows of this frontend entry to this backend.
    pub flows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceFrontend {
    #[serde(flatten)]
    pub frontend: Frontend,
    pub slots: Vec<SlotRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub frontends: Vec<ServiceFrontend>,
}

/// `inspect service NS/NAME`; `None` when no frontend entry belongs to it.
pub fn service(c: &Contents, which: &ServiceRef) -> Option<ServiceView> {
    let keep = |_: &ServiceKey, meta: Option<&FrontendMeta>| {
        meta.is_some_and(|m| text(&m.namespace) == which.namespace && text(&m.name) == which.name)
    };
    let entries = sorted_frontends(c, keep);
    if entries.is_empty() {
        return None;
    }
    // Tracked forward flows per (frontend entry id, backend id).
    let mut flows: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for (k, v) in &c.conntrack {
        if k.dir == ct_dir::FORWARD {
            *flows.entry((v.service_id, v.backend_id)).or_default() += 1;
        }
    }
    let frontends = entries
        .into_iter()
        .map(|(key, svc)| {
            let slot_row = |bank: u8, slot: u32, id: Option<u32>, live: bool| {
                let backend = id.and_then(|id| c.backends.get(&id));
                SlotRow {
                    bank,
                    slot,
                    backend_id: id,
                    address: backend.map(|b| ip(b.addr)),
                    port: backend.map(|b| u16::from_be(b.port)),
                    state: match (live, id, backend) {
                        (false, _, _) => slot_state::IDLE,
                        (true, None, _) => slot_state::MISSING,
                        (true, Some(_), None) => slot_state::DANGLING,
                        (true, Some(_), Some(_)) => slot_state::LIVE,
                    },
                    flows: id.map_or(0, |id| flows.get(&(svc.id, id)).copied().unwrap_or(0)),
                }
            };
            let mut slots: Vec<SlotRow> = (0..svc.count)
                .map(|i| {
                    let id = c.slots.get(&SlotKey::new(svc.id, svc.bank, i)).copied();
                    slot_row(svc.bank, i, id, true)
                })
                .collect();
            // Slots of this id outside the live range: the other bank, or leftovers.
            slots.extend(
                c.slots
                    .range(SlotKey::new(svc.id, 0, 0)..=SlotKey::new(svc.id, u8::MAX, u32::MAX))
                    .filter(|(s, _)| s.bank != svc.bank || s.slot >= svc.count)
                    .map(|(s, &id)| slot_row(s.bank, s.slot, Some(id), false)),
            );
            ServiceFrontend {
                frontend: Frontend::new(key, svc, c.meta.get(key)),
                slots,
            }
        })
        .collect();
    Some(ServiceView {
        namespace: which.namespace.clone(),
        name: which.name.clone(),
        frontends,
    })
}

/// Connection states, as the datapath's lifetimes distinguish them.
pub mod flow_state {
    /// TCP, not answered yet.
    pub const SYN_SENT: &str = "syn-sent";
    pub const ESTABLISHED: &str = "established";
    /// TCP after a FIN or RST.
    pub const CLOSING: &str = "closing";
    /// UDP (or another protocol) that has only sent.
    pub const UNANSWERED: &str = "unanswered";
    pub const ANSWERED: &str = "answered";
}

fn flow_state(proto: u8, flags: u16) -> &'static str {
    let answered = flags & ct_flags::SEEN_REPLY != 0;
    match (proto, answered) {
        (PROTO_TCP, _) if flags & ct_flags::CLOSING != 0 => flow_state::CLOSING,
        (PROTO_TCP, true) => flow_state::ESTABLISHED,
        (PROTO_TCP, false) => flow_state::SYN_SENT,
        (_, true) => flow_state::ANSWERED,
        (_, false) => flow_state::UNANSWERED,
    }
}

/// The lifetime the datapath gives a flow in this state (as proxy-ebpf's conntrack.rs).
fn lifetime_ns(cfg: &DatapathConfig, proto: u8, flags: u16) -> u64 {
    match flow_state(proto, flags) {
        flow_state::CLOSING => cfg.tcp_closing_ns,
        flow_state::ESTABLISHED => cfg.tcp_established_ns,
        flow_state::SYN_SENT => cfg.tcp_syn_ns,
        flow_state::ANSWERED => cfg.udp_stream_ns,
        _ => cfg.udp_ns,
    }
}

/// One tracked connection, from its forward entry.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowRow {
    pub protocol: String,
    pub client_address: Ipv4Addr,
    pub client_port: u16,
    pub frontend_address: Ipv4Addr,
    pub frontend_port: u16,
    pub backend_address: Ipv4Addr,
    pub backend_port: u16,
    /// The node address and port the flow is source-NATed to; `None` without SNAT.
    pub snat_address: Option<Ipv4Addr>,
    pub snat_port: Option<u16>,
    pub state: &'static str,
    /// Past its lifetime: the datapath will select a backend afresh for its next packet.
    pub expired: bool,
    /// Seconds since the last packet in this direction.
    pub idle_seconds: f64,
    pub flags: Vec<String>,
    pub service_id: u32,
    pub backend_id: u32,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl FlowRow {
    pub fn service(&self) -> String {
        service_label(&self.namespace, &self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ConntrackCounts {
    /// Entries in `SLUICE_CT4`, both directions.
    pub entries: u64,
    /// Forward entries: one per tracked connection.
    pub flows: u64,
    /// Reply entries.
    pub replies: u64,
    /// Flows that pass the filters.
    pub matched: u64,
    /// Matched flows past their lifetime.
    pub expired: u64,
    /// Matched flows per protocol.
    pub by_protocol: BTreeMap<String, u64>,
    /// Matched flows per state.
    pub by_state: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ConntrackView {
    pub counts: ConntrackCounts,
    /// Empty with `--summary`.
    pub flows: Vec<FlowRow>,
}

/// `inspect conntrack`: tracked connections passing `filter`, and counts.
pub fn conntrack(c: &Contents, filter: &ConntrackFilter, with_flows: bool) -> ConntrackView {
    // service_id → the entry's metadata. Ids are unique per entry, so this is a function.
    let owners: BTreeMap<u32, &FrontendMeta> = c
        .services
        .iter()
        .filter_map(|(k, v)| Some((v.id, c.meta.get(k)?)))
        .collect();
    let mut counts = ConntrackCounts {
        entries: c.conntrack.len() as u64,
        ..ConntrackCounts::default()
    };
    let mut rows = Vec::new();
    for (key, value) in &c.conntrack {
        if key.dir != ct_dir::FORWARD {
            counts.replies += 1;
            continue;
        }
        counts.flows += 1;
        let meta = owners.get(&value.service_id).copied();
        if !flow_matches(key, value, meta, filter) {
            continue;
        }
        let row = flow_row(key, value, meta, c);
        counts.matched += 1;
        counts.expired += u64::from(row.expired);
        *counts.by_protocol.entry(row.protocol.clone()).or_default() += 1;
        *counts.by_state.entry(row.state).or_default() += 1;
        if with_flows {
            rows.push(row);
        }
    }
    rows.sort_by(|a, b| {
        (a.frontend_address, a.frontend_port, &a.protocol)
            .cmp(&(b.frontend_address, b.frontend_port, &b.protocol))
            .then((a.client_address, a.client_port).cmp(&(b.client_address, b.client_port)))
    });
    ConntrackView {
        counts,
        flows: rows,
    }
}

fn flow_matches(
    key: &CtKey,
    value: &CtValue,
    meta: Option<&FrontendMeta>,
    filter: &ConntrackFilter,
) -> bool {
    filter.vip.is_none_or(|f| f.matches(key.daddr, key.dport))
        && filter
            .client
            .is_none_or(|f| f.matches(key.saddr, key.sport))
        && filter
            .backend
            .is_none_or(|f| f.matches(value.nat_addr, value.nat_port))
        && filter.protocol.is_none_or(|p| p.number() == key.proto)
        && filter.service.as_ref().is_none_or(|s| {
            meta.is_some_and(|m| text(&m.namespace) == s.namespace && text(&m.name) == s.name)
        })
}

fn flow_row(key: &CtKey, value: &CtValue, meta: Option<&FrontendMeta>, c: &Contents) -> FlowRow {
    let idle_ns = c.now_ns.saturating_sub(value.last_seen_ns);
    let snat = value.flags & ct_flags::SNAT != 0;
    let (namespace, name) = owner(meta);
    FlowRow {
        protocol: protocol_name(key.proto),
        client_address: ip(key.saddr),
        client_port: u16::from_be(key.sport),
        frontend_address: ip(key.daddr),
        frontend_port: u16::from_be(key.dport),
        backend_address: ip(value.nat_addr),
        backend_port: u16::from_be(value.nat_port),
        snat_address: snat.then(|| ip(value.rev_addr)),
        snat_port: snat.then(|| u16::from_be(value.rev_port)),
        state: flow_state(key.proto, value.flags),
        expired: idle_ns > lifetime_ns(&c.lifetimes, key.proto, value.flags),
        // Milliseconds are plenty for a person and keep the JSON short.
        idle_seconds: (idle_ns / 1_000_000) as f64 / 1000.0,
        flags: ct_flag_names(value.flags),
        service_id: value.service_id,
        backend_id: value.backend_id,
        namespace,
        name,
    }
}

/// The state of a session-affinity entry, as the datapath would treat the client's next new
/// flow.
pub mod affinity_state {
    /// Within the timeout and its backend exists: the next new flow goes to that backend.
    pub const ACTIVE: &str = "active";
    /// Past the timeout: the next new flow is selected afresh (and remembered again).
    pub const EXPIRED: &str = "expired";
    /// The remembered backend no longer exists: selected afresh.
    pub const BACKEND_GONE: &str = "backend-gone";
    /// Its frontend entry is gone or no longer has affinity: never used again (the LRU map
    /// evicts it in time).
    pub const UNUSED: &str = "unused";
}

/// One client remembered by `sessionAffinity: ClientIP`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AffinityRow {
    pub client_address: Ipv4Addr,
    /// The Service of the frontend entry; `None` when the entry is gone or has no metadata.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// The frontend entry (`service_id`); `None` when it is gone.
    pub frontend_address: Option<Ipv4Addr>,
    pub frontend_port: Option<u16>,
    pub protocol: Option<String>,
    pub scope: Option<&'static str>,
    pub service_id: u32,
    pub backend_id: u32,
    /// `None` when the backend is gone.
    pub backend_address: Option<Ipv4Addr>,
    pub backend_port: Option<u16>,
    /// The entry's `timeoutSeconds`; `None` when the frontend entry is gone, 0 when it no
    /// longer has affinity.
    pub timeout_seconds: Option<u32>,
    /// Seconds since the client's last new flow, from which the timeout counts.
    pub idle_seconds: f64,
    pub state: &'static str,
}

impl AffinityRow {
    pub fn service(&self) -> String {
        service_label(&self.namespace, &self.name)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AffinityCounts {
    /// Entries in `SLUICE_AFFINITY4`.
    pub entries: u64,
    /// Entries that pass the filters.
    pub matched: u64,
    /// Matched entries per state.
    pub by_state: BTreeMap<&'static str, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct AffinityView {
    pub counts: AffinityCounts,
    pub entries: Vec<AffinityRow>,
}

/// `inspect affinity`: remembered clients, optionally of one Service or client; `None` when
/// the datapath has no affinity map.
pub fn affinity(
    c: &Contents,
    service: Option<&ServiceRef>,
    client: Option<Ipv4Addr>,
) -> Option<AffinityView> {
    let entries = c.affinity.as_ref()?;
    let by_id: BTreeMap<u32, (&ServiceKey, &ServiceValue)> =
        c.services.iter().map(|(k, v)| (v.id, (k, v))).collect();
    let mut counts = AffinityCounts {
        entries: entries.len() as u64,
        ..AffinityCounts::default()
    };
    let mut rows: Vec<AffinityRow> = entries
        .iter()
        .filter(|(k, _)| client.is_none_or(|want| ip(k.client) == want))
        .map(|(k, v)| affinity_row(k, v, by_id.get(&k.service_id).copied(), c))
        .filter(|row| {
            service.is_none_or(|s| {
                row.namespace.as_deref() == Some(s.namespace.as_str())
                    && row.name.as_deref() == Some(s.name.as_str())
            })
        })
        .collect();
    for row in &rows {
        counts.matched += 1;
        *counts.by_state.entry(row.state).or_default() += 1;
    }
    rows.sort_by(|a, b| {
        (
            &a.namespace,
            &a.name,
            a.frontend_address,
            a.frontend_port,
            a.client_address,
        )
            .cmp(&(
                &b.namespace,
                &b.name,
                b.frontend_address,
                b.frontend_port,
                b.client_address,
            ))
    });
    Some(AffinityView {
        counts,
        entries: rows,
    })
}

fn affinity_row(
    key: &AffinityKey,
    value: &AffinityValue,
    frontend: Option<(&ServiceKey, &ServiceValue)>,
    c: &Contents,
) -> AffinityRow {
    let idle_ns = c.now_ns.saturating_sub(value.last_used_ns);
    let backend = c.backends.get(&value.backend_id);
    let timeout = frontend.map(|(_, v)| v.affinity_timeout);
    // In the order the datapath checks them (proxy-ebpf's select.rs).
    let state = match timeout {
        None | Some(0) => affinity_state::UNUSED,
        Some(t) if idle_ns > u64::from(t) * 1_000_000_000 => affinity_state::EXPIRED,
        Some(_) if backend.is_none() => affinity_state::BACKEND_GONE,
        Some(_) => affinity_state::ACTIVE,
    };
    let (namespace, name) = owner(frontend.and_then(|(k, _)| c.meta.get(k)));
    AffinityRow {
        client_address: ip(key.client),
        namespace,
        name,
        frontend_address: frontend.map(|(k, _)| ip(k.addr)),
        frontend_port: frontend.map(|(k, _)| u16::from_be(k.port)),
        protocol: frontend.map(|(k, _)| protocol_name(k.proto)),
        scope: frontend.map(|(k, _)| scope_name(k.scope)),
        service_id: key.service_id,
        backend_id: value.backend_id,
        backend_address: backend.map(|b| ip(b.addr)),
        backend_port: backend.map(|b| u16::from_be(b.port)),
        timeout_seconds: timeout,
        idle_seconds: (idle_ns / 1_000_000) as f64 / 1000.0,
        state,
    }
}

/// The algorithms of a Service's frontend entries (`None`: it has none), for `inspect maglev`.
pub fn algorithms(c: &Contents, which: &ServiceRef) -> Option<BTreeSet<String>> {
    let names: BTreeSet<String> = c
        .services
        .iter()
        .filter(|(k, _)| {
            c.meta.get(k).is_some_and(|m| {
                text(&m.namespace) == which.namespace && text(&m.name) == which.name
            })
        })
        .map(|(_, v)| algorithm_name(v.algorithm))
        .collect();
    (!names.is_empty()).then_some(names)
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CounterRow {
    pub counter: &'static str,
    pub packets: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DropRow {
    pub reason: &'static str,
    pub packets: u64,
    /// `dropped` (silently) or `refused` (answered with a TCP reset or ICMP unreachable).
    pub action: &'static str,
    pub meaning: &'static str,
}

/// The counters that count packets the datapath did not forward, and why. They overlap:
/// a packet to a frontend without endpoints counts under `drop_no_backend` and then under how
/// it was handled (`drop_local_policy`, or a refusal: `reject_tcp`, `reject_udp`,
/// `drop_unrejectable`); a packet to an unknown port counts under `reject_unknown_port` and
/// under its refusal.
pub const DROP_REASONS: [(&str, &str, &str); 9] = [
    (
        "drop_no_backend",
        "dropped or refused",
        "to a frontend without a usable endpoint (then counted by how it was handled)",
    ),
    (
        "drop_local_policy",
        "dropped",
        "no endpoint because a Local traffic policy leaves this node without one",
    ),
    (
        "reject_unknown_port",
        "refused",
        "to a Service address on a port no Service has (then counted by how it was refused)",
    ),
    ("reject_tcp", "refused", "answered with a TCP reset"),
    (
        "reject_udp",
        "refused",
        "answered with ICMP port unreachable",
    ),
    (
        "drop_unrejectable",
        "dropped",
        "a refusal could not be built (IP options, or a reset answering a reset)",
    ),
    (
        "drop_source_range",
        "dropped",
        "new flow from a client outside loadBalancerSourceRanges",
    ),
    (
        "drop_snat_failed",
        "dropped",
        "no route to the backend, or no free source port for SNAT",
    ),
    (
        "drop_bad_slot",
        "dropped",
        "the chosen slot or backend is missing from the maps",
    ),
];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FrontendTraffic {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub port_name: Option<String>,
    pub kind: &'static str,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

impl FrontendTraffic {
    pub fn service(&self) -> String {
        service_label(&self.namespace, &self.name)
    }
}

/// A Service's traffic: the sum over its frontends.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ServiceTraffic {
    pub namespace: String,
    pub name: String,
    /// Frontends that have seen traffic.
    pub frontends: u32,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BackendTraffic {
    /// `None` for a backend no longer in `SLUICE_BACKENDS4` (its counters are pruned at the
    /// next full sync).
    pub id: Option<u32>,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: String,
    #[serde(flatten)]
    pub traffic: Traffic,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MapFillRow {
    pub map: &'static str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `None` for arrays, whose elements always all exist.
    pub entries: Option<u64>,
    pub capacity: u32,
    /// `entries / capacity`, 0 to 1.
    pub fill: Option<f64>,
}

impl From<&MapFill> for MapFillRow {
    fn from(m: &MapFill) -> Self {
        Self {
            map: m.map,
            kind: m.kind,
            entries: m.entries,
            capacity: m.capacity,
            fill: m
                .entries
                .map(|e| crate::observe::metrics::pressure(e, m.capacity.into())),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StatsView {
    pub counters: Vec<CounterRow>,
    pub drops: Vec<DropRow>,
    pub services: Vec<ServiceTraffic>,
    pub frontends: Vec<FrontendTraffic>,
    pub backends: Vec<BackendTraffic>,
    pub maps: Vec<MapFillRow>,
}

/// `inspect stats`.
pub fn stats(c: &Contents) -> StatsView {
    let counter = |name: &str| {
        c.counters
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, v)| *v)
    };
    let mut frontends: Vec<(&ServiceKey, &TrafficCounters)> = c.frontend_traffic.iter().collect();
    frontends.sort_by_cached_key(|(k, _)| frontend_order(k, c.meta.get(k)));
    // Frontends without metadata cannot be attributed; they still show per frontend.
    let mut services: BTreeMap<(String, String), ServiceTraffic> = BTreeMap::new();
    for (k, t) in &c.frontend_traffic {
        let (Some(namespace), Some(name)) = owner(c.meta.get(k)) else {
            continue;
        };
        let entry = services
            .entry((namespace.clone(), name.clone()))
            .or_insert_with(|| ServiceTraffic {
                namespace,
                name,
                frontends: 0,
                traffic: Traffic::default(),
            });
        entry.frontends += 1;
        entry.traffic.forward_packets += t.forward_packets;
        entry.traffic.forward_bytes += t.forward_bytes;
        entry.traffic.reply_packets += t.reply_packets;
        entry.traffic.reply_bytes += t.reply_bytes;
    }
    let ids: BTreeMap<&Backend, u32> = c.backends.iter().map(|(id, b)| (b, *id)).collect();
    let mut backends: Vec<(&Backend, &TrafficCounters)> = c.backend_traffic.iter().collect();
    backends.sort_by_key(|(b, _)| backend_order(b));
    StatsView {
        counters: c
            .counters
            .iter()
            .map(|&(counter, packets)| CounterRow { counter, packets })
            .collect(),
        drops: DROP_REASONS
            .iter()
            .map(|&(reason, action, meaning)| DropRow {
                reason,
                packets: counter(reason),
                action,
                meaning,
            })
            .collect(),
        services: services.into_values().collect(),
        frontends: frontends
            .into_iter()
            .map(|(k, t)| {
                let meta = c.meta.get(k);
                let (namespace, name) = owner(meta);
                FrontendTraffic {
                    namespace,
                    name,
                    port_name: meta.map(|m| text(&m.port_name)).filter(|p| !p.is_empty()),
                    kind: meta.map_or("unknown", |m| kind_name(m.kind)),
                    address: ip(k.addr),
                    port: u16::from_be(k.port),
                    protocol: protocol_name(k.proto),
                    traffic: (*t).into(),
                }
            })
            .collect(),
        backends: backends
            .into_iter()
            .map(|(b, t)| BackendTraffic {
                id: ids.get(b).copied(),
                address: ip(b.addr),
                port: u16::from_be(b.port),
                protocol: protocol_name(b.proto),
                traffic: (*t).into(),
            })
            .collect(),
        maps: c.fill.iter().map(MapFillRow::from).collect(),
    }
}
