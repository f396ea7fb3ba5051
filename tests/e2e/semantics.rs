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
use sluice_testbed::{Host, Topology};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const TIMEOUT: Duration = Duration::from_secs(3);

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

/// Serves one connection on `port` in `host`: reads an 8-byte length, sends that many bytes of
/// [`pattern`], closes. Join the handle after the client is done.
fn bulk_server(host: &Host, port: u16) -> std::thread::JoinHandle<()> {
    let listener = host.run(|| std::net::TcpListener::bind(("0.0.0.0", port)).unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().unwrap();
        let mut len = [0u8; 8];
        stream.read_exact(&mut len).unwrap();
        let mut left = u64::from_be_bytes(len) as usize;
        let mut offset = 0;
        while left > 0 {
            let chunk = pattern(offset, left.min(64 * 1024));
            stream.write_all(&chunk).unwrap();
            offset += chunk.len();
            left -= chunk.len();
        }
    })
}

/// Deterministic bytes that no two offsets share by accident (a byte counter would let a
/// dropped and duplicated segment go unnoticed less often than a mixing function).
fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len)
        .map(|i| {
            let x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            (x >> 56) as u8 ^ (i >> 12) as u8
        })
        .collect()
}

/// Downloads `len` bytes through `dest` from `host` and returns their SHA-256.
fn download(host: &Host, dest: SocketAddr, len: usize) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    use std::io::{Read, Write};
    host.run(|| {
        let mut stream = TcpStream::connect_timeout(&dest, TIMEOUT).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(&(len as u64).to_be_bytes()).unwrap();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            let n = stream.read(&mut buf).expect("reading the transfer");
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            got += n;
        }
        assert_eq!(got, len, "the whole transfer arrived");
        hasher.finalize().into()
    })
}

fn digest_of_pattern(len: usize) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(pattern(0, len)).into()
}

const TEN_MB: usize = 10 * 1024 * 1024;

#[test]
fn a_large_transfer_through_dnat_arrives_intact() {
    let (topo, scratch) = setup("bulkdnat", 1);
    let backend = v4(&topo.backends()[0]);
    let server = bulk_server(&topo.backends()[0], 9000);
    scratch.write_manifest(
        "bulk.yaml",
        &service_yaml("bulk", VIP, &[tcp("bulk", 9000, 9000)], &[backend]),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 9000),
        PROTO_TCP,
        &[SocketAddrV4::new(backend, 9000)],
    );
    assert_eq!(
        download(topo.client(), sock(VIP, 9000), TEN_MB),
        digest_of_pattern(TEN_MB)
    );
    server.join().unwrap();
}

/// A backend that reaches its own Service and is chosen gets its packet back from the node's
/// address (masqueraded), not from itself, which its kernel would drop as a martian.
#[test]
fn hairpin_a_backend_reaching_its_own_service_is_masqueraded() {
    let (topo, scratch) = setup("hairpin", 1);
    let pod = &topo.backends()[0];
    let _server = pod.tcp_server(8080).unwrap();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &[v4(pod)]),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 80),
        PROTO_TCP,
        &[SocketAddrV4::new(v4(pod), 8080)],
    );
    let reply = pod
        .tcp_request(sock(VIP, 80), TIMEOUT)
        .expect("the backend reaches itself through its Service");
    assert_eq!(reply.peer, sock(VIP, 80));
    let [a, b, c, _] = v4(pod).octets();
    assert_eq!(
        reply.seen_client().map(|s| s.ip()),
        Some(Ipv4Addr::new(a, b, c, 1).into()),
        "the backend saw the node's address"
    );
    assert!(sluice.maps().counter(stat::SNAT_NEW_FLOW) >= 1);
}

/// client — node-1 (Sluice) — node-2 — remote pod, plus a local pod on node-1. node-2 has no
/// route to the client's network: replies can only come back through node-1.
struct TwoNodes {
    topo: Topology,
    remote: Host,
}

fn two_nodes(test: &str) -> (TwoNodes, Scratch) {
    let (topo, scratch) = setup(test, 1);
    let lab = topo.lab();
    let node2 = lab.add_host("node2").unwrap();
    node2.sysctl("net.ipv4.ip_forward", "1").unwrap();
    lab.link_named(
        topo.node(),
        "enode2",
        "10.0.2.1/24",
        &node2,
        "enode1",
        "10.0.2.2/24",
    )
    .unwrap();
    let remote = lab.add_host("remote").unwrap();
    lab.link_named(
        &node2,
        "epod",
        "10.0.20.1/24",
        &remote,
        "eth0",
        "10.0.20.2/24",
    )
    .unwrap();
    remote.add_route("default", "10.0.20.1").unwrap();
    topo.node().add_route("10.0.20.0/24", "10.0.2.2").unwrap();
    topo.node()
        .sysctl("net.ipv4.conf.enode2.rp_filter", "0")
        .unwrap();
    (TwoNodes { topo, remote }, scratch)
}

#[test]
fn nodeport_to_another_node_is_masqueraded_and_etp_local_keeps_the_client_address() {
    let (net, scratch) = two_nodes("twonode");
    let topo = &net.topo;
    let local_pod = &topo.backends()[0];
    let _remote_web = net.remote.tcp_server(8080).unwrap();
    let _local_web = local_pod.tcp_server(8080).unwrap();
    let bulk = bulk_server(&net.remote, 9000);
    let remote_ip = v4(&net.remote);
    let local_ip = v4(local_pod);
    scratch.write_manifest(
        "services.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: remote, namespace: default}}\nspec:\n  type: NodePort\n  clusterIP: 10.96.0.30\n  ports:\n    - {{name: http, port: 80, targetPort: 8080, nodePort: 30080}}\n    - {{name: bulk, port: 9000, targetPort: 9000, nodePort: 30090}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: remote-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: remote}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: bulk, port: 9000}}]\nendpoints:\n  - addresses: [\"{remote_ip}\"]\n    conditions: {{ready: true}}\n    nodeName: node-2\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: local, namespace: default}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: 10.96.0.31\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30081}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: local-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: local}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n  - addresses: [\"{local_ip}\"]\n    conditions: {{ready: true}}\n    nodeName: node-1\n"
        ),
    );
    let config = scratch.dir.join("kube-proxy.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhostnameOverride: node-1\n",
    )
    .unwrap();
    let sluice = Sluice::start_with(topo, &scratch, &["--config", config.to_str().unwrap()]);
    let node_ip = Ipv4Addr::new(10, 0, 1, 1);
    sluice.wait_for_backends(
        SocketAddrV4::new(node_ip, 30080),
        PROTO_TCP,
        &[SocketAddrV4::new(remote_ip, 8080)],
    );
    sluice.wait_for_backends(
        SocketAddrV4::new(node_ip, 30081),
        PROTO_TCP,
        &[SocketAddrV4::new(local_ip, 8080)],
    );

    let reply = topo
        .client()
        .tcp_request(sock(node_ip, 30080), TIMEOUT)
        .expect("the NodePort reaches the pod on the other node");
    assert_eq!(
        reply.peer,
        sock(node_ip, 30080),
        "the reply comes from the NodePort"
    );
    assert_eq!(
        reply.seen_client().map(|s| s.ip()),
        Some(Ipv4Addr::new(10, 0, 2, 1).into()),
        "the remote pod saw node-1's address (masqueraded)"
    );
    assert!(sluice.maps().counter(stat::SNAT_NEW_FLOW) >= 1);

    assert_eq!(
        download(topo.client(), sock(node_ip, 30090), TEN_MB),
        digest_of_pattern(TEN_MB),
        "10 MB through DNAT + SNAT arrive intact"
    );
    bulk.join().unwrap();

    let reply = topo
        .client()
        .tcp_request(sock(node_ip, 30081), TIMEOUT)
        .expect("the eTP=Local NodePort reaches the local pod");
    assert_eq!(
        reply.seen_client().map(|s| s.ip()),
        Some(topo.client().ip()),
        "externalTrafficPolicy: Local keeps the client's address"
    );
}

/// A UDP client keeps one flow open while its Service's only backend is replaced: its
/// datagrams reach the new backend as soon as the change is applied, never a black hole.
#[test]
fn udp_flow_follows_a_replaced_backend() {
    let (topo, scratch) = setup("udpswap", 2);
    let [old, new] = [&topo.backends()[0], &topo.backends()[1]];
    let _old_server = old.udp_server(5353).unwrap();
    let _new_server = new.udp_server(5353).unwrap();
    scratch.write_manifest(
        "dns.yaml",
        &service_yaml("dns", VIP, &[udp("dns", 53, 5353)], &[v4(old)]),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 53),
        PROTO_UDP,
        &[SocketAddrV4::new(v4(old), 5353)],
    );
    let dest = sock(VIP, 53);
    let answers = topo.client().run(|| {
        let socket = UdpSocket::bind("0.0.0.0:0").unwrap();
        socket.connect(dest).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut buf = [0u8; 512];
        let mut answers = Vec::new();
        let mut switched_at = None;
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            socket.send(b"hello\n").unwrap();
            let answer = socket
                .recv(&mut buf)
                .ok()
                .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
            answers.push(answer);
            if answers.len() == 5 {
                scratch.write_manifest(
                    "dns.yaml",
                    &service_yaml("dns", VIP, &[udp("dns", 53, 5353)], &[v4(new)]),
                );
                switched_at = Some(answers.len());
            }
            if switched_at.is_some()
                && answers
                    .last()
                    .unwrap()
                    .as_deref()
                    .is_some_and(|a| a.starts_with(new.role()))
                && answers
                    .iter()
                    .rev()
                    .take(5)
                    .all(|a| a.as_deref().is_some_and(|a| a.starts_with(new.role())))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        answers
    });
    let roles: Vec<&str> = answers
        .iter()
        .map(|a| {
            a.as_deref()
                .and_then(|a| a.split_whitespace().next())
                .unwrap_or("-")
        })
        .collect();
    assert!(roles[..5].iter().all(|r| *r == old.role()), "{roles:?}");
    let first_new = roles
        .iter()
        .position(|r| *r == new.role())
        .unwrap_or_else(|| panic!("the flow never reached the new backend: {roles:?}"));
    assert!(
        roles[first_new..].iter().all(|r| *r == new.role()),
        "once moved, the flow stays on the new backend with no lost datagram: {roles:?}"
    );
    assert!(
        roles[5..first_new]
            .iter()
            .all(|r| *r == old.role() || *r == "-"),
        "{roles:?}"
    );
}

/// LoadBalancer ingress IPs and externalIPs carry TCP and UDP; `loadBalancerSourceRanges`
/// admits the clients it lists and drops the others, and filters only the load-balancer
/// frontend (kube-proxy leaves the NodePort open).
#[test]
fn load_balancer_and_external_ips_serve_tcp_and_udp_and_source_ranges_filter() {
    let (topo, scratch) = setup("lbext", 1);
    let pod = &topo.backends()[0];
    let _tcp = pod.tcp_server(8080).unwrap();
    let _udp = pod.udp_server(5353).unwrap();
    let ip = v4(pod);
    let service = |name: &str,
                   cluster_ip: &str,
                   extra_spec: &str,
                   status: &str,
                   node_ports: Option<[u16; 2]>| {
        let [http_node_port, dns_node_port] = node_ports
            .map_or([String::new(), String::new()], |ports| {
                ports.map(|p| format!(", nodePort: {p}"))
            });
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  clusterIP: {cluster_ip}\n{extra_spec}  ports:\n    - {{name: http, port: 80, protocol: TCP{http_node_port}}}\n    - {{name: dns, port: 53, protocol: UDP{dns_node_port}}}\n{status}---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n---\n"
        )
    };
    let lb_status =
        |lb_ip: &str| format!("status:\n  loadBalancer:\n    ingress: [{{ip: {lb_ip}}}]\n");
    let manifests = [
        service(
            "allowed",
            "10.96.0.40",
            "  type: LoadBalancer\n  loadBalancerSourceRanges: [10.0.1.0/24]\n",
            &lb_status("192.0.2.100"),
            Some([30400, 30401]),
        ),
        service(
            "denied",
            "10.96.0.41",
            "  type: LoadBalancer\n  loadBalancerSourceRanges: [198.51.100.0/24]\n",
            &lb_status("192.0.2.101"),
            Some([30402, 30403]),
        ),
        service(
            "external",
            "10.96.0.42",
            "  externalIPs: [192.0.2.200]\n",
            "",
            None,
        ),
    ]
    .concat();
    scratch.write_manifest("services.yaml", &manifests);
    let sluice = Sluice::start(&topo, &scratch);
    for (addr, proto, target) in [
        ("192.0.2.100:80", PROTO_TCP, 8080),
        ("192.0.2.100:53", PROTO_UDP, 5353),
        ("192.0.2.101:80", PROTO_TCP, 8080),
        ("192.0.2.200:80", PROTO_TCP, 8080),
        ("192.0.2.200:53", PROTO_UDP, 5353),
    ] {
        sluice.wait_for_backends(
            addr.parse().unwrap(),
            proto,
            &[SocketAddrV4::new(ip, target)],
        );
    }
    for addr in ["192.0.2.100:80", "192.0.2.200:80"] {
        let reply = topo
            .client()
            .tcp_request(addr.parse().unwrap(), TIMEOUT)
            .unwrap_or_else(|e| panic!("TCP to {addr}: {e:#}"));
        assert_eq!(
            reply.peer,
            addr.parse().unwrap(),
            "the reply comes from {addr}"
        );
        assert_eq!(reply.server(), pod.role());
    }
    for addr in ["192.0.2.100:53", "192.0.2.200:53"] {
        let reply = topo
            .client()
            .udp_request(addr.parse().unwrap(), TIMEOUT)
            .unwrap_or_else(|e| panic!("UDP to {addr}: {e:#}"));
        assert_eq!(
            reply.peer,
            addr.parse().unwrap(),
            "the reply comes from {addr}"
        );
    }

    let (error, _) = tcp_connect(
        topo.client(),
        "192.0.2.101:80".parse().unwrap(),
        Duration::from_secs(1),
    );
    assert_eq!(
        error,
        Some(ErrorKind::TimedOut),
        "outside the source ranges: dropped"
    );
    assert!(sluice.maps().counter(stat::DROP_SOURCE_RANGE) >= 1);
    topo.client()
        .tcp_request(sock(Ipv4Addr::new(10, 0, 1, 1), 30402), TIMEOUT)
        .expect("the same Service's NodePort is not filtered");
}

/// Every frontend entry names its Service for `sluice inspect`; per-frontend and per-backend
/// counters move with real traffic and add up; both go when the Service does.
#[test]
fn frontend_metadata_and_traffic_counters_follow_the_service() {
    let (topo, scratch) = setup("counters", 2);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &endpoints),
    );
    let sluice = Sluice::start_with(&topo, &scratch, &["--sync-period", "1s"]);
    let backends: Vec<_> = endpoints
        .iter()
        .map(|ip| SocketAddrV4::new(*ip, 8080))
        .collect();
    sluice.wait_for_backends(SocketAddrV4::new(VIP, 80), PROTO_TCP, &backends);
    let key = service_key(SocketAddrV4::new(VIP, 80), PROTO_TCP);
    let maps = sluice.maps();
    let meta = maps.meta_entries()[&key];
    let text = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .trim_end_matches('\0')
            .to_owned()
    };
    assert_eq!(
        (
            text(&meta.namespace),
            text(&meta.name),
            text(&meta.port_name)
        ),
        ("default".into(), "web".into(), "http".into())
    );

    let requests = 40;
    for reply in topo.client().tcp_requests(sock(VIP, 80), requests, TIMEOUT) {
        reply.expect("request through the ClusterIP");
    }
    let frontend = maps.frontend_traffic()[&key];
    // A connection is at least SYN, ACK, request, FIN, ACK forward and SYN-ACK, reply,
    // FIN, ACK back.
    assert!(
        frontend.forward_packets >= 4 * requests as u64,
        "{frontend:?}"
    );
    assert!(
        frontend.reply_packets >= 3 * requests as u64,
        "{frontend:?}"
    );
    assert!(frontend.forward_bytes > frontend.forward_packets * 54);
    let per_backend = maps.backend_traffic();
    let summed: u64 = backends
        .iter()
        .map(|b| per_backend[&backend(*b, PROTO_TCP)].forward_packets)
        .sum();
    assert_eq!(
        summed, frontend.forward_packets,
        "backends add up to the frontend"
    );
    assert!(
        backends
            .iter()
            .all(|b| per_backend[&backend(*b, PROTO_TCP)].reply_packets > 0),
        "both backends answered"
    );

    std::fs::remove_file(scratch.manifests().join("web.yaml")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while maps.meta_entries().contains_key(&key)
        || maps.frontend_traffic().contains_key(&key)
        || !maps.backend_traffic().is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "metadata and counters of the removed Service were never pruned"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
