//! Where Services and EndpointSlices come from. Every source records what changed, object by
//! object, in a [`Feed`]; the sync loop drains it and applies only those changes, so the cost
//! of a change does not grow with the number of objects.

pub mod kube;
pub mod manifests;

use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Node;
use tokio::sync::watch;

use crate::{
    fast::HashMap,
    model::{ServiceInput, ServiceName, SliceInput},
};

/// Changes not yet applied, the latest per object: `None` means deleted. An object changed
/// and changed back still appears; the consumer compares with what it has.
#[derive(Debug, Default)]
pub struct Changes {
    pub services: HashMap<ServiceName, Option<Arc<ServiceInput>>>,
    /// Keyed by the slice's own namespace/name.
    pub slices: HashMap<ServiceName, Option<Arc<SliceInput>>>,
    /// `Some` when this node's Node object changed (to `None`: it is gone).
    pub node: Option<Option<Arc<Node>>>,
}

impl Changes {
    pub fn upsert_service(&mut self, service: Arc<ServiceInput>) {
        self.services.insert(service.name.clone(), Some(service));
    }

    pub fn delete_service(&mut self, name: ServiceName) {
        self.services.insert(name, None);
    }

    pub fn upsert_slice(&mut self, name: ServiceName, slice: Arc<SliceInput>) {
        self.slices.insert(name, Some(slice));
    }

    pub fn delete_slice(&mut self, name: ServiceName) {
        self.slices.insert(name, None);
    }

    pub fn set_node(&mut self, node: Option<Arc<Node>>) {
        self.node = Some(node);
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty() && self.node.is_none()
    }
}

/// Shared by a source and the sync loop: the source records changes and publishes, the
/// loop wakes on a publication and takes what has accumulated.
#[derive(Debug)]
pub struct Feed {
    pending: Mutex<Changes>,
    /// Counts publications; the sync loop waits on it.
    published: watch::Sender<u64>,
}

impl Feed {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::default(),
            published: watch::channel(0).0,
        })
    }

    /// Records changes without waking the loop: a source publishes once per burst.
    pub fn record(&self, change: impl FnOnce(&mut Changes)) {
        change(&mut self.pending.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Wakes the loop for what was recorded.
    pub fn publish(&self) {
        self.published.send_modify(|n| *n += 1);
    }

    /// [`Feed::record`] then [`Feed::publish`].
    pub fn update(&self, change: impl FnOnce(&mut Changes)) {
        self.record(change);
        self.publish();
    }

    /// Publications so far.
    pub fn publications(&self) -> u64 {
        *self.published.borrow()
    }

    /// Resolves once every [`FeedRx`] is gone: nobody consumes the changes any more.
    pub async fn closed(&self) {
        self.published.closed().await;
    }

    /// A receiver that has seen every publication so far.
    pub fn subscribe(self: &Arc<Self>) -> FeedRx {
        FeedRx {
            feed: self.clone(),
            published: self.published.subscribe(),
        }
    }

    fn take(&self) -> Changes {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Services and EndpointSlices with changes waiting.
    pub fn pending(&self) -> (usize, usize) {
        let pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        (pending.services.len(), pending.slices.len())
    }
}

/// The sync loop's end of a [`Feed`].
#[derive(Debug)]
pub struct FeedRx {
    feed: Arc<Feed>,
    published: watch::Receiver<u64>,
}

impl FeedRx {
    /// Waits for a publication not yet seen; `Err` when the source is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.published.changed().await
    }

    /// Takes every change recorded so far and marks the publications seen: a change that
    /// arrived while a sync was waiting is applied now and must not wake a second,
    /// identical sync.
    pub fn take(&mut self) -> Changes {
        self.published.borrow_and_update();
        self.feed.take()
    }

    pub fn has_changed(&self) -> bool {
        self.published.has_changed().unwrap_or(false)
    }

    pub fn feed(&self) -> &Arc<Feed> {
        &self.feed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> Arc<ServiceInput> {
        let svc = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip}
        }))
        .unwrap();
        Arc::new(ServiceInput::from_service(&svc))
    }

    #[tokio::test]
    async fn changes_are_coalesced_per_object_and_taken_once() {
        let feed = Feed::new();
        let mut rx = feed.subscribe();
        feed.record(|c| c.upsert_service(svc("a", "10.96.0.1")));
        assert!(!rx.has_changed(), "recording alone does not wake the loop");
        feed.update(|c| {
            c.upsert_service(svc("a", "10.96.0.2"));
            c.upsert_service(svc("b", "10.96.0.3"));
            c.delete_slice(ServiceName::new("default", "b-1"));
        });
        assert_eq!(feed.pending(), (2, 1));
        rx.changed().await.unwrap();
        let changes = rx.take();
        assert_eq!(changes.services.len(), 2);
        assert_eq!(
            changes.services[&ServiceName::new("default", "a")],
            Some(svc("a", "10.96.0.2")),
            "the latest version of an object"
        );
        assert_eq!(changes.slices[&ServiceName::new("default", "b-1")], None);
        assert!(!rx.has_changed());
        assert!(rx.take().is_empty());
        assert_eq!(feed.publications(), 1);
    }
}
