//! The sync loop: waits for input changes, coalesces them, computes the desired state and
//! applies what changed; periodically re-reads the kernel's maps to repair drift.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use tracing::{debug, error, info, warn};

use crate::{
    dataplane::{
        layout::desired_maps,
        maps::PinnedMaps,
        plan::{self, SyncReport},
        snapshot::Snapshot,
    },
    model::{DesiredState, NodeContext},
    source::InputsRx,
};

#[derive(Clone, Copy, Debug)]
pub struct SyncSettings {
    /// Changes arriving within this period after a sync are applied together.
    pub min_sync_period: Duration,
    /// Interval of full reconciles against the kernel's maps.
    pub sync_period: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
        }
    }
}

/// Drives the maps towards the inputs until `inputs` closes.
pub struct Controller {
    maps: PinnedMaps,
    mirror: Snapshot,
    node: NodeContext,
    settings: SyncSettings,
    last_skipped: BTreeSet<String>,
}

impl Controller {
    pub fn new(maps: PinnedMaps, node: NodeContext, settings: SyncSettings) -> Self {
        // Adopt whatever an earlier run left in the maps: the first sync diffs against it
        // instead of flushing, so live flows keep their backends.
        let mirror = maps.snapshot();
        Self {
            maps,
            mirror,
            node,
            settings,
            last_skipped: BTreeSet::new(),
        }
    }

    pub async fn run(mut self, mut inputs: InputsRx) {
        // Nothing is written before the source has delivered its first complete view:
        // syncing an empty view would wipe the datapath on every restart.
        if inputs.changed().await.is_err() {
            return;
        }
        let mut last_sync = Instant::now() - self.settings.min_sync_period;
        let mut next_full = Instant::now() + self.settings.sync_period;
        let mut pending = true;
        loop {
            if pending {
                let ready_at = last_sync + self.settings.min_sync_period;
                tokio::time::sleep_until(ready_at.into()).await;
                self.sync_once(&inputs, false);
                last_sync = Instant::now();
                pending = false;
            }
            tokio::select! {
                changed = inputs.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    pending = true;
                }
                _ = tokio::time::sleep_until(next_full.into()) => {
                    self.sync_once(&inputs, true);
                    last_sync = Instant::now();
                    next_full = Instant::now() + self.settings.sync_period;
                }
            }
        }
    }

    /// One sync. `full` re-reads the kernel's maps first, so entries changed or deleted behind
    /// Sluice's back are put right.
    pub fn sync_once(&mut self, inputs: &InputsRx, full: bool) -> SyncReport {
        let started = Instant::now();
        let snapshot = inputs.borrow().clone();
        let state = DesiredState::build(&snapshot.services, &snapshot.slices, &self.node);
        self.report_skipped(&state);
        let (desired, unsupported) = desired_maps(&state);
        if !unsupported.is_empty() {
            debug!(
                count = unsupported.len(),
                "IPv6 frontends are not served by this datapath yet"
            );
        }
        if full {
            let actual = self.maps.snapshot();
            if actual != self.mirror {
                warn!("map contents differ from what Sluice wrote; repairing");
            }
            self.mirror = actual;
        }
        let report = plan::sync(&mut self.maps, &mut self.mirror, &desired);
        for (key, err) in &report.failed {
            error!(frontend = ?key, error = %err, "frontend not updated; its previous entry keeps serving");
        }
        let level_info = report.writes + report.deletes > 0;
        if level_info {
            info!(
                frontends = desired.len(),
                writes = report.writes,
                deletes = report.deletes,
                failed = report.failed.len(),
                full,
                elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                "maps synced"
            );
        }
        report
    }

    fn report_skipped(&mut self, state: &DesiredState) {
        let now: BTreeSet<String> = state.skipped.iter().map(ToString::to_string).collect();
        for line in now.difference(&self.last_skipped) {
            error!("{line}; other Services are unaffected");
        }
        self.last_skipped = now;
    }
}
