//! Shared fixtures and the Service-level tests; each rule has its own table file under
//! `tests/`.

mod endpoints;
mod incremental;
mod node;
mod policy;
mod props;
mod service;
mod slim;
mod topology;

use std::net::IpAddr;

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::*;

fn service(yaml: &str) -> Service {
    serde_yaml::from_str(yaml).unwrap()
}

fn slice(yaml: &str) -> EndpointSlice {
    serde_yaml::from_str(yaml).unwrap()
}

/// The node the table tests run on.
const ME: &str = "me";
const OTHER: &str = "other";
const NODE_IP: &str = "172.18.0.2";
const NODE_IP6: &str = "fd02::2";

fn node() -> NodeContext {
    NodeContext {
        zone: Some("z1".into()),
        ..NodeContext::new(
            Some(ME.into()),
            vec![NODE_IP.parse().unwrap(), NODE_IP6.parse().unwrap()],
        )
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A Service `t/s` built from JSON, so table rows can change one field at a time.
#[derive(Clone)]
struct Svc(Value);

impl Svc {
    /// A LoadBalancer with every kind of frontend: ClusterIP 10.96.0.1, externalIP
    /// 192.0.2.1, load balancer 198.51.100.1, all on port 80, NodePort 30080.
    fn lb() -> Self {
        Svc(json!({
            "metadata": {"name": "s", "namespace": "t"},
            "spec": {
                "type": "LoadBalancer",
                "clusterIP": "10.96.0.1",
                "externalIPs": ["192.0.2.1"],
                "ports": [{"name": "http", "port": 80, "nodePort": 30080}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.1"}]}},
        }))
    }

    /// A plain ClusterIP Service 10.96.0.1:80.
    fn cluster_ip() -> Self {
        Svc(json!({
            "metadata": {"name": "s", "namespace": "t"},
            "spec": {"clusterIP": "10.96.0.1", "ports": [{"name": "http", "port": 80}]},
        }))
    }

    fn spec(mut self, field: &str, value: Value) -> Self {
        self.0["spec"][field] = value;
        self
    }

    fn annotate(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["annotations"][key] = json!(value);
        self
    }

    fn name(mut self, name: &str) -> Self {
        self.0["metadata"]["name"] = json!(name);
        self
    }

    fn policies(self, internal: &str, external: &str) -> Self {
        self.spec("internalTrafficPolicy", json!(internal))
            .spec("externalTrafficPolicy", json!(external))
    }

    fn build(&self) -> Service {
        serde_json::from_value(self.0.clone()).unwrap()
    }
}

/// An endpoint's conditions, as the table rows spell them.
#[derive(Clone, Copy, Debug)]
enum St {
    /// ready (and serving, not terminating)
    R,
    /// serving and terminating
    T,
    /// terminating and no longer serving
    Gone,
    /// starting: neither ready nor serving
    N,
}

/// One slice endpoint: an address, its node, its state and its hints.
#[derive(Clone, Debug)]
struct Ep {
    ip: &'static str,
    node: Option<&'static str>,
    state: St,
    zones: Vec<&'static str>,
    nodes: Vec<&'static str>,
}

fn ep(ip: &'static str, node: &'static str, state: St) -> Ep {
    Ep {
        ip,
        node: Some(node),
        state,
        zones: vec![],
        nodes: vec![],
    }
}

impl Ep {
    fn zones(mut self, zones: &[&'static str]) -> Self {
        self.zones = zones.to_vec();
        self
    }

    fn nodes(mut self, nodes: &[&'static str]) -> Self {
        self.nodes = nodes.to_vec();
        self
    }

    fn json(&self) -> Value {
        let (ready, serving, terminating) = match self.state {
            St::R => (true, true, false),
            St::T => (false, true, true),
            St::Gone => (false, false, true),
            St::N => (false, false, false),
        };
        let mut v = json!({
            "addresses": [self.ip],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        });
        if let Some(node) = self.node {
            v["nodeName"] = json!(node);
        }
        let names = |l: &[&str]| l.iter().map(|n| json!({"name": n})).collect::<Vec<_>>();
        if !self.zones.is_empty() {
            v["hints"]["forZones"] = json!(names(&self.zones));
        }
        if !self.nodes.is_empty() {
            v["hints"]["forNodes"] = json!(names(&self.nodes));
        }
        v
    }
}

/// A slice of Service `t/s` publishing port `http` as 8080.
fn slice_of(name: &str, family: &str, eps: &[Ep]) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": "t",
            "labels": {SERVICE_NAME_LABEL: "s"},
        },
        "addressType": family,
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": eps.iter().map(Ep::json).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn v4_slice(eps: &[Ep]) -> Vec<EndpointSlice> {
    vec![slice_of("s-v4", "IPv4", eps)]
}

/// The frontends of one address, whatever their scope.
fn at<'a>(state: &'a DesiredState, addr: &str, port: u16) -> Vec<&'a Frontend> {
    state
        .frontends()
        .filter(|f| f.key.ip == ip(addr) && f.key.port == port)
        .collect()
}

/// The endpoint addresses of a frontend, for compact expectations.
fn ips(list: &[Endpoint]) -> Vec<String> {
    list.iter().map(|e| e.ip.to_string()).collect()
}

fn only<'a>(state: &'a DesiredState, addr: &str, port: u16) -> &'a Frontend {
    let found = at(state, addr, port);
    assert_eq!(found.len(), 1, "{addr}:{port}: {found:#?}");
    found[0]
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
        scope: Scope::Both,
    };
    state
        .frontends()
        .find(|f| f.key == key)
        .map(|f| f.endpoints.iter().map(|e| (e.ip, e.port)).collect())
}

fn ep_at(ip: &str, port: u16) -> (IpAddr, u16) {
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
        Some(vec![ep_at("10.0.0.1", 8080)])
    );
    assert_eq!(
        endpoints(&state, "10.96.0.10", 53, Protocol::Udp),
        Some(vec![ep_at("10.0.0.1", 5353)])
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
        Some(vec![ep_at("10.0.0.2", 8080)])
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
        // Opting out wins over being malformed: there is nothing to report about a Service
        // Sluice does not serve.
        "metadata: {name: e, annotations: {sluice.dev/scheduler: bogus}}\nspec: {clusterIP: None, ports: [{port: 80}]}",
        "metadata: {name: f}",
    ] {
        let state = DesiredState::build(&[service(yaml)], &[], &NodeContext::default());
        assert_eq!(state.frontends().count(), 0, "{yaml}");
        assert!(state.skipped.is_empty(), "{yaml}");
    }
}

#[test]
fn every_frontend_kind_is_produced() {
    let yaml = "metadata: {name: lb}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.20\n  externalIPs: [192.0.2.7]\n  ports: [{port: 443, nodePort: 30443}]\nstatus:\n  loadBalancer:\n    ingress: [{ip: 198.51.100.1}, {ip: 198.51.100.2, ipMode: Proxy}]\n";
    let node = NodeContext::new(None, vec!["172.18.0.2".parse().unwrap()]);
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
    let b = service(
        "metadata: {name: b}\nspec: {clusterIP: 10.96.0.40, ports: [{port: 80}, {name: x, port: 81}]}",
    );
    for order in [[a.clone(), b.clone()], [b, a]] {
        let state = DesiredState::build(&order, &[], &NodeContext::default());
        let owners: Vec<(String, String)> = state
            .frontends()
            .map(|f| (f.service.name.to_string(), f.key.to_string()))
            .collect();
        assert_eq!(
            owners,
            [
                ("a".to_string(), "10.96.0.40:80/tcp".to_string()),
                ("b".to_string(), "10.96.0.40:81/tcp".to_string())
            ],
            "only the conflicting frontend is lost"
        );
        assert_eq!(state.skipped.len(), 1);
        assert_eq!(state.skipped[0].reason, SkipReason::FrontendConflict);
        assert_eq!(&*state.skipped[0].service.name, "b");
    }
}

/// A Service may not take over another Service's ClusterIP by naming it as an externalIP,
/// whatever their names' order: kube-dns keeps its frontend, the intruder loses only that one.
#[test]
fn a_cluster_ip_cannot_be_taken_over_by_another_services_external_ip() {
    let dns = service(
        "metadata: {name: kube-dns, namespace: kube-system}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 53, protocol: UDP}]}",
    );
    let intruder = service(
        "metadata: {name: aaa, namespace: a}\nspec: {clusterIP: 10.96.7.7, externalIPs: [10.96.0.10], ports: [{port: 53, protocol: UDP}]}",
    );
    let state = DesiredState::build(&[intruder, dns], &[], &NodeContext::default());
    let owner_of = |addr: &str| {
        state
            .frontends()
            .filter(|f| f.key.to_string() == addr)
            .map(|f| f.service.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(owner_of("10.96.0.10:53/udp"), ["kube-system/kube-dns"]);
    assert_eq!(
        owner_of("10.96.7.7:53/udp"),
        ["a/aaa"],
        "the intruder keeps its own ClusterIP"
    );
    assert_eq!(state.skipped.len(), 1);
    assert_eq!(state.skipped[0].service.to_string(), "a/aaa");
}

#[test]
fn a_conflict_is_found_whatever_the_scopes_of_the_two_claims() {
    // `a` serves 192.0.2.1:80 split into Internal and External (eTP Local with only a remote
    // endpoint); `b` claims the same address as a plain ClusterIP.
    let a = Svc::lb().name("a").policies("Cluster", "Local");
    let b = Svc::cluster_ip()
        .name("b")
        .spec("clusterIP", json!("192.0.2.1"));
    let mut slice = slice_of("a-1", "IPv4", &[ep("10.0.0.1", OTHER, St::R)]);
    slice
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert(SERVICE_NAME_LABEL.into(), "a".into());
    let state = DesiredState::build(&[a.build(), b.build()], &[slice], &node());
    // ClusterIPs are claimed first: `b` keeps it, `a` loses both scopes of that address only.
    let owners: Vec<String> = at(&state, "192.0.2.1", 80)
        .iter()
        .map(|f| f.service.name.to_string())
        .collect();
    assert_eq!(owners, ["b"]);
    assert!(
        state
            .frontends()
            .any(|f| &*f.service.name == "a" && f.kind == FrontendKind::ClusterIp),
        "`a` keeps its own ClusterIP"
    );
    assert_eq!(
        state.skipped.len(),
        1,
        "one report for the address: {:?}",
        state.skipped
    );
    assert_eq!(&*state.skipped[0].service.name, "a");
    assert_eq!(state.skipped[0].reason, SkipReason::FrontendConflict);
}

#[test]
fn frontend_keys_print_their_scope_when_split() {
    let key = |scope| FrontendKey {
        ip: ip("fd00::1"),
        port: 80,
        protocol: Protocol::Udp,
        scope,
    };
    assert_eq!(key(Scope::Both).to_string(), "[fd00::1]:80/udp");
    assert_eq!(
        key(Scope::Internal).to_string(),
        "[fd00::1]:80/udp (internal)"
    );
    assert_eq!(
        key(Scope::External).to_string(),
        "[fd00::1]:80/udp (external)"
    );
}

#[test]
fn skip_reasons_have_distinct_labels() {
    let labels: std::collections::BTreeSet<_> =
        SkipReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(labels.len(), SkipReason::ALL.len());
}

#[test]
fn a_node_being_deleted_or_marked_by_the_autoscaler_is_not_eligible_even_after_slimming() {
    let node = |extra: &str| -> k8s_openapi::api::core::v1::Node {
        serde_yaml::from_str(&format!("metadata: {{name: n1{extra}}}\nspec: {{taints: [{{key: other, effect: NoSchedule}}]}}\n")).unwrap()
    };
    let mut plain = node("");
    let mut deleting = node(", deletionTimestamp: '2026-01-01T00:00:00Z'");
    let mut tainted: k8s_openapi::api::core::v1::Node = serde_yaml::from_str(
        "metadata: {name: n1}\nspec: {taints: [{key: ToBeDeletedByClusterAutoscaler, value: '1', effect: NoSchedule}]}\n",
    )
    .unwrap();
    for n in [&mut plain, &mut deleting, &mut tainted] {
        slim_node(n);
    }
    assert!(node_eligible(&plain));
    assert!(!node_eligible(&deleting));
    assert!(!node_eligible(&tainted));
}
