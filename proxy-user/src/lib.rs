//! Sluice's controller: turns Kubernetes Services and EndpointSlices into the contents of the
//! datapath's BPF maps and keeps them there.

pub mod cli;
pub mod config;
pub mod controller;
pub mod dataplane;
pub mod fast;
pub mod inspect;
pub mod maglev;
pub mod model;
pub mod observe;
pub mod source;

/// The eBPF object built by build.rs (aya-build), embedded so the binary is self-contained.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sluice-ebpf"));
