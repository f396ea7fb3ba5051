//! Table-style tests of the pure renderers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::model::{
    EmptyAction, Endpoint, Frontend, FrontendKey, FrontendKind, Protocol, Scope, ServiceName,
};

pub(crate) fn ep(ip: &str, port: u16) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port,
    }
}

pub(crate) fn frontend(
    svc: &str,
    kind: FrontendKind,
    ip: &str,
    port: u16,
    protocol: Protocol,
    endpoints: Vec<Endpoint>,
) -> Frontend {
    Frontend {
        key: FrontendKey {
            ip: ip.parse().unwrap(),
            port,
            protocol,
            scope: Scope::Both,
        },
        kind,
        service: ServiceName::new("default", svc),
        port_name: "p".into(),
        endpoints,
        draining: Vec::new(),
        on_empty: EmptyAction::Reject,
        affinity_timeout: None,
        scheduler: None,
        masquerade_external: kind.is_external(),
        source_ranges: Vec::new(),
    }
}

pub(crate) fn state(frontends: Vec<Frontend>) -> DesiredState {
    let mut services: BTreeMap<ServiceName, Vec<Frontend>> = BTreeMap::new();
    for f in frontends {
        services.entry(f.service.clone()).or_default().push(f);
    }
    for v in services.values_mut() {
        v.sort_by_key(|f| f.key);
    }
    DesiredState {
        services,
        ..DesiredState::default()
    }
}

pub(crate) fn settings(local: LocalMatch) -> RuleSettings {
    RuleSettings {
        local,
        masquerade_all: false,
        masquerade_mark: 0x4000,
        node_addresses: vec![Ipv4Addr::new(10, 0, 1, 1)],
        ipvs_scheduler: "rr".into(),
    }
}

fn web(endpoints: Vec<Endpoint>) -> Frontend {
    frontend(
        "web",
        FrontendKind::ClusterIp,
        "10.96.0.10",
        80,
        Protocol::Tcp,
        endpoints,
    )
}

fn cidr() -> LocalMatch {
    LocalMatch::Cidr("10.244.0.0/16".parse().unwrap())
}

/// A split eTP=Local NodePort: internal clients get both endpoints, external ones none
/// (dropped).
fn split_nodeport() -> Vec<Frontend> {
    let mut internal = frontend(
        "np",
        FrontendKind::NodePort,
        "10.0.1.1",
        30080,
        Protocol::Tcp,
        vec![ep("10.0.10.2", 8080), ep("10.0.11.2", 8080)],
    );
    internal.key.scope = Scope::Internal;
    internal.masquerade_external = false;
    let mut external = internal.clone();
    external.key.scope = Scope::External;
    external.endpoints.clear();
    external.on_empty = EmptyAction::Drop;
    vec![internal, external]
}

#[test]
fn plan_routes_each_address_once_with_the_right_masquerade() {
    struct Case {
        name: &'static str,
        frontends: Vec<Frontend>,
        local: LocalMatch,
        masquerade_all: bool,
        masquerade: Masquerade,
        internal: Option<&'static str>,
        external: &'static str,
    }
    let cases = vec![
        Case {
            name: "ClusterIP, nothing local: never masqueraded",
            frontends: vec![web(vec![ep("10.0.10.2", 8080)])],
            local: LocalMatch::Nothing,
            masquerade_all: false,
            masquerade: Masquerade::Never,
            internal: None,
            external: "service",
        },
        Case {
            name: "ClusterIP with a cluster CIDR: off-cluster clients masqueraded",
            frontends: vec![web(vec![ep("10.0.10.2", 8080)])],
            local: cidr(),
            masquerade_all: false,
            masquerade: Masquerade::NonLocal,
            internal: None,
            external: "service",
        },
        Case {
            name: "masqueradeAll",
            frontends: vec![web(vec![])],
            local: cidr(),
            masquerade_all: true,
            masquerade: Masquerade::All,
            internal: None,
            external: "reject",
        },
        Case {
            name: "NodePort, eTP Cluster: every client masqueraded",
            frontends: vec![frontend(
                "np",
                FrontendKind::NodePort,
                "10.0.1.1",
                30080,
                Protocol::Udp,
                vec![ep("10.0.10.2", 53)],
            )],
            local: cidr(),
            masquerade_all: false,
            masquerade: Masquerade::All,
            internal: None,
            external: "service",
        },
        Case {
            name: "split eTP Local: internal balanced, external dropped, no masquerade",
            frontends: split_nodeport(),
            local: cidr(),
            masquerade_all: false,
            masquerade: Masquerade::Never,
            internal: Some("service"),
            external: "drop",
        },
        Case {
            name: "split without a local match: every client is external",
            frontends: split_nodeport(),
            local: LocalMatch::Nothing,
            masquerade_all: false,
            masquerade: Masquerade::Never,
            internal: None,
            external: "drop",
        },
    ];
    let kind = |t: &Target| match t {
        Target::Reject => "reject",
        Target::Drop => "drop",
        Target::Service(_) => "service",
    };
    for case in cases {
        let mut s = settings(case.local);
        s.masquerade_all = case.masquerade_all;
        let p = plan(&state(case.frontends), &s);
        assert_eq!(p.frontends.len(), 1, "{}", case.name);
        let d = &p.frontends[0];
        assert_eq!(d.masquerade, case.masquerade, "{}", case.name);
        assert_eq!(
            d.internal.as_ref().map(kind),
            case.internal,
            "{}",
            case.name
        );
        assert_eq!(kind(&d.external), case.external, "{}", case.name);
    }
}

#[test]
fn frontends_of_one_service_port_share_chains_and_ids_are_stable() {
    let np = frontend(
        "web",
        FrontendKind::NodePort,
        "10.0.1.1",
        30080,
        Protocol::Tcp,
        vec![ep("10.0.10.2", 8080), ep("10.0.11.2", 8080)],
    );
    let cip = web(vec![ep("10.0.10.2", 8080), ep("10.0.11.2", 8080)]);
    let s = settings(LocalMatch::Nothing);
    let p = plan(&state(vec![np.clone(), cip.clone()]), &s);
    assert_eq!(p.frontends.len(), 2);
    assert_eq!(p.services.len(), 1, "one service chain for the shared set");
    assert_eq!(p.endpoints.len(), 2);
    assert_eq!(p, plan(&state(vec![cip, np]), &s), "order does not matter");
    assert_eq!(stable_id("web"), stable_id("web"));
    assert_ne!(stable_id("web"), stable_id("weB"));
    assert_eq!(stable_id("").len(), 16);
}

#[test]
fn ipv6_frontends_are_reported_unserved() {
    let f = frontend(
        "v6",
        FrontendKind::ClusterIp,
        "fd00::10",
        80,
        Protocol::Tcp,
        vec![ep("fd00::2", 80)],
    );
    let p = plan(&state(vec![f]), &settings(LocalMatch::Nothing));
    assert!(p.frontends.is_empty());
    assert_eq!(p.unserved.len(), 1);
}

// ------------------------------------------------------------------------------------------
// nftables
// ------------------------------------------------------------------------------------------

fn nft(frontends: Vec<Frontend>, local: LocalMatch) -> nftables::NftState {
    let s = settings(local);
    nftables::render(&plan(&state(frontends), &s), &s)
}

fn chain_with<'a>(s: &'a nftables::NftState, prefix: &str) -> Vec<&'a nftables::Chain> {
    s.chains
        .iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(_, c)| c)
        .collect()
}

#[test]
fn nft_rules_for_each_kind_of_frontend() {
    struct Case {
        name: &'static str,
        frontends: Vec<Frontend>,
        local: LocalMatch,
        /// Substrings expected somewhere in the rendered rules or map elements.
        expect: Vec<&'static str>,
        absent: Vec<&'static str>,
    }
    let mut affinity = web(vec![ep("10.0.10.2", 8080), ep("10.0.11.2", 8080)]);
    affinity.affinity_timeout = Some(10800);
    let mut lb = frontend(
        "lb",
        FrontendKind::LoadBalancer,
        "192.0.2.10",
        443,
        Protocol::Tcp,
        vec![ep("10.0.10.2", 8443)],
    );
    lb.source_ranges = vec!["198.51.100.0/24".parse().unwrap()];
    let cases = vec![
        Case {
            name: "ClusterIP over three endpoints",
            frontends: vec![web(vec![
                ep("10.0.10.2", 8080),
                ep("10.0.11.2", 8080),
                ep("10.0.12.2", 8080),
            ])],
            local: LocalMatch::Nothing,
            expect: vec![
                "10.96.0.10 . tcp . 80 : goto svc-",
                "numgen random mod 3 vmap { 0 : goto sep-",
                "meta l4proto tcp dnat to 10.0.12.2:8080",
                "ip saddr 10.0.10.2 jump mark-for-masquerade",
            ],
            absent: vec!["goto fe-", "@aff-"],
        },
        Case {
            name: "no endpoints: refused in the filter hooks",
            frontends: vec![web(vec![])],
            local: LocalMatch::Nothing,
            expect: vec!["10.96.0.10 . tcp . 80 : goto reject-chain"],
            absent: vec!["goto svc-"],
        },
        Case {
            name: "ClientIP affinity: checked before the random choice, recorded at DNAT",
            frontends: vec![affinity],
            local: LocalMatch::Nothing,
            expect: vec!["ip saddr @aff-", "update @aff-", "numgen random mod 2"],
            absent: vec![],
        },
        Case {
            name: "off-cluster ClusterIP clients are masqueraded",
            frontends: vec![web(vec![ep("10.0.10.2", 8080)])],
            local: cidr(),
            expect: vec![
                "goto fe-",
                "ip saddr != 10.244.0.0/16 jump mark-for-masquerade",
            ],
            absent: vec![],
        },
        Case {
            name: "split eTP Local: local clients balanced, others dropped",
            frontends: split_nodeport(),
            local: LocalMatch::Interface {
                name: "veth".into(),
                prefix: true,
            },
            expect: vec![
                "iifname \"veth*\" goto svc-",
                "10.0.1.1 . tcp . 30080 : goto empty-",
                "drop",
            ],
            absent: vec!["jump mark-for-masquerade\""],
        },
        Case {
            name: "loadBalancerSourceRanges admit the ranges and the node",
            frontends: vec![lb],
            local: LocalMatch::Nothing,
            expect: vec![
                "192.0.2.10 . tcp . 443 : goto fw-",
                "ip saddr { 198.51.100.0/24, 10.0.1.1/32 } return",
            ],
            absent: vec![],
        },
    ];
    for case in cases {
        let s = nft(case.frontends, case.local);
        let mut text = String::new();
        for c in s.chains.values() {
            text.push_str(&c.rules.join("\n"));
            text.push('\n');
        }
        for m in s.maps.values() {
            for (k, v) in m {
                text.push_str(&format!("{k} : {v}\n"));
            }
        }
        for e in &case.expect {
            assert!(text.contains(e), "{}: missing {e:?} in\n{text}", case.name);
        }
        for a in &case.absent {
            assert!(
                !text.contains(a),
                "{}: unexpected {a:?} in\n{text}",
                case.name
            );
        }
    }
}

#[test]
fn nft_partial_transaction_touches_only_the_changed_service() {
    let other = frontend(
        "other",
        FrontendKind::ClusterIp,
        "10.96.0.11",
        53,
        Protocol::Udp,
        vec![ep("10.0.12.2", 5353)],
    );
    let before = nft(
        vec![
            web(vec![ep("10.0.10.2", 8080), ep("10.0.11.2", 8080)]),
            other.clone(),
        ],
        LocalMatch::Nothing,
    );
    let after = nft(
        vec![web(vec![ep("10.0.11.2", 8080)]), other],
        LocalMatch::Nothing,
    );
    let present = nftables::Present::default();
    let (full, _) = nftables::transaction(None, &present, &before);
    assert!(full.starts_with("add table ip sluice\n"));
    assert!(full.contains("flush map ip sluice service-ips"));
    let (script, changed) = nftables::transaction(Some(&before), &present, &after);
    assert!(
        !script.contains("10.96.0.11"),
        "the other Service is untouched:\n{script}"
    );
    assert!(!script.contains("add table"), "{script}");
    assert!(script.contains("delete element ip sluice service-ips { 10.96.0.10 . tcp . 80 }"));
    assert!(
        script.contains("add element ip sluice service-ips { 10.96.0.10 . tcp . 80 : goto svc-")
    );
    // The old service chain and the removed endpoint's chain go; they are flushed first.
    let flush = script.find("flush chain").unwrap();
    let delete = script.find("delete chain").unwrap();
    assert!(flush < delete, "{script}");
    assert_eq!(script.matches("delete chain").count(), 2, "{script}");
    assert!(changed >= 3);
    let (nothing, n) = nftables::transaction(Some(&after), &present, &after);
    assert_eq!((nothing.as_str(), n), ("", 0));
}

#[test]
fn nft_full_transaction_deletes_what_the_kernel_holds_beyond_the_state() {
    let state = nft(vec![web(vec![ep("10.0.10.2", 8080)])], LocalMatch::Nothing);
    let present = nftables::parse_present(
        "table ip sluice {\n\tset aff-OLD-300 {\n\t}\n\tchain svc-OLD {\n\t}\n\tchain services {\n\t}\n}\n",
    );
    assert!(present.chains.contains("svc-OLD"));
    let (script, _) = nftables::transaction(None, &present, &state);
    assert!(
        script.contains("delete chain ip sluice svc-OLD"),
        "{script}"
    );
    assert!(
        script.contains("delete set ip sluice aff-OLD-300"),
        "{script}"
    );
    assert!(
        !script.contains("delete chain ip sluice services"),
        "{script}"
    );
}

#[test]
fn nft_every_frontend_chain_is_reachable() {
    let s = nft(split_nodeport(), cidr());
    assert_eq!(chain_with(&s, "fe-").len(), 1);
    assert_eq!(chain_with(&s, "empty-").len(), 1);
    assert_eq!(chain_with(&s, "svc-").len(), 1);
    assert_eq!(chain_with(&s, "sep-").len(), 2);
}

// ------------------------------------------------------------------------------------------
// iptables
// ------------------------------------------------------------------------------------------

fn ipt(frontends: Vec<Frontend>, local: LocalMatch) -> iptables::IptState {
    let s = settings(local);
    iptables::render(&plan(&state(frontends), &s), &s)
}

fn all_rules(s: &iptables::IptState) -> String {
    let mut text = String::new();
    for (table, chains) in s {
        for (name, rules) in chains {
            for r in rules {
                text.push_str(&format!("{table} -A {name} {r}\n"));
            }
        }
    }
    text
}

#[test]
fn iptables_rules_for_each_kind_of_frontend() {
    let mut affinity = web(vec![ep("10.0.10.2", 8080), ep("10.0.11.2", 8080)]);
    affinity.affinity_timeout = Some(600);
    let cases: Vec<(&str, Vec<Frontend>, LocalMatch, Vec<&str>)> = vec![
        (
            "three endpoints: 1/3, 1/2, then the rest",
            vec![web(vec![
                ep("10.0.10.2", 8080),
                ep("10.0.11.2", 8080),
                ep("10.0.12.2", 8080),
            ])],
            LocalMatch::Nothing,
            vec![
                "nat -A SLUICE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80",
                "--probability 0.3333333333 -j SLUICE-SEP-",
                "--probability 0.5000000000 -j SLUICE-SEP-",
                "-p tcp -m tcp -j DNAT --to-destination 10.0.12.2:8080",
                "-s 10.0.10.2/32 -j SLUICE-MARK-MASQ",
                "nat -A SLUICE-POSTROUTING -j MASQUERADE --random-fully",
            ],
        ),
        (
            "no endpoints: REJECT in filter",
            vec![web(vec![])],
            LocalMatch::Nothing,
            vec!["filter -A SLUICE-EMPTY -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -m comment"],
        ),
        (
            "affinity with recent",
            vec![affinity],
            LocalMatch::Nothing,
            vec![
                "--rcheck --seconds 600 --reap -j SLUICE-SEP-",
                "-m recent --name SLUICE-SEP-",
                "--rsource --set -m tcp -j DNAT",
            ],
        ),
        (
            "split eTP Local: local sources to the service, others dropped in filter",
            split_nodeport(),
            cidr(),
            vec![
                "-s 10.244.0.0/16 -j SLUICE-SVC-",
                "filter -A SLUICE-EMPTY -d 10.0.1.1/32 -p tcp -m tcp --dport 30080 -m comment",
                "-j DROP",
            ],
        ),
        (
            "off-cluster ClusterIP clients masqueraded",
            vec![web(vec![ep("10.0.10.2", 8080)])],
            cidr(),
            vec!["-A SLUICE-FE-", "! -s 10.244.0.0/16 -j SLUICE-MARK-MASQ"],
        ),
    ];
    for (name, frontends, local, expect) in cases {
        let s = ipt(frontends, local);
        let text = all_rules(&s);
        for e in expect {
            assert!(text.contains(e), "{name}: missing {e:?} in\n{text}");
        }
        for chains in s.values() {
            for chain in chains.keys() {
                assert!(chain.len() <= 28, "{chain} is too long for iptables");
            }
        }
    }
}

#[test]
fn iptables_partial_restore_rewrites_only_changed_chains() {
    let other = frontend(
        "other",
        FrontendKind::ClusterIp,
        "10.96.0.11",
        53,
        Protocol::Udp,
        vec![ep("10.0.12.2", 5353)],
    );
    let before = ipt(
        vec![
            web(vec![ep("10.0.10.2", 8080), ep("10.0.11.2", 8080)]),
            other.clone(),
        ],
        LocalMatch::Nothing,
    );
    let after = ipt(
        vec![web(vec![ep("10.0.11.2", 8080)]), other],
        LocalMatch::Nothing,
    );
    let (input, _) = iptables::restore_input(Some(&before), &BTreeMap::new(), &after);
    assert!(input.starts_with("*nat\n"), "{input}");
    assert!(!input.contains("*filter"), "filter unchanged:\n{input}");
    assert!(
        !input.contains("10.0.12.2"),
        "the other Service is untouched:\n{input}"
    );
    assert!(input.contains(":SLUICE-SERVICES - [0:0]"), "{input}");
    assert_eq!(
        input.matches("-X SLUICE-").count(),
        2,
        "old SVC and SEP:\n{input}"
    );
    let (same, n) = iptables::restore_input(Some(&after), &BTreeMap::new(), &after);
    assert_eq!((same.as_str(), n), ("", 0));

    let present = BTreeMap::from([(
        "nat".to_string(),
        std::collections::BTreeSet::from(["SLUICE-SVC-STALE".to_string()]),
    )]);
    let (full, _) = iptables::restore_input(None, &present, &after);
    assert!(
        full.contains("*filter") && full.contains("*mangle"),
        "{full}"
    );
    assert!(full.contains("-X SLUICE-SVC-STALE"), "{full}");
}

#[test]
fn iptables_save_parsing_finds_chains_and_jumps_by_prefix() {
    let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABC - [0:0]\n\
                :KUBE-MARK-MASQ - [0:0]\n:SLUICE-SERVICES - [0:0]\n\
                -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                -A PREROUTING -j SLUICE-SERVICES\n-A KUBE-SERVICES -j KUBE-SVC-ABC\nCOMMIT\n";
    let kube = iptables::parse_chains(save, iptables::KUBE_PROXY_PREFIXES);
    assert_eq!(
        kube.into_iter().collect::<Vec<_>>(),
        vec!["KUBE-SERVICES".to_string(), "KUBE-SVC-ABC".to_string()],
        "KUBE-MARK-MASQ may be the kubelet's and stays"
    );
    let jumps = iptables::parse_jumps(save, iptables::KUBE_PROXY_PREFIXES);
    assert_eq!(
        jumps,
        vec!["-D PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"]
    );
}

// ------------------------------------------------------------------------------------------
// IPVS
// ------------------------------------------------------------------------------------------

#[test]
fn ipvs_render_and_diff() {
    let mut sticky = web(vec![ep("10.0.10.2", 8080)]);
    sticky.affinity_timeout = Some(300);
    sticky.draining = vec![ep("10.0.11.2", 8080)];
    sticky.scheduler = Some(crate::config::Scheduler::Maglev);
    let s = settings(LocalMatch::Nothing);
    let desired = ipvs::render(&state(vec![sticky]), &s);
    let empty = ipvs::IpvsState::new();
    assert_eq!(
        ipvs::diff(&empty, &desired),
        vec![
            "-A -t 10.96.0.10:80 -s mh -p 300",
            "-a -t 10.96.0.10:80 -r 10.0.10.2:8080 -m -w 1",
            "-a -t 10.96.0.10:80 -r 10.0.11.2:8080 -m -w 0",
        ],
        "the draining endpoint is a weight-0 real server"
    );
    struct Case {
        name: &'static str,
        current: &'static str,
        expect: Vec<&'static str>,
    }
    let cases = vec![
        Case {
            name: "in step: nothing",
            current: "-A -t 10.96.0.10:80 -s mh -p 300\n-a -t 10.96.0.10:80 -r 10.0.10.2:8080 -m -w 1\n-a -t 10.96.0.10:80 -r 10.0.11.2:8080 -m -w 0\n",
            expect: vec![],
        },
        Case {
            name: "weight change, stale real server and stale service",
            current: "-A -t 10.96.0.10:80 -s mh -p 300\n-a -t 10.96.0.10:80 -r 10.0.10.2:8080 -m -w 1\n-a -t 10.96.0.10:80 -r 10.0.11.2:8080 -m -w 1\n-a -t 10.96.0.10:80 -r 10.0.12.2:8080 -m -w 1\n-A -u 10.96.0.99:53 -s rr\n",
            expect: vec![
                "-D -u 10.96.0.99:53",
                "-d -t 10.96.0.10:80 -r 10.0.12.2:8080",
                "-e -t 10.96.0.10:80 -r 10.0.11.2:8080 -m -w 0",
            ],
        },
        Case {
            name: "scheduler and persistence edited in place",
            current: "-A -t 10.96.0.10:80 -s rr\n-a -t 10.96.0.10:80 -r 10.0.10.2:8080 -m -w 1\n-a -t 10.96.0.10:80 -r 10.0.11.2:8080 -m -w 0\n",
            expect: vec!["-E -t 10.96.0.10:80 -s mh -p 300"],
        },
    ];
    for case in cases {
        let current = ipvs::parse_save(case.current);
        assert_eq!(ipvs::diff(&current, &desired), case.expect, "{}", case.name);
    }
    assert_eq!(
        ipvs::dummy_addresses(&desired, &s)
            .into_iter()
            .collect::<Vec<_>>(),
        vec![Ipv4Addr::new(10, 96, 0, 10)]
    );
}

#[test]
fn ipvs_node_port_addresses_are_not_bound_and_masquerade_rules_mark_external_frontends() {
    let np = frontend(
        "np",
        FrontendKind::NodePort,
        "10.0.1.1",
        30080,
        Protocol::Tcp,
        vec![ep("10.0.10.2", 8080)],
    );
    let s = settings(LocalMatch::Nothing);
    let st = state(vec![np, web(vec![ep("10.0.10.2", 8080)])]);
    let desired = ipvs::render(&st, &s);
    assert_eq!(desired.len(), 2);
    assert_eq!(ipvs::dummy_addresses(&desired, &s).len(), 1);
    let rules = all_rules(&ipvs::masquerade_rules(&st, &s));
    assert!(rules.contains("-d 10.0.1.1/32 -p tcp -m tcp --dport 30080 -j SLUICE-MARK-MASQ"));
    assert!(
        !rules.contains("DNAT"),
        "IPVS translates, not iptables:\n{rules}"
    );
    assert!(!rules.contains("-d 10.96.0.10/32"), "{rules}");
    let _ = IpAddr::V4(Ipv4Addr::LOCALHOST);
}
