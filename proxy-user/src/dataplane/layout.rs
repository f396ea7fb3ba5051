//! Desired state → desired map contents (pure).

use std::{collections::BTreeMap, net::IpAddr};

use proxy_common::{Backend, ServiceKey, algorithm};

use crate::model::{DesiredState, FrontendKey};

/// What one frontend should look like in the maps, before ids are assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendEntry {
    /// Backends in slot order.
    pub backends: Vec<Backend>,
    pub algorithm: u8,
}

pub type DesiredMaps = BTreeMap<ServiceKey, FrontendEntry>;

/// Map contents for every frontend the IPv4 datapath can serve, plus the frontends it cannot
/// (yet) serve, so the caller can report them.
pub fn desired_maps(state: &DesiredState) -> (DesiredMaps, Vec<FrontendKey>) {
    let mut maps = DesiredMaps::new();
    let mut unsupported = Vec::new();
    for frontend in state.frontends() {
        let (IpAddr::V4(vip), proto) = (frontend.key.ip, frontend.key.protocol.number()) else {
            unsupported.push(frontend.key);
            continue;
        };
        let key = ServiceKey::new(
            u32::from_ne_bytes(vip.octets()),
            frontend.key.port.to_be(),
            proto,
        );
        let backends = frontend
            .endpoints
            .iter()
            .filter_map(|ep| match ep.ip {
                IpAddr::V4(ip) => Some(Backend {
                    addr: u32::from_ne_bytes(ip.octets()),
                    port: ep.port.to_be(),
                    proto,
                    flags: 0,
                }),
                IpAddr::V6(_) => None,
            })
            .collect();
        maps.insert(
            key,
            FrontendEntry {
                backends,
                algorithm: algorithm::RANDOM,
            },
        );
    }
    (maps, unsupported)
}
