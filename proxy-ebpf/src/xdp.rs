//! The XDP fast path on the node's external interfaces: NodePort, load-balancer and external
//! IP traffic is translated and redirected to the backend's interface before the kernel
//! allocates an skb. Whatever XDP cannot finish on its own — a flow that must be masqueraded,
//! a refusal, a neighbour not resolved yet, a reply — passes untouched to the tc program, which
//! handles every case: XDP decides first and writes only when it will also send.

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action::XDP_PASS},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_ns, bpf_redirect},
    macros::xdp,
    programs::XdpContext,
};
use proxy_common::{Backend, PROTO_TCP, PROTO_UDP, ct_dir, ct_flags, scope, service_flags, stat};

use crate::{
    backend_still_serves, conntrack, frontend,
    maps::{CONNTRACK, count, count_traffic, source_allowed},
    packet::{ETH_HLEN, Flow, IPV4_CSUM_OFF, IPV4_DADDR_OFF},
    route::FIB_SCRATCH,
    select, snat, track,
};

const ETH_P_IP: u16 = 0x0800;
const AF_INET: u8 = 2;
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

#[xdp]
pub fn sluice_xdp(ctx: XdpContext) -> u32 {
    match try_xdp(&ctx) {
        Ok(action) => action,
        Err(()) => XDP_PASS,
    }
}

fn try_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let Some(flow) = parse(ctx)? else {
        return Ok(XDP_PASS);
    };
    // A reply, or anything else that is no frontend's, is the tc program's business.
    if CONNTRACK.get_ptr(flow.ct_key(ct_dir::REPLY)).is_some() {
        return Ok(XDP_PASS);
    }
    let Some((svc_key, svc)) = frontend(&flow) else {
        return Ok(XDP_PASS);
    };
    if svc.count == 0
        || (svc.flags & service_flags::SOURCE_RANGES != 0 && !source_allowed(&svc_key, flow.saddr))
    {
        return Ok(to_tc());
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let fwd_key = flow.ct_key(ct_dir::FORWARD);
    let tracked = CONNTRACK.get_ptr_mut(fwd_key);
    let (backend_id, backend, new) = match tracked {
        // SAFETY: an LRU element, valid for this invocation.
        Some(entry) if usable(unsafe { &*entry }, &flow, now) => {
            // SAFETY: as above.
            let entry = unsafe { &*entry };
            if entry.flags & ct_flags::SNAT != 0 {
                return Ok(to_tc());
            }
            let backend = Backend {
                addr: entry.nat_addr,
                port: entry.nat_port,
                proto: flow.proto,
                flags: 0,
            };
            (entry.backend_id, backend, false)
        }
        _ => {
            let Some((id, backend)) =
                select::remembered(&flow, &svc, now).or_else(|| select::by_algorithm(&flow, &svc))
            else {
                return Ok(to_tc());
            };
            if snat::needed(&flow, &svc, &backend) {
                return Ok(to_tc());
            }
            (id, backend, true)
        }
    };
    let Some(next_hop) = route(ctx, &flow, backend.addr)? else {
        return Ok(to_tc());
    };

    // From here on the packet is sent by XDP: record the flow, then rewrite and redirect.
    if new {
        track(&flow, &backend, backend_id, &svc, now);
        select::remember(&flow, &svc, backend_id, now);
        count(stat::DNAT_NEW_FLOW);
    } else {
        if let Some(entry) = tracked {
            // SAFETY: as above.
            conntrack::touch(unsafe { &mut *entry }, &flow, now);
        }
        count(stat::DNAT_TRACKED);
    }
    count_traffic(
        &svc_key.with_scope(scope::ANY),
        &backend,
        (ctx.data_end() - ctx.data()) as u32,
        false,
    );
    rewrite_destination(ctx, &flow, backend.addr, backend.port)?;
    forward(ctx, next_hop)
}

#[inline(always)]
fn to_tc() -> u32 {
    count(stat::XDP_TO_TC);
    XDP_PASS
}

#[inline(always)]
fn usable(entry: &proxy_common::CtValue, flow: &Flow, now: u64) -> bool {
    conntrack::still_valid(entry, flow, now, conntrack::lifetimes()) && backend_still_serves(entry)
}

/// Reads a `T` at `offset` of the frame, if it is that long.
#[inline(always)]
fn at<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

#[inline(always)]
fn get<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    // SAFETY: bounds checked by `at`; headers may sit at any alignment.
    Ok(unsafe { core::ptr::read_unaligned(at::<T>(ctx, offset)?) })
}

#[inline(always)]
fn put<T>(ctx: &XdpContext, offset: usize, value: T) -> Result<(), ()> {
    // SAFETY: bounds checked by `at`.
    unsafe { core::ptr::write_unaligned(at::<T>(ctx, offset)?, value) };
    Ok(())
}

/// An unfragmented IPv4 TCP/UDP packet, or `None`.
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Flow>, ()> {
    if u16::from_be(get::<u16>(ctx, 12)?) != ETH_P_IP {
        return Ok(None);
    }
    let version_ihl: u8 = get(ctx, ETH_HLEN)?;
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    if version_ihl >> 4 != 4 || ihl < 20 {
        return Ok(None);
    }
    if u16::from_be(get::<u16>(ctx, ETH_HLEN + 6)?) & IP_MF_OFFSET_MASK != 0 {
        return Ok(None);
    }
    let proto: u8 = get(ctx, ETH_HLEN + 9)?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(None);
    }
    let l4_off = ETH_HLEN + ihl;
    Ok(Some(Flow {
        saddr: get(ctx, ETH_HLEN + 12)?,
        daddr: get(ctx, IPV4_DADDR_OFF)?,
        sport: get(ctx, l4_off)?,
        dport: get(ctx, l4_off + 2)?,
        proto,
        tcp_flags: if proto == PROTO_TCP {
            get(ctx, l4_off + 13)?
        } else {
            0
        },
        l4_off,
    }))
}

/// The next hop toward `backend` if the FIB resolves it completely (neighbour included);
/// anything less is left to the tc program and the stack.
#[inline(always)]
fn route(
    ctx: &XdpContext,
    flow: &Flow,
    backend: u32,
) -> Result<Option<&'static bpf_fib_lookup>, ()> {
    let params = FIB_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's own scratch element.
    let params = unsafe { &mut *params };
    // SAFETY: all-zero is a valid bpf_fib_lookup.
    *params = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_1.tot_len = u16::from_be(get::<u16>(ctx, ETH_HLEN + 2)?);
    params.__bindgen_anon_3.ipv4_src = flow.saddr;
    params.__bindgen_anon_4.ipv4_dst = backend;
    // SAFETY: `params` is a live map value of the size passed.
    let ret = unsafe {
        fib_lookup(
            ctx.ctx.cast(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    Ok((ret == i64::from(BPF_FIB_LKUP_RET_SUCCESS)).then_some(&*params))
}

/// Rewrites the destination address and port, updating the IP and L4 checksums by RFC 1624
/// (XDP has no checksum helpers). A UDP datagram without a checksum keeps none.
#[inline(always)]
fn rewrite_destination(ctx: &XdpContext, flow: &Flow, addr: u32, port: u16) -> Result<(), ()> {
    let ip_check: u16 = get(ctx, IPV4_CSUM_OFF)?;
    put(ctx, IPV4_CSUM_OFF, replace32(ip_check, flow.daddr, addr))?;
    put(ctx, IPV4_DADDR_OFF, addr)?;
    let check_off = flow.l4_csum_off();
    let l4_check: u16 = get(ctx, check_off)?;
    if flow.proto == PROTO_TCP || l4_check != 0 {
        let updated = replace16(replace32(l4_check, flow.daddr, addr), flow.dport, port);
        // UDP sends 0 for "no checksum", so a computed 0 is written as its equivalent 0xffff.
        let updated = if flow.proto == PROTO_UDP && updated == 0 {
            0xffff
        } else {
            updated
        };
        put(ctx, check_off, updated)?;
    }
    put(ctx, flow.l4_off + 2, port)
}

/// Decrements the TTL, sets the next hop's MACs and redirects.
#[inline(always)]
fn forward(ctx: &XdpContext, next_hop: &bpf_fib_lookup) -> Result<u32, ()> {
    let ttl_proto: [u8; 2] = get(ctx, ETH_HLEN + 8)?;
    if ttl_proto[0] <= 1 {
        return Ok(to_tc());
    }
    let decremented = [ttl_proto[0] - 1, ttl_proto[1]];
    let ip_check: u16 = get(ctx, IPV4_CSUM_OFF)?;
    put(
        ctx,
        IPV4_CSUM_OFF,
        replace16(
            ip_check,
            u16::from_ne_bytes(ttl_proto),
            u16::from_ne_bytes(decremented),
        ),
    )?;
    put(ctx, ETH_HLEN + 8, decremented)?;
    put(ctx, 0, next_hop.dmac)?;
    put(ctx, 6, next_hop.smac)?;
    count(stat::XDP_REDIRECT);
    // SAFETY: plain helper call; the redirect happens when the program returns.
    let verdict = unsafe { bpf_redirect(next_hop.ifindex, 0) };
    Ok(verdict as u32)
}

/// One's-complement sum folded to 16 bits.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// A checksum after one 16-bit word changed from `old` to `new` (RFC 1624, eqn. 3). Values
/// are as stored in the packet; the one's-complement sum does not depend on byte order.
#[inline(always)]
fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

#[inline(always)]
fn replace32(check: u16, old: u32, new: u32) -> u16 {
    let check = replace16(check, old as u16, new as u16);
    replace16(check, (old >> 16) as u16, (new >> 16) as u16)
}
