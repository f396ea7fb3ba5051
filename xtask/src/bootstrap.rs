//! What a fresh machine needs before Sluice builds and its tests run. Every step checks first,
//! so a second run takes a second.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::cmd::{output, run, succeeds};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// Commands the end-to-end tests and the lab run, and the Debian package providing each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
];

pub fn bootstrap() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_tools()?;
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context(
        "the eBPF programs need rustup's nightly toolchain (`rustup toolchain install nightly`)",
    )?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("bootstrap: adding rust-src to nightly (for -Z build-std=core)");
        run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    Ok(())
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    ))
}

/// bpf-linker must be built against the LLVM that nightly's rustc uses: the system has no
/// matching LLVM, so it links nightly's own libLLVM, and must be rebuilt when nightly changes.
fn bpf_linker() -> anyhow::Result<()> {
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm_lib = std::fs::read_dir(&lib)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| {
            format!(
                "no libLLVM in {}; is the nightly toolchain complete?",
                lib.display()
            )
        })?;
    let link = lib.join("libLLVM.so");
    if !link.exists() {
        std::os::unix::fs::symlink(&llvm_lib, &link)
            .with_context(|| format!("symlinking {} → {llvm_lib}", link.display()))?;
    }
    let major = llvm_major(&output(Command::new("rustc").args(["+nightly", "-vV"]))?)?;
    eprintln!(
        "bootstrap: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {major} (a few minutes, once)"
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &sysroot))
    .context("building bpf-linker failed; see the output above")?;
    if !succeeds(Command::new("bpf-linker").arg("--version")) {
        bail!("bpf-linker was installed but does not run; is ~/.cargo/bin on PATH?");
    }
    Ok(())
}

fn llvm_major(rustc_vv: &str) -> anyhow::Result<u32> {
    let version = rustc_vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly -vV printed no LLVM version")?;
    version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("unparsable LLVM version {version:?}"))
}

fn debian_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| !on_path(tool))
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("bootstrap: installing {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing))
    .with_context(|| {
        format!(
            "install them by hand: apt-get install {}",
            missing.join(" ")
        )
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| Path::new(&d).join(tool).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly\nbinary: rustc\nLLVM version: 22.1.4\n";
        assert_eq!(super::llvm_major(vv).unwrap(), 22);
        assert!(super::llvm_major("rustc 1.0").is_err());
    }
}
