use std::collections::BTreeMap;

use proptest::prelude::*;
use proxy_common::{Backend, ServiceKey, algorithm};

use super::*;
use crate::dataplane::{
    layout::{DesiredMaps, FrontendEntry},
    snapshot::{Limits, Snapshot},
};

fn key(n: u8) -> ServiceKey {
    ServiceKey::new(u32::from_ne_bytes([10, 96, 0, n]), 80u16.to_be(), 6)
}

fn backend(n: u8) -> Backend {
    Backend {
        addr: u32::from_ne_bytes([10, 0, 0, n]),
        port: 8080u16.to_be(),
        proto: 6,
        flags: 0,
    }
}

fn desired(entries: &[(u8, &[u8])]) -> DesiredMaps {
    entries
        .iter()
        .map(|(k, bs)| {
            (
                key(*k),
                FrontendEntry {
                    backends: bs.iter().map(|b| backend(*b)).collect(),
                    algorithm: algorithm::RANDOM,
                    flags: 0,
                    affinity_timeout: 0,
                },
            )
        })
        .collect()
}

/// A store that checks, after every single write, that each frontend's live view is either
/// exactly what it was before the sync or exactly what is desired.
struct CheckingStore<'a> {
    inner: Snapshot,
    before: BTreeMap<ServiceKey, Vec<Backend>>,
    desired: &'a DesiredMaps,
    writes: usize,
}

impl MapStore for CheckingStore<'_> {
    fn apply(&mut self, op: &Op) -> Result<(), StoreError> {
        self.inner.apply(op)?;
        self.writes += 1;
        assert!(self.inner.is_consistent(), "inconsistent after {op:?}");
        for k in self.inner.services.keys() {
            let live = self.inner.live_backends(k).unwrap();
            let old = self.before.get(k);
            let new = self.desired.get(k).map(|e| &e.backends);
            assert!(
                Some(&live) == old || Some(&live) == new,
                "frontend {k:?} shows {live:?}, neither old {old:?} nor new {new:?}"
            );
        }
        Ok(())
    }
}

fn sync_checked(current: &Snapshot, want: &DesiredMaps) -> (Snapshot, SyncReport) {
    let before = current
        .services
        .keys()
        .map(|k| (*k, current.live_backends(k).unwrap()))
        .collect();
    let mut store = CheckingStore {
        inner: current.clone(),
        before,
        desired: want,
        writes: 0,
    };
    let mut mirror = current.clone();
    let report = sync(&mut store, &mut mirror, want);
    assert_eq!(
        store.inner, mirror,
        "mirror must equal the store after a sync"
    );
    (mirror, report)
}

fn assert_serves(snapshot: &Snapshot, want: &DesiredMaps) {
    assert_eq!(snapshot.services.len(), want.len());
    for (k, entry) in want {
        assert_eq!(
            snapshot.live_backends(k).as_ref(),
            Some(&entry.backends),
            "frontend {k:?}"
        );
    }
}

#[test]
fn new_frontend_writes_backends_then_slots_then_master() {
    let want = desired(&[(1, &[1, 2, 3])]);
    let groups = plan_updates(&Snapshot::default(), &want);
    assert_eq!(groups.len(), 1);
    let ops = &groups[0].ops;
    assert_eq!(ops.len(), 3 + 3 + 1);
    assert!(ops[..3].iter().all(|o| matches!(o, Op::PutBackend(..))));
    assert!(ops[3..6].iter().all(|o| matches!(o, Op::PutSlot(..))));
    assert!(matches!(ops[6], Op::PutService(k, v) if k == key(1) && v.count == 3 && v.bank == 0));
}

#[test]
fn unchanged_state_plans_nothing() {
    let want = desired(&[(1, &[1, 2]), (2, &[2, 3])]);
    let (state, _) = sync_checked(&Snapshot::default(), &want);
    assert!(plan_updates(&state, &want).is_empty());
    assert!(plan_garbage(&state, &want).is_empty());
}

#[test]
fn changing_backends_flips_bank_and_collects_old_slots_and_backends() {
    let (state, _) = sync_checked(&Snapshot::default(), &desired(&[(1, &[1, 2, 3])]));
    let want = desired(&[(1, &[2, 4])]);
    let (state2, report) = sync_checked(&state, &want);
    assert_serves(&state2, &want);
    assert_eq!(state2.services[&key(1)].bank, 1);
    assert_eq!(
        state2.services[&key(1)].id,
        state.services[&key(1)].id,
        "id is stable"
    );
    assert_eq!(state2.slots.len(), 2, "old bank removed");
    assert_eq!(state2.backends.len(), 2, "backends 1 and 3 removed");
    assert!(report.deletes >= 3 + 2);
    // The shared backend keeps its id, so conntrack entries pointing at it stay valid.
    let id_of =
        |s: &Snapshot, b: Backend| s.backends.iter().find(|(_, v)| **v == b).map(|(k, _)| *k);
    assert_eq!(id_of(&state, backend(2)), id_of(&state2, backend(2)));
}

#[test]
fn removed_frontend_is_deleted_with_its_slots_and_unshared_backends() {
    let (state, _) = sync_checked(
        &Snapshot::default(),
        &desired(&[(1, &[1, 2]), (2, &[2, 3])]),
    );
    let want = desired(&[(2, &[2, 3])]);
    let (state2, _) = sync_checked(&state, &want);
    assert_serves(&state2, &want);
    assert_eq!(state2.backends.len(), 2);
    assert_eq!(state2.slots.len(), 2);
}

#[test]
fn frontend_without_endpoints_has_count_zero() {
    let want = desired(&[(1, &[])]);
    let (state, _) = sync_checked(&Snapshot::default(), &want);
    assert_eq!(state.services[&key(1)].count, 0);
}

#[test]
fn full_map_fails_only_that_frontend_and_keeps_its_old_entry() {
    let (mut state, _) = sync_checked(&Snapshot::default(), &desired(&[(1, &[1]), (2, &[2])]));
    state.limits = Some(Limits {
        services: 10,
        slots: 4,
        backends: 10,
    });
    // Frontend 1 would need 3 more slots in its idle bank (2 live + 3 > 4); frontend 3 fits.
    let want = desired(&[(1, &[1, 3, 4]), (2, &[2]), (3, &[5])]);
    let mut mirror = state.clone();
    let mut store = state.clone();
    let report = sync(&mut store, &mut mirror, &want);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, key(1));
    assert!(
        report.failed[0].1.to_string().contains("maps.slots"),
        "the error names the setting that sizes the map: {}",
        report.failed[0].1
    );
    assert_eq!(
        store.live_backends(&key(1)),
        Some(vec![backend(1)]),
        "old entry serves"
    );
    assert_eq!(store.live_backends(&key(3)), Some(vec![backend(5)]));
    assert!(store.is_consistent());
    assert!(
        !store.backends.values().any(|b| *b == backend(3)),
        "rolled back"
    );
}

#[test]
fn drift_is_repaired_from_a_fresh_snapshot() {
    let want = desired(&[(1, &[1, 2]), (2, &[3])]);
    let (mut actual, _) = sync_checked(&Snapshot::default(), &want);
    // Someone deletes a master entry and corrupts a slot behind our back.
    actual.services.remove(&key(2));
    let svc1 = actual.services[&key(1)];
    actual
        .slots
        .insert(proxy_common::SlotKey::new(svc1.id, svc1.bank, 0), 999);
    // The corrupted start is itself inconsistent, so the per-write check does not apply.
    let mut repaired = actual.clone();
    let report = sync(&mut actual, &mut repaired, &want);
    assert!(report.failed.is_empty());
    assert_eq!(actual, repaired);
    assert_serves(&repaired, &want);
    assert!(!repaired.slots.values().any(|v| *v == 999));
}

fn arb_desired() -> impl Strategy<Value = DesiredMaps> {
    prop::collection::btree_map(0u8..6, prop::collection::vec(0u8..8, 0..5), 0..6).prop_map(|m| {
        m.into_iter()
            .map(|(k, mut bs)| {
                bs.dedup();
                (
                    key(k),
                    FrontendEntry {
                        backends: bs.into_iter().map(backend).collect(),
                        algorithm: algorithm::RANDOM,
                        flags: 0,
                        affinity_timeout: 0,
                    },
                )
            })
            .collect()
    })
}

proptest! {
    /// Any sequence of desired states is reached exactly, and at every write in between each
    /// frontend shows its whole old or whole new backend set.
    #[test]
    fn every_sequence_converges_and_every_step_is_consistent(steps in prop::collection::vec(arb_desired(), 1..8)) {
        let mut state = Snapshot::default();
        for want in &steps {
            let (next, report) = sync_checked(&state, want);
            prop_assert!(report.failed.is_empty());
            assert_serves(&next, want);
            let referenced: std::collections::BTreeSet<u32> = next.slots.values().copied().collect();
            prop_assert_eq!(referenced.len(), next.backends.len(), "no orphan backends");
            state = next;
        }
    }
}
