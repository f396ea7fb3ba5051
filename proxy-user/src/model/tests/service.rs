//! Per-Service settings: session affinity, the scheduler annotation, address families,
//! health checks, and how a Service's own addresses and ports are validated.

use crate::config::Scheduler;

use super::*;

/// A table row: what it shows, the Service, and what the model should make of it.
type Expected<T> = Result<T, SkipReason>;

/// A health check, or none.
type HealthCheckRow = Option<HealthCheck>;

type Row<T> = (&'static str, Svc, Result<T, SkipReason>);

fn translate(svc: &Svc, slices: &[EndpointSlice]) -> Result<DesiredState, SkipReason> {
    let state = DesiredState::build(&[svc.build()], slices, &node());
    match state.skipped.first() {
        Some(skipped) => Err(skipped.reason),
        None => Ok(state),
    }
}

#[test]
fn session_affinity() {
    let client_ip = |timeout: Value| {
        Svc::lb().spec("sessionAffinity", json!("ClientIP")).spec(
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": timeout}}),
        )
    };
    #[rustfmt::skip]
    let rows: Vec<(Svc, Expected<Option<u32>>)> = vec![
        (Svc::lb(),                                             Ok(None)),
        (Svc::lb().spec("sessionAffinity", json!("None")),      Ok(None)),
        (Svc::lb().spec("sessionAffinity", json!("ClientIP")),  Ok(Some(10_800))),
        (client_ip(Value::Null),                                Ok(Some(10_800))),
        (client_ip(json!(1)),                                   Ok(Some(1))),
        (client_ip(json!(300)),                                 Ok(Some(300))),
        (client_ip(json!(86_400)),                              Ok(Some(86_400))),
        (client_ip(json!(0)),                                   Err(SkipReason::InvalidSessionAffinity)),
        (client_ip(json!(-1)),                                  Err(SkipReason::InvalidSessionAffinity)),
        (client_ip(json!(86_401)),                              Err(SkipReason::InvalidSessionAffinity)),
        (Svc::lb().spec("sessionAffinity", json!("Cookie")),    Err(SkipReason::InvalidSessionAffinity)),
    ];
    for (svc, want) in rows {
        let got = translate(&svc, &[]).map(|state| {
            let timeouts: std::collections::BTreeSet<_> =
                state.frontends().map(|f| f.affinity_timeout).collect();
            assert_eq!(timeouts.len(), 1, "every frontend agrees: {}", svc.0);
            timeouts.into_iter().next().unwrap()
        });
        assert_eq!(got, want, "{}", svc.0["spec"]);
    }
}

#[test]
fn scheduler_annotation() {
    #[rustfmt::skip]
    let rows: Vec<(Option<&str>, Expected<Option<Scheduler>>)> = vec![
        (None,           Ok(None)),
        (Some("random"), Ok(Some(Scheduler::Random))),
        (Some("rr"),     Ok(Some(Scheduler::RoundRobin))),
        (Some("sh"),     Ok(Some(Scheduler::SourceHash))),
        (Some("mh"),     Ok(Some(Scheduler::Maglev))),
        (Some(""),       Err(SkipReason::InvalidAnnotation)),
        (Some("RR"),     Err(SkipReason::InvalidAnnotation)),
        (Some("wlc"),    Err(SkipReason::InvalidAnnotation)),
        (Some("maglev"), Err(SkipReason::InvalidAnnotation)),
    ];
    for (value, want) in rows {
        let mut svc = Svc::lb();
        if let Some(value) = value {
            svc = svc.annotate(SCHEDULER_ANNOTATION, value);
        }
        let got = translate(&svc, &[]).map(|state| {
            let all: Vec<_> = state.frontends().map(|f| f.scheduler).collect();
            assert!(all.windows(2).all(|w| w[0] == w[1]), "{value:?}");
            all[0]
        });
        assert_eq!(got, want, "{value:?}");
    }
}

fn dual_stack() -> Svc {
    Svc::lb()
        .spec("clusterIPs", json!(["10.96.0.1", "fd00::1"]))
        .spec("ipFamilies", json!(["IPv4", "IPv6"]))
        .spec("externalIPs", json!(["192.0.2.1", "2001:db8::1"]))
}

#[test]
fn dual_stack_services_get_frontends_and_endpoints_per_family() {
    let slices = [
        slice_of("s-v4", "IPv4", &[ep("10.0.0.1", OTHER, St::R)]),
        slice_of("s-v6", "IPv6", &[ep("fd01::1", OTHER, St::R)]),
    ];
    let state = translate(&dual_stack(), &slices).unwrap();
    let mut got: Vec<(String, FrontendKind, Vec<String>)> = state
        .frontends()
        .map(|f| (f.key.to_string(), f.kind, ips(&f.endpoints)))
        .collect();
    got.sort();
    let v4 = || vec!["10.0.0.1".to_string()];
    let v6 = || vec!["fd01::1".to_string()];
    assert_eq!(
        got,
        [
            ("10.96.0.1:80/tcp".into(), FrontendKind::ClusterIp, v4()),
            ("172.18.0.2:30080/tcp".into(), FrontendKind::NodePort, v4()),
            ("192.0.2.1:80/tcp".into(), FrontendKind::ExternalIp, v4()),
            (
                "198.51.100.1:80/tcp".into(),
                FrontendKind::LoadBalancer,
                v4()
            ),
            (
                "[2001:db8::1]:80/tcp".into(),
                FrontendKind::ExternalIp,
                v6()
            ),
            ("[fd00::1]:80/tcp".into(), FrontendKind::ClusterIp, v6()),
            ("[fd02::2]:30080/tcp".into(), FrontendKind::NodePort, v6()),
        ]
    );
}

#[test]
fn families_a_service_does_not_have_are_left_out() {
    // Single-stack IPv6: the IPv4 externalIP, load balancer address and node address have
    // nothing to answer with; an IPv6 address in the IPv4 slice is ignored too.
    let svc = dual_stack()
        .spec("clusterIPs", json!(["fd00::1"]))
        .spec("clusterIP", json!("fd00::1"))
        .spec("ipFamilies", json!(["IPv6"]));
    let slices = [
        slice_of(
            "s-v4",
            "IPv4",
            &[ep("10.0.0.1", OTHER, St::R), ep("fd01::9", OTHER, St::R)],
        ),
        slice_of(
            "s-v6",
            "IPv6",
            &[ep("fd01::1", OTHER, St::R), ep("10.0.0.9", OTHER, St::R)],
        ),
    ];
    let state = translate(&svc, &slices).unwrap();
    let mut got: Vec<(String, Vec<String>)> = state
        .frontends()
        .map(|f| (f.key.to_string(), ips(&f.endpoints)))
        .collect();
    got.sort();
    let v6 = || vec!["fd01::1".to_string()];
    assert_eq!(
        got,
        [
            ("[2001:db8::1]:80/tcp".into(), v6()),
            ("[fd00::1]:80/tcp".into(), v6()),
            ("[fd02::2]:30080/tcp".into(), v6()),
        ]
    );
}

#[test]
fn address_families_and_cluster_ips() {
    let families = |state: &DesiredState| {
        let mut f: Vec<bool> = state.frontends().map(|f| f.key.ip.is_ipv6()).collect();
        f.sort();
        f.dedup();
        f
    };
    let no_cluster_ip = || {
        let mut svc = Svc::lb();
        svc.0["spec"].as_object_mut().unwrap().remove("clusterIP");
        svc.spec("externalIPs", json!([]))
    };
    #[rustfmt::skip]
    let rows: Vec<Row<Vec<bool>>> = vec![
        ("cluster IPs decide, not ipFamilies",
            Svc::lb().spec("ipFamilies", json!(["IPv6"])), Ok(vec![false])),
        ("without cluster IPs, ipFamilies",
            no_cluster_ip().spec("ipFamilies", json!(["IPv6"])), Ok(vec![true])),
        ("without either, both",
            no_cluster_ip(), Ok(vec![false, true])),
        ("unknown family",
            Svc::lb().spec("ipFamilies", json!(["IPv4", "IPv5"])), Err(SkipReason::InvalidIpFamily)),
        ("two cluster IPs of one family",
            Svc::lb().spec("clusterIPs", json!(["10.96.0.1", "10.96.0.2"])), Err(SkipReason::InvalidIp)),
        ("a cluster IP that is not one",
            Svc::lb().spec("clusterIPs", json!(["10.96.0.1", "fd00::zz"])), Err(SkipReason::InvalidIp)),
        ("an invalid externalIP",
            Svc::lb().spec("externalIPs", json!(["192.0.2.300"])), Err(SkipReason::InvalidIp)),
    ];
    for (what, svc, want) in rows {
        assert_eq!(translate(&svc, &[]).map(|s| families(&s)), want, "{what}");
    }
}

#[test]
fn health_check_node_ports() {
    let lb_local = || {
        Svc::lb()
            .spec("externalTrafficPolicy", json!("Local"))
            .spec("healthCheckNodePort", json!(32000))
    };
    let eps = || {
        vec![
            ep("10.0.0.1", ME, St::R),
            ep("10.0.0.2", ME, St::R),
            ep("10.0.0.3", ME, St::T),
            ep("10.0.0.4", OTHER, St::R),
        ]
    };
    #[rustfmt::skip]
    let rows: Vec<(&str, Svc, Vec<Ep>, Expected<HealthCheckRow>)> = vec![
        ("ready local endpoints count; terminating and remote ones do not",
            lb_local(), eps(), Ok(Some(HealthCheck { port: 32000, local_endpoints: 2 }))),
        ("no local endpoint: zero, the check fails",
            lb_local(), vec![ep("10.0.0.4", OTHER, St::R)], Ok(Some(HealthCheck { port: 32000, local_endpoints: 0 }))),
        ("publishNotReadyAddresses makes every local endpoint ready",
            lb_local().spec("publishNotReadyAddresses", json!(true)), eps(),
            Ok(Some(HealthCheck { port: 32000, local_endpoints: 3 }))),
        ("externalTrafficPolicy Cluster: none",
            lb_local().spec("externalTrafficPolicy", json!("Cluster")), eps(), Ok(None)),
        ("NodePort Services have none (the API server never allocates one)",
            lb_local().spec("type", json!("NodePort")), eps(), Ok(None)),
        ("not allocated",
            lb_local().spec("healthCheckNodePort", json!(0)), eps(), Ok(None)),
        ("out of range",
            lb_local().spec("healthCheckNodePort", json!(65536)), eps(), Err(SkipReason::InvalidPort)),
    ];
    for (what, svc, eps, want) in rows {
        let got = translate(&svc, &v4_slice(&eps)).map(|state| {
            state
                .health_checks
                .get(&ServiceName::new("t", "s"))
                .copied()
        });
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn a_health_check_counts_an_address_once_over_ports_and_families() {
    let svc = Svc::lb()
        .spec("clusterIPs", json!(["10.96.0.1", "fd00::1"]))
        .spec("externalTrafficPolicy", json!("Local"))
        .spec("healthCheckNodePort", json!(32000));
    let two_ports = slice(
        "metadata: {name: s-1, namespace: t, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: metrics, port: 9090}]
endpoints: [{addresses: [10.0.0.1], nodeName: me}]
",
    );
    let mut other_copy = two_ports.clone();
    other_copy.metadata.name = Some("s-2".into());
    let v6 = slice_of("s-v6", "IPv6", &[ep("fd01::1", ME, St::R)]);
    let state = translate(&svc, &[two_ports, other_copy, v6]).unwrap();
    assert_eq!(
        state.health_checks[&ServiceName::new("t", "s")].local_endpoints,
        2
    );
}

#[test]
fn ports_and_node_ports() {
    let ports = |ports: Value| Svc::lb().spec("ports", ports);
    let node_port_frontends = |state: &DesiredState| {
        state
            .frontends()
            .filter(|f| f.kind == FrontendKind::NodePort)
            .map(|f| f.key.to_string())
            .collect::<Vec<_>>()
    };
    #[rustfmt::skip]
    let rows: Vec<Row<Vec<&str>>> = vec![
        ("a NodePort per port and protocol",
            ports(json!([{"port": 53, "nodePort": 30053, "protocol": "UDP"}, {"port": 53, "nodePort": 30053}])),
            Ok(vec!["172.18.0.2:30053/tcp", "172.18.0.2:30053/udp"])),
        ("nodePort 0 is unallocated",
            ports(json!([{"port": 80, "nodePort": 0}])), Ok(vec![])),
        ("ClusterIP Services ignore nodePort",
            ports(json!([{"port": 80, "nodePort": 30080}])).spec("type", json!("ClusterIP")), Ok(vec![])),
        ("a nodePort listed twice",
            ports(json!([{"name": "a", "port": 80, "nodePort": 30080}, {"name": "b", "port": 81, "nodePort": 30080}])),
            Err(SkipReason::DuplicatePort)),
        ("a nodePort out of range",
            ports(json!([{"port": 80, "nodePort": 70000}])), Err(SkipReason::InvalidPort)),
        ("port 0",
            ports(json!([{"port": 0}])), Err(SkipReason::InvalidPort)),
        ("an unknown type",
            Svc::lb().spec("type", json!("Ingress")), Err(SkipReason::UnknownType)),
    ];
    for (what, svc, want) in rows {
        let got = translate(&svc, &[]).map(|s| node_port_frontends(&s));
        let want = want.map(|l| l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn an_address_a_service_names_twice_is_served_once_by_the_first_kind() {
    #[rustfmt::skip]
    let rows: Vec<(&str, Svc, &str, u16, FrontendKind)> = vec![
        ("externalIP equal to the load balancer IP",
            Svc::lb().spec("externalIPs", json!(["198.51.100.1"])), "198.51.100.1", 80, FrontendKind::ExternalIp),
        ("an externalIP listed twice",
            Svc::lb().spec("externalIPs", json!(["192.0.2.1", "192.0.2.1"])), "192.0.2.1", 80, FrontendKind::ExternalIp),
        ("externalIP equal to the cluster IP",
            Svc::lb().spec("externalIPs", json!(["10.96.0.1"])), "10.96.0.1", 80, FrontendKind::ClusterIp),
        ("externalIP on a node address and port equal to the NodePort",
            Svc::lb().spec("externalIPs", json!([NODE_IP])).spec("ports", json!([{"name": "a", "port": 30080}, {"name": "b", "port": 81, "nodePort": 30080}])),
            NODE_IP, 30080, FrontendKind::ExternalIp),
    ];
    for (what, svc, addr, port, kind) in rows {
        let state = translate(&svc, &[]).unwrap();
        assert_eq!(only(&state, addr, port).kind, kind, "{what}");
    }
}

#[test]
fn load_balancer_addresses() {
    let ingress = |ingress: Value| {
        let mut svc = Svc::lb();
        svc.0["status"]["loadBalancer"]["ingress"] = ingress;
        svc
    };
    #[rustfmt::skip]
    let rows: Vec<Row<Vec<&str>>> = vec![
        ("VIP and unset ipMode are captured, Proxy is not, hostnames are ignored",
            ingress(json!([{"ip": "198.51.100.1", "ipMode": "VIP"}, {"ip": "198.51.100.2"},
                           {"ip": "198.51.100.3", "ipMode": "Proxy"}, {"hostname": "lb.example"}])),
            Ok(vec!["198.51.100.1:80/tcp", "198.51.100.2:80/tcp"])),
        ("only LoadBalancer Services",
            ingress(json!([{"ip": "198.51.100.1"}])).spec("type", json!("NodePort")), Ok(vec![])),
        ("an address that is not one",
            ingress(json!([{"ip": "lb.example"}])), Err(SkipReason::InvalidIp)),
    ];
    for (what, svc, want) in rows {
        let got = translate(&svc, &[]).map(|state| {
            state
                .frontends()
                .filter(|f| f.kind == FrontendKind::LoadBalancer)
                .map(|f| f.key.to_string())
                .collect::<Vec<_>>()
        });
        let want = want.map(|l| l.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn services_with_the_same_name_keep_the_same_one_whatever_the_order() {
    let a = Svc::cluster_ip()
        .spec("clusterIP", json!("10.96.0.7"))
        .build();
    let b = Svc::cluster_ip()
        .spec("clusterIP", json!("10.96.0.8"))
        .build();
    let first = DesiredState::build(&[a.clone(), b.clone()], &[], &node());
    let second = DesiredState::build(&[b, a], &[], &node());
    assert_eq!(first, second);
    assert_eq!(first.services.len(), 1);
    assert_eq!(first.skipped.len(), 1);
    assert_eq!(first.skipped[0].reason, SkipReason::DuplicateService);
}

#[test]
fn frontends_come_sorted_by_key() {
    let state = translate(&dual_stack().policies("Cluster", "Local"), &[]).unwrap();
    let keys: Vec<FrontendKey> = state.frontends().map(|f| f.key).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
}
