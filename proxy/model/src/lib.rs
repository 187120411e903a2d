//! kproxy's proxy model.
//!
//! ```text
//! ClusterState (Services, EndpointSlices, Node)  +  ModelConfig (flags, node facts)
//!         │ build()
//!         ▼
//! ProxyModel: ServicePortKey → ServicePort (frontends, endpoints, verdicts, masquerade)
//!         │ diff(previous, current)
//!         ▼
//! ModelDiff: added / updated / removed ports, stale UDP endpoints
//! ```
//!
//! Everything here is pure: no I/O, no clock, no globals. All of kube-proxy's policy
//! (traffic policies, terminating fallback, topology hints, affinity, source ranges,
//! masquerade) is decided in this crate; dataplanes only translate its output.
//!
//! Inputs may be invalid (hand-written manifests, skewed API servers): [`build`] skips an
//! invalid object with one [`ModelWarning`] and keeps building everything else. Sources
//! can run the same checks earlier with [`validate_service`], [`validate_endpoint_slice`]
//! and [`validate_node`].

#![warn(missing_docs)]

mod build;
mod diff;
mod endpoints;
mod incremental;
mod intern;
pub mod manifest;
mod node;
mod service;
mod topology;
pub mod types;
mod validate;
mod warning;

#[cfg(test)]
mod tests;

pub use build::{Built, build};
pub use diff::diff;
pub use incremental::{Changes, Incremental, Update};
pub use types::*;
pub use validate::{
    MAX_SERVICE_PORTS, MAX_SLICE_ENDPOINTS, MAX_SLICE_PORTS, ValidationError,
    validate_endpoint_slice, validate_node, validate_service,
};
pub use warning::{ModelWarning, ObjectKind, WarningEffect};

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped objects such as Node).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl ObjectKey {
    /// Key of a namespaced object.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// Key of a cluster-scoped object (Node).
    pub fn cluster_scoped(name: impl Into<String>) -> Self {
        Self {
            namespace: String::new(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // kubectl's spelling: namespace/name, or just the name when cluster-scoped.
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// Label naming the Service an EndpointSlice belongs to.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
/// Label selecting which proxy implements a Service; objects carrying it are left to the
/// proxy it names.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the EndpointSlice controller puts on slices of headless Services.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Node label naming the node's zone, matched against endpoint zone hints.
pub const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// The cluster state a source delivers: whole stores, level-triggered. Objects are shared
/// (`Arc`) so a snapshot of 100k Services costs pointer copies, as kube-rs stores hand them out.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectKey, Arc<Service>>,
    /// EndpointSlices by namespace/name.
    pub slices: BTreeMap<ObjectKey, Arc<EndpointSlice>>,
    /// This node's Node object, when known.
    pub node: Option<Arc<Node>>,
}

/// Which addresses NodePorts answer on (`--nodeport-addresses`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NodePortAddresses {
    /// The node's primary IP of each family (from the Node's `status.addresses`, InternalIP
    /// first, then ExternalIP), kube-proxy nftables mode's default.
    #[default]
    Primary,
    /// Every local address of the node inside one of these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// Configuration and node facts the model needs besides the cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelConfig {
    /// This node's name (`--hostname-override` or the hostname).
    pub node_name: String,
    /// `--cluster-cidr`, possibly one per family.
    pub cluster_cidrs: Vec<IpNet>,
    /// `--masquerade-all`.
    pub masquerade_all: bool,
    /// `--nodeport-addresses`.
    pub nodeport_addresses: NodePortAddresses,
    /// Addresses configured on the node's interfaces (found by the agent); used with
    /// [`NodePortAddresses::Cidrs`].
    pub local_addresses: Vec<IpAddr>,
    /// This proxy's name for `service.kubernetes.io/service-proxy-name`; objects labelled
    /// with another name are ignored.
    pub proxy_name: Option<String>,
}
