//! `cargo xtask`: build, test and demo entry points for Sluice.

mod bench;
mod bootstrap;
mod chart;
mod cmd;
mod lab;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::cmd::run;

#[derive(Parser)]
#[command(about = "Sluice's build, test and lab tasks")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks: nightly rust-src, bpf-linker, Debian tools.
    Bootstrap,
    /// Bootstrap, then build the sluice binary (with its embedded eBPF object).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Bootstrap, then check formatting and lints and run every test, end-to-end included,
    /// and the Helm chart's checks.
    Test,
    /// Bootstrap, build sluice, and run only the Helm chart's checks (deploy/helm/tests).
    ChartTest,
    /// Bootstrap, build, and run a demo: a client, a node running Sluice and 3 backends in
    /// network namespaces; shows how requests to a ClusterIP spread over the backends.
    Lab {
        /// Requests to send.
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Measure (never judge): controller cold sync, one-change latency and RSS per size; the
    /// datapath's cost per packet (BPF_PROG_TEST_RUN) per number of Services.
    Bench {
        /// Smaller sizes, for a quick look (1,000 and 10,000 Services).
        #[arg(long)]
        quick: bool,
    },
    /// A QEMU guest booting Debian bookworm's kernel (6.1), for IPVS (docs/ipvs-vm.md).
    Vm {
        #[command(subcommand)]
        task: VmTask,
    },
}

#[derive(Subcommand)]
enum VmTask {
    /// Fetch and build (once, cached) qemu, the kernel, the root filesystem and the initramfs.
    Build,
    /// Boot the guest and run a command there as root; exits with its exit code. The source
    /// tree is at /src, the cargo target folder at /mnt/target (e.g. /mnt/target/debug/sluice).
    Run {
        /// Kill the guest after this many seconds.
        #[arg(long, default_value_t = 900)]
        timeout: u64,
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Build sluice, then check in the guest that the probe picks IPVS on 6.1 and that IPVS
    /// balances real connections (tests/vm/*.sh).
    Test,
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match Xtask::parse().task {
        Task::Bootstrap => bootstrap::bootstrap(),
        Task::Build { release } => {
            bootstrap::bootstrap()?;
            build(release)
        }
        Task::Test => {
            bootstrap::bootstrap()?;
            test(&root)
        }
        Task::ChartTest => {
            bootstrap::bootstrap()?;
            chart::test(&root)
        }
        Task::Bench { quick } => {
            bootstrap::bootstrap()?;
            let (controller, datapath): (&[usize], &[usize]) = if quick {
                (&[1_000, 10_000], &[10, 10_000])
            } else {
                (&[1_000, 10_000, 100_000], &[10, 10_000, 100_000])
            };
            bench::controller(&root, controller)?;
            bench::datapath(&root, datapath)
        }
        Task::Vm { task } => {
            let vm = vm::Vm::new(&root);
            match task {
                VmTask::Build => vm.build(),
                VmTask::Run { timeout, command } => {
                    let code = vm.run(&command, std::time::Duration::from_secs(timeout))?;
                    std::process::exit(code)
                }
                VmTask::Test => {
                    build(false)?;
                    vm.test()
                }
            }
        }
        Task::Lab { requests } => {
            bootstrap::bootstrap()?;
            build(false)?;
            lab::run(&root, requests)
        }
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn build(release: bool) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "proxy-user", "--bin", "sluice"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

fn test(root: &Path) -> anyhow::Result<()> {
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    // The default members are the host crates; the eBPF crate only builds for the BPF target
    // (through proxy-user's build.rs), so `--workspace` must not be used here.
    run(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    // The datapath crate builds only for the BPF target, with nightly's build-std.
    run(Command::new("cargo")
        .current_dir("proxy-ebpf")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .args([
            "+nightly",
            "clippy",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--",
            "-D",
            "warnings",
        ]))?;
    let tests = run(cargo().args(["test", "--no-fail-fast"]));
    // Run even when a cargo test failed, so that one run reports both.
    let chart = chart::test(root);
    match (tests, chart) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(tests), Err(chart)) => bail!("{tests:#}\nand {chart:#}"),
    }
}
