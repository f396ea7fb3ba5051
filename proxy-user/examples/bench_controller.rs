//! Controller benchmark (run by `cargo xtask bench`): N Services × 10 endpoints translated and
//! written into real pinned maps, cold; then one endpoint change; and the process's RSS.
//! Prints one JSON object per size on stdout.

use std::{sync::Arc, time::Instant};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use sluice::{
    config::MapSizes,
    controller::{Controller, SyncSettings},
    dataplane::loader,
    model::NodeContext,
    observe::Observer,
    source::Inputs,
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

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1000);
    let pin = std::path::PathBuf::from(format!("/sys/fs/bpf/sluice-bench-{}", std::process::id()));
    let datapath = loader::load(&pin, &[], MapSizes::default())?;
    let services: Vec<Service> = (0..n).map(service).collect();
    let mut slices: Vec<EndpointSlice> = (0..n).map(|i| slice(i, 0)).collect();
    let (tx, mut rx) = tokio::sync::watch::channel(Arc::new(Inputs {
        services: services.clone(),
        slices: slices.clone(),
        node: None,
    }));
    let mut controller = Controller::new(
        datapath.maps,
        NodeContext::default(),
        SyncSettings::default(),
        Observer::new(SyncSettings::default().sync_period),
        MapSizes::default(),
    );
    let rss_before = rss_mib();
    let started = Instant::now();
    let report = controller.sync_once(&mut rx, false);
    let cold = started.elapsed();
    anyhow::ensure!(
        report.failed.is_empty(),
        "cold sync failed: {:?}",
        report.failed
    );

    // One endpoint of one Service changes.
    slices[n / 2] = slice(n / 2, 1);
    tx.send(Arc::new(Inputs {
        services,
        slices,
        node: None,
    }))?;
    let started = Instant::now();
    let report = controller.sync_once(&mut rx, false);
    let one_change = started.elapsed();
    anyhow::ensure!(
        report.writes > 0 && report.failed.is_empty(),
        "the change was not applied"
    );
    let rss = rss_mib();
    drop(controller);
    loader::cleanup(&pin)?;
    println!(
        "{}",
        serde_json::json!({
            "services": n,
            "endpoints": n * ENDPOINTS,
            "cold_sync_s": cold.as_secs_f64(),
            "one_change_ms": one_change.as_secs_f64() * 1e3,
            "one_change_writes": report.writes,
            "rss_mib": rss,
            "rss_before_sync_mib": rss_before,
        })
    );
    Ok(())
}
