//! Controller benchmark (run by `cargo xtask bench`): N Services × 10 endpoints translated and
//! written into real pinned maps, cold; then one endpoint change; then a full reconcile; and
//! the process's RSS, which is the controller's: the objects are handed to the feed, not
//! kept. Prints one JSON object per size on stdout.

use std::{sync::Arc, time::Instant};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use sluice::{
    config::MapSizes,
    controller::{Controller, SyncSettings},
    dataplane::loader,
    model::{NodeContext, ServiceInput, ServiceName, SliceInput},
    observe::Observer,
    source::Feed,
};

const ENDPOINTS: usize = 10;

fn service(i: usize) -> Service {
    let ip = format!("10.{}.{}.{}", 96 + (i >> 16), (i >> 8) & 255, i & 255);
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
        "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

fn slice(i: usize, generation: usize) -> EndpointSlice {
    let endpoints: Vec<_> = (0..ENDPOINTS)
        .map(|e| {
            let n = i * ENDPOINTS + e + generation;
            serde_json::json!({"addresses": [format!("172.{}.{}.{}", 16 + (n >> 16), (n >> 8) & 255, n & 255)]})
        })
        .collect();
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("svc-{i}-1"), "namespace": "bench",
                     "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints
    }))
    .unwrap()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// CPU seconds this process has used (user, system): unlike wall time, not inflated when
/// other work shares the machine.
fn cpu_s() -> (f64, f64) {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let s = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (s(usage.ru_utime), s(usage.ru_stime))
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let pin = std::path::PathBuf::from(format!("/sys/fs/bpf/sluice-bench-{}", std::process::id()));
    let datapath = loader::load(&pin, &[], MapSizes::default())?;
    let rss_start = rss_mib();
    // Objects are built and converted one at a time, as a source receives them, so the
    // process holds only what the controller keeps.
    let feed = Feed::new();
    let mut rx = feed.subscribe();
    feed.update(|changes| {
        for i in 0..n {
            changes.upsert_service(Arc::new(ServiceInput::from_service(&service(i))));
            let slice = slice(i, 0);
            changes.upsert_slice(
                ServiceName::of(&slice.metadata),
                Arc::new(SliceInput::from_slice(&slice)),
            );
        }
    });
    let mut controller = Controller::new(
        datapath.maps,
        NodeContext::default(),
        SyncSettings::default(),
        Observer::new(SyncSettings::default().sync_period),
        MapSizes::default(),
    );
    let rss_before = rss_mib();
    let cpu_before = cpu_s();
    let started = Instant::now();
    let report = controller.sync_once(&mut rx, false);
    let cold = started.elapsed();
    let cpu_after = cpu_s();
    anyhow::ensure!(
        report.failed.is_empty(),
        "cold sync failed: {:?}",
        report.failed
    );
    let rss_after_cold = rss_mib();

    // One endpoint of one Service changes.
    let changed = slice(n / 2, 1);
    let name = ServiceName::of(&changed.metadata);
    let changed = Arc::new(SliceInput::from_slice(&changed));
    feed.update(|changes| changes.upsert_slice(name, changed));
    let started = Instant::now();
    let report = controller.sync_once(&mut rx, false);
    let one_change = started.elapsed();
    anyhow::ensure!(
        report.writes > 0 && report.failed.is_empty(),
        "the change was not applied"
    );
    let one_change_writes = report.writes;
    let rss = rss_mib();

    // The periodic full reconcile: re-reads the kernel's maps and reconsiders everything.
    let started = Instant::now();
    let report = controller.sync_once(&mut rx, true);
    let full = started.elapsed();
    anyhow::ensure!(
        report.writes == 0 && report.failed.is_empty(),
        "a full sync of an unchanged state wrote {} entries",
        report.writes
    );
    drop(controller);
    loader::cleanup(&pin)?;
    println!(
        "{}",
        serde_json::json!({
            "services": n,
            "endpoints": n * ENDPOINTS,
            "cold_sync_s": cold.as_secs_f64(),
            "cold_sync_user_s": cpu_after.0 - cpu_before.0,
            "cold_sync_system_s": cpu_after.1 - cpu_before.1,
            "one_change_ms": one_change.as_secs_f64() * 1e3,
            "one_change_writes": one_change_writes,
            "full_sync_s": full.as_secs_f64(),
            "rss_mib": rss,
            "rss_before_sync_mib": rss_before,
            "rss_after_cold_sync_mib": rss_after_cold,
            "rss_start_mib": rss_start,
        })
    );
    Ok(())
}
