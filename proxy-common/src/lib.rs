//! Map keys and values shared by the eBPF datapath and the controller.
//!
//! Every type is `#[repr(C)]` with explicit padding so that both sides agree on the byte
//! layout and hash keys never contain uninitialised bytes. Addresses and ports are stored in
//! network byte order, exactly as they appear in packets, so the datapath never swaps bytes.
#![no_std]

/// Names of the maps, as pinned under the pin directory.
pub mod map_names {
    pub const SERVICES: &str = "SLUICE_SVC4";
    pub const SLOTS: &str = "SLUICE_SLOTS";
    pub const BACKENDS: &str = "SLUICE_BACKENDS4";
    pub const CONNTRACK: &str = "SLUICE_CT4";
    pub const STATS: &str = "SLUICE_STATS";
    pub const CONFIG: &str = "SLUICE_CONFIG";
    pub const LOCAL_SOURCES: &str = "SLUICE_LOCAL4";
    pub const SOURCE_RANGES: &str = "SLUICE_SRC_RANGES4";
    pub const VIPS: &str = "SLUICE_VIPS4";
    pub const AFFINITY: &str = "SLUICE_AFFINITY4";
    pub const ROUND_ROBIN: &str = "SLUICE_RR";
    pub const META: &str = "SLUICE_META4";
    pub const FRONTEND_STATS: &str = "SLUICE_FE_STATS4";
    pub const BACKEND_STATS: &str = "SLUICE_BE_STATS4";
}

/// Default capacities; the controller can override each at load time.
pub mod capacity {
    pub const SERVICES: u32 = 262_144;
    pub const SLOTS: u32 = 2_097_152;
    pub const BACKENDS: u32 = 1_048_576;
    pub const CONNTRACK: u32 = 524_288;
    /// Prefixes that identify traffic from this cluster's pods (detectLocalMode).
    pub const LOCAL_SOURCES: u32 = 1024;
    /// `loadBalancerSourceRanges` entries over all frontends.
    pub const SOURCE_RANGES: u32 = 65_536;
    /// Service addresses (ClusterIPs, load-balancer and external IPs) that are not the node's.
    pub const VIPS: u32 = 262_144;
    /// Clients remembered for `sessionAffinity: ClientIP` (LRU).
    pub const AFFINITY: u32 = 262_144;
}

/// `SLUICE_AFFINITY4` key: a client of one frontend entry (by its service id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AffinityKey {
    pub client: u32,
    pub service_id: u32,
}

/// `SLUICE_AFFINITY4` value: the backend the client was sent to, and when it last opened a
/// flow (bpf_ktime_get_ns), from which `timeoutSeconds` counts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AffinityValue {
    pub backend_id: u32,
    pub _pad: u32,
    pub last_used_ns: u64,
}

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// A frontend: the address, port and protocol a client sends to, and which clients the entry
/// serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ServiceKey {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    /// One of [`scope`].
    pub scope: u8,
}

impl ServiceKey {
    /// The entry every packet to the frontend looks up first.
    pub const fn new(addr_be: u32, port_be: u16, proto: u8) -> Self {
        Self {
            addr: addr_be,
            port: port_be,
            proto,
            scope: scope::ANY,
        }
    }

    pub const fn with_scope(self, scope: u8) -> Self {
        Self { scope, ..self }
    }
}

/// Which clients a frontend entry serves. A frontend whose internal and external clients get
/// different endpoints (a `Local` traffic policy) has an [`ANY`](scope::ANY) entry flagged
/// [`SPLIT_SCOPES`](service_flags::SPLIT_SCOPES) and one entry per scope; every other frontend
/// has the `ANY` entry alone, so the common case costs one lookup.
pub mod scope {
    pub const ANY: u8 = 0;
    /// Clients Sluice detects as local (`detectLocalMode`): the cluster's pods.
    pub const INTERNAL: u8 = 1;
    /// Every other client.
    pub const EXTERNAL: u8 = 2;
}

/// Selection algorithms, as stored in [`ServiceValue::algorithm`].
pub mod algorithm {
    /// A uniformly random slot (kube-proxy's iptables/nftables behaviour).
    pub const RANDOM: u8 = 0;
    /// The next slot of a rotation shared by every CPU (`rr`).
    pub const ROUND_ROBIN: u8 = 1;
    /// A hash of the client address (`sh`): the same client, the same backend.
    pub const SOURCE_HASH: u8 = 2;
    /// Maglev consistent hashing (`mh`).
    pub const MAGLEV: u8 = 3;
}

/// Flags in [`ServiceValue::flags`].
pub mod service_flags {
    /// Reserved so that an all-zero value is never mistaken for a configured service.
    pub const PRESENT: u16 = 1 << 0;
    /// No usable endpoint: drop silently instead of refusing (TCP RST / ICMP unreachable).
    pub const DROP_WHEN_EMPTY: u16 = 1 << 1;
    /// Look the frontend up again with the client's scope (see [`scope`](super::scope)).
    pub const SPLIT_SCOPES: u16 = 1 << 2;
    /// The frontend's address may be the node's own (NodePort, load-balancer and external
    /// IPs): replies are routed by the datapath, since the stack drops packets arriving with
    /// one of its own addresses as source.
    pub const ROUTE_REPLIES: u16 = 1 << 3;
    /// Clients outside the cluster (not in `SLUICE_LOCAL4`) are source-NATed to the node.
    pub const MASQUERADE_EXTERNAL: u16 = 1 << 4;
    /// Only clients in the frontend's `SLUICE_SRC_RANGES4` entries may open flows.
    pub const SOURCE_RANGES: u16 = 1 << 5;
}

/// Where a frontend entry came from, for operators (`sluice inspect`); the datapath never
/// reads it. Strings are UTF-8, NUL-padded; Kubernetes caps namespaces and Service names at
/// 63 bytes and port names at 15, so they always fit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrontendMeta {
    pub namespace: [u8; 64],
    pub name: [u8; 64],
    pub port_name: [u8; 16],
    /// One of [`frontend_kind`].
    pub kind: u8,
    pub _pad: [u8; 3],
    /// `sessionAffinity: ClientIP` timeout in seconds; 0 without affinity.
    pub affinity_timeout: u32,
}

/// Values of [`FrontendMeta::kind`].
pub mod frontend_kind {
    pub const CLUSTER_IP: u8 = 0;
    pub const NODE_PORT: u8 = 1;
    pub const LOAD_BALANCER: u8 = 2;
    pub const EXTERNAL_IP: u8 = 3;
}

/// Traffic through a frontend or to a backend, per CPU (`SLUICE_FE_STATS4`, keyed by the
/// frontend's `ServiceKey` with scope `ANY`; `SLUICE_BE_STATS4`, keyed by the `Backend`).
/// Forward: client → backend; reply: backend → client.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    pub forward_packets: u64,
    pub forward_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
}

/// Key data of `SLUICE_SRC_RANGES4` (an LPM trie): a frontend, matched in full (the first 64
/// bits), then the client address, matched to the range's prefix length — so one lookup with
/// prefix length 96 answers "is this client in one of this frontend's ranges".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceRangeKey {
    pub vip: u32,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub saddr: u32,
}

impl SourceRangeKey {
    /// Bits of the frontend part, always matched in full.
    pub const FRONTEND_BITS: u32 = 64;
}

/// The master entry of a frontend.
///
/// The backend slots of a frontend live in two banks. The controller writes a new backend set
/// into the bank that is not live, then flips `bank` and `count` by replacing this one hash
/// element, which readers observe atomically: a packet sees either the whole old set or the
/// whole new set, never a mixture.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServiceValue {
    /// Identity of this frontend's backend set; keys its slots.
    pub id: u32,
    /// Number of backend slots in the live bank (0 means no usable endpoint).
    pub count: u32,
    /// The live bank, 0 or 1.
    pub bank: u8,
    pub algorithm: u8,
    pub flags: u16,
    /// `sessionAffinity: ClientIP` timeout in seconds; 0: no affinity.
    pub affinity_timeout: u32,
}

/// Key of one backend slot: `slot` counts from 0 within `bank` of frontend `service_id`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub service_id: u32,
    pub bank: u8,
    pub _pad: [u8; 3],
    pub slot: u32,
}

impl SlotKey {
    pub const fn new(service_id: u32, bank: u8, slot: u32) -> Self {
        Self {
            service_id,
            bank,
            _pad: [0; 3],
            slot,
        }
    }
}

/// A backend: where a frontend's traffic is sent. Keyed by a backend id (u32).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Backend {
    /// IPv4 address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub flags: u8,
}

/// Direction of a conntrack entry.
pub mod ct_dir {
    /// Client → frontend, as the client sent it.
    pub const FORWARD: u8 = 0;
    /// Backend → client, as the backend sent it.
    pub const REPLY: u8 = 1;
}

/// A flow as seen on the wire in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub dir: u8,
    pub _pad: u16,
}

/// Flags in [`CtValue::flags`].
pub mod ct_flags {
    /// A packet has been seen in the reply direction (the backend answered).
    pub const SEEN_REPLY: u16 = 1 << 0;
    /// A TCP FIN or RST has been seen: the connection is closing.
    pub const CLOSING: u16 = 1 << 1;
    /// Replies are routed by the datapath (see `service_flags::ROUTE_REPLIES`).
    pub const ROUTE_REPLIES: u16 = 1 << 2;
    /// The flow is source-NATed: `rev_addr:rev_port` is the node's address and port on a
    /// forward entry, the client's on a reply entry.
    pub const SNAT: u16 = 1 << 3;
}

/// Source ports the datapath allocates for source NAT: below the NodePort range and the
/// kernel's ephemeral ports, so they collide with neither.
pub mod snat_ports {
    pub const MIN: u16 = 10_000;
    pub const MAX: u16 = 29_999;
}

/// What to rewrite for a tracked flow.
///
/// For a forward entry `nat_addr:nat_port` is the chosen backend (rewrite the destination);
/// for a reply entry it is the frontend (rewrite the source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtValue {
    pub nat_addr: u32,
    pub nat_port: u16,
    pub flags: u16,
    pub backend_id: u32,
    pub service_id: u32,
    /// bpf_ktime_get_ns() of the last packet seen.
    pub last_seen_ns: u64,
    /// With [`ct_flags::SNAT`]: the other address/port to rewrite (see there).
    pub rev_addr: u32,
    pub rev_port: u16,
    pub _pad: u16,
}

/// Indexes into the global per-CPU counter array.
pub mod stat {
    pub const PACKETS_SEEN: u32 = 0;
    pub const DNAT_NEW_FLOW: u32 = 1;
    pub const DNAT_TRACKED: u32 = 2;
    pub const REVERSE_NAT: u32 = 3;
    /// Packets to a frontend without usable endpoints (refused or dropped, see below).
    pub const DROP_NO_BACKEND: u32 = 4;
    pub const DROP_BAD_SLOT: u32 = 5;
    pub const CT_INSERT_FAILED: u32 = 6;
    /// TCP to a frontend without usable endpoints, answered with a RST.
    pub const REJECT_TCP: u32 = 7;
    /// UDP to a frontend without usable endpoints, answered with ICMP port unreachable.
    pub const REJECT_UDP: u32 = 8;
    /// Dropped because a `Local` traffic policy leaves this node without an endpoint.
    pub const DROP_LOCAL_POLICY: u32 = 9;
    /// ICMP errors about a translated flow, translated back for the client.
    pub const ICMP_ERROR_RNAT: u32 = 10;
    /// Tracked flows found past their lifetime and selected afresh.
    pub const CT_EXPIRED: u32 = 11;
    /// A refusal could not be built (IP options, a reset answering a reset): dropped instead.
    pub const DROP_UNREJECTABLE: u32 = 12;
    /// New flows source-NATed to a node address (external clients, hairpin).
    pub const SNAT_NEW_FLOW: u32 = 13;
    /// New flows dropped: no route to the backend, or no free source port.
    pub const DROP_SNAT_FAILED: u32 = 14;
    /// New flows from a client outside the frontend's `loadBalancerSourceRanges`.
    pub const DROP_SOURCE_RANGE: u32 = 15;
    /// Packets to a Service address on a port no Service has, refused.
    pub const REJECT_UNKNOWN_PORT: u32 = 16;
    /// New flows sent to the backend a client's session affinity remembers.
    pub const AFFINITY_HIT: u32 = 17;
    /// Affinity entries found past their timeout (or their backend gone): chosen afresh.
    pub const AFFINITY_EXPIRED: u32 = 18;
    /// Packets the XDP program translated and sent straight to the backend's interface.
    pub const XDP_REDIRECT: u32 = 19;
    /// Packets for a frontend the XDP program left to the tc program (masquerading, refusing,
    /// an unresolved neighbour, a reply).
    pub const XDP_TO_TC: u32 = 20;
    pub const COUNT: u32 = 24;
}

/// What the datapath did with one packet, recorded by a *trace instance* of the program (loaded
/// with the global `TRACE` set, run with BPF_PROG_TEST_RUN by `sluice trace`). A trace instance
/// shares the live maps but writes none of them: conntrack, affinity, rotation positions and
/// counters are left exactly as they were; it writes only this record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TraceRecord {
    /// [`trace_step`] bits, in the order the packet met them.
    pub steps: u32,
    /// The slot the algorithm chose (with `trace_step::SELECTED`).
    pub slot: u32,
    /// The frontend entry that matched (scope included).
    pub frontend: ServiceKey,
    pub service: ServiceValue,
    pub backend_id: u32,
    pub backend: Backend,
    /// The tracked flow's entry (with `trace_step::TRACKED` or `trace_step::REPLY`).
    pub conntrack: CtValue,
    /// The node address and port a masqueraded flow would use (with `trace_step::MASQUERADE`).
    pub snat_addr: u32,
    pub snat_port: u16,
    pub _pad: u16,
}

/// Bits of [`TraceRecord::steps`].
pub mod trace_step {
    /// A reply of a tracked flow: translated back.
    pub const REPLY: u32 = 1 << 0;
    /// A frontend entry matched.
    pub const FRONTEND: u32 = 1 << 1;
    /// The frontend splits its scopes; the client was classified.
    pub const SPLIT: u32 = 1 << 2;
    /// ... as internal (in `SLUICE_LOCAL4`); external otherwise.
    pub const INTERNAL_CLIENT: u32 = 1 << 3;
    /// No usable endpoint.
    pub const EMPTY: u32 = 1 << 4;
    /// Dropped by a `Local` traffic policy.
    pub const DROPPED_LOCAL_POLICY: u32 = 1 << 5;
    /// Refused (TCP reset or ICMP port unreachable).
    pub const REFUSED: u32 = 1 << 6;
    /// Dropped: the client is outside the `loadBalancerSourceRanges`.
    pub const SOURCE_DENIED: u32 = 1 << 7;
    /// A tracked flow whose backend still serves: reused.
    pub const TRACKED: u32 = 1 << 8;
    /// A tracked flow found expired or its backend gone: selected afresh.
    pub const TRACKED_STALE: u32 = 1 << 9;
    /// Session affinity chose the backend.
    pub const AFFINITY: u32 = 1 << 10;
    /// The frontend's algorithm chose the backend.
    pub const SELECTED: u32 = 1 << 11;
    /// The new flow would be source-NATed.
    pub const MASQUERADE: u32 = 1 << 12;
    /// A ClusterIP on a port no Service has: refused.
    pub const UNKNOWN_PORT: u32 = 1 << 13;
    /// Not a packet for any frontend: passed to the stack untouched.
    pub const NOT_A_SERVICE: u32 = 1 << 14;
}

/// Settings the datapath reads at run time: element 0 of the `SLUICE_CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// TCP flows that have not been answered yet (SYN sent).
    pub tcp_syn_ns: u64,
    pub tcp_established_ns: u64,
    /// TCP flows after a FIN or RST.
    pub tcp_closing_ns: u64,
    /// UDP flows that have only sent.
    pub udp_ns: u64,
    /// UDP flows that have been answered.
    pub udp_stream_ns: u64,
    pub flags: u64,
}

/// Flags in [`DatapathConfig::flags`].
pub mod config_flags {
    /// `SLUICE_CONFIG` was written: without it the datapath uses built-in lifetimes.
    pub const SET: u64 = 1 << 0;
    /// kube-proxy's `masqueradeAll`: source-NAT every new flow.
    pub const MASQUERADE_ALL: u64 = 1 << 1;
}

/// Built-in conntrack lifetimes, as the kernel's netfilter defaults.
pub mod default_lifetime {
    const S: u64 = 1_000_000_000;
    pub const TCP_SYN_NS: u64 = 120 * S;
    pub const TCP_ESTABLISHED_NS: u64 = 86_400 * S;
    pub const TCP_CLOSING_NS: u64 = 120 * S;
    pub const UDP_NS: u64 = 30 * S;
    pub const UDP_STREAM_NS: u64 = 120 * S;
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), Copy, contain only integers and explicit padding, so
    // every bit pattern is valid and they have no uninitialised bytes.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for DatapathConfig {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for FrontendMeta {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for TraceRecord {}
    unsafe impl aya::Pod for TrafficCounters {}
}
