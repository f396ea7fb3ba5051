//! The IPVS dataplane: virtual servers per frontend, VIPs on a dummy interface so the host
//! accepts their traffic, and iptables for the masquerading IPVS cannot do itself.
//!
//! Applied through `ipvsadm --restore` rather than netlink. The Rust IPVS crates on crates.io
//! do not fit: `ipvs` 0.1.1 (2017) only reserves the name, `netlink-packet-ipvs` is a single
//! 0.0.1 release (2024) with packet types only, and `nlrs` is a young general netlink crate;
//! ipvsadm is what Debian ships next to the kernel module and what kube-proxy's users know.
//! The commands are a diff (pure) between what `ipvsadm -Sn` lists and the desired services,
//! so each sync is one ipvsadm run that touches only what changed.
//!
//! Terminating (draining) endpoints stay as real servers with weight 0: established
//! connections finish, new ones go elsewhere; they are removed once the EndpointSlice drops
//! them. With a split traffic policy IPVS cannot tell clients apart, so the external endpoint
//! set serves everyone (kube-proxy's IPVS mode had the same limit before it used iptables).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use super::{
    ApplyReport, Masquerade, RuleDataplane, RuleSettings, iptables, output_of, plan, run_with_input,
};
use crate::model::{DesiredState, Protocol, Scope};

pub const DUMMY: &str = "sluice-ipvs0";
/// kube-proxy's dummy interface, removed when a node switches from kube-proxy in IPVS mode.
pub const KUBE_PROXY_DUMMY: &str = "kube-ipvs0";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VirtualKey {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for VirtualKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = match self.protocol {
            Protocol::Tcp => "-t",
            Protocol::Udp => "-u",
            Protocol::Sctp => "--sctp-service",
        };
        write!(f, "{flag} {}:{}", self.ip, self.port)
    }
}

/// One virtual server as IPVS holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub scheduler: String,
    /// Persistence timeout (ClientIP affinity), seconds.
    pub persistence: Option<u32>,
    /// Real servers and their weights (0: draining).
    pub reals: BTreeMap<(Ipv4Addr, u16), u32>,
}

pub type IpvsState = BTreeMap<VirtualKey, VirtualServer>;

/// The virtual servers for `state` (pure).
pub fn render(state: &DesiredState, settings: &RuleSettings) -> IpvsState {
    let mut out = IpvsState::new();
    for f in state.frontends() {
        // One virtual server per address: for a split frontend the external scope serves.
        if f.key.scope == Scope::Internal {
            continue;
        }
        let IpAddr::V4(ip) = f.key.ip else { continue };
        let mut reals = BTreeMap::new();
        for (eps, weight) in [(&f.endpoints, 1), (&f.draining, 0)] {
            for ep in eps {
                if let IpAddr::V4(ep_ip) = ep.ip {
                    reals.insert((ep_ip, ep.port), weight);
                }
            }
        }
        out.insert(
            VirtualKey {
                ip,
                port: f.key.port,
                protocol: f.key.protocol,
            },
            VirtualServer {
                scheduler: f.scheduler.map_or(settings.ipvs_scheduler.clone(), |s| {
                    s.ipvs_name().to_string()
                }),
                persistence: f.affinity_timeout,
                reals,
            },
        );
    }
    out
}

fn service_line(op: &str, key: &VirtualKey, vs: &VirtualServer) -> String {
    let persistence = vs.persistence.map_or(String::new(), |t| format!(" -p {t}"));
    format!("{op} {key} -s {}{persistence}", vs.scheduler)
}

/// ipvsadm commands (restore syntax) turning `current` into `desired` (pure). Real servers use
/// masquerading (`-m`, NAT), the only forwarding method that works for endpoints anywhere.
pub fn diff(current: &IpvsState, desired: &IpvsState) -> Vec<String> {
    let mut out = Vec::new();
    for key in current.keys().filter(|k| !desired.contains_key(*k)) {
        out.push(format!("-D {key}"));
    }
    for (key, want) in desired {
        let have = current.get(key);
        match have {
            None => out.push(service_line("-A", key, want)),
            Some(h) if h.scheduler != want.scheduler || h.persistence != want.persistence => {
                out.push(service_line("-E", key, want));
            }
            Some(_) => {}
        }
        let have_reals = have.map(|h| &h.reals);
        for (ip, port) in have_reals
            .into_iter()
            .flat_map(|r| r.keys())
            .filter(|r| !want.reals.contains_key(*r))
        {
            out.push(format!("-d {key} -r {ip}:{port}"));
        }
        for ((ip, port), weight) in &want.reals {
            match have_reals.and_then(|r| r.get(&(*ip, *port))) {
                None => out.push(format!("-a {key} -r {ip}:{port} -m -w {weight}")),
                Some(w) if w != weight => {
                    out.push(format!("-e {key} -r {ip}:{port} -m -w {weight}"));
                }
                Some(_) => {}
            }
        }
    }
    out
}

/// Parses `ipvsadm -Sn` output (pure). Lines look like `-A -t 10.96.0.10:80 -s rr -p 300`
/// and `-a -t 10.96.0.10:80 -r 10.0.10.2:8080 -m -w 1`.
pub fn parse_save(save: &str) -> IpvsState {
    let mut out = IpvsState::new();
    for line in save.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(&op) = words.first() else { continue };
        let Some(key) = words.get(1..3).and_then(|w| parse_key(w[0], w[1])) else {
            continue;
        };
        let value = |flag: &str| {
            words
                .iter()
                .position(|w| *w == flag)
                .and_then(|i| words.get(i + 1))
                .copied()
        };
        match op {
            "-A" => {
                out.insert(
                    key,
                    VirtualServer {
                        scheduler: value("-s").unwrap_or("wlc").to_string(),
                        persistence: value("-p").and_then(|p| p.parse().ok()),
                        reals: BTreeMap::new(),
                    },
                );
            }
            "-a" => {
                let real = value("-r").and_then(|r| {
                    let (ip, port) = r.rsplit_once(':')?;
                    Some((ip.parse().ok()?, port.parse().ok()?))
                });
                let weight = value("-w").and_then(|w| w.parse().ok()).unwrap_or(1);
                if let (Some(real), Some(vs)) = (real, out.get_mut(&key)) {
                    vs.reals.insert(real, weight);
                }
            }
            _ => {}
        }
    }
    out
}

fn parse_key(flag: &str, addr: &str) -> Option<VirtualKey> {
    let protocol = match flag {
        "-t" => Protocol::Tcp,
        "-u" => Protocol::Udp,
        "--sctp-service" => Protocol::Sctp,
        _ => return None,
    };
    let (ip, port) = addr.rsplit_once(':')?;
    Some(VirtualKey {
        ip: ip.parse().ok()?,
        port: port.parse().ok()?,
        protocol,
    })
}

/// Addresses to bind on the dummy interface (pure): every virtual server address that is not
/// already one of the node's own.
pub fn dummy_addresses(desired: &IpvsState, settings: &RuleSettings) -> BTreeSet<Ipv4Addr> {
    desired
        .keys()
        .map(|k| k.ip)
        .filter(|ip| !settings.node_addresses.contains(ip))
        .collect()
}

/// The iptables pieces IPVS mode needs (pure): masquerade marks for frontends that masquerade
/// (and hairpin traffic), reusing the iptables renderer's chains.
pub fn masquerade_rules(state: &DesiredState, settings: &RuleSettings) -> iptables::IptState {
    let plan = plan(state, settings);
    let mut full = iptables::render(&plan, settings);
    let nat = full.get_mut("nat").expect("render fills nat");
    let mut services = Vec::new();
    for d in &plan.frontends {
        let m = format!(
            "-d {}/32 -p {p} -m {p} --dport {}",
            d.ip,
            d.port,
            p = d.protocol
        );
        match (d.masquerade, &settings.local) {
            (Masquerade::All, _) => services.push(format!("{m} -j SLUICE-MARK-MASQ")),
            (Masquerade::NonLocal, super::LocalMatch::Cidr(c)) => {
                services.push(format!("{m} ! -s {c} -j SLUICE-MARK-MASQ"));
            }
            _ => {}
        }
    }
    // IPVS does the DNAT: only the marks and the masquerading are kept.
    nat.retain(|name, _| name == "SLUICE-POSTROUTING" || name == "SLUICE-MARK-MASQ");
    nat.insert("SLUICE-SERVICES".into(), services);
    full.remove("filter");
    full.remove("mangle");
    full
}

/// The applier.
pub struct Ipvs {
    settings: RuleSettings,
    rules: Option<iptables::IptState>,
}

impl Ipvs {
    pub fn new(settings: RuleSettings) -> Self {
        Self {
            settings,
            rules: None,
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    output_of("ip", args)
}

impl RuleDataplane for Ipvs {
    fn name(&self) -> &'static str {
        "ipvs"
    }

    fn apply(&mut self, state: &DesiredState, full: bool) -> anyhow::Result<ApplyReport> {
        let desired = render(state, &self.settings);
        if full || self.rules.is_none() {
            // IPVS hands packets to netfilter's conntrack only with this set; the masquerade
            // rules depend on it.
            std::fs::write("/proc/sys/net/ipv4/vs/conntrack", "1")?;
            if ip(&["link", "show", DUMMY]).is_err() {
                ip(&["link", "add", DUMMY, "type", "dummy"])?;
            }
            ip(&["link", "set", DUMMY, "up"])?;
        }
        // Addresses first, so a new virtual server's traffic is accepted as local at once.
        let bound: BTreeSet<Ipv4Addr> = ip(&["-4", "-o", "addr", "show", "dev", DUMMY])?
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|x| *x == "inet")?;
                w.get(i + 1)?.split('/').next()?.parse().ok()
            })
            .collect();
        let want = dummy_addresses(&desired, &self.settings);
        for a in want.difference(&bound) {
            ip(&["addr", "add", &format!("{a}/32"), "dev", DUMMY])?;
        }
        let current = parse_save(&output_of("ipvsadm", &["-Sn"])?);
        let commands = diff(&current, &desired);
        if !commands.is_empty() {
            run_with_input("ipvsadm", &["-R"], &(commands.join("\n") + "\n"))?;
        }
        for a in bound.difference(&want) {
            ip(&["addr", "del", &format!("{a}/32"), "dev", DUMMY])?;
        }
        let next = masquerade_rules(state, &self.settings);
        let prev = if full { None } else { self.rules.as_ref() };
        let present = BTreeMap::new();
        let (input, _) = iptables::restore_input(prev, &present, &next);
        if !input.is_empty() {
            run_with_input("iptables-restore", &["-w", "--noflush"], &input)?;
        }
        if full || self.rules.is_none() {
            for (table, chain, rule) in iptables::JUMPS.iter().filter(|(t, _, _)| *t == "nat") {
                let args: Vec<&str> = rule.split_whitespace().collect();
                let ok = std::process::Command::new("iptables")
                    .args(["-w", "-t", table, "-C", chain])
                    .args(&args)
                    .status()?
                    .success();
                if !ok {
                    output_of(
                        "iptables",
                        &[&["-w", "-t", table, "-I", chain, "1"], args.as_slice()].concat(),
                    )?;
                }
            }
        }
        self.rules = Some(next);
        Ok(ApplyReport {
            frontends: desired.len(),
            changed: commands.len(),
            full,
        })
    }
}

/// Removes Sluice's virtual servers and dummy interface (and kube-proxy's with `kube_proxy`).
/// Every virtual server bound on the dummy is Sluice's; the others are left alone.
pub fn cleanup(kube_proxy: bool) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut dummies = vec![DUMMY];
    if kube_proxy {
        dummies.push(KUBE_PROXY_DUMMY);
    }
    let ipvs_present = std::path::Path::new("/proc/net/ip_vs").exists();
    for dummy in dummies {
        let Ok(addrs) = ip(&["-4", "-o", "addr", "show", "dev", dummy]) else {
            continue;
        };
        let addrs: BTreeSet<Ipv4Addr> = addrs
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                let i = w.iter().position(|x| *x == "inet")?;
                w.get(i + 1)?.split('/').next()?.parse().ok()
            })
            .collect();
        if ipvs_present && let Ok(save) = output_of("ipvsadm", &["-Sn"]) {
            let ours: Vec<String> = parse_save(&save)
                .keys()
                .filter(|k| addrs.contains(&k.ip))
                .map(|k| format!("-D {k}"))
                .collect();
            if !ours.is_empty() {
                run_with_input("ipvsadm", &["-R"], &(ours.join("\n") + "\n"))?;
                removed.push(format!("{} IPVS virtual server(s) on {dummy}", ours.len()));
            }
        }
        ip(&["link", "del", dummy])?;
        removed.push(format!("interface {dummy}"));
    }
    Ok(removed)
}
