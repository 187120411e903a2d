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
mod input;
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
pub use input::{NodeInfo, ServiceInfo, SliceInfo, TRIGGER_TIME_ANNOTATION};
pub use intern::Interner;
pub use types::*;
pub use validate::{
    MAX_SERVICE_PORTS, MAX_SLICE_ENDPOINTS, MAX_SLICE_PORTS, ValidationError,
    validate_endpoint_slice, validate_node, validate_service,
};
pub use warning::{ModelWarning, ObjectKind, WarningEffect};

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

use crate::manifest::ManifestObject;

/// Namespace and name of an object. The strings are shared: a key is copied into the
/// source's maps, the change sets and the model's indexes, and each copy is a pointer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Namespace (empty for cluster-scoped objects such as Node).
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
}

impl ObjectKey {
    /// Key of a namespaced object.
    pub fn new(namespace: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        Self {
            namespace: namespace.as_ref().into(),
            name: name.as_ref().into(),
        }
    }

    /// Key of a cluster-scoped object (Node).
    pub fn cluster_scoped(name: impl AsRef<str>) -> Self {
        Self::new("", name)
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

/// The cluster state a source delivers: whole stores, level-triggered, of the model's
/// compact inputs (see [`ServiceInfo`]). Objects are shared (`Arc`) so a snapshot of 100k
/// Services costs pointer copies, and a source can tell an unchanged object by its pointer.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    /// Services by namespace/name.
    pub services: BTreeMap<ObjectKey, Arc<ServiceInfo>>,
    /// EndpointSlices by namespace/name.
    pub slices: BTreeMap<ObjectKey, Arc<SliceInfo>>,
    /// This node's Node, when known.
    pub node: Option<Arc<NodeInfo>>,
    /// Shares endpoint strings among the slices the `insert_k8s_*` helpers convert.
    strings: Interner,
}

impl ClusterState {
    /// Converts `service` and stores it under its namespace/name; returns the key.
    pub fn insert_k8s_service(&mut self, service: &Service) -> ObjectKey {
        let key = ServiceInfo::key(service);
        self.services
            .insert(key.clone(), Arc::new(ServiceInfo::from_k8s(service)));
        key
    }

    /// Converts `slice` and stores it under its namespace/name; returns the key.
    pub fn insert_k8s_slice(&mut self, slice: &EndpointSlice) -> ObjectKey {
        let key = SliceInfo::key(slice);
        let info = SliceInfo::from_k8s(slice, &mut self.strings);
        self.slices.insert(key.clone(), Arc::new(info));
        key
    }

    /// Converts `node` and makes it this node's Node.
    pub fn set_k8s_node(&mut self, node: &Node) {
        self.node = Some(Arc::new(NodeInfo::from_k8s(node)));
    }

    /// Stores a parsed manifest object (kinds the proxy ignores are dropped); returns its
    /// key, None for ignored kinds.
    pub fn insert_manifest(&mut self, object: &ManifestObject) -> Option<ObjectKey> {
        match object {
            ManifestObject::Service(service) => Some(self.insert_k8s_service(service)),
            ManifestObject::EndpointSlice(slice) => Some(self.insert_k8s_slice(slice)),
            ManifestObject::Node(node) => {
                self.set_k8s_node(node);
                object.key()
            }
            ManifestObject::Ignored { .. } => None,
        }
    }
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
