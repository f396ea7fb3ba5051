#![no_std]
//! Library half of the eBPF crate: exists so the userspace crate can depend on it (cargo then
//! re-runs the eBPF build when these sources change). The programs are in the binary target.
