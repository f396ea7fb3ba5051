//! Where Services and EndpointSlices come from. Every source publishes whole snapshots of its
//! objects on a watch channel; the sync loop only ever sees [`Inputs`].

pub mod kube;
pub mod manifests;

use std::sync::Arc;

use k8s_openapi::api::{
    core::v1::{Node, Service},
    discovery::v1::EndpointSlice,
};

/// The objects the desired state is computed from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub services: Vec<Service>,
    pub slices: Vec<EndpointSlice>,
    /// This node's own Node object, when the source knows it (zone, addresses).
    pub node: Option<Node>,
}

pub type InputsRx = tokio::sync::watch::Receiver<Arc<Inputs>>;

impl Inputs {
    /// How many Services and EndpointSlices were added, changed or removed since `old`, for
    /// kube-proxy's change counters. O(objects): fine while each sync is O(objects) anyway.
    pub fn changes_since(&self, old: &Inputs) -> (u64, u64) {
        fn changed<T: PartialEq>(
            old: &[T],
            new: &[T],
            key: impl Fn(&T) -> (Option<&String>, Option<&String>),
        ) -> u64 {
            use std::collections::BTreeMap;
            let before: BTreeMap<_, &T> = old.iter().map(|o| (key(o), o)).collect();
            let after: BTreeMap<_, &T> = new.iter().map(|o| (key(o), o)).collect();
            let modified_or_added = after
                .iter()
                .filter(|(k, v)| before.get(k).is_none_or(|b| b != *v))
                .count();
            let removed = before.keys().filter(|k| !after.contains_key(k)).count();
            (modified_or_added + removed) as u64
        }
        (
            changed(&old.services, &self.services, |s| {
                (s.metadata.namespace.as_ref(), s.metadata.name.as_ref())
            }),
            changed(&old.slices, &self.slices, |s| {
                (s.metadata.namespace.as_ref(), s.metadata.name.as_ref())
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ip: &str) -> Service {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"clusterIP": ip}
        }))
        .unwrap()
    }

    #[test]
    fn counts_added_changed_and_removed_objects() {
        let old = Inputs {
            services: vec![
                svc("a", "10.96.0.1"),
                svc("b", "10.96.0.2"),
                svc("c", "10.96.0.3"),
            ],
            ..Inputs::default()
        };
        let new = Inputs {
            services: vec![
                svc("a", "10.96.0.1"),
                svc("b", "10.96.0.9"),
                svc("d", "10.96.0.4"),
            ],
            ..Inputs::default()
        };
        // b changed, c removed, d added; a unchanged.
        assert_eq!(new.changes_since(&old), (3, 0));
        assert_eq!(new.changes_since(&new), (0, 0));
    }
}
