//! `sluice trace`: a synthetic packet run through a *trace instance* of the datapath program
//! with BPF_PROG_TEST_RUN, against the live pinned maps.
//!
//! Why it cannot disturb the live datapath: the trace instance is a separate load of the same
//! object with the read-only global `TRACE` set to 1. Under it the program skips every write to
//! shared maps — conntrack, session affinity, round-robin positions, counters, masquerade port
//! claims — and records what it did in its own, unpinned `SLUICE_TRACE` array. It is never
//! attached anywhere, and the live program was verified with `TRACE` frozen at 0.
//!
//! Packet building and the explanation are pure; only [`Tracer`] touches the kernel.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use proxy_common::{
    FrontendMeta, PROTO_TCP, PROTO_UDP, ServiceKey, TraceRecord, algorithm, ct_flags, scope,
    trace_step,
};
use serde::Serialize;

use super::maps::PinnedMaps;

const TC_PROGRAM: &str = "sluice_tc_ingress";
const TRACE_MAP: &str = "SLUICE_TRACE";
const ETH_HLEN: usize = 14;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

/// A loaded trace instance.
pub struct Tracer {
    ebpf: Ebpf,
}

/// One traced packet.
#[derive(Clone, Debug)]
pub struct Traced {
    pub verdict: i32,
    pub record: TraceRecord,
    /// The packet as the program left it.
    pub packet: Vec<u8>,
}

impl Tracer {
    /// Loads a trace instance sharing the maps pinned in `pin_dir`. Fails with the pinned
    /// maps' own error when nothing is pinned there: loading would otherwise create them.
    pub fn load(pin_dir: &Path) -> anyhow::Result<Self> {
        Self::load_instance(pin_dir, true)
    }

    /// Loads an unattached instance that behaves exactly like the live program, map writes
    /// included: for benchmarks, which time the tracked-flow path with it.
    pub fn load_writing(pin_dir: &Path) -> anyhow::Result<Self> {
        Self::load_instance(pin_dir, false)
    }

    fn load_instance(pin_dir: &Path, trace: bool) -> anyhow::Result<Self> {
        PinnedMaps::open(pin_dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .override_global("TRACE", &u8::from(trace), true)
            .load(crate::EBPF_OBJECT)
            .context("loading the trace instance of the eBPF object")?;
        let program: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM)
            .context("the eBPF object has no tc program")?
            .try_into()?;
        program
            .load()
            .context("loading the trace instance into the kernel")?;
        Ok(Self { ebpf })
    }

    /// Runs `packet` once and returns what the program did.
    pub fn run(&mut self, packet: &[u8]) -> anyhow::Result<Traced> {
        self.record()?.set(0, TraceRecord::default(), 0)?;
        let mut out = vec![0u8; packet.len() + 256];
        let result = self.program()?.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })?;
        out.truncate(result.data_size_out as usize);
        let record = self.record()?.get(&0, 0)?;
        Ok(Traced {
            verdict: result.return_value as i32,
            record,
            packet: out,
        })
    }

    /// The kernel's average time per run of `packet` over `repeat` runs (for benchmarks).
    /// The runs share one packet buffer, so this only measures paths that leave the packet as
    /// it was; see [`Tracer::time_each`] for the others.
    pub fn time(&self, packet: &[u8], repeat: u32) -> anyhow::Result<Duration> {
        let mut out = vec![0u8; packet.len() + 256];
        let result = self.program()?.test_run(TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok(result.duration)
    }

    /// The kernel's time for one run of `packet`, averaged over `runs` separate runs, each on
    /// a fresh copy of the packet (a translating path rewrites its packet in place, so repeats
    /// of one run would measure the rewritten packet). Each figure includes the kernel's
    /// clock reads around the run, a constant the caller can calibrate with [`Tracer::time`].
    pub fn time_each(&self, packet: &[u8], runs: u32) -> anyhow::Result<Duration> {
        self.time_packets((0..runs).map(|_| packet))
    }

    /// The kernel's average time for one run of each packet, each run on its own copy.
    pub fn time_packets<'p>(
        &self,
        packets: impl IntoIterator<Item = &'p [u8]>,
    ) -> anyhow::Result<Duration> {
        let program = self.program()?;
        let mut out = vec![0u8; 2048];
        let (mut total, mut runs) = (Duration::ZERO, 0u32);
        for packet in packets {
            total += program
                .test_run(TestRunOptions {
                    data_in: Some(packet),
                    data_out: Some(&mut out),
                    ..TestRunOptions::default()
                })?
                .duration;
            runs += 1;
        }
        Ok(total / runs.max(1))
    }

    fn record(&mut self) -> anyhow::Result<Array<&mut aya::maps::MapData, TraceRecord>> {
        Ok(Array::try_from(
            self.ebpf
                .map_mut(TRACE_MAP)
                .context("the eBPF object has no trace record")?,
        )?)
    }

    fn program(&self) -> anyhow::Result<&SchedClassifier> {
        Ok(self
            .ebpf
            .program(TC_PROGRAM)
            .context("the eBPF object has no tc program")?
            .try_into()?)
    }
}

/// An Ethernet/IPv4 packet from `from` to `to`: a TCP SYN, or a UDP datagram with a short
/// payload, with valid checksums.
pub fn synthetic_packet(from: SocketAddrV4, to: SocketAddrV4, proto: u8) -> Vec<u8> {
    let l4_len = if proto == PROTO_TCP { 20 } else { 8 + 4 };
    let mut p = Vec::with_capacity(ETH_HLEN + 20 + l4_len);
    p.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0x02, 0, 0, 0, 0, 0x02, 0x08, 0x00]);
    let tot_len = (20 + l4_len) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&tot_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&from.ip().octets());
    ip[16..20].copy_from_slice(&to.ip().octets());
    let check = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&check.to_be_bytes());
    p.extend_from_slice(&ip);

    let mut l4 = vec![0u8; l4_len];
    l4[0..2].copy_from_slice(&from.port().to_be_bytes());
    l4[2..4].copy_from_slice(&to.port().to_be_bytes());
    let check_at = if proto == PROTO_TCP {
        l4[4..8].copy_from_slice(&1u32.to_be_bytes()); // initial sequence number
        l4[12] = 5 << 4;
        l4[13] = 0x02; // SYN
        l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
        16
    } else {
        l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        l4[8..12].copy_from_slice(b"ping");
        6
    };
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&from.ip().octets());
    pseudo.extend_from_slice(&to.ip().octets());
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    let check = checksum(&l4, sum(&pseudo));
    l4[check_at..check_at + 2].copy_from_slice(&check.to_be_bytes());
    p.extend_from_slice(&l4);
    p
}

fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `bytes` on top of a partial `seed` sum.
fn checksum(bytes: &[u8], seed: u32) -> u16 {
    let mut s = seed + sum(bytes);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// What `sluice trace` prints; the JSON field names are part of the CLI's interface.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Explanation {
    /// `pass`, `drop` or `redirect`, and what it means here.
    pub verdict: String,
    pub steps: Vec<String>,
    /// The matched frontend (`ip:port/proto`), if any.
    pub frontend: Option<String>,
    /// `namespace/name:port` of the Service it came from.
    pub service: Option<String>,
    pub backend: Option<String>,
    /// The packet's addresses after the program: `src -> dst`.
    pub rewritten: Option<String>,
}

/// Explains a traced packet in words. `meta` is the matched frontend's metadata, if known.
pub fn explain(traced: &Traced, meta: Option<&FrontendMeta>) -> Explanation {
    let r = &traced.record;
    let has = |bit: u32| r.steps & bit != 0;
    let mut steps = Vec::new();
    let proto = |p: u8| match p {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "?",
    };
    let frontend = has(trace_step::FRONTEND).then(|| {
        format!(
            "{}/{}",
            SocketAddrV4::new(ip(r.frontend.addr), u16::from_be(r.frontend.port)),
            proto(r.frontend.proto)
        )
    });
    if has(trace_step::REPLY) {
        steps.push(format!(
            "reply of a tracked flow: source restored to the frontend {}",
            SocketAddrV4::new(ip(r.conntrack.nat_addr), u16::from_be(r.conntrack.nat_port))
        ));
    }
    if has(trace_step::NOT_A_SERVICE) {
        steps.push("no frontend matches: passed to the stack untouched".into());
    }
    if has(trace_step::UNKNOWN_PORT) {
        steps.push("the address is a ClusterIP but no Service has this port: refused".into());
    }
    if let Some(f) = &frontend {
        steps.push(format!(
            "frontend {f} matched ({} entry, {})",
            scope_name(r.frontend.scope),
            algorithm_name(r.service.algorithm)
        ));
    }
    if has(trace_step::SPLIT) {
        steps.push(if has(trace_step::INTERNAL_CLIENT) {
            "traffic policies differ by client: this client is internal (in the cluster CIDR)"
                .into()
        } else {
            "traffic policies differ by client: this client is external".into()
        });
    }
    if has(trace_step::EMPTY) {
        steps.push(if has(trace_step::DROPPED_LOCAL_POLICY) {
            "no endpoint on this node for a Local traffic policy: dropped".into()
        } else {
            "no usable endpoint: refused (TCP reset / ICMP port unreachable)".into()
        });
    }
    if has(trace_step::TRACKED) {
        steps.push("a tracked flow: its backend is reused (conntrack)".into());
    }
    if has(trace_step::TRACKED_STALE) {
        steps.push("a tracked flow, but expired or its backend is gone: chosen afresh".into());
    }
    if has(trace_step::SOURCE_DENIED) {
        steps.push("client outside loadBalancerSourceRanges: dropped".into());
    }
    if has(trace_step::AFFINITY) {
        steps.push(format!(
            "session affinity (ClientIP, {} s) remembers this client's backend",
            r.service.affinity_timeout
        ));
    }
    if has(trace_step::SELECTED) {
        steps.push(format!(
            "{} chose slot {} of {}",
            algorithm_name(r.service.algorithm),
            r.slot,
            r.service.count
        ));
    }
    let backend = (has(trace_step::SELECTED)
        || has(trace_step::AFFINITY)
        || has(trace_step::TRACKED))
    .then(|| {
        if has(trace_step::TRACKED) {
            SocketAddrV4::new(ip(r.conntrack.nat_addr), u16::from_be(r.conntrack.nat_port))
        } else {
            SocketAddrV4::new(ip(r.backend.addr), u16::from_be(r.backend.port))
        }
        .to_string()
    });
    if let Some(b) = &backend {
        steps.push(format!("backend {b}"));
    }
    if has(trace_step::MASQUERADE)
        || (has(trace_step::TRACKED) && r.conntrack.flags & ct_flags::SNAT != 0)
    {
        steps.push(format!(
            "source-NATed to the node address {} (a real flow gets its own free port)",
            ip(if has(trace_step::TRACKED) {
                r.conntrack.rev_addr
            } else {
                r.snat_addr
            })
        ));
    }
    let verdict = match traced.verdict {
        TC_ACT_OK => "pass: continues through the node's stack",
        TC_ACT_SHOT => "drop",
        TC_ACT_REDIRECT => "redirect: sent straight to an interface by the datapath",
        _ => "other",
    }
    .to_owned();
    Explanation {
        verdict,
        steps,
        frontend,
        service: meta.map(|m| {
            format!(
                "{}/{}:{}",
                text(&m.namespace),
                text(&m.name),
                text(&m.port_name)
            )
        }),
        backend,
        rewritten: addresses(&traced.packet),
    }
}

fn ip(addr: u32) -> Ipv4Addr {
    Ipv4Addr::from(addr.to_ne_bytes())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_end_matches('\0')
        .to_owned()
}

fn scope_name(s: u8) -> &'static str {
    match s {
        scope::INTERNAL => "internal-clients",
        scope::EXTERNAL => "external-clients",
        _ => "all-clients",
    }
}

fn algorithm_name(a: u8) -> &'static str {
    match a {
        algorithm::ROUND_ROBIN => "round robin",
        algorithm::SOURCE_HASH => "source hash",
        algorithm::MAGLEV => "maglev",
        _ => "random",
    }
}

/// `src:port -> dst:port` of an Ethernet/IPv4 TCP or UDP packet.
fn addresses(p: &[u8]) -> Option<String> {
    let ip_hdr = p.get(ETH_HLEN..ETH_HLEN + 20)?;
    let ihl = usize::from(ip_hdr[0] & 0x0f) * 4;
    let l4 = p.get(ETH_HLEN + ihl..ETH_HLEN + ihl + 4)?;
    let src = Ipv4Addr::new(ip_hdr[12], ip_hdr[13], ip_hdr[14], ip_hdr[15]);
    let dst = Ipv4Addr::new(ip_hdr[16], ip_hdr[17], ip_hdr[18], ip_hdr[19]);
    let ports = [
        u16::from_be_bytes([l4[0], l4[1]]),
        u16::from_be_bytes([l4[2], l4[3]]),
    ];
    Some(format!(
        "{} -> {}",
        SocketAddrV4::new(src, ports[0]),
        SocketAddrV4::new(dst, ports[1])
    ))
}

/// The metadata of the frontend a record matched, from the pinned maps.
pub fn matched_meta(maps: &PinnedMaps, record: &TraceRecord) -> Option<FrontendMeta> {
    if record.steps & trace_step::FRONTEND == 0 {
        return None;
    }
    let key: ServiceKey = record.frontend;
    maps.meta_entries().get(&key).copied()
}

#[cfg(test)]
mod tests {
    use proxy_common::{Backend, ServiceValue};

    use super::*;

    fn from() -> SocketAddrV4 {
        "10.0.1.2:40000".parse().unwrap()
    }

    fn to() -> SocketAddrV4 {
        "10.96.0.10:80".parse().unwrap()
    }

    #[test]
    fn synthetic_packets_carry_valid_checksums() {
        for proto in [PROTO_TCP, PROTO_UDP] {
            let p = synthetic_packet(from(), to(), proto);
            assert_eq!(checksum(&p[ETH_HLEN..ETH_HLEN + 20], 0), 0, "IP header");
            let l4 = &p[ETH_HLEN + 20..];
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&from().ip().octets());
            pseudo.extend_from_slice(&to().ip().octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            assert_eq!(checksum(l4, sum(&pseudo)), 0, "L4 checksum, proto {proto}");
            assert_eq!(addresses(&p).unwrap(), "10.0.1.2:40000 -> 10.96.0.10:80");
        }
    }

    #[test]
    fn a_selected_backend_is_explained_step_by_step() {
        let backend = Backend {
            addr: u32::from_ne_bytes([10, 0, 10, 2]),
            port: 8080u16.to_be(),
            proto: PROTO_TCP,
            flags: 0,
        };
        let traced = Traced {
            verdict: TC_ACT_OK,
            record: TraceRecord {
                steps: trace_step::FRONTEND | trace_step::SELECTED,
                slot: 1,
                frontend: ServiceKey::new(u32::from_ne_bytes([10, 96, 0, 10]), 80u16.to_be(), 6),
                service: ServiceValue {
                    count: 3,
                    algorithm: algorithm::SOURCE_HASH,
                    ..ServiceValue::default()
                },
                backend,
                ..TraceRecord::default()
            },
            packet: synthetic_packet(from(), "10.0.10.2:8080".parse().unwrap(), PROTO_TCP),
        };
        let e = explain(&traced, None);
        assert_eq!(e.frontend.as_deref(), Some("10.96.0.10:80/tcp"));
        assert_eq!(e.backend.as_deref(), Some("10.0.10.2:8080"));
        assert_eq!(
            e.rewritten.as_deref(),
            Some("10.0.1.2:40000 -> 10.0.10.2:8080")
        );
        assert!(e.steps.iter().any(|s| s == "source hash chose slot 1 of 3"));
        assert!(e.verdict.starts_with("pass"));
    }

    #[test]
    fn a_packet_for_no_frontend_says_so() {
        let traced = Traced {
            verdict: TC_ACT_OK,
            record: TraceRecord {
                steps: trace_step::NOT_A_SERVICE,
                ..TraceRecord::default()
            },
            packet: synthetic_packet(from(), to(), PROTO_UDP),
        };
        let e = explain(&traced, None);
        assert_eq!(e.frontend, None);
        assert_eq!(e.backend, None);
        assert!(e.steps[0].contains("no frontend"));
    }
}
