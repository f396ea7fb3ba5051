//! Address and port rewriting with incremental checksum updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use proxy_common::PROTO_UDP;

use crate::packet::{Flow, IPV4_CSUM_OFF, IPV4_DADDR_OFF, IPV4_SADDR_OFF};

/// Rewrites destination address and port (client → backend).
#[inline(always)]
pub fn rewrite_destination(ctx: &TcContext, flow: &Flow, addr: u32, port: u16) -> Result<(), ()> {
    rewrite(
        ctx,
        flow,
        IPV4_DADDR_OFF,
        flow.daddr,
        addr,
        flow.l4_off + 2,
        flow.dport,
        port,
    )
}

/// Rewrites source address and port (backend → client, restoring the frontend).
#[inline(always)]
pub fn rewrite_source(ctx: &TcContext, flow: &Flow, addr: u32, port: u16) -> Result<(), ()> {
    rewrite(
        ctx,
        flow,
        IPV4_SADDR_OFF,
        flow.saddr,
        addr,
        flow.l4_off,
        flow.sport,
        port,
    )
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    flow: &Flow,
    addr_off: usize,
    old_addr: u32,
    new_addr: u32,
    port_off: usize,
    old_port: u16,
    new_port: u16,
) -> Result<(), ()> {
    let csum_off = flow.l4_csum_off();
    // UDP may carry no checksum (0); MARK_MANGLED_0 keeps it that way instead of inventing one.
    let l4_flags = if flow.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    if old_addr != new_addr {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_addr),
            u64::from(new_addr),
            l4_flags | u64::from(BPF_F_PSEUDO_HDR) | 4,
        )
        .map_err(|_| ())?;
        ctx.l3_csum_replace(IPV4_CSUM_OFF, u64::from(old_addr), u64::from(new_addr), 4)
            .map_err(|_| ())?;
        ctx.store(addr_off, &new_addr, 0).map_err(|_| ())?;
    }
    if old_port != new_port {
        ctx.l4_csum_replace(
            csum_off,
            u64::from(old_port),
            u64::from(new_port),
            l4_flags | 2,
        )
        .map_err(|_| ())?;
        ctx.store(port_off, &new_port, 0).map_err(|_| ())?;
    }
    Ok(())
}
