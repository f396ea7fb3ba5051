//! Forwarding a translated reply without the stack. A reply whose source Sluice has just
//! restored to a node address (a NodePort, or a load-balancer or external IP the node holds)
//! would be dropped by the stack's routing as a martian: a packet arriving from outside with
//! one of the node's own addresses as source. netfilter avoids this by restoring the source
//! after routing; at tc ingress that is not possible, so such replies are routed here, with
//! the kernel's FIB, and sent straight to the outgoing interface.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_OK, TC_ACT_REDIRECT,
        bpf_fib_lookup,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    macros::map,
    maps::PerCpuArray,
    programs::TcContext,
};

use crate::packet::{ETH_HLEN, IPV4_CSUM_OFF};

/// One FIB lookup's parameters per CPU.
#[map(name = "SLUICE_FIB_SCRATCH")]
pub(crate) static FIB_SCRATCH: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

const AF_INET: u8 = 2;
const TTL_OFF: usize = ETH_HLEN + 8;

/// Routes the (already translated) IPv4 packet from `saddr` to `daddr`; the tc verdict.
/// Anything the FIB cannot resolve here (local delivery, no route, an expiring TTL) is left
/// to the stack.
#[inline(never)]
pub fn forward(ctx: &TcContext, saddr: u32, daddr: u32) -> i32 {
    match try_forward(ctx, saddr, daddr) {
        Ok(verdict) => verdict,
        Err(()) => TC_ACT_OK,
    }
}

fn try_forward(ctx: &TcContext, saddr: u32, daddr: u32) -> Result<i32, ()> {
    match lookup(ctx, saddr, daddr, 0)? {
        Some(next_hop) => send(ctx, next_hop),
        None => Ok(TC_ACT_OK),
    }
}

/// Where the FIB sends a packet from `saddr` (0: any) to `daddr`, if it is forwarded at all.
/// With `BPF_FIB_LOOKUP_SRC` in `flags` the result's `ipv4_src` is the address the node
/// would use as source toward `daddr`. The result lives in this CPU's scratch element (the
/// structure is too large for the 512-byte BPF stack budget), valid until the next lookup.
#[inline(always)]
pub fn lookup(
    ctx: &TcContext,
    saddr: u32,
    daddr: u32,
    flags: u32,
) -> Result<Option<&'static mut bpf_fib_lookup>, ()> {
    let tot_len = u16::from_be(ctx.load::<u16>(ETH_HLEN + 2).map_err(|_| ())?);
    let params = FIB_SCRATCH.get_ptr_mut(0).ok_or(())?;
    // SAFETY: this CPU's own element of a per-CPU array; nothing else on this CPU runs BPF
    // code until this program returns.
    let params = unsafe { &mut *params };
    // SAFETY: an all-zero bpf_fib_lookup is a valid input (plain integers and unions of them).
    *params = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    // SAFETY: reading a field of the program's own skb context.
    params.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    params.__bindgen_anon_1.tot_len = tot_len;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    // SAFETY: `params` points to a live map value of the size passed.
    let ret = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            params,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    let ret = u32::try_from(ret).map_err(|_| ())?;
    if ret == BPF_FIB_LKUP_RET_SUCCESS {
        Ok(Some(params))
    } else if ret == BPF_FIB_LKUP_RET_NO_NEIGH {
        // Marked by an all-zero destination MAC: `send` lets the kernel resolve it.
        params.dmac = [0; 6];
        Ok(Some(params))
    } else {
        Ok(None)
    }
}

/// Sends the packet to the next hop `lookup` found, decrementing its TTL as a router does.
/// A packet whose TTL runs out is left to the stack, which answers with time exceeded.
#[inline(always)]
pub fn send(ctx: &TcContext, next_hop: &bpf_fib_lookup) -> Result<i32, ()> {
    // TTL and protocol share one 16-bit word of the header, which is what the checksum sees.
    let ttl_proto: [u8; 2] = ctx.load(TTL_OFF).map_err(|_| ())?;
    if ttl_proto[0] <= 1 {
        return Ok(TC_ACT_OK);
    }
    let decremented = [ttl_proto[0] - 1, ttl_proto[1]];
    ctx.l3_csum_replace(
        IPV4_CSUM_OFF,
        u64::from(u16::from_ne_bytes(ttl_proto)),
        u64::from(u16::from_ne_bytes(decremented)),
        2,
    )
    .map_err(|_| ())?;
    ctx.store(TTL_OFF, &decremented, 0).map_err(|_| ())?;
    let verdict = if next_hop.dmac != [0; 6] {
        ctx.store(0, &next_hop.dmac, 0).map_err(|_| ())?;
        ctx.store(6, &next_hop.smac, 0).map_err(|_| ())?;
        // SAFETY: plain helper call; 0 = the device's egress.
        unsafe { bpf_redirect(next_hop.ifindex, 0) }
    } else {
        // SAFETY: plain helper call; no explicit next hop.
        unsafe { bpf_redirect_neigh(next_hop.ifindex, core::ptr::null_mut(), 0, 0) }
    };
    Ok(if verdict == i64::from(TC_ACT_REDIRECT) {
        TC_ACT_REDIRECT
    } else {
        TC_ACT_OK
    })
}
