//! Endpoint states (KEP-1669), draining, publishNotReadyAddresses and how slices merge.

use super::*;

/// (endpoints, draining) of the only frontend at 10.96.0.1:80.
fn cluster_ip_sets(svc: &Svc, slices: &[EndpointSlice]) -> (Vec<String>, Vec<String>) {
    let state = DesiredState::build(&[svc.build()], slices, &node());
    let f = only(&state, "10.96.0.1", 80);
    (ips(&f.endpoints), ips(&f.draining))
}

fn strings(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

#[test]
fn endpoint_states_decide_who_serves_and_who_drains() {
    let (r1, r2, t1, t2, gone, starting) = (
        ep("10.0.0.1", OTHER, St::R),
        ep("10.0.0.2", OTHER, St::R),
        ep("10.0.0.3", OTHER, St::T),
        ep("10.0.0.4", OTHER, St::T),
        ep("10.0.0.5", OTHER, St::Gone),
        ep("10.0.0.6", OTHER, St::N),
    );
    #[rustfmt::skip]
    let rows: Vec<(Vec<Ep>, &[&str], &[&str])> = vec![
        // endpoints                                   serve                     drain
        (vec![],                                       &[],                       &[]),
        (vec![r1.clone(), r2.clone()],                 &["10.0.0.1", "10.0.0.2"], &[]),
        // Ready ones serve; serving-terminating ones only drain.
        (vec![r1.clone(), t1.clone()],                 &["10.0.0.1"],             &["10.0.0.3"]),
        // No ready endpoint anywhere: serving-terminating ones take new connections.
        (vec![t1.clone(), t2.clone()],                 &["10.0.0.3", "10.0.0.4"], &[]),
        // Neither a terminating endpoint that stopped serving nor a starting one is usable.
        (vec![gone.clone(), starting.clone()],         &[],                       &[]),
        (vec![t1.clone(), gone.clone(), starting.clone()], &["10.0.0.3"],         &[]),
        (vec![r1.clone(), t1.clone(), gone, starting], &["10.0.0.1"],             &["10.0.0.3"]),
    ];
    for (eps, serve, drain) in rows {
        assert_eq!(
            cluster_ip_sets(&Svc::cluster_ip(), &v4_slice(&eps)),
            (strings(serve), strings(drain)),
            "{eps:?}"
        );
    }
}

#[test]
fn publish_not_ready_addresses_serves_every_state() {
    let eps = [
        ep("10.0.0.1", OTHER, St::R),
        ep("10.0.0.3", OTHER, St::T),
        ep("10.0.0.5", OTHER, St::Gone),
        ep("10.0.0.6", OTHER, St::N),
    ];
    let svc = Svc::cluster_ip().spec("publishNotReadyAddresses", json!(true));
    assert_eq!(
        cluster_ip_sets(&svc, &v4_slice(&eps)),
        (
            strings(&["10.0.0.1", "10.0.0.3", "10.0.0.5", "10.0.0.6"]),
            vec![]
        )
    );
}

#[test]
fn the_terminating_fallback_is_decided_per_scope() {
    // Remote endpoints are ready, the local one is terminating: the cluster-wide set uses the
    // ready ones and lets the local one drain, the local set falls back to it.
    let eps = [ep("10.0.0.1", OTHER, St::R), ep("10.0.0.3", ME, St::T)];
    let svc = Svc::lb().policies("Local", "Local");
    let state = DesiredState::build(&[svc.build()], &v4_slice(&eps), &node());
    let cip = only(&state, "10.96.0.1", 80);
    assert_eq!(
        (ips(&cip.endpoints), ips(&cip.draining)),
        (strings(&["10.0.0.3"]), vec![])
    );
    let node_port = at(&state, NODE_IP, 30080);
    let got: Vec<_> = node_port
        .iter()
        .map(|f| (f.key.scope, ips(&f.endpoints), ips(&f.draining)))
        .collect();
    assert_eq!(
        got,
        [
            (
                Scope::Internal,
                strings(&["10.0.0.1"]),
                strings(&["10.0.0.3"])
            ),
            (Scope::External, strings(&["10.0.0.3"]), vec![]),
        ]
    );
}

#[test]
fn a_local_pool_drains_only_its_own_terminating_endpoints() {
    let eps = [
        ep("10.0.0.1", ME, St::R),
        ep("10.0.0.2", OTHER, St::R),
        ep("10.0.0.3", ME, St::T),
        ep("10.0.0.4", OTHER, St::T),
    ];
    let svc = Svc::cluster_ip().spec("internalTrafficPolicy", json!("Local"));
    assert_eq!(
        cluster_ip_sets(&svc, &v4_slice(&eps)),
        (strings(&["10.0.0.1"]), strings(&["10.0.0.3"]))
    );
}

#[test]
fn endpoints_listed_in_two_slices_merge_and_the_local_copy_wins() {
    // kube-proxy keeps the copy that says "on this node" when slices disagree.
    let a = slice_of("s-a", "IPv4", &[ep("10.0.0.1", OTHER, St::R)]);
    let b = slice_of("s-b", "IPv4", &[ep("10.0.0.1", ME, St::R)]);
    let svc = Svc::cluster_ip().spec("internalTrafficPolicy", json!("Local"));
    for slices in [vec![a.clone(), b.clone()], vec![b, a]] {
        assert_eq!(
            cluster_ip_sets(&svc, &slices),
            (strings(&["10.0.0.1"]), vec![])
        );
    }
}

#[test]
fn only_the_first_address_of_the_slice_family_counts() {
    let first = slice(
        "metadata: {name: s-1, namespace: t, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.0.0.1, 10.0.0.2]
  - addresses: [fd01::1]
  - addresses: [not-an-ip]
  - addresses: []
",
    );
    let fqdn = slice(
        "metadata: {name: s-2, namespace: t, labels: {kubernetes.io/service-name: s}}
addressType: FQDN
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.9]}]
",
    );
    assert_eq!(
        cluster_ip_sets(&Svc::cluster_ip(), &[first, fqdn]),
        (strings(&["10.0.0.1"]), vec![])
    );
}

#[test]
fn slice_ports_match_the_service_port_by_name_and_protocol() {
    let slice = slice(
        "metadata: {name: s-1, namespace: t, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports:
  - {name: http, port: 8080}
  - {name: http, port: 8081}
  - {name: http, port: 9090, protocol: UDP}
  - {name: other, port: 7070}
  - {name: http, port: 0}
  - {name: http}
endpoints: [{addresses: [10.0.0.1]}]
",
    );
    let state = DesiredState::build(&[Svc::cluster_ip().build()], &[slice], &node());
    let ports: Vec<u16> = only(&state, "10.96.0.1", 80)
        .endpoints
        .iter()
        .map(|e| e.port)
        .collect();
    assert_eq!(ports, [8080, 8081]);
}

#[test]
fn unnamed_ports_match_slice_ports_without_a_name() {
    let svc = Svc::cluster_ip().spec("ports", json!([{"port": 80}]));
    let slice = slice(
        "metadata: {name: s-1, namespace: t, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{port: 8080}, {name: '', port: 8081}, {name: x, port: 8082}]
endpoints: [{addresses: [10.0.0.1]}]
",
    );
    let state = DesiredState::build(&[svc.build()], &[slice], &node());
    let ports: Vec<u16> = only(&state, "10.96.0.1", 80)
        .endpoints
        .iter()
        .map(|e| e.port)
        .collect();
    assert_eq!(ports, [8080, 8081]);
}

/// kube-proxy's endpointslicecache defaults: absent ready and serving are true, absent
/// terminating is false. So a not-ready, terminating endpoint with no `serving` condition is a
/// serving-and-terminating endpoint: it drains rather than vanishing.
#[test]
fn absent_conditions_mean_ready_and_serving() {
    let slice = slice(
        "metadata: {name: s-1, namespace: t, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - addresses: [10.0.0.1]
  - addresses: [10.0.0.2]
    conditions: {}
  - addresses: [10.0.0.3]
    conditions: {ready: false, terminating: true}
  - addresses: [10.0.0.4]
    conditions: {ready: true, terminating: true}
",
    );
    assert_eq!(
        cluster_ip_sets(&Svc::cluster_ip(), &[slice]),
        (
            strings(&["10.0.0.1", "10.0.0.2", "10.0.0.4"]),
            strings(&["10.0.0.3"])
        )
    );
}

#[test]
fn slices_of_other_services_are_ignored() {
    let mut other = slice_of("x-1", "IPv4", &[ep("10.0.0.1", OTHER, St::R)]);
    other
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(SERVICE_NAME_LABEL.into(), "x".into());
    let mut unlabelled = slice_of("y-1", "IPv4", &[ep("10.0.0.2", OTHER, St::R)]);
    unlabelled.metadata.labels = None;
    let mut elsewhere = slice_of("s-1", "IPv4", &[ep("10.0.0.3", OTHER, St::R)]);
    elsewhere.metadata.namespace = Some("u".into());
    assert_eq!(
        cluster_ip_sets(&Svc::cluster_ip(), &[other, unlabelled, elsewhere]),
        (vec![], vec![])
    );
}
