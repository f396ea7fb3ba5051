//! Fallback dataplanes for kernels without Sluice's BPF features: nftables, iptables and
//! IPVS, all rendered from the same [`DesiredState`] the eBPF maps are built from.
//!
//! [`plan`] reduces the state to what every netfilter-style renderer needs (pure): one
//! dispatch per frontend address, one chain per distinct endpoint set of a Service port, one
//! chain per endpoint. The renderers turn a [`Plan`] into rule text (pure, diffed against what
//! was applied last so that only changed Services' chains are rewritten); their appliers are
//! thin layers that hand the text to `nft -f`, `iptables-restore --noflush` or
//! `ipvsadm --restore` as one transaction per sync.

pub mod cleanup;
pub mod iptables;
pub mod ipvs;
pub mod nftables;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr},
};

use crate::{
    config::{Cidr, Config, DetectLocal},
    model::{DesiredState, EmptyAction, Frontend, FrontendKind, Protocol, Scope},
};

/// A dataplane the controller hands each desired state to, instead of writing BPF maps.
pub trait RuleDataplane: Send {
    /// `ebpf`, `nftables`, `iptables` or `ipvs`: the `sluice_dataplane_info` label.
    fn name(&self) -> &'static str;
    /// Brings the kernel to `state`. `full` re-reads what the kernel holds and rewrites
    /// everything, repairing drift; otherwise only what changed since the last successful
    /// apply is written.
    fn apply(&mut self, state: &DesiredState, full: bool) -> anyhow::Result<ApplyReport>;
}

/// What one apply wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Frontend addresses served.
    pub frontends: usize,
    /// Chains (or virtual services) written or removed.
    pub changed: usize,
    pub full: bool,
}

/// Which sources count as "local" (this node's pods and the host), for traffic policies and
/// masquerading: kube-proxy's `detectLocalMode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalMatch {
    /// Nothing is told apart: every client is external.
    Nothing,
    /// The IPv4 cluster CIDR (kube-proxy allows one per family).
    Cidr(Cidr),
    /// The input interface, exactly or (`prefix`) by name prefix.
    Interface { name: String, prefix: bool },
}

/// The settings the rule renderers need besides the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSettings {
    pub local: LocalMatch,
    pub masquerade_all: bool,
    /// The packet mark bit that asks for masquerading (`1 << masqueradeBit`).
    pub masquerade_mark: u32,
    /// The node's addresses: always admitted by `loadBalancerSourceRanges`, so the node's own
    /// health checks and hairpinned traffic are never filtered.
    pub node_addresses: Vec<Ipv4Addr>,
    /// The default scheduler for IPVS virtual services without a `sluice.dev/scheduler`.
    pub ipvs_scheduler: String,
}

impl RuleSettings {
    /// Resolved from the configuration; `warnings` are settings the fallbacks cannot honour.
    pub fn from_config(config: &Config, node_addresses: &[IpAddr]) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let local = match &config.detect_local {
            DetectLocal::ClusterCidr => match config.cluster_cidrs.iter().find(|c| c.is_ipv4()) {
                Some(c) => LocalMatch::Cidr(*c),
                None => LocalMatch::Nothing,
            },
            DetectLocal::BridgeInterface(name) => LocalMatch::Interface {
                name: name.clone(),
                prefix: false,
            },
            DetectLocal::InterfaceNamePrefix(name) => LocalMatch::Interface {
                name: name.clone(),
                prefix: true,
            },
            DetectLocal::NodeCidr => {
                warnings.push(
                    "detectLocalMode NodeCIDR is not supported by the fallback dataplanes yet: \
                     every client counts as external"
                        .to_string(),
                );
                LocalMatch::Nothing
            }
        };
        let settings = Self {
            local,
            masquerade_all: config.masquerade_all,
            masquerade_mark: 1u32 << config.masquerade_bit,
            node_addresses: node_addresses
                .iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(*v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
            ipvs_scheduler: config.scheduler.ipvs_name().to_string(),
        };
        (settings, warnings)
    }
}

/// What a frontend's traffic does before it is balanced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Masquerade {
    Never,
    /// Every client (masqueradeAll, or an external frontend with `externalTrafficPolicy:
    /// Cluster`, so replies come back through this node).
    All,
    /// Clients that are not local (a ClusterIP reached from outside the pod network).
    NonLocal,
}

/// Where a frontend's traffic goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// No endpoint anywhere: refuse at once.
    Reject,
    /// Endpoints exist, but not for this traffic (a `Local` policy): drop silently.
    Drop,
    /// Balance over this service chain's endpoints (its id).
    Service(String),
}

/// One frontend address and how its traffic is routed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// Stable id of the address, for per-frontend chain names.
    pub id: String,
    /// `namespace/name:port kind`, for rule comments.
    pub comment: String,
    pub masquerade: Masquerade,
    /// Sources admitted (`loadBalancerSourceRanges` plus the node's addresses); empty: all.
    pub source_ranges: Vec<Cidr>,
    /// `internal` is `None` when every client is treated alike.
    pub internal: Option<Target>,
    pub external: Target,
}

impl Dispatch {
    /// Whether a per-frontend chain is needed (otherwise the address maps straight to the
    /// service chain).
    pub fn needs_chain(&self) -> bool {
        self.masquerade != Masquerade::Never || self.internal.is_some()
    }

    /// The targets that refuse or drop, by scope: (internal, external).
    pub fn empty_verdicts(&self) -> Vec<(Option<bool>, &Target)> {
        match &self.internal {
            None => vec![(None, &self.external)],
            Some(internal) => vec![(Some(true), internal), (Some(false), &self.external)],
        }
        .into_iter()
        .filter(|(_, t)| !matches!(t, Target::Service(_)))
        .collect()
    }
}

/// A set of endpoints balanced over, shared by every frontend of a Service port that uses the
/// same set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceChain {
    pub comment: String,
    /// Endpoint chain ids, in endpoint order.
    pub endpoints: Vec<String>,
    pub affinity: Option<u32>,
}

/// One endpoint of a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointChain {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub comment: String,
    pub affinity: Option<u32>,
}

/// The renderer-neutral form of a [`DesiredState`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Sorted by address.
    pub frontends: Vec<Dispatch>,
    pub services: BTreeMap<String, ServiceChain>,
    pub endpoints: BTreeMap<String, EndpointChain>,
    /// Frontends the fallbacks do not serve (IPv6), one line each.
    pub unserved: Vec<String>,
}

/// Builds the plan (pure).
pub fn plan(state: &DesiredState, settings: &RuleSettings) -> Plan {
    let mut out = Plan::default();
    let mut by_address: BTreeMap<(Ipv4Addr, u16, Protocol), Vec<&Frontend>> = BTreeMap::new();
    for f in state.frontends() {
        match f.key.ip {
            IpAddr::V4(ip) => by_address
                .entry((ip, f.key.port, f.key.protocol))
                .or_default()
                .push(f),
            IpAddr::V6(_) => out.unserved.push(format!(
                "{}: IPv6 frontends are not served by the fallback dataplanes yet",
                f.key
            )),
        }
    }
    for ((ip, port, protocol), scoped) in by_address {
        let mut target = |f: &Frontend| -> Target {
            if f.endpoints.is_empty() {
                return match f.on_empty {
                    EmptyAction::Reject => Target::Reject,
                    EmptyAction::Drop => Target::Drop,
                };
            }
            let mut endpoint_ids = Vec::new();
            for ep in &f.endpoints {
                let IpAddr::V4(ep_ip) = ep.ip else { continue };
                let id = stable_id(&format!(
                    "{}/{}:{}/{}/{}:{}",
                    f.service.namespace, f.service.name, f.port_name, protocol, ep_ip, ep.port
                ));
                out.endpoints.insert(
                    id.clone(),
                    EndpointChain {
                        ip: ep_ip,
                        port: ep.port,
                        protocol,
                        comment: format!("{}:{} -> {ep_ip}:{}", f.service, f.port_name, ep.port),
                        affinity: f.affinity_timeout,
                    },
                );
                endpoint_ids.push(id);
            }
            let affinity = f.affinity_timeout.map_or(String::new(), |t| t.to_string());
            let id = stable_id(&format!(
                "{}:{}/{protocol}|{}|{affinity}",
                f.service,
                f.port_name,
                endpoint_ids.join(",")
            ));
            out.services.entry(id.clone()).or_insert(ServiceChain {
                comment: format!("{}:{}", f.service, f.port_name),
                endpoints: endpoint_ids,
                affinity: f.affinity_timeout,
            });
            Target::Service(id)
        };
        let first = scoped[0];
        let (internal, external) = match scoped.as_slice() {
            [only] => (None, target(only)),
            _ => {
                let internal = scoped
                    .iter()
                    .find(|f| f.key.scope == Scope::Internal)
                    .copied();
                let external = scoped
                    .iter()
                    .find(|f| f.key.scope != Scope::Internal)
                    .copied()
                    .unwrap_or(first);
                (internal.map(&mut target), target(external))
            }
        };
        // Without a way to tell local clients apart, every client is external (as the eBPF
        // datapath does).
        let internal = match settings.local {
            LocalMatch::Nothing => None,
            _ => internal,
        };
        let masquerade = if settings.masquerade_all {
            Masquerade::All
        } else if first.kind == FrontendKind::ClusterIp {
            match settings.local {
                LocalMatch::Nothing => Masquerade::Never,
                _ => Masquerade::NonLocal,
            }
        } else if scoped.iter().any(|f| f.masquerade_external) {
            Masquerade::All
        } else {
            Masquerade::Never
        };
        let mut source_ranges: Vec<Cidr> = first
            .source_ranges
            .iter()
            .filter(|c| c.is_ipv4())
            .copied()
            .collect();
        if !source_ranges.is_empty() {
            for node in &settings.node_addresses {
                source_ranges.extend(Cidr::new(IpAddr::V4(*node), 32));
            }
        }
        out.frontends.push(Dispatch {
            ip,
            port,
            protocol,
            id: stable_id(&format!("{ip}:{port}/{protocol}")),
            comment: format!(
                "{}:{} {}",
                first.service,
                first.port_name,
                first.kind.as_str()
            ),
            masquerade,
            source_ranges,
            internal,
            external,
        });
    }
    out
}

/// A short name that stays the same for the same input across runs and versions (so chains
/// written by a previous run are recognised): FNV-1a, 64 bits, as 16 hex digits. Collisions
/// would need billions of Services; the hash is not a security boundary.
pub fn stable_id(input: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in input.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut s = String::with_capacity(16);
    write!(s, "{hash:016X}").expect("writing to a String");
    s
}

/// Runs `program` with `input` on its standard input; the error carries its stderr and the
/// input's first lines, so a rejected transaction can be read in the log.
pub(crate) fn run_with_input(program: &str, args: &[&str], input: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let numbered: String = input
            .lines()
            .enumerate()
            .take(400)
            .map(|(i, l)| format!("{:>4} {l}\n", i + 1))
            .collect();
        anyhow::bail!(
            "{program} {} failed: {}\ninput:\n{numbered}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Runs a command and returns its standard output.
pub(crate) fn output_of(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("running {program}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
pub(crate) mod tests;
