//! Datapath semantics end to end: refusing when a Service has no endpoints, traffic-policy
//! scopes, ICMP errors translated back to the client, and conntrack lifetimes.

mod common;

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

use common::*;
use proxy_common::{PROTO_TCP, PROTO_UDP, stat};
use sluice_testbed::{Host, Topology, require_root};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const TIMEOUT: Duration = Duration::from_secs(3);

fn setup(test: &str, backends: usize) -> (Topology, Scratch) {
    require_root();
    (
        Topology::star(test, backends).expect("building the test bed"),
        Scratch::new(test),
    )
}

/// Connects from `host`, returning the error kind (or `None` on success) and how long it took.
fn tcp_connect(host: &Host, dest: SocketAddr, timeout: Duration) -> (Option<ErrorKind>, Duration) {
    host.run(|| {
        let started = Instant::now();
        let result = TcpStream::connect_timeout(&dest, timeout);
        (result.err().map(|e| e.kind()), started.elapsed())
    })
}

/// Sends one datagram from a socket connected to `dest` and waits for an answer; the error
/// kind when there is none. A connected UDP socket reports an ICMP port unreachable that
/// quotes its own datagram as ECONNREFUSED, and ignores one quoting anything else.
fn udp_exchange(host: &Host, dest: SocketAddr, timeout: Duration) -> Result<String, ErrorKind> {
    host.run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.kind())?;
        socket.connect(dest).map_err(|e| e.kind())?;
        socket.set_read_timeout(Some(timeout)).unwrap();
        socket.send(b"hello\n").map_err(|e| e.kind())?;
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).map_err(|e| e.kind())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

#[test]
fn a_service_without_endpoints_refuses_tcp_and_udp_at_once() {
    let (topo, scratch) = setup("refuse", 1);
    scratch.write_manifest(
        "empty.yaml",
        &service_yaml(
            "empty",
            VIP,
            &[tcp("http", 80, 8080), udp("dns", 53, 5353)],
            &[],
        ),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(SocketAddrV4::new(VIP, 80), PROTO_TCP, &[]);
    sluice.wait_for_backends(SocketAddrV4::new(VIP, 53), PROTO_UDP, &[]);

    let (error, took) = tcp_connect(topo.client(), sock(VIP, 80), TIMEOUT);
    assert_eq!(
        error,
        Some(ErrorKind::ConnectionRefused),
        "a reset, not a timeout"
    );
    eprintln!("TCP refused after {took:?}");
    // The reset answers the SYN itself; a drop would wait out the 3 s timeout.
    assert!(took < Duration::from_secs(1), "refused after {took:?}");

    assert_eq!(
        udp_exchange(topo.client(), sock(VIP, 53), TIMEOUT),
        Err(ErrorKind::ConnectionRefused),
        "an ICMP port unreachable from the VIP"
    );
    let maps = sluice.maps();
    assert!(maps.counter(stat::REJECT_TCP) >= 1);
    assert!(maps.counter(stat::REJECT_UDP) >= 1);
    assert!(maps.counter(stat::DROP_NO_BACKEND) >= 2);
    assert_eq!(maps.counter(stat::DROP_LOCAL_POLICY), 0);
}

#[test]
fn a_port_unreachable_from_the_backend_reaches_the_client_translated() {
    let (topo, scratch) = setup("icmperr", 1);
    let backend = v4(&topo.backends()[0]);
    // Nothing listens on 5353 in the backend: its kernel answers with port unreachable,
    // quoting the datagram as it arrived there (client → backend:5353).
    scratch.write_manifest(
        "dns.yaml",
        &service_yaml("dns", VIP, &[udp("dns", 53, 5353)], &[backend]),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 53),
        PROTO_UDP,
        &[SocketAddrV4::new(backend, 5353)],
    );
    assert_eq!(
        udp_exchange(topo.client(), sock(VIP, 53), TIMEOUT),
        Err(ErrorKind::ConnectionRefused),
        "the client's socket (connected to the VIP) only hears of an error quoting the VIP"
    );
    assert!(sluice.maps().counter(stat::ICMP_ERROR_RNAT) >= 1);
}

/// An eTP=Local NodePort Service whose only endpoint is on another node. Clients inside the
/// cluster CIDR (internal) get the cluster-wide endpoints; everyone else (external) is dropped
/// silently, as kube-proxy does, rather than refused.
#[test]
fn external_traffic_policy_local_splits_internal_and_external_clients() {
    let (topo, scratch) = setup("etplocal", 2);
    let backend = v4(&topo.backends()[0]);
    let _server = topo.backends()[0].tcp_server(8080).unwrap();
    scratch.write_manifest(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: {VIP}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n  - addresses: [\"{backend}\"]\n    conditions: {{ready: true}}\n    nodeName: some-other-node\n"
        ),
    );
    // The client's subnet plays the pod network; the second backend is outside it.
    let config = scratch.dir.join("kube-proxy.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: 10.0.1.0/24\n",
    )
    .unwrap();
    let sluice = Sluice::start_with(&topo, &scratch, &["--config", config.to_str().unwrap()]);
    let client_side_node_ip = Ipv4Addr::new(10, 0, 1, 1);
    sluice.wait_for_backends(
        SocketAddrV4::new(client_side_node_ip, 30080),
        PROTO_TCP,
        &[],
    );
    // The marker entry has no slots; the scoped entries do.
    let internal = topo
        .client()
        .tcp_request(sock(client_side_node_ip, 30080), TIMEOUT)
        .expect("an internal client reaches the endpoint on the other node");
    assert_eq!(internal.server(), topo.backends()[0].role());

    let outsider = &topo.backends()[1];
    let [a, b, c, _] = v4(outsider).octets();
    let node_ip_seen_by_outsider = Ipv4Addr::new(a, b, c, 1);
    let (error, _) = tcp_connect(
        outsider,
        sock(node_ip_seen_by_outsider, 30080),
        Duration::from_secs(1),
    );
    assert_eq!(error, Some(ErrorKind::TimedOut), "dropped, not refused");
    let maps = sluice.maps();
    assert!(maps.counter(stat::DROP_LOCAL_POLICY) >= 1);
    assert_eq!(maps.counter(stat::REJECT_TCP), 0);
}

#[test]
fn udp_flows_expire_after_the_configured_timeout() {
    let (topo, scratch) = setup("ctexpire", 1);
    let backend = v4(&topo.backends()[0]);
    let _server = topo.backends()[0].udp_server(5353).unwrap();
    scratch.write_manifest(
        "dns.yaml",
        &service_yaml("dns", VIP, &[udp("dns", 53, 5353)], &[backend]),
    );
    let config = scratch.dir.join("kube-proxy.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nconntrack:\n  udpTimeout: 1s\n  udpStreamTimeout: 1s\n",
    )
    .unwrap();
    let sluice = Sluice::start_with(&topo, &scratch, &["--config", config.to_str().unwrap()]);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 53),
        PROTO_UDP,
        &[SocketAddrV4::new(backend, 5353)],
    );
    let maps = sluice.maps();
    let dest = sock(VIP, 53);
    // One socket, so every datagram is the same flow.
    let (quick, after_pause) = topo.client().run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect(dest).unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut buf = [0u8; 512];
        let mut exchange = || {
            socket.send(b"hello\n").unwrap();
            socket.recv(&mut buf).expect("an answer from the backend");
        };
        exchange();
        exchange();
        let quick = (
            maps.counter(stat::DNAT_NEW_FLOW),
            maps.counter(stat::CT_EXPIRED),
        );
        std::thread::sleep(Duration::from_millis(1600));
        exchange();
        let after = (
            maps.counter(stat::DNAT_NEW_FLOW),
            maps.counter(stat::CT_EXPIRED),
        );
        (quick, after)
    });
    assert_eq!(quick, (1, 0), "the second datagram used the tracked flow");
    assert_eq!(
        after_pause,
        (2, 1),
        "after the timeout the flow was selected afresh"
    );
}
