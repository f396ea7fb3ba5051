//! Turning desired map contents into ordered map writes (pure).
//!
//! The update protocol, which keeps every packet's view consistent:
//! 1. For each changed frontend, one *group*: new backends, then the frontend's slots written
//!    into its idle bank, then its master entry replaced in one element update that flips the
//!    live bank and count. Until that last write, readers see the old set; after it, the new.
//!    A group that fails (a full map) is rolled back whole; the old entry keeps serving.
//! 2. Then garbage, computed from what is now live: master entries of removed frontends
//!    first, then slots no live bank uses, then backends no live slot uses.
//!
//! A full sync plans every frontend and scans every entry for garbage; an incremental one
//! plans only the frontends that changed and collects only what they left behind, using the
//! indexes the [`Snapshot`] keeps.

use std::collections::BTreeSet;

use proxy_common::{Backend, ServiceKey, ServiceValue, SlotKey, service_flags};

use super::{
    layout::{DesiredMaps, FrontendEntry},
    snapshot::Snapshot,
};
use crate::fast::{HashMap, HashSet};

/// One map write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    PutBackend(u32, Backend),
    PutSlot(SlotKey, u32),
    PutService(ServiceKey, ServiceValue),
    DeleteService(ServiceKey),
    DeleteSlot(SlotKey),
    DeleteBackend(u32),
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("map {map} is full: raise `{setting}` in the Sluice configuration")]
    Full {
        map: &'static str,
        setting: &'static str,
    },
    #[error("writing map {map} failed: {source}")]
    Kernel {
        map: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Something that executes map writes: the kernel's maps, or a [`Snapshot`] in tests.
pub trait MapStore {
    fn apply(&mut self, op: &Op) -> Result<(), StoreError>;

    /// Applies `ops` in order; on failure, returns how many were applied and the error.
    /// Stores that can write several entries in one call override it.
    fn apply_all(&mut self, ops: &[Op]) -> Result<(), (usize, StoreError)> {
        for (done, op) in ops.iter().enumerate() {
            self.apply(op).map_err(|e| (done, e))?;
        }
        Ok(())
    }
}

/// The writes that move one frontend to its desired contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub key: ServiceKey,
    pub ops: Vec<Op>,
}

/// Plans the groups for every frontend in `desired` that differs from `current`.
pub fn plan_updates(current: &Snapshot, desired: &DesiredMaps) -> Vec<Group> {
    plan_groups(current, desired.iter(), &mut IdAllocator::new(current))
}

fn plan_groups<'a>(
    current: &Snapshot,
    desired: impl Iterator<Item = (&'a ServiceKey, &'a FrontendEntry)>,
    ids: &mut IdAllocator,
) -> Vec<Group> {
    let mut groups = Vec::new();
    for (key, entry) in desired {
        let backend_ids: Vec<u32> = entry.backends.iter().map(|b| ids.backend(b)).collect();
        let mut ops = Vec::with_capacity(2 * backend_ids.len() + 1);
        for (&id, backend) in backend_ids.iter().zip(&entry.backends) {
            if current.backends.get(&id) != Some(backend)
                && !ops.contains(&Op::PutBackend(id, *backend))
            {
                ops.push(Op::PutBackend(id, *backend));
            }
        }
        let existing = current.services.get(key);
        let live = current.live_backend_ids(key);
        let (id, bank) = match (existing, live) {
            (Some(svc), Some(live)) if live == backend_ids => (svc.id, svc.bank),
            (Some(svc), _) => (svc.id, 1 - svc.bank),
            (None, _) => (ids.service(), 0),
        };
        let count = u32::try_from(backend_ids.len()).unwrap_or(u32::MAX);
        if existing.is_none_or(|svc| svc.bank != bank) {
            for (slot, &backend_id) in (0..count).zip(&backend_ids) {
                let slot_key = SlotKey::new(id, bank, slot);
                if current.slots.get(&slot_key) != Some(&backend_id) {
                    ops.push(Op::PutSlot(slot_key, backend_id));
                }
            }
        }
        let value = ServiceValue {
            id,
            count,
            bank,
            algorithm: entry.algorithm,
            flags: service_flags::PRESENT | entry.flags,
            affinity_timeout: entry.affinity_timeout,
        };
        if existing != Some(&value) {
            ops.push(Op::PutService(*key, value));
        }
        if !ops.is_empty() {
            groups.push(Group { key: *key, ops });
        }
    }
    groups
}

/// Plans the deletions that `current` needs once the frontends in `changed` are as desired:
/// the master entries and slots they no longer use, then the backends no slot uses any more.
pub fn plan_garbage_of(
    current: &Snapshot,
    desired: &DesiredMaps,
    changed: &BTreeSet<ServiceKey>,
) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut stale_slots = Vec::new();
    for key in changed {
        let Some(value) = current.services.get(key) else {
            continue;
        };
        let wanted = desired.contains_key(key);
        if !wanted {
            ops.push(Op::DeleteService(*key));
        }
        stale_slots.extend(
            current
                .slots_of(value.id)
                .filter(|(k, _)| !wanted || k.bank != value.bank || k.slot >= value.count),
        );
    }
    let mut dropped: HashMap<u32, u32> = HashMap::default();
    for (key, backend_id) in stale_slots {
        ops.push(Op::DeleteSlot(*key));
        *dropped.entry(*backend_id).or_default() += 1;
    }
    let refs = |id: &u32| current.index.slot_refs.get(id).copied().unwrap_or(0);
    let mut orphans: BTreeSet<u32> = dropped
        .iter()
        .filter(|(id, n)| refs(id) == **n && current.backends.contains_key(id))
        .map(|(id, _)| *id)
        .collect();
    orphans.extend(current.index.orphans.iter().copied());
    ops.extend(orphans.into_iter().map(Op::DeleteBackend));
    ops
}

/// Plans the deletions that `current` needs once every frontend in it is as desired: entries
/// nothing live refers to.
pub fn plan_garbage(current: &Snapshot, desired: &DesiredMaps) -> Vec<Op> {
    let mut ops: Vec<Op> = current
        .services
        .keys()
        .filter(|k| !desired.contains_key(k))
        .map(|k| Op::DeleteService(*k))
        .collect();
    let live: HashMap<u32, &ServiceValue> = current
        .services
        .iter()
        .filter(|(k, _)| desired.contains_key(k))
        .map(|(_, v)| (v.id, v))
        .collect();
    let mut used_backends: HashSet<u32> = HashSet::default();
    used_backends.reserve(current.backends.len());
    for (slot_key, backend_id) in &current.slots {
        let is_live = live
            .get(&slot_key.service_id)
            .is_some_and(|svc| svc.bank == slot_key.bank && slot_key.slot < svc.count);
        if is_live {
            used_backends.insert(*backend_id);
        } else {
            ops.push(Op::DeleteSlot(*slot_key));
        }
    }
    ops.extend(
        current
            .backends
            .keys()
            .filter(|id| !used_backends.contains(id))
            .map(|id| Op::DeleteBackend(*id)),
    );
    ops
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub writes: usize,
    pub deletes: usize,
    pub failed: Vec<(ServiceKey, StoreError)>,
}

/// Brings `store` (and `mirror`, its in-memory image) to `desired`, group by group, then
/// collects garbage. A failed group is rolled back and reported; the others proceed.
/// Considers every frontend and every entry, so it also repairs entries changed behind
/// Sluice's back once `mirror` is re-read from the kernel.
pub fn sync(store: &mut impl MapStore, mirror: &mut Snapshot, desired: &DesiredMaps) -> SyncReport {
    mirror.reindex();
    let mut report = plan_and_apply(store, mirror, desired.iter());
    // Frontends whose update failed keep their old (still complete) entries, and a new one
    // that failed left nothing behind, so the desired keys are exactly what is live.
    for op in plan_garbage(mirror, desired) {
        if store.apply(&op).is_ok() {
            mirror.apply(&op).expect("the mirror has no limits");
            report.deletes += 1;
        }
    }
    report
}

/// [`sync`] for the frontends in `changed` only, which may be in `desired` or not (removed):
/// O(changed frontends and their entries), however many frontends there are. Relies on the
/// indexes of `mirror`, which the first [`sync`] builds.
pub fn sync_changed(
    store: &mut impl MapStore,
    mirror: &mut Snapshot,
    desired: &DesiredMaps,
    changed: &BTreeSet<ServiceKey>,
) -> SyncReport {
    let wanted = changed.iter().filter_map(|key| desired.get_key_value(key));
    let mut report = plan_and_apply(store, mirror, wanted);
    for op in plan_garbage_of(mirror, desired, changed) {
        if store.apply(&op).is_ok() {
            mirror.apply(&op).expect("the mirror has no limits");
            report.deletes += 1;
        }
    }
    report
}

/// Plans and applies a chunk of frontends at a time, so that a cold sync of 100,000 never
/// holds every frontend's writes in memory at once.
fn plan_and_apply<'a>(
    store: &mut impl MapStore,
    mirror: &mut Snapshot,
    desired: impl Iterator<Item = (&'a ServiceKey, &'a FrontendEntry)>,
) -> SyncReport {
    const CHUNK: usize = 1024;
    let mut report = SyncReport::default();
    let mut desired = desired.peekable();
    while desired.peek().is_some() {
        let mut ids = IdAllocator::new(mirror);
        let groups = plan_groups(mirror, desired.by_ref().take(CHUNK), &mut ids);
        (mirror.index.next_backend, mirror.index.next_service) = ids.cursors();
        let done = apply_groups(store, mirror, groups);
        report.writes += done.writes;
        report.failed.extend(done.failed);
    }
    report
}

fn apply_groups(
    store: &mut impl MapStore,
    mirror: &mut Snapshot,
    groups: Vec<Group>,
) -> SyncReport {
    let mut report = SyncReport::default();
    for mut group in groups {
        // A backend another group already wrote in this sync needs no second write.
        group.ops.retain(
            |op| !matches!(op, Op::PutBackend(id, b) if mirror.backends.get(id) == Some(b)),
        );
        let (done, failure) = match store.apply_all(&group.ops) {
            Ok(()) => (group.ops.len(), None),
            Err((done, error)) => (done, Some(error)),
        };
        // A group writes each entry once, so the inverse of each write is read from the
        // mirror as it was before the group; only a failed group needs them.
        let undo: Vec<Op> = match failure {
            Some(_) => group.ops[..done]
                .iter()
                .map(|op| inverse(mirror, op))
                .collect(),
            None => Vec::new(),
        };
        for op in &group.ops[..done] {
            mirror.apply(op).expect("the mirror has no limits");
        }
        report.writes += done;
        if let Some(error) = failure {
            for op in undo.iter().rev() {
                // Undoing only deletes or restores entries that existed a moment ago, so it
                // cannot run out of room; a kernel error here leaves garbage for the next
                // sync, never a live entry pointing nowhere.
                if store.apply(op).is_ok() {
                    mirror.apply(op).expect("the mirror has no limits");
                }
            }
            report.failed.push((group.key, error));
        }
    }
    report
}

/// The write that undoes `op` against the state in `mirror`.
fn inverse(mirror: &Snapshot, op: &Op) -> Op {
    match *op {
        Op::PutService(k, _) | Op::DeleteService(k) => match mirror.services.get(&k) {
            Some(v) => Op::PutService(k, *v),
            None => Op::DeleteService(k),
        },
        Op::PutSlot(k, _) | Op::DeleteSlot(k) => match mirror.slots.get(&k) {
            Some(v) => Op::PutSlot(k, *v),
            None => Op::DeleteSlot(k),
        },
        Op::PutBackend(k, _) | Op::DeleteBackend(k) => match mirror.backends.get(&k) {
            Some(v) => Op::PutBackend(k, *v),
            None => Op::DeleteBackend(k),
        },
    }
}

/// Hands out ids not in use, reusing a backend's id when the same backend already exists.
/// The searches only move forward, so an id handed out in this plan (not in the snapshot
/// yet) is not looked at again.
struct IdAllocator<'a> {
    current: &'a Snapshot,
    new_backends: HashMap<Backend, u32>,
    next_backend: u32,
    next_service: u32,
}

impl<'a> IdAllocator<'a> {
    fn new(current: &'a Snapshot) -> Self {
        Self {
            current,
            new_backends: HashMap::default(),
            next_backend: current.index.next_backend,
            next_service: current.index.next_service,
        }
    }

    fn backend(&mut self, backend: &Backend) -> u32 {
        if let Some(&id) = self
            .current
            .index
            .backend_ids
            .get(backend)
            .or_else(|| self.new_backends.get(backend))
        {
            return id;
        }
        let current = self.current;
        let id = next_free(&mut self.next_backend, |id| {
            current.backends.contains_key(&id)
        });
        self.new_backends.insert(*backend, id);
        id
    }

    fn service(&mut self) -> u32 {
        let current = self.current;
        // Ids with leftover slots stay taken until garbage collection removes them, so a new
        // frontend never inherits another's slots.
        next_free(&mut self.next_service, |id| {
            current.index.service_ids.contains_key(&id) || current.slots_of(id).next().is_some()
        })
    }

    /// Where the next plan's searches start.
    fn cursors(&self) -> (u32, u32) {
        (self.next_backend, self.next_service)
    }
}

/// The first id from `*next` on (0 is never used, and the search wraps) that is not `used`.
fn next_free(next: &mut u32, used: impl Fn(u32) -> bool) -> u32 {
    loop {
        let candidate = (*next).max(1);
        *next = candidate.wrapping_add(1);
        if !used(candidate) {
            return candidate;
        }
    }
}

#[cfg(test)]
mod tests;
