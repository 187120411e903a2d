//! Dual-stack Services: one service port per family, each with its own addresses and
//! endpoints.

use super::fixtures::{build_clean, build_yaml, config, ep, port, slice, svc, warning_lines};
use crate::{FrontendKind, IpFamily, WarningEffect};

#[test]
fn each_family_gets_its_own_addresses_and_endpoints() {
    let yaml = svc("dual", "10.96.0.30")
        .cluster_ip("fd00:96::30")
        .spec("ipFamilies: [IPv4, IPv6]")
        .port("http", 80)
        .external_ips(&["198.51.100.30", "2001:db8:30::1"])
        .service_type("LoadBalancer")
        .lb_ingress("203.0.113.30", None)
        .lb_ingress("2001:db8:31::1", None)
        .source_ranges(&["203.0.113.0/24", "2001:db8::/32"])
        .yaml()
        + &slice("dual-v4", "dual")
            .port("http", 8080)
            .endpoints([ep("10.0.0.30")])
            .yaml()
        + &slice("dual-v6", "dual")
            .ipv6()
            .port("http", 8080)
            .endpoints([ep("fd00::30"), ep("fd00::31")])
            .yaml();
    let built = build_clean(&yaml, &config());
    assert_eq!(built.model.ports.len(), 2);
    for (family, cluster_ip, external_ip, lb_ip, range, endpoints) in [
        (
            IpFamily::V4,
            "10.96.0.30",
            "198.51.100.30",
            "203.0.113.30",
            "203.0.113.0/24",
            vec!["10.0.0.30"],
        ),
        (
            IpFamily::V6,
            "fd00:96::30",
            "2001:db8:30::1",
            "2001:db8:31::1",
            "2001:db8::/32",
            vec!["fd00::30", "fd00::31"],
        ),
    ] {
        let sp = port(&built, "dual", "http", family);
        let of_kind = |kind: FrontendKind| -> Vec<String> {
            sp.frontends
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| f.ip.to_string())
                .collect()
        };
        assert_eq!(sp.cluster_ip.to_string(), cluster_ip, "{family:?}");
        assert_eq!(of_kind(FrontendKind::ClusterIp), [cluster_ip], "{family:?}");
        assert_eq!(
            of_kind(FrontendKind::ExternalIp),
            [external_ip],
            "{family:?}"
        );
        assert_eq!(of_kind(FrontendKind::LoadBalancer), [lb_ip], "{family:?}");
        assert_eq!(sp.source_ranges, vec![range.parse().unwrap()], "{family:?}");
        assert_eq!(
            sp.endpoints
                .iter()
                .map(|e| e.ip.to_string())
                .collect::<Vec<_>>(),
            endpoints,
            "{family:?}"
        );
    }
}

#[test]
fn single_stack_service_ignores_other_family_values_with_one_warning_each() {
    let yaml = svc("v6only", "fd00:96::40")
        .port("http", 80)
        .external_ips(&["198.51.100.40", "2001:db8:40::1"])
        .yaml()
        // An IPv4 slice of an IPv6-only Service is simply not used, as upstream.
        + &slice("v6only-v4", "v6only").port("http", 80).endpoints([ep("10.0.0.40")]).yaml();
    let built = build_yaml(&yaml, &config());
    assert_eq!(built.model.ports.len(), 1);
    let sp = port(&built, "v6only", "http", IpFamily::V6);
    assert!(sp.endpoints.is_empty());
    assert_eq!(sp.frontends.len(), 2, "clusterIP and the IPv6 externalIP");
    let lines = warning_lines(&built);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(built.warnings[0].effect, WarningEffect::ValueIgnored);
    assert!(
        lines[0].contains("Service default/v6only")
            && lines[0].contains("198.51.100.40")
            && lines[0].contains("IPv6"),
        "{lines:?}"
    );
}

#[test]
fn ipv6_only_service_and_slice() {
    let yaml = svc("v6", "fd00:96::50").port("dns", 53).yaml()
        + &slice("v6-1", "v6")
            .ipv6()
            .port("dns", 5353)
            .endpoints([ep("fd00::50").local()])
            .yaml();
    let built = build_clean(&yaml, &config());
    let sp = port(&built, "v6", "dns", IpFamily::V6);
    assert_eq!(sp.endpoints.len(), 1);
    assert!(sp.endpoints[0].is_local);
    assert_eq!(sp.key.to_string(), "default/v6:dns/tcp (ipv6)");
}
