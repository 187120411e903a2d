//! A Service's spec, checked and parsed once, independent of family; per-family views of
//! it feed the service ports (upstream: `serviceport.go`, `servicechangetracker.go`).

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Service, ServicePort as KubeServicePort, ServiceSpec};

use crate::{
    IpFamily, Protocol,
    validate::{MAX_SERVICE_PORTS, ValidationError, family_name},
};

/// kube's default ClientIP affinity timeout: three hours.
const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// The API's maximum ClientIP affinity timeout: one day.
const MAX_AFFINITY_TIMEOUT_SECS: i32 = 86_400;

/// `spec.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
    ExternalName,
}

/// One `spec.ports[]` entry, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedPort {
    /// `name` (empty when unnamed).
    pub(crate) name: String,
    /// `protocol`, TCP when unset as the API defaults it.
    pub(crate) protocol: Protocol,
    /// `port`.
    pub(crate) port: u16,
    /// `nodePort`.
    pub(crate) node_port: Option<u16>,
}

/// Everything the model reads from a Service, checked, all families together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedService {
    /// One address per family the Service has (at most two, distinct families).
    pub(crate) cluster_ips: Vec<IpAddr>,
    /// The ports.
    pub(crate) ports: Vec<ParsedPort>,
    /// `spec.externalIPs` of the Service's families.
    pub(crate) external_ips: Vec<IpAddr>,
    /// VIP-mode `status.loadBalancer.ingress[].ip` of the Service's families.
    pub(crate) lb_ips: Vec<IpAddr>,
    /// `spec.loadBalancerSourceRanges`, trimmed, of the Service's families.
    pub(crate) source_ranges: Vec<IpNet>,
    /// ClientIP affinity timeout.
    pub(crate) affinity_timeout_secs: Option<u32>,
    /// Externally accessible type and `externalTrafficPolicy: Local` (upstream's
    /// `ExternalPolicyLocal`).
    pub(crate) external_policy_local: bool,
    /// `internalTrafficPolicy: Local`.
    pub(crate) internal_policy_local: bool,
    /// `healthCheckNodePort`, kept only when upstream serves it (LoadBalancer, eTP Local).
    pub(crate) health_check_node_port: Option<u16>,
    /// Values that were ignored while the rest of the Service is used.
    pub(crate) ignored: Vec<ValidationError>,
}

impl ParsedService {
    /// The ClusterIP of `family`, when the Service has that family.
    pub(crate) fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }

    /// `spec.externalIPs` of `family`.
    pub(crate) fn external_ips(&self, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
        self.external_ips
            .iter()
            .copied()
            .filter(move |ip| IpFamily::of(ip) == family)
    }

    /// Load-balancer VIPs of `family`.
    pub(crate) fn lb_ips(&self, family: IpFamily) -> impl Iterator<Item = IpAddr> + '_ {
        self.lb_ips
            .iter()
            .copied()
            .filter(move |ip| IpFamily::of(ip) == family)
    }

    /// Source ranges of `family`.
    pub(crate) fn source_ranges(&self, family: IpFamily) -> Vec<IpNet> {
        self.source_ranges
            .iter()
            .copied()
            .filter(|net| net_family(net) == family)
            .collect()
    }
}

/// What to do with a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not proxied, by rule (ExternalName, headless): nothing to warn about.
    Skip(&'static str),
    /// Proxied.
    Service(ParsedService),
}

/// Checks and parses `svc`.
pub(crate) fn parse(svc: &Service) -> Result<Parsed, ValidationError> {
    if svc.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(ValidationError::MissingName);
    }
    let spec = svc.spec.as_ref().ok_or(ValidationError::MissingSpec)?;
    let service_type = parse_type(spec.type_.as_deref())?;
    if service_type == ServiceType::ExternalName {
        return Ok(Parsed::Skip("type ExternalName"));
    }
    let Some(cluster_ips) = parse_cluster_ips(spec)? else {
        return Ok(Parsed::Skip("headless"));
    };
    let ports = parse_ports(spec.ports.as_deref().unwrap_or_default())?;
    // Dual-stack Services split their addresses by family silently, as upstream does; in a
    // single-stack Service an address of the other family is a mistake worth a warning.
    let single_family = match cluster_ips.as_slice() {
        [only] => Some(IpFamily::of(only)),
        _ => None,
    };
    let mut ignored = Vec::new();

    let external_ips = parse_ips(
        spec.external_ips
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(String::as_str),
        "spec.externalIPs",
        single_family,
        &mut ignored,
    )?;
    let lb_ips = parse_ips(
        lb_vip_texts(svc)?.into_iter(),
        "status.loadBalancer.ingress.ip",
        single_family,
        &mut ignored,
    )?;
    let source_ranges = parse_source_ranges(spec, single_family, &mut ignored)?;
    let affinity_timeout_secs = parse_affinity(spec)?;

    let external_local = parse_policy(
        spec.external_traffic_policy.as_deref(),
        "spec.externalTrafficPolicy",
    )?;
    let internal_local = parse_policy(
        spec.internal_traffic_policy.as_deref(),
        "spec.internalTrafficPolicy",
    )?;
    let externally_accessible = match service_type {
        ServiceType::LoadBalancer | ServiceType::NodePort => true,
        ServiceType::ClusterIp => !spec.external_ips.as_deref().unwrap_or_default().is_empty(),
        ServiceType::ExternalName => false,
    };
    let external_policy_local = externally_accessible && external_local;

    let mut health_check_node_port = None;
    if service_type == ServiceType::LoadBalancer && external_policy_local {
        match spec.health_check_node_port {
            None | Some(0) => ignored.push(ValidationError::MissingHealthCheckNodePort),
            Some(port) => {
                health_check_node_port = Some(
                    u16::try_from(port)
                        .map_err(|_| ValidationError::InvalidHealthCheckNodePort { port })?,
                );
            }
        }
    }

    Ok(Parsed::Service(ParsedService {
        cluster_ips,
        ports,
        external_ips,
        lb_ips,
        source_ranges,
        affinity_timeout_secs,
        external_policy_local,
        internal_policy_local: internal_local,
        health_check_node_port,
        ignored,
    }))
}

fn parse_type(value: Option<&str>) -> Result<ServiceType, ValidationError> {
    Ok(match value {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => ServiceType::ExternalName,
        Some(other) => {
            return Err(ValidationError::UnknownValue {
                field: "spec.type",
                value: other.to_owned(),
            });
        }
    })
}

/// The Service's cluster IPs, or None when it is headless (no ClusterIP to proxy).
fn parse_cluster_ips(spec: &ServiceSpec) -> Result<Option<Vec<IpAddr>>, ValidationError> {
    let listed = spec.cluster_ips.as_deref().unwrap_or_default();
    let single = spec.cluster_ip.as_deref().filter(|ip| !ip.is_empty());
    if let (Some(cluster_ip), Some(first)) = (single, listed.first())
        && cluster_ip != first
    {
        return Err(ValidationError::ClusterIpMismatch {
            cluster_ip: cluster_ip.to_owned(),
            first: first.clone(),
        });
    }
    let texts: Vec<&str> = if listed.is_empty() {
        single.into_iter().collect()
    } else {
        listed.iter().map(String::as_str).collect()
    };
    match texts.first() {
        None | Some(&("" | "None")) => return Ok(None),
        Some(_) => {}
    }
    if texts.len() > 2 {
        return Err(ValidationError::TooManyClusterIps { count: texts.len() });
    }
    let ips = texts
        .iter()
        .map(|text| parse_ip(text, "spec.clusterIPs"))
        .collect::<Result<Vec<_>, _>>()?;
    if let [first, second] = ips.as_slice()
        && IpFamily::of(first) == IpFamily::of(second)
    {
        return Err(ValidationError::SameFamilyClusterIps {
            first: first.to_string(),
            second: second.to_string(),
        });
    }
    check_ip_families(
        spec.ip_families.as_deref().unwrap_or_default(),
        &ips,
        &texts,
    )?;
    Ok(Some(ips))
}

/// `spec.ipFamilies[i]` must name the family of `spec.clusterIPs[i]`; upstream picks the
/// ClusterIP of a family through this list, so a mismatch would program an address under
/// the wrong family. Extra families without an address are tolerated, as upstream does.
fn check_ip_families(
    families: &[String],
    ips: &[IpAddr],
    texts: &[&str],
) -> Result<(), ValidationError> {
    for (declared, ip) in families.iter().zip(ips) {
        let family = match declared.as_str() {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            other => {
                return Err(ValidationError::UnknownValue {
                    field: "spec.ipFamilies",
                    value: other.to_owned(),
                });
            }
        };
        if family != IpFamily::of(ip) {
            return Err(ValidationError::IpFamiliesMismatch {
                ip_families: families.to_vec(),
                cluster_ips: texts.iter().map(|t| (*t).to_owned()).collect(),
            });
        }
    }
    Ok(())
}

fn parse_ports(ports: &[KubeServicePort]) -> Result<Vec<ParsedPort>, ValidationError> {
    if ports.is_empty() {
        return Err(ValidationError::NoPorts);
    }
    if ports.len() > MAX_SERVICE_PORTS {
        return Err(ValidationError::TooManyPorts {
            count: ports.len(),
            max: MAX_SERVICE_PORTS,
        });
    }
    let mut names = HashSet::with_capacity(ports.len());
    let mut numbers: HashMap<(u16, Protocol), &str> = HashMap::with_capacity(ports.len());
    let mut parsed = Vec::with_capacity(ports.len());
    for port in ports {
        let name = port.name.clone().unwrap_or_default();
        let protocol = parse_protocol(port.protocol.as_deref(), &name)?;
        let number = u16::try_from(port.port)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| ValidationError::InvalidPort {
                port_name: name.clone(),
                port: port.port,
            })?;
        let node_port = port
            .node_port
            .map(|node_port| {
                u16::try_from(node_port)
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| ValidationError::NodePortOutOfRange {
                        port_name: name.clone(),
                        node_port,
                    })
            })
            .transpose()?;
        if !names.insert(port.name.as_deref().unwrap_or_default()) {
            return Err(ValidationError::DuplicatePortName { port_name: name });
        }
        if let Some(first) =
            numbers.insert((number, protocol), port.name.as_deref().unwrap_or_default())
        {
            return Err(ValidationError::DuplicatePort {
                first: first.to_owned(),
                second: name,
                port: number,
                protocol: protocol_name(protocol),
            });
        }
        parsed.push(ParsedPort {
            name,
            protocol,
            port: number,
            node_port,
        });
    }
    Ok(parsed)
}

/// Parses a protocol as the API spells it; unset means TCP, the API default.
pub(crate) fn parse_protocol(
    value: Option<&str>,
    port_name: &str,
) -> Result<Protocol, ValidationError> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Ok(Protocol::Sctp),
        Some(other) => Err(ValidationError::UnknownProtocol {
            port_name: port_name.to_owned(),
            protocol: other.to_owned(),
        }),
    }
}

/// The API's spelling of a protocol, for messages.
pub(crate) fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
        Protocol::Sctp => "SCTP",
    }
}

pub(crate) fn parse_ip(text: &str, field: &'static str) -> Result<IpAddr, ValidationError> {
    text.parse().map_err(|_| ValidationError::InvalidIp {
        field,
        value: text.to_owned(),
    })
}

/// Parses addresses; in a single-stack Service, those of the other family are dropped with
/// a warning.
fn parse_ips<'a>(
    texts: impl Iterator<Item = &'a str>,
    field: &'static str,
    single_family: Option<IpFamily>,
    ignored: &mut Vec<ValidationError>,
) -> Result<Vec<IpAddr>, ValidationError> {
    let mut ips = Vec::new();
    for text in texts {
        let ip = parse_ip(text, field)?;
        match single_family {
            Some(family) if IpFamily::of(&ip) != family => {
                ignored.push(ValidationError::WrongFamily {
                    field,
                    value: ip.to_string(),
                    family: family_name(family),
                });
            }
            _ => ips.push(ip),
        }
    }
    Ok(ips)
}

/// Addresses of the VIP-mode load-balancer ingress entries. `ipMode: Proxy` load balancers
/// deliver traffic to the node themselves, so kube-proxy must not capture their IP
/// (KEP-1860); hostname-only entries have no IP to capture.
fn lb_vip_texts(svc: &Service) -> Result<Vec<&str>, ValidationError> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|status| status.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let mut texts = Vec::new();
    for entry in ingress {
        let Some(ip) = entry.ip.as_deref().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        match entry.ip_mode.as_deref() {
            None | Some("VIP") => texts.push(ip),
            Some("Proxy") => {}
            Some(other) => {
                return Err(ValidationError::UnknownValue {
                    field: "status.loadBalancer.ingress.ipMode",
                    value: other.to_owned(),
                });
            }
        }
    }
    Ok(texts)
}

fn parse_source_ranges(
    spec: &ServiceSpec,
    single_family: Option<IpFamily>,
    ignored: &mut Vec<ValidationError>,
) -> Result<Vec<IpNet>, ValidationError> {
    const FIELD: &str = "spec.loadBalancerSourceRanges";
    let mut ranges = Vec::new();
    for text in spec
        .load_balancer_source_ranges
        .as_deref()
        .unwrap_or_default()
    {
        // API validation lets whitespace padding through; upstream trims it.
        let trimmed = text.trim();
        // Like Go's ParseCIDR, host bits are allowed and dropped ("10.0.0.1/8" is 10/8).
        let net = trimmed
            .parse::<IpNet>()
            .map_err(|_| ValidationError::InvalidCidr {
                field: FIELD,
                value: text.clone(),
            })?
            .trunc();
        match single_family {
            Some(family) if net_family(&net) != family => {
                ignored.push(ValidationError::WrongFamily {
                    field: FIELD,
                    value: net.to_string(),
                    family: family_name(family),
                });
            }
            _ => ranges.push(net),
        }
    }
    Ok(ranges)
}

fn net_family(net: &IpNet) -> IpFamily {
    match net {
        IpNet::V4(_) => IpFamily::V4,
        IpNet::V6(_) => IpFamily::V6,
    }
}

fn parse_affinity(spec: &ServiceSpec) -> Result<Option<u32>, ValidationError> {
    match spec.session_affinity.as_deref() {
        None | Some("None") => Ok(None),
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|config| config.client_ip.as_ref())
                .and_then(|client_ip| client_ip.timeout_seconds);
            match timeout {
                None => Ok(Some(DEFAULT_AFFINITY_TIMEOUT_SECS)),
                Some(secs) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&secs) => {
                    Ok(Some(secs.unsigned_abs()))
                }
                Some(secs) => Err(ValidationError::InvalidAffinityTimeout { timeout: secs }),
            }
        }
        Some(other) => Err(ValidationError::UnknownValue {
            field: "spec.sessionAffinity",
            value: other.to_owned(),
        }),
    }
}

/// True for `Local`, false for `Cluster` or unset.
fn parse_policy(value: Option<&str>, field: &'static str) -> Result<bool, ValidationError> {
    match value {
        None | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(ValidationError::UnknownValue {
            field,
            value: other.to_owned(),
        }),
    }
}
