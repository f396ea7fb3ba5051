//! ICMP errors about translated flows. An error quotes the packet that caused it as that
//! packet was when it met the problem, i.e. after Sluice translated it; the other end only
//! recognises its own packet, so the quote (and the error's outer address) is translated back.
//!
//! - An error travelling to the client (say a backend's port unreachable) quotes
//!   client → backend: the quote's destination becomes the frontend again.
//! - An error travelling to the backend (say the client's port unreachable for a UDP reply)
//!   quotes frontend → client: the quote's source becomes the backend.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use proxy_common::{CtKey, PROTO_TCP, PROTO_UDP, ct_dir, ct_flags, stat};

use crate::{
    maps::{CONNTRACK, count},
    packet::{IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF},
    route,
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMP_HLEN: usize = 8;

/// Translates an ICMP error that quotes a tracked flow; anything else is left alone. Returns
/// the tc verdict. Not inlined, to keep its locals out of the main stack frame.
#[inline(never)]
pub fn reverse_nat_error(ctx: &TcContext, l4_off: usize) -> Result<i32, ()> {
    let kind: u8 = ctx.load(l4_off).map_err(|_| ())?;
    if kind != ICMP_DEST_UNREACH && kind != ICMP_TIME_EXCEEDED && kind != ICMP_PARAMETER_PROBLEM {
        return Ok(TC_ACT_OK);
    }
    let inner = l4_off + ICMP_HLEN;
    let version_ihl: u8 = ctx.load(inner).map_err(|_| ())?;
    if version_ihl >> 4 != 4 {
        return Ok(TC_ACT_OK);
    }
    let inner_l4 = inner + usize::from(version_ihl & 0x0f) * 4;
    let proto: u8 = ctx.load(inner + 9).map_err(|_| ())?;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(TC_ACT_OK);
    }
    let q_saddr: u32 = ctx.load(inner + 12).map_err(|_| ())?;
    let q_daddr: u32 = ctx.load(inner + 16).map_err(|_| ())?;
    let q_sport: u16 = ctx.load(inner_l4).map_err(|_| ())?;
    let q_dport: u16 = ctx.load(inner_l4 + 2).map_err(|_| ())?;
    // The quoted packet reversed is what the receiver of this error would send next: a reply
    // entry when the quote is client → backend, a forward entry when it is frontend → client.
    let mut key = CtKey {
        saddr: q_daddr,
        daddr: q_saddr,
        sport: q_dport,
        dport: q_sport,
        proto,
        dir: ct_dir::REPLY,
        _pad: 0,
    };
    let icmp_csum = l4_off + 2;
    if let Some(entry) = unsafe { CONNTRACK.get(key) } {
        let (vip, vip_port, flags) = (entry.nat_addr, entry.nat_port, entry.flags);
        let (client, client_port) = (entry.rev_addr, entry.rev_port);
        let mut outer_saddr: u32 = ctx.load(IPV4_SADDR_OFF).map_err(|_| ())?;
        if outer_saddr == q_daddr {
            replace_outer(ctx, IPV4_SADDR_OFF, q_daddr, vip)?;
            outer_saddr = vip;
        }
        replace_quoted(ctx, icmp_csum, inner, inner + 16, q_daddr, vip)?;
        replace_port(ctx, icmp_csum, inner_l4 + 2, q_dport, vip_port)?;
        let mut outer_daddr: u32 = ctx.load(IPV4_DADDR_OFF).map_err(|_| ())?;
        if flags & ct_flags::SNAT != 0 {
            // Masqueraded: the quote's source and the error's destination are the node's
            // address; the client's go back.
            if outer_daddr == q_saddr {
                replace_outer(ctx, IPV4_DADDR_OFF, q_saddr, client)?;
                outer_daddr = client;
            }
            replace_quoted(ctx, icmp_csum, inner, inner + 12, q_saddr, client)?;
            replace_port(ctx, icmp_csum, inner_l4, q_sport, client_port)?;
        }
        count(stat::ICMP_ERROR_RNAT);
        if flags & ct_flags::ROUTE_REPLIES != 0 {
            return Ok(route::forward(ctx, outer_saddr, outer_daddr));
        }
        return Ok(TC_ACT_OK);
    }
    key.dir = ct_dir::FORWARD;
    if let Some(entry) = unsafe { CONNTRACK.get(key) } {
        let (backend, backend_port, flags) = (entry.nat_addr, entry.nat_port, entry.flags);
        let (node, node_port) = (entry.rev_addr, entry.rev_port);
        let mut outer_daddr: u32 = ctx.load(IPV4_DADDR_OFF).map_err(|_| ())?;
        if outer_daddr == q_saddr {
            replace_outer(ctx, IPV4_DADDR_OFF, q_saddr, backend)?;
            outer_daddr = backend;
        }
        replace_quoted(ctx, icmp_csum, inner, inner + 12, q_saddr, backend)?;
        replace_port(ctx, icmp_csum, inner_l4, q_sport, backend_port)?;
        count(stat::ICMP_ERROR_RNAT);
        if flags & ct_flags::SNAT != 0 {
            // The backend knows the flow by the node's address, which the error now comes
            // from; a packet from a node address must be routed here, not by the stack.
            let outer_saddr: u32 = ctx.load(IPV4_SADDR_OFF).map_err(|_| ())?;
            replace_outer(ctx, IPV4_SADDR_OFF, outer_saddr, node)?;
            replace_quoted(ctx, icmp_csum, inner, inner + 16, q_daddr, node)?;
            replace_port(ctx, icmp_csum, inner_l4 + 2, q_dport, node_port)?;
            return Ok(route::forward(ctx, node, outer_daddr));
        }
    }
    Ok(TC_ACT_OK)
}

/// An address of the outer header: only the IP checksum covers it (ICMPv4's checksum has no
/// pseudo-header). The ICMP checksum is a plain 16-bit field, so `l3_csum_replace` (which
/// never touches the skb's checksum state) is the right tool for it below as well.
#[inline(always)]
fn replace_outer(ctx: &TcContext, off: usize, old: u32, new: u32) -> Result<(), ()> {
    ctx.l3_csum_replace(IPV4_CSUM_OFF, u64::from(old), u64::from(new), 4)
        .map_err(|_| ())?;
    ctx.store(off, &new, 0).map_err(|_| ())
}

/// An address of the quoted IP header: its own checksum changes, and the ICMP checksum covers
/// both the address and that checksum.
#[inline(always)]
fn replace_quoted(
    ctx: &TcContext,
    icmp_csum: usize,
    inner: usize,
    off: usize,
    old: u32,
    new: u32,
) -> Result<(), ()> {
    let inner_csum = inner + 10;
    let old_check: u16 = ctx.load(inner_csum).map_err(|_| ())?;
    ctx.l3_csum_replace(inner_csum, u64::from(old), u64::from(new), 4)
        .map_err(|_| ())?;
    let new_check: u16 = ctx.load(inner_csum).map_err(|_| ())?;
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l3_csum_replace(icmp_csum, u64::from(old), u64::from(new), 4)
        .map_err(|_| ())?;
    ctx.l3_csum_replace(icmp_csum, u64::from(old_check), u64::from(new_check), 2)
        .map_err(|_| ())
}

/// A port of the quoted L4 header. The quote's own L4 checksum is left as it was: only its
/// first 8 bytes travel, so no receiver can check it.
#[inline(always)]
fn replace_port(
    ctx: &TcContext,
    icmp_csum: usize,
    off: usize,
    old: u16,
    new: u16,
) -> Result<(), ()> {
    if old == new {
        return Ok(());
    }
    ctx.store(off, &new, 0).map_err(|_| ())?;
    ctx.l3_csum_replace(icmp_csum, u64::from(old), u64::from(new), 2)
        .map_err(|_| ())
}
