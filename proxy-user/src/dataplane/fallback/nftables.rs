//! The nftables dataplane: kube-proxy's newest structure in a table of Sluice's own.
//!
//! A verdict map keyed by address . protocol . port sends each frontend to its service chain,
//! which picks an endpoint chain with `numgen random`; endpoint chains DNAT. Frontends without
//! endpoints are refused (or dropped) by a second verdict map in the filter hooks, where
//! `reject` is allowed. The whole table is described by [`NftState`] (pure, from a [`Plan`]);
//! [`transaction`] diffs two states into one `nft -f` script (pure); [`Nftables`] applies it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use super::{
    ApplyReport, Dispatch, LocalMatch, Masquerade, Plan, RuleDataplane, RuleSettings, Target,
    output_of, plan, run_with_input,
};
use crate::model::DesiredState;

pub const TABLE: &str = "sluice";
/// kube-proxy's nftables table, removed when a node switches from kube-proxy.
pub const KUBE_PROXY_TABLE: &str = "kube-proxy";

const SERVICE_IPS: &str = "service-ips";
const NO_ENDPOINTS: &str = "no-endpoint-services";
const FIREWALL_IPS: &str = "firewall-ips";
const KEY_TYPE: &str = "ipv4_addr . inet_proto . inet_service";

/// One chain: its base-chain spec (hook and priority) if any, and its rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub spec: Option<&'static str>,
    pub rules: Vec<String>,
}

/// Everything Sluice keeps in `table ip sluice`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NftState {
    pub chains: BTreeMap<String, Chain>,
    /// Verdict maps: name → (key → verdict).
    pub maps: BTreeMap<&'static str, BTreeMap<String, String>>,
    /// ClientIP affinity sets: name → timeout in seconds.
    pub sets: BTreeMap<String, u32>,
}

fn local_match(local: &LocalMatch, negate: bool) -> Option<String> {
    let op = if negate { "!= " } else { "" };
    match local {
        LocalMatch::Nothing => None,
        LocalMatch::Cidr(c) => Some(format!("ip saddr {op}{c}")),
        LocalMatch::Interface { name, prefix } => {
            let star = if *prefix { "*" } else { "" };
            Some(format!("iifname {op}\"{name}{star}\""))
        }
    }
}

fn key(d: &Dispatch) -> String {
    format!("{} . {} . {}", d.ip, d.protocol, d.port)
}

fn comment(text: &str) -> String {
    // nft comments are quoted strings of at most 128 bytes.
    let cleaned: String = text.chars().filter(|c| *c != '"').take(120).collect();
    format!("comment \"{cleaned}\"")
}

fn service_chain(id: &str) -> String {
    format!("svc-{id}")
}
fn endpoint_chain(id: &str) -> String {
    format!("sep-{id}")
}
fn frontend_chain(id: &str) -> String {
    format!("fe-{id}")
}
fn empty_chain(id: &str) -> String {
    format!("empty-{id}")
}
fn firewall_chain(id: &str) -> String {
    format!("fw-{id}")
}
fn affinity_set(endpoint: &str, timeout: u32) -> String {
    // The timeout is part of the name: nft cannot change a set's timeout in place.
    format!("aff-{endpoint}-{timeout}")
}

fn verdict(target: &Target) -> String {
    match target {
        Target::Reject => "goto reject-chain".into(),
        Target::Drop => "drop".into(),
        Target::Service(id) => format!("goto {}", service_chain(id)),
    }
}

/// The table's contents for `plan` (pure).
pub fn render(plan: &Plan, settings: &RuleSettings) -> NftState {
    let mut s = NftState::default();
    let mark = format!("{:#x}", settings.masquerade_mark);
    let base = |spec: &'static str, rules: &[&str]| Chain {
        spec: Some(spec),
        rules: rules.iter().map(ToString::to_string).collect(),
    };
    let plain = |rules: Vec<String>| Chain { spec: None, rules };
    let mut chain = |name: &str, c: Chain| {
        s.chains.insert(name.to_string(), c);
    };
    // DNAT happens at dstnat priority in prerouting and output; the firewall runs just before
    // it so loadBalancerSourceRanges see the original destination.
    chain(
        "nat-prerouting",
        base(
            "type nat hook prerouting priority dstnat; policy accept;",
            &["jump services"],
        ),
    );
    chain(
        "nat-output",
        base(
            // nft knows `dstnat` by name in prerouting only; -100 is its value.
            "type nat hook output priority -100; policy accept;",
            &["jump services"],
        ),
    );
    chain(
        "nat-postrouting",
        base(
            "type nat hook postrouting priority srcnat; policy accept;",
            &["jump masquerading"],
        ),
    );
    chain(
        "filter-prerouting",
        base(
            "type filter hook prerouting priority dstnat - 10; policy accept;",
            &["ct state new jump firewall-check"],
        ),
    );
    for hook in ["input", "forward", "output"] {
        chain(
            &format!("filter-{hook}"),
            Chain {
                spec: Some(match hook {
                    "input" => "type filter hook input priority filter - 10; policy accept;",
                    "forward" => "type filter hook forward priority filter - 10; policy accept;",
                    _ => "type filter hook output priority filter - 10; policy accept;",
                }),
                rules: vec!["ct state new jump endpoints-check".into()],
            },
        );
    }
    chain(
        "services",
        plain(vec![format!(
            "ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"
        )]),
    );
    chain(
        "endpoints-check",
        plain(vec![format!(
            "ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINTS}"
        )]),
    );
    chain(
        "firewall-check",
        plain(vec![format!(
            "ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}"
        )]),
    );
    // The mark is cleared once used, so a packet that is routed on (to a pod on another
    // node, say) is not masqueraded twice.
    chain(
        "masquerading",
        plain(vec![
            format!("meta mark & {mark} == 0 return"),
            format!("meta mark set meta mark ^ {mark}"),
            "masquerade fully-random".into(),
        ]),
    );
    chain(
        "mark-for-masquerade",
        plain(vec![format!("meta mark set meta mark | {mark}")]),
    );
    // TCP gets a reset: ICMP errors are rate-limited per destination by the kernel, so a
    // client retrying quickly would otherwise wait out a SYN retransmission.
    chain(
        "reject-chain",
        plain(vec![
            "meta l4proto tcp reject with tcp reset".into(),
            "reject".into(),
        ]),
    );

    let mut service_ips = BTreeMap::new();
    let mut no_endpoints = BTreeMap::new();
    let mut firewall = BTreeMap::new();
    for d in &plan.frontends {
        if let Some(rules) = frontend_rules(d, settings) {
            chain(&frontend_chain(&d.id), plain(rules));
            service_ips.insert(key(d), format!("goto {}", frontend_chain(&d.id)));
        } else if let Target::Service(_) = &d.external {
            service_ips.insert(key(d), verdict(&d.external));
        }
        let empty = d.empty_verdicts();
        match empty.as_slice() {
            [] => {}
            [(None, target)] => {
                no_endpoints.insert(key(d), verdict(target));
            }
            scoped => {
                let rules = scoped
                    .iter()
                    .map(|(internal, target)| match internal {
                        Some(true) => format!(
                            "{} {}",
                            local_match(&settings.local, false).unwrap_or_default(),
                            verdict(target)
                        ),
                        _ => verdict(target),
                    })
                    .collect();
                chain(&empty_chain(&d.id), plain(rules));
                no_endpoints.insert(key(d), format!("goto {}", empty_chain(&d.id)));
            }
        }
        if !d.source_ranges.is_empty() {
            let ranges: Vec<String> = d.source_ranges.iter().map(ToString::to_string).collect();
            chain(
                &firewall_chain(&d.id),
                plain(vec![
                    format!("ip saddr {{ {} }} return", ranges.join(", ")),
                    format!("drop {}", comment(&d.comment)),
                ]),
            );
            firewall.insert(key(d), format!("goto {}", firewall_chain(&d.id)));
        }
    }
    for (id, svc) in &plan.services {
        let mut rules = Vec::new();
        if let Some(timeout) = svc.affinity {
            for ep in &svc.endpoints {
                rules.push(format!(
                    "ip saddr @{} goto {}",
                    affinity_set(ep, timeout),
                    endpoint_chain(ep)
                ));
            }
        }
        let choices: Vec<String> = svc
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, ep)| format!("{i} : goto {}", endpoint_chain(ep)))
            .collect();
        rules.push(format!(
            "numgen random mod {} vmap {{ {} }} {}",
            svc.endpoints.len(),
            choices.join(", "),
            comment(&svc.comment)
        ));
        chain(&service_chain(id), plain(rules));
    }
    for (id, ep) in &plan.endpoints {
        let mut rules = vec![format!("ip saddr {} jump mark-for-masquerade", ep.ip)];
        if let Some(timeout) = ep.affinity {
            let set = affinity_set(id, timeout);
            rules.push(format!("update @{set} {{ ip saddr }}"));
            s.sets.insert(set, timeout);
        }
        rules.push(format!(
            "meta l4proto {} dnat to {}:{} {}",
            ep.protocol,
            ep.ip,
            ep.port,
            comment(&ep.comment)
        ));
        chain(&endpoint_chain(id), plain(rules));
    }
    s.maps.insert(SERVICE_IPS, service_ips);
    s.maps.insert(NO_ENDPOINTS, no_endpoints);
    s.maps.insert(FIREWALL_IPS, firewall);
    s
}

/// The per-frontend chain, when the frontend masquerades or tells clients apart.
fn frontend_rules(d: &Dispatch, settings: &RuleSettings) -> Option<Vec<String>> {
    if !d.needs_chain() {
        return None;
    }
    let mut rules = Vec::new();
    match d.masquerade {
        Masquerade::Never => {}
        Masquerade::All => rules.push("jump mark-for-masquerade".into()),
        Masquerade::NonLocal => {
            if let Some(m) = local_match(&settings.local, true) {
                rules.push(format!("{m} jump mark-for-masquerade"));
            }
        }
    }
    if let (Some(internal), Some(local)) = (&d.internal, local_match(&settings.local, false)) {
        // Internal traffic without endpoints of its own falls through to the refusal in the
        // filter hooks (`return` leaves the packet untranslated).
        let action = match internal {
            Target::Service(_) => verdict(internal),
            _ => "return".into(),
        };
        rules.push(format!("{local} {action}"));
    }
    if let Target::Service(_) = d.external {
        rules.push(format!("{} {}", verdict(&d.external), comment(&d.comment)));
    }
    Some(rules)
}

/// The `nft -f` script that turns `prev` into `next` in one transaction (pure).
///
/// With `prev` `None` (first sync, or a full resync) everything is written: every chain is
/// flushed and refilled, every map emptied and refilled, and `present_chains`/`present_sets`
/// (what the kernel holds) not in `next` are deleted. Affinity sets are declared, never
/// flushed, so clients keep their endpoints across restarts.
pub fn transaction(prev: Option<&NftState>, present: &Present, next: &NftState) -> (String, usize) {
    let mut out = String::new();
    let mut changed = 0;
    let t = format!("ip {TABLE}");
    let w = &mut out;
    if prev.is_none() {
        writeln!(w, "add table {t}").unwrap();
    }
    let empty = NftState::default();
    let old = prev.unwrap_or(&empty);
    // 1. Declarations: every chain a rule or map element may reference exists first.
    for (name, chain) in &next.chains {
        if prev.is_none() || !old.chains.contains_key(name) {
            match chain.spec {
                Some(spec) => writeln!(w, "add chain {t} {name} {{ {spec} }}").unwrap(),
                None => writeln!(w, "add chain {t} {name}").unwrap(),
            }
        }
    }
    for (name, timeout) in &next.sets {
        if prev.is_none() || !old.sets.contains_key(name) {
            writeln!(
                w,
                "add set {t} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"
            )
            .unwrap();
        }
    }
    for name in next.maps.keys() {
        if prev.is_none() {
            writeln!(w, "add map {t} {name} {{ type {KEY_TYPE} : verdict; }}").unwrap();
            writeln!(w, "flush map {t} {name}").unwrap();
        }
    }
    // 2. Chain contents: new or changed chains are (flushed and) refilled.
    for (name, chain) in &next.chains {
        // In a full sync every chain is flushed (one just added is empty; flushing it is
        // harmless); otherwise only chains written before.
        let existed = prev.is_none_or(|p| p.chains.contains_key(name));
        if prev.is_some() && old.chains.get(name) == Some(chain) {
            continue;
        }
        changed += 1;
        if existed {
            writeln!(w, "flush chain {t} {name}").unwrap();
        }
        for rule in &chain.rules {
            writeln!(w, "add rule {t} {name} {rule}").unwrap();
        }
    }
    // 3. Map elements: removed and changed keys go, new and changed keys come.
    for (name, elements) in &next.maps {
        let before = old.maps.get(name);
        let mut deletes = Vec::new();
        let mut adds = Vec::new();
        if prev.is_some() {
            for (k, v) in before.into_iter().flatten() {
                if elements.get(k) != Some(v) {
                    deletes.push(k.clone());
                }
            }
        }
        for (k, v) in elements {
            if prev.is_none() || before.and_then(|b| b.get(k)) != Some(v) {
                adds.push(format!("{k} : {v}"));
            }
        }
        if !deletes.is_empty() {
            writeln!(w, "delete element {t} {name} {{ {} }}", deletes.join(", ")).unwrap();
        }
        if !adds.is_empty() {
            writeln!(w, "add element {t} {name} {{ {} }}", adds.join(", ")).unwrap();
        }
    }
    // 4. Stale chains and sets: flushed first (they may reference each other), then deleted.
    let stale_chains: BTreeSet<&String> = match prev {
        Some(p) => p
            .chains
            .keys()
            .filter(|c| !next.chains.contains_key(*c))
            .collect(),
        None => present
            .chains
            .iter()
            .filter(|c| !next.chains.contains_key(*c))
            .collect(),
    };
    for name in &stale_chains {
        writeln!(w, "flush chain {t} {name}").unwrap();
    }
    for name in &stale_chains {
        writeln!(w, "delete chain {t} {name}").unwrap();
        changed += 1;
    }
    let stale_sets: BTreeSet<&String> = match prev {
        Some(p) => p
            .sets
            .keys()
            .filter(|s| !next.sets.contains_key(*s))
            .collect(),
        None => present
            .sets
            .iter()
            .filter(|s| !next.sets.contains_key(*s))
            .collect(),
    };
    for name in stale_sets {
        writeln!(w, "delete set {t} {name}").unwrap();
    }
    (out, changed)
}

/// Chains and sets the kernel's table holds (read before a full sync).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Present {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// Reads chain and set names from `nft list table` output (pure).
pub fn parse_present(listing: &str) -> Present {
    let mut p = Present::default();
    for line in listing.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("chain"), Some(name)) => {
                p.chains.insert(name.to_string());
            }
            (Some("set"), Some(name)) => {
                p.sets.insert(name.to_string());
            }
            _ => {}
        }
    }
    p
}

/// The applier: one `nft -f -` per sync.
pub struct Nftables {
    settings: RuleSettings,
    applied: Option<NftState>,
}

impl Nftables {
    pub fn new(settings: RuleSettings) -> Self {
        Self {
            settings,
            applied: None,
        }
    }
}

fn present_in_kernel() -> Present {
    // A missing table is the first start: nothing is present.
    output_of("nft", &["list", "table", "ip", TABLE])
        .map(|l| parse_present(&l))
        .unwrap_or_default()
}

impl RuleDataplane for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn apply(&mut self, state: &DesiredState, full: bool) -> anyhow::Result<ApplyReport> {
        let plan = plan(state, &self.settings);
        let next = render(&plan, &self.settings);
        let full = full || self.applied.is_none();
        if full {
            self.applied = None;
        }
        let present = if full {
            present_in_kernel()
        } else {
            Present::default()
        };
        let (script, changed) = transaction(self.applied.as_ref(), &present, &next);
        if !script.is_empty()
            && let Err(e) = run_with_input("nft", &["-f", "-"], &script)
        {
            // The kernel may hold something else than we think: rewrite everything next.
            self.applied = None;
            return Err(e);
        }
        self.applied = Some(next);
        Ok(ApplyReport {
            frontends: plan.frontends.len(),
            changed,
            full,
        })
    }
}

/// Deletes Sluice's table (and kube-proxy's when `kube_proxy`); a missing table is not an
/// error. Returns the tables deleted.
pub fn cleanup(kube_proxy: bool) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(tables) = output_of("nft", &["list", "tables"]) else {
        return Ok(removed); // no nft: nothing of ours can exist
    };
    let mut wanted = vec![("ip", TABLE)];
    if kube_proxy {
        wanted.extend([("ip", KUBE_PROXY_TABLE), ("ip6", KUBE_PROXY_TABLE)]);
    }
    for (family, name) in wanted {
        if tables
            .lines()
            .any(|l| l.trim() == format!("table {family} {name}"))
        {
            run_with_input(
                "nft",
                &["-f", "-"],
                &format!("delete table {family} {name}\n"),
            )?;
            removed.push(format!("nft table {family} {name}"));
        }
    }
    Ok(removed)
}
