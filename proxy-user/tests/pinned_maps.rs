//! The plan against the kernel's own maps (root): batched writes land as the mirror says,
//! and a map that fills up mid-batch fails only that frontend, rolled back.

use std::{collections::BTreeSet, path::PathBuf};

use proxy_common::{Backend, ServiceKey, algorithm};
use sluice::{
    config::MapSizes,
    dataplane::{
        layout::{DesiredMaps, FrontendEntry},
        loader, plan,
    },
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

struct Pinned(PathBuf);

impl Pinned {
    fn new(test: &str) -> Self {
        sluice_testbed::require_root();
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/sluice-test-{test}-{}",
            std::process::id()
        )))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = loader::cleanup(&self.0);
    }
}

#[test]
fn batched_writes_reach_the_kernel_as_planned() {
    let pin = Pinned::new("batch");
    let mut maps = loader::load(&pin.0, &[], MapSizes::default()).unwrap().maps;
    let mut mirror = maps.snapshot();
    let first = desired(&[(1, &[1, 2, 3, 4]), (2, &[3, 4, 5]), (3, &[])]);
    let report = plan::sync(&mut maps, &mut mirror, &first);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(maps.snapshot(), mirror);
    assert_eq!(
        maps.snapshot().live_backends(&key(1)),
        Some(vec![backend(1), backend(2), backend(3), backend(4)])
    );

    let next = desired(&[(1, &[4, 6, 7]), (2, &[3, 4, 5])]);
    let changed: BTreeSet<ServiceKey> = [key(1), key(3)].into();
    let report = plan::sync_changed(&mut maps, &mut mirror, &next, &changed);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let actual = maps.snapshot();
    assert_eq!(actual, mirror);
    assert_eq!(
        actual.live_backends(&key(1)),
        Some(vec![backend(4), backend(6), backend(7)])
    );
    assert_eq!(actual.services.get(&key(3)), None);
    assert_eq!(actual.backends.len(), 5, "backends 1 and 2 collected");
    assert_eq!(actual.slots.len(), 6, "old bank collected");
}

#[test]
fn a_map_that_fills_mid_batch_fails_only_that_frontend() {
    let pin = Pinned::new("full");
    let sizes = MapSizes {
        slots: 5,
        ..MapSizes::default()
    };
    let mut maps = loader::load(&pin.0, &[], sizes).unwrap().maps;
    let mut mirror = maps.snapshot();
    let report = plan::sync(&mut maps, &mut mirror, &desired(&[(1, &[1, 2, 3])]));
    assert!(report.failed.is_empty(), "{:?}", report.failed);

    // Frontend 2's slots fill the map after two of its three.
    let want = desired(&[(1, &[1, 2, 3]), (2, &[4, 5, 6])]);
    let report = plan::sync(&mut maps, &mut mirror, &want);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, key(2));
    assert!(
        report.failed[0].1.to_string().contains("maps.slots"),
        "{}",
        report.failed[0].1
    );
    let actual = maps.snapshot();
    assert_eq!(actual, mirror, "the mirror follows the rollback");
    assert_eq!(actual.services.get(&key(2)), None);
    assert_eq!(actual.slots.len(), 3, "its slots rolled back");
    assert_eq!(actual.backends.len(), 3, "its backends rolled back");
    assert_eq!(
        actual.live_backends(&key(1)),
        Some(vec![backend(1), backend(2), backend(3)])
    );
}
