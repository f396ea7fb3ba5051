//! Topology hints: when they are followed and when they are ignored as a whole. The node is
//! `me` in zone `z1`.

use super::*;

fn serving(svc: &Svc, eps: &[Ep], node: &NodeContext) -> Vec<String> {
    let state = DesiredState::build(&[svc.build()], &v4_slice(eps), node);
    ips(&only(&state, "10.96.0.1", 80).endpoints)
}

#[test]
fn zone_and_node_hints() {
    let a = || ep("10.0.0.1", ME, St::R);
    let b = || ep("10.0.0.2", OTHER, St::R);
    let c = || ep("10.0.0.3", OTHER, St::R);
    #[rustfmt::skip]
    let rows: Vec<(&str, Vec<Ep>, &[&str])> = vec![
        ("no hints: everything",
            vec![a(), b(), c()], &["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        ("zone hints with one for my zone: those",
            vec![a().zones(&["z2"]), b().zones(&["z1"]), c().zones(&["z1", "z3"])], &["10.0.0.2", "10.0.0.3"]),
        ("one ready endpoint without a zone hint: ignored",
            vec![a().zones(&["z2"]), b().zones(&["z1"]), c()], &["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        ("no endpoint for my zone: ignored",
            vec![a().zones(&["z2"]), b().zones(&["z3"])], &["10.0.0.1", "10.0.0.2"]),
        ("only ready endpoints need hints",
            vec![a().zones(&["z1"]), b().zones(&["z2"]), ep("10.0.0.4", OTHER, St::N)], &["10.0.0.1"]),
        ("a terminating endpoint hinted for my zone does not count",
            vec![a().zones(&["z2"]), ep("10.0.0.4", OTHER, St::T).zones(&["z1"])], &["10.0.0.1"]),
        ("node hints with one for me: those",
            vec![a().nodes(&[ME]).zones(&["z1"]), b().nodes(&[OTHER]).zones(&["z1"])], &["10.0.0.1"]),
        ("node hints none for me: zone hints",
            vec![a().nodes(&[OTHER]).zones(&["z2"]), b().nodes(&[OTHER]).zones(&["z1"])], &["10.0.0.2"]),
        ("node hints missing on one: zone hints",
            vec![a().nodes(&[ME]).zones(&["z2"]), b().zones(&["z1"])], &["10.0.0.2"]),
        ("node hints missing on one and no zone hints: everything",
            vec![a().nodes(&[ME]), b()], &["10.0.0.1", "10.0.0.2"]),
        ("node hints for me but zone hints incomplete: node hints",
            vec![a().nodes(&[ME]), b().nodes(&[OTHER]).zones(&["z1"])], &["10.0.0.1"]),
        ("no ready endpoint: terminating ones, hints ignored",
            vec![ep("10.0.0.4", OTHER, St::T).zones(&["z2"]), ep("10.0.0.5", OTHER, St::T).zones(&["z1"])],
            &["10.0.0.4", "10.0.0.5"]),
    ];
    for (what, eps, want) in rows {
        assert_eq!(serving(&Svc::cluster_ip(), &eps, &node()), want, "{what}");
    }
}

#[test]
fn a_node_without_zone_or_name_ignores_those_hints() {
    let eps = [
        ep("10.0.0.1", ME, St::R).zones(&["z1"]).nodes(&[ME]),
        ep("10.0.0.2", OTHER, St::R).zones(&["z2"]).nodes(&[OTHER]),
    ];
    let all = ["10.0.0.1", "10.0.0.2"];
    let nameless_zoneless = NodeContext::new(None, vec![]);
    assert_eq!(serving(&Svc::cluster_ip(), &eps, &nameless_zoneless), all);
    let zoneless = NodeContext::new(Some(ME.into()), vec![]);
    assert_eq!(serving(&Svc::cluster_ip(), &eps, &zoneless), ["10.0.0.1"]);
    let nameless = NodeContext {
        zone: Some("z2".into()),
        ..NodeContext::new(None, vec![])
    };
    assert_eq!(serving(&Svc::cluster_ip(), &eps, &nameless), ["10.0.0.2"]);
}

#[test]
fn hints_are_followed_whatever_the_service_says() {
    // The EndpointSlice controller writes hints only for Services that ask (trafficDistribution
    // or the topology-mode annotation); kube-proxy follows whatever hints there are.
    let eps = [
        ep("10.0.0.1", ME, St::R).zones(&["z1"]),
        ep("10.0.0.2", OTHER, St::R).zones(&["z2"]),
    ];
    for svc in [
        Svc::cluster_ip(),
        Svc::cluster_ip().spec("trafficDistribution", json!("PreferClose")),
        Svc::cluster_ip().spec("trafficDistribution", json!("PreferSameZone")),
        Svc::cluster_ip().spec("trafficDistribution", json!("PreferSameNode")),
        Svc::cluster_ip().annotate("service.kubernetes.io/topology-mode", "Auto"),
        Svc::cluster_ip().annotate("service.kubernetes.io/topology-aware-hints", "auto"),
    ] {
        assert_eq!(serving(&svc, &eps, &node()), ["10.0.0.1"], "{}", svc.0);
    }
}

#[test]
fn local_policies_ignore_hints() {
    // The local endpoint is hinted away from this zone; Local policies use it anyway, while
    // the cluster-wide set (ClusterIP with iTP Cluster, internal traffic to the NodePort)
    // follows the hints.
    let eps = [
        ep("10.0.0.1", ME, St::R).zones(&["z2"]),
        ep("10.0.0.2", OTHER, St::R).zones(&["z1"]),
    ];
    let state = DesiredState::build(
        &[Svc::lb().policies("Local", "Local").build()],
        &v4_slice(&eps),
        &node(),
    );
    assert_eq!(ips(&only(&state, "10.96.0.1", 80).endpoints), ["10.0.0.1"]);
    let node_port: Vec<_> = at(&state, NODE_IP, 30080)
        .iter()
        .map(|f| (f.key.scope, ips(&f.endpoints)))
        .collect();
    assert_eq!(
        node_port,
        [
            (Scope::Internal, vec!["10.0.0.2".to_string()]),
            (Scope::External, vec!["10.0.0.1".to_string()]),
        ]
    );

    let state = DesiredState::build(&[Svc::lb().build()], &v4_slice(&eps), &node());
    assert_eq!(ips(&only(&state, NODE_IP, 30080).endpoints), ["10.0.0.2"]);
}
