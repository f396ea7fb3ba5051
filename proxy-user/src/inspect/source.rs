//! What `sluice inspect` reads: the map contents as plain data ([`Contents`], which the views
//! turn into rows without a kernel), and the thin layer that fills it from the pinned maps.

use std::{collections::BTreeMap, path::Path};

use aya::maps::{HashMap, Map, MapData, MapInfo, PerCpuHashMap};
use proxy_common::{
    AffinityKey, AffinityValue, Backend, CtKey, CtValue, DatapathConfig, FrontendMeta, ServiceKey,
    ServiceValue, SlotKey, TrafficCounters, config_flags, default_lifetime, map_names,
};

use crate::{dataplane::maps::PinnedMaps, observe::metrics::DATAPATH_COUNTERS};

/// A snapshot of the maps, or of the parts one view needs (the rest stays empty).
#[derive(Clone, Debug, Default)]
pub struct Contents {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
    pub meta: BTreeMap<ServiceKey, FrontendMeta>,
    pub conntrack: Vec<(CtKey, CtValue)>,
    /// `SLUICE_AFFINITY4`; `None` when it is not pinned (a datapath older than affinity).
    pub affinity: Option<Vec<(AffinityKey, AffinityValue)>>,
    /// `SLUICE_STATS`, summed over CPUs, by counter name.
    pub counters: Vec<(&'static str, u64)>,
    pub frontend_traffic: BTreeMap<ServiceKey, TrafficCounters>,
    pub backend_traffic: BTreeMap<Backend, TrafficCounters>,
    /// The conntrack lifetimes the datapath applies (its built-in ones when none were set).
    pub lifetimes: DatapathConfig,
    pub fill: Vec<MapFill>,
    /// CLOCK_MONOTONIC when the maps were read: the clock of `CtValue::last_seen_ns`.
    pub now_ns: u64,
}

/// How full one map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    pub map: &'static str,
    pub kind: &'static str,
    /// `None` for arrays: every element always exists, so a count says nothing.
    pub entries: Option<u64>,
    pub capacity: u32,
}

/// Which costly parts to read. Conntrack can hold half a million entries, each read with its
/// own system calls, and map fill walks every map's keys, so views that show neither skip them.
#[derive(Clone, Copy, Debug, Default)]
pub struct Parts {
    pub conntrack: bool,
    pub affinity: bool,
    pub fill: bool,
}

/// The datapath's lifetimes when `SLUICE_CONFIG` was never written, as the eBPF program's.
pub fn builtin_lifetimes() -> DatapathConfig {
    DatapathConfig {
        tcp_syn_ns: default_lifetime::TCP_SYN_NS,
        tcp_established_ns: default_lifetime::TCP_ESTABLISHED_NS,
        tcp_closing_ns: default_lifetime::TCP_CLOSING_NS,
        udp_ns: default_lifetime::UDP_NS,
        udp_stream_ns: default_lifetime::UDP_STREAM_NS,
        flags: 0,
    }
}

/// Reads the maps into [`Contents`].
pub fn read(maps: &PinnedMaps, pin_dir: &Path, parts: Parts) -> anyhow::Result<Contents> {
    let snapshot = maps.snapshot();
    let configured = maps.config.get(&0, 0).ok();
    let mut contents = Contents {
        services: snapshot.services,
        slots: snapshot.slots,
        backends: snapshot.backends,
        meta: maps.meta_entries(),
        lifetimes: match configured {
            Some(cfg) if cfg.flags & config_flags::SET != 0 => cfg,
            _ => builtin_lifetimes(),
        },
        counters: DATAPATH_COUNTERS
            .iter()
            .map(|&(index, name)| (name, maps.counter(index)))
            .collect(),
        // One entry per frontend or backend that has seen traffic: cheap enough to read always.
        frontend_traffic: maps.frontend_traffic(),
        backend_traffic: maps.backend_traffic(),
        now_ns: monotonic_now_ns()?,
        ..Contents::default()
    };
    if parts.conntrack {
        contents.conntrack = maps.conntrack_entries();
    }
    if parts.affinity {
        contents.affinity =
            affinity_map(pin_dir)?.map(|map| map.iter().filter_map(Result::ok).collect());
    }
    if parts.fill {
        contents.fill = fill(maps, pin_dir)?;
    }
    Ok(contents)
}

fn monotonic_now_ns() -> anyhow::Result<u64> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    // The monotonic clock counts from boot: never negative.
    Ok(u64::try_from(now.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(now.tv_nsec()).unwrap_or(0))
}

/// Opens a map `PinnedMaps` does not hold; `None` when it is not pinned. Only called once
/// `PinnedMaps::open` succeeded, so privileges and the pin directory are known good.
fn open_extra(pin_dir: &Path, name: &str) -> anyhow::Result<Option<MapData>> {
    let path = pin_dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    MapData::from_pin(&path)
        .map(Some)
        .map_err(|e| anyhow::anyhow!("opening pinned map {}: {e}", path.display()))
}

fn affinity_map(
    pin_dir: &Path,
) -> anyhow::Result<Option<HashMap<MapData, AffinityKey, AffinityValue>>> {
    open_extra(pin_dir, map_names::AFFINITY)?
        .map(|data| HashMap::try_from(Map::LruHashMap(data)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", map_names::AFFINITY))
}

/// Entries and capacity of every map. Capacities come from the kernel's map info, since a
/// pinned map keeps the size it was created with whatever the configuration says now.
fn fill(maps: &PinnedMaps, pin_dir: &Path) -> anyhow::Result<Vec<MapFill>> {
    use map_names::*;
    fn count<T, E>(keys: impl Iterator<Item = Result<T, E>>) -> Option<u64> {
        Some(keys.filter(Result::is_ok).count() as u64)
    }
    let round_robin = open_extra(pin_dir, ROUND_ROBIN)?
        .map(|data| PerCpuHashMap::<_, u32, u32>::try_from(Map::PerCpuHashMap(data)))
        .transpose()
        .map_err(|e| anyhow::anyhow!("reading {ROUND_ROBIN}: {e}"))?;
    let affinity = affinity_map(pin_dir)?;
    let mut rows: Vec<(&'static str, &'static str, Option<u64>)> = vec![
        (SERVICES, "hash", count(maps.services.keys())),
        (SLOTS, "hash", count(maps.slots.keys())),
        (BACKENDS, "hash", count(maps.backends.keys())),
        (CONNTRACK, "lru_hash", count(maps.conntrack.keys())),
        (STATS, "percpu_array", None),
        (CONFIG, "array", None),
        (LOCAL_SOURCES, "lpm_trie", count(maps.local_sources.keys())),
        (SOURCE_RANGES, "lpm_trie", count(maps.source_ranges.keys())),
        (VIPS, "hash", count(maps.vips.keys())),
        (META, "hash", count(maps.meta.keys())),
        (
            FRONTEND_STATS,
            "percpu_hash",
            count(maps.frontend_stats.keys()),
        ),
        (
            BACKEND_STATS,
            "percpu_hash",
            count(maps.backend_stats.keys()),
        ),
    ];
    // Maps of newer datapaths, listed when pinned.
    if let Some(map) = &affinity {
        rows.push((AFFINITY, "lru_hash", count(map.keys())));
    }
    if let Some(map) = &round_robin {
        rows.push((ROUND_ROBIN, "percpu_hash", count(map.keys())));
    }
    rows.into_iter()
        .map(|(map, kind, entries)| {
            let info = MapInfo::from_pin(pin_dir.join(map))
                .map_err(|e| anyhow::anyhow!("reading the size of pinned map {map}: {e}"))?;
            Ok(MapFill {
                map,
                kind,
                entries,
                capacity: info.max_entries(),
            })
        })
        .collect()
}
