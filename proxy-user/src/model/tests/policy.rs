//! Traffic policies, scopes and what happens without endpoints: every combination of
//! internalTrafficPolicy × externalTrafficPolicy × where the usable endpoints are.

use super::*;

const LOCAL: &str = "10.0.0.1";
const REMOTE: &str = "10.0.0.2";

/// One scope's expectation: endpoint addresses and the empty action.
type Set = (&'static [&'static str], EmptyAction);

/// What traffic to the NodePort, externalIP and load balancer addresses gets.
#[derive(Debug)]
enum External {
    Both(Set),
    Split { internal: Set, external: Set },
}

use EmptyAction::{Drop, Reject};
use External::{Both, Split};

fn check(svc: &Svc, eps: &[Ep], cluster_ip: Set, external: &External, row: &str) {
    let state = DesiredState::build(&[svc.build()], &v4_slice(eps), &node());
    assert!(state.skipped.is_empty(), "{row}: {:?}", state.skipped);
    let got = |f: &Frontend| (ips(&f.endpoints), f.on_empty);
    let want = |s: &Set| (s.0.iter().map(|s| s.to_string()).collect::<Vec<_>>(), s.1);

    let cip = only(&state, "10.96.0.1", 80);
    assert_eq!(cip.key.scope, Scope::Both, "{row}: ClusterIP");
    assert_eq!(got(cip), want(&cluster_ip), "{row}: ClusterIP");

    for (addr, port) in [("192.0.2.1", 80), ("198.51.100.1", 80), (NODE_IP, 30080)] {
        let found = at(&state, addr, port);
        let what = format!("{row}: {addr}:{port}");
        match external {
            Both(set) => {
                assert_eq!(found.len(), 1, "{what}: {found:#?}");
                assert_eq!(found[0].key.scope, Scope::Both, "{what}");
                assert_eq!(got(found[0]), want(set), "{what}");
            }
            Split { internal, external } => {
                let scopes: Vec<Scope> = found.iter().map(|f| f.key.scope).collect();
                assert_eq!(scopes, [Scope::Internal, Scope::External], "{what}");
                assert_eq!(got(found[0]), want(internal), "{what} internal");
                assert_eq!(got(found[1]), want(external), "{what} external");
            }
        }
    }
}

#[test]
fn traffic_policies_by_where_the_endpoints_are() {
    let l = || ep(LOCAL, ME, St::R);
    let r = || ep(REMOTE, OTHER, St::R);
    #[rustfmt::skip]
    let rows: Vec<(&str, &str, Vec<Ep>, Set, External)> = vec![
        // iTP      eTP      endpoints   ClusterIP                    NodePort / externalIP / LB
        ("Cluster", "Cluster", vec![],       (&[], Reject),              Both((&[], Reject))),
        ("Cluster", "Cluster", vec![r()],    (&[REMOTE], Reject),        Both((&[REMOTE], Reject))),
        ("Cluster", "Cluster", vec![l()],    (&[LOCAL], Reject),         Both((&[LOCAL], Reject))),
        ("Cluster", "Cluster", vec![l(), r()], (&[LOCAL, REMOTE], Reject), Both((&[LOCAL, REMOTE], Reject))),

        // iTP Local narrows ClusterIP traffic only.
        ("Local", "Cluster", vec![],         (&[], Reject),              Both((&[], Reject))),
        ("Local", "Cluster", vec![r()],      (&[], Drop),                Both((&[REMOTE], Reject))),
        ("Local", "Cluster", vec![l()],      (&[LOCAL], Reject),         Both((&[LOCAL], Reject))),
        ("Local", "Cluster", vec![l(), r()], (&[LOCAL], Reject),         Both((&[LOCAL, REMOTE], Reject))),

        // eTP Local narrows external traffic; internal traffic to the same address keeps the
        // cluster-wide set.
        ("Cluster", "Local", vec![],         (&[], Reject),              Both((&[], Reject))),
        ("Cluster", "Local", vec![r()],      (&[REMOTE], Reject),
            Split { internal: (&[REMOTE], Reject), external: (&[], Drop) }),
        ("Cluster", "Local", vec![l()],      (&[LOCAL], Reject),         Both((&[LOCAL], Reject))),
        ("Cluster", "Local", vec![l(), r()], (&[LOCAL, REMOTE], Reject),
            Split { internal: (&[LOCAL, REMOTE], Reject), external: (&[LOCAL], Reject) }),

        // Both Local: iTP does not reach internal traffic to external addresses.
        ("Local", "Local", vec![],           (&[], Reject),              Both((&[], Reject))),
        ("Local", "Local", vec![r()],        (&[], Drop),
            Split { internal: (&[REMOTE], Reject), external: (&[], Drop) }),
        ("Local", "Local", vec![l()],        (&[LOCAL], Reject),         Both((&[LOCAL], Reject))),
        ("Local", "Local", vec![l(), r()],   (&[LOCAL], Reject),
            Split { internal: (&[LOCAL, REMOTE], Reject), external: (&[LOCAL], Reject) }),
    ];
    for (itp, etp, eps, cluster_ip, external) in rows {
        let row = format!(
            "iTP {itp} eTP {etp} {:?}",
            eps.iter().map(|e| e.ip).collect::<Vec<_>>()
        );
        check(
            &Svc::lb().policies(itp, etp),
            &eps,
            cluster_ip,
            &external,
            &row,
        );
    }
}

#[test]
fn only_usable_endpoints_make_a_drop_instead_of_a_reject() {
    // An endpoint that is not usable anywhere (starting, or gone) is as good as none: REJECT.
    // A serving-and-terminating one elsewhere is usable, so a Local policy DROPs.
    #[rustfmt::skip]
    let rows: Vec<(&str, &str, Vec<Ep>, Set, External)> = vec![
        ("Local", "Local", vec![ep(REMOTE, OTHER, St::N)],    (&[], Reject), Both((&[], Reject))),
        ("Local", "Local", vec![ep(REMOTE, OTHER, St::Gone)], (&[], Reject), Both((&[], Reject))),
        ("Local", "Local", vec![ep(LOCAL, ME, St::N)],        (&[], Reject), Both((&[], Reject))),
        ("Local", "Cluster", vec![ep(REMOTE, OTHER, St::T)],  (&[], Drop),   Both((&[REMOTE], Reject))),
        ("Cluster", "Local", vec![ep(REMOTE, OTHER, St::T)],  (&[REMOTE], Reject),
            Split { internal: (&[REMOTE], Reject), external: (&[], Drop) }),
    ];
    for (itp, etp, eps, cluster_ip, external) in rows {
        let row = format!("iTP {itp} eTP {etp} {eps:?}");
        check(
            &Svc::lb().policies(itp, etp),
            &eps,
            cluster_ip,
            &external,
            &row,
        );
    }
}

#[test]
fn external_policy_applies_to_external_ips_of_a_cluster_ip_service() {
    let svc = Svc::cluster_ip()
        .spec("externalIPs", json!(["192.0.2.1"]))
        .spec("externalTrafficPolicy", json!("Local"));
    let state = DesiredState::build(
        &[svc.build()],
        &v4_slice(&[ep(REMOTE, OTHER, St::R)]),
        &node(),
    );
    let scopes: Vec<(Scope, Vec<String>, EmptyAction)> = at(&state, "192.0.2.1", 80)
        .iter()
        .map(|f| (f.key.scope, ips(&f.endpoints), f.on_empty))
        .collect();
    assert_eq!(
        scopes,
        [
            (Scope::Internal, vec![REMOTE.to_string()], Reject),
            (Scope::External, vec![], Drop),
        ]
    );
    assert_eq!(only(&state, "10.96.0.1", 80).endpoints.len(), 1);
}

#[test]
fn without_a_node_name_nothing_is_local() {
    let state = DesiredState::build(
        &[Svc::lb().policies("Local", "Local").build()],
        &v4_slice(&[ep(LOCAL, ME, St::R)]),
        &NodeContext::new(None, vec![ip(NODE_IP)]),
    );
    let cip = only(&state, "10.96.0.1", 80);
    assert_eq!((cip.endpoints.len(), cip.on_empty), (0, Drop));
}

#[test]
fn invalid_traffic_policies_skip_the_service() {
    for (field, value) in [
        ("internalTrafficPolicy", "local"),
        ("externalTrafficPolicy", "OnlyLocal"),
        ("externalTrafficPolicy", ""),
    ] {
        let svc = Svc::lb().spec(field, json!(value));
        let state = DesiredState::build(&[svc.build()], &[], &node());
        assert_eq!(state.services.len(), 0, "{field}: {value}");
        assert_eq!(
            state.skipped[0].reason,
            SkipReason::InvalidTrafficPolicy,
            "{field}: {value}"
        );
    }
}
