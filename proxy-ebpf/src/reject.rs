//! Refusing a packet to a frontend without usable endpoints, as kube-proxy's REJECT does: a
//! TCP reset or an ICMP port unreachable, sent from the frontend's address straight back out
//! of the interface the packet came in on, so the client fails at once instead of timing out.
//!
//! The reply is built in place: the packet is cut (or grown) to the reply's length and every
//! header byte is rewritten, with checksums computed from scratch. Checksum offload needs no
//! care here: only a packet from a local pod arrives as CHECKSUM_PARTIAL, and its reply goes
//! back into that pod's veth, whose receiver trusts such packets; from any other device the
//! packet arrives with a complete checksum state that transmission ignores.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use proxy_common::{PROTO_TCP, stat};

use crate::{
    maps::count,
    packet::{ETH_HLEN, Flow, L4_OFF_NO_OPTIONS, PROTO_ICMP, tcp_flags},
};

const IP_HLEN: usize = 20;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const ICMP_HLEN: usize = 8;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;
const IP_DF: u16 = 0x4000;
/// IPTOS_PREC_INTERNETCONTROL, which Linux gives its own ICMP errors.
const TOS_INTERNETCONTROL: u8 = 0xc0;
const REPLY_TTL: u8 = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct IpHeader {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct TcpHeader {
    sport: u16,
    dport: u16,
    seq: u32,
    ack_seq: u32,
    /// Data offset (4 bits), reserved bits and flags, network byte order.
    doff_flags: u16,
    window: u16,
    check: u16,
    urg_ptr: u16,
}

/// The ICMP error and what it quotes: the refused packet's IP header and first 8 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct IcmpError {
    kind: u8,
    code: u8,
    check: u16,
    unused: u32,
    quoted_ip: IpHeader,
    quoted_l4: [u8; UDP_HLEN],
}

/// Refuses `flow`'s packet; returns the tc verdict. Not inlined: its headers would otherwise
/// add to the main program's stack frame, and the verifier caps a call chain at 512 bytes.
#[inline(never)]
pub fn refuse(ctx: &TcContext, flow: &Flow) -> i32 {
    // A header with options would have to be shifted; such packets are rare enough to drop.
    // A reset is never answered, or two hosts could reset each other forever.
    let refused = if flow.l4_off != L4_OFF_NO_OPTIONS || flow.tcp_flags & tcp_flags::RST != 0 {
        Err(())
    } else if flow.proto == PROTO_TCP {
        tcp_reset(ctx, flow)
    } else {
        port_unreachable(ctx, flow)
    };
    match refused {
        Ok(()) => {
            count(if flow.proto == PROTO_TCP {
                stat::REJECT_TCP
            } else {
                stat::REJECT_UDP
            });
            send_back(ctx)
        }
        Err(()) => {
            count(stat::DROP_UNREJECTABLE);
            TC_ACT_SHOT
        }
    }
}

fn tcp_reset(ctx: &TcContext, flow: &Flow) -> Result<(), ()> {
    let ip: IpHeader = ctx.load(ETH_HLEN).map_err(|_| ())?;
    let seg: TcpHeader = ctx.load(flow.l4_off).map_err(|_| ())?;
    let data_off = usize::from(u16::from_be(seg.doff_flags) >> 12) * 4;
    let payload = usize::from(u16::from_be(ip.tot_len)).saturating_sub(IP_HLEN + data_off);
    // RFC 9293 3.10.7.1: answer an ACK with its acknowledgement number as our sequence;
    // otherwise acknowledge everything the segment occupied (SYN and FIN count one each).
    let (seq, ack_seq, flags) = if flow.tcp_flags & tcp_flags::ACK != 0 {
        (seg.ack_seq, 0, tcp_flags::RST)
    } else {
        let mut len = payload as u32;
        if flow.tcp_flags & tcp_flags::SYN != 0 {
            len += 1;
        }
        if flow.tcp_flags & tcp_flags::FIN != 0 {
            len += 1;
        }
        let ack = u32::from_be(seg.seq).wrapping_add(len);
        (0, ack.to_be(), tcp_flags::RST | tcp_flags::ACK)
    };
    let mut reply = TcpHeader {
        sport: flow.dport,
        dport: flow.sport,
        seq,
        ack_seq,
        doff_flags: ((5u16 << 12) | u16::from(flags)).to_be(),
        window: 0,
        check: 0,
        urg_ptr: 0,
    };
    let mut pseudo = [
        flow.daddr,
        flow.saddr,
        u32::from_ne_bytes([0, PROTO_TCP, 0, TCP_HLEN as u8]),
    ];
    let sum = csum(&mut pseudo, 0)?;
    reply.check = fold(csum(&mut reply, sum)?);
    let ip = reply_ip_header(flow, PROTO_TCP, 0, IP_DF, IP_HLEN + TCP_HLEN)?;

    resize(ctx, L4_OFF_NO_OPTIONS + TCP_HLEN)?;
    swap_macs(ctx)?;
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    ctx.store(L4_OFF_NO_OPTIONS, &reply, 0).map_err(|_| ())
}

fn port_unreachable(ctx: &TcContext, flow: &Flow) -> Result<(), ()> {
    let mut error = IcmpError {
        kind: ICMP_DEST_UNREACH,
        code: ICMP_PORT_UNREACH,
        check: 0,
        unused: 0,
        quoted_ip: ctx.load(ETH_HLEN).map_err(|_| ())?,
        quoted_l4: ctx.load(flow.l4_off).map_err(|_| ())?,
    };
    error.check = fold(csum(&mut error, 0)?);
    let ip = reply_ip_header(
        flow,
        PROTO_ICMP,
        TOS_INTERNETCONTROL,
        0,
        IP_HLEN + ICMP_HLEN + IP_HLEN + UDP_HLEN,
    )?;

    resize(ctx, L4_OFF_NO_OPTIONS + ICMP_HLEN + IP_HLEN + UDP_HLEN)?;
    swap_macs(ctx)?;
    ctx.store(ETH_HLEN, &ip, 0).map_err(|_| ())?;
    ctx.store(L4_OFF_NO_OPTIONS, &error, 0).map_err(|_| ())
}

/// An IPv4 header from the frontend back to the client.
#[inline(always)]
fn reply_ip_header(
    flow: &Flow,
    proto: u8,
    tos: u8,
    frag_off: u16,
    tot_len: usize,
) -> Result<IpHeader, ()> {
    let mut ip = IpHeader {
        version_ihl: 0x45,
        tos,
        tot_len: (tot_len as u16).to_be(),
        id: 0,
        frag_off: frag_off.to_be(),
        ttl: REPLY_TTL,
        proto,
        check: 0,
        saddr: flow.daddr,
        daddr: flow.saddr,
    };
    ip.check = fold(csum(&mut ip, 0)?);
    Ok(ip)
}

#[inline(always)]
fn resize(ctx: &TcContext, len: usize) -> Result<(), ()> {
    // SAFETY: the context pointer is the program's own skb.
    let ret = unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) };
    if ret == 0 { Ok(()) } else { Err(()) }
}

#[inline(always)]
fn swap_macs(ctx: &TcContext) -> Result<(), ()> {
    let dst: [u8; 6] = ctx.load(0).map_err(|_| ())?;
    let src: [u8; 6] = ctx.load(6).map_err(|_| ())?;
    ctx.store(0, &src, 0).map_err(|_| ())?;
    ctx.store(6, &dst, 0).map_err(|_| ())
}

/// Sends the rewritten packet out of the interface it arrived on.
#[inline(always)]
fn send_back(ctx: &TcContext) -> i32 {
    // SAFETY: reading a field of the program's own skb context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; 0 = the device's egress.
    let verdict = unsafe { bpf_redirect(ifindex, 0) };
    if verdict == i64::from(TC_ACT_REDIRECT) {
        TC_ACT_REDIRECT
    } else {
        count(stat::DROP_UNREJECTABLE);
        TC_ACT_SHOT
    }
}

/// The one's-complement sum of `value` (whose size is a multiple of 4) added to `seed`.
#[inline(always)]
fn csum<T>(value: &mut T, seed: u32) -> Result<u32, ()> {
    // SAFETY: `value` is a live stack object of size_of::<T>() bytes; the helper only reads.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (value as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
            seed,
        )
    };
    if sum < 0 { Err(()) } else { Ok(sum as u32) }
}

/// Folds a 32-bit one's-complement sum into the 16-bit checksum field value.
#[inline(always)]
fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
