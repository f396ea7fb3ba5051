//! The datapath's pinned maps, opened from bpffs (thin kernel layer).
//!
//! Opening by pin rather than from the loaded object means the controller, the CLI and tests
//! all read the same kernel objects, whether or not this process loaded them.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use aya::maps::{
    Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap, PerCpuValues,
    lpm_trie::{Key as LpmKey, LpmTrie},
};
use proxy_common::{
    Backend, CtKey, CtValue, DatapathConfig, FrontendMeta, ServiceKey, ServiceValue, SlotKey,
    SourceRangeKey, TrafficCounters, map_names, stat,
};

use super::{
    batch::{self, BatchError},
    layout::SourceRangeEntry,
    plan::{MapStore, Op, StoreError},
    settings::DatapathSettings,
    snapshot::Snapshot,
};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "no Sluice maps are pinned at {0}: is `sluice run` running (or has it run) with this \
         --pin-path?"
    )]
    NotPinned(PathBuf),
    #[error(
        "permission denied opening {0}: reading BPF maps needs root (CAP_BPF and CAP_SYS_ADMIN)"
    )]
    PermissionDenied(PathBuf),
    #[error("opening pinned map {path}: {source}")]
    Other {
        path: PathBuf,
        #[source]
        source: MapError,
    },
}

pub struct PinnedMaps {
    pub services: HashMap<MapData, ServiceKey, ServiceValue>,
    pub slots: HashMap<MapData, SlotKey, u32>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub conntrack: HashMap<MapData, CtKey, CtValue>,
    pub stats: PerCpuArray<MapData, u64>,
    pub config: Array<MapData, DatapathConfig>,
    pub local_sources: LpmTrie<MapData, u32, u8>,
    pub source_ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    pub vips: HashMap<MapData, u32, u32>,
    pub meta: HashMap<MapData, ServiceKey, FrontendMeta>,
    pub frontend_stats: PerCpuHashMap<MapData, ServiceKey, TrafficCounters>,
    pub backend_stats: PerCpuHashMap<MapData, Backend, TrafficCounters>,
    /// The service, slot and backend maps again, for batch reads and writes.
    batch: BatchFds,
}

struct BatchFds {
    services: OwnedFd,
    slots: OwnedFd,
    backends: OwnedFd,
    /// Reused between calls: a cold sync makes two hundred thousand of them.
    slot_keys: Vec<SlotKey>,
    slot_values: Vec<u32>,
    backend_keys: Vec<u32>,
    backend_values: Vec<Backend>,
    /// Set when the kernel refused a batch: from then on, one element per call.
    unsupported: bool,
}

fn duplicate(map: &MapData, dir: &Path, name: &str) -> Result<OwnedFd, OpenError> {
    map.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| OpenError::Other {
            path: dir.join(name),
            source: MapError::SyscallError(aya::sys::SyscallError {
                call: "dup",
                io_error: e,
            }),
        })
}

fn open(dir: &Path, name: &str) -> Result<MapData, OpenError> {
    let path = dir.join(name);
    MapData::from_pin(&path).map_err(|source| match &source {
        MapError::SyscallError(e) if e.io_error.kind() == io::ErrorKind::NotFound => {
            OpenError::NotPinned(dir.to_path_buf())
        }
        MapError::SyscallError(e) if e.io_error.kind() == io::ErrorKind::PermissionDenied => {
            OpenError::PermissionDenied(path.clone())
        }
        _ => OpenError::Other {
            path: path.clone(),
            source,
        },
    })
}

fn other(dir: &Path, name: &str) -> impl Fn(MapError) -> OpenError {
    let path = dir.join(name);
    move |source| OpenError::Other {
        path: path.clone(),
        source,
    }
}

impl PinnedMaps {
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        use map_names::*;
        let (services, slots, backends) = (
            open(dir, SERVICES)?,
            open(dir, SLOTS)?,
            open(dir, BACKENDS)?,
        );
        let batch = BatchFds {
            services: duplicate(&services, dir, SERVICES)?,
            slots: duplicate(&slots, dir, SLOTS)?,
            backends: duplicate(&backends, dir, BACKENDS)?,
            slot_keys: Vec::new(),
            slot_values: Vec::new(),
            backend_keys: Vec::new(),
            backend_values: Vec::new(),
            unsupported: false,
        };
        Ok(Self {
            services: HashMap::try_from(Map::HashMap(services)).map_err(other(dir, SERVICES))?,
            slots: HashMap::try_from(Map::HashMap(slots)).map_err(other(dir, SLOTS))?,
            backends: HashMap::try_from(Map::HashMap(backends)).map_err(other(dir, BACKENDS))?,
            conntrack: HashMap::try_from(Map::LruHashMap(open(dir, CONNTRACK)?))
                .map_err(other(dir, CONNTRACK))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open(dir, STATS)?))
                .map_err(other(dir, STATS))?,
            config: Array::try_from(Map::Array(open(dir, CONFIG)?)).map_err(other(dir, CONFIG))?,
            local_sources: LpmTrie::try_from(Map::LpmTrie(open(dir, LOCAL_SOURCES)?))
                .map_err(other(dir, LOCAL_SOURCES))?,
            source_ranges: LpmTrie::try_from(Map::LpmTrie(open(dir, SOURCE_RANGES)?))
                .map_err(other(dir, SOURCE_RANGES))?,
            vips: HashMap::try_from(Map::HashMap(open(dir, VIPS)?)).map_err(other(dir, VIPS))?,
            meta: HashMap::try_from(Map::HashMap(open(dir, META)?)).map_err(other(dir, META))?,
            frontend_stats: PerCpuHashMap::try_from(Map::PerCpuHashMap(open(dir, FRONTEND_STATS)?))
                .map_err(other(dir, FRONTEND_STATS))?,
            backend_stats: PerCpuHashMap::try_from(Map::PerCpuHashMap(open(dir, BACKEND_STATS)?))
                .map_err(other(dir, BACKEND_STATS))?,
            batch,
        })
    }

    /// Every frontend entry's metadata.
    pub fn meta_entries(&self) -> BTreeMap<ServiceKey, FrontendMeta> {
        self.meta.iter().filter_map(Result::ok).collect()
    }

    /// Writes (`Some`) or removes one frontend entry's metadata.
    pub fn set_meta(
        &mut self,
        key: ServiceKey,
        meta: Option<FrontendMeta>,
    ) -> Result<(), StoreError> {
        let result = match meta {
            Some(meta) => self.meta.insert(key, meta, 0),
            None => ignore_missing(self.meta.remove(&key)),
        };
        result.map_err(|e| map_store_error(map_names::META, "maps.services", e))
    }

    /// Traffic per frontend, summed over CPUs.
    pub fn frontend_traffic(&self) -> BTreeMap<ServiceKey, TrafficCounters> {
        sum_per_cpu(self.frontend_stats.iter())
    }

    /// Traffic per backend, summed over CPUs.
    pub fn backend_traffic(&self) -> BTreeMap<Backend, TrafficCounters> {
        sum_per_cpu(self.backend_stats.iter())
    }

    /// Removes the traffic counters of frontends and backends that are gone, so a map that
    /// only grows when traffic flows does not fill up with the dead.
    pub fn prune_traffic(
        &mut self,
        frontends: &BTreeSet<ServiceKey>,
        backends: &BTreeSet<Backend>,
    ) {
        let dead: Vec<ServiceKey> = self
            .frontend_stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !frontends.contains(k))
            .collect();
        for key in dead {
            let _ = self.frontend_stats.remove(&key);
        }
        let dead: Vec<Backend> = self
            .backend_stats
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !backends.contains(k))
            .collect();
        for key in dead {
            let _ = self.backend_stats.remove(&key);
        }
    }

    /// The ClusterIPs in `SLUICE_VIPS4`.
    pub fn vip_entries(&self) -> BTreeMap<u32, ()> {
        self.vips
            .keys()
            .filter_map(Result::ok)
            .map(|k| (k, ()))
            .collect()
    }

    /// Adds (`Some`) or removes one ClusterIP of `SLUICE_VIPS4`.
    pub fn set_vip(&mut self, addr: u32, present: Option<()>) -> Result<(), StoreError> {
        let result = match present {
            Some(()) => self.vips.insert(addr, 0, 0),
            None => ignore_missing(self.vips.remove(&addr)),
        };
        result.map_err(|e| map_store_error(map_names::VIPS, "maps.services", e))
    }

    /// The `loadBalancerSourceRanges` entries in the kernel.
    pub fn source_range_entries(&self) -> BTreeMap<SourceRangeEntry, ()> {
        self.source_ranges
            .keys()
            .filter_map(Result::ok)
            .map(|k| ((k.prefix_len(), k.data()), ()))
            .collect()
    }

    /// Adds (`Some`) or removes one `loadBalancerSourceRanges` entry.
    pub fn set_source_range(
        &mut self,
        (prefix_len, data): SourceRangeEntry,
        present: Option<()>,
    ) -> Result<(), StoreError> {
        let key = LpmKey::new(prefix_len, data);
        let result = match present {
            Some(()) => self.source_ranges.insert(&key, 1, 0),
            None => ignore_missing(self.source_ranges.remove(&key)),
        };
        result.map_err(|e| match map_store_error(map_names::SOURCE_RANGES, "", e) {
            // Its size is fixed: there is no setting to name.
            StoreError::Full { map, .. } => StoreError::Kernel {
                map,
                source: io::Error::other(format!(
                    "full: at most {} loadBalancerSourceRanges entries (ranges plus node \
                     addresses, per frontend) fit",
                    proxy_common::capacity::SOURCE_RANGES
                )),
            },
            other => other,
        })
    }

    /// Writes the run-time settings: lifetimes first, then the local prefixes, adding the new
    /// ones before removing the stale so no local client is ever briefly external.
    pub fn configure(&mut self, settings: &DatapathSettings) -> Result<(), MapError> {
        self.config.set(0, settings.lifetimes, 0)?;
        let wanted: Vec<LpmKey<u32>> = settings
            .local_sources
            .iter()
            .map(|&(net, len)| LpmKey::new(u32::from(len), net))
            .collect();
        for key in &wanted {
            self.local_sources.insert(key, 1, 0)?;
        }
        let stale: Vec<LpmKey<u32>> = self
            .local_sources
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|w| w.prefix_len() == k.prefix_len() && w.data() == k.data())
            })
            .collect();
        for key in &stale {
            self.local_sources.remove(key)?;
        }
        Ok(())
    }

    /// Reads the service, slot and backend maps. Entries that vanish while being read are
    /// skipped: a snapshot is a best-effort image that the next reconcile corrects.
    pub fn snapshot(&self) -> Snapshot {
        let services = match batch::read_all(self.batch.services.as_fd()) {
            Some(all) => all.into_iter().collect(),
            None => self.services.iter().filter_map(Result::ok).collect(),
        };
        let slots = match batch::read_all(self.batch.slots.as_fd()) {
            Some(all) => all.into_iter().collect(),
            None => self.slots.iter().filter_map(Result::ok).collect(),
        };
        let backends = match batch::read_all(self.batch.backends.as_fd()) {
            Some(all) => all.into_iter().collect(),
            None => self.backends.iter().filter_map(Result::ok).collect(),
        };
        Snapshot::new(services, slots, backends)
    }

    /// Conntrack entries (for inspection and tests).
    pub fn conntrack_entries(&self) -> Vec<(CtKey, CtValue)> {
        self.conntrack.iter().filter_map(Result::ok).collect()
    }

    /// A datapath counter summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        debug_assert!(index < stat::COUNT);
        self.stats
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

impl MapStore for PinnedMaps {
    fn apply(&mut self, op: &Op) -> Result<(), StoreError> {
        use map_names::*;
        let (map, setting, result) = match op {
            Op::PutService(k, v) => (SERVICES, "maps.services", self.services.insert(k, v, 0)),
            Op::PutSlot(k, v) => (SLOTS, "maps.slots", self.slots.insert(k, v, 0)),
            Op::PutBackend(k, v) => (BACKENDS, "maps.backends", self.backends.insert(k, v, 0)),
            Op::DeleteService(k) => (SERVICES, "", ignore_missing(self.services.remove(k))),
            Op::DeleteSlot(k) => (SLOTS, "", ignore_missing(self.slots.remove(k))),
            Op::DeleteBackend(k) => (BACKENDS, "", ignore_missing(self.backends.remove(k))),
        };
        result.map_err(|e| match e {
            MapError::SyscallError(s) => store_error(map, setting, s.io_error),
            other => StoreError::Kernel {
                map,
                source: io::Error::other(other.to_string()),
            },
        })
    }

    /// Writes each run of puts to one map with one batch call, so a frontend's group costs
    /// three calls (backends, slots, master entry) rather than one per entry; the order of
    /// the writes, which the update protocol depends on, is unchanged.
    fn apply_all(&mut self, ops: &[Op]) -> Result<(), (usize, StoreError)> {
        let mut done = 0;
        for run in ops.chunk_by(|a, b| std::mem::discriminant(a) == std::mem::discriminant(b)) {
            self.apply_run(run).map_err(|(n, e)| (done + n, e))?;
            done += run.len();
        }
        Ok(())
    }
}

impl PinnedMaps {
    /// `run`: writes of one kind.
    fn apply_run(&mut self, run: &[Op]) -> Result<(), (usize, StoreError)> {
        use map_names::*;
        if run.len() > 1 && !self.batch.unsupported {
            let result = match run[0] {
                Op::PutBackend(..) => {
                    let b = &mut self.batch;
                    let (keys, values) = (&mut b.backend_keys, &mut b.backend_values);
                    keys.clear();
                    values.clear();
                    for op in run {
                        if let Op::PutBackend(k, v) = op {
                            keys.push(*k);
                            values.push(*v);
                        }
                    }
                    let result = batch::update(b.backends.as_fd(), keys, values);
                    Some((BACKENDS, "maps.backends", result))
                }
                Op::PutSlot(..) => {
                    let b = &mut self.batch;
                    let (keys, values) = (&mut b.slot_keys, &mut b.slot_values);
                    keys.clear();
                    values.clear();
                    for op in run {
                        if let Op::PutSlot(k, v) = op {
                            keys.push(*k);
                            values.push(*v);
                        }
                    }
                    let result = batch::update(b.slots.as_fd(), keys, values);
                    Some((SLOTS, "maps.slots", result))
                }
                // A group has one master entry, written on its own so that it flips the
                // frontend in one element update.
                Op::PutService(..)
                | Op::DeleteService(_)
                | Op::DeleteSlot(_)
                | Op::DeleteBackend(_) => None,
            };
            match result {
                Some((_, _, Ok(()))) => return Ok(()),
                Some((map, setting, Err(BatchError::Failed { written, error }))) => {
                    return Err((written, store_error(map, setting, error)));
                }
                Some((_, _, Err(BatchError::Unsupported))) => self.batch.unsupported = true,
                None => {}
            }
        }
        for (done, op) in run.iter().enumerate() {
            self.apply(op).map_err(|e| (done, e))?;
        }
        Ok(())
    }
}

/// [`store_error`] for an aya error.
fn map_store_error(map: &'static str, setting: &'static str, e: MapError) -> StoreError {
    match e {
        MapError::SyscallError(s) => store_error(map, setting, s.io_error),
        other => StoreError::Kernel {
            map,
            source: io::Error::other(other.to_string()),
        },
    }
}

fn sum_per_cpu<K: Ord>(
    entries: impl Iterator<Item = Result<(K, PerCpuValues<TrafficCounters>), MapError>>,
) -> BTreeMap<K, TrafficCounters> {
    entries
        .filter_map(Result::ok)
        .map(|(key, per_cpu)| {
            let total = per_cpu
                .iter()
                .fold(TrafficCounters::default(), |a, c| TrafficCounters {
                    forward_packets: a.forward_packets + c.forward_packets,
                    forward_bytes: a.forward_bytes + c.forward_bytes,
                    reply_packets: a.reply_packets + c.reply_packets,
                    reply_bytes: a.reply_bytes + c.reply_bytes,
                });
            (key, total)
        })
        .collect()
}

fn store_error(map: &'static str, setting: &'static str, error: io::Error) -> StoreError {
    // The kernel answers E2BIG (hash maps) or ENOSPC (LPM tries) when a map is full.
    if matches!(error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)) {
        StoreError::Full { map, setting }
    } else {
        StoreError::Kernel { map, source: error }
    }
}

/// Deleting an entry that is already gone is success: the goal state holds.
fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(s)) if s.io_error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}
