//! The trace instance: the same program, loaded by `sluice trace` with the global `TRACE` set
//! and run with BPF_PROG_TEST_RUN against the live maps. While tracing, every write to shared
//! state is skipped (see each call of [`tracing`]), and what the packet met is recorded in the
//! instance's own, unpinned `SLUICE_TRACE` array instead.

use aya_ebpf::{macros::map, maps::Array};
use proxy_common::TraceRecord;

/// Set (to 1) only by `sluice trace` when it loads its own instance. It lives in read-only
/// data, which the kernel freezes at load: the verifier knows its value and removes the
/// tracing branches from the live program altogether.
#[unsafe(no_mangle)]
static TRACE: u8 = 0;

#[map(name = "SLUICE_TRACE")]
static RECORD: Array<TraceRecord> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn tracing() -> bool {
    // SAFETY: a plain read of a global; volatile so the compiler keeps the load the loader
    // patches rather than folding the initial 0.
    unsafe { core::ptr::read_volatile(&TRACE) != 0 }
}

/// The record to fill, only in a trace instance.
#[inline(always)]
pub fn record() -> Option<&'static mut TraceRecord> {
    if !tracing() {
        return None;
    }
    // SAFETY: element 0 of an array map, valid for this invocation; test runs are not
    // concurrent with each other for one trace instance.
    RECORD.get_ptr_mut(0).map(|r| unsafe { &mut *r })
}

/// Adds `step` to the record.
#[inline(always)]
pub fn step(step: u32) {
    if let Some(r) = record() {
        r.steps |= step;
    }
}
