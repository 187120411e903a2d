//! The fixed part of kproxy's tables, as data: base chains, helper chains, sets and maps.
//!
//! ```text
//!  prerouting ─ filter-prerouting-pre-dnat (filter, -110): new conns to LB frontends with
//!  output     ─ filter-output-pre-dnat     (filter, -110)  source ranges: drop unless
//!                                                           daddr.proto.dport.saddr ∈ @firewall-allow
//!  prerouting ─ nat-prerouting (nat, dstnat -100) ┐
//!  output     ─ nat-output     (nat, dstnat -100) ┴ jump services:
//!                 daddr.proto.dport vmap @service-chains   (affinity services: own chains)
//!                 daddr.proto.dport @lb-… goto lb-…        (one rule per shared class chain)
//!                 lb-… : [mark] dnat to daddr.proto.dport.(numgen mod N) map @endpoints
//!  input      ─ filter-input   (filter, 0) ┐ new conns: @no-endpoint-drop drop,
//!  forward    ─ filter-forward (filter, 0) ├ @no-endpoint-reject goto reject-chain,
//!  output     ─ filter-output  (filter, 0) ┘ (forward/output) daddr ∈ @cluster-ips → reject
//!  postrouting─ nat-postrouting (nat, srcnat 100): mark bit → clear + masquerade;
//!                 dnat'ed saddr.daddr ∈ @hairpin → masquerade
//! ```
//!
//! Why shared "class" chains instead of one chain per service: a rule that looks up a
//! named map is a *binding* of that map, and the kernel checks every new map element
//! against every binding. One chain per service means 100k bindings of the endpoint map
//! and quadratic time (measured: 10k services × 10 endpoints took 19 s). Class chains
//! depend only on the shape of the service (endpoint count, masquerade and
//! short-circuit rules), so there are few of them, and everything per service is a map
//! or set element (measured ~2 µs each) rather than a chain and rules. Dispatch uses
//! set-membership rules rather than a verdict map, because verdict-map elements cost
//! about three times a data element and trigger whole-table loop validation on every
//! commit that adds one.

use crate::ir::{BaseHook, Chain, ChainType, Concat, DataType, Family, Hook, Name, Set, SetData};

/// Name of kproxy's table in both families (`ip kproxy`, `ip6 kproxy`).
pub(crate) const TABLE: &str = "kproxy";

/// nat priority `dstnat`.
const DSTNAT: i32 = -100;
/// nat priority `srcnat`.
const SRCNAT: i32 = 100;
/// Before DNAT, so filtering sees the frontend address (as kube-proxy's firewall check).
const PRE_DNAT: i32 = DSTNAT - 10;
/// `filter`.
const FILTER: i32 = 0;

pub(crate) const FILTER_PREROUTING_PRE_DNAT: &str = "filter-prerouting-pre-dnat";
pub(crate) const FILTER_OUTPUT_PRE_DNAT: &str = "filter-output-pre-dnat";
pub(crate) const FILTER_INPUT: &str = "filter-input";
pub(crate) const FILTER_FORWARD: &str = "filter-forward";
pub(crate) const FILTER_OUTPUT: &str = "filter-output";
pub(crate) const NAT_PREROUTING: &str = "nat-prerouting";
pub(crate) const NAT_OUTPUT: &str = "nat-output";
pub(crate) const NAT_POSTROUTING: &str = "nat-postrouting";
/// Service dispatch, jumped to from both nat base chains.
pub(crate) const SERVICES: &str = "services";
/// Reject helper (reject is only valid in input/forward/output chains).
pub(crate) const REJECT_CHAIN: &str = "reject-chain";

/// A base chain: name, type, hook, priority and why it exists.
pub(crate) struct BaseChain {
    pub(crate) name: &'static str,
    pub(crate) chain_type: ChainType,
    pub(crate) hook: Hook,
    pub(crate) priority: i32,
    pub(crate) comment: &'static str,
}

pub(crate) const BASE_CHAINS: &[BaseChain] = &[
    BaseChain {
        name: FILTER_PREROUTING_PRE_DNAT,
        chain_type: ChainType::Filter,
        hook: Hook::Prerouting,
        priority: PRE_DNAT,
        comment: "loadBalancerSourceRanges, before DNAT",
    },
    BaseChain {
        name: FILTER_OUTPUT_PRE_DNAT,
        chain_type: ChainType::Filter,
        hook: Hook::Output,
        priority: PRE_DNAT,
        comment: "loadBalancerSourceRanges, before DNAT",
    },
    BaseChain {
        name: FILTER_INPUT,
        chain_type: ChainType::Filter,
        hook: Hook::Input,
        priority: FILTER,
        comment: "services without usable endpoints",
    },
    BaseChain {
        name: FILTER_FORWARD,
        chain_type: ChainType::Filter,
        hook: Hook::Forward,
        priority: FILTER,
        comment: "services without usable endpoints, invalid ClusterIP ports",
    },
    BaseChain {
        name: FILTER_OUTPUT,
        chain_type: ChainType::Filter,
        hook: Hook::Output,
        priority: FILTER,
        comment: "services without usable endpoints, invalid ClusterIP ports",
    },
    BaseChain {
        name: NAT_PREROUTING,
        chain_type: ChainType::Nat,
        hook: Hook::Prerouting,
        priority: DSTNAT,
        comment: "service DNAT",
    },
    BaseChain {
        name: NAT_OUTPUT,
        chain_type: ChainType::Nat,
        hook: Hook::Output,
        priority: DSTNAT,
        comment: "service DNAT",
    },
    BaseChain {
        name: NAT_POSTROUTING,
        chain_type: ChainType::Nat,
        hook: Hook::Postrouting,
        priority: SRCNAT,
        comment: "masquerade",
    },
];

impl BaseChain {
    pub(crate) fn chain(&self) -> Chain {
        Chain {
            name: self.name.into(),
            hook: Some(BaseHook {
                chain_type: self.chain_type,
                hook: self.hook,
                priority: self.priority,
            }),
            comment: Some(self.comment.into()),
        }
    }
}

/// kproxy's fixed sets and maps. Class sets and affinity sets are created on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum FixedSet {
    /// `frontend . slot → endpoint`: every load-balanced endpoint list.
    Endpoints,
    /// `frontend → goto chain`: frontends of services with their own chains (affinity).
    ServiceChains,
    /// Frontends whose traffic is dropped (a Local policy with no local endpoint).
    NoEndpointDrop,
    /// Frontends whose traffic is rejected (no usable endpoint).
    NoEndpointReject,
    /// Every ClusterIP: traffic to one on a port that no service has is rejected.
    ClusterIps,
    /// LoadBalancer frontends with source ranges.
    FirewallIps,
    /// `frontend . source range` allowed through the firewall.
    FirewallAllow,
    /// `ip . ip` for local endpoints: a DNAT'ed connection from an endpoint to itself.
    Hairpin,
}

impl FixedSet {
    pub(crate) const ALL: [Self; 8] = [
        Self::Endpoints,
        Self::ServiceChains,
        Self::NoEndpointDrop,
        Self::NoEndpointReject,
        Self::ClusterIps,
        Self::FirewallIps,
        Self::FirewallAllow,
        Self::Hairpin,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Endpoints => "endpoints",
            Self::ServiceChains => "service-chains",
            Self::NoEndpointDrop => "no-endpoint-drop",
            Self::NoEndpointReject => "no-endpoint-reject",
            Self::ClusterIps => "cluster-ips",
            Self::FirewallIps => "firewall-ips",
            Self::FirewallAllow => "firewall-allow",
            Self::Hairpin => "hairpin",
        }
    }

    fn comment(self) -> &'static str {
        match self {
            Self::Endpoints => "frontend . slot -> endpoint, for every load-balanced frontend",
            Self::ServiceChains => "frontends of services with their own chains (session affinity)",
            Self::NoEndpointDrop => "frontends dropped: traffic policy Local, no local endpoint",
            Self::NoEndpointReject => "frontends rejected: no usable endpoint",
            Self::ClusterIps => "active ClusterIPs: other ports are rejected",
            Self::FirewallIps => "LoadBalancer frontends subject to loadBalancerSourceRanges",
            Self::FirewallAllow => "frontend . source range allowed by loadBalancerSourceRanges",
            Self::Hairpin => "local endpoint . itself: hairpin connections are masqueraded",
        }
    }

    /// The set definition for `family`.
    pub(crate) fn set(self, family: Family) -> Set {
        let (key, data, interval): (Concat, Option<SetData>, bool) = match (self, family) {
            (Self::Endpoints, Family::Ip) => {
                (FRONTEND_SLOT_V4, Some(SetData::Value(ADDR_PORT_V4)), false)
            }
            (Self::Endpoints, Family::Ip6) => {
                (FRONTEND_SLOT_V6, Some(SetData::Value(ADDR_PORT_V6)), false)
            }
            (Self::ServiceChains, _) => (frontend(family), Some(SetData::Verdict), false),
            (Self::NoEndpointDrop | Self::NoEndpointReject | Self::FirewallIps, _) => {
                (frontend(family), None, false)
            }
            (Self::ClusterIps, Family::Ip) => (&[DataType::Ipv4Addr], None, false),
            (Self::ClusterIps, Family::Ip6) => (&[DataType::Ipv6Addr], None, false),
            (Self::FirewallAllow, Family::Ip) => (FRONTEND_SOURCE_V4, None, true),
            (Self::FirewallAllow, Family::Ip6) => (FRONTEND_SOURCE_V6, None, true),
            (Self::Hairpin, Family::Ip) => (&[DataType::Ipv4Addr, DataType::Ipv4Addr], None, false),
            (Self::Hairpin, Family::Ip6) => {
                (&[DataType::Ipv6Addr, DataType::Ipv6Addr], None, false)
            }
        };
        Set {
            name: self.name().into(),
            key,
            data,
            interval,
            timeout_ms: None,
            size: None,
            comment: Some(self.comment().into()),
        }
    }
}

const FRONTEND_V4: Concat = &[
    DataType::Ipv4Addr,
    DataType::InetProto,
    DataType::InetService,
];
const FRONTEND_V6: Concat = &[
    DataType::Ipv6Addr,
    DataType::InetProto,
    DataType::InetService,
];
const FRONTEND_SLOT_V4: Concat = &[
    DataType::Ipv4Addr,
    DataType::InetProto,
    DataType::InetService,
    DataType::Mark,
];
const FRONTEND_SLOT_V6: Concat = &[
    DataType::Ipv6Addr,
    DataType::InetProto,
    DataType::InetService,
    DataType::Mark,
];
const ADDR_PORT_V4: Concat = &[DataType::Ipv4Addr, DataType::InetService];
const ADDR_PORT_V6: Concat = &[DataType::Ipv6Addr, DataType::InetService];
const FRONTEND_SOURCE_V4: Concat = &[
    DataType::Ipv4Addr,
    DataType::InetProto,
    DataType::InetService,
    DataType::Ipv4Addr,
];
const FRONTEND_SOURCE_V6: Concat = &[
    DataType::Ipv6Addr,
    DataType::InetProto,
    DataType::InetService,
    DataType::Ipv6Addr,
];

/// `addr . inet_proto . inet_service` for `family`.
pub(crate) fn frontend(family: Family) -> Concat {
    match family {
        Family::Ip => FRONTEND_V4,
        Family::Ip6 => FRONTEND_V6,
    }
}

/// A class set: frontends handled by one shared class chain.
pub(crate) fn class_set(family: Family, name: Name, comment: Name) -> Set {
    Set {
        name,
        key: frontend(family),
        data: None,
        interval: false,
        timeout_ms: None,
        size: None,
        comment: Some(comment),
    }
}

/// An affinity set: client addresses recently sent to one endpoint.
pub(crate) fn affinity_set(family: Family, name: Name, timeout_secs: u32) -> Set {
    Set {
        name,
        key: match family {
            Family::Ip => &[DataType::Ipv4Addr],
            Family::Ip6 => &[DataType::Ipv6Addr],
        },
        data: None,
        interval: false,
        timeout_ms: Some(u64::from(timeout_secs) * 1000),
        size: None,
        comment: Some("ClientIP session affinity".into()),
    }
}

/// Offset of the second endpoint list of a frontend in `@endpoints` (the cluster-wide
/// list that eTP Local short-circuits use); the first list starts at 0.
pub(crate) const SHORTCUT_LIST_OFFSET: u32 = 1 << 16;
