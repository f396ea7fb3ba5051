//! The views and renderers on hand-made map contents: no kernel needed.

use std::net::Ipv4Addr;

use clap::{CommandFactory as _, Parser as _};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, FrontendMeta, PROTO_TCP, PROTO_UDP,
    ServiceKey, ServiceValue, SlotKey, TrafficCounters, algorithm, ct_dir, ct_flags, frontend_kind,
    map_names, scope, service_flags,
};
use serde_json::{Value, json};

use super::{
    render::{self, Block},
    source::{Contents, MapFill, builtin_lifetimes},
    views::{
        self, ConntrackFilter, EndpointFilter, ProtocolFilter, ServiceRef, affinity_state,
        slot_state,
    },
};
use crate::cli::{Cli, Command, InspectCommand, OutputFormat};

const S: u64 = 1_000_000_000;
/// CLOCK_MONOTONIC when the hand-made maps are "read".
const NOW: u64 = 100_000 * S;

fn be(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0; N];
    out[..s.len()].copy_from_slice(s.as_bytes());
    out
}

fn meta(ns: &str, name: &str, port: &str, kind: u8, affinity: u32) -> FrontendMeta {
    FrontendMeta {
        namespace: padded(ns),
        name: padded(name),
        port_name: padded(port),
        kind,
        _pad: [0; 3],
        affinity_timeout: affinity,
    }
}

fn backend(a: [u8; 4], port: u16, proto: u8) -> Backend {
    Backend {
        addr: be(a),
        port: port.to_be(),
        proto,
        flags: 0,
    }
}

fn web_key() -> ServiceKey {
    ServiceKey::new(be([10, 96, 0, 10]), 80u16.to_be(), PROTO_TCP)
}

fn node_port_key() -> ServiceKey {
    ServiceKey::new(be([192, 168, 1, 5]), 30080u16.to_be(), PROTO_TCP)
}

fn dns_key() -> ServiceKey {
    ServiceKey::new(be([10, 96, 0, 53]), 53u16.to_be(), PROTO_UDP)
}

fn flow(
    client_port: u16,
    backend_id: u32,
    service_id: u32,
    flags: u16,
    age_s: u64,
) -> (CtKey, CtValue) {
    (
        CtKey {
            saddr: be([10, 0, 1, 2]),
            daddr: be([10, 96, 0, 10]),
            sport: client_port.to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            dir: ct_dir::FORWARD,
            _pad: 0,
        },
        CtValue {
            nat_addr: if backend_id == 1 {
                be([10, 0, 10, 2])
            } else {
                be([10, 0, 11, 2])
            },
            nat_port: 8080u16.to_be(),
            flags,
            backend_id,
            service_id,
            last_seen_ns: NOW - age_s * S,
            rev_addr: 0,
            rev_port: 0,
            _pad: 0,
        },
    )
}

/// default/web: a ClusterIP with two backends and a NodePort split by scope (its external
/// entry has one backend); kube-system/dns: a UDP ClusterIP with no endpoint; plus an entry
/// without metadata and a leftover backend.
fn contents() -> Contents {
    let mut c = Contents {
        lifetimes: builtin_lifetimes(),
        now_ns: NOW,
        ..Contents::default()
    };
    let svc = |id, count, bank, flags| ServiceValue {
        id,
        count,
        bank,
        algorithm: 0,
        flags: service_flags::PRESENT | flags,
        affinity_timeout: 0,
    };
    c.services.insert(
        web_key(),
        ServiceValue {
            algorithm: algorithm::ROUND_ROBIN,
            affinity_timeout: 10_800,
            ..svc(7, 2, 1, 0)
        },
    );
    c.services
        .insert(node_port_key(), svc(8, 0, 0, service_flags::SPLIT_SCOPES));
    c.services.insert(
        node_port_key().with_scope(scope::EXTERNAL),
        svc(
            9,
            1,
            0,
            service_flags::ROUTE_REPLIES | service_flags::DROP_WHEN_EMPTY,
        ),
    );
    c.services.insert(dns_key(), svc(10, 0, 0, 0));
    let orphan = ServiceKey::new(be([10, 96, 0, 99]), 443u16.to_be(), PROTO_TCP);
    c.services.insert(orphan, svc(11, 0, 0, 0));
    let web = meta("default", "web", "http", frontend_kind::CLUSTER_IP, 10_800);
    let np = meta("default", "web", "http", frontend_kind::NODE_PORT, 0);
    c.meta.insert(web_key(), web);
    c.meta.insert(node_port_key(), np);
    c.meta
        .insert(node_port_key().with_scope(scope::EXTERNAL), np);
    c.meta.insert(
        dns_key(),
        meta("kube-system", "dns", "", frontend_kind::CLUSTER_IP, 0),
    );
    c.backends
        .insert(1, backend([10, 0, 10, 2], 8080, PROTO_TCP));
    c.backends
        .insert(2, backend([10, 0, 11, 2], 8080, PROTO_TCP));
    c.backends
        .insert(3, backend([10, 0, 12, 2], 8080, PROTO_TCP));
    c.slots.insert(SlotKey::new(7, 1, 0), 2);
    c.slots.insert(SlotKey::new(7, 1, 1), 1);
    // The idle bank of web, as an update in progress leaves it.
    c.slots.insert(SlotKey::new(7, 0, 0), 3);
    c.slots.insert(SlotKey::new(9, 0, 0), 1);
    c.conntrack = vec![
        flow(40000, 1, 7, ct_flags::SEEN_REPLY, 5),
        flow(40001, 2, 7, 0, 1),
        // A SYN never answered, long past the 120s SYN lifetime.
        flow(40002, 2, 7, 0, 500),
        (
            CtKey {
                dir: ct_dir::REPLY,
                ..flow(40000, 1, 7, 0, 0).0
            },
            CtValue::default(),
        ),
    ];
    c
}

#[test]
fn service_refs_and_endpoint_filters_parse() {
    assert_eq!(
        "default/web".parse::<ServiceRef>(),
        Ok(ServiceRef {
            namespace: "default".into(),
            name: "web".into()
        })
    );
    for bad in ["web", "/web", "default/", "a/b/c"] {
        assert!(bad.parse::<ServiceRef>().is_err(), "{bad}");
    }
    assert_eq!(
        "10.96.0.10:80".parse::<EndpointFilter>(),
        Ok(EndpointFilter {
            addr: Ipv4Addr::new(10, 96, 0, 10),
            port: Some(80)
        })
    );
    assert_eq!(
        "10.96.0.10".parse::<EndpointFilter>().map(|f| f.port),
        Ok(None)
    );
    assert!("fd00::1".parse::<EndpointFilter>().is_err());
}

#[test]
fn services_lists_every_entry_with_its_owner_sorted_by_service() {
    let view = views::services(&contents(), None);
    let rows: Vec<(String, String, &str, &str, u32)> = view
        .frontends
        .iter()
        .map(|f| (f.service(), f.endpoint(), f.scope, f.kind, f.backend_count))
        .collect();
    assert_eq!(
        rows,
        [
            ("-".into(), "10.96.0.99:443/TCP".into(), "any", "unknown", 0),
            (
                "default/web".into(),
                "10.96.0.10:80/TCP".into(),
                "any",
                "ClusterIP",
                2
            ),
            (
                "default/web".into(),
                "192.168.1.5:30080/TCP".into(),
                "any",
                "NodePort",
                0
            ),
            (
                "default/web".into(),
                "192.168.1.5:30080/TCP".into(),
                "external",
                "NodePort",
                1
            ),
            (
                "kube-system/dns".into(),
                "10.96.0.53:53/UDP".into(),
                "any",
                "ClusterIP",
                0
            ),
        ]
    );
    let ext = &view.frontends[3];
    assert_eq!(ext.flags, ["drop-when-empty", "route-replies"]);
    assert_eq!(view.frontends[1].affinity_timeout_seconds, 10_800);
    assert_eq!(view.frontends[4].port_name, None, "an unnamed port is null");

    let only = views::services(&contents(), Some("kube-system"));
    assert_eq!(only.frontends.len(), 1);
}

#[test]
fn services_json_has_the_documented_fields() {
    let view = views::services(&contents(), Some("default"));
    let json: Value = serde_json::to_value(&view).unwrap();
    assert_eq!(
        json["frontends"][0],
        json!({
            "namespace": "default",
            "name": "web",
            "port_name": "http",
            "kind": "ClusterIP",
            "address": "10.96.0.10",
            "port": 80,
            "protocol": "TCP",
            "scope": "any",
            "service_id": 7,
            "bank": 1,
            "algorithm": "round-robin",
            "affinity_timeout_seconds": 10800,
            "backend_count": 2,
            "flags": [],
        })
    );
}

#[test]
fn backends_name_their_services_and_leftovers_have_none() {
    let mut c = contents();
    c.backend_traffic.insert(
        backend([10, 0, 10, 2], 8080, PROTO_TCP),
        TrafficCounters {
            forward_packets: 5,
            forward_bytes: 300,
            reply_packets: 4,
            reply_bytes: 200,
        },
    );
    let view = views::backends(&c);
    let rows: Vec<(u32, String, Vec<String>, u32, u64)> = view
        .backends
        .iter()
        .map(|b| {
            (
                b.id,
                format!("{}:{}", b.address, b.port),
                b.services.clone(),
                b.frontends,
                b.traffic.forward_packets,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (1, "10.0.10.2:8080".into(), vec!["default/web".into()], 2, 5),
            (2, "10.0.11.2:8080".into(), vec!["default/web".into()], 1, 0),
            // Only in web's idle bank.
            (3, "10.0.12.2:8080".into(), vec![], 0, 0),
        ]
    );
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(
        json["backends"][0]["reply_bytes"], 200,
        "traffic is flattened"
    );
}

#[test]
fn service_shows_live_and_idle_slots_and_broken_ones() {
    let mut c = contents();
    let which: ServiceRef = "default/web".parse().unwrap();
    let view = views::service(&c, &which).unwrap();
    assert_eq!(view.frontends.len(), 3);
    let web = &view.frontends[0];
    let slots: Vec<_> = web
        .slots
        .iter()
        .map(|s| (s.bank, s.slot, s.backend_id, s.state, s.flows))
        .collect();
    assert_eq!(
        slots,
        [
            (1, 0, Some(2), slot_state::LIVE, 2),
            (1, 1, Some(1), slot_state::LIVE, 1),
            (0, 0, Some(3), slot_state::IDLE, 0),
        ]
    );
    assert!(
        view.frontends[1].slots.is_empty(),
        "the split marker has no slots"
    );

    // Break the live bank: one slot gone, one naming a backend that does not exist.
    c.slots.remove(&SlotKey::new(7, 1, 0));
    c.slots.insert(SlotKey::new(7, 1, 1), 42);
    let view = views::service(&c, &which).unwrap();
    let states: Vec<_> = view.frontends[0].slots.iter().map(|s| s.state).collect();
    assert_eq!(
        states,
        [slot_state::MISSING, slot_state::DANGLING, slot_state::IDLE]
    );

    assert!(views::service(&c, &"default/nope".parse().unwrap()).is_none());
}

#[test]
fn conntrack_filters_and_counts_flows() {
    let c = contents();
    let all = views::conntrack(&c, &ConntrackFilter::default(), true);
    assert_eq!(
        (
            all.counts.entries,
            all.counts.flows,
            all.counts.replies,
            all.counts.matched
        ),
        (4, 3, 1, 3)
    );
    assert_eq!(
        all.counts.expired, 1,
        "the SYN of 500s ago is past its 120s"
    );
    assert_eq!(all.counts.by_state["established"], 1);
    assert_eq!(all.counts.by_state["syn-sent"], 2);
    let first = &all.flows[0];
    assert_eq!(
        (
            first.client_port,
            first.backend_port,
            first.state,
            first.expired
        ),
        (40000, 8080, "established", false)
    );
    assert_eq!(first.idle_seconds, 5.0);
    assert_eq!(first.service(), "default/web");

    let to_backend = ConntrackFilter {
        backend: Some("10.0.11.2:8080".parse().unwrap()),
        ..ConntrackFilter::default()
    };
    assert_eq!(views::conntrack(&c, &to_backend, true).counts.matched, 2);
    let client_port = ConntrackFilter {
        client: Some("10.0.1.2:40001".parse().unwrap()),
        vip: Some("10.96.0.10".parse().unwrap()),
        ..ConntrackFilter::default()
    };
    assert_eq!(views::conntrack(&c, &client_port, true).flows.len(), 1);
    let udp = ConntrackFilter {
        protocol: Some(ProtocolFilter::Udp),
        ..ConntrackFilter::default()
    };
    assert_eq!(views::conntrack(&c, &udp, true).counts.matched, 0);
    let other_service = ConntrackFilter {
        service: Some("kube-system/dns".parse().unwrap()),
        ..ConntrackFilter::default()
    };
    assert_eq!(views::conntrack(&c, &other_service, true).counts.matched, 0);

    let summary = views::conntrack(&c, &ConntrackFilter::default(), false);
    assert!(summary.flows.is_empty());
    assert_eq!(summary.counts.matched, 3);
}

#[test]
fn stats_report_drops_traffic_and_map_fill() {
    let mut c = contents();
    c.counters = vec![
        ("packets_seen", 100),
        ("reject_tcp", 3),
        ("drop_no_backend", 3),
    ];
    c.frontend_traffic.insert(
        web_key(),
        TrafficCounters {
            forward_packets: 10,
            ..TrafficCounters::default()
        },
    );
    c.frontend_traffic.insert(
        node_port_key(),
        TrafficCounters {
            forward_packets: 5,
            reply_bytes: 7,
            ..TrafficCounters::default()
        },
    );
    // Counters of a backend already removed from SLUICE_BACKENDS4.
    c.backend_traffic.insert(
        backend([10, 0, 99, 2], 80, PROTO_TCP),
        TrafficCounters::default(),
    );
    c.fill = vec![
        MapFill {
            map: map_names::SERVICES,
            kind: "hash",
            entries: Some(5),
            capacity: 100,
        },
        MapFill {
            map: map_names::STATS,
            kind: "percpu_array",
            entries: None,
            capacity: 24,
        },
    ];
    let view = views::stats(&c);
    let drop = |reason: &str| {
        view.drops
            .iter()
            .find(|d| d.reason == reason)
            .unwrap()
            .packets
    };
    assert_eq!((drop("reject_tcp"), drop("drop_source_range")), (3, 0));
    assert_eq!(view.frontends[0].service(), "default/web");
    assert_eq!(view.frontends.len(), 2);
    let web = &view.services[0];
    assert_eq!(view.services.len(), 1);
    assert_eq!(
        (
            web.name.as_str(),
            web.frontends,
            web.traffic.forward_packets,
            web.traffic.reply_bytes
        ),
        ("web", 2, 15, 7),
        "a Service's traffic is its frontends' summed"
    );
    assert_eq!(view.backends[0].id, None);
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(
        json["maps"][0],
        json!({"map": "SLUICE_SVC4", "type": "hash", "entries": 5, "capacity": 100, "fill": 0.05})
    );
    assert_eq!(json["maps"][1]["fill"], Value::Null);
    assert_eq!(
        json["counters"][0],
        json!({"counter": "packets_seen", "packets": 100})
    );
}

fn remembered(
    client: u8,
    service_id: u32,
    backend_id: u32,
    age_s: u64,
) -> (AffinityKey, AffinityValue) {
    (
        AffinityKey {
            client: be([10, 0, 1, client]),
            service_id,
        },
        AffinityValue {
            backend_id,
            _pad: 0,
            last_used_ns: NOW - age_s * S,
        },
    )
}

#[test]
fn affinity_entries_get_the_state_the_datapath_would_give_them() {
    let mut c = contents();
    assert!(
        views::affinity(&c, None, None).is_none(),
        "no map, no view: the caller says the datapath has none"
    );
    // web (id 7) has a 10800s timeout; dns (id 10) has no affinity; id 99 is gone.
    c.affinity = Some(vec![
        remembered(2, 7, 1, 100),
        remembered(3, 7, 1, 20_000),
        remembered(4, 7, 42, 1),
        remembered(5, 10, 2, 1),
        remembered(6, 99, 2, 1),
    ]);
    let view = views::affinity(&c, None, None).unwrap();
    let rows: Vec<_> = view
        .entries
        .iter()
        .map(|e| {
            (
                e.client_address.octets()[3],
                e.service(),
                e.state,
                e.timeout_seconds,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (6, "-".to_string(), affinity_state::UNUSED, None),
            (
                2,
                "default/web".into(),
                affinity_state::ACTIVE,
                Some(10_800)
            ),
            (
                3,
                "default/web".into(),
                affinity_state::EXPIRED,
                Some(10_800)
            ),
            (
                4,
                "default/web".into(),
                affinity_state::BACKEND_GONE,
                Some(10_800)
            ),
            (5, "kube-system/dns".into(), affinity_state::UNUSED, Some(0)),
        ]
    );
    let active = &view.entries[1];
    assert_eq!(
        (
            active.backend_address,
            active.backend_port,
            active.idle_seconds
        ),
        (Some(Ipv4Addr::new(10, 0, 10, 2)), Some(8080), 100.0)
    );
    assert_eq!(view.counts.entries, 5);
    assert_eq!(view.counts.by_state[affinity_state::UNUSED], 2);

    let web: ServiceRef = "default/web".parse().unwrap();
    let only = views::affinity(&c, Some(&web), Some(Ipv4Addr::new(10, 0, 1, 3))).unwrap();
    assert_eq!(
        (
            only.counts.entries,
            only.counts.matched,
            only.entries[0].state
        ),
        (5, 1, affinity_state::EXPIRED)
    );
    let text = plain(&render::affinity(&view));
    assert!(text.contains("(gone, id 99)"), "{text}");
    assert!(
        text.contains("5 entries match (active 1, backend-gone 1, expired 1, unused 2) of 5"),
        "{text}"
    );
}

#[test]
fn algorithms_of_a_service_for_inspect_maglev() {
    let c = contents();
    let web = views::algorithms(&c, &"default/web".parse().unwrap()).unwrap();
    assert_eq!(
        web.into_iter().collect::<Vec<_>>(),
        ["random", "round-robin"]
    );
    assert!(views::algorithms(&c, &"default/nope".parse().unwrap()).is_none());
}

fn plain(blocks: &[Block]) -> String {
    let mut out = Vec::new();
    render::write_blocks(&mut out, blocks, false).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn tables_are_aligned_without_trailing_blanks_or_colour() {
    let view = views::services(&contents(), Some("default"));
    let text = plain(&render::services(&view, Some("default")));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("SERVICE      PORT  KIND       FRONTEND"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("default/web  http  ClusterIP  10.96.0.10:80/TCP"),
        "{text}"
    );
    // Every FRONTEND value starts in the header's column.
    let col = lines[0].find("FRONTEND").unwrap();
    for l in &lines[1..] {
        assert!(
            l[col..].starts_with("10.96") || l[col..].starts_with("192.168"),
            "{l}"
        );
    }
    assert!(text.lines().all(|l| !l.ends_with(' ')), "{text:?}");
    assert!(!text.contains('\x1b'));

    let mut coloured = Vec::new();
    render::write_blocks(&mut coloured, &render::services(&view, None), true).unwrap();
    assert!(
        String::from_utf8(coloured)
            .unwrap()
            .contains("\x1b[1mSERVICE\x1b[0m")
    );

    let empty = views::services(&contents(), Some("nothing-here"));
    assert_eq!(
        plain(&render::services(&empty, Some("nothing-here"))),
        "no frontends of namespace nothing-here in the datapath\n"
    );
}

#[test]
fn every_view_renders_a_table() {
    let c = contents();
    let service = views::service(&c, &"default/web".parse().unwrap()).unwrap();
    let text = plain(&render::service(&service));
    assert!(
        text.starts_with("Service default/web: 3 frontend entries"),
        "{text}"
    );
    assert!(
        text.contains("no slots: clients are split by scope"),
        "{text}"
    );
    assert!(text.contains("10.0.11.2:8080  live"), "{text}");

    let ct = views::conntrack(&c, &ConntrackFilter::default(), true);
    let text = plain(&render::conntrack(&ct, false));
    assert!(
        text.contains("10.0.1.2:40002  10.96.0.10:80  10.0.11.2:8080"),
        "{text}"
    );
    assert!(text.contains("syn-sent (expired)"), "{text}");
    assert!(
        text.contains("3 flow(s) match: by protocol TCP 3;"),
        "{text}"
    );
    let summary = plain(&render::conntrack(&ct, true));
    assert!(!summary.contains("CLIENT"), "{summary}");

    let text = plain(&render::backends(&views::backends(&c)));
    assert!(text.contains("10.0.12.2:8080/TCP  -"), "{text}");
    let text = plain(&render::stats(&views::stats(&c)));
    for title in [
        "Datapath counters",
        "Drops and refusals",
        "Traffic per frontend",
        "Map fill",
    ] {
        assert!(text.contains(title), "{text}");
    }
}

#[test]
fn inspect_options_go_before_or_after_the_subcommand() {
    let parse = |args: &[&str]| {
        let cli = Cli::try_parse_from(args).unwrap();
        let Command::Inspect(inspect) = cli.command else {
            panic!("not inspect")
        };
        inspect
    };
    let a = parse(&[
        "sluice",
        "inspect",
        "-o",
        "json",
        "services",
        "--pin-path",
        "/x",
    ]);
    assert_eq!(a.common.output, OutputFormat::Json);
    assert_eq!(a.common.pin_path.to_str(), Some("/x"));
    assert_eq!(a.common.watch, None);
    let a = parse(&["sluice", "inspect", "stats", "--watch"]);
    assert_eq!(a.common.watch, Some(std::time::Duration::from_secs(2)));
    let a = parse(&[
        "sluice",
        "inspect",
        "conntrack",
        "--watch=500ms",
        "--vip",
        "10.0.0.1:80",
    ]);
    assert_eq!(a.common.watch, Some(std::time::Duration::from_millis(500)));
    let InspectCommand::Conntrack(ct) = a.what else {
        panic!("not conntrack")
    };
    assert_eq!(ct.filter().vip.and_then(|v| v.port), Some(80));
    assert!(Cli::try_parse_from(["sluice", "inspect", "service", "web"]).is_err());
}

/// Every subcommand's `--help` shows an example (issue 6).
#[test]
fn every_subcommand_has_an_example() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let path = format!("{path} {}", sub.get_name());
            let long = sub
                .get_long_about()
                .map(ToString::to_string)
                .unwrap_or_default();
            if !long.contains(&format!("Example: {path}")) {
                missing.push(path.clone());
            }
            walk(sub, &path, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&Cli::command(), "sluice", &mut missing);
    assert!(missing.is_empty(), "no example in --help of: {missing:?}");
}

#[test]
fn a_zero_watch_interval_is_refused_before_touching_the_maps() {
    let cli = Cli::try_parse_from([
        "sluice",
        "inspect",
        "services",
        "--watch=0s",
        "--pin-path",
        "/nonexistent",
    ])
    .unwrap();
    let Command::Inspect(args) = cli.command else {
        panic!("not inspect")
    };
    let err = super::run(&args).unwrap_err().to_string();
    assert!(
        err.contains("--watch needs an interval above zero"),
        "{err}"
    );
}
