//! A minimal IPv4/IPv6 prefix: the configuration only needs to parse, print and test
//! membership, which does not justify another dependency in a crate several people edit.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP prefix such as `10.96.0.0/12` or `fd00::/48`, always stored with its host bits
/// cleared (Go's `net.ParseCIDR`, which kube-proxy uses, accepts `10.1.2.3/8` and keeps the
/// network `10.0.0.0/8`; so do we).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("invalid CIDR {0:?}: expected ADDRESS/PREFIX-LENGTH")]
    MissingPrefix(String),
    #[error("invalid CIDR {0:?}: not an IPv4 or IPv6 address")]
    Address(String),
    #[error("invalid CIDR {input:?}: prefix length must be 0-{max}")]
    PrefixLength { input: String, max: u8 },
}

impl Cidr {
    /// Builds the prefix containing `addr`, clearing host bits. Fails if `prefix_len` is longer
    /// than the address.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<Self, CidrError> {
        let max = max_len(addr);
        if prefix_len > max {
            return Err(CidrError::PrefixLength {
                input: format!("{addr}/{prefix_len}"),
                max,
            });
        }
        let network = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(prefix_len))),
        };
        Ok(Self {
            network,
            prefix_len,
        })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn is_ipv4(&self) -> bool {
        self.network.is_ipv4()
    }

    pub fn is_ipv6(&self) -> bool {
        self.network.is_ipv6()
    }

    /// Whether `ip` is inside the prefix. An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`)
    /// matches an IPv4 prefix, as in Go, because dual-stack sockets report IPv4 peers that way.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                u32::from(ip) & mask_v4(self.prefix_len) == u32::from(net)
            }
            (IpAddr::V4(_), IpAddr::V6(ip)) => ip
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(IpAddr::V4(v4))),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                u128::from(ip) & mask_v6(self.prefix_len) == u128::from(net)
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }
}

fn max_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| CidrError::MissingPrefix(s.to_owned()))?;
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address(s.to_owned()))?;
        let max = max_len(addr);
        let bad_len = || CidrError::PrefixLength {
            input: s.to_owned(),
            max,
        };
        // u8::from_str would also take "+8"; Go takes digits only.
        if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad_len());
        }
        let len: u8 = len.parse().map_err(|_| bad_len())?;
        if len > max {
            return Err(bad_len());
        }
        Self::new(addr, len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}
