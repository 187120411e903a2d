//! Model diffs: added/updated/removed ports and stale UDP/SCTP endpoints.

use super::fixtures::{Ep, build_clean, config, ep, slice, svc};
use crate::{ModelDiff, ProxyModel, diff};

/// A model with one UDP port, one SCTP port and one TCP port, all served by `endpoints`.
fn model(endpoints: &[Ep]) -> ProxyModel {
    let yaml = svc("dns", "10.96.0.70")
        .port_proto("udp", 53, "UDP")
        .port_proto("sctp", 54, "SCTP")
        .port("tcp", 55)
        .yaml()
        + &slice("dns-1", "dns")
            .port_proto("udp", 53, "UDP")
            .port_proto("sctp", 54, "SCTP")
            .port("tcp", 55)
            .endpoints(endpoints.iter().cloned())
            .yaml();
    build_clean(&yaml, &config()).model
}

fn stale(result: &ModelDiff) -> Vec<String> {
    result
        .stale_udp_endpoints
        .iter()
        .map(|(key, ep)| format!("{} {}:{}", key.name.port_name, ep.ip, ep.port))
        .collect()
}

fn names(keys: &[crate::ServicePortKey]) -> Vec<String> {
    keys.iter()
        .map(|k| format!("{}/{}", k.name.name, k.name.port_name))
        .collect()
}

#[test]
fn identical_models_have_no_diff() {
    let endpoints = [ep("10.0.0.1"), ep("10.0.0.2")];
    assert!(diff(&model(&endpoints), &model(&endpoints)).is_empty());
}

#[test]
fn removed_endpoint_is_stale_for_udp_and_sctp_only() {
    let old = model(&[ep("10.0.0.1"), ep("10.0.0.2")]);
    let new = model(&[ep("10.0.0.1")]);
    let result = diff(&old, &new);
    assert_eq!(names(&result.updated), ["dns/sctp", "dns/tcp", "dns/udp"]);
    assert!(result.added.is_empty() && result.removed.is_empty());
    assert_eq!(stale(&result), ["sctp 10.0.0.2:54", "udp 10.0.0.2:53"]);
}

#[test]
fn endpoint_no_longer_forwarded_to_is_stale_even_if_listed() {
    // Still in the slice, but not ready: no verdict forwards to it any more.
    let old = model(&[ep("10.0.0.1"), ep("10.0.0.2")]);
    let new = model(&[ep("10.0.0.1"), ep("10.0.0.2").not_ready()]);
    assert_eq!(
        stale(&diff(&old, &new)),
        ["sctp 10.0.0.2:54", "udp 10.0.0.2:53"]
    );
}

#[test]
fn new_endpoints_are_not_stale() {
    let result = diff(
        &model(&[ep("10.0.0.1")]),
        &model(&[ep("10.0.0.1"), ep("10.0.0.2")]),
    );
    assert_eq!(result.updated.len(), 3);
    assert!(result.stale_udp_endpoints.is_empty());
}

#[test]
fn removed_service_lists_removed_ports_and_all_their_endpoints() {
    let old = model(&[ep("10.0.0.1"), ep("10.0.0.2").not_ready()]);
    let result = diff(&old, &ProxyModel::default());
    assert_eq!(names(&result.removed), ["dns/sctp", "dns/tcp", "dns/udp"]);
    assert_eq!(
        stale(&result),
        ["sctp 10.0.0.1:54", "udp 10.0.0.1:53"],
        "only endpoints that were served"
    );
    let back = diff(&ProxyModel::default(), &old);
    assert_eq!(names(&back.added), ["dns/sctp", "dns/tcp", "dns/udp"]);
    assert!(
        back.removed.is_empty() && back.updated.is_empty() && back.stale_udp_endpoints.is_empty()
    );
}

#[test]
fn unchanged_ports_are_not_reported_among_changes() {
    let base = svc("a", "10.96.0.71").port_proto("udp", 53, "UDP").yaml()
        + &slice("a-1", "a")
            .port_proto("udp", 53, "UDP")
            .endpoints([ep("10.0.1.1")])
            .yaml();
    let old = build_clean(
        &(base.clone() + &svc("b", "10.96.0.72").port("http", 80).yaml()),
        &config(),
    )
    .model;
    let new = build_clean(
        &(base + &svc("c", "10.96.0.73").port("http", 80).yaml()),
        &config(),
    )
    .model;
    let result = diff(&old, &new);
    assert_eq!(names(&result.added), ["c/http"]);
    assert_eq!(names(&result.removed), ["b/http"]);
    assert!(result.updated.is_empty());
    assert!(result.stale_udp_endpoints.is_empty());
}
