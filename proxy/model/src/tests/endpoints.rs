//! EndpointSlices → endpoints (upstream's `endpointslicecache_test.go`): merging, dedup,
//! port matching, conditions, families, locality, interning.

use std::{net::IpAddr, sync::Arc};

use super::fixtures::{THIS_NODE, build_clean, config, ep, port, slice, svc};
use crate::{Endpoint, IpFamily, LABEL_SERVICE_NAME};

fn endpoint_lines(endpoints: &[Endpoint]) -> Vec<String> {
    endpoints
        .iter()
        .map(|e| {
            format!(
                "{}:{} ready={} serving={} terminating={} local={} node={} zone={}",
                e.ip,
                e.port,
                e.ready,
                e.serving,
                e.terminating,
                e.is_local,
                e.node_name.as_deref().unwrap_or("-"),
                e.zone.as_deref().unwrap_or("-")
            )
        })
        .collect()
}

fn web() -> String {
    svc("web", "10.96.0.10")
        .port("http", 80)
        .port_proto("dns", 53, "UDP")
        .yaml()
}

#[test]
fn slices_of_a_service_are_merged_and_sorted() {
    let yaml = web()
        + &slice("web-b", "web")
            .port("http", 8080)
            .endpoints([ep("10.0.0.3"), ep("10.0.0.1")])
            .yaml()
        + &slice("web-a", "web")
            .port("http", 8080)
            .endpoints([ep("10.0.0.2")])
            .yaml();
    let built = build_clean(&yaml, &config());
    let sp = port(&built, "web", "http", IpFamily::V4);
    let ips: Vec<String> = sp
        .endpoints
        .iter()
        .map(|e| format!("{}:{}", e.ip, e.port))
        .collect();
    assert_eq!(ips, ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"]);
}

#[test]
fn conditions_default_as_the_api_documents() {
    let yaml = web()
        + &slice("web-1", "web")
            .port("http", 80)
            .endpoints([
                ep("10.0.0.1"),
                ep("10.0.0.2").conditions(false, true, true),
                ep("10.0.0.3").zone("z1").local(),
            ])
            .yaml();
    let built = build_clean(&yaml, &config());
    assert_eq!(
        endpoint_lines(&port(&built, "web", "http", IpFamily::V4).endpoints),
        [
            "10.0.0.1:80 ready=true serving=true terminating=false local=false node=- zone=-",
            "10.0.0.2:80 ready=false serving=true terminating=true local=false node=- zone=-",
            "10.0.0.3:80 ready=true serving=true terminating=false local=true node=node-a zone=z1",
        ]
    );
}

#[test]
fn ports_are_matched_by_name_and_protocol() {
    let yaml = web()
        + &slice("web-1", "web")
            .port("http", 8080)
            .port_proto("dns", 5353, "UDP")
            .port_proto("http-alt", 9090, "TCP")
            .endpoints([ep("10.0.0.1")])
            .yaml()
        // Same name, other protocol: not the UDP "dns" port's endpoints.
        + &slice("web-2", "web").port_proto("dns", 5454, "TCP").endpoints([ep("10.0.0.2")]).yaml();
    let built = build_clean(&yaml, &config());
    let targets = |name: &str| -> Vec<String> {
        port(&built, "web", name, IpFamily::V4)
            .endpoints
            .iter()
            .map(|e| format!("{}:{}", e.ip, e.port))
            .collect()
    };
    assert_eq!(targets("http"), ["10.0.0.1:8080"]);
    assert_eq!(targets("dns"), ["10.0.0.1:5353"]);
}

#[test]
fn duplicate_endpoint_across_slices_is_kept_once_preferring_local_then_ready() {
    // (name, one copy, other copy, expected trait, whether slice order must not matter)
    let cases = [
        (
            "local copy wins",
            ep("10.0.0.1").remote(),
            ep("10.0.0.1").local(),
            "local=true",
            true,
        ),
        (
            "ready copy wins",
            ep("10.0.0.1").not_ready(),
            ep("10.0.0.1"),
            "ready=true",
            true,
        ),
        (
            "tie: the copy in the first slice by name",
            ep("10.0.0.1").zone("first"),
            ep("10.0.0.1").zone("second"),
            "zone=first",
            false,
        ),
    ];
    for (name, one, other, expected, symmetric) in cases {
        let mut placements = vec![(one.clone(), other.clone())];
        if symmetric {
            placements.push((other, one));
        }
        for (in_a, in_b) in placements {
            let yaml = web()
                + &slice("web-a", "web")
                    .port("http", 80)
                    .endpoints([in_a])
                    .yaml()
                + &slice("web-b", "web")
                    .port("http", 80)
                    .endpoints([in_b])
                    .yaml();
            let built = build_clean(&yaml, &config());
            let lines = endpoint_lines(&port(&built, "web", "http", IpFamily::V4).endpoints);
            assert!(
                lines.len() == 1 && lines[0].contains(expected),
                "{name}: {lines:?}"
            );
        }
    }
}

#[test]
fn same_address_on_two_target_ports_is_two_endpoints() {
    let yaml = web()
        + &slice("web-a", "web")
            .port("http", 80)
            .endpoints([ep("10.0.0.1")])
            .yaml()
        + &slice("web-b", "web")
            .port("http", 81)
            .endpoints([ep("10.0.0.1")])
            .yaml();
    let built = build_clean(&yaml, &config());
    assert_eq!(port(&built, "web", "http", IpFamily::V4).endpoints.len(), 2);
}

#[test]
fn only_the_first_address_is_used() {
    let yaml = web()
        + &slice("web-1", "web")
            .port("http", 80)
            .endpoints([ep("10.0.0.1").extra_address("10.0.0.9")])
            .yaml();
    let built = build_clean(&yaml, &config());
    let ips: Vec<IpAddr> = port(&built, "web", "http", IpFamily::V4)
        .endpoints
        .iter()
        .map(|e| e.ip)
        .collect();
    assert_eq!(ips, ["10.0.0.1".parse::<IpAddr>().unwrap()]);
}

#[test]
fn slices_of_other_families_namespaces_and_fqdn_are_not_used() {
    let yaml = web()
        + &slice("web-v4", "web")
            .port("http", 80)
            .endpoints([ep("10.0.0.1")])
            .yaml()
        + &slice("web-v6", "web")
            .ipv6()
            .port("http", 80)
            .endpoints([ep("fd00::1")])
            .yaml()
        + &slice("web-fqdn", "web")
            .address_type("FQDN")
            .port("http", 80)
            .endpoints([ep("example.com")])
            .yaml()
        + &svc("web", "10.96.1.10")
            .namespace("other")
            .port("http", 80)
            .yaml()
        + &slice("web-other", "web")
            .namespace("other")
            .port("http", 80)
            .endpoints([ep("10.0.0.7")])
            .yaml();
    let built = build_clean(&yaml, &config());
    let sp = port(&built, "web", "http", IpFamily::V4);
    assert_eq!(
        sp.endpoints
            .iter()
            .map(|e| e.ip.to_string())
            .collect::<Vec<_>>(),
        ["10.0.0.1"]
    );
    assert_eq!(
        built
            .model
            .ports
            .keys()
            .filter(|k| k.family == IpFamily::V6)
            .count(),
        0,
        "single-stack IPv4"
    );
}

#[test]
fn endpoint_on_a_node_is_local_only_when_the_names_match() {
    let mut nameless = config();
    nameless.node_name.clear();
    for (cfg, expected) in [(config(), true), (nameless, false)] {
        let yaml = web()
            + &slice("web-1", "web")
                .port("http", 80)
                .endpoints([ep("10.0.0.1").node(THIS_NODE)])
                .yaml();
        let built = build_clean(&yaml, &cfg);
        let sp = port(&built, "web", "http", IpFamily::V4);
        assert_eq!(
            sp.endpoints[0].is_local, expected,
            "node name {:?}",
            cfg.node_name
        );
    }
}

#[test]
fn node_names_and_zones_are_shared_not_copied() {
    let endpoints = (1..=20).map(|i| ep(&format!("10.0.1.{i}")).remote().zone("zone-x"));
    let yaml = web()
        + &slice("web-1", "web")
            .port("http", 80)
            .port_proto("dns", 53, "UDP")
            .endpoints(endpoints)
            .yaml()
        + &slice("web-2", "web")
            .port("http", 80)
            .endpoints([ep("10.0.2.1").remote().zone("zone-x")])
            .yaml();
    let built = build_clean(&yaml, &config());
    let all: Vec<&Endpoint> = built
        .model
        .ports
        .values()
        .flat_map(|p| &p.endpoints)
        .collect();
    assert_eq!(all.len(), 41);
    let first_node = all[0].node_name.as_ref().unwrap();
    let first_zone = all[0].zone.as_ref().unwrap();
    for endpoint in &all {
        assert!(Arc::ptr_eq(
            endpoint.node_name.as_ref().unwrap(),
            first_node
        ));
        assert!(Arc::ptr_eq(endpoint.zone.as_ref().unwrap(), first_zone));
    }
}

#[test]
fn service_name_label_ties_slices_to_services() {
    // A slice named like the Service but labelled for another one is the other's.
    let yaml = web()
        + &svc("api", "10.96.0.11").port("http", 80).yaml()
        + &slice("web", "api")
            .port("http", 80)
            .endpoints([ep("10.0.0.5")])
            .yaml();
    let built = build_clean(&yaml, &config());
    assert!(
        port(&built, "web", "http", IpFamily::V4)
            .endpoints
            .is_empty()
    );
    assert_eq!(port(&built, "api", "http", IpFamily::V4).endpoints.len(), 1);
    assert_eq!(LABEL_SERVICE_NAME, "kubernetes.io/service-name");
}
