//! EndpointSlices → the endpoints of one service port (upstream: `endpointslicecache.go`).

use std::{cmp::Reverse, collections::HashSet, net::IpAddr, sync::Arc};

use k8s_openapi::api::discovery::v1::{Endpoint as KubeEndpoint, EndpointPort, EndpointSlice};

use crate::{
    Endpoint, IpFamily, LABEL_SERVICE_NAME, Protocol,
    intern::{Interner, Place},
    service::{parse_ip, parse_protocol},
    topology::Hints,
    validate::{MAX_SLICE_ENDPOINTS, MAX_SLICE_PORTS, ValidationError, family_name},
};

/// One port of a slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlicePort {
    /// `name`; unset is read as "" (the unnamed port) so hand-written slices work, where
    /// upstream would skip the port.
    pub(crate) name: String,
    /// `protocol`, TCP when unset (the API default).
    pub(crate) protocol: Protocol,
    /// `port`.
    pub(crate) port: u16,
}

/// One endpoint of a slice, with conditions defaulted as the API documents. Kept for every
/// endpoint of the cluster between syncs, so it is packed: 40 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SliceEndpoint {
    /// `addresses[0]`; further addresses are ignored, as upstream does.
    pub(crate) ip: IpAddr,
    /// The conditions, as [`READY`], [`SERVING`] and [`TERMINATING`] bits.
    conditions: u8,
    /// `nodeName` and `zone`, shared with every endpoint of the same place.
    place: Option<Arc<Place>>,
    /// `hints`, which most endpoints lack; boxed so those pay one pointer.
    hints: Option<Box<EndpointHints>>,
}

/// Bit of [`SliceEndpoint`]'s conditions: `conditions.ready` (nil meaning true).
const READY: u8 = 1;
/// `conditions.serving` (nil meaning true).
const SERVING: u8 = 2;
/// `conditions.terminating` (nil meaning false).
const TERMINATING: u8 = 4;

/// An endpoint's topology hints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct EndpointHints {
    /// `hints.forNodes[].name`.
    for_nodes: Box<[Arc<str>]>,
    /// `hints.forZones[].name`.
    for_zones: Box<[Arc<str>]>,
}

impl SliceEndpoint {
    pub(crate) fn ready(&self) -> bool {
        self.conditions & READY != 0
    }

    pub(crate) fn serving(&self) -> bool {
        self.conditions & SERVING != 0
    }

    pub(crate) fn terminating(&self) -> bool {
        self.conditions & TERMINATING != 0
    }

    pub(crate) fn node_name(&self) -> Option<&Arc<str>> {
        self.place
            .as_ref()
            .and_then(|place| place.node_name.as_ref())
    }

    pub(crate) fn zone(&self) -> Option<&Arc<str>> {
        self.place.as_ref().and_then(|place| place.zone.as_ref())
    }

    pub(crate) fn hints(&self) -> Hints<'_> {
        match &self.hints {
            Some(hints) => Hints {
                for_nodes: &hints.for_nodes,
                for_zones: &hints.for_zones,
            },
            None => Hints::default(),
        }
    }
}

/// A checked IPv4 or IPv6 slice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedSlice {
    /// `addressType`.
    pub(crate) family: IpFamily,
    /// `ports`.
    pub(crate) ports: Vec<SlicePort>,
    /// `endpoints`.
    pub(crate) endpoints: Vec<SliceEndpoint>,
}

/// What a slice contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SliceParse {
    /// An FQDN slice: the proxy has no use for it (by rule, no warning).
    Fqdn,
    /// Endpoints for the Service named by the `kubernetes.io/service-name` label.
    Slice(ParsedSlice),
}

/// Checks and parses `slice`, interning node names, zones and hints.
pub(crate) fn parse_slice(
    slice: &EndpointSlice,
    interner: &mut Interner,
) -> Result<SliceParse, ValidationError> {
    if slice.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(ValidationError::MissingName);
    }
    slice
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(LABEL_SERVICE_NAME))
        .filter(|name| !name.is_empty())
        .ok_or(ValidationError::MissingServiceNameLabel)?;
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return Ok(SliceParse::Fqdn),
        other => {
            return Err(ValidationError::UnknownValue {
                field: "addressType",
                value: other.to_owned(),
            });
        }
    };
    let ports = parse_slice_ports(slice.ports.as_deref().unwrap_or_default())?;
    let kube_endpoints = slice.endpoints.as_deref().unwrap_or_default();
    if kube_endpoints.len() > MAX_SLICE_ENDPOINTS {
        return Err(ValidationError::TooManyEndpoints {
            count: kube_endpoints.len(),
            max: MAX_SLICE_ENDPOINTS,
        });
    }
    let endpoints = kube_endpoints
        .iter()
        .enumerate()
        .map(|(index, endpoint)| parse_endpoint(index, endpoint, family, interner))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SliceParse::Slice(ParsedSlice {
        family,
        ports,
        endpoints,
    }))
}

fn parse_slice_ports(ports: &[EndpointPort]) -> Result<Vec<SlicePort>, ValidationError> {
    if ports.len() > MAX_SLICE_PORTS {
        return Err(ValidationError::TooManyPorts {
            count: ports.len(),
            max: MAX_SLICE_PORTS,
        });
    }
    let mut names = HashSet::with_capacity(ports.len());
    let mut parsed = Vec::with_capacity(ports.len());
    for port in ports {
        let name = port.name.clone().unwrap_or_default();
        let protocol = parse_protocol(port.protocol.as_deref(), &name)?;
        let Some(number) = port.port else {
            return Err(ValidationError::MissingPort { port_name: name });
        };
        let number = u16::try_from(number)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| ValidationError::InvalidPort {
                port_name: name.clone(),
                port: number,
            })?;
        if !names.insert(name.clone()) {
            return Err(ValidationError::DuplicatePortName { port_name: name });
        }
        parsed.push(SlicePort {
            name,
            protocol,
            port: number,
        });
    }
    Ok(parsed)
}

fn parse_endpoint(
    index: usize,
    endpoint: &KubeEndpoint,
    family: IpFamily,
    interner: &mut Interner,
) -> Result<SliceEndpoint, ValidationError> {
    const FIELD: &str = "endpoints.addresses";
    let address = endpoint
        .addresses
        .first()
        .ok_or(ValidationError::EndpointWithoutAddress { index })?;
    let ip = parse_ip(address, FIELD)?;
    if IpFamily::of(&ip) != family {
        return Err(ValidationError::WrongFamily {
            field: FIELD,
            value: ip.to_string(),
            family: family_name(family),
        });
    }
    let conditions = endpoint.conditions.as_ref();
    let api_hints = endpoint.hints.as_ref();
    let bit = |set: bool, bit: u8| if set { bit } else { 0 };
    let for_nodes = api_hints
        .and_then(|h| h.for_nodes.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|node| interner.intern(&node.name))
        .collect();
    let for_zones = api_hints
        .and_then(|h| h.for_zones.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|zone| interner.intern(&zone.name))
        .collect();
    let hints = EndpointHints {
        for_nodes,
        for_zones,
    };
    Ok(SliceEndpoint {
        ip,
        conditions: bit(conditions.and_then(|c| c.ready).unwrap_or(true), READY)
            | bit(conditions.and_then(|c| c.serving).unwrap_or(true), SERVING)
            | bit(
                conditions.and_then(|c| c.terminating).unwrap_or(false),
                TERMINATING,
            ),
        place: interner.place(endpoint.node_name.as_deref(), endpoint.zone.as_deref()),
        hints: (hints != EndpointHints::default()).then(|| Box::new(hints)),
    })
}

/// The endpoints of one service port, with their hints (same order).
#[derive(Debug, Default)]
pub(crate) struct Merged<'s> {
    /// Deduplicated and sorted by address and port.
    pub(crate) endpoints: Vec<Endpoint>,
    /// Topology hints of `endpoints[i]`.
    pub(crate) hints: Vec<Hints<'s>>,
}

/// An endpoint copy found in a slice: address, target port, preference (best first),
/// slice order, and the endpoint.
type Candidate<'s> = (
    IpAddr,
    u16,
    Reverse<(bool, bool, bool)>,
    usize,
    &'s SliceEndpoint,
);

/// Merges the endpoints every slice of a Service has for the port `port_name`/`protocol`
/// in `family`. `slices` must be in a stable order (by slice name).
///
/// The same address and port may appear in several slices while an endpoint moves between
/// them. One copy is kept: the local one if any (as upstream), then the ready one, then the
/// serving one, then the one from the first slice, so the result never depends on map
/// iteration order.
pub(crate) fn merge<'s>(
    slices: &[&'s ParsedSlice],
    family: IpFamily,
    port_name: &str,
    protocol: Protocol,
    node_name: &str,
) -> Merged<'s> {
    let is_local = |endpoint: &SliceEndpoint| {
        !node_name.is_empty() && endpoint.node_name().map(|n| &**n) == Some(node_name)
    };
    let mut candidates: Vec<Candidate<'s>> = Vec::new();
    for (order, slice) in slices.iter().enumerate() {
        if slice.family != family {
            continue;
        }
        let Some(port) = slice
            .ports
            .iter()
            .find(|p| p.name == port_name && p.protocol == protocol)
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let rank = Reverse((is_local(endpoint), endpoint.ready(), endpoint.serving()));
            candidates.push((endpoint.ip, port.port, rank, order, endpoint));
        }
    }
    candidates.sort_unstable_by_key(|c| (c.0, c.1, c.2, c.3));
    candidates.dedup_by(|later, kept| (later.0, later.1) == (kept.0, kept.1));

    let mut merged = Merged {
        endpoints: Vec::with_capacity(candidates.len()),
        hints: Vec::with_capacity(candidates.len()),
    };
    for (ip, port, _, _, endpoint) in candidates {
        merged.endpoints.push(Endpoint {
            ip,
            port,
            ready: endpoint.ready(),
            serving: endpoint.serving(),
            terminating: endpoint.terminating(),
            node_name: endpoint.node_name().cloned(),
            zone: endpoint.zone().cloned(),
            is_local: is_local(endpoint),
        });
        merged.hints.push(endpoint.hints());
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_endpoint_stays_small() {
        // A million of these live between syncs at 100k Services × 10 endpoints.
        assert!(std::mem::size_of::<SliceEndpoint>() <= 40);
    }
}
