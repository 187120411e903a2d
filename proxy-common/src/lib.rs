//! Types shared between kproxy's userspace and its eBPF programs.
//!
//! Every type is `#[repr(C)]`, has no implicit padding (padding is spelled out as fields,
//! so the verifier never sees uninitialised bytes) and uses only integers: no `bool`, no
//! `Option`. Addresses and ports are stored in network byte order, as the kernel hands them
//! to the programs.
//!
//! # Addresses
//!
//! Every address is 16 bytes: IPv6 as is, IPv4 as an IPv4-mapped IPv6 address
//! (`::ffff:a.b.c.d`). One key layout then serves both families, and a dual-stack socket
//! that connects to `::ffff:<ClusterIP>` through `connect6` finds the IPv4 service without
//! a second lookup. The words are kept exactly as `bpf_sock_addr.user_ip6` holds them
//! (network byte order per word), see [`Addr`].
//!
//! # Maps
//!
//! The socket load balancer is Cilium-shaped (one hash map holds every frontend and its
//! backend slots; backends live once in their own map, keyed by a stable id). Each map is
//! declared once in [`MAPS`] with its kind and size, and pinned by name under
//! `<bpffs>/kproxy/maps/` so a restarted agent reuses it. Names carry a layout version
//! (`_V1`): a layout change gets new pins instead of misreading old ones.
#![no_std]

/// An address in the maps: 16 bytes, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`). Each word
/// holds four address bytes in memory order, i.e. network byte order, as
/// `bpf_sock_addr.user_ip6` does; so `words[3]` of a mapped IPv4 address equals
/// `bpf_sock_addr.user_ip4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Addr {
    /// The 16 address bytes as four native-endian words of network-order bytes.
    pub words: [u32; 4],
}

impl Addr {
    /// The IPv4-mapped form of an IPv4 address given as `bpf_sock_addr.user_ip4` holds it
    /// (network byte order in memory).
    pub const fn from_v4_raw(raw: u32) -> Self {
        Self {
            words: [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), raw],
        }
    }

    /// The address from its 16 bytes in network order.
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Self {
            words: [
                u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
                u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
                u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
                u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
            ],
        }
    }

    /// The 16 address bytes in network order.
    pub const fn to_bytes(self) -> [u8; 16] {
        let [a, b, c, d] = self.words;
        let (a, b, c, d) = (
            a.to_ne_bytes(),
            b.to_ne_bytes(),
            c.to_ne_bytes(),
            d.to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }

    /// True for an IPv4-mapped address (the IPv4 families' keys and backends).
    pub const fn is_v4_mapped(&self) -> bool {
        self.words[0] == 0
            && self.words[1] == 0
            && self.words[2] == u32::from_ne_bytes([0, 0, 0xff, 0xff])
    }
}

/// Which clients a service entry applies to. Socket programs look up their own scope
/// first and fall back to [`SCOPE_ALL`]; userspace writes a narrower scope only where its
/// backends differ (eTP Local external frontends, whose node- and pod-originated traffic
/// goes to the cluster-wide set).
pub const SCOPE_ALL: u8 = 0;
/// Scope of sockets in the node's own network namespace (host processes, hostNetwork pods).
pub const SCOPE_NODE: u8 = 1;
/// Scope of sockets in any other network namespace: pods.
pub const SCOPE_POD: u8 = 2;

/// Key of [`MAP_SERVICES`]. Slot 0 is the frontend ("master"): its value carries the
/// backend count, flags, affinity timeout and service id. Slots `1..=count` each name one
/// backend id. Cilium's layout, with 16-byte addresses and a scope.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    /// Frontend address.
    pub addr: Addr,
    /// Frontend port, network byte order.
    pub port: u16,
    /// 0 for the frontend entry, 1.. for backend slots.
    pub slot: u16,
    /// IANA protocol number (6 TCP, 17 UDP, 132 SCTP).
    pub proto: u8,
    /// [`SCOPE_ALL`], [`SCOPE_NODE`] or [`SCOPE_POD`].
    pub scope: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
}

/// Frontend flag: the model says reject (no endpoints at all): connect/sendmsg fail with
/// ECONNREFUSED.
pub const FLAG_REJECT: u16 = 1 << 0;
/// Frontend flag: the model says drop (a traffic policy allows no endpoint here):
/// connect/sendmsg fail with ETIMEDOUT, the error a client of a dropping kube-proxy ends
/// with, without making it wait.
pub const FLAG_DROP: u16 = 1 << 1;
/// Frontend flag: a LoadBalancer frontend with `loadBalancerSourceRanges`. Socket programs
/// leave it alone (the client's source address is not known at `connect` time); the
/// packet is handled by whatever serves the LB IP on the wire.
pub const FLAG_SOURCE_RANGES: u16 = 1 << 2;
/// Frontend flag: external traffic to this frontend is masqueraded (eTP Cluster): the tc
/// programs SNAT the client to the node's address towards the backend, so replies come
/// back through this node. Socket programs ignore it (a local socket's source is already
/// the node's or the pod's own).
pub const FLAG_MASQUERADE: u16 = 1 << 3;
/// Frontend flag: the frontend is a ClusterIP.
pub const FLAG_CLUSTER_IP: u16 = 1 << 8;
/// Frontend flag: the frontend is an externalIP.
pub const FLAG_EXTERNAL_IP: u16 = 1 << 9;
/// Frontend flag: the frontend is a LoadBalancer ingress IP.
pub const FLAG_LOAD_BALANCER: u16 = 1 << 10;
/// Frontend flag: the frontend is a NodePort on a node address.
pub const FLAG_NODE_PORT: u16 = 1 << 11;

/// Value of [`MAP_SERVICES`]. The meaning of `target` depends on the slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceValue {
    /// Slot 0: ClientIP affinity timeout in seconds (0 = no affinity).
    /// Slot ≥ 1: the backend id (key of [`MAP_BACKENDS`]).
    pub target: u32,
    /// Slot 0: number of backend slots to choose from (`1..=count`). 0 in slots.
    pub count: u16,
    /// Slot 0: `FLAG_*`. 0 in slots.
    pub flags: u16,
    /// The service id (per service port and scope): the affinity key, and how a restarted
    /// agent recognises its ids.
    pub service_id: u32,
}

/// Value of [`MAP_BACKENDS`], keyed by a `u32` backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Backend {
    /// Endpoint address.
    pub addr: Addr,
    /// Endpoint port, network byte order.
    pub port: u16,
    /// IANA protocol number: backends are per protocol, as service keys are.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: u8,
}

/// Key of [`MAP_AFFINITY`]: who the client is, for which service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    /// Socket programs: the client's network namespace cookie (a socket has no source
    /// address at `connect` time, and one netns is one pod, so this is the pod's identity).
    pub netns_cookie: u64,
    /// [`ServiceValue::service_id`] of the frontend entry that was used.
    pub service_id: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// Value of [`MAP_AFFINITY`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityValue {
    /// `bpf_ktime_get_ns()` of the last connection that used it.
    pub last_used_ns: u64,
    /// The backend the client sticks to.
    pub backend_id: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// Key of [`MAP_AFFINITY_MATCH`]: a backend currently serving a service. An affinity entry
/// is only honoured while its pair is present, so a client never sticks to a backend the
/// service no longer has (backend ids are shared between services).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AffinityMatchKey {
    /// The service id.
    pub service_id: u32,
    /// The backend id.
    pub backend_id: u32,
}

/// Key of [`MAP_REV_SOCK`]: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevSockKey {
    /// `bpf_get_socket_cookie()`.
    pub cookie: u64,
    /// Backend address the socket talks to.
    pub addr: Addr,
    /// Backend port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: [u8; 6],
}

/// Value of [`MAP_REV_SOCK`]: what the socket asked for, shown back by `recvmsg` and
/// `getpeername`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RevSockValue {
    /// The service address the client used.
    pub addr: Addr,
    /// The service port, network byte order.
    pub port: u16,
    /// Explicit padding, always zero.
    pub pad: [u8; 2],
    /// The service id, for debugging and socket termination.
    pub service_id: u32,
}

/// Key of [`MAP_NAT_FWD`] and [`MAP_NAT_REV`]: a packet's 5-tuple as it is on the wire
/// (addresses IPv4-mapped, ports in network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatKey {
    /// Source address.
    pub saddr: Addr,
    /// Destination address.
    pub daddr: Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// Explicit padding, always zero.
    pub pad: [u8; 3],
}

/// Value of [`MAP_NAT_FWD`] and [`MAP_NAT_REV`]: what a packet of the flow is rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatValue {
    /// New source address.
    pub saddr: Addr,
    /// New destination address.
    pub daddr: Addr,
    /// New source port.
    pub sport: u16,
    /// New destination port.
    pub dport: u16,
    /// `NAT_*` flags.
    pub flags: u32,
}

/// [`NatValue::flags`]: after the rewrite the packet's source is (or may be) an address
/// of this node, which the kernel's input routing would drop as a martian: the program
/// forwards it itself (FIB lookup and redirect to the neighbour).
pub const NAT_REDIRECT: u32 = 1 << 0;

/// Data of a [`MAP_SOURCE_RANGES`] key (the LPM trie key is `{prefix_len, data}`). The
/// prefix length covers the 32 bits of `service_id` plus the address bits, so each
/// service has its own subtree (Cilium's layout).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SourceRange {
    /// [`ServiceValue::service_id`] of the LoadBalancer frontend entry, in network byte
    /// order (LPM tries match bytes from the first).
    pub service_id_be: u32,
    /// The allowed prefix, IPv4-mapped for IPv4 ranges.
    pub addr: Addr,
}

/// Key of [`MAP_TC_AFFINITY`]: ClientIP affinity for traffic from outside, by client address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcAffinityKey {
    /// The client's address.
    pub addr: Addr,
    /// [`ServiceValue::service_id`] of the frontend entry that was used.
    pub service_id: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
}

/// Value of [`MAP_CONFIG`] (an array with one element, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Config {
    /// Network namespace cookie of the node's own namespace: sockets there are
    /// [`SCOPE_NODE`], every other namespace is a pod ([`SCOPE_POD`]).
    pub host_netns_cookie: u64,
}

/// Indices of [`MAP_COUNTERS`]: what the socket programs decided.
pub mod counter {
    /// A connect/sendmsg to a service was translated to a backend.
    pub const TRANSLATED: u32 = 0;
    /// A connect/sendmsg to a rejecting service, or to a ClusterIP on a port no service
    /// has, failed with ECONNREFUSED.
    pub const REJECTED: u32 = 1;
    /// A connect/sendmsg to a dropping service failed with ETIMEDOUT.
    pub const DROPPED: u32 = 2;
    /// A frontend existed but its slot or backend did not: a reconcile bug or a torn
    /// update. The connection fails with EHOSTUNREACH. Must stay 0.
    pub const LOOKUP_MISS: u32 = 3;
    /// The backend came from a session-affinity entry.
    pub const AFFINITY_HIT: u32 = 4;
    /// recvmsg/getpeername showed the service address instead of the backend's.
    pub const REVERSED: u32 = 5;
    /// tc: a packet from outside to an external frontend started a translated flow.
    pub const TC_TRANSLATED: u32 = 6;
    /// tc: a packet to a rejecting frontend was answered with ICMP port unreachable.
    pub const TC_REJECTED: u32 = 7;
    /// tc: a packet was dropped (drop verdict, or outside `loadBalancerSourceRanges`).
    pub const TC_DROPPED: u32 = 8;
    /// tc: a reply was translated back to the frontend.
    pub const TC_REVERSED: u32 = 9;
    /// tc: a flow could not be set up (slot or backend missing, no free SNAT port, no
    /// route to the backend); the packet was dropped. Must stay 0.
    pub const TC_FAILED: u32 = 10;
    /// Number of counters.
    pub const COUNT: u32 = 11;
}

/// Value of [`MAP_COUNTERS`] (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    /// Events counted on this CPU.
    pub events: u64,
}

/// Frontends and backend slots ([`ServiceKey`] → [`ServiceValue`]); hash, no prealloc so a
/// deleted element is freed after an RCU grace period, never reused under a reader. `_V2`:
/// [`SERVICES_MAX`] grew.
pub const MAP_SERVICES: &str = "KP_SERVICES_V2";
/// Backends (`u32` id → [`Backend`]); hash, no prealloc. `_V2`: [`BACKENDS_MAX`] grew.
pub const MAP_BACKENDS: &str = "KP_BACKENDS_V2";
/// Session affinity ([`AffinityKey`] → [`AffinityValue`]); LRU.
pub const MAP_AFFINITY: &str = "KP_AFFINITY_V1";
/// Backends currently serving each service ([`AffinityMatchKey`] → `u32`, always 1).
pub const MAP_AFFINITY_MATCH: &str = "KP_AFF_MATCH_V1";
/// Socket reverse translation ([`RevSockKey`] → [`RevSockValue`]); LRU.
pub const MAP_REV_SOCK: &str = "KP_REV_SOCK_V1";
/// Agent-provided settings (`u32` 0 → [`Config`]); array.
pub const MAP_CONFIG: &str = "KP_CONFIG_V1";
/// Per-CPU decision counters (`u32` from [`counter`] → [`Counter`]). `_V2`: the tc
/// counters made it longer.
pub const MAP_COUNTERS: &str = "KP_COUNTERS_V2";
/// tc flow state, original direction ([`NatKey`] of a client's packet → [`NatValue`]);
/// LRU, so later packets of a flow follow its first.
pub const MAP_NAT_FWD: &str = "KP_NAT_FWD_V1";
/// tc flow state, reply direction ([`NatKey`] of a backend's reply → [`NatValue`] that
/// restores the frontend and the client); LRU.
pub const MAP_NAT_REV: &str = "KP_NAT_REV_V1";
/// `loadBalancerSourceRanges` (LPM trie: `{prefix_len, SourceRange}` → `u32`, always 1).
pub const MAP_SOURCE_RANGES: &str = "KP_SRC_RANGES_V1";
/// ClientIP affinity of tc flows ([`TcAffinityKey`] → [`AffinityValue`]); LRU.
pub const MAP_TC_AFFINITY: &str = "KP_TC_AFFINITY_V1";
/// The node's ClusterIPs ([`Addr`] → `u32`, always 1); hash, no prealloc. A socket
/// connecting or sending to one of them on a port no service has is refused, as
/// kube-proxy's `cluster-ips` reject does.
pub const MAP_CLUSTER_IPS: &str = "KP_CLUSTER_IPS_V1";

/// Capacity of [`MAP_SERVICES`]: frontends plus slots (Cilium's default is 64k). kproxy
/// aims at 100k service ports of 10 endpoints: 1.1M entries for their ClusterIPs alone,
/// plus external frontends and slots retired within their grace period. No prealloc, so
/// only the bucket array (16 B per entry of capacity, 32 MiB) is paid up front.
pub const SERVICES_MAX: u32 = 1 << 21;
/// Capacity of [`MAP_BACKENDS`]: 100k service ports of 10 distinct endpoints need 1M,
/// plus backends retired within their grace period (a rollout replaces many at once).
pub const BACKENDS_MAX: u32 = 1 << 21;
/// Capacity of [`MAP_AFFINITY`].
pub const AFFINITY_MAX: u32 = 1 << 16;
/// Capacity of [`MAP_AFFINITY_MATCH`].
pub const AFFINITY_MATCH_MAX: u32 = 1 << 18;
/// Capacity of [`MAP_REV_SOCK`]: one entry per live translated socket and backend.
pub const REV_SOCK_MAX: u32 = 1 << 18;

/// Capacity of [`MAP_NAT_FWD`] and [`MAP_NAT_REV`]: flows from outside tracked at once.
pub const NAT_MAX: u32 = 1 << 18;
/// Capacity of [`MAP_SOURCE_RANGES`].
pub const SOURCE_RANGES_MAX: u32 = 1 << 16;
/// Capacity of [`MAP_TC_AFFINITY`].
pub const TC_AFFINITY_MAX: u32 = 1 << 16;
/// Capacity of [`MAP_CLUSTER_IPS`]: one per Service (and family), not per port.
pub const CLUSTER_IPS_MAX: u32 = 1 << 18;

/// `BPF_F_NO_PREALLOC`.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Kind of a BPF map, for [`MapSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_LRU_HASH`.
    LruHash,
    /// `BPF_MAP_TYPE_ARRAY`.
    Array,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray,
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    LpmTrie,
}

/// One map of the datapath, as data: what the eBPF side declares and what userspace pins,
/// checks on restart and removes on cleanup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// Name, also the pin's file name.
    pub name: &'static str,
    /// Map type.
    pub kind: MapKind,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes.
    pub value_size: u32,
    /// Capacity.
    pub max_entries: u32,
}

const fn size<T>() -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "map types are a few bytes")]
    let s = core::mem::size_of::<T>() as u32;
    s
}

/// Every map kproxy pins.
pub const MAPS: [MapSpec; 12] = [
    MapSpec {
        name: MAP_SERVICES,
        kind: MapKind::Hash,
        key_size: size::<ServiceKey>(),
        value_size: size::<ServiceValue>(),
        max_entries: SERVICES_MAX,
    },
    MapSpec {
        name: MAP_BACKENDS,
        kind: MapKind::Hash,
        key_size: size::<u32>(),
        value_size: size::<Backend>(),
        max_entries: BACKENDS_MAX,
    },
    MapSpec {
        name: MAP_AFFINITY,
        kind: MapKind::LruHash,
        key_size: size::<AffinityKey>(),
        value_size: size::<AffinityValue>(),
        max_entries: AFFINITY_MAX,
    },
    MapSpec {
        name: MAP_AFFINITY_MATCH,
        kind: MapKind::Hash,
        key_size: size::<AffinityMatchKey>(),
        value_size: size::<u32>(),
        max_entries: AFFINITY_MATCH_MAX,
    },
    MapSpec {
        name: MAP_REV_SOCK,
        kind: MapKind::LruHash,
        key_size: size::<RevSockKey>(),
        value_size: size::<RevSockValue>(),
        max_entries: REV_SOCK_MAX,
    },
    MapSpec {
        name: MAP_CONFIG,
        kind: MapKind::Array,
        key_size: size::<u32>(),
        value_size: size::<Config>(),
        max_entries: 1,
    },
    MapSpec {
        name: MAP_COUNTERS,
        kind: MapKind::PerCpuArray,
        key_size: size::<u32>(),
        value_size: size::<Counter>(),
        max_entries: counter::COUNT,
    },
    MapSpec {
        name: MAP_NAT_FWD,
        kind: MapKind::LruHash,
        key_size: size::<NatKey>(),
        value_size: size::<NatValue>(),
        max_entries: NAT_MAX,
    },
    MapSpec {
        name: MAP_NAT_REV,
        kind: MapKind::LruHash,
        key_size: size::<NatKey>(),
        value_size: size::<NatValue>(),
        max_entries: NAT_MAX,
    },
    MapSpec {
        name: MAP_SOURCE_RANGES,
        kind: MapKind::LpmTrie,
        key_size: size::<u32>() + size::<SourceRange>(),
        value_size: size::<u32>(),
        max_entries: SOURCE_RANGES_MAX,
    },
    MapSpec {
        name: MAP_TC_AFFINITY,
        kind: MapKind::LruHash,
        key_size: size::<TcAffinityKey>(),
        value_size: size::<AffinityValue>(),
        max_entries: TC_AFFINITY_MAX,
    },
    MapSpec {
        name: MAP_CLUSTER_IPS,
        kind: MapKind::Hash,
        key_size: size::<Addr>(),
        value_size: size::<u32>(),
        max_entries: CLUSTER_IPS_MAX,
    },
];

/// Names of the socket programs and their hooks, in attach order.
pub const SOCK_PROGRAMS: [&str; 8] = [
    "kp_connect4",
    "kp_connect6",
    "kp_sendmsg4",
    "kp_sendmsg6",
    "kp_recvmsg4",
    "kp_recvmsg6",
    "kp_getpeername4",
    "kp_getpeername6",
];

/// The tc program for traffic arriving on the external devices (`--devices`): new flows
/// to NodePorts, LB IPs and externalIPs, later packets of them, and replies of remote
/// backends to SNAT'd flows.
pub const TC_EXTERNAL_INGRESS: &str = "kp_tc_ingress";
/// The tc program for traffic leaving the external devices: replies of backends on this
/// node's own network namespace (hostNetwork endpoints) to unmasqueraded flows.
pub const TC_EXTERNAL_EGRESS: &str = "kp_tc_egress";
/// The tc program for traffic arriving on every other device (pod veths): replies of
/// local backends.
pub const TC_POD_INGRESS: &str = "kp_tc_from_pod";

#[cfg(feature = "user")]
mod pod {
    use super::{
        Addr, AffinityKey, AffinityMatchKey, AffinityValue, Backend, Config, Counter, NatKey,
        NatValue, RevSockKey, RevSockValue, ServiceKey, ServiceValue, SourceRange, TcAffinityKey,
    };
    // SAFETY (all): repr(C), Copy, integers only with explicit padding: every bit pattern
    // is valid and there are no uninitialised bytes.
    unsafe impl aya::Pod for Addr {}
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for AffinityValue {}
    unsafe impl aya::Pod for AffinityMatchKey {}
    unsafe impl aya::Pod for RevSockKey {}
    unsafe impl aya::Pod for RevSockValue {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for NatKey {}
    unsafe impl aya::Pod for NatValue {}
    unsafe impl aya::Pod for SourceRange {}
    unsafe impl aya::Pod for TcAffinityKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size::<Addr>(), 16);
        assert_eq!(size::<ServiceKey>(), 24);
        assert_eq!(size::<ServiceValue>(), 12);
        assert_eq!(size::<Backend>(), 20);
        assert_eq!(size::<AffinityKey>(), 16);
        assert_eq!(size::<AffinityValue>(), 16);
        assert_eq!(size::<RevSockKey>(), 32);
        assert_eq!(size::<RevSockValue>(), 24);
        assert_eq!(size::<NatKey>(), 40);
        assert_eq!(size::<NatValue>(), 40);
        assert_eq!(size::<SourceRange>(), 20);
        assert_eq!(size::<TcAffinityKey>(), 24);
    }

    #[test]
    fn v4_mapping_round_trips() {
        let raw = u32::from_ne_bytes([198, 51, 100, 7]);
        let a = Addr::from_v4_raw(raw);
        assert!(a.is_v4_mapped());
        assert_eq!(
            a.to_bytes(),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 198, 51, 100, 7]
        );
        assert_eq!(Addr::from_bytes(a.to_bytes()), a);
        assert!(
            !Addr::from_bytes([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])
                .is_v4_mapped()
        );
    }
}
