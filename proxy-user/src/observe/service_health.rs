//! healthCheckNodePort listeners: one per Service that asks for one (externalTrafficPolicy:
//! Local LoadBalancers), started and stopped as the controller publishes the checks.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
};

use tokio::sync::{oneshot, watch};
use tracing::warn;

use super::{Observer, Routes, Server};

/// What a healthCheckNodePort reports for its Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceCheck {
    pub namespace: String,
    pub name: String,
    /// Ready endpoints of the Service on this node.
    pub local_endpoints: usize,
}

/// The checks by port, as published by the controller after each sync.
pub type HealthChecks = Arc<BTreeMap<u16, ServiceCheck>>;
pub type HealthChecksRx = watch::Receiver<HealthChecks>;

/// Keeps one listener per published port until `checks` closes. A port that cannot be bound
/// (in use) is logged and tried again at the next change.
pub async fn run(mut checks: HealthChecksRx, observer: Observer) {
    let mut running: BTreeMap<u16, oneshot::Sender<()>> = BTreeMap::new();
    loop {
        let wanted: Vec<u16> = checks.borrow_and_update().keys().copied().collect();
        // Dropping a listener's sender stops it.
        running.retain(|port, _| wanted.contains(port));
        for port in wanted {
            let Entry::Vacant(slot) = running.entry(port) else {
                continue;
            };
            let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
            match Server::bind(
                addr,
                Routes::service_health(&observer, port, checks.clone()),
            )
            .await
            {
                Ok(server) => {
                    let (stop, stopped) = oneshot::channel::<()>();
                    tokio::spawn(server.run(async move {
                        let _ = stopped.await;
                    }));
                    slot.insert(stop);
                }
                Err(e) => warn!(error = %e, "healthCheckNodePort not served"),
            }
        }
        if checks.changed().await.is_err() {
            return;
        }
    }
}
