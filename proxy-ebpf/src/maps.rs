//! The maps the datapath reads. Layout and update protocol: docs/architecture.md.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap, lpm_trie::Key},
};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, DatapathConfig, FrontendMeta, ServiceKey,
    ServiceValue, SlotKey, SourceRangeKey, TrafficCounters, capacity, stat,
};

// Service, slot and backend maps are not preallocated: a preallocated hash map recycles a
// replaced element at once, so a reader could see another key's value. Without prealloc the
// kernel frees replaced elements after an RCU grace period, which makes the controller's
// single-element master-entry swap atomic for readers.

#[map(name = "SLUICE_SVC4")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "SLUICE_SLOTS")]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::pinned(capacity::SLOTS, BPF_F_NO_PREALLOC);

#[map(name = "SLUICE_BACKENDS4")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(capacity::BACKENDS, BPF_F_NO_PREALLOC);

#[map(name = "SLUICE_CT4")]
pub static CONNTRACK: LruHashMap<CtKey, CtValue> = LruHashMap::pinned(capacity::CONNTRACK, 0);

#[map(name = "SLUICE_STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::pinned(stat::COUNT, 0);

#[map(name = "SLUICE_CONFIG")]
pub static CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);

/// Source prefixes of local (pod) traffic, for Services whose scopes differ. Keys are IPv4
/// addresses in network byte order; the value is unused.
#[map(name = "SLUICE_LOCAL4")]
pub static LOCAL_SOURCES: LpmTrie<u32, u8> = LpmTrie::pinned(capacity::LOCAL_SOURCES, 0);

/// Addresses that belong to Services alone; the value is unused. A packet to one of them that
/// matches no frontend is refused rather than handed to the host, which has no such address.
#[map(name = "SLUICE_VIPS4")]
pub static VIPS: HashMap<u32, u32> = HashMap::pinned(capacity::VIPS, BPF_F_NO_PREALLOC);

/// Written by the controller for `sluice inspect`; no program reads it, but defining it here
/// makes it part of the object, so it is created and pinned with the others.
#[map(name = "SLUICE_META4")]
pub static META: HashMap<ServiceKey, FrontendMeta> =
    HashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);

// Traffic counters are per CPU (no atomics on the hot path) and not preallocated: an entry's
// per-CPU memory exists only for frontends and backends that carried traffic.
#[map(name = "SLUICE_FE_STATS4")]
pub static FRONTEND_STATS: PerCpuHashMap<ServiceKey, TrafficCounters> =
    PerCpuHashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "SLUICE_BE_STATS4")]
pub static BACKEND_STATS: PerCpuHashMap<Backend, TrafficCounters> =
    PerCpuHashMap::pinned(capacity::BACKENDS, BPF_F_NO_PREALLOC);

/// Adds one packet of `len` bytes to a frontend's and a backend's counters.
#[inline(always)]
pub fn count_traffic(frontend: &ServiceKey, backend: &Backend, len: u32, reply: bool) {
    if crate::trace::tracing() {
        return;
    }
    add_traffic(&FRONTEND_STATS, frontend, len, reply);
    add_traffic(&BACKEND_STATS, backend, len, reply);
}

#[inline(always)]
fn add_traffic<K>(map: &PerCpuHashMap<K, TrafficCounters>, key: &K, len: u32, reply: bool) {
    let counters = match map.get_ptr_mut(key) {
        Some(c) => c,
        None => {
            // A failed insert (full map, or another CPU inserting first) is harmless: the
            // lookup below finds the entry if it exists at all.
            let _ = map.insert(key, TrafficCounters::default(), 0);
            match map.get_ptr_mut(key) {
                Some(c) => c,
                None => return,
            }
        }
    };
    // SAFETY: this CPU's own slot of a per-CPU element, valid for this invocation.
    let counters = unsafe { &mut *counters };
    if reply {
        counters.reply_packets += 1;
        counters.reply_bytes += u64::from(len);
    } else {
        counters.forward_packets += 1;
        counters.forward_bytes += u64::from(len);
    }
}

/// Each round-robin frontend's position in its rotation, by service id, per CPU.
#[map(name = "SLUICE_RR")]
pub static ROUND_ROBIN: PerCpuHashMap<u32, u32> =
    PerCpuHashMap::pinned(capacity::SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "SLUICE_AFFINITY4")]
pub static AFFINITY: LruHashMap<AffinityKey, AffinityValue> =
    LruHashMap::pinned(capacity::AFFINITY, 0);

#[map(name = "SLUICE_SRC_RANGES4")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> = LpmTrie::pinned(capacity::SOURCE_RANGES, 0);

/// Whether `saddr` is inside one of the `loadBalancerSourceRanges` of frontend `key`.
#[inline(always)]
pub fn source_allowed(key: &ServiceKey, saddr: u32) -> bool {
    let data = SourceRangeKey {
        vip: key.addr,
        port: key.port,
        proto: key.proto,
        _pad: 0,
        saddr,
    };
    SOURCE_RANGES
        .get(Key::new(SourceRangeKey::FRONTEND_BITS + 32, data))
        .is_some()
}

#[inline(always)]
pub fn is_local_source(addr: u32) -> bool {
    LOCAL_SOURCES.get(Key::new(32, addr)).is_some()
}

#[inline(always)]
pub fn count(index: u32) {
    if crate::trace::tracing() {
        return;
    }
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *counter += 1 };
    }
}
