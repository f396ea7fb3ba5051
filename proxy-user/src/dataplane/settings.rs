//! The configuration the datapath reads at run time (pure): conntrack lifetimes from
//! kube-proxy's `conntrack` block and the source prefixes that `detectLocalMode` calls local.

use std::{net::IpAddr, time::Duration};

use proxy_common::{DatapathConfig, config_flags, default_lifetime};

use crate::config::{Config, DetectLocal};

/// What the loader writes into `SLUICE_CONFIG` and `SLUICE_LOCAL4`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatapathSettings {
    pub lifetimes: DatapathConfig,
    /// IPv4 prefixes (network in network byte order, prefix length) of local clients.
    pub local_sources: Vec<(u32, u8)>,
    /// Settings the datapath cannot honour, to be logged once at start.
    pub warnings: Vec<String>,
}

pub fn datapath_settings(config: &Config) -> DatapathSettings {
    let ct = &config.conntrack;
    let ns = |d: Option<Duration>, default: u64| {
        d.map_or(default, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    };
    let lifetimes = DatapathConfig {
        tcp_syn_ns: default_lifetime::TCP_SYN_NS,
        tcp_established_ns: ns(
            ct.tcp_established_timeout,
            default_lifetime::TCP_ESTABLISHED_NS,
        ),
        // After a FIN or RST the datapath cannot tell CLOSE_WAIT from TIME_WAIT, so it keeps a
        // closing flow for TIME_WAIT's 120 s, or tcpCloseWaitTimeout if shorter: source ports
        // of masqueraded flows are reused only once their old flow has expired.
        tcp_closing_ns: ns(ct.tcp_close_wait_timeout, default_lifetime::TCP_CLOSING_NS)
            .min(default_lifetime::TCP_CLOSING_NS),
        udp_ns: ns(ct.udp_timeout, default_lifetime::UDP_NS),
        udp_stream_ns: ns(ct.udp_stream_timeout, default_lifetime::UDP_STREAM_NS),
        flags: config_flags::SET
            | if config.masquerade_all {
                config_flags::MASQUERADE_ALL
            } else {
                0
            },
    };
    let mut warnings = Vec::new();
    let mut local_sources = Vec::new();
    match &config.detect_local {
        DetectLocal::ClusterCidr => {
            for cidr in &config.cluster_cidrs {
                match cidr.network() {
                    IpAddr::V4(net) => {
                        local_sources.push((u32::from_ne_bytes(net.octets()), cidr.prefix_len()))
                    }
                    IpAddr::V6(_) => warnings.push(format!(
                        "clusterCIDR {cidr}: IPv6 is not served by the datapath yet; ignored"
                    )),
                }
            }
        }
        other => warnings.push(format!(
            "detectLocalMode {other:?} is not supported by the eBPF datapath yet: clients of \
             Services whose traffic policies differ are told apart by clusterCIDR only, and \
             with none set every client counts as external"
        )),
    }
    DatapathSettings {
        lifetimes,
        local_sources,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    const S: u64 = 1_000_000_000;

    #[test]
    fn conntrack_block_sets_lifetimes_and_unset_ones_keep_the_kernel_defaults() {
        let mut config = Config::default();
        config.conntrack.tcp_established_timeout = Some(Duration::from_secs(3600));
        config.conntrack.tcp_close_wait_timeout = Some(Duration::from_secs(60));
        let mut long_close_wait = config.clone();
        long_close_wait.conntrack.tcp_close_wait_timeout = Some(Duration::from_secs(3600));
        assert_eq!(
            datapath_settings(&long_close_wait).lifetimes.tcp_closing_ns,
            120 * S,
            "capped at TIME_WAIT's"
        );
        config.conntrack.udp_timeout = Some(Duration::from_secs(5));
        config.conntrack.udp_stream_timeout = None;
        let s = datapath_settings(&config);
        assert_eq!(s.lifetimes.tcp_established_ns, 3600 * S);
        assert_eq!(s.lifetimes.tcp_closing_ns, 60 * S);
        assert_eq!(s.lifetimes.udp_ns, 5 * S);
        assert_eq!(s.lifetimes.udp_stream_ns, 120 * S);
        assert_eq!(s.lifetimes.tcp_syn_ns, 120 * S);
        assert_eq!(s.lifetimes.flags, config_flags::SET);
    }

    #[test]
    fn cluster_cidrs_are_the_local_sources_and_other_modes_warn() {
        let mut config = Config {
            cluster_cidrs: vec![
                "10.244.0.0/16".parse::<Cidr>().unwrap(),
                "fd00::/64".parse::<Cidr>().unwrap(),
            ],
            ..Config::default()
        };
        let s = datapath_settings(&config);
        assert_eq!(
            s.local_sources,
            vec![(u32::from_ne_bytes([10, 244, 0, 0]), 16)]
        );
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);

        config.detect_local = DetectLocal::InterfaceNamePrefix("veth".into());
        let s = datapath_settings(&config);
        assert!(s.local_sources.is_empty());
        assert!(s.warnings[0].contains("detectLocalMode"));
    }
}
