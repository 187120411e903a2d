//! Services → service ports (upstream's `serviceport.go` / `servicechangetracker.go` tests):
//! frontends, ports, affinity, source ranges, health-check ports, skipped Services.

use std::net::IpAddr;

use super::fixtures::{
    NODE_IP4, NODE_IP6, build_clean, build_yaml, config, node, port, svc, warning_lines,
};
use crate::{Frontend, FrontendKind, IpFamily, NodePortAddresses, Protocol, WarningEffect};

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn frontend(kind: FrontendKind, address: &str, port: u16) -> Frontend {
    Frontend {
        kind,
        ip: ip(address),
        port,
    }
}

#[test]
fn cluster_ip_service_has_one_port_per_spec_port() {
    let yaml = svc("web", "10.96.0.10")
        .port("http", 80)
        .port_proto("dns", 53, "UDP")
        .port_proto("sig", 9000, "SCTP")
        .yaml();
    let built = build_clean(&yaml, &config());
    assert_eq!(built.model.ports.len(), 3);
    for (name, number, protocol) in [
        ("http", 80, Protocol::Tcp),
        ("dns", 53, Protocol::Udp),
        ("sig", 9000, Protocol::Sctp),
    ] {
        let sp = port(&built, "web", name, IpFamily::V4);
        assert_eq!(sp.key.name.protocol, protocol, "{name}");
        assert_eq!(sp.port, number, "{name}");
        assert_eq!(sp.cluster_ip, ip("10.96.0.10"), "{name}");
        assert_eq!(
            sp.frontends,
            vec![frontend(FrontendKind::ClusterIp, "10.96.0.10", number)],
            "{name}"
        );
        assert_eq!(sp.node_port, None, "{name}");
        assert!(
            sp.external.is_none(),
            "{name}: ClusterIP-only is not external"
        );
        assert_eq!(sp.affinity_timeout_secs, None, "{name}");
        assert_eq!(sp.health_check_node_port, None, "{name}");
    }
    assert_eq!(
        port(&built, "web", "http", IpFamily::V4).key.to_string(),
        "default/web:http/tcp (ipv4)"
    );
}

#[test]
fn unnamed_port_defaults_to_tcp() {
    let yaml = svc("plain", "10.96.0.11").raw_port("{port: 8080}").yaml();
    let built = build_clean(&yaml, &config());
    let sp = port(&built, "plain", "", IpFamily::V4);
    assert_eq!(sp.key.name.protocol, Protocol::Tcp);
    assert_eq!(sp.key.name.to_string(), "default/plain/tcp");
}

#[test]
fn node_port_answers_on_primary_node_ip() {
    let yaml = node(None)
        + &svc("np", "10.96.0.12")
            .service_type("NodePort")
            .node_port("http", 80, 30080)
            .yaml();
    let built = build_clean(&yaml, &config());
    let sp = port(&built, "np", "http", IpFamily::V4);
    assert_eq!(sp.node_port, Some(30080));
    assert_eq!(
        sp.frontends,
        vec![
            frontend(FrontendKind::ClusterIp, "10.96.0.12", 80),
            frontend(FrontendKind::NodePort, NODE_IP4, 30080)
        ]
    );
    assert!(sp.external.is_some(), "a NodePort is external");
}

#[test]
fn node_port_without_known_node_address_is_still_external() {
    let yaml = svc("np", "10.96.0.12")
        .service_type("NodePort")
        .node_port("http", 80, 30080)
        .yaml();
    let built = build_clean(&yaml, &config());
    let sp = port(&built, "np", "http", IpFamily::V4);
    assert_eq!(
        sp.frontends,
        vec![frontend(FrontendKind::ClusterIp, "10.96.0.12", 80)]
    );
    assert_eq!(sp.node_port, Some(30080));
    assert!(sp.external.is_some());
}

#[test]
fn node_port_addresses_from_cidrs_skip_loopback_and_other_families() {
    let mut cfg = config();
    cfg.nodeport_addresses = NodePortAddresses::Cidrs(vec![
        "0.0.0.0/0".parse().unwrap(),
        "2001:db8::/64".parse().unwrap(),
    ]);
    cfg.local_addresses = [
        "127.0.0.1",
        "192.0.2.20",
        "198.51.100.7",
        "192.0.2.20",
        "::1",
        "2001:db8::20",
        "2001:db8:1::1",
    ]
    .map(ip)
    .to_vec();
    let yaml = svc("np", "10.96.0.13")
        .service_type("NodePort")
        .node_port("http", 80, 30081)
        .yaml();
    let built = build_clean(&yaml, &cfg);
    let nodeports: Vec<IpAddr> = port(&built, "np", "http", IpFamily::V4)
        .frontends
        .iter()
        .filter(|f| f.kind == FrontendKind::NodePort)
        .map(|f| f.ip)
        .collect();
    assert_eq!(nodeports, vec![ip("192.0.2.20"), ip("198.51.100.7")]);
}

#[test]
fn load_balancer_frontends_source_ranges_and_health_check() {
    let yaml = node(None)
        + &svc("lb", "10.96.0.14")
            .service_type("LoadBalancer")
            .node_port("http", 80, 30082)
            .etp_local()
            .spec("healthCheckNodePort: 32000")
            .source_ranges(&[" 203.0.113.0/25 ", "198.51.100.0/24", "2001:db8::/32"])
            .lb_ingress("203.0.113.200", None)
            .lb_ingress("203.0.113.201", Some("VIP"))
            .lb_ingress("203.0.113.202", Some("Proxy"))
            .yaml();
    let built = build_yaml(&yaml, &config());
    let sp = port(&built, "lb", "http", IpFamily::V4);
    assert_eq!(
        sp.frontends,
        vec![
            frontend(FrontendKind::ClusterIp, "10.96.0.14", 80),
            frontend(FrontendKind::LoadBalancer, "203.0.113.200", 80),
            frontend(FrontendKind::LoadBalancer, "203.0.113.201", 80),
            frontend(FrontendKind::NodePort, NODE_IP4, 30082),
        ],
        "ipMode Proxy is not captured"
    );
    assert_eq!(
        sp.source_ranges,
        vec![
            "203.0.113.0/25".parse().unwrap(),
            "198.51.100.0/24".parse().unwrap()
        ]
    );
    assert_eq!(sp.health_check_node_port, Some(32000));
    assert!(sp.external_policy_local);
    // The IPv6 source range in a single-stack IPv4 Service is dropped with a warning.
    assert_eq!(
        warning_lines(&built).len(),
        1,
        "{:?}",
        warning_lines(&built)
    );
    assert_eq!(built.warnings[0].effect, WarningEffect::ValueIgnored);
    assert!(warning_lines(&built)[0].contains("2001:db8::/32"));
}

#[test]
fn health_check_port_only_for_load_balancer_with_local_policy() {
    let cases = [
        ("LoadBalancer", true, Some(32001)),
        ("LoadBalancer", false, None),
        ("NodePort", true, None),
    ];
    for (service_type, local, expected) in cases {
        let mut service = svc("hc", "10.96.0.15")
            .service_type(service_type)
            .node_port("http", 80, 30083)
            .spec("healthCheckNodePort: 32001");
        if local {
            service = service.etp_local();
        }
        let built = build_clean(&service.yaml(), &config());
        let sp = port(&built, "hc", "http", IpFamily::V4);
        assert_eq!(
            sp.health_check_node_port, expected,
            "{service_type} local={local}"
        );
    }
}

#[test]
fn external_ips_are_external_frontends() {
    let yaml = svc("ext", "10.96.0.16")
        .port("http", 80)
        .external_ips(&["198.51.100.1", "198.51.100.2"])
        .yaml();
    let built = build_clean(&yaml, &config());
    let sp = port(&built, "ext", "http", IpFamily::V4);
    assert_eq!(
        sp.frontends,
        vec![
            frontend(FrontendKind::ClusterIp, "10.96.0.16", 80),
            frontend(FrontendKind::ExternalIp, "198.51.100.1", 80),
            frontend(FrontendKind::ExternalIp, "198.51.100.2", 80),
        ]
    );
    assert!(
        sp.external.is_some(),
        "externalIPs make a ClusterIP Service external"
    );
}

#[test]
fn session_affinity() {
    let cases: [(&[&str], Option<u32>); 4] = [
        (&[], None),
        (&["sessionAffinity: None"], None),
        (&["sessionAffinity: ClientIP"], Some(10_800)),
        (
            &[
                "sessionAffinity: ClientIP",
                "sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}",
            ],
            Some(300),
        ),
    ];
    for (lines, expected) in cases {
        let service = lines
            .iter()
            .fold(svc("aff", "10.96.0.17").port("http", 80), |s, line| {
                s.spec(line)
            });
        let built = build_clean(&service.yaml(), &config());
        assert_eq!(
            port(&built, "aff", "http", IpFamily::V4).affinity_timeout_secs,
            expected,
            "{lines:?}"
        );
    }
}

#[test]
fn skipped_services_are_silent() {
    let yaml = svc("headless", "None").port("http", 80).yaml()
        + &svc("unallocated", "").port("http", 80).yaml()
        + &svc("extname", "")
            .service_type("ExternalName")
            .spec("externalName: example.com")
            .port("http", 80)
            .yaml()
        + &svc("kept", "10.96.0.18").port("http", 80).yaml();
    let built = build_clean(&yaml, &config());
    let names: Vec<&str> = built
        .model
        .ports
        .keys()
        .map(|k| k.name.name.as_str())
        .collect();
    assert_eq!(names, vec!["kept"]);
}

#[test]
fn services_in_other_namespaces_are_distinct() {
    let yaml = svc("web", "10.96.0.19").port("http", 80).yaml()
        + &svc("web", "10.96.0.20")
            .namespace("shop")
            .port("http", 80)
            .yaml();
    let built = build_clean(&yaml, &config());
    let namespaces: Vec<&str> = built
        .model
        .ports
        .keys()
        .map(|k| k.name.namespace.as_str())
        .collect();
    assert_eq!(namespaces, vec!["default", "shop"]);
}

#[test]
fn dual_stack_node_ports_use_each_familys_primary_ip() {
    let yaml = node(None)
        + &svc("np", "10.96.0.21")
            .cluster_ip("fd00:96::21")
            .service_type("NodePort")
            .node_port("http", 80, 30084)
            .yaml();
    let built = build_clean(&yaml, &config());
    for (family, cluster_ip, node_ip) in [
        (IpFamily::V4, "10.96.0.21", NODE_IP4),
        (IpFamily::V6, "fd00:96::21", NODE_IP6),
    ] {
        let sp = port(&built, "np", "http", family);
        assert_eq!(
            sp.frontends,
            vec![
                frontend(FrontendKind::ClusterIp, cluster_ip, 80),
                frontend(FrontendKind::NodePort, node_ip, 30084)
            ],
            "{family:?}"
        );
    }
}
