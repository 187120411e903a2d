//! ClusterState + ModelConfig → ProxyModel.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use tracing::debug;

use crate::{
    ClusterState, EndpointSet, ExternalTraffic, Frontend, FrontendKind, InternalMasquerade,
    IpFamily, ModelConfig, ModelWarning, NodePortAddresses, ObjectKey, ObjectKind, Protocol,
    ProxyModel, ServiceInfo, ServicePort, ServicePortKey, ServicePortName, SliceInfo,
    ValidationError, Verdict,
    endpoints::{self, ParsedSlice, SliceParse},
    node::ParsedNode,
    service::{Parsed, ParsedPort, ParsedService, protocol_name},
    topology::{self, Categories},
};

/// The result of [`build`]: the model, and what could not be used.
#[derive(Debug, Clone, Default)]
pub struct Built {
    /// Every service port that could be built.
    pub model: ProxyModel,
    /// One entry per problem, in a stable order; log each as a warning.
    pub warnings: Vec<ModelWarning>,
}

/// Slices of one Service, before parsing, in slice-name order.
type SliceIndex<'a> = HashMap<(&'a str, &'a str), Vec<(&'a ObjectKey, &'a SliceInfo)>>;

/// What every service port needs besides its Service and slices.
struct Context<'a> {
    config: &'a ModelConfig,
    node: Option<ParsedNode<'a>>,
    /// NodePort addresses, per family (index: [`family_index`]).
    nodeport_ips: [Vec<IpAddr>; 2],
    /// `--cluster-cidr` entries, per family.
    cluster_cidrs: [Vec<IpNet>; 2],
}

const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

fn family_index(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

/// Builds the proxy model: every service port of every Service this proxy handles, with
/// its endpoints and verdicts. Invalid objects are left out, each with one warning;
/// everything else is built as if they were not there.
pub fn build(state: &ClusterState, config: &ModelConfig) -> Built {
    let mut warnings = Vec::new();
    let node = this_node(state, config, &mut warnings);
    let ctx = Context {
        config,
        nodeport_ips: FAMILIES.map(|family| nodeport_ips(config, node.as_ref(), family)),
        cluster_cidrs: FAMILIES.map(|family| {
            config
                .cluster_cidrs
                .iter()
                .copied()
                .filter(|net| net_family(net) == family)
                .collect()
        }),
        node,
    };
    let slices = index_slices(state, config, &mut warnings);
    let mut claims = Claims::default();
    let mut model = ProxyModel::default();

    for (key, svc) in &state.services {
        let Some((ports, ignored)) = build_service(key, svc, &slices, &ctx, &mut warnings) else {
            continue;
        };
        if let Err(reason) = claims.claim(key, &ports) {
            warnings.push(ModelWarning::object_ignored(
                ObjectKind::Service,
                key,
                reason,
            ));
            continue;
        }
        warnings.extend(
            ignored
                .into_iter()
                .map(|reason| ModelWarning::value_ignored(ObjectKind::Service, key, reason)),
        );
        model
            .ports
            .extend(ports.into_iter().map(|port| (port.key.clone(), port)));
    }

    warn_orphan_slices(state, &slices, &mut warnings);
    Built { model, warnings }
}

/// Objects labelled for another proxy implementation are not ours.
fn selected(proxy_name: Option<&str>, config: &ModelConfig) -> bool {
    match proxy_name {
        None => true,
        Some(name) => config.proxy_name.as_deref() == Some(name),
    }
}

fn this_node<'a>(
    state: &'a ClusterState,
    config: &ModelConfig,
    warnings: &mut Vec<ModelWarning>,
) -> Option<ParsedNode<'a>> {
    let node = state.node.as_deref()?;
    let key = ObjectKey::cluster_scoped(node.name());
    let reason = match &node.facts {
        Ok(facts) if config.node_name.is_empty() || node.name() == config.node_name => {
            return Some(ParsedNode {
                name: node.name(),
                zone: facts.zone.as_deref(),
                primary: &facts.primary,
            });
        }
        Ok(_) => ValidationError::NotThisNode {
            expected: config.node_name.clone(),
        },
        Err(reason) => reason.clone(),
    };
    warnings.push(ModelWarning::object_ignored(ObjectKind::Node, &key, reason));
    None
}

/// The addresses NodePorts answer on in `family`. Loopback addresses are left out: the
/// nftables mode of kube-proxy does not support localhost NodePorts either.
fn nodeport_ips(
    config: &ModelConfig,
    node: Option<&ParsedNode<'_>>,
    family: IpFamily,
) -> Vec<IpAddr> {
    match &config.nodeport_addresses {
        NodePortAddresses::Primary => node
            .and_then(|node| node.primary_ip(family))
            .into_iter()
            .collect(),
        NodePortAddresses::Cidrs(cidrs) => {
            let mut ips: Vec<IpAddr> = config
                .local_addresses
                .iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == family && !ip.is_loopback())
                .filter(|ip| cidrs.iter().any(|cidr| cidr.contains(ip)))
                .collect();
            ips.sort_unstable();
            ips.dedup();
            ips
        }
    }
}

fn net_family(net: &IpNet) -> IpFamily {
    match net {
        IpNet::V4(_) => IpFamily::V4,
        IpNet::V6(_) => IpFamily::V6,
    }
}

/// Groups the slices this proxy handles by the Service they belong to. Parsing waits until
/// the Service is built, so only one Service's parsed slices are alive at a time.
fn index_slices<'a>(
    state: &'a ClusterState,
    config: &ModelConfig,
    warnings: &mut Vec<ModelWarning>,
) -> SliceIndex<'a> {
    let mut index = SliceIndex::new();
    for (key, slice) in &state.slices {
        if !selected(slice.proxy_name.as_deref(), config) {
            debug!(slice = %key, "skipping EndpointSlice of another service proxy");
            continue;
        }
        if slice.headless {
            debug!(slice = %key, "skipping EndpointSlice of a headless Service");
            continue;
        }
        match slice.service_name() {
            Some(service) => index
                .entry((&*key.namespace, service))
                .or_default()
                .push((key, &**slice)),
            None => warnings.push(ModelWarning::object_ignored(
                ObjectKind::EndpointSlice,
                key,
                ValidationError::MissingServiceNameLabel,
            )),
        }
    }
    index
}

/// Warns about slices naming a Service that does not exist at all. Slices of Services that
/// exist but are skipped (by rule or as invalid) are not warned about again.
fn warn_orphan_slices(
    state: &ClusterState,
    slices: &SliceIndex<'_>,
    warnings: &mut Vec<ModelWarning>,
) {
    let mut orphans: Vec<ModelWarning> = slices
        .iter()
        .filter(|((namespace, service), _)| {
            !state
                .services
                .contains_key(&ObjectKey::new(*namespace, *service))
        })
        .flat_map(|((_, service), group)| {
            group.iter().map(|(key, _)| {
                ModelWarning::object_ignored(
                    ObjectKind::EndpointSlice,
                    key,
                    ValidationError::ServiceNotFound {
                        service: (*service).to_owned(),
                    },
                )
            })
        })
        .collect();
    orphans.sort_by(|a, b| a.object.cmp(&b.object));
    warnings.extend(orphans);
}

/// The service ports of one Service (all families), and the values ignored in it; None
/// when the Service is skipped.
fn build_service(
    key: &ObjectKey,
    svc: &ServiceInfo,
    slices: &SliceIndex<'_>,
    ctx: &Context<'_>,
    warnings: &mut Vec<ModelWarning>,
) -> Option<(Vec<ServicePort>, Vec<ValidationError>)> {
    if !selected(svc.proxy_name.as_deref(), ctx.config) {
        debug!(service = %key, "skipping Service of another service proxy");
        return None;
    }
    let parsed = match &svc.spec {
        Ok(Parsed::Service(parsed)) => parsed,
        Ok(Parsed::Skip(why)) => {
            debug!(service = %key, why, "skipping Service");
            return None;
        }
        Err(reason) => {
            warnings.push(ModelWarning::object_ignored(
                ObjectKind::Service,
                key,
                reason.clone(),
            ));
            return None;
        }
    };
    let slice_refs = usable_slices(slices.get(&(&*key.namespace, &*key.name)), warnings);
    let mut ports = Vec::with_capacity(parsed.ports.len() * parsed.cluster_ips.len());
    for family in FAMILIES {
        let Some(cluster_ip) = parsed.cluster_ip(family) else {
            continue;
        };
        for port in &parsed.ports {
            ports.push(service_port(
                key,
                parsed,
                port,
                family,
                cluster_ip,
                &slice_refs,
                ctx,
            ));
        }
    }
    Some((ports, parsed.ignored.clone()))
}

/// The parsed content of a Service's slices, warning about the invalid ones.
fn usable_slices<'s>(
    group: Option<&Vec<(&ObjectKey, &'s SliceInfo)>>,
    warnings: &mut Vec<ModelWarning>,
) -> Vec<&'s ParsedSlice> {
    let mut parsed = Vec::new();
    for (key, slice) in group.map(Vec::as_slice).unwrap_or_default() {
        match &slice.content {
            Ok(SliceParse::Slice(slice)) => parsed.push(slice),
            Ok(SliceParse::Fqdn) => debug!(slice = %key, "skipping FQDN EndpointSlice"),
            Err(reason) => warnings.push(ModelWarning::object_ignored(
                ObjectKind::EndpointSlice,
                key,
                reason.clone(),
            )),
        }
    }
    parsed
}

/// One service port in one family: frontends, endpoints and verdicts.
fn service_port(
    key: &ObjectKey,
    svc: &ParsedService,
    port: &ParsedPort,
    family: IpFamily,
    cluster_ip: IpAddr,
    slices: &[&ParsedSlice],
    ctx: &Context<'_>,
) -> ServicePort {
    let fam = family_index(family);
    let mut frontends = vec![Frontend {
        kind: FrontendKind::ClusterIp,
        ip: cluster_ip,
        port: port.port,
    }];
    frontends.extend(svc.external_ips(family).map(|ip| Frontend {
        kind: FrontendKind::ExternalIp,
        ip,
        port: port.port,
    }));
    frontends.extend(svc.lb_ips(family).map(|ip| Frontend {
        kind: FrontendKind::LoadBalancer,
        ip,
        port: port.port,
    }));
    if let Some(node_port) = port.node_port {
        frontends.extend(ctx.nodeport_ips[fam].iter().map(|&ip| Frontend {
            kind: FrontendKind::NodePort,
            ip,
            port: node_port,
        }));
    }
    frontends.sort_unstable();
    frontends.dedup();
    // Upstream's ExternallyAccessible: a NodePort counts even when no NodePort address is
    // known yet (dataplanes may match NodePorts by "destination is local").
    let externally_accessible = port.node_port.is_some()
        || svc.external_ips(family).next().is_some()
        || svc.lb_ips(family).next().is_some();

    let merged = endpoints::merge(
        slices,
        family,
        &port.name,
        port.protocol,
        &ctx.config.node_name,
    );
    let zone = ctx.node.as_ref().and_then(|node| node.zone);
    let categories = topology::categorize(
        &merged.endpoints,
        &merged.hints,
        &ctx.config.node_name,
        zone,
    );
    let local_ready_endpoints = merged
        .endpoints
        .iter()
        .filter(|ep| ep.is_local && ep.ready)
        .count();
    let (internal, external) = verdicts(
        &categories,
        svc,
        externally_accessible,
        &ctx.cluster_cidrs[fam],
    );

    ServicePort {
        key: ServicePortKey {
            family,
            name: ServicePortName {
                namespace: key.namespace.to_string(),
                name: key.name.to_string(),
                port_name: port.name.clone(),
                protocol: port.protocol,
            },
        },
        cluster_ip,
        port: port.port,
        node_port: port.node_port,
        frontends,
        source_ranges: svc.source_ranges(family),
        affinity_timeout_secs: svc.affinity_timeout_secs,
        external_policy_local: svc.external_policy_local,
        internal_policy_local: svc.internal_policy_local,
        health_check_node_port: svc.health_check_node_port,
        endpoints: merged.endpoints,
        internal,
        internal_masquerade: internal_masquerade(ctx.config, &ctx.cluster_cidrs[fam]),
        external,
        local_ready_endpoints,
    }
}

/// Where internal and external traffic go (upstream: the nftables proxier's use of
/// `CategorizeEndpoints`). An empty set means REJECT when the Service has no usable
/// endpoint anywhere, and DROP when a Local policy finds none on this node although some
/// exist elsewhere.
fn verdicts(
    categories: &Categories,
    svc: &ParsedService,
    externally_accessible: bool,
    cluster_cidrs: &[IpNet],
) -> (Verdict, Option<ExternalTraffic>) {
    let verdict_for = |set: &[u32]| {
        if !set.is_empty() {
            Verdict::Forward(EndpointSet(set.to_vec()))
        } else if categories.has_any {
            Verdict::Drop
        } else {
            Verdict::Reject
        }
    };
    let cluster = verdict_for(&categories.cluster);
    let internal = if svc.internal_policy_local {
        verdict_for(&categories.local)
    } else {
        cluster.clone()
    };
    let external = externally_accessible.then(|| {
        if svc.external_policy_local {
            ExternalTraffic {
                verdict: verdict_for(&categories.local),
                masquerade: false,
                pod_sources_use_cluster: cluster_cidrs.to_vec(),
                node_sources_use_cluster: true,
                cluster_verdict: cluster,
            }
        } else {
            ExternalTraffic {
                verdict: cluster.clone(),
                masquerade: true,
                pod_sources_use_cluster: Vec::new(),
                node_sources_use_cluster: false,
                cluster_verdict: cluster,
            }
        }
    });
    (internal, external)
}

fn internal_masquerade(config: &ModelConfig, cluster_cidrs: &[IpNet]) -> InternalMasquerade {
    if config.masquerade_all {
        InternalMasquerade::Always
    } else if cluster_cidrs.is_empty() {
        InternalMasquerade::HairpinOnly
    } else {
        InternalMasquerade::SourceNotIn(cluster_cidrs.to_vec())
    }
}

/// Frontends already taken, and by whom, so two Services never program the same one.
#[derive(Default)]
struct Claims<'a> {
    addresses: HashMap<(IpAddr, u16, Protocol), &'a ObjectKey>,
    node_ports: HashMap<(IpFamily, u16, Protocol), &'a ObjectKey>,
}

impl<'a> Claims<'a> {
    /// Takes every frontend of `ports` for `owner`, or none when one is taken (including
    /// twice by the Service itself).
    fn claim(
        &mut self,
        owner: &'a ObjectKey,
        ports: &[ServicePort],
    ) -> Result<(), ValidationError> {
        let mut addresses = HashMap::new();
        let mut node_ports = HashMap::new();
        for port in ports {
            let protocol = port.key.name.protocol;
            for frontend in &port.frontends {
                let claim = (frontend.ip, frontend.port, protocol);
                if let Some(taken) = self.addresses.get(&claim).or_else(|| addresses.get(&claim)) {
                    return Err(conflict(
                        format!(
                            "{}/{}",
                            SocketAddr::new(frontend.ip, frontend.port),
                            protocol_name(protocol)
                        ),
                        taken,
                    ));
                }
                addresses.insert(claim, owner);
            }
            if let Some(node_port) = port.node_port {
                let claim = (port.key.family, node_port, protocol);
                if let Some(taken) = self
                    .node_ports
                    .get(&claim)
                    .or_else(|| node_ports.get(&claim))
                {
                    return Err(conflict(
                        format!("nodePort {node_port}/{}", protocol_name(protocol)),
                        taken,
                    ));
                }
                node_ports.insert(claim, owner);
            }
        }
        self.addresses.extend(addresses);
        self.node_ports.extend(node_ports);
        Ok(())
    }
}

fn conflict(frontend: String, owner: &ObjectKey) -> ValidationError {
    ValidationError::FrontendConflict {
        frontend,
        owner: owner.to_string(),
    }
}
