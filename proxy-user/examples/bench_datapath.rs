//! Datapath benchmark (run by `cargo xtask bench`): the cost per packet of the tc and XDP
//! programs, measured by the kernel with BPF_PROG_TEST_RUN, with N Services × 10 backends in
//! the maps. Prints one JSON object on stdout.
//!
//! - `*_tracked_ns`: a packet of an established (tracked) flow, the common case.
//! - `*_new_flow_ns`: the first packet of a new flow — selection and the conntrack inserts —
//!   over as many distinct flows as runs.
//! - `tc_not_a_service_ns`: a packet for no frontend, which every other packet on the node pays;
//!   `tc_not_a_service_batched_ns` is the same over one batch of runs, without the kernel's
//!   clock reads around each run that the per-run figures include: their difference is that
//!   overhead.
//!
//! Each run gets a fresh copy of its packet (a translating path rewrites its packet in place).
//! The process moves into a network namespace of its own with an interface routing the
//! backends' addresses, so that XDP's FIB lookup resolves them as on a node.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use aya::{
    EbpfLoader,
    programs::{TestRun, TestRunOptions, Xdp},
};
use proxy_common::{
    Backend, PROTO_TCP, ServiceKey, ServiceValue, SlotKey, algorithm, service_flags,
};
use sluice::{
    config::MapSizes,
    dataplane::{
        loader,
        trace::{Tracer, synthetic_packet},
    },
};

const BACKENDS_PER_SERVICE: u32 = 10;
const REPEAT: u32 = 1_000_000;
/// Separate runs per per-run figure (each a syscall, so fewer than the batched repeats).
const RUNS: u32 = 100_000;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

fn backend_ip(backend_id: u32) -> Ipv4Addr {
    Ipv4Addr::from(0xac10_0000 + backend_id)
}

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10);
    let ifindex = private_network(n)?;
    let pin = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/sluice-bench-dp-{}",
        std::process::id()
    ));
    let mut datapath = loader::load(&pin, &[], MapSizes::default())?;
    let result = measure(&pin, &mut datapath.maps, n, ifindex);
    drop(datapath);
    loader::cleanup(&pin)?;
    println!("{}", result?);
    Ok(())
}

/// Enters a new network namespace with `bench0` holding a route to the backends' addresses and
/// a permanent neighbour entry for each backend of the Service under test.
fn private_network(n: u32) -> anyhow::Result<u32> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .context("unsharing the network namespace (needs root)")?;
    let ip = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("ip").args(args).status()?;
        ensure!(status.success(), "ip {args:?} failed");
        Ok(())
    };
    // The FIB lookup answers "forwarding disabled" unless the namespace forwards, as a node does.
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    // A veth pair rather than a dummy device: this kernel may lack the dummy driver.
    ip(&[
        "link", "add", "bench0", "type", "veth", "peer", "name", "bench1",
    ])?;
    ip(&["link", "set", "bench0", "up"])?;
    ip(&["link", "set", "bench1", "up"])?;
    ip(&["addr", "add", "172.31.255.254/12", "dev", "bench0"])?;
    let tested = n / 2;
    for j in 0..BACKENDS_PER_SERVICE {
        let b = backend_ip(tested * BACKENDS_PER_SERVICE + j + 1).to_string();
        ip(&[
            "neigh",
            "replace",
            &b,
            "lladdr",
            "02:00:00:00:00:99",
            "dev",
            "bench0",
            "nud",
            "permanent",
        ])?;
    }
    Ok(nix::net::if_::if_nametoindex("bench0")?)
}

fn measure(
    pin: &std::path::Path,
    maps: &mut sluice::dataplane::maps::PinnedMaps,
    n: u32,
    ifindex: u32,
) -> anyhow::Result<serde_json::Value> {
    // Written straight into the maps: this measures the datapath, not the controller.
    for i in 0..n {
        let id = i + 1;
        for j in 0..BACKENDS_PER_SERVICE {
            let backend_id = i * BACKENDS_PER_SERVICE + j + 1;
            maps.backends.insert(
                backend_id,
                Backend {
                    addr: u32::from_ne_bytes(backend_ip(backend_id).octets()),
                    port: 8080u16.to_be(),
                    proto: PROTO_TCP,
                    flags: 0,
                },
                0,
            )?;
            maps.slots.insert(SlotKey::new(id, 0, j), backend_id, 0)?;
        }
        maps.services.insert(
            ServiceKey::new(
                u32::from_ne_bytes(vip(i).octets()),
                80u16.to_be(),
                PROTO_TCP,
            ),
            ServiceValue {
                id,
                count: BACKENDS_PER_SERVICE,
                bank: 0,
                algorithm: algorithm::RANDOM,
                flags: service_flags::PRESENT,
                affinity_timeout: 0,
            },
            0,
        )?;
    }
    let service = SocketAddrV4::new(vip(n / 2), 80);
    let client = |port: u16| SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), port);
    let tracked = synthetic_packet(client(1), service, PROTO_TCP);
    let to_nothing = synthetic_packet(
        client(1),
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80),
        PROTO_TCP,
    );
    // Distinct flows: source addresses × ports, one new flow per run.
    let new_flows = |salt: u8| -> Vec<Vec<u8>> {
        (0..RUNS)
            .map(|i| {
                let src = SocketAddrV4::new(
                    Ipv4Addr::new(10, 1 + salt, (i >> 16) as u8, (i >> 8) as u8),
                    1024 + (i & 0xff) as u16,
                );
                synthetic_packet(src, service, PROTO_TCP)
            })
            .collect()
    };

    let tc = Tracer::load_writing(pin)?;
    tc.time(&tracked, 1)?; // creates the flow's conntrack entries
    let tc_tracked = tc.time_each(&tracked, RUNS)?;
    let flows = new_flows(0);
    let tc_new = tc.time_packets(flows.iter().map(Vec::as_slice))?;
    let tc_nothing = tc.time_each(&to_nothing, RUNS)?;
    let tc_nothing_batched = tc.time(&to_nothing, REPEAT)?;

    let xdp = XdpBench::load(pin, ifindex)?;
    let xdp_tracked_packet = synthetic_packet(client(2), service, PROTO_TCP);
    let (verdict, _) = xdp.run(&xdp_tracked_packet)?;
    ensure!(
        verdict == aya_ebpf_xdp::REDIRECT,
        "the XDP program did not redirect (verdict {verdict}): no route or neighbour?"
    );
    let xdp_tracked = xdp.time_each((0..RUNS).map(|_| xdp_tracked_packet.as_slice()))?;
    let flows = new_flows(100);
    let xdp_new = xdp.time_each(flows.iter().map(Vec::as_slice))?;

    let ns = |d: Duration| d.as_nanos() as u64;
    Ok(serde_json::json!({
        "services": n,
        "backends": n * BACKENDS_PER_SERVICE,
        "runs": RUNS,
        "tc_tracked_ns": ns(tc_tracked),
        "tc_new_flow_ns": ns(tc_new),
        "tc_not_a_service_ns": ns(tc_nothing),
        "tc_not_a_service_batched_ns": ns(tc_nothing_batched),
        "xdp_tracked_ns": ns(xdp_tracked),
        "xdp_new_flow_ns": ns(xdp_new),
        "repeat_batched": REPEAT,
    }))
}

/// XDP verdicts (`enum xdp_action`).
mod aya_ebpf_xdp {
    pub const REDIRECT: u32 = 4;
}

/// An unattached instance of the XDP program on the pinned maps, run with test packets as if
/// they arrived on `ifindex`.
struct XdpBench {
    ebpf: aya::Ebpf,
    ctx: Vec<u8>,
}

impl XdpBench {
    fn load(pin: &std::path::Path, ifindex: u32) -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin)
            .load(sluice::EBPF_OBJECT)?;
        let program: &mut Xdp = ebpf
            .program_mut("sluice_xdp")
            .context("no XDP program")?
            .try_into()?;
        program.load()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex; the ingress interface here, data_end per packet.
        let mut ctx = vec![0u8; 24];
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        Ok(Self { ebpf, ctx })
    }

    fn program(&self) -> anyhow::Result<&Xdp> {
        Ok(self
            .ebpf
            .program("sluice_xdp")
            .context("no XDP program")?
            .try_into()?)
    }

    fn run(&self, packet: &[u8]) -> anyhow::Result<(u32, Duration)> {
        let mut out = vec![0u8; 2048];
        // The kernel takes the frame's length from xdp_md.data_end when a context is given.
        let mut ctx = self.ctx.clone();
        ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        let result = self.program()?.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::default()
        })?;
        Ok((result.return_value, result.duration))
    }

    fn time_each<'p>(
        &self,
        packets: impl IntoIterator<Item = &'p [u8]>,
    ) -> anyhow::Result<Duration> {
        let (mut total, mut runs) = (Duration::ZERO, 0u32);
        for packet in packets {
            total += self.run(packet)?.1;
            runs += 1;
        }
        Ok(total / runs.max(1))
    }
}
