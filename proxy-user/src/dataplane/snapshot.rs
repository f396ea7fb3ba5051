//! An in-memory image of the service, slot and backend maps.
//!
//! The controller keeps one as a mirror of what it wrote (so a sync diffs against memory, not
//! the kernel), re-reads it from the kernel on a full reconcile (so drift is seen), and tests
//! use it as a fake map store.

use std::collections::BTreeMap;

use proxy_common::{Backend, ServiceKey, ServiceValue, SlotKey};

use super::plan::{MapStore, Op, StoreError};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub slots: BTreeMap<SlotKey, u32>,
    pub backends: BTreeMap<u32, Backend>,
    /// Capacities to enforce, as the kernel would (tests set them; `None` = unlimited).
    pub limits: Option<Limits>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub services: usize,
    pub slots: usize,
    pub backends: usize,
}

impl Snapshot {
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
                self.services.insert(k, v);
            }
            Op::PutSlot(k, v) => {
                if let Some(l) = limits
                    && !self.slots.contains_key(&k)
                    && self.slots.len() >= l.slots
                {
                    return Err(Self::full(proxy_common::map_names::SLOTS, "maps.slots"));
                }
                self.slots.insert(k, v);
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
                self.backends.insert(k, v);
            }
            Op::DeleteService(k) => {
                self.services.remove(&k);
            }
            Op::DeleteSlot(k) => {
                self.slots.remove(&k);
            }
            Op::DeleteBackend(k) => {
                self.backends.remove(&k);
            }
        }
        Ok(())
    }
}
