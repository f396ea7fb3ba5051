//! Random Services and EndpointSlices, valid or not: the model never panics, accounts for
//! every Service, does not depend on input order, and keeps its output invariants.

use std::collections::{BTreeMap, BTreeSet};

use proptest::{collection::vec, option::of, prelude::*, sample::select};

use crate::config::{Cidr, NodePortAddresses};

use super::*;

const NAMES: [&str; 6] = ["a", "b", "c", "d", "e", "f"];
const NODES: [&str; 2] = ["node-a", "node-b"];
const ZONES: [&str; 2] = ["z1", "z2"];
/// Service-side addresses; they overlap between Services, with node addresses and with each
/// other's families on purpose.
const ADDRESSES: [&str; 8] = [
    "10.96.0.1",
    "10.96.0.2",
    "192.0.2.1",
    "198.51.100.1",
    "172.18.0.2",
    "fd00::1",
    "2001:db8::1",
    "fd02::2",
];
const ENDPOINT_ADDRESSES: [&str; 6] = [
    "10.0.0.1",
    "10.0.0.2",
    "10.0.0.3",
    "fd01::1",
    "fd01::2",
    "::ffff:10.0.0.1",
];

/// Mostly one of `valid` (where `None` means the field is absent), sometimes one of `invalid`:
/// invalid values must be exercised, but a Service has many fields and one invalid value
/// skips it, so they have to be rare for anything to get translated.
fn mostly<T: Clone + std::fmt::Debug + 'static>(
    valid: &[Option<T>],
    invalid: &[T],
) -> BoxedStrategy<Option<T>> {
    let valid = select(valid.to_vec());
    if invalid.is_empty() {
        return valid.boxed();
    }
    prop_oneof![19 => valid, 1 => select(invalid.to_vec()).prop_map(Some)].boxed()
}

fn port_number() -> impl Strategy<Value = i32> {
    prop_oneof![19 => select(vec![80, 443, 53]), 1 => -2..70_000i32]
}

fn node_port_number() -> impl Strategy<Value = Option<i32>> {
    prop_oneof![
        10 => Just(None),
        8 => select(vec![30000, 30001, 80]).prop_map(Some),
        1 => Just(Some(0)),
        1 => (-2..70_000i32).prop_map(Some),
    ]
}

fn service_port() -> impl Strategy<Value = Value> {
    (
        select(vec![None, None, None, Some("a"), Some("b"), Some("")]),
        mostly(
            &[None, None, None, Some("TCP"), Some("UDP"), Some("SCTP")],
            &["ICMP", "tcp"],
        ),
        port_number(),
        node_port_number(),
    )
        .prop_map(|(name, protocol, port, node_port)| {
            json!({"name": name, "protocol": protocol, "port": port, "nodePort": node_port})
        })
}

pub(super) fn service() -> impl Strategy<Value = Value> {
    let meta = (
        mostly(&[Some("x")], &["y"]),
        select(NAMES.to_vec()),
        mostly(&[None], &[SERVICE_PROXY_NAME_LABEL, HEADLESS_LABEL]),
        mostly(
            &[
                None,
                None,
                Some("random"),
                Some("rr"),
                Some("sh"),
                Some("mh"),
            ],
            &["", "wlc"],
        ),
        mostly(&[None], &["no spec"]),
    );
    let addressing = (
        mostly(
            &[
                None,
                Some("ClusterIP"),
                Some("NodePort"),
                Some("LoadBalancer"),
            ],
            &["ExternalName", "Weird"],
        ),
        mostly(
            &[
                Some(vec![]),
                Some(vec!["10.96.0.1"]),
                Some(vec!["10.96.0.2"]),
                Some(vec!["fd00::1"]),
                Some(vec!["10.96.0.1", "fd00::1"]),
                Some(vec!["fd00::1", "10.96.0.2"]),
            ],
            &[
                vec!["None"],
                vec![""],
                vec!["10.96.0.1", "10.96.0.2"],
                vec!["10.96.0.300"],
            ],
        ),
        mostly(
            &[
                None,
                None,
                Some(vec!["IPv4"]),
                Some(vec!["IPv6"]),
                Some(vec!["IPv4", "IPv6"]),
            ],
            &[vec!["IPv5"]],
        ),
        vec(mostly(&ADDRESSES.map(Some), &["not-an-ip"]), 0..3),
        vec(
            (
                mostly(&ADDRESSES.map(Some), &["not-an-ip"]),
                select(vec![None, Some("VIP"), Some("Proxy")]),
            ),
            0..3,
        ),
    );
    let policy = || {
        mostly(
            &[None, Some("Cluster"), Some("Local"), Some("Local")],
            &["Nope"],
        )
    };
    let behaviour = (
        vec(service_port(), 0..4),
        policy(),
        policy(),
        mostly(&[None, Some("None"), Some("ClientIP")], &["Sticky"]),
        mostly(
            &[None, Some(1), Some(10_800), Some(86_400)],
            &[0, -1, 86_401],
        ),
        any::<bool>(),
        mostly(&[None, Some(32000), Some(32001)], &[-1, 70_000]),
    );
    (meta, addressing, behaviour).prop_map(
        |(
            (namespace, name, label, scheduler, no_spec),
            (type_, cluster_ips, families, external_ips, ingress),
            (ports, itp, etp, affinity, timeout, pnra, hc),
        )| {
            let mut svc = json!({
                "metadata": {"namespace": namespace.unwrap(), "name": name},
                "spec": {
                    "type": type_,
                    "clusterIPs": cluster_ips,
                    "ipFamilies": families,
                    "externalIPs": external_ips,
                    "ports": ports,
                    "internalTrafficPolicy": itp,
                    "externalTrafficPolicy": etp,
                    "sessionAffinity": affinity,
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": timeout}},
                    "publishNotReadyAddresses": pnra,
                    "healthCheckNodePort": hc,
                },
                "status": {"loadBalancer": {"ingress": ingress.iter().map(|(ip, mode)| {
                    json!({"ip": ip, "ipMode": mode})
                }).collect::<Vec<_>>()}},
            });
            if let Some(label) = label {
                svc["metadata"]["labels"][label] = json!("");
            }
            if let Some(scheduler) = scheduler {
                svc["metadata"]["annotations"][SCHEDULER_ANNOTATION] = json!(scheduler);
            }
            if no_spec.is_some() {
                svc.as_object_mut().unwrap().remove("spec");
            }
            svc
        },
    )
}

fn endpoint() -> impl Strategy<Value = Value> {
    let condition = || select(vec![None, Some(true), Some(false)]);
    (
        prop_oneof![
            10 => select(ENDPOINT_ADDRESSES.to_vec()).prop_map(|a| vec![a]),
            1 => vec(mostly(&ENDPOINT_ADDRESSES.map(Some), &["bogus"]), 0..3)
                .prop_map(|l| l.into_iter().flatten().collect()),
        ],
        prop_oneof![
            // The states that matter (unknown, ready, serving-terminating, gone, starting)
            // often enough to meet each other, and any combination now and then.
            6 => select(vec![
                None,
                Some((Some(true), Some(true), Some(false))),
                Some((Some(false), Some(true), Some(true))),
                Some((Some(false), Some(true), Some(true))),
                Some((Some(false), Some(false), Some(true))),
                Some((Some(false), Some(false), Some(false))),
            ]),
            1 => (condition(), condition(), condition()).prop_map(Some),
        ],
        select(vec![None, Some("node-a"), Some("node-b")]),
        of(vec(select(ZONES.to_vec()), 0..3)),
        of(vec(select(NODES.to_vec()), 0..3)),
    )
        .prop_map(|(addresses, conditions, node, zones, nodes)| {
            let names = |l: Option<Vec<&str>>| {
                l.map(|l| l.iter().map(|n| json!({"name": n})).collect::<Vec<_>>())
            };
            json!({
                "addresses": addresses,
                "conditions": conditions.map(|(r, s, t)| json!({"ready": r, "serving": s, "terminating": t})),
                "nodeName": node,
                "hints": {"forZones": names(zones), "forNodes": names(nodes)},
            })
        })
}

pub(super) fn slice() -> impl Strategy<Value = Value> {
    (
        mostly(&[Some("x")], &["y"]),
        mostly(&NAMES.map(Some), &[]),
        select(vec!["s1", "s2", "s3"]),
        mostly(&[Some("IPv4"), Some("IPv6")], &["FQDN"]),
        vec(
            (
                select(vec![None, None, Some("a"), Some("b"), Some("")]),
                mostly(&[None, None, Some("TCP"), Some("UDP")], &["ICMP"]),
                mostly(&[Some(8080), Some(8081)], &[0, 70_000]),
            ),
            0..4,
        ),
        vec(endpoint(), 0..6),
    )
        .prop_map(|(namespace, owner, name, family, ports, endpoints)| {
            let mut slice = json!({
                "metadata": {"namespace": namespace.unwrap(), "name": name},
                "addressType": family,
                "ports": ports.iter().map(|(name, protocol, port)| {
                    json!({"name": name, "protocol": protocol, "port": port})
                }).collect::<Vec<_>>(),
                "endpoints": endpoints,
            });
            if let Some(owner) = owner {
                slice["metadata"]["labels"][SERVICE_NAME_LABEL] = json!(owner);
            }
            slice
        })
}

pub(super) fn node_context() -> impl Strategy<Value = NodeContext> {
    let filters = vec![
        NodePortAddresses::All,
        NodePortAddresses::Primary,
        NodePortAddresses::Cidrs(vec!["172.18.0.0/16".parse::<Cidr>().unwrap()]),
        NodePortAddresses::Cidrs(vec![
            "fd02::/16".parse::<Cidr>().unwrap(),
            "127.0.0.0/8".parse::<Cidr>().unwrap(),
        ]),
    ];
    (
        select(vec![None, Some("node-a"), Some("node-a"), Some("node-b")]),
        select(vec![None, Some("z1"), Some("z1"), Some("z2")]),
        select(filters),
        any::<bool>(),
    )
        .prop_map(|(name, zone, filter, localhost)| NodeContext {
            zone: zone.map(String::from),
            node_port_addresses: filter,
            localhost_node_ports: localhost,
            ..NodeContext::new(
                name.map(String::from),
                ["172.18.0.2", "fd02::2", "127.0.0.1", "192.0.2.1"]
                    .map(|a| a.parse().unwrap())
                    .to_vec(),
            )
        })
}

/// Inputs, and the same inputs in another order.
fn inputs() -> impl Strategy<
    Value = (
        Vec<Service>,
        Vec<EndpointSlice>,
        NodeContext,
        Vec<Service>,
        Vec<EndpointSlice>,
    ),
> {
    (vec(service(), 0..6), vec(slice(), 0..24), node_context()).prop_flat_map(
        |(services, slices, node)| {
            let services: Vec<Service> = services
                .into_iter()
                .map(|v| serde_json::from_value(v).unwrap())
                .collect();
            let slices: Vec<EndpointSlice> = slices
                .into_iter()
                .map(|v| serde_json::from_value(v).unwrap())
                .collect();
            (
                Just(services.clone()),
                Just(slices.clone()),
                Just(node),
                Just(services).prop_shuffle(),
                Just(slices).prop_shuffle(),
            )
        },
    )
}

/// What the generator means to be an opt-out, decided from the object, not the model.
fn opts_out(svc: &Service) -> bool {
    let Some(spec) = &svc.spec else { return true };
    let raw: Vec<&String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().collect(),
        _ => spec.cluster_ip.iter().collect(),
    };
    svc.metadata.labels.is_some()
        || spec.type_.as_deref() == Some("ExternalName")
        || raw.iter().any(|r| *r == "None" || r.is_empty())
}

fn policies(svc: &Service) -> (bool, bool) {
    let spec = svc.spec.as_ref().unwrap();
    (
        spec.internal_traffic_policy.as_deref() == Some("Local"),
        spec.external_traffic_policy.as_deref() == Some("Local"),
    )
}

/// Endpoint addresses that some slice of the Service puts on this node.
fn local_addresses(
    name: &ServiceName,
    slices: &[EndpointSlice],
    node: &NodeContext,
) -> BTreeSet<IpAddr> {
    slices
        .iter()
        .filter(|s| slice_owner(s).as_ref() == Some(name))
        .flat_map(|s| &s.endpoints)
        .filter(|e| node.node_name.is_some() && e.node_name == node.node_name)
        .filter_map(|e| e.addresses.first()?.parse().ok())
        .collect()
}

fn check_invariants(
    services: &[Service],
    slices: &[EndpointSlice],
    node: &NodeContext,
    state: &DesiredState,
) {
    // Every Service is served, skipped or an opt-out, and the model agrees with the generator
    // on which ones opt out.
    let mut owners: BTreeMap<ServiceName, Vec<&EndpointSlice>> = BTreeMap::new();
    for s in slices {
        if let Some(owner) = slice_owner(s) {
            owners.entry(owner).or_default().push(s);
        }
    }
    let skipped: BTreeSet<&ServiceName> = state.skipped.iter().map(|s| &s.service).collect();
    let mut must_report = BTreeSet::new();
    for svc in services {
        let name = ServiceName::of(&svc.metadata);
        let own = owners.get(&name).map(Vec::as_slice).unwrap_or(&[]);
        let alone = translate_service(svc, own, node);
        assert_eq!(opts_out(svc), matches!(alone, Ok(None)), "{svc:?}");
        if !opts_out(svc) {
            must_report.insert(name.clone());
            assert!(
                state.services.contains_key(&name) || skipped.contains(&name),
                "{name} vanished"
            );
        }
    }
    // A Service can be both served and reported (it lost one conflicting frontend).
    let reported: BTreeSet<&ServiceName> = state
        .services
        .keys()
        .chain(state.skipped.iter().map(|s| &s.service))
        .collect();
    assert!(must_report.iter().all(|n| reported.contains(n)));
    assert!(reported.len() <= services.len());
    assert!(
        state
            .health_checks
            .keys()
            .all(|k| state.services.contains_key(k))
    );

    // Keys are unique, and an address is either one Both frontend or an Internal/External pair.
    let mut by_address: BTreeMap<_, Vec<Scope>> = BTreeMap::new();
    for f in state.frontends() {
        by_address
            .entry(f.key.address())
            .or_default()
            .push(f.key.scope);
    }
    for (address, mut scopes) in by_address {
        scopes.sort();
        assert!(
            scopes == [Scope::Both] || scopes == [Scope::Internal, Scope::External],
            "{address:?}: {scopes:?}"
        );
    }

    for (name, frontends) in &state.services {
        let winner = services
            .iter()
            .filter(|s| &ServiceName::of(&s.metadata) == name)
            .find(|s| {
                let own = owners.get(name).map(Vec::as_slice).unwrap_or(&[]);
                // What was kept is the Service's translation less the frontends whose address
                // another Service holds, each of which is reported as a conflict.
                let lost_to_other = |f: &Frontend| {
                    state
                        .frontends()
                        .any(|o| &o.service != name && o.key.address() == f.key.address())
                        && state
                            .skipped
                            .iter()
                            .any(|k| &k.service == name && k.reason == SkipReason::FrontendConflict)
                };
                matches!(translate_service(s, own, node), Ok(Some(t))
                    if frontends.iter().all(|f| t.frontends.contains(f))
                        && t.frontends.iter().all(|f| frontends.contains(f) || lost_to_other(f)))
            })
            .expect("the kept Service translates to what was kept");
        let (internal_local, external_local) = policies(winner);
        let local = local_addresses(name, slices, node);
        assert!(
            frontends.windows(2).all(|w| w[0].key < w[1].key),
            "{name}: frontends sorted"
        );
        for f in frontends {
            assert_eq!(&f.service, name);
            for list in [&f.endpoints, &f.draining] {
                assert!(
                    list.windows(2).all(|w| w[0] < w[1]),
                    "{}: sorted, no duplicates",
                    f.key
                );
                assert!(
                    list.iter().all(|e| e.ip.is_ipv6() == f.key.ip.is_ipv6()),
                    "{}: family",
                    f.key
                );
            }
            assert!(
                f.draining.iter().all(|d| !f.endpoints.contains(d)),
                "{}",
                f.key
            );
            assert!(
                f.on_empty == EmptyAction::Reject || f.endpoints.is_empty(),
                "{}",
                f.key
            );
            let local_scope = match f.kind {
                FrontendKind::ClusterIp => internal_local,
                _ => external_local && f.key.scope != Scope::Internal,
            };
            if local_scope {
                for e in f.endpoints.iter().chain(&f.draining) {
                    assert!(
                        local.contains(&e.ip),
                        "{}: {} is not on this node",
                        f.key,
                        e.ip
                    );
                }
            }
            if !f.kind.is_external() {
                assert_eq!(f.key.scope, Scope::Both, "{}", f.key);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_inputs_keep_the_model_invariants(
        (services, slices, node, shuffled_services, shuffled_slices) in inputs()
    ) {
        let state = DesiredState::build(&services, &slices, &node);
        check_invariants(&services, &slices, &node, &state);
        prop_assert_eq!(&state, &DesiredState::build(&shuffled_services, &shuffled_slices, &node));

        let mut slim_services = services.clone();
        slim_services.iter_mut().for_each(slim_service);
        let mut slim_slices = slices.clone();
        slim_slices.iter_mut().for_each(slim_slice);
        prop_assert_eq!(&state, &DesiredState::build(&slim_services, &slim_slices, &node));
    }
}

/// The invariants above are only as good as the inputs: every outcome they constrain must
/// actually come up, or a generator change could make the property test pass vacuously.
#[test]
fn the_generator_reaches_every_interesting_outcome() {
    use proptest::{strategy::ValueTree, test_runner::TestRunner};
    let mut runner = TestRunner::deterministic();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for _ in 0..512 {
        let (services, slices, node, _, _) = inputs().new_tree(&mut runner).unwrap().current();
        let state = DesiredState::build(&services, &slices, &node);
        seen.extend(state.skipped.iter().map(|s| s.reason.as_str()));
        if !state.health_checks.is_empty() {
            seen.insert("health check");
        }
        for f in state.frontends() {
            if !f.endpoints.is_empty() {
                seen.insert(if f.key.ip.is_ipv6() {
                    "IPv6 endpoints"
                } else {
                    "IPv4 endpoints"
                });
            }
            if !f.draining.is_empty() {
                seen.insert("draining");
            }
            if f.on_empty == EmptyAction::Drop {
                seen.insert("drop");
            }
            if f.key.scope != Scope::Both {
                seen.insert("split");
            }
            if f.affinity_timeout.is_some() {
                seen.insert("affinity");
            }
            if f.scheduler.is_some() {
                seen.insert("scheduler");
            }
            seen.insert(f.kind.as_str());
        }
    }
    let mut want: BTreeSet<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
    want.extend([
        "health check",
        "IPv4 endpoints",
        "IPv6 endpoints",
        "draining",
        "drop",
        "split",
        "affinity",
        "scheduler",
        "ClusterIP",
        "NodePort",
        "ExternalIP",
        "LoadBalancer",
    ]);
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}
