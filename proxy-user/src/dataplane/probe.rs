//! What this node's kernel and tools offer, and which dataplane Sluice runs on.
//!
//! [`probe`] is the thin layer that asks the kernel (through aya's feature probes, which load
//! a trivial program or create a one-entry map and look at the verdict) and looks for the
//! fallbacks' tools; [`decide`] is the pure choice. `sluice probe` prints the same report
//! `sluice run` decides from, so an operator sees exactly why a node runs what it runs.

use std::{fmt, path::Path, process::Command};

use aya::{
    maps::MapType,
    programs::{ProgramType, SchedClassifier, TcAttachType},
    sys::{BpfHelper, is_helper_supported, is_map_supported, is_program_supported},
};

use crate::config::Dataplane;

/// Whether the eBPF dataplane cannot run without a feature, or only a planned part of it uses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Required,
    /// Used by work in progress (XDP, hash-of-maps); reported, never decisive.
    Planned,
}

/// One feature and what the probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Stable name, also what `--pretend-missing` takes (e.g. `map:lru_hash`, `attach:tcx`).
    pub name: &'static str,
    pub need: Need,
    /// `Err(why)` when absent.
    pub present: Result<(), String>,
    /// The probe itself failed (the kernel refused the bpf() call: no CAP_BPF, or a seccomp
    /// or LSM policy), so nothing is known about the kernel.
    pub unknown: bool,
}

/// Everything `decide` looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeReport {
    pub kernel: String,
    pub bpf: Vec<Feature>,
    /// The fallbacks in order of preference, each available or not (and why not).
    pub fallbacks: Vec<(Dataplane, Result<(), String>)>,
}

impl ProbeReport {
    /// Required features whose probe failed, with the error.
    pub fn unprobed(&self) -> Vec<String> {
        self.bpf
            .iter()
            .filter(|f| f.need == Need::Required && f.unknown)
            .filter_map(|f| f.present.as_ref().err().map(|e| format!("{}: {e}", f.name)))
            .collect()
    }

    /// Required eBPF features that are absent, with the reason.
    pub fn missing_required(&self) -> Vec<String> {
        self.bpf
            .iter()
            .filter(|f| f.need == Need::Required)
            .filter_map(|f| f.present.as_ref().err().map(|e| format!("{}: {e}", f.name)))
            .collect()
    }
}

impl fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "kernel {}", self.kernel)?;
        for feature in &self.bpf {
            let need = match feature.need {
                Need::Required => "required",
                Need::Planned => "planned",
            };
            match &feature.present {
                Ok(()) => writeln!(f, "  {:<28} {need:<9} present", feature.name)?,
                Err(e) => writeln!(f, "  {:<28} {need:<9} MISSING ({e})", feature.name)?,
            }
        }
        for (mode, available) in &self.fallbacks {
            match available {
                Ok(()) => writeln!(f, "  fallback {:<19} available", mode.as_str())?,
                Err(e) => writeln!(f, "  fallback {:<19} unavailable ({e})", mode.as_str())?,
            }
        }
        Ok(())
    }
}

/// The dataplane chosen and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Never [`Dataplane::Auto`].
    pub mode: Dataplane,
    pub reason: String,
    /// Problems the operator must hear about although the decision stands (a forced mode whose
    /// features are missing: it will likely fail to start, and says so).
    pub warnings: Vec<String>,
}

/// Chooses the dataplane for `setting`. A forced fallback whose tool is missing is an error,
/// since nothing could serve Services; a forced `ebpf` on a kernel missing features is tried
/// anyway (the operator asked) with the missing features as warnings.
pub fn decide(setting: Dataplane, report: &ProbeReport) -> Result<Decision, String> {
    let missing = report.missing_required();
    let unprobed = report.unprobed();
    match setting {
        // Falling back because Sluice may not call bpf() would hide a broken deployment (a
        // dropped capability) behind a slower dataplane: that is an error, not an old kernel.
        Dataplane::Auto if !unprobed.is_empty() => Err(format!(
            "auto: cannot probe the kernel's BPF features ({}); Sluice needs CAP_BPF (and no \
             seccomp or LSM policy forbidding bpf()) to use or rule out the eBPF dataplane; set \
             `dataplane` to a fallback to run without it",
            unprobed.join("; ")
        )),
        Dataplane::Auto if missing.is_empty() => Ok(Decision {
            mode: Dataplane::Ebpf,
            reason: "auto: the kernel has every BPF feature Sluice needs".into(),
            warnings: Vec::new(),
        }),
        Dataplane::Auto => {
            let Some((mode, _)) = report.fallbacks.iter().find(|(_, ok)| ok.is_ok()) else {
                return Err(format!(
                    "auto: the eBPF dataplane cannot run (missing {}) and no fallback is \
                     available ({})",
                    missing.join("; "),
                    unavailable(report)
                ));
            };
            Ok(Decision {
                mode: *mode,
                reason: format!(
                    "auto: falling back to {mode} because the kernel lacks {}",
                    missing.join("; ")
                ),
                warnings: Vec::new(),
            })
        }
        Dataplane::Ebpf => Ok(Decision {
            mode: Dataplane::Ebpf,
            reason: "forced by the `dataplane` setting".into(),
            warnings: missing
                .into_iter()
                .map(|m| format!("dataplane ebpf is forced but the kernel lacks {m}"))
                .collect(),
        }),
        forced => match report.fallbacks.iter().find(|(m, _)| *m == forced) {
            Some((_, Ok(()))) | None => Ok(Decision {
                mode: forced,
                reason: "forced by the `dataplane` setting".into(),
                warnings: Vec::new(),
            }),
            Some((_, Err(e))) => Err(format!("dataplane {forced} is forced but unavailable: {e}")),
        },
    }
}

fn unavailable(report: &ProbeReport) -> String {
    report
        .fallbacks
        .iter()
        .filter_map(|(m, r)| r.as_ref().err().map(|e| format!("{m}: {e}")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Probes the running kernel and the fallbacks' tools. Features named in `pretend_missing` are
/// reported absent whatever the kernel says: that is how tests (and an operator rehearsing a
/// fleet's old kernels) exercise the fallback choice on a kernel that has everything.
pub fn probe(pretend_missing: &[String]) -> ProbeReport {
    let hide = |name: &'static str, found: Result<(), (String, bool)>| -> Feature {
        let (present, unknown) = if pretend_missing.iter().any(|n| n == name) {
            (Err("pretended missing (--pretend-missing)".into()), false)
        } else {
            match found {
                Ok(()) => (Ok(()), false),
                Err((why, unknown)) => (Err(why), unknown),
            }
        };
        Feature {
            name,
            need: if PLANNED.contains(&name) {
                Need::Planned
            } else {
                Need::Required
            },
            present,
            unknown,
        }
    };
    let mut bpf = Vec::new();
    for (name, program) in [
        ("program:sched_cls", ProgramType::SchedClassifier),
        ("program:xdp", ProgramType::Xdp),
    ] {
        bpf.push(hide(name, verdict(is_program_supported(program))));
    }
    for (name, map) in [
        ("map:hash", MapType::Hash),
        ("map:lru_hash", MapType::LruHash),
        ("map:array", MapType::Array),
        ("map:percpu_array", MapType::PerCpuArray),
        ("map:lpm_trie", MapType::LpmTrie),
        ("map:hash_of_maps", MapType::HashOfMaps),
    ] {
        bpf.push(hide(name, verdict(is_map_supported(map))));
    }
    for (name, helper) in [
        ("helper:fib_lookup", BpfHelper::BPF_FUNC_fib_lookup),
        ("helper:redirect", BpfHelper::BPF_FUNC_redirect),
        ("helper:redirect_neigh", BpfHelper::BPF_FUNC_redirect_neigh),
        (
            "helper:skb_change_tail",
            BpfHelper::BPF_FUNC_skb_change_tail,
        ),
        ("helper:csum_diff", BpfHelper::BPF_FUNC_csum_diff),
        (
            "helper:l3_csum_replace",
            BpfHelper::BPF_FUNC_l3_csum_replace,
        ),
        (
            "helper:l4_csum_replace",
            BpfHelper::BPF_FUNC_l4_csum_replace,
        ),
    ] {
        bpf.push(hide(
            name,
            verdict(is_helper_supported(ProgramType::SchedClassifier, helper)),
        ));
    }
    // TCX: querying the loopback's TCX ingress hook fails with EINVAL on kernels without it;
    // this attaches nothing.
    bpf.push(hide(
        "attach:tcx",
        SchedClassifier::query_tcx("lo", TcAttachType::Ingress)
            .map(|_| ())
            .map_err(|e| {
                let denied = permission_denied(&e);
                (
                    format!("TCX query failed ({}); needs Linux 6.6", chain(&e)),
                    denied,
                )
            }),
    ));
    let kernel = kernel_release();
    // The verifier does not check helper flags, so BPF_FIB_LOOKUP_SRC can only be known from
    // the version that added it (6.8): older kernels reject the flag at run time.
    bpf.push(hide(
        "helper:fib_lookup_src",
        match parse_version(&kernel) {
            Some(v) if v >= (6, 8) => Ok(()),
            Some((a, b)) => Err((
                format!("BPF_FIB_LOOKUP_SRC needs Linux 6.8, this is {a}.{b}"),
                false,
            )),
            None => Err((
                format!("cannot read the kernel version from {kernel:?}"),
                true,
            )),
        },
    ));
    let fallbacks = vec![
        (Dataplane::Nftables, tool_works("nft", &["list", "tables"])),
        (Dataplane::Ipvs, ipvs_available()),
        (
            Dataplane::Iptables,
            tool_works("iptables-restore", &["--version"])
                .and_then(|()| tool_works("iptables", &["-w", "-t", "nat", "-S", "PREROUTING"])),
        ),
    ];
    ProbeReport {
        kernel,
        bpf,
        fallbacks,
    }
}

/// Features reported but not required by today's datapath.
const PLANNED: &[&str] = &["program:xdp", "map:hash_of_maps"];

/// `Err((why, unknown))`: a failed probe is unknown, and carries its whole error chain (the
/// errno is in the source, e.g. "Operation not permitted").
fn verdict<E: std::error::Error>(r: Result<bool, E>) -> Result<(), (String, bool)> {
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(("not supported by this kernel".into(), false)),
        Err(e) => Err((format!("probe failed: {}", chain(&e)), true)),
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn permission_denied(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        {
            return true;
        }
        current = err.source();
    }
    false
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `6.1.0-27-amd64` → (6, 1).
pub fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn tool_works(tool: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(tool).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{tool} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("{tool} not found ({e})")),
    }
}

/// IPVS needs the kernel's ip_vs (loaded or loadable) and ipvsadm, plus iptables for the
/// masquerade rules IPVS mode keeps there.
fn ipvs_available() -> Result<(), String> {
    if !Path::new("/proc/net/ip_vs").exists() {
        // modprobe succeeds only where the module exists; a kernel without IPVS says so.
        let loaded = Command::new("modprobe")
            .arg("ip_vs")
            .status()
            .is_ok_and(|s| s.success());
        if !loaded || !Path::new("/proc/net/ip_vs").exists() {
            return Err("the kernel has no IPVS (ip_vs)".into());
        }
    }
    tool_works("ipvsadm", &["--version"])?;
    tool_works("iptables-restore", &["--version"])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(missing: &[&'static str], fallbacks: &[(Dataplane, bool)]) -> ProbeReport {
        let names = [
            "map:lru_hash",
            "attach:tcx",
            "helper:fib_lookup",
            "program:xdp",
        ];
        ProbeReport {
            kernel: "6.1.0-27-amd64".into(),
            bpf: names
                .iter()
                .map(|&name| Feature {
                    name,
                    need: if PLANNED.contains(&name) {
                        Need::Planned
                    } else {
                        Need::Required
                    },
                    present: if missing.contains(&name) {
                        Err("absent".into())
                    } else {
                        Ok(())
                    },
                    unknown: false,
                })
                .collect(),
            fallbacks: fallbacks
                .iter()
                .map(|&(m, ok)| (m, if ok { Ok(()) } else { Err("no tool".into()) }))
                .collect(),
        }
    }

    const ALL: &[(Dataplane, bool)] = &[
        (Dataplane::Nftables, true),
        (Dataplane::Ipvs, true),
        (Dataplane::Iptables, true),
    ];

    #[test]
    fn decisions() {
        use Dataplane::*;
        /// (setting, features missing, fallbacks available, expected choice)
        type Case = (
            Dataplane,
            &'static [&'static str],
            &'static [(Dataplane, bool)],
            Result<Dataplane, ()>,
        );
        let cases: &[Case] = &[
            // everything present → eBPF; a missing planned feature changes nothing
            (Auto, &[], ALL, Ok(Ebpf)),
            (Auto, &["program:xdp"], ALL, Ok(Ebpf)),
            // a missing required feature → the first available fallback
            (Auto, &["attach:tcx"], ALL, Ok(Nftables)),
            (
                Auto,
                &["map:lru_hash"],
                &[(Nftables, false), (Ipvs, false), (Iptables, true)],
                Ok(Iptables),
            ),
            (
                Auto,
                &["attach:tcx"],
                &[(Nftables, false), (Iptables, false)],
                Err(()),
            ),
            // forced modes
            (Ebpf, &["attach:tcx"], ALL, Ok(Ebpf)),
            (Iptables, &[], ALL, Ok(Iptables)),
            (Ipvs, &[], &[(Ipvs, false)], Err(())),
        ];
        for (setting, missing, fallbacks, want) in cases {
            let got = decide(*setting, &report(missing, fallbacks));
            assert_eq!(
                got.as_ref().map(|d| d.mode).map_err(|_| ()),
                *want,
                "{setting} with {missing:?} missing: {got:?}"
            );
        }
    }

    #[test]
    fn the_reason_names_every_missing_feature_and_forced_ebpf_warns() {
        let r = report(&["attach:tcx", "helper:fib_lookup"], ALL);
        let d = decide(Dataplane::Auto, &r).unwrap();
        assert!(d.reason.contains("attach:tcx"), "{}", d.reason);
        assert!(d.reason.contains("helper:fib_lookup"), "{}", d.reason);
        assert!(d.reason.contains("nftables"), "{}", d.reason);
        let forced = decide(Dataplane::Ebpf, &r).unwrap();
        assert_eq!(forced.warnings.len(), 2);
    }

    #[test]
    fn a_failed_probe_is_an_error_for_auto_not_a_reason_to_fall_back() {
        let mut r = report(&["map:lru_hash"], ALL);
        r.bpf[0].unknown = true;
        let err = decide(Dataplane::Auto, &r).unwrap_err();
        assert!(err.contains("CAP_BPF"), "{err}");
        assert!(err.contains("map:lru_hash"), "{err}");
        assert_eq!(
            decide(Dataplane::Iptables, &r).unwrap().mode,
            Dataplane::Iptables
        );
    }

    #[test]
    fn kernel_versions() {
        assert_eq!(parse_version("6.1.0-27-amd64"), Some((6, 1)));
        assert_eq!(parse_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(parse_version("garbage"), None);
    }
}
