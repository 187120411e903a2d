//! Verdicts and masquerading (the expectations of upstream's nftables `proxier_test.go`:
//! traffic policies, terminating endpoints, no-endpoint REJECT versus DROP, masquerade).

use super::fixtures::{
    Ep, POD_CIDR4, POD_CIDR6, build_clean, config, config_with_cidrs, ep, fwd, port, show, slice,
    svc,
};
use crate::{ExternalTraffic, InternalMasquerade, IpFamily, ModelConfig, ServicePort};

const LOCAL_1: &str = "10.180.0.1";
const LOCAL_2: &str = "10.180.0.2";
const REMOTE_1: &str = "10.180.1.1";
const REMOTE_2: &str = "10.180.1.2";

/// A NodePort Service `svc` with the given policies and endpoints, built with `cfg`.
fn node_port_service(
    etp_local: bool,
    itp_local: bool,
    endpoints: Vec<Ep>,
    cfg: &ModelConfig,
) -> ServicePort {
    let mut service = svc("svc", "172.30.0.41")
        .service_type("NodePort")
        .node_port("p80", 80, 3001);
    if etp_local {
        service = service.etp_local();
    }
    if itp_local {
        service = service.itp_local();
    }
    let yaml = service.yaml()
        + &slice("svc-1", "svc")
            .port("p80", 80)
            .endpoints(endpoints)
            .yaml();
    port(&build_clean(&yaml, cfg), "svc", "p80", IpFamily::V4).clone()
}

fn external(sp: &ServicePort) -> &ExternalTraffic {
    sp.external
        .as_ref()
        .expect("NodePort Services have external traffic")
}

#[test]
fn no_endpoints_rejects_everything() {
    for (etp_local, itp_local) in [(false, false), (true, false), (false, true), (true, true)] {
        let sp = node_port_service(etp_local, itp_local, vec![], &config());
        let ext = external(&sp);
        let what = format!("eTP local={etp_local} iTP local={itp_local}");
        assert_eq!(show(&sp.internal, &sp), "REJECT", "{what}");
        assert_eq!(show(&ext.verdict, &sp), "REJECT", "{what}");
        assert_eq!(show(&ext.cluster_verdict, &sp), "REJECT", "{what}");
    }
}

#[test]
fn cluster_policy_masquerades_external_traffic() {
    let sp = node_port_service(
        false,
        false,
        vec![ep(LOCAL_1).local(), ep(REMOTE_1).remote()],
        &config_with_cidrs(),
    );
    let ext = external(&sp);
    let all = fwd(&[LOCAL_1, REMOTE_1], 80);
    assert_eq!(show(&sp.internal, &sp), all);
    assert_eq!(show(&ext.verdict, &sp), all);
    assert!(ext.masquerade);
    assert!(ext.pod_sources_use_cluster.is_empty());
    assert!(!ext.node_sources_use_cluster);
    assert_eq!(ext.cluster_verdict, ext.verdict);
}

#[test]
fn local_external_policy_keeps_source_and_short_circuits_pods_and_node() {
    let sp = node_port_service(
        true,
        false,
        vec![ep(LOCAL_1).local(), ep(REMOTE_1).remote()],
        &config_with_cidrs(),
    );
    let ext = external(&sp);
    assert_eq!(show(&ext.verdict, &sp), fwd(&[LOCAL_1], 80));
    assert!(!ext.masquerade);
    assert_eq!(
        ext.pod_sources_use_cluster,
        vec![POD_CIDR4.parse().unwrap()],
        "pod CIDR of this family only"
    );
    assert!(ext.node_sources_use_cluster);
    assert_eq!(
        show(&ext.cluster_verdict, &sp),
        fwd(&[LOCAL_1, REMOTE_1], 80)
    );
    assert_eq!(
        show(&sp.internal, &sp),
        fwd(&[LOCAL_1, REMOTE_1], 80),
        "internal traffic keeps Cluster policy"
    );
    assert_eq!(sp.local_ready_endpoints, 1);
}

#[test]
fn local_external_policy_without_cluster_cidr_has_no_pod_short_circuit() {
    let sp = node_port_service(true, false, vec![ep(LOCAL_1).local()], &config());
    assert!(external(&sp).pod_sources_use_cluster.is_empty());
    assert!(external(&sp).node_sources_use_cluster);
}

#[test]
fn local_policies_drop_when_endpoints_exist_only_elsewhere() {
    let sp = node_port_service(
        true,
        true,
        vec![ep(REMOTE_1).remote(), ep(REMOTE_2).remote()],
        &config(),
    );
    let ext = external(&sp);
    assert_eq!(show(&sp.internal, &sp), "DROP");
    assert_eq!(show(&ext.verdict, &sp), "DROP");
    assert_eq!(
        show(&ext.cluster_verdict, &sp),
        fwd(&[REMOTE_1, REMOTE_2], 80),
        "short-circuited traffic still works"
    );
    assert_eq!(sp.local_ready_endpoints, 0);
}

#[test]
fn internal_local_policy_does_not_touch_external_traffic() {
    let sp = node_port_service(false, true, vec![ep(REMOTE_1).remote()], &config());
    let ext = external(&sp);
    assert_eq!(show(&sp.internal, &sp), "DROP");
    assert_eq!(show(&ext.verdict, &sp), fwd(&[REMOTE_1], 80));
    assert!(ext.masquerade);
}

#[test]
fn terminating_endpoints_with_local_external_policy() {
    // (case, endpoints, local set verdict, cluster set verdict, local ready count)
    let cases: Vec<(&str, Vec<Ep>, String, String, usize)> = vec![
        (
            "ready local endpoints are preferred over terminating ones",
            vec![
                ep(LOCAL_1).local(),
                ep(LOCAL_2).serving_terminating().local(),
                ep(REMOTE_1).remote(),
            ],
            fwd(&[LOCAL_1], 80),
            fwd(&[LOCAL_1, REMOTE_1], 80),
            1,
        ),
        (
            "only serving-terminating local endpoints: they are used",
            vec![
                ep(LOCAL_1).serving_terminating().local(),
                ep(LOCAL_2).serving_terminating().local(),
                ep(REMOTE_1).remote(),
            ],
            fwd(&[LOCAL_1, LOCAL_2], 80),
            fwd(&[REMOTE_1], 80),
            0,
        ),
        (
            "local endpoints terminating and not serving: DROP",
            vec![
                ep(LOCAL_1).terminating_not_serving().local(),
                ep(REMOTE_1).remote(),
            ],
            "DROP".to_owned(),
            fwd(&[REMOTE_1], 80),
            0,
        ),
        (
            "only remote serving-terminating endpoints: DROP locally, fallback in cluster",
            vec![
                ep(REMOTE_1).serving_terminating().remote(),
                ep(REMOTE_2).terminating_not_serving().remote(),
            ],
            "DROP".to_owned(),
            fwd(&[REMOTE_1], 80),
            0,
        ),
        (
            "nothing serving anywhere: REJECT",
            vec![
                ep(LOCAL_1).terminating_not_serving().local(),
                ep(REMOTE_1).not_ready().remote(),
            ],
            "REJECT".to_owned(),
            "REJECT".to_owned(),
            0,
        ),
    ];
    for (name, endpoints, local, cluster, local_ready) in cases {
        let sp = node_port_service(true, false, endpoints, &config());
        let ext = external(&sp);
        assert_eq!(show(&ext.verdict, &sp), local, "{name}: external");
        assert_eq!(show(&ext.cluster_verdict, &sp), cluster, "{name}: cluster");
        assert_eq!(show(&sp.internal, &sp), cluster, "{name}: internal");
        assert_eq!(
            sp.local_ready_endpoints, local_ready,
            "{name}: health check count"
        );
    }
}

#[test]
fn internal_masquerade_follows_config() {
    let masquerade_all = ModelConfig {
        masquerade_all: true,
        ..config_with_cidrs()
    };
    let cases = [
        (
            "masquerade-all",
            masquerade_all,
            InternalMasquerade::Always,
            InternalMasquerade::Always,
        ),
        (
            "cluster CIDRs",
            config_with_cidrs(),
            InternalMasquerade::SourceNotIn(vec![POD_CIDR4.parse().unwrap()]),
            InternalMasquerade::SourceNotIn(vec![POD_CIDR6.parse().unwrap()]),
        ),
        (
            "nothing known",
            config(),
            InternalMasquerade::HairpinOnly,
            InternalMasquerade::HairpinOnly,
        ),
    ];
    for (name, cfg, v4, v6) in cases {
        let yaml = svc("dual", "172.30.0.42")
            .cluster_ip("fd00:30::42")
            .port("p80", 80)
            .yaml();
        let built = build_clean(&yaml, &cfg);
        assert_eq!(
            port(&built, "dual", "p80", IpFamily::V4).internal_masquerade,
            v4,
            "{name}"
        );
        assert_eq!(
            port(&built, "dual", "p80", IpFamily::V6).internal_masquerade,
            v6,
            "{name}"
        );
    }
}

#[test]
fn forward_sets_index_the_port_endpoints() {
    let sp = node_port_service(
        true,
        false,
        vec![ep(REMOTE_1).remote(), ep(LOCAL_1).local()],
        &config(),
    );
    // endpoints are sorted, so LOCAL_1 (10.180.0.1) comes first.
    let crate::Verdict::Forward(set) = &external(&sp).verdict else {
        panic!("expected forward")
    };
    assert_eq!(set.0, vec![0]);
    assert_eq!(sp.endpoints[0].ip.to_string(), LOCAL_1);
}
