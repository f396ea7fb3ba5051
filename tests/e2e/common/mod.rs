//! Harness shared by the end-to-end tests: runs the real `sluice` binary in a test bed's node
//! namespace and observes the real pinned maps.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Once,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use proxy_common::{Backend, ServiceKey};
use sluice::dataplane::maps::PinnedMaps;
use sluice_testbed::{Host, Topology};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A star test bed (client, node, `backends` backends) and a scratch folder for one test.
pub fn setup(test: &str, backends: usize) -> (Topology, Scratch) {
    sluice_testbed::require_root();
    (
        Topology::star(test, backends).expect("building the test bed"),
        Scratch::new(test),
    )
}

/// Every backend of `topo` at `port`.
pub fn backend_addrs(topo: &Topology, port: u16) -> Vec<SocketAddrV4> {
    topo.backends()
        .iter()
        .map(|b| SocketAddrV4::new(v4(b), port))
        .collect()
}

/// Connects from `host`, returning the error kind (or `None` on success) and how long it took.
pub fn tcp_connect(
    host: &Host,
    dest: SocketAddr,
    timeout: Duration,
) -> (Option<std::io::ErrorKind>, Duration) {
    host.run(|| {
        let started = Instant::now();
        let result = std::net::TcpStream::connect_timeout(&dest, timeout);
        (result.err().map(|e| e.kind()), started.elapsed())
    })
}

/// Sends one datagram from a socket connected to `dest` and waits for an answer; the error
/// kind when there is none. A connected UDP socket reports an ICMP port unreachable that
/// quotes its own datagram as ECONNREFUSED, and ignores one quoting anything else.
pub fn udp_exchange(
    host: &Host,
    dest: SocketAddr,
    timeout: Duration,
) -> Result<String, std::io::ErrorKind> {
    host.run(|| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.kind())?;
        socket.connect(dest).map_err(|e| e.kind())?;
        socket.set_read_timeout(Some(timeout)).unwrap();
        socket.send(b"hello\n").map_err(|e| e.kind())?;
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).map_err(|e| e.kind())?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    })
}

static BPFFS: Once = Once::new();
static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Mounts bpffs once per test process, before tests start Sluice in parallel (two racing
/// mounts would stack and hide each other's pins).
pub fn ensure_bpffs() {
    BPFFS.call_once(|| {
        let mounted = fs::read_to_string("/proc/mounts")
            .unwrap()
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "));
        if !mounted {
            let ok = Command::new("mount")
                .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
                .status()
                .unwrap()
                .success();
            assert!(ok, "mounting bpffs at /sys/fs/bpf failed");
        }
    });
}

/// A unique scratch directory and pin path for one test.
pub struct Scratch {
    pub dir: PathBuf,
    pub pin: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{test}-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("sluice-e2e-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("manifests")).unwrap();
        Self {
            dir,
            pin: PathBuf::from(format!("/sys/fs/bpf/sluice-e2e-{id}")),
        }
    }

    pub fn manifests(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// Writes (or replaces, atomically) one manifest file.
    pub fn write_manifest(&self, file: &str, text: &str) {
        let tmp = self.dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, text).unwrap();
        fs::rename(&tmp, self.manifests().join(file)).unwrap();
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A running `sluice run`, killed and cleaned up on drop.
pub struct Sluice {
    child: Option<Child>,
    pub pin: PathBuf,
    log: PathBuf,
    node: Host,
    interfaces: Vec<String>,
    manifests: PathBuf,
    extra_args: Vec<String>,
}

impl Sluice {
    pub fn start(topo: &Topology, scratch: &Scratch) -> Self {
        Self::start_with(topo, scratch, &[])
    }

    /// Starts with extra `sluice run` arguments.
    pub fn start_with(topo: &Topology, scratch: &Scratch, extra_args: &[&str]) -> Self {
        ensure_bpffs();
        let mut s = Self {
            child: None,
            pin: scratch.pin.clone(),
            log: scratch.dir.join("sluice.log"),
            node: topo.node().clone(),
            interfaces: topo.node_interfaces(),
            manifests: scratch.manifests(),
            extra_args: extra_args.iter().map(ToString::to_string).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = self.node.command(SLUICE);
        cmd.arg("run")
            .arg("--manifests")
            .arg(&self.manifests)
            .arg("--pin-path")
            .arg(&self.pin)
            .args(["--poll-interval", "100ms", "--min-sync-period", "0s"]);
        for i in &self.interfaces {
            cmd.args(["--interface", i]);
        }
        cmd.args(&self.extra_args);
        cmd.stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().expect("starting sluice"));
    }

    /// Kills the process the hard way (no shutdown path runs), leaving the datapath in place.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Kills the process and starts it again with other extra arguments (another
    /// dataplane, say), on the same pin path and manifests.
    pub fn switch(&mut self, extra_args: &[&str]) {
        self.kill();
        self.extra_args = extra_args.iter().map(ToString::to_string).collect();
        self.spawn();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn maps(&self) -> PinnedMaps {
        PinnedMaps::open(&self.pin).expect("opening Sluice's pinned maps")
    }

    /// Waits until the frontend `vip:port/proto` serves exactly `backends` (any order).
    pub fn wait_for_backends(&self, vip: SocketAddrV4, proto: u8, backends: &[SocketAddrV4]) {
        let key = service_key(vip, proto);
        let mut want: Vec<Backend> = backends.iter().map(|b| backend(*b, proto)).collect();
        want.sort();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(mut live) = PinnedMaps::open(&self.pin)
                .ok()
                .and_then(|m| m.snapshot().live_backends(&key))
            {
                live.sort();
                if live == want {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "frontend {vip}/{proto} never served {backends:?}; sluice log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sluice cleanup` for this instance's pin path.
    pub fn cleanup(&self) -> std::process::Output {
        Command::new(SLUICE)
            .args(["cleanup", "--pin-path"])
            .arg(&self.pin)
            .output()
            .unwrap()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill();
        let _ = self.cleanup();
    }
}

pub fn service_key(vip: SocketAddrV4, proto: u8) -> ServiceKey {
    ServiceKey::new(
        u32::from_ne_bytes(vip.ip().octets()),
        vip.port().to_be(),
        proto,
    )
}

pub fn backend(addr: SocketAddrV4, proto: u8) -> Backend {
    Backend {
        addr: u32::from_ne_bytes(addr.ip().octets()),
        port: addr.port().to_be(),
        proto,
        flags: 0,
    }
}

/// One port of a test Service: (name, port, protocol, target port).
pub struct Port<'a> {
    pub name: &'a str,
    pub port: u16,
    pub protocol: &'a str,
    pub target: u16,
}

pub fn tcp(name: &str, port: u16, target: u16) -> Port<'_> {
    Port {
        name,
        port,
        protocol: "TCP",
        target,
    }
}

pub fn udp(name: &str, port: u16, target: u16) -> Port<'_> {
    Port {
        name,
        port,
        protocol: "UDP",
        target,
    }
}

/// A Service and its EndpointSlice as YAML.
pub fn service_yaml(
    name: &str,
    vip: Ipv4Addr,
    ports: &[Port<'_>],
    endpoints: &[Ipv4Addr],
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  clusterIP: {vip}\n  ports:\n"
    );
    for p in ports {
        writeln!(
            y,
            "    - name: {}\n      port: {}\n      protocol: {}\n      targetPort: {}",
            p.name, p.port, p.protocol, p.target
        )
        .unwrap();
    }
    write!(
        y,
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\nports:\n"
    )
    .unwrap();
    for p in ports {
        writeln!(
            y,
            "  - name: {}\n    port: {}\n    protocol: {}",
            p.name, p.target, p.protocol
        )
        .unwrap();
    }
    y.push_str("endpoints:\n");
    for ep in endpoints {
        writeln!(
            y,
            "  - addresses: [\"{ep}\"]\n    conditions: {{ready: true}}"
        )
        .unwrap();
    }
    if endpoints.is_empty() {
        y.push_str("  []\n");
    }
    y
}

pub fn v4(host: &Host) -> Ipv4Addr {
    host.ipv4().expect("host has an IPv4 address")
}

pub fn sock(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(ip, port))
}

/// Counts replies per answering server role.
pub fn tally<'a>(
    servers: impl IntoIterator<Item = &'a str>,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for s in servers {
        *counts.entry(s.to_string()).or_insert(0) += 1;
    }
    counts
}
