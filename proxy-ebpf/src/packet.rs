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
    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Result<Parsed, ()> {
        let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| ())?);
        if ethertype != ETH_P_IP {
            return Ok(Parsed::Other);
        }
        let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| ())?;
        if version_ihl >> 4 != 4 {
            return Ok(Parsed::Other);
        }
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if ihl < 20 {
            return Ok(Parsed::Other);
        }
        // Fragments carry no (or only the first) L4 header; translating some fragments of a
        // datagram and not others would corrupt it, so they pass untouched.
        let frag_off = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).map_err(|_| ())?);
        if frag_off & IP_MF_OFFSET_MASK != 0 {
            return Ok(Parsed::Other);
        }
        let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| ())?;
        let l4_off = ETH_HLEN + ihl;
        if proto == PROTO_ICMP {
            return Ok(Parsed::Icmp { l4_off });
        }
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return Ok(Parsed::Other);
        }
        let tcp_flags = if proto == PROTO_TCP {
            ctx.load(l4_off + 13).map_err(|_| ())?
        } else {
            0
        };
        Ok(Parsed::Flow(Flow {
            saddr: ctx.load(IPV4_SADDR_OFF).map_err(|_| ())?,
            daddr: ctx.load(IPV4_DADDR_OFF).map_err(|_| ())?,
            sport: ctx.load(l4_off).map_err(|_| ())?,
            dport: ctx.load(l4_off + 2).map_err(|_| ())?,
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
