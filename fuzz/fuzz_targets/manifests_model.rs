//! Arbitrary text → manifests → cluster state → model, full and incremental.
//!
//! Nothing in the model may panic for any input (bad input costs one warning, never the
//! proxy), and these invariants must hold for every model it builds:
//! - every `Verdict::Forward` set is non-empty, ascending, and indexes `endpoints`;
//! - `Incremental::update` ends with the same model as `build`, whether it got there by a
//!   full rebuild (`Changes::All`) or by rebuilding the Services of changed slices;
//! - the diff an incremental update reports equals `diff(before, after)` (as sets);
//! - `diff(model, model)` is empty.

#![no_main]

use std::{
    collections::{BTreeSet, HashSet},
    net::IpAddr,
};

use kproxy_model::{
    Changes, ClusterState, Incremental, ModelConfig, ModelDiff, NodePortAddresses, ObjectKey,
    ProxyModel, ServicePort, Verdict, build, diff,
    manifest::{ManifestObject, parse_documents},
    validate_endpoint_slice, validate_node, validate_service,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let state = cluster_state(&text);
    for config in configs(&state) {
        check(&state, &config);
    }
});

fn cluster_state(text: &str) -> ClusterState {
    let mut state = ClusterState::default();
    for object in parse_documents(text).into_iter().flatten() {
        let Some(key) = state.insert_manifest(&object) else {
            continue;
        };
        // The source-side checks on the API object must not panic either, and must say
        // what the converted object says.
        match &object {
            ManifestObject::Service(svc) => {
                assert_eq!(validate_service(svc), state.services[&key].validate());
            }
            ManifestObject::EndpointSlice(slice) => {
                assert_eq!(
                    validate_endpoint_slice(slice),
                    state.slices[&key].validate()
                );
            }
            ManifestObject::Node(node) => {
                let converted = state.node.as_ref().expect("just set");
                assert_eq!(validate_node(node), converted.validate());
            }
            ManifestObject::Ignored { .. } => {}
        }
    }
    state
}

/// A plain config, one with cluster CIDRs, and one with masquerade-all and NodePort CIDRs;
/// all named after the manifest's Node so endpoint locality is exercised.
fn configs(state: &ClusterState) -> [ModelConfig; 3] {
    let node_name = state
        .node
        .as_ref()
        .map(|n| n.name().to_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "this-node".to_owned());
    let plain = ModelConfig {
        node_name,
        ..ModelConfig::default()
    };
    let with_cidrs = ModelConfig {
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().expect("literal"),
            "fd00:10:244::/56".parse().expect("literal"),
        ],
        ..plain.clone()
    };
    let masquerade_all = ModelConfig {
        masquerade_all: true,
        nodeport_addresses: NodePortAddresses::Cidrs(vec![
            "0.0.0.0/0".parse().expect("literal"),
            "::/0".parse().expect("literal"),
        ]),
        local_addresses: vec![
            IpAddr::from([192, 0, 2, 10]),
            IpAddr::from([127, 0, 0, 1]),
            "2001:db8::10".parse().expect("literal"),
        ],
        proxy_name: Some("kproxy".to_owned()),
        ..with_cidrs.clone()
    };
    [plain, with_cidrs, masquerade_all]
}

fn check(state: &ClusterState, config: &ModelConfig) {
    let built = build(state, config);
    check_model(&built.model);
    assert!(
        diff(&built.model, &built.model).is_empty(),
        "diff of a model with itself is not empty"
    );

    // Full rebuild, then a slices-only update that changes nothing.
    let mut inc = Incremental::default();
    let update = inc.update(state, &Changes::All, config);
    assert!(update.full, "Changes::All must rebuild everything");
    assert_eq!(inc.model(), &built.model, "Changes::All differs from build");
    let slice_keys: BTreeSet<ObjectKey> = state.slices.keys().cloned().collect();
    let update = inc.update(state, &slices_changed(slice_keys.clone()), config);
    assert_eq!(
        inc.model(),
        &built.model,
        "no-op slice update differs from build"
    );
    assert!(
        update.diff.is_empty(),
        "no-op slice update reported {:?}",
        update.diff
    );

    // From the state without slices to the full state, slices-only: the incremental path
    // does real work here.
    let mut bare = state.clone();
    bare.slices.clear();
    let mut inc = Incremental::default();
    inc.update(&bare, &Changes::All, config);
    let before = inc.model().clone();
    let update = inc.update(state, &slices_changed(slice_keys.clone()), config);
    assert_eq!(
        inc.model(),
        &built.model,
        "incremental add of slices differs from build"
    );
    assert_same_diff(&update.diff, &diff(&before, &built.model));

    // And back: every slice removed.
    let update = inc.update(&bare, &slices_changed(slice_keys), config);
    assert_eq!(
        inc.model(),
        &build(&bare, config).model,
        "incremental removal of slices differs from build"
    );
    assert_same_diff(&update.diff, &diff(&built.model, inc.model()));
}

fn slices_changed(slices: BTreeSet<ObjectKey>) -> Changes {
    Changes::Keys {
        services: BTreeSet::new(),
        slices,
        node: false,
    }
}

/// The same changes, whatever the order: an incremental update lists them per Service.
fn assert_same_diff(got: &ModelDiff, want: &ModelDiff) {
    fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
        let mut v = v.to_vec();
        v.sort();
        v
    }
    assert_eq!(sorted(&got.added), sorted(&want.added), "added differs");
    assert_eq!(
        sorted(&got.updated),
        sorted(&want.updated),
        "updated differs"
    );
    assert_eq!(
        sorted(&got.removed),
        sorted(&want.removed),
        "removed differs"
    );
    assert_eq!(
        sorted(&got.stale_udp_endpoints),
        sorted(&want.stale_udp_endpoints),
        "stale_udp_endpoints differs"
    );
}

fn check_model(model: &ProxyModel) {
    for (key, port) in &model.ports {
        assert_eq!(key, &port.key, "port stored under another key");
        check_verdict(port, &port.internal, "internal");
        if let Some(external) = &port.external {
            check_verdict(port, &external.verdict, "external");
            check_verdict(port, &external.cluster_verdict, "external cluster");
        }
    }
}

fn check_verdict(port: &ServicePort, verdict: &Verdict, what: &str) {
    let Verdict::Forward(set) = verdict else {
        return;
    };
    assert!(!set.is_empty(), "{}: empty {what} Forward set", port.key);
    let mut seen = HashSet::new();
    for &index in &set.0 {
        assert!(
            (index as usize) < port.endpoints.len(),
            "{}: {what} index {index} out of range ({} endpoints)",
            port.key,
            port.endpoints.len()
        );
        assert!(
            seen.insert(index),
            "{}: {what} repeats index {index}",
            port.key
        );
    }
    assert!(
        set.0.is_sorted(),
        "{}: {what} indices not ascending: {:?}",
        port.key,
        set.0
    );
}
