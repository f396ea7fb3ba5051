//! `cargo xtask lab`: the demo. A client, a node running Sluice and three backends in network
//! namespaces; requests to the example ClusterIP and how they spread.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use sluice_testbed::Topology;

const VIP: &str = "10.96.0.10";
const PIN_PATH: &str = "/sys/fs/bpf/sluice-lab";

pub fn run(root: &Path, requests: usize) -> anyhow::Result<()> {
    sluice_testbed::require_root();
    let manifests = root.join("examples/manifests");
    let sluice = root.join("target/debug/sluice");
    println!("lab: building a client, a node and 3 backends in network namespaces");
    let topo = Topology::star("lab", 3)?;
    let _tcp: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.tcp_server(8080))
        .collect::<Result<_, _>>()?;
    let _udp: Vec<_> = topo
        .backends()
        .iter()
        .map(|b| b.udp_server(5353))
        .collect::<Result<_, _>>()?;

    let mut cmd = topo.node().command(&sluice);
    cmd.arg("run")
        .arg("--manifests")
        .arg(&manifests)
        .args(["--pin-path", PIN_PATH]);
    for iface in topo.node_interfaces() {
        cmd.args(["--interface", &iface]);
    }
    let log = std::fs::File::create(std::env::temp_dir().join("sluice-lab.log"))?;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting sluice")?;
    println!(
        "lab: sluice runs in the node namespace on {} (log: {})",
        topo.node_interfaces().join(", "),
        std::env::temp_dir().join("sluice-lab.log").display()
    );
    let result = demo(&topo, requests);
    let _ = child.kill();
    let _ = child.wait();
    let cleanup = std::process::Command::new(&sluice)
        .args(["cleanup", "--pin-path", PIN_PATH])
        .output()?;
    println!("lab: {}", String::from_utf8_lossy(&cleanup.stdout).trim());
    result
}

fn demo(topo: &Topology, requests: usize) -> anyhow::Result<()> {
    let vip: SocketAddr = format!("{VIP}:80").parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while topo
        .client()
        .tcp_request(vip, Duration::from_millis(300))
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("the ClusterIP {vip} never answered; see the sluice log");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("\nlab: {requests} new TCP connections from the client to ClusterIP {vip}");
    let started = Instant::now();
    let replies = topo
        .client()
        .tcp_requests(vip, requests, Duration::from_secs(3));
    let elapsed = started.elapsed();
    let mut spread: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = 0;
    for reply in &replies {
        match reply {
            Ok(r) => {
                *spread
                    .entry(format!("{} ({})", r.server(), r.peer))
                    .or_default() += 1
            }
            Err(_) => failed += 1,
        }
    }
    println!(
        "  {:<32} {:>6}  share",
        "backend (peer the client saw)", "conns"
    );
    for (backend, n) in &spread {
        let bar = "#".repeat(n * 40 / requests.max(1));
        println!("  {backend:<32} {n:>6}  {bar}");
    }
    println!(
        "  failed: {failed}; {:.0} connections/s",
        requests as f64 / elapsed.as_secs_f64()
    );

    let udp: SocketAddr = format!("{VIP}:53").parse()?;
    let reply = topo.client().udp_request(udp, Duration::from_secs(2))?;
    println!(
        "\nlab: UDP to {udp}: answered by {}, reply source {}",
        reply.server(),
        reply.peer
    );
    if failed > 0 {
        bail!("{failed} connections failed");
    }
    Ok(())
}
