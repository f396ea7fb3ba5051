//! Backend selection end to end: round robin, source hash and ClientIP session affinity, with
//! real connections through the datapath.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use common::*;
use proxy_common::{PROTO_TCP, PROTO_UDP, stat};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 50);
const TIMEOUT: Duration = Duration::from_secs(3);

/// `service_yaml` with extra lines under `metadata:` (annotations) and under `spec:`.
fn service_with(
    name: &str,
    ports: &[Port<'_>],
    endpoints: &[Ipv4Addr],
    meta: &str,
    spec: &str,
) -> String {
    service_yaml(name, VIP, ports, endpoints).replacen(
        "  namespace: default\nspec:\n",
        &format!("  namespace: default\n{meta}spec:\n{spec}"),
        1,
    )
}

/// Round robin rotates exactly through the backends for flows handled by one CPU (each CPU
/// keeps its own rotation; the client is pinned so that every SYN is handled by the same one).
#[test]
fn round_robin_rotates_through_every_backend_in_turn() {
    let (topo, scratch) = setup("rr", 3);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "web.yaml",
        &service_with(
            "web",
            &[tcp("http", 80, 8080)],
            &endpoints,
            "  annotations: {sluice.dev/scheduler: rr}\n",
            "",
        ),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 80),
        PROTO_TCP,
        &backend_addrs(&topo, 8080),
    );
    let order: Vec<String> = topo.client().run(|| {
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(0).unwrap();
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).unwrap();
        (0..30)
            .map(|_| {
                sluice_testbed::tcp_once(sock(VIP, 80), TIMEOUT)
                    .expect("request")
                    .server()
                    .to_owned()
            })
            .collect()
    });
    let first: Vec<&String> = order.iter().take(3).collect();
    assert_eq!(
        first
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        3,
        "the first three connections go to three different backends: {order:?}"
    );
    for (i, server) in order.iter().enumerate() {
        assert_eq!(
            server,
            first[i % 3],
            "connection {i} broke the rotation: {order:?}"
        );
    }
}

/// Source hash: every flow of a client goes to the same backend, and different clients spread
/// over the backends.
#[test]
fn source_hash_keeps_each_client_on_one_backend_and_spreads_clients() {
    let (topo, scratch) = setup("sh", 3);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.udp_server(5353).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "dns.yaml",
        &service_with(
            "dns",
            &[udp("dns", 53, 5353)],
            &endpoints,
            "  annotations: {sluice.dev/scheduler: sh}\n",
            "",
        ),
    );
    let clients: Vec<Ipv4Addr> = (100..116).map(|i| Ipv4Addr::new(10, 0, 1, i)).collect();
    for c in &clients {
        topo.client()
            .add_address("eth0", &format!("{c}/24"))
            .unwrap();
    }
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 53),
        PROTO_UDP,
        &backend_addrs(&topo, 5353),
    );
    let dest: SocketAddr = sock(VIP, 53);
    let per_client: Vec<Vec<String>> = topo.client().run(|| {
        clients
            .iter()
            .map(|c| {
                (0..5)
                    .map(|_| {
                        // A new socket (a new source port, a new flow) each time.
                        let s = UdpSocket::bind((*c, 0)).unwrap();
                        s.set_read_timeout(Some(TIMEOUT)).unwrap();
                        s.send_to(b"hello\n", dest).unwrap();
                        let mut buf = [0u8; 256];
                        let n = s.recv(&mut buf).expect("an answer");
                        let body = String::from_utf8_lossy(&buf[..n]).into_owned();
                        body.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .collect()
            })
            .collect()
    });
    for (client, servers) in clients.iter().zip(&per_client) {
        assert!(
            servers.iter().all(|s| s == &servers[0]),
            "{client} was spread over {servers:?}"
        );
    }
    let distinct: std::collections::BTreeSet<_> = per_client.iter().map(|s| &s[0]).collect();
    assert!(distinct.len() >= 2, "16 clients all hashed to {distinct:?}");
}

/// ClientIP affinity: a client's new connections stick to one backend within the timeout; once
/// it has passed, the next connection is chosen afresh.
#[test]
fn client_ip_affinity_sticks_within_the_timeout_and_expires_after_it() {
    let (topo, scratch) = setup("affinity", 3);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "web.yaml",
        &service_with(
            "web",
            &[tcp("http", 80, 8080)],
            &endpoints,
            "",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 2}}\n",
        ),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 80),
        PROTO_TCP,
        &backend_addrs(&topo, 8080),
    );
    let maps = sluice.maps();
    let servers: Vec<String> = topo
        .client()
        .tcp_requests(sock(VIP, 80), 20, TIMEOUT)
        .into_iter()
        .map(|r| r.expect("request").server().to_owned())
        .collect();
    assert!(
        servers.iter().all(|s| s == &servers[0]),
        "not sticky: {servers:?}"
    );
    assert_eq!(maps.counter(stat::AFFINITY_HIT), 19);
    assert_eq!(maps.counter(stat::AFFINITY_EXPIRED), 0);

    std::thread::sleep(Duration::from_millis(2500));
    topo.client()
        .tcp_request(sock(VIP, 80), TIMEOUT)
        .expect("request after the timeout");
    assert_eq!(
        maps.counter(stat::AFFINITY_EXPIRED),
        1,
        "the remembered choice had expired"
    );
    assert_eq!(maps.counter(stat::AFFINITY_HIT), 19, "and was not used");
}

/// `sluice trace` predicts the backend a real flow with the same tuple reaches (source hash is
/// deterministic), and leaves conntrack and counters exactly as they were.
#[test]
fn trace_predicts_the_backend_and_writes_nothing() {
    let (topo, scratch) = setup("trace", 3);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.udp_server(5353).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "dns.yaml",
        &service_with(
            "dns",
            &[udp("dns", 53, 5353)],
            &endpoints,
            "  annotations: {sluice.dev/scheduler: sh}\n",
            "",
        ),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 53),
        PROTO_UDP,
        &backend_addrs(&topo, 5353),
    );
    let maps = sluice.maps();
    // Some tracked traffic first, so "untouched" means something.
    topo.client()
        .udp_request(sock(VIP, 53), TIMEOUT)
        .expect("a first exchange");
    let conntrack_before = maps.conntrack_entries();
    // Every counter but packets_seen, which ARP and IPv6 neighbour discovery on the test
    // links move at any time.
    let counters = || -> Vec<u64> {
        (0..stat::COUNT)
            .filter(|i| *i != stat::PACKETS_SEEN)
            .map(|i| maps.counter(i))
            .collect()
    };
    let counters_before = counters();

    let client = SocketAddrV4::new(v4(topo.client()), 40000);
    let out = std::process::Command::new(SLUICE)
        .args([
            "trace",
            "--from",
            &client.to_string(),
            "--to",
            &format!("{VIP}:53"),
        ])
        .args(["--proto", "udp", "--output", "json", "--pin-path"])
        .arg(&sluice.pin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let traced: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(traced["frontend"], format!("{VIP}:53/udp"));
    assert_eq!(traced["service"], "default/dns:dns");
    let predicted = traced["backend"].as_str().expect("a backend").to_owned();
    assert!(
        traced["rewritten"].as_str().unwrap().ends_with(&predicted),
        "{traced}"
    );

    let mut conntrack_after = maps.conntrack_entries();
    let mut before = conntrack_before.clone();
    before.sort_by_key(|(k, _)| *k);
    conntrack_after.sort_by_key(|(k, _)| *k);
    assert_eq!(
        conntrack_after, before,
        "the trace wrote no conntrack entry"
    );
    assert_eq!(counters(), counters_before, "nor any counter");

    let reached = topo.client().run(|| {
        let s = UdpSocket::bind(client).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.send_to(b"hello\n", sock(VIP, 53)).unwrap();
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).expect("an answer");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    });
    let role = reached.split_whitespace().next().unwrap();
    let backend_ip = topo
        .backends()
        .iter()
        .find(|b| b.role() == role)
        .map(v4)
        .unwrap();
    assert_eq!(
        predicted,
        SocketAddrV4::new(backend_ip, 5353).to_string(),
        "the real flow reached the predicted backend"
    );
}

/// NodePort traffic from outside through the XDP fast path: an eTP=Local NodePort whose
/// endpoint is on this node needs no masquerading, so XDP translates and redirects it itself
/// (native mode; the backend side has NAPI via GRO, as veth needs for native redirect).
#[test]
fn nodeport_from_outside_takes_the_xdp_fast_path() {
    let (topo, scratch) = setup("xdp", 1);
    let pod = &topo.backends()[0];
    pod.exec("ethtool", ["-K", "eth0", "gro", "on"]).unwrap();
    let _server = pod.tcp_server(8080).unwrap();
    let ip = v4(pod);
    scratch.write_manifest(
        "web.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  type: NodePort\n  externalTrafficPolicy: Local\n  clusterIP: {VIP}\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n  - addresses: [\"{ip}\"]\n    conditions: {{ready: true}}\n    nodeName: node-1\n"
        ),
    );
    let config = scratch.dir.join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhostnameOverride: node-1\n---\napiVersion: sluice.dev/v1alpha1\nkind: SluiceConfiguration\nxdp: {mode: native, interfaces: [eclient]}\n",
    )
    .unwrap();
    let sluice = Sluice::start_with(&topo, &scratch, &["--config", config.to_str().unwrap()]);
    let node_ip = Ipv4Addr::new(10, 0, 1, 1);
    sluice.wait_for_backends(
        SocketAddrV4::new(node_ip, 30080),
        PROTO_TCP,
        &[SocketAddrV4::new(ip, 8080)],
    );
    assert!(
        sluice.log().contains("attached XDP fast path"),
        "{}",
        sluice.log()
    );
    let replies: Vec<_> = topo
        .client()
        .tcp_requests(sock(node_ip, 30080), 20, TIMEOUT)
        .into_iter()
        .map(|r| r.expect("request through the XDP path"))
        .collect();
    for r in &replies {
        assert_eq!(r.peer, sock(node_ip, 30080));
        assert_eq!(r.seen_client().map(|a| a.ip()), Some(topo.client().ip()));
    }
    let maps = sluice.maps();
    // Every client packet of the 20 connections (SYN, ACK, request, FIN, ACK) went by XDP.
    assert!(
        maps.counter(stat::XDP_REDIRECT) >= 20 * 4,
        "xdp_redirect = {}",
        maps.counter(stat::XDP_REDIRECT)
    );
    assert_eq!(maps.counter(stat::DNAT_NEW_FLOW), 20);
}
