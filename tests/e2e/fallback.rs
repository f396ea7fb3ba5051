//! The core scenarios over every dataplane this kernel has (eBPF, nftables, iptables), with
//! real packets; the probe choosing a fallback; switching dataplanes on a live node; and
//! `sluice cleanup` leaving nothing behind. IPVS is not in this kernel (see docs/architecture.md
//! for how it is tested).

mod common;

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use sluice_testbed::{Host, Topology};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const TIMEOUT: Duration = Duration::from_secs(3);

fn start(topo: &Topology, scratch: &Scratch, dataplane: &str) -> Sluice {
    Sluice::start_with(topo, scratch, &["--dataplane", dataplane])
}

/// Waits until `ready` holds: a dataplane-neutral readiness check (the fallbacks have no maps
/// to read), made of real requests.
fn wait_until(sluice: &Sluice, what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened; sluice log:\n{}",
            sluice.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The log without the terminal colour codes tracing writes.
fn plain_log(sluice: &Sluice) -> String {
    let log = sluice.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn servers_answering(client: &Host, dest: SocketAddr, n: usize) -> Option<Vec<String>> {
    let replies: Result<Vec<_>, _> = client
        .tcp_requests(dest, n, Duration::from_millis(500))
        .into_iter()
        .collect();
    replies
        .ok()
        .map(|r| r.iter().map(|r| r.server().to_string()).collect())
}

// ------------------------------------------------------------------------------------------
// The scenarios, each taking the dataplane to run on
// ------------------------------------------------------------------------------------------

fn tcp_spread(dataplane: &str) {
    let (topo, scratch) = setup(&format!("fbtcp-{dataplane}"), 3);
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
    let sluice = start(&topo, &scratch, dataplane);
    wait_until(&sluice, "the ClusterIP answering", || {
        topo.client().tcp_request(sock(VIP, 80), TIMEOUT).is_ok()
    });
    let before: usize = servers.iter().map(|s| s.connections()).sum();
    let replies: Vec<_> = topo
        .client()
        .tcp_requests(sock(VIP, 80), 300, TIMEOUT)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every connection to the ClusterIP succeeds");
    for r in &replies {
        assert_eq!(r.peer, sock(VIP, 80), "the client's peer is the VIP");
        assert_eq!(
            r.seen_client().map(|a| a.ip()),
            Some(topo.client().ip()),
            "the backend sees the client's own address"
        );
    }
    let counts = tally(replies.iter().map(|r| r.server()));
    assert_eq!(
        counts.len(),
        3,
        "{dataplane}: all three answered: {counts:?}"
    );
    // Random choice: each expects 100 of 300 (sd ≈ 8); 60 is five deviations away.
    for (backend, n) in &counts {
        assert!(
            *n >= 60,
            "{dataplane}: {backend} got an unfair share: {counts:?}"
        );
    }
    let after: usize = servers.iter().map(|s| s.connections()).sum();
    assert_eq!(after - before, 300);
    assert!(
        plain_log(&sluice).contains(&format!("dataplane={dataplane}")),
        "{}",
        plain_log(&sluice)
    );
}

fn udp_spread(dataplane: &str) {
    let (topo, scratch) = setup(&format!("fbudp-{dataplane}"), 2);
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
    let sluice = start(&topo, &scratch, dataplane);
    wait_until(&sluice, "the UDP ClusterIP answering", || {
        topo.client()
            .udp_request(sock(VIP, 53), Duration::from_millis(500))
            .is_ok()
    });
    let replies: Vec<_> = topo
        .client()
        .udp_requests(sock(VIP, 53), 100, TIMEOUT)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every UDP request is answered");
    for r in &replies {
        assert_eq!(r.peer, sock(VIP, 53), "the reply's source is the VIP");
        assert_eq!(r.seen_client().map(|a| a.ip()), Some(topo.client().ip()));
    }
    let counts = tally(replies.iter().map(|r| r.server()));
    assert_eq!(counts.len(), 2, "{dataplane}: both answered: {counts:?}");
}

fn node_port_from_outside(dataplane: &str) {
    let (topo, scratch) = setup(&format!("fbnp-{dataplane}"), 2);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    let yaml = service_yaml("web", VIP, &[tcp("http", 80, 8080)], &endpoints).replacen(
        "spec:\n  clusterIP",
        "spec:\n  type: NodePort\n  clusterIP",
        1,
    );
    let yaml = yaml.replacen(
        "targetPort: 8080",
        "targetPort: 8080\n      nodePort: 30080",
        1,
    );
    scratch.write_manifest("web.yaml", &yaml);
    let sluice = start(&topo, &scratch, dataplane);
    let dest = sock(NODE_IP, 30080);
    wait_until(&sluice, "the NodePort answering", || {
        topo.client().tcp_request(dest, TIMEOUT).is_ok()
    });
    let replies: Vec<_> = topo
        .client()
        .tcp_requests(dest, 100, TIMEOUT)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every connection to the NodePort succeeds");
    let counts = tally(replies.iter().map(|r| r.server()));
    assert_eq!(counts.len(), 2, "{dataplane}: both answered: {counts:?}");
    for r in &replies {
        assert_eq!(r.peer, dest);
        // externalTrafficPolicy: Cluster masquerades to the node's address on the backend's
        // link, so replies come back through the node.
        let seen = r.seen_client().unwrap().ip();
        assert_ne!(seen, topo.client().ip(), "{dataplane}: masqueraded");
        assert!(
            matches!(seen, std::net::IpAddr::V4(a) if a.octets()[3] == 1),
            "{dataplane}: a node address, not {seen}"
        );
    }
}

fn no_endpoints_refused(dataplane: &str) {
    let (topo, scratch) = setup(&format!("fbrej-{dataplane}"), 1);
    scratch.write_manifest(
        "empty.yaml",
        &service_yaml(
            "empty",
            VIP,
            &[tcp("http", 80, 8080), udp("dns", 53, 5353)],
            &[],
        ),
    );
    // A real node has a default route. The netfilter dataplanes refuse in the filter hooks
    // (input, forward, output) as kube-proxy does, which only see packets the node could
    // route; without a route the kernel answers "network unreachable" first.
    topo.node().add_route("default", "10.0.1.2").unwrap();
    // REJECT's ICMP errors are rate-limited per destination by the kernel (icmp_ratelimit);
    // the probes that wait for readiness can use up the budget and the one UDP check below
    // would go unanswered. (The eBPF datapath writes its own replies and is not limited; TCP
    // gets a reset, which is not limited either.)
    topo.node().sysctl("net.ipv4.icmp_ratelimit", "0").unwrap();
    let sluice = start(&topo, &scratch, dataplane);
    // Before Sluice serves, the VIP is routed back out: no answer, not refused.
    wait_until(&sluice, "the empty Service refusing", || {
        tcp_connect(topo.client(), sock(VIP, 80), TIMEOUT).0 == Some(ErrorKind::ConnectionRefused)
    });
    let (error, took) = tcp_connect(topo.client(), sock(VIP, 80), TIMEOUT);
    assert_eq!(error, Some(ErrorKind::ConnectionRefused), "{dataplane}");
    assert!(
        took < Duration::from_secs(1),
        "{dataplane}: refused after {took:?}"
    );
    assert_eq!(
        udp_exchange(topo.client(), sock(VIP, 53), TIMEOUT),
        Err(ErrorKind::ConnectionRefused),
        "{dataplane}: an ICMP port unreachable"
    );
}

fn client_ip_affinity(dataplane: &str) {
    let (topo, scratch) = setup(&format!("fbaff-{dataplane}"), 3);
    let _servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let endpoints: Vec<_> = topo.backends().iter().map(v4).collect();
    let yaml = service_yaml("web", VIP, &[tcp("http", 80, 8080)], &endpoints).replacen(
        "spec:\n",
        "spec:\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}\n",
        1,
    );
    scratch.write_manifest("web.yaml", &yaml);
    let sluice = start(&topo, &scratch, dataplane);
    wait_until(&sluice, "the ClusterIP answering", || {
        topo.client().tcp_request(sock(VIP, 80), TIMEOUT).is_ok()
    });
    let counts = tally(
        servers_answering(topo.client(), sock(VIP, 80), 60)
            .expect("every request answered")
            .iter()
            .map(String::as_str),
    );
    assert_eq!(
        counts.len(),
        1,
        "{dataplane}: one client, one backend: {counts:?}"
    );
}

fn removed_backend_gets_no_new_connections(dataplane: &str) {
    let (topo, scratch) = setup(&format!("fbrm-{dataplane}"), 3);
    let servers: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080).unwrap())
        .collect();
    let ips: Vec<_> = topo.backends().iter().map(v4).collect();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &ips),
    );
    let sluice = start(&topo, &scratch, dataplane);
    wait_until(&sluice, "all three backends answering", || {
        servers_answering(topo.client(), sock(VIP, 80), 30)
            .is_some_and(|s| tally(s.iter().map(String::as_str)).len() == 3)
    });
    scratch.write_manifest(
        "web.yaml",
        &service_yaml("web", VIP, &[tcp("http", 80, 8080)], &ips[1..]),
    );
    wait_until(&sluice, "backend0 leaving", || {
        servers_answering(topo.client(), sock(VIP, 80), 30)
            .is_some_and(|s| !s.iter().any(|b| b == "backend0"))
    });
    let served_before = servers[0].connections();
    let after = tally(
        servers_answering(topo.client(), sock(VIP, 80), 100)
            .expect("every request answered")
            .iter()
            .map(String::as_str),
    );
    assert_eq!(after.len(), 2, "{dataplane}: {after:?}");
    assert_eq!(
        servers[0].connections(),
        served_before,
        "{dataplane}: the removed backend got no new connection"
    );
}

macro_rules! over_dataplanes {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[test]
                fn ebpf() {
                    super::$scenario("ebpf");
                }
                #[test]
                fn nftables() {
                    super::$scenario("nftables");
                }
                #[test]
                fn iptables() {
                    super::$scenario("iptables");
                }
            }
        )*
    };
}

over_dataplanes!(
    tcp_spread,
    udp_spread,
    node_port_from_outside,
    no_endpoints_refused,
    removed_backend_gets_no_new_connections,
);

mod client_ip_affinity {
    #[test]
    fn ebpf() {
        super::client_ip_affinity("ebpf");
    }
    #[test]
    fn nftables() {
        super::client_ip_affinity("nftables");
    }
    #[test]
    fn iptables() {
        super::client_ip_affinity("iptables");
    }
}

// ------------------------------------------------------------------------------------------
// Probe, switching, cleanup
// ------------------------------------------------------------------------------------------

fn metrics(node: &Host) -> String {
    node.run(|| {
        let mut s = TcpStream::connect_timeout(&"127.0.0.1:10249".parse().unwrap(), TIMEOUT)?;
        s.set_read_timeout(Some(TIMEOUT))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        std::io::Result::Ok(text)
    })
    .unwrap_or_default()
}

#[test]
fn auto_falls_back_when_a_feature_is_missing_and_says_why() {
    let (topo, scratch) = setup("fbprobe", 1);
    let _server = topo.backends()[0].tcp_server(8080).unwrap();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml(
            "web",
            VIP,
            &[tcp("http", 80, 8080)],
            &[v4(&topo.backends()[0])],
        ),
    );
    let sluice = Sluice::start_with(
        &topo,
        &scratch,
        &["--dataplane", "auto", "--pretend-missing", "attach:tcx"],
    );
    wait_until(&sluice, "the ClusterIP answering", || {
        topo.client().tcp_request(sock(VIP, 80), TIMEOUT).is_ok()
    });
    let log = plain_log(&sluice);
    let chosen: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dataplane chosen"))
        .collect();
    assert_eq!(chosen.len(), 1, "logged once: {log}");
    assert!(chosen[0].contains("dataplane=nftables"), "{}", chosen[0]);
    assert!(
        chosen[0].contains("attach:tcx"),
        "the reason names the feature: {}",
        chosen[0]
    );
    assert!(
        log.lines()
            .any(|l| l.contains("BPF feature missing") && l.contains("attach:tcx")),
        "{log}"
    );
    let text = metrics(topo.node());
    assert!(
        text.contains("sluice_dataplane_info{mode=\"nftables\"} 1"),
        "{text}"
    );
    assert!(!sluice.pin.exists(), "no BPF state was made");
    assert!(
        has_nft_table(topo.node(), "sluice"),
        "Sluice's nft table exists"
    );
}

fn has_nft_table(node: &Host, name: &str) -> bool {
    node.command("nft")
        .args(["list", "table", "ip", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// What each dataplane leaves on the node: (TCX programs attached, pin dir exists,
/// `table ip sluice` exists, SLUICE- iptables chains).
fn leftovers(topo: &Topology, pin: &std::path::Path) -> (usize, bool, bool, usize) {
    let programs: usize = topo
        .node_interfaces()
        .into_iter()
        .map(|iface| {
            topo.node().run(move || {
                aya::programs::SchedClassifier::query_tcx(
                    &iface,
                    aya::programs::TcAttachType::Ingress,
                )
                .map(|(_, p)| p.len())
                .unwrap_or(0)
            })
        })
        .sum();
    let nft = has_nft_table(topo.node(), "sluice");
    let mut chains = 0;
    for table in ["nat", "filter", "mangle"] {
        let save = topo.node().exec("iptables-save", ["-t", table]).unwrap();
        chains += String::from_utf8_lossy(&save.stdout)
            .lines()
            .filter(|l| l.starts_with(":SLUICE-"))
            .count();
    }
    (programs, pin.exists(), nft, chains)
}

#[test]
fn switching_dataplanes_on_a_live_node_keeps_serving_and_leaves_nothing_behind() {
    let (topo, scratch) = setup("fbswitch", 2);
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
    let mut sluice = start(&topo, &scratch, "ebpf");
    wait_until(&sluice, "eBPF serving", || {
        topo.client().tcp_request(sock(VIP, 80), TIMEOUT).is_ok()
    });

    // A client looping for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let looper = {
        let (client, stop, ok, failed) = (
            topo.client().clone(),
            stop.clone(),
            ok.clone(),
            failed.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match client.tcp_request(sock(VIP, 80), Duration::from_millis(500)) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let pin = sluice.pin.clone();
    let expected = |dataplane: &str| match dataplane {
        "ebpf" => (topo.node_interfaces().len(), true, false, 0),
        "nftables" => (0, false, true, 0),
        _ => (0, false, false, 1),
    };
    for dataplane in ["iptables", "nftables", "ebpf"] {
        let ok_before = ok.load(Ordering::Relaxed);
        sluice.switch(&["--dataplane", dataplane]);
        wait_until(
            &sluice,
            &format!("{dataplane} serving the looping client"),
            || ok.load(Ordering::Relaxed) > ok_before + 20,
        );
        wait_until(&sluice, &format!("only {dataplane}'s state left"), || {
            let (programs, pinned, nft, chains) = leftovers(&topo, &pin);
            let (want_programs, want_pin, want_nft, want_chains) = expected(dataplane);
            programs == want_programs
                && pinned == want_pin
                && nft == want_nft
                && (chains > 0) == (want_chains > 0)
        });
        eprintln!(
            "after switching to {dataplane}: {} ok, {} failed so far; left: {:?}",
            ok.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
            leftovers(&topo, &pin)
        );
    }
    stop.store(true, Ordering::Relaxed);
    looper.join().unwrap();
    // The jumps from the built-in chains went with the chains.
    let save = topo
        .node()
        .exec("iptables-save", Vec::<&str>::new())
        .unwrap();
    let save = String::from_utf8_lossy(&save.stdout);
    assert!(
        !save.contains("SLUICE"),
        "iptables after switching back:\n{save}"
    );
}

#[test]
fn cleanup_removes_every_dataplane_and_kube_proxy_leftovers() {
    let (topo, scratch) = setup("fbclean", 1);
    let _server = topo.backends()[0].tcp_server(8080).unwrap();
    scratch.write_manifest(
        "web.yaml",
        &service_yaml(
            "web",
            VIP,
            &[tcp("http", 80, 8080)],
            &[v4(&topo.backends()[0])],
        ),
    );
    // kube-proxy's leftovers, shaped as it leaves them: a KUBE-SERVICES chain jumped to from
    // PREROUTING, a service chain, and its nft table.
    let node = topo.node();
    let kube = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-ABCDEF - [0:0]\n\
                -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                -A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-ABCDEF\nCOMMIT\n";
    let mut restore = node.command("iptables-restore");
    restore
        .args(["-w", "--noflush"])
        .stdin(std::process::Stdio::piped());
    let mut child = restore.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(kube.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        node.exec("nft", ["add", "table", "ip", "kube-proxy"])
            .unwrap()
            .status
            .success()
    );

    let mut sluice = start(&topo, &scratch, "iptables");
    wait_until(&sluice, "iptables serving", || {
        topo.client().tcp_request(sock(VIP, 80), TIMEOUT).is_ok()
    });
    // Starting removed kube-proxy's leftovers.
    let save = String::from_utf8_lossy(
        &node
            .exec("iptables-save", Vec::<&str>::new())
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !save.contains("KUBE-"),
        "kube-proxy's chains removed at start:\n{save}"
    );
    assert!(save.contains("SLUICE-SERVICES"));
    assert!(
        !has_nft_table(node, "kube-proxy"),
        "kube-proxy's table removed at start"
    );

    sluice.kill();
    let out = node
        .command(SLUICE)
        .args(["cleanup", "--pin-path"])
        .arg(&sluice.pin)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(leftovers(&topo, &sluice.pin), (0, false, false, 0));
    let save = String::from_utf8_lossy(
        &node
            .exec("iptables-save", Vec::<&str>::new())
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!save.contains("SLUICE"), "{save}");
    let after = topo
        .client()
        .tcp_request(sock(VIP, 80), Duration::from_millis(500));
    assert!(after.is_err(), "the VIP is no longer translated: {after:?}");
}
