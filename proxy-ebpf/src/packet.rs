//! Header parsing for the datapath.

use aya_ebpf::programs::TcContext;
use proxy_common::{CtKey, PROTO_TCP, PROTO_UDP};

pub const PROTO_ICMP: u8 = 1;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const IPV4_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IPV4_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IPV4_DADDR_OFF: usize = ETH_HLEN + 16;
/// Offset of the L4 header when the IPv4 header has no options.
pub const L4_OFF_NO_OPTIONS: usize = ETH_HLEN + 20;

pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}
/// More-fragments flag and fragment offset bits of the IPv4 `frag_off` field.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

/// The parts of an IPv4 TCP/UDP packet the datapath needs. Addresses and ports are in network
/// byte order, as on the wire.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
}

/// The headers asked for are not (all) in the skb's linear data.
struct Short;

/// A `T` read in place at `offset`, if the linear data holds it.
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, offset: usize) -> Result<T, Short> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return Err(Short);
    }
    // SAFETY: the bounds check above is what the verifier requires for direct packet access;
    // the read is unaligned because headers sit at any offset.
    Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

/// What a packet is, as far as the datapath cares.
pub enum Parsed {
    /// An unfragmented TCP or UDP packet.
    Flow(Flow),
    /// An ICMP message; `l4_off` is the offset of its header.
    Icmp {
        l4_off: usize,
    },
    Other,
}

impl Flow {
    /// Classifies an IPv4 packet. Anything else is [`Parsed::Other`].
    ///
    /// Headers are read in place (direct packet access) rather than copied out with
    /// `bpf_skb_load_bytes`: this runs for every packet the node receives, and a helper call
    /// per field costs more than the map lookups that follow. Headers that are not in the
    /// linear part of the skb are pulled in first.
    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Result<Parsed, ()> {
        match Self::parse_linear(ctx) {
            Err(Short) => {
                // Enough for the largest IPv4 header and the L4 fields read below.
                ctx.pull_data((ETH_HLEN + 60 + 16) as u32).map_err(|_| ())?;
                Self::parse_linear(ctx).map_err(|Short| ())
            }
            Ok(parsed) => Ok(parsed),
        }
    }

    #[inline(always)]
    fn parse_linear(ctx: &TcContext) -> Result<Parsed, Short> {
        let ethertype: u16 = read(ctx, 12)?;
        if u16::from_be(ethertype) != ETH_P_IP {
            return Ok(Parsed::Other);
        }
        let version_ihl: u8 = read(ctx, ETH_HLEN)?;
        if version_ihl >> 4 != 4 {
            return Ok(Parsed::Other);
        }
        // Masked so the verifier can bound the offsets computed from it (20..=60).
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if ihl < 20 {
            return Ok(Parsed::Other);
        }
        // Fragments carry no (or only the first) L4 header; translating some fragments of a
        // datagram and not others would corrupt it, so they pass untouched.
        let frag_off: u16 = read(ctx, ETH_HLEN + 6)?;
        if u16::from_be(frag_off) & IP_MF_OFFSET_MASK != 0 {
            return Ok(Parsed::Other);
        }
        let proto: u8 = read(ctx, ETH_HLEN + 9)?;
        let l4_off = ETH_HLEN + ihl;
        if proto == PROTO_ICMP {
            return Ok(Parsed::Icmp { l4_off });
        }
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return Ok(Parsed::Other);
        }
        let tcp_flags = if proto == PROTO_TCP {
            read(ctx, l4_off + 13)?
        } else {
            0
        };
        Ok(Parsed::Flow(Flow {
            saddr: read(ctx, IPV4_SADDR_OFF)?,
            daddr: read(ctx, IPV4_DADDR_OFF)?,
            sport: read(ctx, l4_off)?,
            dport: read(ctx, l4_off + 2)?,
            proto,
            tcp_flags,
            l4_off,
        }))
    }

    /// Whether this TCP segment opens a connection (SYN without ACK).
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (tcp_flags::SYN | tcp_flags::ACK) == tcp_flags::SYN
    }

    /// Whether this TCP segment starts closing the connection.
    #[inline(always)]
    pub fn is_closing(&self) -> bool {
        self.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0
    }

    #[inline(always)]
    pub fn ct_key(&self, dir: u8) -> CtKey {
        CtKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            dir,
            _pad: 0,
        }
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == PROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
}
