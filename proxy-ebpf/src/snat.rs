//! Source NAT of new flows to a node address, for flows whose replies would otherwise not come
//! back through this node: external clients of a Service whose endpoint may be on another node
//! (`externalTrafficPolicy: Cluster`), and hairpin (a backend reaching its own Service and
//! being chosen, which would otherwise receive a packet from itself).

use aya_ebpf::{
    bindings::{BPF_FIB_LOOKUP_SRC, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
};
use proxy_common::{
    Backend, CtKey, CtValue, ServiceValue, config_flags, ct_dir, ct_flags, service_flags,
    snat_ports, stat,
};

use crate::{
    conntrack,
    maps::{CONNTRACK, count, is_local_source},
    nat,
    packet::Flow,
    route, trace,
};
use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};

/// Ports tried before giving up on a full range.
const PORT_TRIES: u32 = 32;

/// Whether a new flow to `backend` must be source-NATed.
#[inline(always)]
pub fn needed(flow: &Flow, svc: &ServiceValue, backend: &Backend) -> bool {
    if flow.saddr == backend.addr {
        return true;
    }
    if conntrack::lifetimes().flags & config_flags::MASQUERADE_ALL != 0 {
        return true;
    }
    svc.flags & service_flags::MASQUERADE_EXTERNAL != 0 && !is_local_source(flow.saddr)
}

/// A new flow and the backend chosen for it.
pub struct NewFlow<'a> {
    pub flow: &'a Flow,
    pub fwd_key: &'a CtKey,
    pub backend: &'a Backend,
    pub backend_id: u32,
    pub svc: &'a ServiceValue,
    pub now: u64,
}

/// Translates the first packet of a new flow to its backend with a node address and a free
/// port as its source, records both directions, and sends it on; the tc verdict. Not inlined
/// (hence one argument struct: BPF calls take at most five), to keep its locals out of the
/// main stack frame.
#[inline(never)]
pub fn new_flow(ctx: &TcContext, new: &NewFlow) -> Result<i32, ()> {
    let NewFlow {
        flow,
        fwd_key,
        backend,
        backend_id,
        svc,
        now,
    } = *new;
    // The source the node itself would use toward the backend; its route is needed anyway,
    // since a packet with a node address as source cannot go back through the stack.
    let Some(next_hop) = route::lookup(ctx, 0, backend.addr, BPF_FIB_LOOKUP_SRC)? else {
        count(stat::DROP_SNAT_FAILED);
        return Ok(TC_ACT_SHOT);
    };
    // SAFETY: with BPF_FIB_LOOKUP_SRC the kernel fills the IPv4 source of this union.
    let node_addr = unsafe { next_hop.__bindgen_anon_3.ipv4_src };
    let base = CtValue {
        nat_addr: backend.addr,
        nat_port: backend.port,
        flags: ct_flags::SNAT | ct_flags::ROUTE_REPLIES,
        backend_id,
        service_id: svc.id,
        last_seen_ns: now,
        rev_addr: node_addr,
        rev_port: 0,
        _pad: 0,
    };
    let node_port = if trace::tracing() {
        // A trace claims nothing: it shows the first port of the range, not necessarily the
        // one a real flow would get.
        snat_ports::MIN.to_be()
    } else {
        let Some(port) = reserve_port(flow, backend, node_addr, &base) else {
            count(stat::DROP_SNAT_FAILED);
            return Ok(TC_ACT_SHOT);
        };
        let forward = CtValue {
            rev_port: port,
            ..base
        };
        if CONNTRACK.insert(fwd_key, forward, 0).is_err() {
            count(stat::CT_INSERT_FAILED);
        }
        port
    };
    if let Some(r) = trace::record() {
        r.snat_addr = node_addr;
        r.snat_port = node_port;
    }
    nat::rewrite_destination(ctx, flow, backend.addr, backend.port)?;
    nat::rewrite_source(ctx, flow, node_addr, node_port)?;
    count(stat::SNAT_NEW_FLOW);
    route::send(ctx, next_hop)
}

/// Claims a source port on `node_addr` toward the backend by inserting the flow's reply entry
/// only if no other flow holds that tuple; returns the port (network byte order).
#[inline(always)]
fn reserve_port(flow: &Flow, backend: &Backend, node_addr: u32, base: &CtValue) -> Option<u16> {
    let reply = CtValue {
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        rev_addr: flow.saddr,
        rev_port: flow.sport,
        ..*base
    };
    let range = u32::from(snat_ports::MAX - snat_ports::MIN) + 1;
    // SAFETY: plain helper call.
    let start = unsafe { bpf_get_prandom_u32() };
    for i in 0..PORT_TRIES {
        let port = snat_ports::MIN + (start.wrapping_add(i) % range) as u16;
        let key = CtKey {
            saddr: backend.addr,
            daddr: node_addr,
            sport: backend.port,
            dport: port.to_be(),
            proto: flow.proto,
            dir: ct_dir::REPLY,
            _pad: 0,
        };
        // NOEXIST makes the claim atomic: two CPUs picking the same port cannot both win.
        if CONNTRACK.insert(key, reply, u64::from(BPF_NOEXIST)).is_ok() {
            return Some(port.to_be());
        }
        // A port held by a flow past its lifetime is free again. Deleting it and claiming it
        // with NOEXIST keeps the claim atomic should another CPU reclaim it at the same time.
        // SAFETY: the value is read at once, within this program invocation.
        let stale = unsafe { CONNTRACK.get(key) }.is_some_and(|held| {
            conntrack::expired(held, flow.proto, base.last_seen_ns, conntrack::lifetimes())
        });
        if stale
            && CONNTRACK.remove(key).is_ok()
            && CONNTRACK.insert(key, reply, u64::from(BPF_NOEXIST)).is_ok()
        {
            return Some(port.to_be());
        }
    }
    None
}
