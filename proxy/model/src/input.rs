//! The model's compact inputs: what it reads of a Service, an EndpointSlice and the Node,
//! parsed and checked once when a source receives the object.
//!
//! A k8s-openapi object carries every field of the API (an `Endpoint` is 352 bytes before
//! its strings); at 100k Services × 10 endpoints that was 600 MiB of state the model never
//! read. Sources convert each object as it arrives ([`ServiceInfo::from_k8s`] and friends)
//! and drop the original. The check results are kept with the object, so the model still
//! warns about an invalid object exactly where and when it did when it read the original.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

use crate::{
    LABEL_HEADLESS, LABEL_SERVICE_NAME, LABEL_SERVICE_PROXY_NAME, ObjectKey, ValidationError,
    endpoints::{self, SliceParse},
    intern::Interner,
    node::{self, NodeFacts},
    service::{self, Parsed},
};

/// Annotation the EndpointSlice controller sets to when the change that produced a slice
/// happened (the start of kube-proxy's network-programming latency).
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The value of `service.kubernetes.io/service-proxy-name`, when labelled.
fn proxy_name(labels: Option<&BTreeMap<String, String>>) -> Option<Box<str>> {
    labels
        .and_then(|labels| labels.get(LABEL_SERVICE_PROXY_NAME))
        .map(|name| name.as_str().into())
}

/// Namespace/name of an object's metadata (empty strings when unset).
fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectKey {
    ObjectKey::new(
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// What the model reads of a Service: its proxy-name label and its spec, parsed (or why it
/// cannot be used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// `service.kubernetes.io/service-proxy-name`.
    pub(crate) proxy_name: Option<Box<str>>,
    /// The parsed spec, the reason the Service is skipped by rule, or the reason it is
    /// invalid (warned about when the model is built).
    pub(crate) spec: Result<Parsed, ValidationError>,
}

impl ServiceInfo {
    /// Reads and checks `service`.
    pub fn from_k8s(service: &Service) -> Self {
        Self {
            proxy_name: proxy_name(service.metadata.labels.as_ref()),
            spec: service::parse(service),
        }
    }

    /// Namespace/name of `service`, as [`crate::ClusterState`] keys it.
    pub fn key(service: &Service) -> ObjectKey {
        key_of(&service.metadata)
    }

    /// The ClusterIPs, one per family; empty for Services the proxy skips (headless,
    /// ExternalName, invalid).
    pub fn cluster_ips(&self) -> &[std::net::IpAddr] {
        match &self.spec {
            Ok(Parsed::Service(parsed)) => &parsed.cluster_ips,
            Ok(Parsed::Skip(_)) | Err(_) => &[],
        }
    }

    /// Why the Service cannot be used, as [`crate::validate_service`] says.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.spec.as_ref().map(|_| ()).map_err(Clone::clone)
    }
}

/// What the model reads of an EndpointSlice: the labels that decide whether and for which
/// Service it counts, its trigger time, and its ports and endpoints, parsed compactly (or
/// why it cannot be used).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    /// `service.kubernetes.io/service-proxy-name`.
    pub(crate) proxy_name: Option<Box<str>>,
    /// Labelled `service.kubernetes.io/headless`.
    pub(crate) headless: bool,
    /// `kubernetes.io/service-name`, when set and not empty.
    pub(crate) service: Option<Box<str>>,
    /// [`TRIGGER_TIME_ANNOTATION`], when it parses.
    pub(crate) trigger_time: Option<SystemTime>,
    /// Ports and endpoints, or why they cannot be used.
    pub(crate) content: Result<SliceParse, ValidationError>,
}

impl SliceInfo {
    /// Reads and checks `slice`; node names, zones and hints are shared through `strings`,
    /// so a million endpoints on a few hundred nodes hold a few hundred strings.
    pub fn from_k8s(slice: &EndpointSlice, strings: &mut Interner) -> Self {
        let labels = slice.metadata.labels.as_ref();
        let trigger_time = slice
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TRIGGER_TIME_ANNOTATION))
            .and_then(|t| parse_timestamp(t));
        Self {
            proxy_name: proxy_name(labels),
            headless: labels.is_some_and(|labels| labels.contains_key(LABEL_HEADLESS)),
            service: labels
                .and_then(|labels| labels.get(LABEL_SERVICE_NAME))
                .filter(|name| !name.is_empty())
                .map(|name| name.as_str().into()),
            trigger_time,
            content: endpoints::parse_slice(slice, strings),
        }
    }

    /// Namespace/name of `slice`, as [`crate::ClusterState`] keys it.
    pub fn key(slice: &EndpointSlice) -> ObjectKey {
        key_of(&slice.metadata)
    }

    /// The Service the slice belongs to (its `kubernetes.io/service-name` label).
    pub fn service_name(&self) -> Option<&str> {
        self.service.as_deref()
    }

    /// When the change that produced this slice happened, from
    /// [`TRIGGER_TIME_ANNOTATION`].
    pub fn trigger_time(&self) -> Option<SystemTime> {
        self.trigger_time
    }

    /// Why the slice cannot be used, as [`crate::validate_endpoint_slice`] says.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.content.as_ref().map(|_| ()).map_err(Clone::clone)
    }
}

/// What the model and the agent read of this node's Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `metadata.name` (empty when unset).
    pub(crate) name: Box<str>,
    /// Zone and primary addresses, or why they cannot be used.
    pub(crate) facts: Result<NodeFacts, ValidationError>,
    /// `metadata.deletionTimestamp` is set.
    deleting: bool,
    /// Keys of `spec.taints`.
    taints: Box<[Box<str>]>,
}

impl NodeInfo {
    /// Reads and checks `node`.
    pub fn from_k8s(node: &Node) -> Self {
        Self {
            name: node.metadata.name.as_deref().unwrap_or_default().into(),
            facts: node::parse(node),
            deleting: node.metadata.deletion_timestamp.is_some(),
            taints: node
                .spec
                .as_ref()
                .and_then(|spec| spec.taints.as_deref())
                .unwrap_or_default()
                .iter()
                .map(|taint| taint.key.as_str().into())
                .collect(),
        }
    }

    /// `metadata.name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `topology.kubernetes.io/zone`, when the Node is usable and labelled.
    pub fn zone(&self) -> Option<&str> {
        self.facts.as_ref().ok()?.zone.as_deref()
    }

    /// Whether the Node is being deleted (load balancers should stop sending to it).
    pub fn deleting(&self) -> bool {
        self.deleting
    }

    /// Whether the Node carries a taint with this key.
    pub fn has_taint(&self, key: &str) -> bool {
        self.taints.iter().any(|taint| &**taint == key)
    }

    /// Why the Node's name or addresses cannot be used, as [`crate::validate_node`] says.
    pub fn validate(&self) -> Result<(), ValidationError> {
        self.facts.as_ref().map(|_| ()).map_err(Clone::clone)
    }
}

/// An RFC 3339 timestamp as Kubernetes writes them in annotations; None when malformed or
/// before 1970 (no change the agent measures happened then).
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let ts: k8s_openapi::jiff::Timestamp = text.trim().parse().ok()?;
    let secs = u64::try_from(ts.as_second()).ok()?;
    let nanos = u32::try_from(ts.subsec_nanosecond()).ok()?;
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}
