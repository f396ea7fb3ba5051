//! Choosing a backend for a new flow: session affinity first, then the frontend's algorithm.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use proxy_common::{
    AffinityKey, AffinityValue, Backend, ServiceValue, SlotKey, algorithm, stat, trace_step,
};

use crate::{
    maps::{AFFINITY, BACKENDS, ROUND_ROBIN, SLOTS, count},
    packet::Flow,
    trace,
};

const NS_PER_S: u64 = 1_000_000_000;

/// The backend `flow`'s client is pinned to by `sessionAffinity: ClientIP`, if its entry is
/// within the timeout and its backend still exists.
#[inline(always)]
pub fn remembered(flow: &Flow, svc: &ServiceValue, now: u64) -> Option<(u32, Backend)> {
    if svc.affinity_timeout == 0 {
        return None;
    }
    let key = AffinityKey {
        client: flow.saddr,
        service_id: svc.id,
    };
    // SAFETY: the value is copied out at once.
    let entry = (unsafe { AFFINITY.get(key) }).copied()?;
    let timeout = u64::from(svc.affinity_timeout) * NS_PER_S;
    // SAFETY: as above.
    let backend = if now.saturating_sub(entry.last_used_ns) <= timeout {
        (unsafe { BACKENDS.get(entry.backend_id) }).copied()
    } else {
        None
    };
    match backend {
        Some(backend) => {
            count(stat::AFFINITY_HIT);
            trace::step(trace_step::AFFINITY);
            Some((entry.backend_id, backend))
        }
        None => {
            count(stat::AFFINITY_EXPIRED);
            None
        }
    }
}

/// Records (or refreshes) the client's affinity, as iptables' `recent --set` does on every new
/// connection, so the timeout counts from the client's last new flow.
#[inline(always)]
pub fn remember(flow: &Flow, svc: &ServiceValue, backend_id: u32, now: u64) {
    if svc.affinity_timeout == 0 || trace::tracing() {
        return;
    }
    let key = AffinityKey {
        client: flow.saddr,
        service_id: svc.id,
    };
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_used_ns: now,
    };
    // A failed insert only costs the affinity of this client's next flow.
    let _ = AFFINITY.insert(key, value, 0);
}

/// A backend of the frontend's live bank by its algorithm, if its slot and backend entries
/// exist.
#[inline(always)]
pub fn by_algorithm(flow: &Flow, svc: &ServiceValue) -> Option<(u32, Backend)> {
    let draw = match svc.algorithm {
        algorithm::ROUND_ROBIN => next_in_rotation(svc.id),
        algorithm::SOURCE_HASH => mix(flow.saddr),
        // Maglev tables are not in the datapath yet; the controller warns about such
        // frontends, which are served at random meanwhile.
        // SAFETY: plain helper call.
        _ => unsafe { bpf_get_prandom_u32() },
    };
    let index = draw % svc.count;
    if let Some(r) = trace::record() {
        r.steps |= trace_step::SELECTED;
        r.slot = index;
    }
    // SAFETY: values are copied out at once.
    let backend_id = (unsafe { SLOTS.get(SlotKey::new(svc.id, svc.bank, index)) }).copied()?;
    let backend = (unsafe { BACKENDS.get(backend_id) }).copied()?;
    Some((backend_id, backend))
}

/// This frontend's next position in this CPU's rotation. Each CPU rotates on its own: exact
/// per CPU, balanced overall, and no cache line bounces between CPUs on every new flow.
#[inline(always)]
fn next_in_rotation(service_id: u32) -> u32 {
    match ROUND_ROBIN.get_ptr_mut(service_id) {
        Some(position) => {
            // SAFETY: this CPU's own slot of a per-CPU element, valid for this invocation.
            let position = unsafe { &mut *position };
            let current = *position;
            // A trace reports the position the next flow on this CPU would take.
            if !trace::tracing() {
                *position = current.wrapping_add(1);
            }
            current
        }
        None if trace::tracing() => 0,
        None => {
            // The first flow on this CPU starts the rotation at 0 and leaves 1 for the next
            // (a new per-CPU element starts every other CPU at 0 as well).
            let _ = ROUND_ROBIN.insert(service_id, 1, 0);
            0
        }
    }
}

/// A 32-bit mix (lowbias32) of the client address: the same client always lands on the same
/// slot, and nearby addresses spread over all slots (a plain modulo would send a /24 of
/// clients that differ in one byte to few backends).
#[inline(always)]
fn mix(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}
