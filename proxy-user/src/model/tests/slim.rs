//! Slimmed objects translate exactly like the originals.

use k8s_openapi::api::core::v1::Node;

use super::*;

const FAT_SERVICE: &str = r#"
metadata:
  name: s
  namespace: t
  uid: 6f1c
  resourceVersion: "42"
  generation: 3
  creationTimestamp: "2024-01-01T00:00:00Z"
  labels: {app: web, service.kubernetes.io/headless-not: "x"}
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: '{"a very": "long document"}'
    sluice.dev/scheduler: mh
    service.kubernetes.io/topology-mode: Auto
  managedFields:
    - {manager: kubectl, operation: Apply, apiVersion: v1, fieldsType: FieldsV1, fieldsV1: {f:spec: {}}}
  ownerReferences: [{apiVersion: v1, kind: Thing, name: owner, uid: abc}]
  finalizers: [service.kubernetes.io/load-balancer-cleanup]
spec:
  type: LoadBalancer
  selector: {app: web}
  clusterIP: 10.96.0.1
  clusterIPs: [10.96.0.1, fd00::1]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  externalIPs: [192.0.2.1]
  loadBalancerSourceRanges: [0.0.0.0/0]
  loadBalancerClass: example.com/lb
  allocateLoadBalancerNodePorts: true
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  healthCheckNodePort: 32000
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
  publishNotReadyAddresses: false
  trafficDistribution: PreferClose
  ports:
    - {name: http, port: 80, targetPort: web, nodePort: 30080, appProtocol: http}
    - {name: dns, port: 53, protocol: UDP, targetPort: 5353, nodePort: 30053}
status:
  loadBalancer:
    ingress:
      - {ip: 198.51.100.1, ipMode: VIP, ports: [{port: 80, protocol: TCP}]}
      - {ip: 198.51.100.2, ipMode: Proxy}
      - {hostname: lb.example}
  conditions: [{type: Ready, status: "True", lastTransitionTime: "2024-01-01T00:00:00Z", reason: Ok, message: fine}]
"#;

const FAT_SLICE: &str = r#"
metadata:
  name: s-abc
  namespace: t
  generateName: s-
  labels:
    kubernetes.io/service-name: s
    endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2024-01-01T00:00:00Z"}
  managedFields: [{manager: kube-controller-manager, operation: Update, apiVersion: discovery.k8s.io/v1}]
  ownerReferences: [{apiVersion: v1, kind: Service, name: s, uid: 6f1c}]
addressType: IPv4
ports:
  - {name: http, port: 8080, protocol: TCP, appProtocol: http}
  - {name: dns, port: 5353, protocol: UDP}
endpoints:
  - addresses: [10.0.0.1, 10.0.0.11]
    conditions: {ready: true, serving: true, terminating: false}
    hostname: web-0
    nodeName: me
    zone: z1
    targetRef: {kind: Pod, name: web-0, namespace: t, uid: p0}
    hints: {forZones: [{name: z1}]}
  - addresses: [10.0.0.2]
    conditions: {ready: false, serving: true, terminating: true}
    nodeName: other
    zone: z2
    targetRef: {kind: Pod, name: web-1, namespace: t, uid: p1}
    hints: {forZones: [{name: z2}], forNodes: [{name: other}]}
  - addresses: [10.0.0.3]
    nodeName: other
    deprecatedTopology: {kubernetes.io/hostname: other}
"#;

const FAT_NODE: &str = r#"
metadata:
  name: me
  uid: n1
  labels: {topology.kubernetes.io/zone: z1, kubernetes.io/os: linux, node-role.kubernetes.io/worker: ""}
  annotations: {node.alpha.kubernetes.io/ttl: "0"}
  managedFields: [{manager: kubelet, operation: Update, apiVersion: v1}]
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24]
  taints: [{key: example, effect: NoSchedule}]
status:
  addresses:
    - {type: InternalIP, address: 172.18.0.2}
    - {type: InternalIP, address: fd02::2}
    - {type: Hostname, address: me}
  capacity: {cpu: "4", memory: 16Gi}
  conditions: [{type: Ready, status: "True"}]
  images: [{names: [registry.example/app:1], sizeBytes: 123456789}]
  nodeInfo: {machineID: m, systemUUID: s, bootID: b, kernelVersion: "6.1", osImage: x,
             containerRuntimeVersion: "containerd://1.7", kubeletVersion: v1.34.0,
             kubeProxyVersion: "", operatingSystem: linux, architecture: amd64}
"#;

fn fat() -> (Service, EndpointSlice, Node) {
    (
        service(FAT_SERVICE),
        slice(FAT_SLICE),
        serde_yaml::from_str(FAT_NODE).unwrap(),
    )
}

fn slimmed() -> (Service, EndpointSlice, Node) {
    let (mut svc, mut slice, mut node) = fat();
    slim_service(&mut svc);
    slim_slice(&mut slice);
    slim_node(&mut node);
    (svc, slice, node)
}

#[test]
fn slimmed_objects_translate_identically() {
    let (svc, slice, node) = fat();
    let (slim_svc, slim_slice, slim_node) = slimmed();
    let ctx = NodeContext::from_node(&node, None);
    assert_eq!(ctx, NodeContext::from_node(&slim_node, None));
    assert_eq!(ctx.zone.as_deref(), Some("z1"));
    let full = DesiredState::build(&[svc], &[slice], &ctx);
    assert!(full.skipped.is_empty(), "{:?}", full.skipped);
    assert!(full.frontends().count() > 4);
    assert!(!full.health_checks.is_empty());
    assert_eq!(full, DesiredState::build(&[slim_svc], &[slim_slice], &ctx));
}

#[test]
fn slimming_drops_what_the_model_never_reads() {
    let (svc, slice, node) = slimmed();
    let meta = &svc.metadata;
    assert_eq!(meta.managed_fields, None);
    assert_eq!(meta.owner_references, None);
    assert_eq!(meta.labels, None);
    assert_eq!(
        meta.annotations
            .as_ref()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [SCHEDULER_ANNOTATION]
    );
    assert_eq!(
        (meta.uid.as_deref(), meta.resource_version.as_deref()),
        (Some("6f1c"), Some("42"))
    );
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.selector, None);
    assert_eq!(
        spec.load_balancer_source_ranges,
        Some(vec!["0.0.0.0/0".to_owned()]),
        "source ranges are a firewall: kept"
    );
    assert!(spec.ports.iter().flatten().all(|p| p.target_port.is_none()));
    let status = svc.status.as_ref().unwrap();
    assert_eq!(status.conditions, None);
    assert!(
        status
            .load_balancer
            .iter()
            .flat_map(|l| l.ingress.iter().flatten())
            .all(|i| i.ports.is_none())
    );

    assert_eq!(slice.metadata.managed_fields, None);
    // Only the trigger time survives: the network-programming latency metric reads it.
    assert_eq!(
        slice
            .metadata
            .annotations
            .as_ref()
            .map(|a| a.keys().cloned().collect::<Vec<_>>()),
        Some(vec![crate::observe::LAST_CHANGE_TRIGGER_TIME.to_string()])
    );
    assert_eq!(
        slice
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [SERVICE_NAME_LABEL]
    );
    assert!(slice.endpoints.iter().all(|e| e.target_ref.is_none()
        && e.hostname.is_none()
        && e.zone.is_none()
        && e.addresses.len() == 1));

    assert_eq!(node.spec, None);
    let status = node.status.as_ref().unwrap();
    assert_eq!(
        (status.images.as_ref(), status.node_info.as_ref()),
        (None, None)
    );
    assert_eq!(status.addresses.as_ref().unwrap().len(), 3);
    assert_eq!(
        node.metadata
            .labels
            .as_ref()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        [ZONE_LABEL]
    );
}

#[test]
fn slimming_is_idempotent() {
    let (svc, slice, node) = slimmed();
    let (mut again_svc, mut again_slice, mut again_node) =
        (svc.clone(), slice.clone(), node.clone());
    slim_service(&mut again_svc);
    slim_slice(&mut again_slice);
    slim_node(&mut again_node);
    assert_eq!((svc, slice, node), (again_svc, again_slice, again_node));
}

#[test]
fn slimming_keeps_the_opt_out_labels() {
    let mut svc = Svc::cluster_ip().build();
    svc.metadata.labels =
        Some([(SERVICE_PROXY_NAME_LABEL.to_string(), "other".to_string())].into());
    slim_service(&mut svc);
    assert!(
        DesiredState::build(&[svc], &[], &node())
            .services
            .is_empty()
    );
}
