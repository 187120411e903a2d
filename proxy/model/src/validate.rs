//! Why an object cannot be (fully) used, and the checks sources can run before the model.
//!
//! The checks are the ones kube-proxy relies on the API server for, plus the ones it
//! makes itself; a hand-written manifest gets no API-server validation, so the model
//! repeats them rather than programming something half-understood.

use k8s_openapi::api::{core::v1::Node, core::v1::Service, discovery::v1::EndpointSlice};

use crate::{IpFamily, endpoints, intern::Interner, node, service};

/// Most ports a Service may have. kube-proxy sets no limit, but the API server cannot
/// store more: at roughly 55 bytes per port in JSON, etcd's default 1.5 MiB object limit
/// holds under 30,000. Anything larger is a broken or hostile manifest, and refusing it
/// bounds the work one object can cause.
pub const MAX_SERVICE_PORTS: usize = 30_000;
/// Most ports an EndpointSlice may have (the API's `maxItems`).
pub const MAX_SLICE_PORTS: usize = 100;
/// Most endpoints an EndpointSlice may have (the API's `maxItems`).
pub const MAX_SLICE_ENDPOINTS: usize = 1000;

/// Why an object, or a value inside it, is unusable.
///
/// Messages name the offending field and value; the object itself is named by the
/// [`crate::ModelWarning`] or the caller that carries this error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// `metadata.name` is missing or empty.
    #[error("metadata.name is missing")]
    MissingName,
    /// The Service has no `spec`.
    #[error("spec is missing")]
    MissingSpec,
    /// A non-headless Service without ports has nothing to proxy.
    #[error("spec.ports is empty")]
    NoPorts,
    /// More ports than any stored object can have.
    #[error("{count} ports exceed the limit of {max}")]
    TooManyPorts {
        /// Ports in the object.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More endpoints than an EndpointSlice can have.
    #[error("{count} endpoints exceed the limit of {max}")]
    TooManyEndpoints {
        /// Endpoints in the slice.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A port number outside 1..=65535.
    #[error("port {port_name:?} has invalid port number {port}")]
    InvalidPort {
        /// Name of the port (empty when unnamed).
        port_name: String,
        /// The number given.
        port: i32,
    },
    /// An EndpointSlice port without a number ("all ports", which kube-proxy does not
    /// implement).
    #[error("port {port_name:?} has no port number")]
    MissingPort {
        /// Name of the port (empty when unnamed).
        port_name: String,
    },
    /// A protocol other than TCP, UDP or SCTP.
    #[error("port {port_name:?} has unknown protocol {protocol:?}")]
    UnknownProtocol {
        /// Name of the port (empty when unnamed).
        port_name: String,
        /// The protocol given.
        protocol: String,
    },
    /// A nodePort outside 1..=65535. The API server's `--service-node-port-range`
    /// (30000-32767 by default) is not enforced: kube-proxy does not know it either, and
    /// programs whatever the API server allocated.
    #[error("port {port_name:?} has nodePort {node_port} outside 1-65535")]
    NodePortOutOfRange {
        /// Name of the port (empty when unnamed).
        port_name: String,
        /// The nodePort given.
        node_port: i32,
    },
    /// A `healthCheckNodePort` outside 1..=65535.
    #[error("healthCheckNodePort {port} is outside 1-65535")]
    InvalidHealthCheckNodePort {
        /// The port given.
        port: i32,
    },
    /// Two ports with the same name (ports are keyed by name, as upstream does).
    #[error("port name {port_name:?} is used twice")]
    DuplicatePortName {
        /// The repeated name.
        port_name: String,
    },
    /// Two ports with the same number and protocol.
    #[error("ports {first:?} and {second:?} both use {port}/{protocol}")]
    DuplicatePort {
        /// Name of the first port.
        first: String,
        /// Name of the second port.
        second: String,
        /// The shared port number.
        port: u16,
        /// The shared protocol.
        protocol: &'static str,
    },
    /// An unparsable IP address.
    #[error("{field} has invalid IP {value:?}")]
    InvalidIp {
        /// Field path.
        field: &'static str,
        /// The text given.
        value: String,
    },
    /// An unparsable CIDR.
    #[error("{field} has invalid CIDR {value:?}")]
    InvalidCidr {
        /// Field path.
        field: &'static str,
        /// The text given.
        value: String,
    },
    /// An address of a family the object does not have (ignored, the rest is used).
    #[error("{field} value {value} is not {family}, the only family of this object")]
    WrongFamily {
        /// Field path.
        field: &'static str,
        /// The address or CIDR.
        value: String,
        /// The object's family, spelt as the API does ("IPv4", "IPv6").
        family: &'static str,
    },
    /// `spec.clusterIP` and `spec.clusterIPs[0]` disagree.
    #[error("spec.clusterIP {cluster_ip:?} differs from spec.clusterIPs[0] {first:?}")]
    ClusterIpMismatch {
        /// `spec.clusterIP`.
        cluster_ip: String,
        /// `spec.clusterIPs[0]`.
        first: String,
    },
    /// More than two cluster IPs.
    #[error("spec.clusterIPs has {count} addresses, at most 2 are allowed")]
    TooManyClusterIps {
        /// Addresses given.
        count: usize,
    },
    /// Two cluster IPs of one family.
    #[error("spec.clusterIPs {first} and {second} are of the same family")]
    SameFamilyClusterIps {
        /// First address.
        first: String,
        /// Second address.
        second: String,
    },
    /// `spec.ipFamilies` does not describe `spec.clusterIPs`.
    #[error("spec.ipFamilies {ip_families:?} do not match spec.clusterIPs {cluster_ips:?}")]
    IpFamiliesMismatch {
        /// `spec.ipFamilies`.
        ip_families: Vec<String>,
        /// `spec.clusterIPs`.
        cluster_ips: Vec<String>,
    },
    /// An enum-like field with a value the API does not define.
    #[error("{field} has unknown value {value:?}")]
    UnknownValue {
        /// Field path.
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// A ClientIP affinity timeout outside the API's 1..=86400 seconds.
    #[error("sessionAffinityConfig.clientIP.timeoutSeconds {timeout} is outside 1-86400")]
    InvalidAffinityTimeout {
        /// The timeout given.
        timeout: i32,
    },
    /// An EndpointSlice without the label naming its Service (upstream refuses these too).
    #[error("label kubernetes.io/service-name is missing")]
    MissingServiceNameLabel,
    /// An endpoint without any address.
    #[error("endpoints[{index}] has no address")]
    EndpointWithoutAddress {
        /// Position in `endpoints`.
        index: usize,
    },
    /// An EndpointSlice whose Service does not exist.
    #[error("its Service {service:?} does not exist")]
    ServiceNotFound {
        /// The Service named by the slice's label.
        service: String,
    },
    /// Another Service already answers on one of this Service's frontends. The API server
    /// allocates ClusterIPs and nodePorts uniquely, but externalIPs and hand-written
    /// manifests can collide; the first Service (in namespace/name order) keeps the address.
    #[error("{frontend} is already used by Service {owner}")]
    FrontendConflict {
        /// The contested address:port/protocol, or nodePort.
        frontend: String,
        /// The Service that keeps it.
        owner: String,
    },
    /// The Node object is not this node.
    #[error("it is not this node ({expected:?})")]
    NotThisNode {
        /// This node's configured name.
        expected: String,
    },
    /// A LoadBalancer Service with `externalTrafficPolicy: Local` has no
    /// `healthCheckNodePort`, so load balancers cannot tell which nodes have endpoints.
    #[error("externalTrafficPolicy Local without healthCheckNodePort: no health check is served")]
    MissingHealthCheckNodePort,
}

/// The API's spelling of a family, for messages.
pub(crate) fn family_name(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "IPv4",
        IpFamily::V6 => "IPv6",
    }
}

/// Checks that `service` can be turned into service ports: the fatal problems [`crate::build`]
/// would skip the Service for. Services the proxy ignores by rule (headless, ExternalName)
/// are valid. Wrong-family addresses in a single-stack Service are not errors here: `build`
/// ignores those values with a warning and keeps the Service.
pub fn validate_service(service: &Service) -> Result<(), ValidationError> {
    service::parse(service).map(|_| ())
}

/// Checks that `slice` can contribute endpoints. FQDN slices, which the proxy ignores, are
/// valid.
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> Result<(), ValidationError> {
    endpoints::parse_slice(slice, &mut Interner::default()).map(|_| ())
}

/// Checks that `node`'s name and addresses are usable.
pub fn validate_node(node: &Node) -> Result<(), ValidationError> {
    node::parse(node).map(|_| ())
}
