//! kproxy's eBPF programs.
//!
//! Socket load balancing (`sock.rs`): cgroup `sock_addr` hooks translate a Service address
//! to a backend when a socket connects or sends, and translate it back when the socket
//! receives or asks for its peer. Traffic from outside (`tc.rs`): tc programs on the
//! external devices translate packets to NodePorts, LB IPs and externalIPs, with per-flow
//! state so replies are translated back. The maps are declared here; their layout and the
//! meaning of every field is documented in `kproxy-common`.
#![no_std]
#![no_main]

mod sock;
mod tc;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use kproxy_common::{
    AFFINITY_MATCH_MAX, AFFINITY_MAX, Addr, AffinityKey, AffinityMatchKey, AffinityValue,
    BACKENDS_MAX, BPF_F_NO_PREALLOC, Backend, CLUSTER_IPS_MAX, Config, Counter, NAT_MAX, NatKey,
    NatValue, REV_SOCK_MAX, RevSockKey, RevSockValue, SERVICES_MAX, SOURCE_RANGES_MAX, ServiceKey,
    ServiceValue, SourceRange, TC_AFFINITY_MAX, TcAffinityKey, counter,
};

// Map names must equal kproxy_common::MAP_*: userspace finds and pins them by these names.

#[map(name = "KP_SERVICES_V2")]
static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::pinned(SERVICES_MAX, BPF_F_NO_PREALLOC);

#[map(name = "KP_BACKENDS_V2")]
static BACKENDS: HashMap<u32, Backend> = HashMap::pinned(BACKENDS_MAX, BPF_F_NO_PREALLOC);

#[map(name = "KP_AFFINITY_V1")]
static AFFINITY: LruHashMap<AffinityKey, AffinityValue> = LruHashMap::pinned(AFFINITY_MAX, 0);

#[map(name = "KP_AFF_MATCH_V1")]
static AFFINITY_MATCH: HashMap<AffinityMatchKey, u32> =
    HashMap::pinned(AFFINITY_MATCH_MAX, BPF_F_NO_PREALLOC);

#[map(name = "KP_REV_SOCK_V1")]
static REV_SOCK: LruHashMap<RevSockKey, RevSockValue> = LruHashMap::pinned(REV_SOCK_MAX, 0);

#[map(name = "KP_CONFIG_V1")]
static CONFIG: Array<Config> = Array::pinned(1, 0);

#[map(name = "KP_COUNTERS_V2")]
static COUNTERS: PerCpuArray<Counter> = PerCpuArray::pinned(counter::COUNT, 0);

#[map(name = "KP_NAT_FWD_V1")]
static NAT_FWD: LruHashMap<NatKey, NatValue> = LruHashMap::pinned(NAT_MAX, 0);

#[map(name = "KP_NAT_REV_V1")]
static NAT_REV: LruHashMap<NatKey, NatValue> = LruHashMap::pinned(NAT_MAX, 0);

#[map(name = "KP_SRC_RANGES_V1")]
static SOURCE_RANGES: LpmTrie<SourceRange, u32> = LpmTrie::pinned(SOURCE_RANGES_MAX, 0);

#[map(name = "KP_TC_AFFINITY_V1")]
static TC_AFFINITY: LruHashMap<TcAffinityKey, AffinityValue> =
    LruHashMap::pinned(TC_AFFINITY_MAX, 0);

#[map(name = "KP_CLUSTER_IPS_V1")]
static CLUSTER_IPS: HashMap<Addr, u32> = HashMap::pinned(CLUSTER_IPS_MAX, BPF_F_NO_PREALLOC);

/// Bumps one per-CPU counter.
#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; programs do not migrate CPUs while running.
        unsafe { (*c).events += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that reaches here, so it is never taken at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
