//! The bad-input table: every kind of broken object yields exactly one clear message naming
//! the object (or, when unreadable, the document) and the reason, and leaves a good Service
//! in the same input exactly as it is without the bad object.

use std::fmt::Write as _;

use super::fixtures::{
    THIS_NODE, build_yaml, config, ep, node_named, ports_of, slice, state_and_errors, svc,
    warning_lines,
};
use crate::{ObjectKey, build};

/// The good Service every row is built next to; it sorts before every "bad-" object, so a
/// conflicting bad object is always the second claimant.
fn good() -> String {
    svc("a-good", "10.96.0.1")
        .port("http", 80)
        .port_proto("dns", 53, "UDP")
        .yaml()
        + &slice("a-good-1", "a-good")
            .port("http", 8080)
            .port_proto("dns", 5353, "UDP")
            .endpoints([ep("10.0.0.1").node(THIS_NODE), ep("10.0.0.2")])
            .yaml()
}

struct Row {
    name: &'static str,
    yaml: String,
    /// Must appear in the message: the object (or document).
    object: &'static str,
    /// Must appear in the message: the reason.
    reason: String,
}

fn row(
    name: &'static str,
    yaml: impl Into<String>,
    object: &'static str,
    reason: impl Into<String>,
) -> Row {
    Row {
        name,
        yaml: yaml.into(),
        object,
        reason: reason.into(),
    }
}

fn bad_svc(name: &str) -> super::fixtures::Svc {
    svc(name, "10.96.9.9")
}

#[expect(
    clippy::too_many_lines,
    reason = "a table of cases reads best in one place"
)]
fn service_rows() -> Vec<Row> {
    let raw_service = |name: &str, spec: &str| {
        format!("---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{spec}")
    };
    vec![
        row(
            "unknown protocol",
            bad_svc("bad-proto")
                .raw_port("{name: http, port: 80, protocol: HTTP}")
                .yaml(),
            "Service default/bad-proto",
            "unknown protocol \"HTTP\"",
        ),
        row(
            "port 0",
            bad_svc("bad-port0")
                .raw_port("{name: http, port: 0}")
                .yaml(),
            "Service default/bad-port0",
            "invalid port number 0",
        ),
        row(
            "port 70000",
            bad_svc("bad-port-big")
                .raw_port("{name: http, port: 70000}")
                .yaml(),
            "Service default/bad-port-big",
            "invalid port number 70000",
        ),
        row(
            "negative port",
            bad_svc("bad-port-neg")
                .raw_port("{name: http, port: -1}")
                .yaml(),
            "Service default/bad-port-neg",
            "invalid port number -1",
        ),
        row(
            "nodePort 0",
            bad_svc("bad-np0")
                .service_type("NodePort")
                .raw_port("{name: http, port: 80, nodePort: 0}")
                .yaml(),
            "Service default/bad-np0",
            "nodePort 0 outside 1-65535",
        ),
        row(
            "nodePort 70000",
            bad_svc("bad-np-big")
                .service_type("NodePort")
                .raw_port("{name: http, port: 80, nodePort: 70000}")
                .yaml(),
            "Service default/bad-np-big",
            "nodePort 70000 outside",
        ),
        row(
            "invalid clusterIP",
            svc("bad-cip", "10.96.0.300").port("http", 80).yaml(),
            "Service default/bad-cip",
            "spec.clusterIPs has invalid IP \"10.96.0.300\"",
        ),
        row(
            "invalid externalIP",
            bad_svc("bad-extip")
                .port("http", 80)
                .external_ips(&["not-an-ip"])
                .yaml(),
            "Service default/bad-extip",
            "spec.externalIPs has invalid IP \"not-an-ip\"",
        ),
        row(
            "invalid LB ingress IP",
            bad_svc("bad-lbip")
                .service_type("LoadBalancer")
                .port("http", 80)
                .lb_ingress("1.2.3", None)
                .yaml(),
            "Service default/bad-lbip",
            "status.loadBalancer.ingress.ip has invalid IP",
        ),
        row(
            "unknown LB ipMode",
            bad_svc("bad-ipmode")
                .service_type("LoadBalancer")
                .port("http", 80)
                .lb_ingress("203.0.113.9", Some("Bogus"))
                .yaml(),
            "Service default/bad-ipmode",
            "ipMode has unknown value \"Bogus\"",
        ),
        row(
            "wrong-family externalIP (value ignored)",
            bad_svc("bad-fam-ext")
                .port("http", 80)
                .external_ips(&["2001:db8::1"])
                .yaml(),
            "Service default/bad-fam-ext: ignoring a value",
            "2001:db8::1 is not IPv4",
        ),
        row(
            "wrong-family LB ingress (value ignored)",
            bad_svc("bad-fam-lb")
                .service_type("LoadBalancer")
                .port("http", 80)
                .lb_ingress("2001:db8::2", None)
                .yaml(),
            "Service default/bad-fam-lb: ignoring a value",
            "2001:db8::2 is not IPv4",
        ),
        row(
            "wrong-family source range (value ignored)",
            bad_svc("bad-fam-range")
                .service_type("LoadBalancer")
                .port("http", 80)
                .source_ranges(&["2001:db8::/48"])
                .yaml(),
            "Service default/bad-fam-range: ignoring a value",
            "2001:db8::/48 is not IPv4",
        ),
        row(
            "invalid source range",
            bad_svc("bad-range")
                .service_type("LoadBalancer")
                .port("http", 80)
                .source_ranges(&["10.0.0.0/33"])
                .yaml(),
            "Service default/bad-range",
            "invalid CIDR \"10.0.0.0/33\"",
        ),
        row(
            "duplicate port",
            bad_svc("bad-dup").port("a", 80).port("b", 80).yaml(),
            "Service default/bad-dup",
            "ports \"a\" and \"b\" both use 80/TCP",
        ),
        row(
            "duplicate port name",
            bad_svc("bad-dupname").port("a", 80).port("a", 81).yaml(),
            "Service default/bad-dupname",
            "port name \"a\" is used twice",
        ),
        row(
            "no ports",
            bad_svc("bad-noports").yaml(),
            "Service default/bad-noports",
            "spec.ports is empty",
        ),
        row(
            "no spec",
            raw_service("bad-nospec", ""),
            "Service default/bad-nospec",
            "spec is missing",
        ),
        row(
            "negative affinity timeout",
            bad_svc("bad-aff-neg")
                .port("http", 80)
                .spec("sessionAffinity: ClientIP")
                .spec("sessionAffinityConfig: {clientIP: {timeoutSeconds: -5}}")
                .yaml(),
            "Service default/bad-aff-neg",
            "timeoutSeconds -5 is outside 1-86400",
        ),
        row(
            "affinity timeout over a day",
            bad_svc("bad-aff-big")
                .port("http", 80)
                .spec("sessionAffinity: ClientIP")
                .spec("sessionAffinityConfig: {clientIP: {timeoutSeconds: 100000}}")
                .yaml(),
            "Service default/bad-aff-big",
            "timeoutSeconds 100000",
        ),
        row(
            "unknown session affinity",
            bad_svc("bad-aff-kind")
                .port("http", 80)
                .spec("sessionAffinity: Sticky")
                .yaml(),
            "Service default/bad-aff-kind",
            "spec.sessionAffinity has unknown value \"Sticky\"",
        ),
        row(
            "unknown type",
            bad_svc("bad-type")
                .service_type("Internal")
                .port("http", 80)
                .yaml(),
            "Service default/bad-type",
            "spec.type has unknown value \"Internal\"",
        ),
        row(
            "unknown externalTrafficPolicy",
            bad_svc("bad-etp")
                .service_type("NodePort")
                .port("http", 80)
                .spec("externalTrafficPolicy: Global")
                .yaml(),
            "Service default/bad-etp",
            "spec.externalTrafficPolicy has unknown value",
        ),
        row(
            "unknown internalTrafficPolicy",
            bad_svc("bad-itp")
                .port("http", 80)
                .spec("internalTrafficPolicy: Nearby")
                .yaml(),
            "Service default/bad-itp",
            "spec.internalTrafficPolicy has unknown value",
        ),
        row(
            "two clusterIPs of one family",
            svc("bad-samefam", "10.96.9.10")
                .cluster_ip("10.96.9.11")
                .port("http", 80)
                .yaml(),
            "Service default/bad-samefam",
            "are of the same family",
        ),
        row(
            "three clusterIPs",
            svc("bad-3ips", "10.96.9.12")
                .cluster_ip("fd00::12")
                .cluster_ip("10.96.9.13")
                .port("http", 80)
                .yaml(),
            "Service default/bad-3ips",
            "at most 2",
        ),
        row(
            "clusterIP differs from clusterIPs[0]",
            svc("bad-mismatch", "")
                .spec("clusterIP: 10.96.9.14")
                .spec("clusterIPs: [10.96.9.15]")
                .port("http", 80)
                .yaml(),
            "Service default/bad-mismatch",
            "differs from spec.clusterIPs[0]",
        ),
        row(
            "ipFamilies contradict clusterIPs",
            bad_svc("bad-families")
                .spec("ipFamilies: [IPv6]")
                .port("http", 80)
                .yaml(),
            "Service default/bad-families",
            "spec.ipFamilies [\"IPv6\"] do not match",
        ),
        row(
            "unknown ipFamily",
            bad_svc("bad-family-name")
                .spec("ipFamilies: [IPv5]")
                .port("http", 80)
                .yaml(),
            "Service default/bad-family-name",
            "spec.ipFamilies has unknown value \"IPv5\"",
        ),
        row(
            "healthCheckNodePort out of range",
            bad_svc("bad-hc")
                .service_type("LoadBalancer")
                .etp_local()
                .node_port("http", 80, 30090)
                .spec("healthCheckNodePort: 70000")
                .yaml(),
            "Service default/bad-hc",
            "healthCheckNodePort 70000",
        ),
        row(
            "LB with local policy but no healthCheckNodePort (value ignored)",
            bad_svc("bad-nohc")
                .service_type("LoadBalancer")
                .etp_local()
                .node_port("http", 80, 30091)
                .yaml(),
            "Service default/bad-nohc: ignoring a value",
            "without healthCheckNodePort",
        ),
        row(
            "externalIP steals the good ClusterIP",
            bad_svc("bad-steal")
                .port("http", 80)
                .external_ips(&["10.96.0.1"])
                .yaml(),
            "Service default/bad-steal",
            "10.96.0.1:80/TCP is already used by Service default/a-good",
        ),
        row(
            "two Services claim one nodePort",
            bad_svc("bad-np-1")
                .service_type("NodePort")
                .node_port("http", 80, 30092)
                .yaml()
                + &svc("bad-np-2", "10.96.9.16")
                    .service_type("NodePort")
                    .node_port("http", 80, 30092)
                    .yaml(),
            "Service default/bad-np-2",
            "nodePort 30092/TCP is already used by Service default/bad-np-1",
        ),
        row(
            "huge object (100k ports)",
            huge_service(),
            "Service default/bad-huge",
            "100000 ports exceed the limit of 30000",
        ),
    ]
}

fn huge_service() -> String {
    let mut ports = String::new();
    for i in 0..100_000u32 {
        write!(ports, "{{name: p{i}, port: {}}}, ", i % 65_535 + 1).unwrap();
    }
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: bad-huge}}\nspec:\n  clusterIP: 10.96.9.17\n  ports: [{ports}]\n"
    )
}

#[expect(
    clippy::too_many_lines,
    reason = "a table of cases reads best in one place"
)]
fn slice_rows() -> Vec<Row> {
    vec![
        row(
            "slice without service label",
            slice("bad-nolabel", "a-good")
                .without_service_label()
                .port("http", 8080)
                .endpoints([ep("10.0.0.9")])
                .yaml(),
            "EndpointSlice default/bad-nolabel",
            "label kubernetes.io/service-name is missing",
        ),
        row(
            "slice for an unknown service",
            slice("bad-ghost-1", "ghost")
                .port("http", 8080)
                .endpoints([ep("10.0.0.9")])
                .yaml(),
            "EndpointSlice default/bad-ghost-1",
            "its Service \"ghost\" does not exist",
        ),
        row(
            "slice with unknown addressType",
            slice("bad-addrtype", "a-good")
                .address_type("IPv5")
                .port("http", 8080)
                .endpoints([ep("10.0.0.9")])
                .yaml(),
            "EndpointSlice default/bad-addrtype",
            "addressType has unknown value \"IPv5\"",
        ),
        row(
            "slice with an invalid address",
            slice("bad-epip", "a-good")
                .port("http", 8080)
                .endpoints([ep("10.0.0.999")])
                .yaml(),
            "EndpointSlice default/bad-epip",
            "endpoints.addresses has invalid IP \"10.0.0.999\"",
        ),
        row(
            "slice address of the other family",
            slice("bad-epfam", "a-good")
                .port("http", 8080)
                .endpoints([ep("fd00::9")])
                .yaml(),
            "EndpointSlice default/bad-epfam",
            "fd00::9 is not IPv4",
        ),
        row(
            "slice port with unknown protocol",
            slice("bad-sproto", "a-good")
                .port_proto("http", 8080, "QUIC")
                .endpoints([ep("10.0.0.9")])
                .yaml(),
            "EndpointSlice default/bad-sproto",
            "unknown protocol \"QUIC\"",
        ),
        row(
            "slice port 0",
            slice("bad-sport0", "a-good")
                .raw_port("{name: http, port: 0}")
                .endpoints([ep("10.0.0.9")])
                .yaml(),
            "EndpointSlice default/bad-sport0",
            "invalid port number 0",
        ),
        row(
            "slice port without number",
            slice("bad-snoport", "a-good")
                .raw_port("{name: http}")
                .endpoints([ep("10.0.0.9")])
                .yaml(),
            "EndpointSlice default/bad-snoport",
            "port \"http\" has no port number",
        ),
        row(
            "slice duplicate port names",
            slice("bad-sdup", "a-good")
                .port("http", 8080)
                .port("http", 8081)
                .endpoints([ep("10.0.0.9")])
                .yaml(),
            "EndpointSlice default/bad-sdup",
            "port name \"http\" is used twice",
        ),
        row(
            "endpoint without addresses",
            slice("bad-noaddr", "a-good")
                .port("http", 8080)
                .yaml()
                .replace("endpoints: []", "endpoints:\n- addresses: []"),
            "EndpointSlice default/bad-noaddr",
            "endpoints[0] has no address",
        ),
        row(
            "slice with 1001 endpoints",
            slice("bad-many", "a-good")
                .port("http", 8080)
                .endpoints((0..1001).map(|i| ep(&format!("10.1.{}.{}", i / 250, i % 250 + 1))))
                .yaml(),
            "EndpointSlice default/bad-many",
            "1001 endpoints exceed the limit of 1000",
        ),
    ]
}

fn document_rows() -> Vec<Row> {
    vec![
        row(
            "broken YAML",
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: [\n",
            "document 3 (line",
            "syntax error",
        ),
        row(
            "tab indentation",
            "---\napiVersion: v1\nkind: Service\nmetadata:\n\tname: tabbed\n",
            "document 3 (line",
            "syntax error",
        ),
        row(
            "scalar document",
            "---\njust some words\n",
            "document 3 (line",
            "document is a string, not an object",
        ),
        row(
            "list document",
            "---\n- a\n- b\n",
            "document 3 (line",
            "document is a list, not an object",
        ),
        row(
            "empty object",
            "---\n{}\n",
            "document 3 (line",
            "kind is missing",
        ),
        row(
            "missing apiVersion",
            "---\nkind: Service\nmetadata: {name: bad-noapi}\n",
            "Service default/bad-noapi",
            "apiVersion is missing",
        ),
        row(
            "missing name",
            "---\napiVersion: v1\nkind: Service\nmetadata: {namespace: default}\nspec: {ports: [{port: 80}]}\n",
            "Service without a name",
            "metadata.name is missing",
        ),
        row(
            "field of the wrong type",
            "---\napiVersion: v1\nkind: Service\nmetadata: {name: bad-fieldtype}\nspec: {ports: [{port: eighty}]}\n",
            "Service default/bad-fieldtype",
            "invalid Service",
        ),
        row(
            "Node with an invalid address",
            node_named(THIS_NODE, None).replace("192.0.2.10", "192.0.2.1000"),
            "Node node-a",
            "status.addresses has invalid IP \"192.0.2.1000\"",
        ),
        row(
            "Node of another node",
            node_named("node-z", None),
            "Node node-z",
            "it is not this node (\"node-a\")",
        ),
    ]
}

#[test]
fn bad_input_table() {
    let good_key = ObjectKey::new("default", "a-good");
    let baseline = build_yaml(&good(), &config());
    assert_eq!(ports_of(&baseline, &good_key).len(), 2);
    let rows: Vec<Row> = service_rows()
        .into_iter()
        .chain(slice_rows())
        .chain(document_rows())
        .collect();
    assert!(
        rows.len() >= 30,
        "the table covers {} kinds of bad input",
        rows.len()
    );
    for row in rows {
        let (state, document_errors) = state_and_errors(&(good() + &row.yaml));
        let built = build(&state, &config());
        let messages: Vec<String> = document_errors
            .into_iter()
            .chain(warning_lines(&built))
            .collect();
        assert_eq!(
            messages.len(),
            1,
            "{}: expected exactly one message, got {messages:#?}",
            row.name
        );
        let message = &messages[0];
        assert!(
            message.contains(row.object),
            "{}: message does not name {:?}: {message}",
            row.name,
            row.object
        );
        assert!(
            message.contains(&row.reason),
            "{}: message does not say {:?}: {message}",
            row.name,
            row.reason
        );
        assert_eq!(
            ports_of(&built, &good_key),
            ports_of(&baseline, &good_key),
            "{}: the good Service changed",
            row.name
        );
    }
}

#[test]
fn validation_functions_agree_with_build() {
    use crate::{
        manifest::{ManifestObject, parse_documents},
        validate_endpoint_slice, validate_node, validate_service,
    };
    let yaml = good()
        + &bad_svc("bad-port0")
            .raw_port("{name: http, port: 0}")
            .yaml()
        + &slice("bad-epip", "a-good")
            .port("http", 8080)
            .endpoints([ep("10.0.0.999")])
            .yaml()
        + &node_named(THIS_NODE, None).replace("192.0.2.10", "bogus");
    let (state, errors) = state_and_errors(&yaml);
    assert!(errors.is_empty());
    let service = |name: &str| state.services[&ObjectKey::new("default", name)].clone();
    let slice_of = |name: &str| state.slices[&ObjectKey::new("default", name)].clone();
    assert_eq!(service("a-good").validate(), Ok(()));
    assert_eq!(
        service("bad-port0").validate().unwrap_err().to_string(),
        "port \"http\" has invalid port number 0"
    );
    assert_eq!(slice_of("a-good-1").validate(), Ok(()));
    assert!(slice_of("bad-epip").validate().is_err());
    assert!(state.node.as_ref().unwrap().validate().is_err());

    // The checks on the API objects say the same as those kept with the compact inputs.
    for object in parse_documents(&yaml).into_iter().map(Result::unwrap) {
        let key = object.key().unwrap();
        match object {
            ManifestObject::Service(svc) => {
                assert_eq!(validate_service(&svc), state.services[&key].validate());
            }
            ManifestObject::EndpointSlice(slice) => {
                assert_eq!(
                    validate_endpoint_slice(&slice),
                    state.slices[&key].validate()
                );
            }
            ManifestObject::Node(node) => {
                assert_eq!(
                    validate_node(&node),
                    state.node.as_ref().unwrap().validate()
                );
            }
            ManifestObject::Ignored { .. } => {}
        }
    }
}
