//! An in-memory image of the service, slot and backend maps.
//!
//! The controller keeps one as a mirror of what it wrote (so a sync diffs against memory, not
//! the kernel), re-reads it from the kernel on a full reconcile (so drift is seen), and tests
//! use it as a fake map store. Every write through [`MapStore::apply`] also keeps the
//! indexes that let a sync allocate ids and find garbage without scanning the maps.

use std::collections::BTreeMap;

use proxy_common::{Backend, ServiceKey, ServiceValue, SlotKey};

use super::plan::{MapStore, Op, StoreError};
use crate::fast::{HashMap, HashSet};

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
    /// Capacities to enforce, as the kernel would (tests set them; `None` = unlimited).
    pub limits: Option<Limits>,
    /// Derived from the three maps; stale after the maps are changed directly until
    /// [`Snapshot::reindex`].
    pub(super) index: Index,
}

/// Equal map contents: the indexes are derived and the limits a test's business.
impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.services == other.services
            && self.slots == other.slots
            && self.backends == other.backends
            && self.limits == other.limits
    }
}

impl Eq for Snapshot {}

#[derive(Clone, Debug, Default)]
pub(super) struct Index {
    /// The id each backend is stored under (one of them, should drift have stored it twice).
    pub backend_ids: HashMap<Backend, u32>,
    /// Slots pointing at each backend id.
    pub slot_refs: HashMap<u32, u32>,
    /// Master entries using each service id (one, unless the maps drifted).
    pub service_ids: HashMap<u32, u32>,
    /// Backends whose last slot went away: what an incremental garbage collection looks at.
    pub orphans: HashSet<u32>,
    /// Where the next id search starts, so allocation does not rescan the ids in use.
    pub next_backend: u32,
    pub next_service: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub services: usize,
    pub slots: usize,
    pub backends: usize,
}

impl Snapshot {
    /// Without indexes: a full sync builds them (see [`Snapshot::reindex`]), and other
    /// readers only look at the maps.
    pub fn new(
        services: BTreeMap<ServiceKey, ServiceValue>,
        slots: BTreeMap<SlotKey, u32>,
        backends: BTreeMap<u32, Backend>,
    ) -> Self {
        Self {
            services,
            slots,
            backends,
            ..Self::default()
        }
    }

    /// Rebuilds the indexes from the maps (O(entries)), keeping the allocation cursors.
    pub fn reindex(&mut self) {
        // Dropped first: at a million backends two sets of indexes at once would be a
        // peak of their own.
        let old = std::mem::take(&mut self.index);
        let mut index = Index {
            next_backend: old.next_backend,
            next_service: old.next_service,
            ..Index::default()
        };
        drop(old);
        for (id, backend) in &self.backends {
            index.backend_ids.entry(*backend).or_insert(*id);
        }
        for value in self.services.values() {
            *index.service_ids.entry(value.id).or_default() += 1;
        }
        for backend_id in self.slots.values() {
            *index.slot_refs.entry(*backend_id).or_default() += 1;
        }
        index.orphans = self
            .backends
            .keys()
            .filter(|id| !index.slot_refs.contains_key(id))
            .copied()
            .collect();
        self.index = index;
    }

    /// The slots stored under one service id, both banks.
    pub fn slots_of(&self, service_id: u32) -> impl Iterator<Item = (&SlotKey, &u32)> {
        self.slots
            .range(SlotKey::new(service_id, 0, 0)..=SlotKey::new(service_id, u8::MAX, u32::MAX))
    }

    /// The backend ids a frontend currently sends to, in slot order (its live bank).
    pub fn live_backend_ids(&self, key: &ServiceKey) -> Option<Vec<u32>> {
        let svc = self.services.get(key)?;
        (0..svc.count)
            .map(|i| self.slots.get(&SlotKey::new(svc.id, svc.bank, i)).copied())
            .collect()
    }

    /// The backends a frontend currently sends to, in slot order.
    pub fn live_backends(&self, key: &ServiceKey) -> Option<Vec<Backend>> {
        self.live_backend_ids(key)?
            .into_iter()
            .map(|id| self.backends.get(&id).copied())
            .collect()
    }

    /// True when every frontend's live bank is complete and points at existing backends —
    /// the invariant a packet relies on at every instant.
    pub fn is_consistent(&self) -> bool {
        self.services
            .keys()
            .all(|k| self.live_backends(k).is_some())
    }

    fn full(map: &'static str, setting: &'static str) -> StoreError {
        StoreError::Full { map, setting }
    }
}

impl MapStore for Snapshot {
    fn apply(&mut self, op: &Op) -> Result<(), StoreError> {
        let limits = self.limits;
        match *op {
            Op::PutService(k, v) => {
                if let Some(l) = limits
                    && !self.services.contains_key(&k)
                    && self.services.len() >= l.services
                {
                    return Err(Self::full(
                        proxy_common::map_names::SERVICES,
                        "maps.services",
                    ));
                }
                if let Some(old) = self.services.insert(k, v) {
                    self.index.release_service_id(old.id);
                }
                *self.index.service_ids.entry(v.id).or_default() += 1;
            }
            Op::PutSlot(k, v) => {
                if let Some(l) = limits
                    && !self.slots.contains_key(&k)
                    && self.slots.len() >= l.slots
                {
                    return Err(Self::full(proxy_common::map_names::SLOTS, "maps.slots"));
                }
                if let Some(old) = self.slots.insert(k, v) {
                    self.index.unref_backend(old, &self.backends);
                }
                let refs = self.index.slot_refs.entry(v).or_default();
                *refs += 1;
                if *refs == 1 {
                    self.index.orphans.remove(&v);
                }
            }
            Op::PutBackend(k, v) => {
                if let Some(l) = limits
                    && !self.backends.contains_key(&k)
                    && self.backends.len() >= l.backends
                {
                    return Err(Self::full(
                        proxy_common::map_names::BACKENDS,
                        "maps.backends",
                    ));
                }
                if let Some(old) = self.backends.insert(k, v) {
                    self.index.forget_backend(&old, k);
                }
                self.index.backend_ids.entry(v).or_insert(k);
                // Not counted as an orphan: the slots that use it follow in the same group,
                // and a group that fails deletes it again. One left unused by a failed
                // deletion is found by the next full sync.
            }
            Op::DeleteService(k) => {
                if let Some(old) = self.services.remove(&k) {
                    self.index.release_service_id(old.id);
                }
            }
            Op::DeleteSlot(k) => {
                if let Some(old) = self.slots.remove(&k) {
                    self.index.unref_backend(old, &self.backends);
                }
            }
            Op::DeleteBackend(k) => {
                if let Some(old) = self.backends.remove(&k) {
                    self.index.forget_backend(&old, k);
                }
                self.index.orphans.remove(&k);
            }
        }
        Ok(())
    }
}

impl Index {
    fn release_service_id(&mut self, id: u32) {
        if let Some(uses) = self.service_ids.get_mut(&id) {
            *uses -= 1;
            if *uses == 0 {
                self.service_ids.remove(&id);
            }
        }
    }

    fn unref_backend(&mut self, id: u32, backends: &BTreeMap<u32, Backend>) {
        if let Some(refs) = self.slot_refs.get_mut(&id) {
            *refs -= 1;
            if *refs == 0 {
                self.slot_refs.remove(&id);
                if backends.contains_key(&id) {
                    self.orphans.insert(id);
                }
            }
        }
    }

    fn forget_backend(&mut self, backend: &Backend, id: u32) {
        if self.backend_ids.get(backend) == Some(&id) {
            self.backend_ids.remove(backend);
        }
    }
}
