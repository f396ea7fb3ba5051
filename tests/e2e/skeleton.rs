//! The walking skeleton end to end: real packets from a client namespace through Sluice's tc
//! program on the node to backend namespaces, and back.

mod common;

use std::{net::SocketAddrV4, time::Duration};

use common::*;
use proxy_common::{PROTO_TCP, PROTO_UDP, stat};
use sluice_testbed::Topology;

const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);
const TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn tcp_cluster_ip_spreads_over_all_backends_and_replies_come_from_the_vip() {
    let (topo, scratch) = setup("tcpspread", 3);
    let servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &endpoints),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 80),
        PROTO_TCP,
        &backend_addrs(&topo, 8080),
    );

    let replies: Vec<_> = topo
        .client()
        .tcp_requests(sock(VIP, 80), 300, TIMEOUT)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every connection to the ClusterIP succeeds");
    let client_ip = topo.client().ip();
    for r in &replies {
        assert_eq!(r.peer, sock(VIP, 80), "the client's peer is the VIP");
        assert_eq!(
            r.seen_client().map(|a| a.ip()),
            Some(client_ip),
            "the backend sees the client's own address"
        );
    }
    let counts = tally(replies.iter().map(|r| r.server()));
    assert_eq!(counts.len(), 3, "all three backends answered: {counts:?}");
    // Random choice: each expects 100 of 300 (sd ≈ 8); 60 is five deviations away.
    for (backend, n) in &counts {
        assert!(*n >= 60, "{backend} got an unfair share: {counts:?}");
    }
    let total: usize = servers.iter().map(|s| s.connections()).sum();
    assert_eq!(total, 300);
    let maps = sluice.maps();
    assert!(maps.counter(stat::DNAT_NEW_FLOW) >= 300);
    assert!(
        maps.counter(stat::REVERSE_NAT) >= 300,
        "replies were reverse-translated"
    );
}

#[test]
fn udp_cluster_ip_reply_comes_from_the_vip() {
    let (topo, scratch) = setup("udpvip", 2);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.udp_server(5353).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "dns.yaml",
        &service_yaml("dns", VIP, &[udp("dns", 53, 5353)], &endpoints),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 53),
        PROTO_UDP,
        &backend_addrs(&topo, 5353),
    );

    let replies: Vec<_> = topo
        .client()
        .udp_requests(sock(VIP, 53), 60, TIMEOUT)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every UDP request is answered");
    for r in &replies {
        assert_eq!(
            r.peer,
            sock(VIP, 53),
            "the reply's source is the VIP, not the backend"
        );
        assert_eq!(r.seen_client().map(|a| a.ip()), Some(topo.client().ip()));
    }
    assert_eq!(
        tally(replies.iter().map(|r| r.server())).len(),
        2,
        "both backends answered"
    );
}

#[test]
fn same_port_on_two_vips_and_a_two_port_service_reach_the_right_backends() {
    let (topo, scratch) = setup("multisvc", 3);
    let b = topo.backends();
    let _a = b[0].tcp_server(8080).unwrap();
    let _b = b[1].tcp_server(8080).unwrap();
    let _c_http = b[2].tcp_server(8080).unwrap();
    let _c_admin = b[2].tcp_server(9090).unwrap();
    let vip_a = std::net::Ipv4Addr::new(10, 96, 0, 11);
    let vip_b = std::net::Ipv4Addr::new(10, 96, 0, 12);
    let vip_c = std::net::Ipv4Addr::new(10, 96, 0, 13);
    scratch.write_manifest(
        "a.yaml",
        &service_yaml("a", vip_a, &[tcp("http", 80, 8080)], &[v4(&b[0])]),
    );
    scratch.write_manifest(
        "b.yaml",
        &service_yaml("b", vip_b, &[tcp("http", 80, 8080)], &[v4(&b[1])]),
    );
    scratch.write_manifest(
        "c.yaml",
        &service_yaml(
            "c",
            vip_c,
            &[tcp("http", 80, 8080), tcp("admin", 9000, 9090)],
            &[v4(&b[2])],
        ),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(vip_a, 80),
        PROTO_TCP,
        &[SocketAddrV4::new(v4(&b[0]), 8080)],
    );
    sluice.wait_for_backends(
        SocketAddrV4::new(vip_b, 80),
        PROTO_TCP,
        &[SocketAddrV4::new(v4(&b[1]), 8080)],
    );
    sluice.wait_for_backends(
        SocketAddrV4::new(vip_c, 9000),
        PROTO_TCP,
        &[SocketAddrV4::new(v4(&b[2]), 9090)],
    );

    let client = topo.client();
    for (vip, port, want_server, want_port) in [
        (vip_a, 80, "backend0", 8080),
        (vip_b, 80, "backend1", 8080),
        (vip_c, 80, "backend2", 8080),
        (vip_c, 9000, "backend2", 9090),
    ] {
        for r in client.tcp_requests(sock(vip, port), 20, TIMEOUT) {
            let r = r.unwrap_or_else(|e| panic!("{vip}:{port}: {e:#}"));
            assert_eq!(r.server(), want_server, "{vip}:{port}");
            assert_eq!(r.peer, sock(vip, port));
        }
        let _ = want_port;
    }
    // The two-port Service's ports map to different target ports on the same backend.
    assert_eq!(_c_admin.connections(), 20);
    assert_eq!(_c_http.connections(), 20);
}

#[test]
fn removing_and_adding_a_backend_takes_effect_for_new_connections() {
    let (topo, scratch) = setup("edit", 3);
    let servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let ips: Vec<_> = topo.backends().iter().map(v4).collect();
    let vip = SocketAddrV4::new(VIP, 80);
    let all = backend_addrs(&topo, 8080);
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &ips[..2]),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(vip, PROTO_TCP, &all[..2]);
    let client = topo.client();
    let before = tally(
        client
            .tcp_requests(sock(VIP, 80), 60, TIMEOUT)
            .iter()
            .map(|r| r.as_ref().unwrap().server()),
    );
    assert!(
        !before.contains_key("backend2"),
        "backend2 is not a member yet: {before:?}"
    );

    // Remove backend0.
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &ips[1..2]),
    );
    sluice.wait_for_backends(vip, PROTO_TCP, &all[1..2]);
    let served_before = servers[0].connections();
    let after_remove = tally(
        client
            .tcp_requests(sock(VIP, 80), 100, TIMEOUT)
            .iter()
            .map(|r| r.as_ref().unwrap().server()),
    );
    assert_eq!(after_remove.get("backend1"), Some(&100), "{after_remove:?}");
    assert_eq!(
        servers[0].connections(),
        served_before,
        "the removed backend got no new connection"
    );

    // Add backend2.
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &ips[1..3]),
    );
    sluice.wait_for_backends(vip, PROTO_TCP, &all[1..3]);
    let after_add = tally(
        client
            .tcp_requests(sock(VIP, 80), 100, TIMEOUT)
            .iter()
            .map(|r| r.as_ref().unwrap().server()),
    );
    assert!(
        after_add.get("backend2").copied().unwrap_or(0) >= 20,
        "{after_add:?}"
    );
    assert!(!after_add.contains_key("backend0"), "{after_add:?}");
}

#[test]
fn a_port_no_service_has_is_not_translated() {
    let (topo, scratch) = setup("noport", 1);
    let backend = &topo.backends()[0];
    let _http = backend.tcp_server(8080).unwrap();
    // A server on the backend port that would answer if the packet were wrongly translated.
    let trap = backend.tcp_server(81).unwrap();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &[v4(backend)]),
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 80),
        PROTO_TCP,
        &backend_addrs(&topo, 8080),
    );
    let new_flows = sluice.maps().counter(stat::DNAT_NEW_FLOW);

    let result = topo
        .client()
        .tcp_request(sock(VIP, 81), Duration::from_millis(500));
    let error = format!("{:#}", result.expect_err("nothing answers on VIP:81"));
    assert!(
        error.contains("refused"),
        "a ClusterIP refuses ports no Service has: {error}"
    );
    assert!(sluice.maps().counter(stat::REJECT_UNKNOWN_PORT) >= 1);
    assert_eq!(trap.connections(), 0);
    assert_eq!(
        sluice.maps().counter(stat::DNAT_NEW_FLOW),
        new_flows,
        "no translation happened"
    );
    assert!(
        !sluice
            .maps()
            .conntrack_entries()
            .iter()
            .any(|(k, _)| k.dport == 81u16.to_be()),
        "no conntrack entry for VIP:81"
    );
}

/// Programs attached at tc ingress (TCX) of each of the node's interfaces.
fn attached_programs(topo: &Topology) -> Vec<(String, Vec<u32>)> {
    topo.node_interfaces()
        .into_iter()
        .map(|iface| {
            let name = iface.clone();
            let ids = topo.node().run(move || {
                aya::programs::SchedClassifier::query_tcx(
                    &name,
                    aya::programs::TcAttachType::Ingress,
                )
                .expect("querying TCX attachments")
                .1
                .iter()
                .map(|p| p.id())
                .collect::<Vec<_>>()
            });
            (iface, ids)
        })
        .collect()
}

#[test]
fn cleanup_detaches_every_program_and_unpins_everything() {
    let (topo, scratch) = setup("cleanup", 1);
    let backend = &topo.backends()[0];
    let _http = backend.tcp_server(8080).unwrap();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &[v4(backend)]),
    );
    let mut sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(
        SocketAddrV4::new(VIP, 80),
        PROTO_TCP,
        &backend_addrs(&topo, 8080),
    );
    topo.client()
        .tcp_request(sock(VIP, 80), TIMEOUT)
        .expect("served before cleanup");
    let attached = attached_programs(&topo);
    assert!(
        attached.iter().all(|(_, ids)| ids.len() == 1),
        "one program on each node interface: {attached:?}"
    );

    sluice.kill();
    // Killing the process leaves the datapath working: that is what lets restarts keep flows.
    topo.client()
        .tcp_request(sock(VIP, 80), TIMEOUT)
        .expect("still served with sluice stopped");
    let out = sluice.cleanup();
    assert!(
        out.status.success(),
        "cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!sluice.pin.exists(), "pin directory removed");
    // Checked at once: cleanup must not leave detachment to the kernel's deferred work.
    let after_cleanup = attached_programs(&topo);
    assert!(
        after_cleanup.iter().all(|(_, ids)| ids.is_empty()),
        "programs still attached after cleanup: {after_cleanup:?} (before: {attached:?})"
    );
    let after = topo
        .client()
        .tcp_request(sock(VIP, 80), Duration::from_millis(500));
    assert!(after.is_err(), "the VIP is no longer translated: {after:?}");
}
