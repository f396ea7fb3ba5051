//! The iptables dataplane, in kube-proxy's proven shape under Sluice's own chain names.
//!
//! nat: `SLUICE-SERVICES` (from PREROUTING and OUTPUT) matches each frontend and jumps to a
//! per-frontend chain (masquerade marks, traffic-policy split) or straight to a service chain;
//! service chains pick an endpoint chain with `statistic --mode random` (and `recent` first for
//! ClientIP affinity); endpoint chains DNAT. `SLUICE-POSTROUTING` masquerades marked packets.
//! filter: `SLUICE-EMPTY` (from INPUT, FORWARD, OUTPUT, new connections only) REJECTs or DROPs
//! frontends without endpoints. mangle: `SLUICE-FIREWALL` enforces loadBalancerSourceRanges
//! before DNAT. [`render`] builds every chain (pure); [`restore_input`] diffs two renderings
//! into one `iptables-restore --noflush` input that rewrites only changed chains (pure).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{
    ApplyReport, Dispatch, LocalMatch, Masquerade, Plan, RuleDataplane, RuleSettings, Target,
    output_of, plan, run_with_input,
};
use crate::model::DesiredState;

pub const PREFIX: &str = "SLUICE-";
pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];

/// Chains by table, each with its rules (`-A CHAIN` left out).
pub type IptState = BTreeMap<&'static str, BTreeMap<String, Vec<String>>>;

/// Jumps from the built-in chains into Sluice's, as `(table, chain, rule)`, in the order they
/// are added: masquerading, refusals and the firewall before the jumps that DNAT, so no
/// connection is ever translated without them.
pub const JUMPS: &[(&str, &str, &str)] = &[
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment sluice -j SLUICE-POSTROUTING",
    ),
    (
        "filter",
        "INPUT",
        "-m comment --comment sluice -m conntrack --ctstate NEW -j SLUICE-EMPTY",
    ),
    (
        "filter",
        "FORWARD",
        "-m comment --comment sluice -m conntrack --ctstate NEW -j SLUICE-EMPTY",
    ),
    (
        "filter",
        "OUTPUT",
        "-m comment --comment sluice -m conntrack --ctstate NEW -j SLUICE-EMPTY",
    ),
    (
        "mangle",
        "PREROUTING",
        "-m comment --comment sluice -m conntrack --ctstate NEW -j SLUICE-FIREWALL",
    ),
    (
        "nat",
        "PREROUTING",
        "-m comment --comment sluice -j SLUICE-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment sluice -j SLUICE-SERVICES",
    ),
];

fn local_match(local: &LocalMatch, negate: bool) -> Option<String> {
    let not = if negate { "! " } else { "" };
    match local {
        LocalMatch::Nothing => None,
        LocalMatch::Cidr(c) => Some(format!("{not}-s {c}")),
        LocalMatch::Interface { name, prefix } => {
            let plus = if *prefix { "+" } else { "" };
            Some(format!("{not}-i {name}{plus}"))
        }
    }
}

fn comment(text: &str) -> String {
    let cleaned: String = text.chars().filter(|c| *c != '"').take(200).collect();
    format!("-m comment --comment \"{cleaned}\"")
}

fn matches(d: &Dispatch) -> String {
    format!(
        "-d {}/32 -p {p} -m {p} --dport {}",
        d.ip,
        d.port,
        p = d.protocol
    )
}

pub fn service_chain(id: &str) -> String {
    format!("SLUICE-SVC-{id}")
}
pub fn endpoint_chain(id: &str) -> String {
    format!("SLUICE-SEP-{id}")
}
fn frontend_chain(id: &str) -> String {
    format!("SLUICE-FE-{id}")
}
fn firewall_chain(id: &str) -> String {
    format!("SLUICE-FW-{id}")
}

fn empty_verdict(target: &Target) -> &'static str {
    match target {
        Target::Drop => "DROP",
        _ => "REJECT",
    }
}

/// Every Sluice chain for `plan` (pure).
pub fn render(plan: &Plan, settings: &RuleSettings) -> IptState {
    let mark = format!("{:#x}", settings.masquerade_mark);
    let mut nat: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut filter: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut mangle: BTreeMap<String, Vec<String>> = BTreeMap::new();
    nat.insert(
        "SLUICE-POSTROUTING".into(),
        vec![
            format!("-m mark ! --mark {mark}/{mark} -j RETURN"),
            // Cleared so a packet routed on is not masqueraded twice.
            format!("-j MARK --xor-mark {mark}"),
            "-j MASQUERADE --random-fully".into(),
        ],
    );
    nat.insert(
        "SLUICE-MARK-MASQ".into(),
        vec![format!("-j MARK --or-mark {mark}")],
    );
    let mut services = Vec::new();
    let mut empty = Vec::new();
    let mut firewall = Vec::new();
    for d in &plan.frontends {
        let m = matches(d);
        let c = comment(&d.comment);
        if d.needs_chain() {
            let mut rules = Vec::new();
            match d.masquerade {
                Masquerade::Never => {}
                Masquerade::All => rules.push("-j SLUICE-MARK-MASQ".into()),
                Masquerade::NonLocal => {
                    if let Some(l) = local_match(&settings.local, true) {
                        rules.push(format!("{l} -j SLUICE-MARK-MASQ"));
                    }
                }
            }
            if let (Some(internal), Some(l)) = (&d.internal, local_match(&settings.local, false)) {
                // Internal traffic without endpoints of its own stays untranslated, to be
                // refused in the filter table.
                let jump = match internal {
                    Target::Service(id) => service_chain(id),
                    _ => "RETURN".into(),
                };
                rules.push(format!("{l} -j {jump}"));
            }
            if let Target::Service(id) = &d.external {
                rules.push(format!("-j {}", service_chain(id)));
            }
            nat.insert(frontend_chain(&d.id), rules);
            services.push(format!("{m} {c} -j {}", frontend_chain(&d.id)));
        } else if let Target::Service(id) = &d.external {
            services.push(format!("{m} {c} -j {}", service_chain(id)));
        }
        for (internal, target) in d.empty_verdicts() {
            let scope = match internal {
                Some(true) => local_match(&settings.local, false)
                    .map(|l| format!(" {l}"))
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let verdict = empty_verdict(target);
            // TCP gets a reset: ICMP errors are rate-limited per destination by the kernel,
            // so a client retrying quickly would otherwise wait out a SYN retransmission.
            let verdict = match (verdict, d.protocol) {
                ("REJECT", crate::model::Protocol::Tcp) => "REJECT --reject-with tcp-reset",
                (v, _) => v,
            };
            empty.push(format!(
                "{m}{scope} {} -j {verdict}",
                comment(&format!("{} has no endpoints", d.comment))
            ));
        }
        if !d.source_ranges.is_empty() {
            let mut rules: Vec<String> = d
                .source_ranges
                .iter()
                .map(|r| format!("-s {r} -j RETURN"))
                .collect();
            rules.push(format!("{c} -j DROP"));
            mangle.insert(firewall_chain(&d.id), rules);
            firewall.push(format!("{m} -j {}", firewall_chain(&d.id)));
        }
    }
    for (id, svc) in &plan.services {
        let mut rules = Vec::new();
        let c = comment(&svc.comment);
        if let Some(timeout) = svc.affinity {
            for ep in &svc.endpoints {
                let list = endpoint_chain(ep);
                rules.push(format!(
                    "{c} -m recent --name {list} --mask 255.255.255.255 --rsource --rcheck \
                     --seconds {timeout} --reap -j {list}"
                ));
            }
        }
        // The i-th of n rules takes 1/(n-i) of what reaches it: every endpoint gets 1/n.
        let n = svc.endpoints.len();
        for (i, ep) in svc.endpoints.iter().enumerate() {
            if i + 1 == n {
                rules.push(format!("{c} -j {}", endpoint_chain(ep)));
            } else {
                rules.push(format!(
                    "{c} -m statistic --mode random --probability {:.10} -j {}",
                    1.0 / (n - i) as f64,
                    endpoint_chain(ep)
                ));
            }
        }
        nat.insert(service_chain(id), rules);
    }
    for (id, ep) in &plan.endpoints {
        let chain = endpoint_chain(id);
        let c = comment(&ep.comment);
        let recent = match ep.affinity {
            Some(_) => format!(" -m recent --name {chain} --mask 255.255.255.255 --rsource --set"),
            None => String::new(),
        };
        nat.insert(
            chain,
            vec![
                // Hairpin: an endpoint reaching its own Service must see the reply come back
                // through the node.
                format!("{c} -s {}/32 -j SLUICE-MARK-MASQ", ep.ip),
                format!(
                    "{c} -p {p}{recent} -m {p} -j DNAT --to-destination {}:{}",
                    ep.ip,
                    ep.port,
                    p = ep.protocol
                ),
            ],
        );
    }
    nat.insert("SLUICE-SERVICES".into(), services);
    filter.insert("SLUICE-EMPTY".into(), empty);
    mangle.insert("SLUICE-FIREWALL".into(), firewall);
    BTreeMap::from([("nat", nat), ("filter", filter), ("mangle", mangle)])
}

/// The `iptables-restore --noflush` input turning `prev` into `next` (pure): only new and
/// changed chains are declared (which flushes them) and refilled, and removed ones flushed and
/// deleted. With `prev` `None`, every chain is rewritten and `present` chains (what the
/// kernel holds, by table) that are no longer wanted are deleted.
pub fn restore_input(
    prev: Option<&IptState>,
    present: &BTreeMap<String, BTreeSet<String>>,
    next: &IptState,
) -> (String, usize) {
    let mut out = String::new();
    let mut changed = 0;
    let none = BTreeMap::new();
    for table in TABLES {
        let want = next.get(table).unwrap_or(&none);
        let had = prev.and_then(|p| p.get(table));
        let write: Vec<(&String, &Vec<String>)> = want
            .iter()
            .filter(|(name, rules)| had.is_none_or(|h| h.get(*name) != Some(*rules)))
            .collect();
        let stale: Vec<&String> = match had {
            Some(h) => h.keys().filter(|c| !want.contains_key(*c)).collect(),
            None if prev.is_none() => present
                .get(table)
                .into_iter()
                .flatten()
                .filter(|c| !want.contains_key(*c))
                .collect(),
            None => Vec::new(),
        };
        if write.is_empty() && stale.is_empty() {
            continue;
        }
        changed += write.len() + stale.len();
        writeln!(out, "*{table}").unwrap();
        for (name, _) in &write {
            writeln!(out, ":{name} - [0:0]").unwrap();
        }
        for name in &stale {
            writeln!(out, ":{name} - [0:0]").unwrap();
        }
        for (name, rules) in &write {
            for rule in *rules {
                writeln!(out, "-A {name} {rule}").unwrap();
            }
        }
        for name in &stale {
            writeln!(out, "-X {name}").unwrap();
        }
        writeln!(out, "COMMIT").unwrap();
    }
    (out, changed)
}

/// Names of chains starting with `prefixes` in `iptables-save` output (pure).
pub fn parse_chains(save: &str, prefixes: &[&str]) -> BTreeSet<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| prefixes.iter().any(|p| name.starts_with(p)))
        .map(ToString::to_string)
        .collect()
}

/// Rules of chains not being removed (the built-in ones, mostly) jumping to a chain starting with one of `prefixes`, as the
/// arguments that delete them (`-D CHAIN ...`) (pure).
pub fn parse_jumps(save: &str, prefixes: &[&str]) -> Vec<String> {
    save.lines()
        .filter_map(|l| l.strip_prefix("-A "))
        .filter(|rule| {
            let chain = rule.split_whitespace().next().unwrap_or("");
            let target = rule
                .split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .unwrap_or("");
            !prefixes.iter().any(|p| chain.starts_with(p))
                && prefixes.iter().any(|p| target.starts_with(p))
        })
        .map(|rule| format!("-D {rule}"))
        .collect()
}

/// The applier: one `iptables-restore --noflush` per sync, plus the jumps from the built-in
/// chains on full syncs (they cannot be written idempotently in a restore).
pub struct Iptables {
    settings: RuleSettings,
    applied: Option<IptState>,
}

impl Iptables {
    pub fn new(settings: RuleSettings) -> Self {
        Self {
            settings,
            applied: None,
        }
    }
}

fn present_in_kernel() -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
    let mut present = BTreeMap::new();
    for table in TABLES {
        let save = output_of("iptables-save", &["-t", table])?;
        present.insert(table.to_string(), parse_chains(&save, &[PREFIX]));
    }
    Ok(present)
}

fn ensure_jumps() -> anyhow::Result<()> {
    for (table, chain, rule) in JUMPS {
        let args: Vec<&str> = rule.split_whitespace().collect();
        let check = std::process::Command::new("iptables")
            .args(["-w", "-t", table, "-C", chain])
            .args(&args)
            .output()?;
        if !check.status.success() {
            output_of(
                "iptables",
                &[&["-w", "-t", table, "-I", chain, "1"], args.as_slice()].concat(),
            )?;
        }
    }
    Ok(())
}

impl RuleDataplane for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    fn apply(&mut self, state: &DesiredState, full: bool) -> anyhow::Result<ApplyReport> {
        let plan = plan(state, &self.settings);
        let next = render(&plan, &self.settings);
        let full = full || self.applied.is_none();
        if full {
            self.applied = None;
        }
        let present = if full {
            present_in_kernel()?
        } else {
            BTreeMap::new()
        };
        let (input, changed) = restore_input(self.applied.as_ref(), &present, &next);
        if !input.is_empty()
            && let Err(e) = run_with_input("iptables-restore", &["-w", "--noflush"], &input)
        {
            self.applied = None;
            return Err(e);
        }
        if full {
            ensure_jumps()?;
        }
        self.applied = Some(next);
        Ok(ApplyReport {
            frontends: plan.frontends.len(),
            changed,
            full,
        })
    }
}

/// kube-proxy's own chains (not the kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY,
/// KUBE-MARK-DROP or KUBE-MARK-MASQ, which other components use).
pub const KUBE_PROXY_PREFIXES: &[&str] = &[
    "KUBE-SERVICES",
    "KUBE-EXTERNAL-SERVICES",
    "KUBE-NODEPORTS",
    "KUBE-POSTROUTING",
    "KUBE-FORWARD",
    "KUBE-PROXY-FIREWALL",
    "KUBE-PROXY-CANARY",
    "KUBE-SVC-",
    "KUBE-SEP-",
    "KUBE-FW-",
    "KUBE-XLB-",
    "KUBE-EXT-",
    "KUBE-SVL-",
    "KUBE-LOAD-BALANCER",
    "KUBE-NODE-PORT",
];

/// Removes Sluice's chains and the jumps to them (and kube-proxy's, with `kube_proxy`), in
/// every table, for iptables (`iptables`) or the legacy/other binary named. Returns what was
/// removed.
pub fn cleanup(kube_proxy: bool) -> anyhow::Result<Vec<String>> {
    let mut prefixes = vec![PREFIX];
    if kube_proxy {
        prefixes.extend(KUBE_PROXY_PREFIXES);
    }
    let mut removed = Vec::new();
    if output_of("iptables-save", &["--version"]).is_err() {
        return Ok(removed);
    }
    let mut input = String::new();
    for table in TABLES {
        let Ok(save) = output_of("iptables-save", &["-t", table]) else {
            continue; // the table's module is absent: nothing can be in it
        };
        let chains = parse_chains(&save, &prefixes);
        let jumps = parse_jumps(&save, &prefixes);
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        writeln!(input, "*{table}").unwrap();
        for chain in &chains {
            writeln!(input, ":{chain} - [0:0]").unwrap();
        }
        for jump in &jumps {
            writeln!(input, "{jump}").unwrap();
        }
        for chain in &chains {
            writeln!(input, "-X {chain}").unwrap();
            removed.push(format!("iptables {table} {chain}"));
        }
        writeln!(input, "COMMIT").unwrap();
    }
    if !input.is_empty() {
        run_with_input("iptables-restore", &["-w", "--noflush"], &input)?;
    }
    Ok(removed)
}
