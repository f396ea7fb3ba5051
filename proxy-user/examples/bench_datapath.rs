//! Datapath benchmark (run by `cargo xtask bench`): the tc program's cost per packet, measured
//! by the kernel with BPF_PROG_TEST_RUN, with N Services × 10 backends in the maps. Prints one
//! JSON object on stdout.
//!
//! - `tracked_ns`: a packet of an established (tracked) flow, the common case.
//! - `new_flow_ns`: a new flow's selection, measured with the trace instance, which does
//!   everything the live program does for it except write the conntrack entries (a repeated
//!   run of the live program would find the flow tracked after the first packet).
//! - `not_a_service_ns`: a packet for no frontend, which every other packet on the node pays.

use std::net::{Ipv4Addr, SocketAddrV4};

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
/// Separate runs per figure (each a syscall, so fewer than the batched repeats).
const RUNS: u32 = 100_000;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10);
    let pin = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/sluice-bench-dp-{}",
        std::process::id()
    ));
    let mut datapath = loader::load(&pin, &[], MapSizes::default())?;
    let result = measure(&pin, &mut datapath.maps, n);
    drop(datapath);
    loader::cleanup(&pin)?;
    println!("{}", result?);
    Ok(())
}

fn measure(
    pin: &std::path::Path,
    maps: &mut sluice::dataplane::maps::PinnedMaps,
    n: u32,
) -> anyhow::Result<serde_json::Value> {
    // Written straight into the maps: this measures the datapath, not the controller.
    for i in 0..n {
        let id = i + 1;
        for j in 0..BACKENDS_PER_SERVICE {
            let backend_id = i * BACKENDS_PER_SERVICE + j + 1;
            let b = Ipv4Addr::from(0xac10_0000 + backend_id);
            maps.backends.insert(
                backend_id,
                Backend {
                    addr: u32::from_ne_bytes(b.octets()),
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
    let client = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 2), 40000);
    let to_service = synthetic_packet(client, SocketAddrV4::new(vip(n / 2), 80), PROTO_TCP);
    let to_nothing = synthetic_packet(
        client,
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 80),
        PROTO_TCP,
    );

    let live = Tracer::load_writing(pin)?;
    live.time(&to_service, 1)?; // creates the flow's conntrack entries
    let tracked = live.time_each(&to_service, RUNS)?;
    let not_a_service = live.time_each(&to_nothing, RUNS)?;
    // The untouched packet can also be timed in one batch, without a clock read per run: the
    // difference is the per-run clock overhead included in the other figures.
    let not_a_service_batched = live.time(&to_nothing, REPEAT)?;
    let trace = Tracer::load(pin)?;
    let new_flow = trace.time_each(&to_service, RUNS)?;
    Ok(serde_json::json!({
        "services": n,
        "backends": n * BACKENDS_PER_SERVICE,
        "runs": RUNS,
        "tracked_ns": tracked.as_nanos() as u64,
        "new_flow_ns": new_flow.as_nanos() as u64,
        "not_a_service_ns": not_a_service.as_nanos() as u64,
        "not_a_service_batched_ns": not_a_service_batched.as_nanos() as u64,
        "repeat_batched": REPEAT,
    }))
}
