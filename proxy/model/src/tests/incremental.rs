//! The incremental model equals a full build after every change, and reports the same diff.

use std::{collections::BTreeSet, fmt::Write as _, sync::Arc};

use super::fixtures::{config, state};
use crate::{Changes, ClusterState, Incremental, ObjectKey, build, diff};

fn services(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let ip = i + 1;
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: t}}\nspec: {{clusterIP: 198.51.100.{ip}, clusterIPs: [198.51.100.{ip}], ports: [{{name: dns, port: 53, protocol: UDP}}]}}\n"
        );
    }
    out
}

fn slice(name: &str, service: &str, ips: &[u8]) -> String {
    let mut eps = String::new();
    for i in ips {
        let _ = writeln!(
            eps,
            "  - {{addresses: [\"10.244.1.{i}\"], nodeName: this-node}}"
        );
    }
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: t, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nports: [{{name: dns, port: 5353, protocol: UDP}}]\nendpoints:\n{eps}"
    )
}

/// Applies `edit` (slice key → new YAML, or None to remove) to `base`.
fn with_slices(base: &ClusterState, edits: &[(&str, Option<String>)]) -> (ClusterState, Changes) {
    let mut next = base.clone();
    let mut changed = BTreeSet::new();
    for (name, yaml) in edits {
        let key = ObjectKey::new("t", *name);
        match yaml {
            Some(y) => {
                let parsed = state(y);
                next.slices
                    .insert(key.clone(), Arc::clone(&parsed.slices[&key]));
            }
            None => {
                next.slices.remove(&key);
            }
        }
        changed.insert(key);
    }
    (
        next,
        Changes::Keys {
            services: BTreeSet::new(),
            slices: changed,
            node: false,
        },
    )
}

#[test]
fn slice_changes_match_a_full_build() {
    let config = config();
    let mut current = state(&format!(
        "{}{}{}",
        services(4),
        slice("a", "s0", &[1, 2]),
        slice("b", "s1", &[3])
    ));
    let mut inc = Incremental::default();
    let first = inc.update(&current, &Changes::All, &config);
    assert!(first.full);
    assert_eq!(inc.model(), &build(&current, &config).model);

    let steps: Vec<Vec<(&str, Option<String>)>> = vec![
        vec![("a", Some(slice("a", "s0", &[1])))], // endpoint removed
        vec![("c", Some(slice("c", "s0", &[7, 8])))], // second slice of s0
        vec![("b", Some(slice("b", "s2", &[3])))], // slice moves to s2
        vec![("a", None), ("d", Some(slice("d", "s3", &[9])))], // removed and added
        vec![("e", Some(slice("e", "nope", &[4])))], // slice of no Service
        vec![("c", None)],
    ];
    for (i, edits) in steps.into_iter().enumerate() {
        let before = inc.model().clone();
        let (next, changes) = with_slices(&current, &edits);
        let update = inc.update(&next, &changes, &config);
        let full = build(&next, &config);
        assert!(!update.full, "step {i} should be incremental");
        assert_eq!(
            inc.model(),
            &full.model,
            "step {i}: model differs from a full build"
        );
        assert_eq!(
            update.diff,
            diff(&before, &full.model),
            "step {i}: diff differs"
        );
        current = next;
    }
}

#[test]
fn removed_udp_endpoint_is_reported_stale() {
    let config = config();
    let current = state(&format!("{}{}", services(1), slice("a", "s0", &[1, 2])));
    let mut inc = Incremental::default();
    inc.update(&current, &Changes::All, &config);
    let (next, changes) = with_slices(&current, &[("a", Some(slice("a", "s0", &[2])))]);
    let update = inc.update(&next, &changes, &config);
    let stale: Vec<String> = update
        .diff
        .stale_udp_endpoints
        .iter()
        .map(|(_, e)| e.ip.to_string())
        .collect();
    assert_eq!(stale, ["10.244.1.1"]);
}

#[test]
fn service_node_or_config_changes_rebuild_everything() {
    let config = config();
    let current = state(&format!("{}{}", services(2), slice("a", "s0", &[1])));
    let mut inc = Incremental::default();
    inc.update(&current, &Changes::All, &config);
    let svc_change = Changes::Keys {
        services: [ObjectKey::new("t", "s1")].into(),
        slices: BTreeSet::new(),
        node: false,
    };
    assert!(inc.update(&current, &svc_change, &config).full);
    let node_change = Changes::Keys {
        services: BTreeSet::new(),
        slices: BTreeSet::new(),
        node: true,
    };
    assert!(inc.update(&current, &node_change, &config).full);
    let mut other = config.clone();
    other.masquerade_all = true;
    assert!(inc.update(&current, &Changes::none(), &other).full);
    assert!(
        !inc.update(&current, &Changes::none(), &other).full,
        "nothing changed: nothing rebuilt"
    );
}

#[test]
fn a_service_left_out_for_a_conflict_is_decided_by_a_full_build() {
    // s1 claims s0's ClusterIP:port and is left out; a slice change of s1 must not sneak
    // it in through an incremental rebuild.
    let config = config();
    let yaml = format!(
        "{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s1, namespace: t}}\nspec: {{clusterIP: 198.51.100.1, clusterIPs: [198.51.100.1], ports: [{{name: dns, port: 53, protocol: UDP}}]}}\n{}",
        services(1),
        slice("a", "s0", &[1])
    );
    let current = state(&yaml);
    let mut inc = Incremental::default();
    inc.update(&current, &Changes::All, &config);
    let (next, changes) = with_slices(&current, &[("b", Some(slice("b", "s1", &[5])))]);
    inc.update(&next, &changes, &config);
    assert_eq!(inc.model(), &build(&next, &config).model);
}
