//! End-to-end checks of the test bed itself, with no load balancer involved.
//! They need root, and fail (never skip) without it.

use sluice_testbed::{Lab, Topology, require_root, wait_for_tcp_port};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn live_namespaces() -> HashSet<String> {
    // Not checking the exit status: `ip netns list` complains about namespaces
    // that other tests delete while it runs. Callers first see their own
    // namespaces listed, which shows the listing works.
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn star_routes_tcp_to_backend_through_node() {
    require_root();
    let topo = Topology::star("star_tcp", 2).unwrap();
    assert_eq!(topo.node_interfaces(), ["eclient", "eb0", "eb1"]);
    assert_eq!(topo.client().ip().to_string(), "10.0.1.2");
    assert_eq!(topo.backends()[1].ip().to_string(), "10.0.11.2");
    assert!(topo.client().netns_path().exists());

    let server = topo.backends()[0].tcp_server(8080).unwrap();
    let dest = addr("10.0.10.2:8080");
    let reply = topo.client().tcp_request(dest, TIMEOUT).unwrap();
    assert_eq!(reply.server(), "backend0");
    assert_eq!(reply.seen_client(), Some(reply.local));
    assert_eq!(reply.local.ip().to_string(), "10.0.1.2");
    assert_eq!(reply.peer, dest);
    assert!(
        reply.body.starts_with("backend0 10.0.1.2:"),
        "{:?}",
        reply.body
    );
    assert_eq!(server.connections(), 1);
    assert_eq!(server.peers(), [reply.local]);
}

#[test]
fn star_routes_udp_and_reply_comes_from_backend() {
    require_root();
    let topo = Topology::star("star_udp", 2).unwrap();
    let server = topo.backends()[1].udp_server(5353).unwrap();
    let reply = topo
        .client()
        .udp_request(addr("10.0.11.2:5353"), TIMEOUT)
        .unwrap();
    assert_eq!(reply.server(), "backend1");
    assert_eq!(reply.peer, addr("10.0.11.2:5353"));
    assert_eq!(reply.local.ip().to_string(), "10.0.1.2");
    assert_eq!(reply.seen_client(), Some(reply.local));

    let replies = topo
        .client()
        .udp_requests(addr("10.0.11.2:5353"), 10, TIMEOUT);
    assert!(
        replies
            .iter()
            .all(|r| r.as_ref().unwrap().server() == "backend1")
    );
    assert_eq!(server.datagrams(), 11);
    // A nothing-listening port gets no reply, and says so instead of hanging.
    let err = topo
        .client()
        .udp_request(addr("10.0.10.2:5353"), Duration::from_millis(200))
        .unwrap_err();
    assert!(format!("{err:#}").contains("no reply"), "{err:#}");
}

#[test]
fn tcp_requests_makes_200_connections() {
    require_root();
    let topo = Topology::star("tcp_200", 1).unwrap();
    let server = topo.backends()[0].tcp_server(8080).unwrap();
    let replies = topo
        .client()
        .tcp_requests(addr("10.0.10.2:8080"), 200, TIMEOUT);
    let mut ports = HashSet::new();
    for reply in replies {
        let reply = reply.unwrap();
        assert_eq!(reply.server(), "backend0");
        ports.insert(reply.local.port());
    }
    assert_eq!(ports.len(), 200, "each request is a new connection");
    assert_eq!(server.connections(), 200);
}

#[test]
fn dual_stack_link_and_server() {
    require_root();
    let lab = Lab::new("dual_stack");
    let a = lab.add_host("a").unwrap();
    let b = lab.add_host("b").unwrap();
    let (a_if, b_if) = lab.link(&a, "fd00::1/64", &b, "fd00::2/64").unwrap();
    assert_eq!((a_if.as_str(), b_if.as_str()), ("eb", "ea"));
    lab.link(&a, "192.168.5.1/24", &b, "192.168.5.2/24")
        .unwrap();
    assert_eq!(a.interfaces(), ["eb", "eb1"]);
    assert_eq!(b.ipv6().unwrap().to_string(), "fd00::2");
    assert_eq!(b.ip().to_string(), "192.168.5.2", "IPv4 is primary");

    let _server = b.tcp_server_on(addr("[::]:9000")).unwrap();
    wait_for_tcp_port(&a, addr("[fd00::2]:9000"), TIMEOUT).unwrap();
    let v6 = a.tcp_request(addr("[fd00::2]:9000"), TIMEOUT).unwrap();
    assert_eq!(v6.seen_client(), Some(v6.local));
    assert_eq!(v6.local.ip().to_string(), "fd00::1");
    let v4 = a.tcp_request(addr("192.168.5.2:9000"), TIMEOUT).unwrap();
    assert_eq!(v4.seen_client().unwrap().ip().to_string(), "192.168.5.1");

    let out = a.exec("ip", ["-6", "addr", "show", "dev", "eb"]).unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tentative"));
    let err = a.exec("ip", ["link", "show", "nosuchdev"]).unwrap_err();
    assert!(format!("{err:#}").contains("nosuchdev"), "{err:#}");
}

#[test]
fn namespace_entry_and_link_settings() {
    require_root();
    let topo = Topology::star("settings", 1).unwrap();
    let node = topo.node();
    let out = node.exec("ethtool", ["-k", "eb0"]).unwrap();
    let features = String::from_utf8_lossy(&out.stdout);
    assert!(features.contains("tx-checksumming: off"), "{features}");
    assert!(features.contains("rx-checksumming: off"), "{features}");
    let out = node
        .exec("sysctl", ["-n", "net.ipv4.conf.eb0.rp_filter"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    let fwd = node.run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap());
    assert_eq!(fwd.trim(), "1");
    let in_caller = std::fs::read_to_string("/proc/sys/net/ipv4/conf/eclient/rp_filter");
    assert!(in_caller.is_err(), "run() must not move the calling thread");

    // Children change network namespace only: same mount namespace means they
    // see the real /sys and /sys/fs/bpf, unlike under `ip netns exec`.
    let ns = |kind: &str| std::fs::read_link(format!("/proc/self/ns/{kind}")).unwrap();
    let child_ns = |kind: &str| {
        let out = node
            .exec("readlink", [format!("/proc/self/ns/{kind}")])
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(child_ns("mnt"), ns("mnt").to_string_lossy());
    assert_ne!(child_ns("net"), ns("net").to_string_lossy());
}

#[test]
fn dropping_lab_deletes_namespaces_even_on_panic() {
    require_root();
    let topo = Topology::star("drop", 2).unwrap();
    let names = topo.lab().namespaces();
    assert_eq!(names.len(), 4);
    let server = topo.backends()[0].tcp_server(8080).unwrap();
    assert!(names.iter().all(|n| live_namespaces().contains(n)));
    drop(topo);
    let live = live_namespaces();
    assert!(names.iter().all(|n| !live.contains(n)), "left: {live:?}");
    // The Lab already stopped the server; dropping the handle must not hang.
    drop(server);

    let made = Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let topo = Topology::star("drop_panic", 2).unwrap();
        let _server = topo.backends()[1].udp_server(53).unwrap();
        *made.lock().unwrap() = topo.lab().namespaces();
        panic!("test failure inside the lab");
    });
    assert!(result.is_err());
    let made = made.into_inner().unwrap();
    assert_eq!(made.len(), 4);
    let live = live_namespaces();
    assert!(made.iter().all(|n| !live.contains(n)), "left: {live:?}");
    assert!(
        made.iter()
            .all(|n| !Path::new("/var/run/netns").join(n).exists())
    );
}

#[test]
fn new_lab_sweeps_namespaces_of_dead_processes() {
    require_root();
    let mut child = Command::new("true").spawn().unwrap();
    let dead_pid = child.id();
    child.wait().unwrap();
    let stale = format!("sl-{dead_pid}-0-stale");
    let ours = format!("sl-{}-999999-live", std::process::id());
    for name in [&stale, &ours] {
        assert!(
            Command::new("ip")
                .args(["netns", "add", name])
                .status()
                .unwrap()
                .success()
        );
    }
    let _lab = Lab::new("sweep");
    let live = live_namespaces();
    assert!(!live.contains(&stale), "stale namespace survived the sweep");
    assert!(live.contains(&ours), "a live process's namespace was swept");
    Command::new("ip")
        .args(["netns", "del", &ours])
        .status()
        .unwrap();
}

#[test]
fn concurrent_labs_do_not_interfere() {
    require_root();
    let results: Vec<_> = std::thread::scope(|s| {
        let labs: Vec<_> = (0..2)
            .map(|t| {
                s.spawn(move || {
                    let topo = Topology::star(&format!("concurrent{t}"), 2).unwrap();
                    let server = topo.backends()[0].tcp_server(8080).unwrap();
                    let replies = topo
                        .client()
                        .tcp_requests(addr("10.0.10.2:8080"), 50, TIMEOUT);
                    for reply in replies {
                        assert_eq!(reply.unwrap().server(), "backend0");
                    }
                    (server.connections(), topo.lab().namespaces())
                })
            })
            .collect();
        labs.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert_eq!(
        results[0].0, 50,
        "each lab's server saw only its own client"
    );
    assert_eq!(results[1].0, 50);
    let (a, b): (HashSet<_>, HashSet<_>) =
        (results[0].1.iter().collect(), results[1].1.iter().collect());
    assert!(a.is_disjoint(&b));
}
