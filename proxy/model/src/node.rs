//! The facts the model needs from this node's Node object.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use crate::{IpFamily, LABEL_TOPOLOGY_ZONE, service::parse_ip, validate::ValidationError};

/// This node's zone and primary addresses, owned: kept in [`crate::NodeInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodeFacts {
    /// `topology.kubernetes.io/zone`, matched against zone hints.
    pub(crate) zone: Option<Box<str>>,
    /// Primary address per family: the first InternalIP of the family, else the first
    /// ExternalIP (upstream's node-IP choice for `--nodeport-addresses=primary`).
    pub(crate) primary: Vec<IpAddr>,
}

/// This node's name, zone and primary addresses, borrowed from its [`crate::NodeInfo`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParsedNode<'a> {
    /// `metadata.name`.
    pub(crate) name: &'a str,
    /// `topology.kubernetes.io/zone`, matched against zone hints.
    pub(crate) zone: Option<&'a str>,
    /// Primary address per family.
    pub(crate) primary: &'a [IpAddr],
}

impl ParsedNode<'_> {
    /// The primary address of `family`.
    pub(crate) fn primary_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.primary
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == family)
    }
}

/// Checks and parses `node`.
pub(crate) fn parse(node: &Node) -> Result<NodeFacts, ValidationError> {
    node.metadata
        .name
        .as_deref()
        .filter(|name| !name.is_empty())
        .ok_or(ValidationError::MissingName)?;
    let zone = node
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(LABEL_TOPOLOGY_ZONE))
        .filter(|zone| !zone.is_empty())
        .map(|zone| zone.as_str().into());
    let addresses = node
        .status
        .as_ref()
        .and_then(|status| status.addresses.as_deref())
        .unwrap_or_default();
    let mut internal = Vec::new();
    let mut external = Vec::new();
    for address in addresses {
        let list = match address.type_.as_str() {
            "InternalIP" => &mut internal,
            "ExternalIP" => &mut external,
            // Hostname and DNS entries name no address to answer on.
            _ => continue,
        };
        list.push(parse_ip(&address.address, "status.addresses")?);
    }
    let primary = [IpFamily::V4, IpFamily::V6]
        .into_iter()
        .filter_map(|family| {
            let of_family = |ip: &&IpAddr| IpFamily::of(ip) == family;
            internal
                .iter()
                .find(of_family)
                .or_else(|| external.iter().find(of_family))
                .copied()
        })
        .collect();
    Ok(NodeFacts { zone, primary })
}
