//! Sluice's lifecycle end to end: restarts keep live flows, drift in the maps is repaired.

mod common;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    time::Duration,
};

use common::*;
use proxy_common::PROTO_TCP;
use sluice_testbed::{Host, Topology, require_root};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const TIMEOUT: Duration = Duration::from_secs(3);

/// A line-echo server that keeps connections open, bound inside `host`'s namespace.
fn echo_server(host: &Host, port: u16) {
    let listener = host
        .run(move || TcpListener::bind(("0.0.0.0", port)))
        .unwrap();
    let role = host.role().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let role = role.clone();
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(writer, "{role} {line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    server: String,
}

impl Conn {
    fn open(client: &Host, dest: SocketAddrV4) -> Conn {
        let stream = client
            .run(move || TcpStream::connect_timeout(&dest.into(), TIMEOUT))
            .expect("connecting to the VIP");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut conn = Conn {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
            server: String::new(),
        };
        conn.server = conn
            .exchange("hello")
            .split(' ')
            .next()
            .unwrap()
            .to_string();
        conn
    }

    /// Sends a line and returns the echo; panics if the connection broke.
    fn exchange(&mut self, msg: &str) -> String {
        writeln!(self.writer, "{msg}").expect("writing to an established connection");
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .expect("reading from an established connection");
        assert!(
            line.ends_with(&format!("{msg}\n")),
            "echo {line:?} for {msg:?}"
        );
        line
    }
}

#[test]
fn restart_keeps_established_connections_and_applies_changes_made_while_down() {
    require_root();
    let topo = Topology::star("restart", 3).unwrap();
    let scratch = Scratch::new("restart");
    for b in topo.backends() {
        echo_server(b, 7000);
    }
    let ips: Vec<_> = topo.backends().iter().map(v4).collect();
    let addrs: Vec<_> = ips.iter().map(|ip| SocketAddrV4::new(*ip, 7000)).collect();
    let vip = SocketAddrV4::new(VIP, 7000);
    scratch.write_manifest(
        "echo.yaml",
        &service_yaml("echo", VIP, &[tcp("echo", 7000, 7000)], &ips[..2]),
    );
    let mut sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(vip, PROTO_TCP, &addrs[..2]);

    let mut conns: Vec<Conn> = (0..12).map(|_| Conn::open(topo.client(), vip)).collect();
    assert!(conns.iter().all(|c| c.server != "backend2"));

    sluice.kill();
    // While Sluice is down the datapath keeps serving, and the Service changes.
    for c in &mut conns {
        c.exchange("while-down");
    }
    scratch.write_manifest(
        "echo.yaml",
        &service_yaml("echo", VIP, &[tcp("echo", 7000, 7000)], &ips),
    );
    let new_while_down = Conn::open(topo.client(), vip);
    assert_ne!(
        new_while_down.server, "backend2",
        "nothing applies changes while Sluice is down"
    );

    sluice.restart();
    sluice.wait_for_backends(vip, PROTO_TCP, &addrs);
    for (i, c) in conns.iter_mut().enumerate() {
        let echo = c.exchange(&format!("after-restart-{i}"));
        assert!(
            echo.starts_with(&c.server),
            "connection {i} stayed on {}: {echo:?}",
            c.server
        );
    }
    // New connections reach the backend added while Sluice was down.
    let servers: Vec<String> = (0..60)
        .map(|_| Conn::open(topo.client(), vip).server)
        .collect();
    assert!(servers.iter().any(|s| s == "backend2"), "{servers:?}");
    assert!(
        !sluice.log().contains("ERROR"),
        "sluice log:\n{}",
        sluice.log()
    );
}

/// A one-node test bed whose only backend serves TCP 8080 behind the ClusterIP VIP:80, with
/// the manifest written: (topology, scratch, the backend's server, the backend's address).
fn one_backend_web(test: &str) -> (Topology, Scratch, sluice_testbed::TcpServer, SocketAddrV4) {
    require_root();
    let topo = Topology::star(test, 1).unwrap();
    let scratch = Scratch::new(test);
    let server = topo.backends()[0].tcp_server(8080).unwrap();
    let backend = SocketAddrV4::new(v4(&topo.backends()[0]), 8080);
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &[*backend.ip()]),
    );
    (topo, scratch, server, backend)
}

#[test]
fn drift_in_the_maps_is_repaired_by_the_next_full_sync() {
    let (topo, scratch, _server, backend) = one_backend_web("drift");
    let vip = SocketAddrV4::new(VIP, 80);
    let sluice = Sluice::start_with(&topo, &scratch, &["--sync-period", "1s"]);
    sluice.wait_for_backends(vip, PROTO_TCP, &[backend]);

    // Someone deletes the Service's master entry behind Sluice's back.
    let mut maps = sluice.maps();
    maps.services.remove(&service_key(vip, PROTO_TCP)).unwrap();
    assert!(
        maps.snapshot()
            .live_backends(&service_key(vip, PROTO_TCP))
            .is_none()
    );
    assert!(
        topo.client()
            .tcp_request(sock(VIP, 80), Duration::from_millis(300))
            .is_err(),
        "the deleted entry really stopped the Service"
    );

    sluice.wait_for_backends(vip, PROTO_TCP, &[backend]);
    let reply = topo
        .client()
        .tcp_request(sock(VIP, 80), TIMEOUT)
        .expect("served again");
    assert_eq!(reply.server(), "backend0");
    assert!(sluice.log().contains("repairing"), "the repair is logged");
}

/// A plain HTTP/1.1 GET from inside `host`'s namespace: (status, body).
fn try_http_get(host: &Host, addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n\r\n");
    let response = host.run(move || {
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.write_all(request.as_bytes())?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stream, &mut text)?;
        std::io::Result::Ok(text)
    })?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))?;
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

fn http_get(host: &Host, addr: &str, path: &str) -> (u16, String) {
    try_http_get(host, addr, path).expect("HTTP request to sluice")
}

/// The value of a metric line `name{labels} value` in Prometheus text format.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn healthz_and_metrics_reflect_the_real_datapath() {
    require_root();
    let topo = Topology::star("metrics", 2).unwrap();
    let scratch = Scratch::new("metrics");
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let ips: Vec<_> = topo.backends().iter().map(v4).collect();
    let addrs: Vec<_> = ips.iter().map(|ip| SocketAddrV4::new(*ip, 8080)).collect();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &ips),
    );
    // One malformed manifest: counted and logged, while the good one is served.
    scratch.write_manifest(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nspec: {ports: 7}\n",
    );
    let sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(SocketAddrV4::new(VIP, 80), PROTO_TCP, &addrs);
    for r in topo.client().tcp_requests(sock(VIP, 80), 20, TIMEOUT) {
        r.expect("served");
    }
    // Datapath counters are mirrored every second.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (health, body) = loop {
        let (status, body) = http_get(topo.node(), "127.0.0.1:10249", "/metrics");
        assert_eq!(status, 200);
        if metric(
            &body,
            r#"sluice_datapath_packets_total{counter="dnat_new_flow"}"#,
        )
        .unwrap_or(0.0)
            >= 20.0
        {
            break (http_get(topo.node(), "127.0.0.1:10256", "/healthz"), body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed the traffic:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(health.0, 200, "healthy after syncing: {}", health.1);
    assert!(health.1.contains("lastUpdated"), "{}", health.1);
    assert_eq!(
        metric(&body, r#"sluice_map_entries{map="SLUICE_SVC4"}"#),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        metric(&body, r#"sluice_map_entries{map="SLUICE_BACKENDS4"}"#),
        Some(2.0)
    );
    assert_eq!(metric(&body, "sluice_frontends"), Some(1.0));
    // The first sync saw one Service and one EndpointSlice appear.
    assert_eq!(
        metric(&body, "kubeproxy_sync_proxy_rules_service_changes_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&body, "kubeproxy_sync_proxy_rules_endpoint_changes_total"),
        Some(1.0)
    );
    assert!(
        metric(&body, "kubeproxy_sync_proxy_rules_last_timestamp_seconds").unwrap_or(0.0) > 1.6e9
    );
    assert!(
        metric(&body, "kubeproxy_sync_proxy_rules_duration_seconds_count").unwrap_or(0.0) >= 1.0
    );
    assert!(
        metric(
            &body,
            r#"sluice_skipped_objects_total{reason="malformed_manifest"}"#
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{body}"
    );
    assert_eq!(http_get(topo.node(), "127.0.0.1:10256", "/livez").0, 200);
}

#[test]
fn an_adopted_map_keeps_its_size_and_says_so() {
    let (topo, scratch, _server, backend) = one_backend_web("mapsize");
    let vip = SocketAddrV4::new(VIP, 80);
    let mut sluice = Sluice::start(&topo, &scratch);
    sluice.wait_for_backends(vip, PROTO_TCP, &[backend]);
    sluice.kill();

    // Restarted with a smaller configured size: the pinned map (and conntrack) is adopted.
    let config = scratch.dir.join("sluice.yaml");
    std::fs::write(
        &config,
        "apiVersion: sluice.dev/v1alpha1\nkind: SluiceConfiguration\nmaps:\n  services: 1024\n",
    )
    .unwrap();
    let sluice = Sluice::start_with(
        &topo,
        &scratch,
        &["--sluice-config", config.to_str().unwrap()],
    );
    sluice.wait_for_backends(vip, PROTO_TCP, &[backend]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        // The restarted process may not have bound its port yet.
        let body = try_http_get(topo.node(), "127.0.0.1:10249", "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        if metric(&body, "sluice_frontends") == Some(1.0) {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sync reported:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        metric(&body, r#"sluice_map_capacity{map="SLUICE_SVC4"}"#),
        Some(f64::from(proxy_common::capacity::SERVICES)),
        "the real capacity is reported, not the configured one"
    );
    assert!(
        sluice.log().contains("the pinned map keeps its size"),
        "{}",
        sluice.log()
    );
}

fn local_lb_yaml(endpoint: Ipv4Addr, node_name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: default}}\nspec:\n  type: LoadBalancer\n  clusterIP: 10.96.0.30\n  externalTrafficPolicy: Local\n  healthCheckNodePort: 32100\n  ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: lb-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: lb}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints:\n  - addresses: [\"{endpoint}\"]\n    nodeName: {node_name}\n    conditions: {{ready: true}}\n"
    )
}

/// kube-proxy's healthCheckNodePort: external load balancers ask each node whether it has
/// local endpoints for an externalTrafficPolicy: Local Service.
#[test]
fn health_check_node_port_answers_for_local_endpoints() {
    require_root();
    let topo = Topology::star("hcnp", 1).unwrap();
    let scratch = Scratch::new("hcnp");
    let endpoint = v4(&topo.backends()[0]);
    let config = scratch.dir.join("kube-proxy.yaml");
    std::fs::write(
        &config,
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nhostnameOverride: node-a\n",
    )
    .unwrap();
    scratch.write_manifest("lb.yaml", &local_lb_yaml(endpoint, "node-a"));
    let _sluice = Sluice::start_with(&topo, &scratch, &["--config", config.to_str().unwrap()]);
    // Asked from outside the node, at its address, as a cloud load balancer does.
    let node_addr = "10.0.1.1:32100";
    let wait_for = |want: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = try_http_get(topo.client(), node_addr, "/healthz");
            if let Ok((status, body)) = &got
                && *status == want
            {
                return body.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wanted {want}, got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let body = wait_for(200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["localEndpoints"], 1, "{body}");
    assert_eq!(json["service"]["name"], "lb");

    scratch.write_manifest("lb.yaml", &local_lb_yaml(endpoint, "node-b"));
    let body = wait_for(503);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["localEndpoints"], 0, "{body}");

    std::fs::remove_file(scratch.manifests().join("lb.yaml")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while try_http_get(topo.client(), node_addr, "/healthz").is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the port stays open without the Service"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
