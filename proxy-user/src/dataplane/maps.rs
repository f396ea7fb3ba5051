//! The datapath's pinned maps, opened from bpffs (thin kernel layer).
//!
//! Opening by pin rather than from the loaded object means the controller, the CLI and tests
//! all read the same kernel objects, whether or not this process loaded them.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, Map, MapData, MapError, PerCpuArray};
use proxy_common::{Backend, CtKey, CtValue, ServiceKey, ServiceValue, SlotKey, map_names, stat};

use super::{
    plan::{MapStore, Op, StoreError},
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
        Ok(Self {
            services: HashMap::try_from(Map::HashMap(open(dir, SERVICES)?))
                .map_err(other(dir, SERVICES))?,
            slots: HashMap::try_from(Map::HashMap(open(dir, SLOTS)?)).map_err(other(dir, SLOTS))?,
            backends: HashMap::try_from(Map::HashMap(open(dir, BACKENDS)?))
                .map_err(other(dir, BACKENDS))?,
            conntrack: HashMap::try_from(Map::LruHashMap(open(dir, CONNTRACK)?))
                .map_err(other(dir, CONNTRACK))?,
            stats: PerCpuArray::try_from(Map::PerCpuArray(open(dir, STATS)?))
                .map_err(other(dir, STATS))?,
        })
    }

    /// Reads the service, slot and backend maps. Entries that vanish while being read are
    /// skipped: a snapshot is a best-effort image that the next reconcile corrects.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.services.iter().filter_map(Result::ok).collect(),
            self.slots.iter().filter_map(Result::ok).collect(),
            self.backends.iter().filter_map(Result::ok).collect(),
        )
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
            // The kernel answers E2BIG when a hash map has no free element.
            MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) => {
                StoreError::Full { map, setting }
            }
            MapError::SyscallError(s) => StoreError::Kernel {
                map,
                source: s.io_error,
            },
            other => StoreError::Kernel {
                map,
                source: io::Error::other(other.to_string()),
            },
        })
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
