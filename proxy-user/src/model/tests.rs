use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

use super::*;

fn service(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap()
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml::from_str(yaml).unwrap()
}

const WEB: &str = "metadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  ports: [{name: http, port: 80, targetPort: web}, {name: dns, port: 53, protocol: UDP}]\n";
const WEB_SLICE: &str = "metadata:\n  name: web-1\n  namespace: shop\n  labels: {kubernetes.io/service-name: web}\naddressType: IPv4\nports: [{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]\nendpoints:\n  - addresses: [10.0.0.1]\n  - addresses: [10.0.0.2]\n    conditions: {ready: false, serving: true, terminating: true}\n  - addresses: [10.0.0.3]\n    conditions: {ready: false, serving: false, terminating: false}\n";

fn endpoints(
    state: &DesiredState,
    ip: &str,
    port: u16,
    protocol: Protocol,
) -> Option<Vec<(IpAddr, u16)>> {
    let key = FrontendKey {
        ip: ip.parse().unwrap(),
        port,
        protocol,
    };
    state
        .frontends()
        .find(|f| f.key == key)
        .map(|f| f.endpoints.iter().map(|e| (e.ip, e.port)).collect())
}

fn ep(ip: &str, port: u16) -> (IpAddr, u16) {
    (ip.parse().unwrap(), port)
}

#[test]
fn named_target_ports_resolve_per_slice_port_name_and_only_ready_endpoints_serve() {
    let state = DesiredState::build(
        &[service(WEB)],
        &[slice(WEB_SLICE)],
        &NodeContext::default(),
    );
    assert!(state.skipped.is_empty());
    assert_eq!(
        endpoints(&state, "10.96.0.10", 80, Protocol::Tcp),
        Some(vec![ep("10.0.0.1", 8080)])
    );
    assert_eq!(
        endpoints(&state, "10.96.0.10", 53, Protocol::Udp),
        Some(vec![ep("10.0.0.1", 5353)])
    );
}

#[test]
fn terminating_serving_endpoints_are_used_only_when_none_is_ready() {
    let no_ready = WEB_SLICE.replace("  - addresses: [10.0.0.1]\n", "");
    let state = DesiredState::build(
        &[service(WEB)],
        &[slice(&no_ready)],
        &NodeContext::default(),
    );
    assert_eq!(
        endpoints(&state, "10.96.0.10", 80, Protocol::Tcp),
        Some(vec![ep("10.0.0.2", 8080)])
    );
}

#[test]
fn publish_not_ready_addresses_serves_every_endpoint() {
    let svc = WEB.replace("spec:\n", "spec:\n  publishNotReadyAddresses: true\n");
    let state = DesiredState::build(
        &[service(&svc)],
        &[slice(WEB_SLICE)],
        &NodeContext::default(),
    );
    assert_eq!(
        endpoints(&state, "10.96.0.10", 80, Protocol::Tcp).map(|e| e.len()),
        Some(3)
    );
}

#[test]
fn a_service_without_endpoints_still_has_frontends() {
    let state = DesiredState::build(&[service(WEB)], &[], &NodeContext::default());
    assert_eq!(
        endpoints(&state, "10.96.0.10", 80, Protocol::Tcp),
        Some(vec![])
    );
}

#[test]
fn services_outside_the_proxy_produce_nothing() {
    for yaml in [
        "metadata: {name: a, labels: {service.kubernetes.io/service-proxy-name: other}}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}",
        "metadata: {name: b, labels: {service.kubernetes.io/headless: ''}}\nspec: {clusterIP: 10.96.0.2, ports: [{port: 80}]}",
        "metadata: {name: c}\nspec: {type: ExternalName, externalName: example.com}",
        "metadata: {name: d}\nspec: {clusterIP: None, ports: [{port: 80}]}",
    ] {
        let state = DesiredState::build(&[service(yaml)], &[], &NodeContext::default());
        assert_eq!(state.frontends().count(), 0, "{yaml}");
        assert!(state.skipped.is_empty(), "{yaml}");
    }
}

#[test]
fn every_frontend_kind_is_produced() {
    let yaml = "metadata: {name: lb}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.20\n  externalIPs: [192.0.2.7]\n  ports: [{port: 443, nodePort: 30443}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.1}, {ip: 198.51.100.2, ipMode: Proxy}]\n";
    let node = NodeContext {
        node_name: None,
        node_addresses: vec!["172.18.0.2".parse().unwrap()],
    };
    let state = DesiredState::build(&[service(yaml)], &[], &node);
    let mut kinds: Vec<(String, FrontendKind)> = state
        .frontends()
        .map(|f| (f.key.to_string(), f.kind))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("10.96.0.20:443/tcp".to_string(), FrontendKind::ClusterIp),
            ("172.18.0.2:30443/tcp".to_string(), FrontendKind::NodePort),
            ("192.0.2.7:443/tcp".to_string(), FrontendKind::ExternalIp),
            (
                "198.51.100.1:443/tcp".to_string(),
                FrontendKind::LoadBalancer
            ),
        ]
    );
}

#[test]
fn malformed_services_are_skipped_with_a_reason_and_others_kept() {
    let cases = [
        (
            "metadata: {name: ip}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 80}]}",
            SkipReason::InvalidIp,
        ),
        (
            "metadata: {name: port}\nspec: {clusterIP: 10.96.0.31, ports: [{port: 70000}]}",
            SkipReason::InvalidPort,
        ),
        (
            "metadata: {name: proto}\nspec: {clusterIP: 10.96.0.32, ports: [{port: 80, protocol: ICMP}]}",
            SkipReason::UnknownProtocol,
        ),
        (
            "metadata: {name: dup}\nspec: {clusterIP: 10.96.0.33, ports: [{name: a, port: 80}, {name: b, port: 80}]}",
            SkipReason::DuplicatePort,
        ),
    ];
    for (yaml, reason) in cases {
        let state = DesiredState::build(
            &[service(yaml), service(WEB)],
            &[slice(WEB_SLICE)],
            &NodeContext::default(),
        );
        assert_eq!(state.skipped.len(), 1, "{yaml}");
        assert_eq!(state.skipped[0].reason, reason, "{yaml}");
        assert_eq!(state.services.len(), 1, "the good Service is kept: {yaml}");
    }
}

#[test]
fn two_services_claiming_one_frontend_resolve_the_same_way_every_time() {
    let a = service("metadata: {name: a}\nspec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}");
    let b = service("metadata: {name: b}\nspec: {clusterIP: 10.96.0.40, ports: [{port: 80}]}");
    for order in [[a.clone(), b.clone()], [b, a]] {
        let state = DesiredState::build(&order, &[], &NodeContext::default());
        assert_eq!(
            state
                .services
                .keys()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(state.skipped[0].reason, SkipReason::FrontendConflict);
    }
}
