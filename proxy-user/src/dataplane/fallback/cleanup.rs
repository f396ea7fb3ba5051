//! Removing other dataplanes' state: when a node switches dataplane (Sluice's own previous
//! one, or a real kube-proxy's leftovers) and for `sluice cleanup`.

use std::path::Path;

use tracing::{info, warn};

use crate::config::Dataplane;

/// Everything that is not `keep`'s: Sluice's other dataplanes and, with `kube_proxy`,
/// kube-proxy's leftovers (KUBE-* chains of its own, its `kube-proxy` nft tables, its IPVS
/// dummy). `keep` `None` removes all of Sluice's, as `sluice cleanup` does. Returns a line per
/// thing removed.
pub fn remove_others(
    keep: Option<Dataplane>,
    pin_path: &Path,
    kube_proxy: bool,
) -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    if keep != Some(Dataplane::Ebpf) && pin_path.exists() {
        let report = crate::dataplane::loader::cleanup(pin_path)?;
        if !report.links.is_empty() || !report.maps.is_empty() {
            removed.push(format!(
                "eBPF: {} link(s), {} pinned map(s) at {}",
                report.links.len(),
                report.maps.len(),
                pin_path.display()
            ));
        }
    }
    if keep != Some(Dataplane::Nftables) {
        removed.extend(super::nftables::cleanup(kube_proxy)?);
    } else if kube_proxy {
        // The nftables dataplane keeps its own table but not kube-proxy's.
        removed.extend(kube_proxy_nft_only()?);
    }
    // IPVS mode keeps its masquerade chains in iptables, so both keep the SLUICE- chains.
    if !matches!(keep, Some(Dataplane::Iptables) | Some(Dataplane::Ipvs)) {
        removed.extend(super::iptables::cleanup(kube_proxy)?);
    } else if kube_proxy {
        removed.extend(kube_proxy_iptables_only()?);
    }
    if keep != Some(Dataplane::Ipvs) {
        removed.extend(super::ipvs::cleanup(kube_proxy)?);
    }
    for line in &removed {
        info!("removed {line}");
    }
    Ok(removed)
}

fn kube_proxy_nft_only() -> anyhow::Result<Vec<String>> {
    let mut removed = Vec::new();
    let Ok(tables) = super::output_of("nft", &["list", "tables"]) else {
        return Ok(removed);
    };
    for family in ["ip", "ip6"] {
        let name = super::nftables::KUBE_PROXY_TABLE;
        if tables
            .lines()
            .any(|l| l.trim() == format!("table {family} {name}"))
        {
            super::run_with_input(
                "nft",
                &["-f", "-"],
                &format!("delete table {family} {name}\n"),
            )?;
            removed.push(format!("nft table {family} {name}"));
        }
    }
    Ok(removed)
}

fn kube_proxy_iptables_only() -> anyhow::Result<Vec<String>> {
    use std::fmt::Write as _;
    let mut removed = Vec::new();
    let prefixes = super::iptables::KUBE_PROXY_PREFIXES;
    let mut input = String::new();
    for table in super::iptables::TABLES {
        let Ok(save) = super::output_of("iptables-save", &["-t", table]) else {
            continue;
        };
        let chains = super::iptables::parse_chains(&save, prefixes);
        let jumps = super::iptables::parse_jumps(&save, prefixes);
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        writeln!(input, "*{table}")?;
        for c in &chains {
            writeln!(input, ":{c} - [0:0]")?;
        }
        for j in &jumps {
            writeln!(input, "{j}")?;
        }
        for c in &chains {
            writeln!(input, "-X {c}")?;
            removed.push(format!("iptables {table} {c}"));
        }
        writeln!(input, "COMMIT")?;
    }
    if !input.is_empty() {
        super::run_with_input("iptables-restore", &["-w", "--noflush"], &input)?;
    }
    Ok(removed)
}

/// Called at start, with kube-proxy's leftovers included: kube-proxy must not run next to
/// Sluice, and its stale rules would otherwise keep answering for Services. A failure is
/// logged, not fatal, since the chosen dataplane may still serve.
pub fn switch_to(mode: Dataplane, pin_path: &Path) {
    if let Err(e) = remove_others(Some(mode), pin_path, true) {
        warn!(error = %format!("{e:#}"), "removing the previous dataplane's state failed");
    }
}
