//! The lab's address plan, as pure functions of small indices.
//!
//! Every lab has its own LAN bridge in its own namespace, so two labs never share a
//! link and can use the very same addresses; the plan is therefore fixed rather than
//! allocated. The ranges are documentation, benchmarking or shared-address ranges
//! that no real network routes, and the lab leaves `198.51.100.0/24`,
//! `192.0.2.0/24` and `2001:db8:96::/48` unused so tests can take service and
//! load-balancer addresses from them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// Node LAN addresses: RFC 2544's benchmarking range, node `i` is `198.18.0.i`.
pub const NODE_LAN_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 24);
/// Node LAN addresses for IPv6 (documentation range); node `i` is `2001:db8:18::i`.
pub const NODE_LAN_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0), 64);
/// External clients share the LAN's L2 segment but sit in TEST-NET-3: external `j` is
/// `203.0.113.j`.
pub const EXTERNAL_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24);
/// External clients' IPv6 range; external `j` is `2001:db8:203::j`.
pub const EXTERNAL_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0), 64);
/// All pod addresses (RFC 6598 shared address space): what kube-proxy calls the
/// cluster CIDR. Node `i` owns `100.64.i.0/24`.
pub const CLUSTER_POD_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 16);
/// All pod addresses for IPv6. Node `i` owns `2001:db8:64:i::/64`.
pub const CLUSTER_POD_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, 0), 48);
/// The LAN's router (in the LAN namespace) on the node subnet: nodes' default
/// gateway. It has no route to any pod range, so externals cannot reach pods through
/// it either.
pub const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The router's IPv6 address on the node subnet.
pub const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, 0xfe);
/// The router's address on the external subnet.
pub const ROUTER_EXTERNAL_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
/// The router's IPv6 address on the external subnet.
pub const ROUTER_EXTERNAL_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, 0xfe);
/// Pods' IPv4 gateway, Calico style: nobody owns it; the host veth answers ARP for it
/// by proxy ARP.
pub const POD_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// Pods' IPv6 gateway: a link-local address on every host-side veth.
pub const POD_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Nodes are numbered from 1; the last byte of the /24 must stay clear of the router.
pub const MAX_NODES: u8 = 200;
/// Externals are numbered from 1, like nodes.
pub const MAX_EXTERNALS: u8 = 200;
/// Pods per node over a lab's life (indices are not reused after a pod is removed).
pub const MAX_PODS_PER_NODE: u8 = 250;

/// The LAN address of node `index` (1-based).
pub fn node_v4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, index)
}

/// The IPv6 LAN address of node `index`.
pub fn node_v6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x18, 0, 0, 0, 0, u16::from(index))
}

/// The pod CIDR owned by node `index`.
pub fn pod_cidr_v4(node: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, node, 0), 24)
}

/// The IPv6 pod CIDR owned by node `index`.
pub fn pod_cidr_v6(node: u8) -> Ipv6Net {
    Ipv6Net::new_assert(
        Ipv6Addr::new(0x2001, 0xdb8, 0x64, u16::from(node), 0, 0, 0, 0),
        64,
    )
}

/// The address of pod `pod` (1-based) on node `node`.
pub fn pod_v4(node: u8, pod: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, node, pod)
}

/// The IPv6 address of pod `pod` on node `node`.
pub fn pod_v6(node: u8, pod: u8) -> Ipv6Addr {
    Ipv6Addr::new(
        0x2001,
        0xdb8,
        0x64,
        u16::from(node),
        0,
        0,
        0,
        u16::from(pod),
    )
}

/// The address of external `index` (1-based).
pub fn external_v4(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(203, 0, 113, index)
}

/// The IPv6 address of external `index`.
pub fn external_v6(index: u8) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0x203, 0, 0, 0, 0, u16::from(index))
}

/// Whether `ip` is a pod address of the lab, as kube-proxy's cluster CIDR check sees it.
pub fn is_pod_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => CLUSTER_POD_V4.contains(&v4),
        IpAddr::V6(v6) => CLUSTER_POD_V6.contains(&v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_lands_in_its_range_and_ranges_are_disjoint() {
        for i in 1..=MAX_NODES {
            assert!(NODE_LAN_V4.contains(&node_v4(i)));
            assert!(NODE_LAN_V6.contains(&node_v6(i)));
            assert_ne!(node_v4(i), ROUTER_V4);
            assert_ne!(node_v6(i), ROUTER_V6);
            assert!(CLUSTER_POD_V4.contains(&pod_cidr_v4(i)));
            assert!(CLUSTER_POD_V6.contains(&pod_cidr_v6(i)));
            for p in [1, MAX_PODS_PER_NODE] {
                assert!(pod_cidr_v4(i).contains(&pod_v4(i, p)));
                assert!(pod_cidr_v6(i).contains(&pod_v6(i, p)));
                assert!(is_pod_ip(pod_v4(i, p).into()));
                assert!(is_pod_ip(pod_v6(i, p).into()));
            }
            assert!(!is_pod_ip(node_v4(i).into()));
            assert!(!is_pod_ip(node_v6(i).into()));
        }
        for j in 1..=MAX_EXTERNALS {
            assert!(EXTERNAL_V4.contains(&external_v4(j)));
            assert!(EXTERNAL_V6.contains(&external_v6(j)));
            assert_ne!(external_v4(j), ROUTER_EXTERNAL_V4);
            assert!(!is_pod_ip(external_v4(j).into()));
        }
        assert!(!NODE_LAN_V4.contains(&EXTERNAL_V4.addr()));
        assert!(!NODE_LAN_V6.contains(&EXTERNAL_V6.addr()));
        assert!(!CLUSTER_POD_V6.contains(&NODE_LAN_V6.addr()));
    }

    #[test]
    fn node_pod_cidrs_do_not_overlap() {
        assert_ne!(pod_cidr_v4(1), pod_cidr_v4(2));
        assert!(!pod_cidr_v4(1).contains(&pod_v4(2, 1)));
        assert!(!pod_cidr_v6(1).contains(&pod_v6(2, 1)));
        assert_eq!(pod_v6(10, 3).to_string(), "2001:db8:64:a::3");
    }
}
