//! Cluster and local endpoint sets: topology hints and the terminating fallback (the cases
//! of upstream's `TestCategorizeEndpoints`, restated as model verdicts).
//!
//! Every case uses a NodePort Service with `externalTrafficPolicy: Local`, so one model
//! shows all three answers: `external.cluster_verdict` (and `internal`) is the cluster set,
//! `external.verdict` the local set, and DROP versus REJECT tells whether any endpoint is
//! usable anywhere.

use super::fixtures::{Ep, build_clean, config, ep, fwd, node, port, show, slice, svc};
use crate::IpFamily;

struct Case {
    name: &'static str,
    /// This node's zone label.
    zone: Option<&'static str>,
    endpoints: Vec<Ep>,
    /// Expected cluster set (empty: REJECT, nothing usable anywhere).
    cluster: &'static [&'static str],
    /// Expected local set (empty: DROP, or REJECT when `cluster` is empty too).
    local: &'static [&'static str],
}

const A: &str = "10.1.2.3";
const B: &str = "10.1.2.4";
const C: &str = "10.1.2.5";
const D: &str = "10.1.2.6";

#[expect(
    clippy::too_many_lines,
    reason = "a table of cases reads best in one place"
)]
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "zone hints: only endpoints hinted for this node's zone",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]),
                ep(B).zone_hints(&["zone-b"]),
                ep(C).zone_hints(&["zone-c"]),
                ep(D).zone_hints(&["zone-a"]),
            ],
            cluster: &[A, D],
            local: &[],
        },
        Case {
            name: "node without zone label: hints ignored",
            zone: None,
            endpoints: vec![ep(A).zone_hints(&["zone-a"]), ep(B).zone_hints(&["zone-b"])],
            cluster: &[A, B],
            local: &[],
        },
        Case {
            name: "no endpoint hinted for this zone: hints ignored",
            zone: Some("zone-b"),
            endpoints: vec![ep(A).zone_hints(&["zone-a"])],
            cluster: &[A],
            local: &[],
        },
        Case {
            name: "unready endpoint in this zone is left out",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]),
                ep(B).zone_hints(&["zone-b"]),
                ep(C).zone_hints(&["zone-c"]),
                ep(D).zone_hints(&["zone-a"]).not_ready(),
            ],
            cluster: &[A],
            local: &[],
        },
        Case {
            name: "only unready endpoints in this zone: hints ignored",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]).not_ready(),
                ep(B).zone_hints(&["zone-b"]),
                ep(C).zone_hints(&["zone-c"]),
                ep(D).zone_hints(&["zone-a"]).not_ready(),
            ],
            cluster: &[B, C],
            local: &[],
        },
        Case {
            name: "a ready endpoint without hints disables zone filtering",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]),
                ep(B).zone_hints(&["zone-b"]),
                ep(C),
                ep(D).zone_hints(&["zone-a"]),
            ],
            cluster: &[A, B, C, D],
            local: &[],
        },
        Case {
            name: "several zone hints per endpoint: any match counts",
            zone: Some("zone-c"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a", "zone-b", "zone-c"]),
                ep(B).zone_hints(&["zone-b", "zone-c"]),
                ep(C).zone_hints(&["zone-b", "zone-d"]),
                ep(D).zone_hints(&["zone-c"]),
            ],
            cluster: &[A, B, D],
            local: &[],
        },
        Case {
            name: "local set ignores topology",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]).local(),
                ep(B).zone_hints(&["zone-b"]).local(),
                ep(C).zone_hints(&["zone-c"]).remote(),
                ep(D).zone_hints(&["zone-a"]).remote(),
            ],
            cluster: &[A, D],
            local: &[A, B],
        },
        Case {
            name: "node hints: only endpoints hinted for this node",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).node_hints(&["node-a"]),
                ep(B).node_hints(&["node-b"]),
                ep(C).node_hints(&["node-a", "node-c"]),
            ],
            cluster: &[A, C],
            local: &[],
        },
        Case {
            name: "node hints win over zone hints",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]).node_hints(&["node-b"]),
                ep(B).zone_hints(&["zone-b"]).node_hints(&["node-a"]),
            ],
            cluster: &[B],
            local: &[],
        },
        Case {
            name: "node hints name other nodes only: zone hints apply",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]).node_hints(&["node-c"]),
                ep(B).zone_hints(&["zone-b"]).node_hints(&["node-c"]),
            ],
            cluster: &[A],
            local: &[],
        },
        Case {
            name: "a ready endpoint without node hints: zone hints apply",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]).node_hints(&["node-a"]),
                ep(B).zone_hints(&["zone-a"]),
                ep(C).zone_hints(&["zone-b"]).node_hints(&["node-b"]),
            ],
            cluster: &[A, B],
            local: &[],
        },
        Case {
            name: "no endpoint ready: nothing usable",
            zone: None,
            endpoints: vec![ep(A).not_ready(), ep(B).not_ready().local()],
            cluster: &[],
            local: &[],
        },
        Case {
            name: "some endpoints ready: only those",
            zone: None,
            endpoints: vec![ep(A).not_ready(), ep(B)],
            cluster: &[B],
            local: &[],
        },
        Case {
            name: "all terminating but serving: fallback for both sets",
            zone: None,
            endpoints: vec![
                ep(A).serving_terminating().local(),
                ep(B).serving_terminating().remote(),
            ],
            cluster: &[A, B],
            local: &[A],
        },
        Case {
            name: "only remote serving-terminating endpoints: local set empty, DROP",
            zone: None,
            endpoints: vec![
                ep(A).serving_terminating().remote(),
                ep(B).serving_terminating().remote(),
            ],
            cluster: &[A, B],
            local: &[],
        },
        Case {
            name: "fallback decided per set: ready remote for cluster, terminating local for local",
            zone: None,
            endpoints: vec![
                ep(A).remote(),
                ep(B).not_ready().local(),
                ep(C).serving_terminating().local(),
                ep(D).serving_terminating().remote(),
            ],
            cluster: &[A],
            local: &[C],
        },
        Case {
            name: "ready local endpoint beats terminating local endpoint",
            zone: None,
            endpoints: vec![
                ep(A).local(),
                ep(B).serving_terminating().local(),
                ep(C).remote(),
            ],
            cluster: &[A, C],
            local: &[A],
        },
        Case {
            name: "terminating fallback ignores topology",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).serving_terminating().zone_hints(&["zone-b"]),
                ep(B).serving_terminating().zone_hints(&["zone-a"]),
            ],
            cluster: &[A, B],
            local: &[],
        },
        Case {
            name: "terminating endpoints unused while a ready one exists",
            zone: Some("zone-a"),
            endpoints: vec![
                ep(A).zone_hints(&["zone-a"]),
                ep(B).zone_hints(&["zone-b"]),
                ep(C).serving_terminating().zone_hints(&["zone-a"]),
            ],
            cluster: &[A],
            local: &[],
        },
        Case {
            name: "terminating and not serving: never used",
            zone: None,
            endpoints: vec![
                ep(A).terminating_not_serving().local(),
                ep(B).terminating_not_serving(),
            ],
            cluster: &[],
            local: &[],
        },
        Case {
            name: "no endpoints at all",
            zone: None,
            endpoints: vec![],
            cluster: &[],
            local: &[],
        },
    ]
}

#[test]
fn categorize_endpoints() {
    for case in cases() {
        let yaml = node(case.zone)
            + &svc("topo", "10.96.0.1")
                .service_type("NodePort")
                .node_port("p", 80, 30080)
                .etp_local()
                .yaml()
            + &slice("topo-1", "topo")
                .port("p", 80)
                .endpoints(case.endpoints.clone())
                .yaml();
        let built = build_clean(&yaml, &config());
        let sp = port(&built, "topo", "p", IpFamily::V4);
        let external = sp.external.as_ref().expect("NodePort is external");
        let cluster = fwd(case.cluster, 80);
        let local = match (case.local.is_empty(), case.cluster.is_empty()) {
            (false, _) => fwd(case.local, 80),
            (true, false) => "DROP".to_owned(),
            (true, true) => "REJECT".to_owned(),
        };
        assert_eq!(
            show(&external.cluster_verdict, sp),
            cluster,
            "{}: cluster set",
            case.name
        );
        assert_eq!(
            show(&sp.internal, sp),
            cluster,
            "{}: internal (iTP Cluster)",
            case.name
        );
        assert_eq!(
            show(&external.verdict, sp),
            local,
            "{}: local set",
            case.name
        );
    }
}

#[test]
fn internal_local_without_external_uses_local_set() {
    let cases: Vec<(&str, Vec<Ep>, String)> = vec![
        (
            "all remote: DROP",
            vec![ep(A).remote(), ep(B).remote()],
            "DROP".to_owned(),
        ),
        (
            "some local",
            vec![ep(A).local(), ep(B).remote()],
            fwd(&[A], 80),
        ),
        (
            "all local",
            vec![ep(A).local(), ep(B).local()],
            fwd(&[A, B], 80),
        ),
        ("no endpoints: REJECT", vec![], "REJECT".to_owned()),
    ];
    for (name, endpoints, expected) in cases {
        let yaml = svc("itp", "10.96.0.2").port("p", 80).itp_local().yaml()
            + &slice("itp-1", "itp")
                .port("p", 80)
                .endpoints(endpoints)
                .yaml();
        let built = build_clean(&yaml, &config());
        let sp = port(&built, "itp", "p", IpFamily::V4);
        assert_eq!(show(&sp.internal, sp), expected, "{name}");
        assert!(
            sp.external.is_none(),
            "{name}: ClusterIP-only has no external traffic"
        );
        assert!(sp.internal_policy_local, "{name}");
    }
}

#[test]
fn external_policy_ignored_without_external_frontend() {
    let yaml = svc("etp", "10.96.0.3").port("p", 80).etp_local().yaml()
        + &slice("etp-1", "etp")
            .port("p", 80)
            .endpoints([ep(A).remote(), ep(B).local()])
            .yaml();
    let built = build_clean(&yaml, &config());
    let sp = port(&built, "etp", "p", IpFamily::V4);
    assert!(sp.external.is_none());
    assert!(
        !sp.external_policy_local,
        "ClusterIP type is not externally accessible"
    );
    assert_eq!(show(&sp.internal, sp), fwd(&[A, B], 80));
}
