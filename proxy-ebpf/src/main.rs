//! Sluice's datapath: service DNAT, connection tracking and reverse NAT at tc.
#![no_std]
#![no_main]

mod conntrack;
mod icmp;
mod maps;
mod nat;
mod packet;
mod reject;
mod route;
mod select;
mod snat;
mod trace;
mod xdp;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::classifier,
    programs::TcContext,
};
use proxy_common::{
    Backend, CtKey, CtValue, ServiceKey, ServiceValue, ct_dir, ct_flags, scope, service_flags,
    stat, trace_step,
};

use crate::{
    maps::{
        BACKENDS, CONNTRACK, SERVICES, VIPS, count, count_traffic, is_local_source, source_allowed,
    },
    packet::{Flow, Parsed},
};

/// Attached at tc ingress of every node interface Sluice serves: translates client → frontend
/// packets to a backend and backend → client replies back to the frontend.
#[classifier]
pub fn sluice_tc_ingress(ctx: TcContext) -> i32 {
    count(stat::PACKETS_SEEN);
    // A packet Sluice cannot parse is not Sluice's business: hand it to the stack untouched.
    match handle(&ctx) {
        Ok(action) => action,
        Err(()) => TC_ACT_OK,
    }
}

// The packet path is split into functions the compiler must not inline: each gets its own
// stack frame, and the verifier caps the frames along any call chain at 512 bytes, which one
// frame holding every path's locals at once exceeds.

fn handle(ctx: &TcContext) -> Result<i32, ()> {
    let flow = match Flow::parse(ctx)? {
        Parsed::Flow(flow) => flow,
        Parsed::Icmp { l4_off } => return icmp::reverse_nat_error(ctx, l4_off),
        Parsed::Other => return Ok(TC_ACT_OK),
    };
    // Replies are checked first: a backend's answer must be recognised even if the backend
    // address is itself a frontend of some other Service.
    if let Some(verdict) = reply(ctx, &flow)? {
        return Ok(verdict);
    }
    match to_frontend(ctx, &flow)? {
        Next::Verdict(verdict) => Ok(verdict),
        next => masquerade(ctx, &flow, &next),
    }
}

/// Starts a masqueraded flow (`Next::Masquerade`).
#[inline(never)]
fn masquerade(ctx: &TcContext, flow: &Flow, next: &Next) -> Result<i32, ()> {
    let Next::Masquerade {
        backend_id,
        backend,
        svc,
        now,
    } = next
    else {
        return Ok(TC_ACT_OK);
    };
    let fwd_key = flow.ct_key(ct_dir::FORWARD);
    let new = snat::NewFlow {
        flow,
        fwd_key: &fwd_key,
        backend,
        backend_id: *backend_id,
        svc,
        now: *now,
    };
    snat::new_flow(ctx, &new)
}

/// What `to_frontend` leaves to its caller.
enum Next {
    Verdict(i32),
    /// A new flow to `backend` that must be source-NATed.
    Masquerade {
        backend_id: u32,
        backend: Backend,
        svc: ServiceValue,
        now: u64,
    },
}

/// Reverse translation of a tracked flow's reply; `None` if `flow` is not one.
#[inline(never)]
fn reply(ctx: &TcContext, flow: &Flow) -> Result<Option<i32>, ()> {
    let flow = *flow;
    let reply_key = flow.ct_key(ct_dir::REPLY);
    if let Some(entry) = CONNTRACK.get_ptr_mut(reply_key) {
        // SAFETY: the pointer comes from a successful lookup in an LRU map and is only used
        // within this program invocation (RCU protects the element until we return).
        let entry = unsafe { &mut *entry };
        let now = unsafe { bpf_ktime_get_ns() };
        if let Some(r) = trace::record() {
            r.steps |= trace_step::REPLY;
            r.conntrack = *entry;
        } else {
            conntrack::touch(entry, &flow, now);
            if entry.flags & ct_flags::SEEN_REPLY == 0 || flow.is_closing() {
                entry.flags |= ct_flags::SEEN_REPLY;
                mark_forward_entry(&flow, entry, now);
            }
        }
        nat::rewrite_source(ctx, &flow, entry.nat_addr, entry.nat_port)?;
        let mut client = flow.daddr;
        if entry.flags & ct_flags::SNAT != 0 {
            nat::rewrite_destination(ctx, &flow, entry.rev_addr, entry.rev_port)?;
            client = entry.rev_addr;
        }
        count(stat::REVERSE_NAT);
        count_traffic(
            &ServiceKey::new(entry.nat_addr, entry.nat_port, flow.proto),
            &Backend {
                addr: flow.saddr,
                port: flow.sport,
                proto: flow.proto,
                flags: 0,
            },
            ctx.len(),
            true,
        );
        if entry.flags & ct_flags::ROUTE_REPLIES != 0 {
            return Ok(Some(route::forward(ctx, entry.nat_addr, client)));
        }
        return Ok(Some(TC_ACT_OK));
    }
    Ok(None)
}

/// A packet that is not a reply: to a frontend (or a Service address), or none of Sluice's
/// business.
#[inline(never)]
fn to_frontend(ctx: &TcContext, flow: &Flow) -> Result<Next, ()> {
    let flow = *flow;
    let Some((svc_key, svc)) = frontend(&flow) else {
        // SAFETY: only the presence of the key is used.
        if unsafe { VIPS.get(flow.daddr) }.is_some() {
            count(stat::REJECT_UNKNOWN_PORT);
            trace::step(trace_step::UNKNOWN_PORT | trace_step::REFUSED);
            return Ok(Next::Verdict(reject::refuse(ctx, &flow)));
        }
        trace::step(trace_step::NOT_A_SERVICE);
        return Ok(Next::Verdict(TC_ACT_OK));
    };
    if let Some(r) = trace::record() {
        r.steps |= trace_step::FRONTEND;
        r.frontend = svc_key;
        r.service = svc;
    }
    if svc.count == 0 {
        count(stat::DROP_NO_BACKEND);
        if svc.flags & service_flags::DROP_WHEN_EMPTY != 0 {
            count(stat::DROP_LOCAL_POLICY);
            trace::step(trace_step::EMPTY | trace_step::DROPPED_LOCAL_POLICY);
            return Ok(Next::Verdict(TC_ACT_SHOT));
        }
        trace::step(trace_step::EMPTY | trace_step::REFUSED);
        return Ok(Next::Verdict(reject::refuse(ctx, &flow)));
    }

    let now = unsafe { bpf_ktime_get_ns() };
    let fwd_key = flow.ct_key(ct_dir::FORWARD);
    if let Some(entry) = CONNTRACK.get_ptr_mut(fwd_key) {
        let entry = unsafe { &mut *entry };
        if let Some(r) = trace::record() {
            r.conntrack = *entry;
        }
        if !conntrack::still_valid(entry, &flow, now, conntrack::lifetimes()) {
            count(stat::CT_EXPIRED);
            trace::step(trace_step::TRACKED_STALE);
        } else if backend_still_serves(entry) {
            trace::step(trace_step::TRACKED);
            if !trace::tracing() {
                conntrack::touch(entry, &flow, now);
            }
            nat::rewrite_destination(ctx, &flow, entry.nat_addr, entry.nat_port)?;
            count(stat::DNAT_TRACKED);
            count_traffic(
                &svc_key.with_scope(scope::ANY),
                &Backend {
                    addr: entry.nat_addr,
                    port: entry.nat_port,
                    proto: flow.proto,
                    flags: 0,
                },
                ctx.len(),
                false,
            );
            if entry.flags & ct_flags::SNAT != 0 {
                nat::rewrite_source(ctx, &flow, entry.rev_addr, entry.rev_port)?;
                return Ok(Next::Verdict(route::forward(
                    ctx,
                    entry.rev_addr,
                    entry.nat_addr,
                )));
            }
            return Ok(Next::Verdict(TC_ACT_OK));
        }
        // Expired, or the backend this flow was pinned to is gone: choose again rather than
        // send the packet into a black hole (kube-proxy's stale UDP conntrack problem).
        else {
            trace::step(trace_step::TRACKED_STALE);
        }
    }

    // kube-proxy's load-balancer firewall: checked when a flow starts, so a flow admitted
    // before its range was removed finishes.
    if svc.flags & service_flags::SOURCE_RANGES != 0 && !source_allowed(&svc_key, flow.saddr) {
        count(stat::DROP_SOURCE_RANGE);
        trace::step(trace_step::SOURCE_DENIED);
        return Ok(Next::Verdict(TC_ACT_SHOT));
    }

    // The controller deletes an old bank's slots (and unused backends) right after flipping
    // the master entry, so a packet that read the entry just before the flip can miss its
    // slot. The flip always precedes the deletion, so reading the entry again finds the new
    // bank complete: one retry closes the window.
    let chosen = select::remembered(&flow, &svc, now)
        .or_else(|| select::by_algorithm(&flow, &svc))
        .or_else(|| {
            let again = (unsafe { SERVICES.get(svc_key) }).copied()?;
            if again.count == 0 {
                return None;
            }
            select::by_algorithm(&flow, &again)
        });
    let Some((backend_id, backend)) = chosen else {
        count(stat::DROP_BAD_SLOT);
        return Ok(Next::Verdict(TC_ACT_SHOT));
    };
    select::remember(&flow, &svc, backend_id, now);
    if let Some(r) = trace::record() {
        r.backend_id = backend_id;
        r.backend = backend;
    }

    count_traffic(&svc_key.with_scope(scope::ANY), &backend, ctx.len(), false);
    if snat::needed(&flow, &svc, &backend) {
        trace::step(trace_step::MASQUERADE);
        // Returned rather than called from here, so that this function's frame is gone from
        // the stack while the masquerading code runs.
        return Ok(Next::Masquerade {
            backend_id,
            backend,
            svc,
            now,
        });
    }
    if !trace::tracing() {
        track(&flow, &backend, backend_id, &svc, now);
    }
    nat::rewrite_destination(ctx, &flow, backend.addr, backend.port)?;
    count(stat::DNAT_NEW_FLOW);
    Ok(Next::Verdict(TC_ACT_OK))
}

/// The frontend entry serving this packet's client, if the packet is for a frontend.
#[inline(always)]
pub(crate) fn frontend(flow: &Flow) -> Option<(ServiceKey, ServiceValue)> {
    let key = ServiceKey::new(flow.daddr, flow.dport, flow.proto);
    // SAFETY: the value is copied out at once, so a concurrent replacement by the controller
    // (the map is not preallocated, elements are freed after an RCU grace period) cannot
    // change it under us.
    let svc = (unsafe { SERVICES.get(key) }).copied()?;
    if svc.flags & service_flags::SPLIT_SCOPES == 0 {
        return Some((key, svc));
    }
    let client_scope = if is_local_source(flow.saddr) {
        trace::step(trace_step::SPLIT | trace_step::INTERNAL_CLIENT);
        scope::INTERNAL
    } else {
        trace::step(trace_step::SPLIT);
        scope::EXTERNAL
    };
    let key = key.with_scope(client_scope);
    let svc = (unsafe { SERVICES.get(key) }).copied()?;
    Some((key, svc))
}

/// Records on the forward entry that the backend answered (or is closing), so its lifetime
/// follows the connection's progress.
#[inline(always)]
fn mark_forward_entry(reply: &Flow, reply_entry: &CtValue, now: u64) {
    // A masqueraded flow's client is not the reply's destination (a node address) but the
    // one the reply entry remembers.
    let (client, client_port) = if reply_entry.flags & ct_flags::SNAT != 0 {
        (reply_entry.rev_addr, reply_entry.rev_port)
    } else {
        (reply.daddr, reply.dport)
    };
    let key = CtKey {
        saddr: client,
        daddr: reply_entry.nat_addr,
        sport: client_port,
        dport: reply_entry.nat_port,
        proto: reply.proto,
        dir: ct_dir::FORWARD,
        _pad: 0,
    };
    if let Some(forward) = CONNTRACK.get_ptr_mut(key) {
        // SAFETY: as for the reply entry above.
        let forward = unsafe { &mut *forward };
        forward.flags |= ct_flags::SEEN_REPLY | (reply_entry.flags & ct_flags::CLOSING);
        forward.last_seen_ns = now;
    }
}

pub(crate) fn backend_still_serves(entry: &CtValue) -> bool {
    match unsafe { BACKENDS.get(entry.backend_id) } {
        Some(b) => b.addr == entry.nat_addr && b.port == entry.nat_port,
        None => false,
    }
}

/// Records both directions of a new flow so later packets and replies skip selection. Not
/// inlined: its entries would otherwise enlarge the caller's stack frame.
#[inline(never)]
pub(crate) fn track(flow: &Flow, backend: &Backend, backend_id: u32, svc: &ServiceValue, now: u64) {
    let fwd_key = flow.ct_key(ct_dir::FORWARD);
    let flags = if svc.flags & service_flags::ROUTE_REPLIES != 0 {
        ct_flags::ROUTE_REPLIES
    } else {
        0
    };
    let forward = CtValue {
        nat_addr: backend.addr,
        nat_port: backend.port,
        flags,
        backend_id,
        service_id: svc.id,
        last_seen_ns: now,
        rev_addr: 0,
        rev_port: 0,
        _pad: 0,
    };
    let reply_key = CtKey {
        saddr: backend.addr,
        daddr: flow.saddr,
        sport: backend.port,
        dport: flow.sport,
        proto: flow.proto,
        dir: ct_dir::REPLY,
        _pad: 0,
    };
    let reply = CtValue {
        nat_addr: flow.daddr,
        nat_port: flow.dport,
        ..forward
    };
    // A failed insert still lets this packet through; the next packet retries the insert.
    if CONNTRACK.insert(reply_key, reply, 0).is_err()
        || CONNTRACK.insert(fwd_key, forward, 0).is_err()
    {
        count(stat::CT_INSERT_FAILED);
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
