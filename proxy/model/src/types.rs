//! The model's output types: the contract every dataplane reads.
//!
//! Policy is decided here and only here. A dataplane turns a [`ServicePort`] into kernel
//! state without re-deciding which endpoints serve which traffic, whether to reject or
//! drop, or whether to masquerade: those answers are fields of the types below.

use std::{collections::BTreeMap, fmt, net::IpAddr, sync::Arc};

use ipnet::IpNet;
use serde::Serialize;

/// IP family. Every [`ServicePort`] belongs to exactly one; a dual-stack Service yields one
/// service port per family and per port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    /// The family of `ip`.
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }
}

/// L4 protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// IANA protocol number, as the kernel matches it.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    /// Lower-case name, as nftables and kube-proxy print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// kube-proxy's `ServicePortName`: one port of one Service. The family is kept apart
/// (see [`ServicePortKey`]) so the name prints as upstream prints it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServicePortName {
    /// Service namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// `spec.ports[].name`; empty for a single unnamed port.
    pub port_name: String,
    /// `spec.ports[].protocol`.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Upstream's format: ns/name:port/proto, with ":port" left out when unnamed.
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        write!(f, "/{}", self.protocol.as_str())
    }
}

/// Key of a service port in the model: the port and the family it is programmed for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServicePortKey {
    /// Family of every address in the service port.
    pub family: IpFamily,
    /// The port.
    pub name: ServicePortName,
}

impl fmt::Display for ServicePortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fam = match self.family {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        };
        write!(f, "{} ({fam})", self.name)
    }
}

/// One endpoint of a service port, merged and deduplicated from every EndpointSlice of the
/// Service. Conditions follow the API defaults: nil ready and nil serving mean true, nil
/// terminating means false.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "the bools are the API's independent endpoint conditions, not a state machine"
)]
pub struct Endpoint {
    /// Endpoint address (family equals the service port's).
    pub ip: IpAddr,
    /// Target port for this service port.
    pub port: u16,
    /// `conditions.ready`.
    pub ready: bool,
    /// `conditions.serving`.
    pub serving: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// `nodeName`, when set. Shared: thousands of endpoints name the same few nodes.
    pub node_name: Option<Arc<str>>,
    /// `zone`, when set. Shared, as `node_name`.
    pub zone: Option<Arc<str>>,
    /// True when `nodeName` is this node: the endpoint is "local".
    pub is_local: bool,
}

/// A subset of a [`ServicePort`]'s `endpoints`, as ascending indices into that vector.
/// Indices rather than copies keep the model for 100k ports × 10 endpoints small.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointSet(pub Vec<u32>);

impl EndpointSet {
    /// The endpoints of `port` this set names.
    pub fn iter<'a>(&'a self, port: &'a ServicePort) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.0.iter().map(move |&i| &port.endpoints[i as usize])
    }

    /// Number of endpoints in the set.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Which endpoints a kind of traffic goes to, or why it goes nowhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum Verdict {
    /// Load-balance among these endpoints (never empty), in a stable order.
    Forward(EndpointSet),
    /// The Service has no usable endpoint at all: refuse (TCP RST / ICMP port unreachable).
    Reject,
    /// A traffic policy restricts this traffic to local endpoints and there are none here,
    /// although endpoints exist elsewhere: drop silently, as kube-proxy does.
    Drop,
}

impl Verdict {
    /// The endpoints of `port` this verdict forwards to; empty for reject and drop.
    pub fn endpoints<'a>(
        &'a self,
        port: &'a ServicePort,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        let set: &'a [u32] = match self {
            Self::Forward(set) => &set.0,
            Self::Reject | Self::Drop => &[],
        };
        set.iter().map(move |&i| &port.endpoints[i as usize])
    }
}

/// When traffic to an internal frontend (the ClusterIP) is masqueraded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum InternalMasquerade {
    /// `--masquerade-all`: every packet.
    Always,
    /// Packets whose source is outside every cluster CIDR (`--cluster-cidr`): traffic that
    /// does not come from a pod.
    SourceNotIn(Vec<IpNet>),
    /// No cluster CIDR known and no masquerade-all: only hairpin traffic (an endpoint
    /// reaching itself through the service) is masqueraded.
    HairpinOnly,
}

/// What happens to traffic arriving at an external frontend (NodePort, LoadBalancer IP,
/// externalIP).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalTraffic {
    /// Where external traffic goes. For eTP Cluster, the cluster set; for eTP Local, the
    /// local set (or Drop / Reject).
    pub verdict: Verdict,
    /// Masquerade external traffic (eTP Cluster). False for eTP Local: the source is kept.
    pub masquerade: bool,
    /// eTP Local only: traffic whose source is a pod of this cluster (inside a cluster CIDR)
    /// is short-circuited to `internal` instead (kube-proxy's "pod to external VIP" rule).
    pub pod_sources_use_cluster: Vec<IpNet>,
    /// eTP Local only: traffic from the node itself (source address local to the node) is
    /// masqueraded and sent to the cluster set, as kube-proxy does.
    pub node_sources_use_cluster: bool,
    /// The cluster-wide verdict that short-circuited traffic uses (eTP Local only; equal to
    /// the internal cluster verdict).
    pub cluster_verdict: Verdict,
}

/// One frontend address of a service port and what kind of traffic it receives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum FrontendKind {
    /// `spec.clusterIP(s)`: internal traffic.
    ClusterIp,
    /// `spec.externalIPs`: external traffic.
    ExternalIp,
    /// `status.loadBalancer.ingress[].ip` (ipMode VIP or unset): external traffic, subject to
    /// `loadBalancerSourceRanges`.
    LoadBalancer,
    /// The NodePort on one of the node's NodePort addresses: external traffic.
    NodePort,
}

/// An address:port that the dataplane must answer on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Frontend {
    /// What kind of address this is.
    pub kind: FrontendKind,
    /// The address.
    pub ip: IpAddr,
    /// The port (the service port, or the NodePort for [`FrontendKind::NodePort`]).
    pub port: u16,
}

/// Everything a dataplane needs to program one service port in one family.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    /// Identity.
    pub key: ServicePortKey,
    /// ClusterIP (family of the key).
    pub cluster_ip: IpAddr,
    /// `spec.ports[].port`.
    pub port: u16,
    /// `spec.ports[].nodePort`, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// Every frontend, sorted: ClusterIP, externalIPs, LB IPs, NodePort addresses.
    pub frontends: Vec<Frontend>,
    /// `loadBalancerSourceRanges`, trimmed and of this family. Empty = allow all.
    /// Applies to [`FrontendKind::LoadBalancer`] frontends only, as upstream.
    pub source_ranges: Vec<IpNet>,
    /// ClientIP session affinity timeout in seconds; None = no affinity.
    pub affinity_timeout_secs: Option<u32>,
    /// `externalTrafficPolicy: Local`.
    pub external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub internal_policy_local: bool,
    /// `healthCheckNodePort` (LoadBalancer with eTP Local).
    pub health_check_node_port: Option<u16>,
    /// Every endpoint of this family for this port, with conditions, sorted.
    pub endpoints: Vec<Endpoint>,
    /// Where internal (ClusterIP) traffic goes.
    pub internal: Verdict,
    /// When internal traffic is masqueraded.
    pub internal_masquerade: InternalMasquerade,
    /// Where external traffic goes; None when the port has no external frontend.
    pub external: Option<ExternalTraffic>,
    /// Number of ready endpoints on this node (healthCheckNodePort answers and the
    /// `no_local_endpoints` metric read it).
    pub local_ready_endpoints: usize,
}

/// The whole proxy model: every service port of every family.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyModel {
    /// Service ports by key, ordered for stable output.
    pub ports: BTreeMap<ServicePortKey, ServicePort>,
}

/// What changed between two models (see [`crate::diff`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ModelDiff {
    /// Service ports present now and not before.
    pub added: Vec<ServicePortKey>,
    /// Service ports present in both whose programmed state differs.
    pub updated: Vec<ServicePortKey>,
    /// Service ports present before and not now.
    pub removed: Vec<ServicePortKey>,
    /// UDP/SCTP endpoints that were served before and are no longer served by a port that
    /// still exists, or whose port went away: conntrack entries pointing at them must be
    /// deleted. (Frontend address, frontend port, endpoint.)
    pub stale_udp_endpoints: Vec<(ServicePortKey, Endpoint)>,
}

impl ModelDiff {
    /// True when nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.updated.is_empty()
            && self.removed.is_empty()
            && self.stale_udp_endpoints.is_empty()
    }
}
