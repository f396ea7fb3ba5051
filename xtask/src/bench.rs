//! `cargo xtask bench`: measurements, never pass/fail thresholds. Writes raw results as JSON
//! under bench/results/ and prints a table per part.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::cmd::run;

/// Controller: cold sync, one endpoint change, RSS — at each size.
pub fn controller(root: &Path, sizes: &[usize]) -> anyhow::Result<()> {
    let results = run_example(root, "bench_controller", sizes)?;
    println!(
        "{:>10} {:>10} {:>12} {:>14} {:>10}",
        "services", "endpoints", "cold sync", "one change", "RSS"
    );
    for v in &results {
        println!(
            "{:>10} {:>10} {:>10.3} s {:>11.2} ms {:>6.0} MiB",
            int(v, "services"),
            int(v, "endpoints"),
            float(v, "cold_sync_s"),
            float(v, "one_change_ms"),
            float(v, "rss_mib")
        );
    }
    write(root, "controller.json", &results)
}

/// Datapath: the tc and XDP programs' cost per packet (BPF_PROG_TEST_RUN) at each number of
/// Services.
pub fn datapath(root: &Path, sizes: &[usize]) -> anyhow::Result<()> {
    let results = run_example(root, "bench_datapath", sizes)?;
    println!(
        "{:>10} {:>11} {:>11} {:>11} {:>11} {:>14} {:>10}",
        "services", "tc tracked", "tc new", "xdp tracked", "xdp new", "not a service", "(batched)"
    );
    for v in &results {
        println!(
            "{:>10} {:>8} ns {:>8} ns {:>8} ns {:>8} ns {:>11} ns {:>7} ns",
            int(v, "services"),
            int(v, "tc_tracked_ns"),
            int(v, "tc_new_flow_ns"),
            int(v, "xdp_tracked_ns"),
            int(v, "xdp_new_flow_ns"),
            int(v, "tc_not_a_service_ns"),
            int(v, "tc_not_a_service_batched_ns")
        );
    }
    println!(
        "(per-run figures include the kernel's clock reads around each run: compare the two \
         'not a service' columns)"
    );
    write(root, "datapath.json", &results)
}

/// Builds `example` in release mode and runs it once per size; each run prints one JSON line.
fn run_example(root: &Path, example: &str, sizes: &[usize]) -> anyhow::Result<Vec<Value>> {
    run(crate::cargo().args([
        "build",
        "--release",
        "--package",
        "proxy-user",
        "--example",
        example,
    ]))?;
    let exe = root.join("target/release/examples").join(example);
    let mut results = Vec::new();
    for &n in sizes {
        let out = Command::new(&exe)
            .arg(n.to_string())
            .output()
            .with_context(|| format!("running {example}"))?;
        if !out.status.success() {
            bail!(
                "{example} {n} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        results
            .push(serde_json::from_str(line.trim()).with_context(|| format!("{example} output"))?);
    }
    Ok(results)
}

fn write(root: &Path, file: &str, results: &[Value]) -> anyhow::Result<()> {
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(file);
    std::fs::write(&path, serde_json::to_string_pretty(results)?)?;
    println!("raw results: {}", path.display());
    Ok(())
}

fn int(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

fn float(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(f64::NAN)
}
