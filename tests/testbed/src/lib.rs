//! Network-namespace test bed: builds topologies out of netns + veth pairs, runs
//! real TCP/UDP servers and clients inside them, and tears everything down even
//! when a test panics.
//!
//! Namespaces are entered with `setns(2)` only, never with `ip netns exec`: the
//! latter remounts /sys in the child, which hides /sys/fs/bpf from anything it
//! runs, and pinned BPF objects are exactly what Sluice's tests look at.

mod client;
mod server;
mod topology;

pub use client::{Reply, tcp_once, wait_for_tcp_port};
pub use server::{TcpServer, UdpServer};
pub use topology::Topology;

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use std::ffi::OsStr;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// Every namespace this crate creates is named `sl-{pid}-{lab}-{role}`; the
/// embedded pid is what lets a later run recognise leftovers of a crashed one.
const PREFIX: &str = "sl-";
const NETNS_DIR: &str = "/var/run/netns";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Panics unless running as root: the tests would otherwise fail in confusing
/// ways, or worse, be skipped and look green.
pub fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "end-to-end tests need root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF): \
             run as root or via `cargo xtask test`"
        );
    }
}

/// A set of namespaces owned by one test. Dropping it stops the servers started
/// in its hosts and deletes every namespace it created.
pub struct Lab {
    test_name: String,
    prefix: String,
    shared: Arc<LabShared>,
}

#[derive(Default)]
struct LabShared {
    namespaces: Mutex<Vec<String>>,
    servers: Mutex<Vec<Weak<server::ServerCore>>>,
}

impl Lab {
    /// Panics if not root. Also deletes namespaces left behind by earlier runs
    /// whose process has died.
    pub fn new(test_name: &str) -> Lab {
        require_root();
        sweep_stale_namespaces();
        let id = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        Lab {
            test_name: test_name.to_string(),
            prefix: format!("{PREFIX}{}-{id}-", std::process::id()),
            shared: Arc::default(),
        }
    }

    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// Names of the namespaces this lab created (and will delete).
    pub fn namespaces(&self) -> Vec<String> {
        lock(&self.shared.namespaces).clone()
    }

    /// Creates a namespace for `role` (unique within the lab) with `lo` up.
    pub fn add_host(&self, role: &str) -> Result<Host> {
        let netns = format!("{}{role}", self.prefix);
        run_checked(Command::new("ip").args(["netns", "add", &netns]))
            .with_context(|| format!("{}: creating host {role}", self.test_name))?;
        lock(&self.shared.namespaces).push(netns.clone());
        let host = Host {
            inner: Arc::new(HostInner {
                role: role.to_string(),
                path: Path::new(NETNS_DIR).join(&netns),
                netns,
                state: Mutex::default(),
                lab: self.shared.clone(),
            }),
        };
        host.exec("ip", ["link", "set", "lo", "up"])?;
        // Without this, IPv6 addresses (link-local ones included, which the
        // nodad flag cannot reach) stay "tentative" and unusable for a while.
        host.exec(
            "sysctl",
            [
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        Ok(host)
    }

    /// Links `a` and `b` with a veth pair named `e{b.role}` in `a` and
    /// `e{a.role}` in `b`. Returns the interface names (in a, in b).
    pub fn link(&self, a: &Host, a_cidr: &str, b: &Host, b_cidr: &str) -> Result<(String, String)> {
        let a_if = a.free_ifname(b.role());
        let b_if = b.free_ifname(a.role());
        self.link_named(a, &a_if, a_cidr, b, &b_if, b_cidr)?;
        Ok((a_if, b_if))
    }

    /// Like [`Lab::link`] with explicit interface names (at most 15 bytes).
    /// Addresses may be IPv4 or IPv6; an empty CIDR leaves that end unaddressed.
    pub fn link_named(
        &self,
        a: &Host,
        a_if: &str,
        a_cidr: &str,
        b: &Host,
        b_if: &str,
        b_cidr: &str,
    ) -> Result<()> {
        // Creating each end directly in its namespace avoids name clashes in
        // the root namespace between parallel tests.
        run_checked(Command::new("ip").args([
            "link",
            "add",
            a_if,
            "netns",
            a.netns(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.netns(),
        ]))?;
        for (host, ifname, cidr) in [(a, a_if, a_cidr), (b, b_if, b_cidr)] {
            lock(&host.inner.state).interfaces.push(ifname.to_string());
            host.exec("ip", ["link", "set", ifname, "up"])?;
            if !cidr.is_empty() {
                host.add_address(ifname, cidr)?;
            }
            // veth leaves checksums to "hardware" that never computes them, so a
            // NAT bug producing a bad checksum would go unnoticed; with offloads
            // off the receiver verifies every packet.
            host.exec("ethtool", ["-K", ifname, "tx", "off", "rx", "off"])?;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Servers first: their threads hold sockets in the namespaces, which
        // would keep the namespaces alive after `ip netns del`.
        let servers = std::mem::take(&mut *lock(&self.shared.servers));
        for core in servers.iter().filter_map(Weak::upgrade) {
            core.shutdown();
        }
        let namespaces = std::mem::take(&mut *lock(&self.shared.namespaces));
        for netns in namespaces.iter().rev() {
            if let Err(e) = run_checked(Command::new("ip").args(["netns", "del", netns])) {
                eprintln!("sluice-testbed: {}: {e:#}", self.test_name);
            }
        }
    }
}

/// One network namespace. Cheap to clone; all clones refer to the same netns.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

struct HostInner {
    role: String,
    netns: String,
    path: PathBuf,
    state: Mutex<HostState>,
    lab: Arc<LabShared>,
}

#[derive(Default)]
struct HostState {
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    interfaces: Vec<String>,
}

impl Host {
    pub fn role(&self) -> &str {
        &self.inner.role
    }

    /// The name under /var/run/netns.
    pub fn netns(&self) -> &str {
        &self.inner.netns
    }

    pub fn netns_path(&self) -> &Path {
        &self.inner.path
    }

    /// First IPv4 address assigned to this host.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        lock(&self.inner.state).ipv4
    }

    /// First IPv6 address assigned to this host.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        lock(&self.inner.state).ipv6
    }

    /// Primary address: the first IPv4 one, else the first IPv6 one.
    /// Panics if the host has no address yet.
    pub fn ip(&self) -> IpAddr {
        let state = lock(&self.inner.state);
        match (state.ipv4, state.ipv6) {
            (Some(v4), _) => v4.into(),
            (None, Some(v6)) => v6.into(),
            (None, None) => panic!("host {} has no address", self.role()),
        }
    }

    /// Interfaces created by [`Lab::link`] in this host, in creation order.
    pub fn interfaces(&self) -> Vec<String> {
        lock(&self.inner.state).interfaces.clone()
    }

    /// Adds an IPv4 or IPv6 address to an interface. IPv6 addresses skip DAD,
    /// so they are usable at once instead of "tentative" for a second or two.
    pub fn add_address(&self, ifname: &str, cidr: &str) -> Result<()> {
        let ip = parse_cidr(cidr)?;
        let mut args = vec!["addr", "add", cidr, "dev", ifname];
        if ip.is_ipv6() {
            args.push("nodad");
        }
        self.exec("ip", args)?;
        let mut state = lock(&self.inner.state);
        match ip {
            IpAddr::V4(v4) => _ = state.ipv4.get_or_insert(v4),
            IpAddr::V6(v6) => _ = state.ipv6.get_or_insert(v6),
        }
        Ok(())
    }

    /// `ip route add DEST via VIA`; DEST may be `default`. The family follows VIA.
    pub fn add_route(&self, dest_cidr: &str, via: &str) -> Result<()> {
        let via_ip: IpAddr = via
            .parse()
            .with_context(|| format!("bad gateway address {via:?}"))?;
        let family = if via_ip.is_ipv6() { "-6" } else { "-4" };
        self.exec("ip", [family, "route", "add", dest_cidr, "via", via])?;
        Ok(())
    }

    /// Sets a sysctl inside this namespace (net.* keys are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", ["-qw", &format!("{key}={value}")])?;
        Ok(())
    }

    /// A command that runs inside this namespace. Only the network namespace
    /// changes, so the child still sees the real /sys/fs/bpf.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        // Opened before fork: the child may only make async-signal-safe calls.
        match File::open(&self.inner.path) {
            Ok(netns) => {
                // SAFETY: the hook only calls setns(2), which is async-signal-safe,
                // and builds its error from errno without allocating.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                            Ok(())
                        } else {
                            Err(std::io::Error::last_os_error())
                        }
                    });
                }
            }
            Err(e) => {
                // Surface the failure when the command is spawned rather than
                // silently running it in the wrong namespace.
                let errno = e.raw_os_error().unwrap_or(libc::ENOENT);
                // SAFETY: from_raw_os_error neither allocates nor takes locks.
                unsafe {
                    cmd.pre_exec(move || Err(std::io::Error::from_raw_os_error(errno)));
                }
            }
        }
        cmd
    }

    /// Runs a program inside this namespace to completion; fails, with its
    /// stderr, if it exits non-zero.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(program);
        cmd.args(args);
        run_checked(&mut cmd).with_context(|| format!("in netns {}", self.netns()))
    }

    /// Runs `f` on a fresh thread that has entered this namespace; a panic in
    /// `f` propagates to the caller. Panics if the namespace cannot be entered.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let netns = File::open(&self.inner.path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.inner.path.display()));
        let name = self.netns();
        std::thread::scope(|s| {
            let thread = s.spawn(move || {
                // setns on one thread leaves the rest of the process untouched.
                setns(&netns, CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {name}: {e}"));
                f()
            });
            thread
                .join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// An interface name `e{peer}` that is not yet used in this host.
    fn free_ifname(&self, peer: &str) -> String {
        let used = self.interfaces();
        let base: String = format!("e{peer}").chars().take(12).collect();
        (0..)
            .map(|i| {
                if i == 0 {
                    base.clone()
                } else {
                    format!("{base}{i}")
                }
            })
            .find(|name| !used.contains(name))
            .unwrap_or(base)
    }

    fn register_server(&self, core: &Arc<server::ServerCore>) {
        let mut servers = lock(&self.inner.lab.servers);
        servers.retain(|s| s.strong_count() > 0);
        servers.push(Arc::downgrade(core));
    }
}

/// Deletes namespaces from earlier runs whose owning process is gone (killed,
/// aborted, or crashed before its Drop ran). Live processes' labs are left alone.
fn sweep_stale_namespaces() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let pid = nix::unistd::Pid::from_raw(pid);
        // ESRCH is the only proof of death; EPERM means alive under another user.
        if nix::sys::signal::kill(pid, None) == Err(nix::errno::Errno::ESRCH) {
            // Another process may be sweeping the same entry; losing that race is fine.
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

/// Runs a command to completion; a non-zero exit becomes an error naming the
/// command line and carrying its stderr.
fn run_checked(cmd: &mut Command) -> Result<Output> {
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

fn parse_cidr(cidr: &str) -> Result<IpAddr> {
    let (ip, len) = cidr
        .split_once('/')
        .ok_or_else(|| anyhow!("{cidr:?} is not ADDR/PREFIXLEN"))?;
    let ip: IpAddr = ip
        .parse()
        .with_context(|| format!("bad address in {cidr:?}"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("bad prefix in {cidr:?}"))?;
    if len > if ip.is_ipv4() { 32 } else { 128 } {
        bail!("prefix too long in {cidr:?}");
    }
    Ok(ip)
}

/// Poisoning only means another test thread panicked; the data is still usable
/// and teardown must go on.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
