//! `cargo xtask bench`: measurements, never pass/fail thresholds. Writes raw results as JSON
//! under bench/results/ and prints a table.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::cmd::run;

/// Controller: cold sync, one endpoint change, RSS — at each size.
pub fn controller(root: &Path, sizes: &[usize]) -> anyhow::Result<()> {
    run(crate::cargo().args([
        "build",
        "--release",
        "--package",
        "proxy-user",
        "--example",
        "bench_controller",
    ]))?;
    let exe = root.join("target/release/examples/bench_controller");
    let mut results = Vec::new();
    println!(
        "{:>10} {:>10} {:>12} {:>14} {:>10}",
        "services", "endpoints", "cold sync", "one change", "RSS"
    );
    for &n in sizes {
        let out = Command::new(&exe)
            .arg(n.to_string())
            .output()
            .context("running bench_controller")?;
        if !out.status.success() {
            bail!(
                "bench_controller {n} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value =
            serde_json::from_str(line.trim()).context("bench_controller output")?;
        println!(
            "{:>10} {:>10} {:>10.3} s {:>11.2} ms {:>6.0} MiB",
            v["services"].as_u64().unwrap_or(0),
            v["endpoints"].as_u64().unwrap_or(0),
            v["cold_sync_s"].as_f64().unwrap_or(f64::NAN),
            v["one_change_ms"].as_f64().unwrap_or(f64::NAN),
            v["rss_mib"].as_f64().unwrap_or(f64::NAN)
        );
        results.push(v);
    }
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("controller.json");
    std::fs::write(&file, serde_json::to_string_pretty(&results)?)?;
    println!("raw results: {}", file.display());
    Ok(())
}
