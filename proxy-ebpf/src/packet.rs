//! Header parsing for the datapath.

use aya_ebpf::programs::TcContext;
use proxy_common::{CtKey, PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
pub const IPV4_CSUM_OFF: usize = ETH_HLEN + 10;
pub const IPV4_SADDR_OFF: usize = ETH_HLEN + 12;
pub const IPV4_DADDR_OFF: usize = ETH_HLEN + 16;
/// More-fragments flag and fragment offset bits of the IPv4 `frag_off` field.
const IP_MF_OFFSET_MASK: u16 = 0x3fff;

/// The parts of an IPv4 TCP/UDP packet the datapath needs. Addresses and ports are in network
/// byte order, as on the wire.
pub struct Flow {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Offset of the L4 header.
    pub l4_off: usize,
}

impl Flow {
    /// `Ok(None)`: not a packet Sluice translates (not IPv4, not TCP/UDP, or a fragment).
    #[inline(always)]
    pub fn parse(ctx: &TcContext) -> Result<Option<Flow>, ()> {
        let ethertype = u16::from_be(ctx.load::<u16>(12).map_err(|_| ())?);
        if ethertype != ETH_P_IP {
            return Ok(None);
        }
        let version_ihl: u8 = ctx.load(ETH_HLEN).map_err(|_| ())?;
        if version_ihl >> 4 != 4 {
            return Ok(None);
        }
        let ihl = usize::from(version_ihl & 0x0f) * 4;
        if ihl < 20 {
            return Ok(None);
        }
        // Fragments carry no (or only the first) L4 header; translating some fragments of a
        // datagram and not others would corrupt it, so they pass untouched.
        let frag_off = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).map_err(|_| ())?);
        if frag_off & IP_MF_OFFSET_MASK != 0 {
            return Ok(None);
        }
        let proto: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| ())?;
        if proto != PROTO_TCP && proto != PROTO_UDP {
            return Ok(None);
        }
        let l4_off = ETH_HLEN + ihl;
        Ok(Some(Flow {
            saddr: ctx.load(IPV4_SADDR_OFF).map_err(|_| ())?,
            daddr: ctx.load(IPV4_DADDR_OFF).map_err(|_| ())?,
            sport: ctx.load(l4_off).map_err(|_| ())?,
            dport: ctx.load(l4_off + 2).map_err(|_| ())?,
            proto,
            l4_off,
        }))
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
