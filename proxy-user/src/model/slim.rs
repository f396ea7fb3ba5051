//! Dropping what the model never reads, before objects are stored: at 100,000 Services the
//! managed fields, kubectl's last-applied-configuration annotation, selectors, target
//! references and Node images dominate memory.
//!
//! Each function rebuilds the object from the fields the model reads, so a field Kubernetes
//! adds later is dropped too rather than kept by default. Whatever starts reading another
//! field must keep it here; the slimming tests translate slimmed and full objects and compare.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{
            LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeStatus, Service,
            ServicePort, ServiceSpec, ServiceStatus,
        },
        discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    SERVICE_NAME_LABEL,
    node::ZONE_LABEL,
    settings::SCHEDULER_ANNOTATION,
    translate::{HEADLESS_LABEL, SERVICE_PROXY_NAME_LABEL},
};

/// Keeps the Service's identity, the labels and annotations the model reads, and the spec and
/// status fields that shape frontends.
pub fn slim_service(svc: &mut Service) {
    let old = std::mem::take(svc);
    *svc = Service {
        metadata: slim_meta(
            old.metadata,
            &[SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL],
            &[SCHEDULER_ANNOTATION],
        ),
        spec: old.spec.map(|s| ServiceSpec {
            type_: s.type_,
            cluster_ip: s.cluster_ip,
            cluster_ips: s.cluster_ips,
            ip_families: s.ip_families,
            external_ips: s.external_ips,
            ports: s.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| ServicePort {
                        name: p.name,
                        protocol: p.protocol,
                        port: p.port,
                        node_port: p.node_port,
                        ..ServicePort::default()
                    })
                    .collect()
            }),
            publish_not_ready_addresses: s.publish_not_ready_addresses,
            internal_traffic_policy: s.internal_traffic_policy,
            external_traffic_policy: s.external_traffic_policy,
            health_check_node_port: s.health_check_node_port,
            session_affinity: s.session_affinity,
            session_affinity_config: s.session_affinity_config,
            load_balancer_source_ranges: s.load_balancer_source_ranges,
            ..ServiceSpec::default()
        }),
        status: old.status.map(|s| ServiceStatus {
            load_balancer: s.load_balancer.map(|lb| LoadBalancerStatus {
                ingress: lb.ingress.map(|ingress| {
                    ingress
                        .into_iter()
                        .map(|i| LoadBalancerIngress {
                            ip: i.ip,
                            ip_mode: i.ip_mode,
                            ..LoadBalancerIngress::default()
                        })
                        .collect()
                }),
            }),
            conditions: None,
        }),
    };
}

/// Keeps the owner label, ports and, per endpoint, the one address the model uses, its
/// conditions, hints and node.
pub fn slim_slice(slice: &mut EndpointSlice) {
    let old = std::mem::take(slice);
    *slice = EndpointSlice {
        // The trigger time is kept for the network-programming latency metric.
        metadata: slim_meta(
            old.metadata,
            &[SERVICE_NAME_LABEL],
            &[crate::observe::LAST_CHANGE_TRIGGER_TIME],
        ),
        address_type: old.address_type,
        ports: old.ports.map(|ports| {
            ports
                .into_iter()
                .map(|p| EndpointPort {
                    name: p.name,
                    protocol: p.protocol,
                    port: p.port,
                    app_protocol: None,
                })
                .collect()
        }),
        endpoints: old
            .endpoints
            .into_iter()
            .map(|e| Endpoint {
                addresses: e.addresses.into_iter().take(1).collect(),
                conditions: e.conditions,
                hints: e.hints,
                node_name: e.node_name,
                ..Endpoint::default()
            })
            .collect(),
    };
}

/// Keeps the name, the zone label and the addresses.
pub fn slim_node(node: &mut Node) {
    let old = std::mem::take(node);
    *node = Node {
        // Deletion and the autoscaler's taint decide /healthz's node eligibility.
        metadata: ObjectMeta {
            deletion_timestamp: old.metadata.deletion_timestamp.clone(),
            ..slim_meta(old.metadata, &[ZONE_LABEL], &[])
        },
        spec: old
            .spec
            .and_then(|spec| spec.taints)
            .map(|taints| {
                taints
                    .into_iter()
                    .filter(|t| t.key == super::node::TO_BE_DELETED_TAINT)
                    .collect::<Vec<_>>()
            })
            .filter(|taints| !taints.is_empty())
            .map(|taints| k8s_openapi::api::core::v1::NodeSpec {
                taints: Some(taints),
                ..Default::default()
            }),
        status: old.status.map(|s| NodeStatus {
            addresses: s.addresses.map(|addresses| {
                addresses
                    .into_iter()
                    .map(|a| NodeAddress {
                        address: a.address,
                        type_: a.type_,
                    })
                    .collect()
            }),
            ..NodeStatus::default()
        }),
    };
}

/// Identity (name, namespace, and the uid and resourceVersion caches and watchers key on)
/// plus the listed labels and annotations.
fn slim_meta(meta: ObjectMeta, labels: &[&str], annotations: &[&str]) -> ObjectMeta {
    ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        labels: keep(meta.labels, labels),
        annotations: keep(meta.annotations, annotations),
        ..ObjectMeta::default()
    }
}

fn keep(
    map: Option<BTreeMap<String, String>>,
    wanted: &[&str],
) -> Option<BTreeMap<String, String>> {
    let mut map = map?;
    map.retain(|k, _| wanted.contains(&k.as_str()));
    (!map.is_empty()).then_some(map)
}
