//! Which endpoints serve cluster-policy and local-policy traffic (upstream:
//! `CategorizeEndpoints` in `topology.go`).

use std::sync::Arc;

use crate::Endpoint;

/// Topology hints of one endpoint, borrowed from its slice.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hints<'s> {
    /// `hints.forNodes` names.
    pub(crate) for_nodes: &'s [Arc<str>],
    /// `hints.forZones` names.
    pub(crate) for_zones: &'s [Arc<str>],
}

/// The endpoint sets of one service port, as indices into its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Categories {
    /// Usable endpoints for Cluster traffic policy, topology applied.
    pub(crate) cluster: Vec<u32>,
    /// Usable endpoints on this node, for Local traffic policy (hints never apply).
    pub(crate) local: Vec<u32>,
    /// Whether any endpoint anywhere is usable (ready, or serving and terminating). Decides
    /// between REJECT (none at all) and DROP (none here) when a set is empty.
    pub(crate) has_any: bool,
}

/// How hints restrict the cluster set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopologyMode {
    /// No restriction.
    None,
    /// Only endpoints hinted for this node (`trafficDistribution: PreferSameNode`).
    SameNode,
    /// Only endpoints hinted for this node's zone (`PreferSameZone`/`PreferClose`, or the
    /// `topology-mode: Auto` annotation).
    SameZone,
}

/// Splits `endpoints` into the cluster and local sets.
///
/// Each set uses ready endpoints; when a set has none, it falls back to endpoints that are
/// serving and terminating (KEP-1669), independently for cluster and local. Hints narrow the
/// ready part of the cluster set only, and only when every ready endpoint carries a hint of
/// the kind and at least one names this node (node hints) or zone (zone hints); node hints
/// win over zone hints. The Service's `trafficDistribution` is not consulted: the
/// EndpointSlice controller turns it into hints, which is all kube-proxy reads.
pub(crate) fn categorize(
    endpoints: &[Endpoint],
    hints: &[Hints<'_>],
    node_name: &str,
    zone: Option<&str>,
) -> Categories {
    debug_assert_eq!(endpoints.len(), hints.len());
    let mode = topology_mode(endpoints, hints, node_name, zone);
    let indexed = || (0u32..).zip(endpoints.iter().zip(hints));

    let mut cluster: Vec<u32> = indexed()
        .filter(|(_, (ep, hint))| ep.ready && available(hint, mode, node_name, zone))
        .map(|(i, _)| i)
        .collect();
    if cluster.is_empty() {
        // With a topology mode chosen, some ready endpoint matched it; so an empty set here
        // means nothing is ready anywhere, and topology no longer matters.
        cluster = indexed()
            .filter(|(_, (ep, _))| serving_terminating(ep))
            .map(|(i, _)| i)
            .collect();
    }

    let mut local: Vec<u32> = indexed()
        .filter(|(_, (ep, _))| ep.is_local && ep.ready)
        .map(|(i, _)| i)
        .collect();
    if local.is_empty() {
        local = indexed()
            .filter(|(_, (ep, _))| ep.is_local && serving_terminating(ep))
            .map(|(i, _)| i)
            .collect();
    }

    let has_any = !cluster.is_empty();
    Categories {
        cluster,
        local,
        has_any,
    }
}

fn serving_terminating(endpoint: &Endpoint) -> bool {
    endpoint.serving && endpoint.terminating
}

fn topology_mode(
    endpoints: &[Endpoint],
    hints: &[Hints<'_>],
    node_name: &str,
    zone: Option<&str>,
) -> TopologyMode {
    let mut any_ready = false;
    let (mut all_node_hints, mut node_match) = (true, false);
    let (mut all_zone_hints, mut zone_match) = (true, false);
    for (endpoint, hint) in endpoints.iter().zip(hints) {
        if !endpoint.ready {
            continue;
        }
        any_ready = true;
        if hint.for_nodes.is_empty() {
            all_node_hints = false;
        } else if hint.for_nodes.iter().any(|n| &**n == node_name) {
            node_match = true;
        }
        if hint.for_zones.is_empty() {
            all_zone_hints = false;
        } else if zone.is_some_and(|zone| hint.for_zones.iter().any(|z| &**z == zone)) {
            zone_match = true;
        }
    }
    if !any_ready {
        TopologyMode::None
    } else if all_node_hints && node_match {
        TopologyMode::SameNode
    } else if all_zone_hints && zone_match {
        TopologyMode::SameZone
    } else {
        TopologyMode::None
    }
}

fn available(hint: &Hints<'_>, mode: TopologyMode, node_name: &str, zone: Option<&str>) -> bool {
    match mode {
        TopologyMode::None => true,
        TopologyMode::SameNode => hint.for_nodes.iter().any(|n| &**n == node_name),
        TopologyMode::SameZone => {
            zone.is_some_and(|zone| hint.for_zones.iter().any(|z| &**z == zone))
        }
    }
}
