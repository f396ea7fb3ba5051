//! Builds the eBPF object with nightly (build-std=core, bpfel-unknown-none) via aya-build and
//! embeds it in the sluice binary.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&metadata).join("../proxy-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path to proxy-ebpf"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context(
        "building the eBPF programs failed; a fresh machine needs nightly's rust-src and \
         bpf-linker: run `cargo xtask bootstrap`",
    )
}
