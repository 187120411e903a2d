//! Builders that write small Kubernetes manifests, and helpers that read the model back.
//!
//! Fixtures are YAML parsed by [`crate::manifest`], so a failing test can be reproduced by
//! pasting its manifest into a file.

use std::fmt::Write as _;

use crate::{
    Built, ClusterState, IpFamily, ModelConfig, ObjectKey, ServicePort, Verdict, build,
    manifest::{self, ManifestObject},
};

/// This node's name in every test.
pub(super) const THIS_NODE: &str = "node-a";
/// Another node.
pub(super) const OTHER_NODE: &str = "node-b";
/// This node's IPv4 and IPv6 InternalIPs.
pub(super) const NODE_IP4: &str = "192.0.2.10";
pub(super) const NODE_IP6: &str = "2001:db8::10";
/// Pod network.
pub(super) const POD_CIDR4: &str = "10.244.0.0/16";
pub(super) const POD_CIDR6: &str = "fd00:244::/48";

/// A config for [`THIS_NODE`] with no cluster CIDR.
pub(super) fn config() -> ModelConfig {
    ModelConfig {
        node_name: THIS_NODE.to_owned(),
        ..ModelConfig::default()
    }
}

/// [`config`] with both families' pod CIDRs.
pub(super) fn config_with_cidrs() -> ModelConfig {
    ModelConfig {
        cluster_cidrs: vec![POD_CIDR4.parse().unwrap(), POD_CIDR6.parse().unwrap()],
        ..config()
    }
}

/// Parses manifests into a cluster state; every document must parse.
pub(super) fn state(yaml: &str) -> ClusterState {
    let (state, errors) = state_and_errors(yaml);
    assert!(
        errors.is_empty(),
        "fixture does not parse: {errors:?}\n{yaml}"
    );
    state
}

/// Parses manifests into a cluster state, returning the documents that did not parse as
/// messages.
pub(super) fn state_and_errors(yaml: &str) -> (ClusterState, Vec<String>) {
    let mut state = ClusterState::default();
    let mut errors = Vec::new();
    for result in manifest::parse_documents(yaml) {
        match result {
            Ok(object) => insert(&mut state, &object),
            Err(error) => errors.push(error.to_string()),
        }
    }
    (state, errors)
}

fn insert(state: &mut ClusterState, object: &ManifestObject) {
    state.insert_manifest(object);
}

/// Builds the model of `yaml` with `config`.
pub(super) fn build_yaml(yaml: &str, config: &ModelConfig) -> Built {
    build(&state(yaml), config)
}

/// Builds, and asserts nothing was warned about.
pub(super) fn build_clean(yaml: &str, config: &ModelConfig) -> Built {
    let built = build_yaml(yaml, config);
    assert!(
        built.warnings.is_empty(),
        "unexpected warnings: {:?}",
        warning_lines(&built)
    );
    built
}

/// Warnings as log lines.
pub(super) fn warning_lines(built: &Built) -> Vec<String> {
    built.warnings.iter().map(ToString::to_string).collect()
}

/// The service port `service`:`port_name` (namespace "default") of `family`.
pub(super) fn port<'a>(
    built: &'a Built,
    service: &str,
    port_name: &str,
    family: IpFamily,
) -> &'a ServicePort {
    built
        .model
        .ports
        .values()
        .find(|p| {
            p.key.family == family
                && p.key.name.namespace == "default"
                && p.key.name.name == service
                && p.key.name.port_name == port_name
        })
        .unwrap_or_else(|| {
            panic!(
                "no port {service}:{port_name} {family:?} in {:?}",
                built.model.ports.keys()
            )
        })
}

/// Every service port of one Service.
pub(super) fn ports_of<'a>(built: &'a Built, key: &ObjectKey) -> Vec<&'a ServicePort> {
    built
        .model
        .ports
        .values()
        .filter(|p| *p.key.name.namespace == *key.namespace && *p.key.name.name == *key.name)
        .collect()
}

/// A verdict in a form that is easy to compare: "REJECT", "DROP", or the sorted endpoint
/// addresses ("10.0.0.1:80 10.0.0.2:80").
pub(super) fn show(verdict: &Verdict, port: &ServicePort) -> String {
    match verdict {
        Verdict::Reject => "REJECT".to_owned(),
        Verdict::Drop => "DROP".to_owned(),
        Verdict::Forward(set) => {
            assert!(!set.is_empty(), "Forward with an empty set");
            let mut shown: Vec<String> = set
                .iter(port)
                .map(|ep| std::net::SocketAddr::new(ep.ip, ep.port).to_string())
                .collect();
            shown.sort();
            shown.join(" ")
        }
    }
}

/// Expected [`show`] output for endpoints `ips` on port `port`.
pub(super) fn fwd(ips: &[&str], port: u16) -> String {
    if ips.is_empty() {
        return "REJECT".to_owned();
    }
    let mut shown: Vec<String> = ips
        .iter()
        .map(|ip| std::net::SocketAddr::new(ip.parse().unwrap(), port).to_string())
        .collect();
    shown.sort();
    shown.join(" ")
}

/// A Service manifest.
#[derive(Debug, Clone)]
pub(super) struct Svc {
    name: String,
    namespace: Option<String>,
    labels: Vec<(String, String)>,
    service_type: Option<String>,
    cluster_ips: Vec<String>,
    ports: Vec<String>,
    spec_extra: Vec<String>,
    ingress: Vec<String>,
}

/// A Service named `name` with ClusterIP `cluster_ip` (repeat [`Svc::cluster_ip`] for dual
/// stack; "" for none at all) and no ports yet.
pub(super) fn svc(name: &str, cluster_ip: &str) -> Svc {
    Svc {
        name: name.to_owned(),
        namespace: None,
        labels: Vec::new(),
        service_type: None,
        cluster_ips: if cluster_ip.is_empty() {
            Vec::new()
        } else {
            vec![cluster_ip.to_owned()]
        },
        ports: Vec::new(),
        spec_extra: Vec::new(),
        ingress: Vec::new(),
    }
}

impl Svc {
    pub(super) fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    pub(super) fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    pub(super) fn cluster_ip(mut self, ip: &str) -> Self {
        self.cluster_ips.push(ip.to_owned());
        self
    }

    pub(super) fn service_type(mut self, service_type: &str) -> Self {
        self.service_type = Some(service_type.to_owned());
        self
    }

    /// A TCP port.
    pub(super) fn port(self, name: &str, port: u16) -> Self {
        self.port_proto(name, port, "TCP")
    }

    pub(super) fn port_proto(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports.push(format!(
            "{{name: \"{name}\", port: {port}, protocol: {protocol}}}"
        ));
        self
    }

    pub(super) fn node_port(mut self, name: &str, port: u16, node_port: u16) -> Self {
        self.ports.push(format!(
            "{{name: \"{name}\", port: {port}, nodePort: {node_port}}}"
        ));
        self
    }

    /// A raw `spec.ports[]` entry, for bad inputs.
    pub(super) fn raw_port(mut self, flow_yaml: &str) -> Self {
        self.ports.push(flow_yaml.to_owned());
        self
    }

    /// A raw `spec` line (`key: value`).
    pub(super) fn spec(mut self, line: &str) -> Self {
        self.spec_extra.push(line.to_owned());
        self
    }

    pub(super) fn etp_local(self) -> Self {
        self.spec("externalTrafficPolicy: Local")
    }

    pub(super) fn itp_local(self) -> Self {
        self.spec("internalTrafficPolicy: Local")
    }

    pub(super) fn external_ips(self, ips: &[&str]) -> Self {
        let quoted: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
        self.spec(&format!("externalIPs: [{}]", quoted.join(", ")))
    }

    pub(super) fn source_ranges(self, ranges: &[&str]) -> Self {
        let quoted: Vec<String> = ranges.iter().map(|r| format!("\"{r}\"")).collect();
        self.spec(&format!(
            "loadBalancerSourceRanges: [{}]",
            quoted.join(", ")
        ))
    }

    /// A load-balancer ingress entry; `ip_mode` None leaves it unset.
    pub(super) fn lb_ingress(mut self, ip: &str, ip_mode: Option<&str>) -> Self {
        let mode = ip_mode
            .map(|m| format!(", ipMode: {m}"))
            .unwrap_or_default();
        self.ingress.push(format!("{{ip: \"{ip}\"{mode}}}"));
        self
    }

    pub(super) fn yaml(&self) -> String {
        let mut out = String::from("---\napiVersion: v1\nkind: Service\nmetadata:\n");
        writeln!(out, "  name: {}", self.name).unwrap();
        if let Some(namespace) = &self.namespace {
            writeln!(out, "  namespace: {namespace}").unwrap();
        }
        if !self.labels.is_empty() {
            out.push_str("  labels:\n");
            for (key, value) in &self.labels {
                writeln!(out, "    {key}: \"{value}\"").unwrap();
            }
        }
        out.push_str("spec:\n");
        if let Some(service_type) = &self.service_type {
            writeln!(out, "  type: {service_type}").unwrap();
        }
        if let Some(first) = self.cluster_ips.first() {
            writeln!(out, "  clusterIP: \"{first}\"").unwrap();
            let quoted: Vec<String> = self
                .cluster_ips
                .iter()
                .map(|ip| format!("\"{ip}\""))
                .collect();
            writeln!(out, "  clusterIPs: [{}]", quoted.join(", ")).unwrap();
        }
        if !self.ports.is_empty() {
            writeln!(out, "  ports: [{}]", self.ports.join(", ")).unwrap();
        }
        for line in &self.spec_extra {
            writeln!(out, "  {line}").unwrap();
        }
        if !self.ingress.is_empty() {
            writeln!(
                out,
                "status:\n  loadBalancer:\n    ingress: [{}]",
                self.ingress.join(", ")
            )
            .unwrap();
        }
        out
    }
}

/// One endpoint of a slice; defaults: no conditions (ready), no node, no hints.
#[derive(Debug, Clone)]
pub(super) struct Ep {
    ip: String,
    node: Option<String>,
    zone: Option<String>,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
    zone_hints: Vec<String>,
    node_hints: Vec<String>,
    extra_addresses: Vec<String>,
}

pub(super) fn ep(ip: &str) -> Ep {
    Ep {
        ip: ip.to_owned(),
        node: None,
        zone: None,
        ready: None,
        serving: None,
        terminating: None,
        zone_hints: Vec::new(),
        node_hints: Vec::new(),
        extra_addresses: Vec::new(),
    }
}

impl Ep {
    pub(super) fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_owned());
        self
    }

    /// On [`THIS_NODE`].
    pub(super) fn local(self) -> Self {
        self.node(THIS_NODE)
    }

    /// On [`OTHER_NODE`].
    pub(super) fn remote(self) -> Self {
        self.node(OTHER_NODE)
    }

    pub(super) fn zone(mut self, zone: &str) -> Self {
        self.zone = Some(zone.to_owned());
        self
    }

    /// All three conditions given explicitly.
    pub(super) fn conditions(mut self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.ready = Some(ready);
        self.serving = Some(serving);
        self.terminating = Some(terminating);
        self
    }

    pub(super) fn not_ready(self) -> Self {
        self.conditions(false, false, false)
    }

    /// Terminating but still serving: the fallback set.
    pub(super) fn serving_terminating(self) -> Self {
        self.conditions(false, true, true)
    }

    /// Terminating and no longer serving: never used.
    pub(super) fn terminating_not_serving(self) -> Self {
        self.conditions(false, false, true)
    }

    pub(super) fn zone_hints(mut self, zones: &[&str]) -> Self {
        self.zone_hints = zones.iter().map(|z| (*z).to_owned()).collect();
        self
    }

    pub(super) fn node_hints(mut self, nodes: &[&str]) -> Self {
        self.node_hints = nodes.iter().map(|n| (*n).to_owned()).collect();
        self
    }

    pub(super) fn extra_address(mut self, ip: &str) -> Self {
        self.extra_addresses.push(ip.to_owned());
        self
    }

    fn yaml(&self, out: &mut String) {
        let addresses: Vec<String> = std::iter::once(&self.ip)
            .chain(&self.extra_addresses)
            .map(|ip| format!("\"{ip}\""))
            .collect();
        writeln!(out, "- addresses: [{}]", addresses.join(", ")).unwrap();
        if let Some(node) = &self.node {
            writeln!(out, "  nodeName: {node}").unwrap();
        }
        if let Some(zone) = &self.zone {
            writeln!(out, "  zone: {zone}").unwrap();
        }
        let conditions: Vec<String> = [
            ("ready", self.ready),
            ("serving", self.serving),
            ("terminating", self.terminating),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| format!("{name}: {v}")))
        .collect();
        if !conditions.is_empty() {
            writeln!(out, "  conditions: {{{}}}", conditions.join(", ")).unwrap();
        }
        if !self.zone_hints.is_empty() || !self.node_hints.is_empty() {
            out.push_str("  hints:\n");
            let names = |names: &[String]| {
                names
                    .iter()
                    .map(|n| format!("{{name: {n}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            if !self.zone_hints.is_empty() {
                writeln!(out, "    forZones: [{}]", names(&self.zone_hints)).unwrap();
            }
            if !self.node_hints.is_empty() {
                writeln!(out, "    forNodes: [{}]", names(&self.node_hints)).unwrap();
            }
        }
    }
}

/// An EndpointSlice manifest.
#[derive(Debug, Clone)]
pub(super) struct Slice {
    name: String,
    service: Option<String>,
    namespace: Option<String>,
    address_type: String,
    labels: Vec<(String, String)>,
    ports: Vec<String>,
    endpoints: Vec<Ep>,
}

/// An IPv4 slice `name` of Service `service`, no ports or endpoints yet.
pub(super) fn slice(name: &str, service: &str) -> Slice {
    Slice {
        name: name.to_owned(),
        service: Some(service.to_owned()),
        namespace: None,
        address_type: "IPv4".to_owned(),
        labels: Vec::new(),
        ports: Vec::new(),
        endpoints: Vec::new(),
    }
}

impl Slice {
    pub(super) fn address_type(mut self, address_type: &str) -> Self {
        address_type.clone_into(&mut self.address_type);
        self
    }

    pub(super) fn ipv6(self) -> Self {
        self.address_type("IPv6")
    }

    pub(super) fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    pub(super) fn without_service_label(mut self) -> Self {
        self.service = None;
        self
    }

    pub(super) fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    /// A TCP port.
    pub(super) fn port(self, name: &str, port: u16) -> Self {
        self.port_proto(name, port, "TCP")
    }

    pub(super) fn port_proto(mut self, name: &str, port: u16, protocol: &str) -> Self {
        self.ports.push(format!(
            "{{name: \"{name}\", port: {port}, protocol: {protocol}}}"
        ));
        self
    }

    /// A raw `ports[]` entry, for bad inputs.
    pub(super) fn raw_port(mut self, flow_yaml: &str) -> Self {
        self.ports.push(flow_yaml.to_owned());
        self
    }

    pub(super) fn endpoints(mut self, endpoints: impl IntoIterator<Item = Ep>) -> Self {
        self.endpoints.extend(endpoints);
        self
    }

    pub(super) fn yaml(&self) -> String {
        let mut out =
            String::from("---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n");
        writeln!(out, "  name: {}", self.name).unwrap();
        if let Some(namespace) = &self.namespace {
            writeln!(out, "  namespace: {namespace}").unwrap();
        }
        let service_label = self
            .service
            .as_ref()
            .map(|s| (crate::LABEL_SERVICE_NAME.to_owned(), s.clone()));
        let labels: Vec<&(String, String)> = service_label.iter().chain(&self.labels).collect();
        if !labels.is_empty() {
            out.push_str("  labels:\n");
            for (key, value) in labels {
                writeln!(out, "    {key}: \"{value}\"").unwrap();
            }
        }
        writeln!(out, "addressType: {}", self.address_type).unwrap();
        writeln!(out, "ports: [{}]", self.ports.join(", ")).unwrap();
        if self.endpoints.is_empty() {
            out.push_str("endpoints: []\n");
        } else {
            out.push_str("endpoints:\n");
            for endpoint in &self.endpoints {
                endpoint.yaml(&mut out);
            }
        }
        out
    }
}

/// This node's Node object with both InternalIPs and, when given, a zone label.
pub(super) fn node(zone: Option<&str>) -> String {
    node_named(THIS_NODE, zone)
}

pub(super) fn node_named(name: &str, zone: Option<&str>) -> String {
    let labels = zone
        .map(|z| format!("  labels:\n    {}: {z}\n", crate::LABEL_TOPOLOGY_ZONE))
        .unwrap_or_default();
    format!(
        "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{labels}status:\n  addresses:\n  \
         - {{type: Hostname, address: {name}}}\n  - {{type: InternalIP, address: \"{NODE_IP4}\"}}\n  \
         - {{type: InternalIP, address: \"{NODE_IP6}\"}}\n"
    )
}
