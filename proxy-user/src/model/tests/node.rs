//! The node context: reading the Node object, and which addresses answer NodePorts.

use k8s_openapi::api::core::v1::Node;

use crate::config::{Cidr, NodePortAddresses};

use super::*;

fn node_object() -> Node {
    serde_yaml::from_str(
        "metadata:
  name: worker-1
  labels: {topology.kubernetes.io/zone: eu-1a, kubernetes.io/hostname: worker-1}
status:
  addresses:
    - {type: Hostname, address: worker-1}
    - {type: ExternalIP, address: 203.0.113.5}
    - {type: InternalIP, address: 10.1.0.5}
    - {type: InternalIP, address: 10.1.0.6}
    - {type: InternalIP, address: fd10::5}
    - {type: ExternalIP, address: 2001:db8::5}
    - {type: InternalIP, address: not-an-ip}
",
    )
    .unwrap()
}

#[test]
fn from_node_reads_name_zone_and_addresses() {
    let ctx = NodeContext::from_node(&node_object(), None);
    assert_eq!(ctx.node_name.as_deref(), Some("worker-1"));
    assert_eq!(ctx.zone.as_deref(), Some("eu-1a"));
    let want: Vec<IpAddr> = [
        "10.1.0.5",
        "10.1.0.6",
        "fd10::5",
        "203.0.113.5",
        "2001:db8::5",
    ]
    .map(ip)
    .to_vec();
    assert_eq!(ctx.node_addresses, want);
    assert_eq!(ctx.primary_addresses, [ip("10.1.0.5"), ip("fd10::5")]);
    assert_eq!(ctx.node_port_addresses, NodePortAddresses::All);
    assert!(!ctx.localhost_node_ports);
}

#[test]
fn from_node_prefers_the_hostname_override() {
    let node = node_object();
    #[rustfmt::skip]
    let rows = [
        (None,                Some("worker-1")),
        (Some(" Worker-9 "),  Some("worker-9")),
        (Some("  "),          Some("worker-1")),
    ];
    for (hostname_override, want) in rows {
        assert_eq!(
            NodeContext::from_node(&node, hostname_override)
                .node_name
                .as_deref(),
            want,
            "{hostname_override:?}"
        );
    }
    assert_eq!(
        NodeContext::from_node(&Node::default(), None),
        NodeContext::default()
    );
}

#[test]
fn from_node_without_internal_addresses_takes_external_ones_as_primary() {
    let node: Node = serde_yaml::from_str(
        "metadata: {name: edge, labels: {topology.kubernetes.io/zone: ''}}
status:
  addresses: [{type: ExternalIP, address: 2001:db8::7}, {type: ExternalIP, address: 198.51.100.7}]
",
    )
    .unwrap();
    let ctx = NodeContext::from_node(&node, None);
    assert_eq!(ctx.zone, None, "an empty zone label is no zone");
    assert_eq!(
        ctx.primary_addresses,
        [ip("2001:db8::7"), ip("198.51.100.7")]
    );
}

fn cidrs(list: &[&str]) -> NodePortAddresses {
    NodePortAddresses::Cidrs(list.iter().map(|c| c.parse::<Cidr>().unwrap()).collect())
}

#[test]
fn node_port_addresses_filter() {
    let addresses: Vec<IpAddr> = [
        "10.1.0.5",
        "192.168.7.1",
        "127.0.0.1",
        "fd10::5",
        "2001:db8::5",
        "::1",
    ]
    .map(ip)
    .to_vec();
    #[rustfmt::skip]
    let rows: Vec<(NodePortAddresses, bool, &[&str], &[&str])> = vec![
        // filter                                localhost  IPv4 answers                              IPv6 answers
        (NodePortAddresses::All,                 false, &["10.1.0.5", "192.168.7.1"],                &["2001:db8::5", "fd10::5"]),
        (NodePortAddresses::All,                 true,  &["10.1.0.5", "127.0.0.1", "192.168.7.1"],   &["2001:db8::5", "fd10::5"]),
        (cidrs(&["10.0.0.0/8"]),                 false, &["10.1.0.5"],                               &["2001:db8::5", "fd10::5"]),
        // 127.0.0.1 only if the list covers it.
        (cidrs(&["10.0.0.0/8"]),                 true,  &["10.1.0.5"],                               &["2001:db8::5", "fd10::5"]),
        (cidrs(&["10.0.0.0/8", "127.0.0.0/8"]),  true,  &["10.1.0.5", "127.0.0.1"],                  &["2001:db8::5", "fd10::5"]),
        (cidrs(&["127.0.0.1/32"]),               false, &[],                                         &["2001:db8::5", "fd10::5"]),
        (cidrs(&["0.0.0.0/0"]),                  true,  &["10.1.0.5", "127.0.0.1", "192.168.7.1"],   &["2001:db8::5", "fd10::5"]),
        // A family without a prefix in the list is not filtered.
        (cidrs(&["fd00::/8"]),                   false, &["10.1.0.5", "192.168.7.1"],                &["fd10::5"]),
        (cidrs(&["fd00::/8", "::1/128"]),        true,  &["10.1.0.5", "127.0.0.1", "192.168.7.1"],   &["fd10::5"]),
        (cidrs(&["172.16.0.0/12"]),              false, &[],                                         &["2001:db8::5", "fd10::5"]),
        // Without known primary addresses, the first of each family stands in.
        (NodePortAddresses::Primary,             true,  &["10.1.0.5"],                               &["fd10::5"]),
    ];
    for (filter, localhost, v4, v6) in rows {
        let ctx = NodeContext {
            node_port_addresses: filter.clone(),
            localhost_node_ports: localhost,
            ..NodeContext::new(None, addresses.clone())
        };
        let want = |l: &[&str]| l.iter().map(|s| ip(s)).collect::<Vec<_>>();
        assert_eq!(
            ctx.node_port_ips(false),
            want(v4),
            "{filter:?} localhost {localhost}"
        );
        assert_eq!(
            ctx.node_port_ips(true),
            want(v6),
            "{filter:?} localhost {localhost}"
        );
    }
}

#[test]
fn primary_node_port_addresses_come_from_the_node_object() {
    let ctx = NodeContext {
        node_port_addresses: NodePortAddresses::Primary,
        localhost_node_ports: true,
        ..NodeContext::from_node(&node_object(), None)
    };
    assert_eq!(ctx.node_port_ips(false), [ip("10.1.0.5")]);
    assert_eq!(ctx.node_port_ips(true), [ip("fd10::5")]);
}

#[test]
fn node_ports_follow_the_filter_and_the_service_families() {
    let ctx = NodeContext {
        node_port_addresses: cidrs(&["172.18.0.0/16"]),
        localhost_node_ports: true,
        ..node()
    };
    let svc = Svc::lb().spec("ports", json!([{"port": 80, "nodePort": 30080}]));
    let state = DesiredState::build(&[svc.build()], &[], &ctx);
    let mut node_ports: Vec<String> = state
        .frontends()
        .filter(|f| f.kind == FrontendKind::NodePort)
        .map(|f| f.key.to_string())
        .collect();
    node_ports.sort();
    // IPv4-only Service: no IPv6 NodePort even though the node has an IPv6 address.
    assert_eq!(node_ports, ["172.18.0.2:30080/tcp"]);
}
