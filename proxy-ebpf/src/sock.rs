//! Socket load balancing: cgroup `sock_addr` hooks.
//!
//! `connect` and `sendmsg` look the destination up in the services map and, when it is a
//! Service frontend, rewrite it to one backend: a fresh random one per TCP connect, a
//! per-socket one for UDP (from the socket cookie, so datagrams of one socket stay on one
//! backend), or the remembered one under ClientIP affinity. They also record the
//! translation per socket, so `recvmsg` and `getpeername` can show the Service address
//! back. No packet is ever addressed to the Service IP, so no per-packet NAT is needed.
//!
//! Verdicts become errors of the syscall (set with `bpf_set_retval`):
//! reject, and a ClusterIP on a port no service has → ECONNREFUSED (what a TCP RST or
//! ICMP port unreachable gives the client),
//! drop → ETIMEDOUT (what a client of a silently dropping path ends with, returned at once
//! instead of after its retries).

use aya_ebpf::{
    EbpfContext as _,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
        bpf_set_retval,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use kproxy_common::{
    Addr, AffinityKey, AffinityMatchKey, AffinityValue, FLAG_DROP, FLAG_REJECT, FLAG_SOURCE_RANGES,
    RevSockKey, RevSockValue, SCOPE_ALL, SCOPE_NODE, SCOPE_POD, ServiceKey, counter,
};

use crate::{AFFINITY, AFFINITY_MATCH, BACKENDS, CLUSTER_IPS, CONFIG, REV_SOCK, SERVICES, count};

/// Hook verdicts: let the syscall go on, or fail it (with the errno set by
/// `bpf_set_retval`, EPERM otherwise).
const PROCEED: i32 = 1;
const FAIL: i32 = 0;

const IPPROTO_TCP: u32 = 6;
const ECONNREFUSED: i32 = 111;
const ETIMEDOUT: i32 = 110;
const EHOSTUNREACH: i32 = 113;
const NANOS_PER_SEC: u64 = 1_000_000_000;

#[cgroup_sock_addr(connect4)]
pub fn kp_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, false)
}

#[cgroup_sock_addr(connect6)]
pub fn kp_connect6(ctx: SockAddrContext) -> i32 {
    forward(&ctx, true)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn kp_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, false)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn kp_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn kp_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, false);
    PROCEED
}

#[cgroup_sock_addr(recvmsg6)]
pub fn kp_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, true);
    PROCEED
}

#[cgroup_sock_addr(getpeername4)]
pub fn kp_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, false);
    PROCEED
}

#[cgroup_sock_addr(getpeername6)]
pub fn kp_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse(&ctx, true);
    PROCEED
}

/// The user address of the hook, 16-byte form. Every context word is read on its own:
/// the verifier only allows 4-byte accesses to `user_ip6`.
#[inline(always)]
fn user_addr(ctx: &SockAddrContext, v6: bool) -> Addr {
    let sa = ctx.sock_addr;
    // SAFETY: the context pointer is valid for the program's run; volatile keeps LLVM from
    // merging the 4-byte loads.
    unsafe {
        if v6 {
            Addr {
                words: [
                    core::ptr::read_volatile(&raw const (*sa).user_ip6[0]),
                    core::ptr::read_volatile(&raw const (*sa).user_ip6[1]),
                    core::ptr::read_volatile(&raw const (*sa).user_ip6[2]),
                    core::ptr::read_volatile(&raw const (*sa).user_ip6[3]),
                ],
            }
        } else {
            Addr::from_v4_raw(core::ptr::read_volatile(&raw const (*sa).user_ip4))
        }
    }
}

/// Writes the user address and port. Returns false when an IPv4 hook would need a
/// non-IPv4 address (never, as families are kept apart by the agent).
#[inline(always)]
fn set_user_addr(ctx: &SockAddrContext, v6: bool, addr: &Addr, port: u16) -> bool {
    let sa = ctx.sock_addr;
    if !v6 && !addr.is_v4_mapped() {
        return false;
    }
    // SAFETY: as in `user_addr`; stores are 4 bytes each, as the verifier requires.
    unsafe {
        if v6 {
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[0], addr.words[0]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[1], addr.words[1]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[2], addr.words[2]);
            core::ptr::write_volatile(&raw mut (*sa).user_ip6[3], addr.words[3]);
        } else {
            core::ptr::write_volatile(&raw mut (*sa).user_ip4, addr.words[3]);
        }
        core::ptr::write_volatile(&raw mut (*sa).user_port, u32::from(port));
    }
    true
}

#[inline(always)]
fn user_port(ctx: &SockAddrContext) -> u16 {
    // SAFETY: valid context. The port sits in the low 16 bits, in network byte order.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the kernel stores a __be16 here"
    )]
    let port = unsafe { core::ptr::read_volatile(&raw const (*ctx.sock_addr).user_port) } as u16;
    port
}

#[inline(always)]
fn fail(errno: i32, which: u32) -> i32 {
    count(which);
    // SAFETY: plain helper call; allowed for connect and sendmsg hooks.
    unsafe { bpf_set_retval(-errno) };
    FAIL
}

/// connect/sendmsg: translate a Service frontend to a backend.
#[inline(always)]
fn forward(ctx: &SockAddrContext, v6: bool) -> i32 {
    // SAFETY: valid context.
    let protocol = unsafe { (*ctx.sock_addr).protocol };
    let addr = user_addr(ctx, v6);
    let port = user_port(ctx);
    // SAFETY: helper calls valid for sock_addr programs.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let host = CONFIG.get(0).map_or(0, |c| c.host_netns_cookie);
    let scope = if netns_cookie == host {
        SCOPE_NODE
    } else {
        SCOPE_POD
    };

    #[expect(
        clippy::cast_possible_truncation,
        reason = "IP protocol numbers fit in a byte"
    )]
    let mut key = ServiceKey {
        addr,
        port,
        slot: 0,
        proto: protocol as u8,
        scope,
        pad: [0; 2],
    };
    // SAFETY (map reads): the maps are no-prealloc hashes, so an element stays valid for
    // the RCU read section the program runs in; values are copied out at once.
    let master = match unsafe { SERVICES.get(&key) } {
        Some(v) => *v,
        None => {
            key.scope = SCOPE_ALL;
            match unsafe { SERVICES.get(&key) } {
                Some(v) => *v,
                // A ClusterIP on a port (or protocol) no service has: refused, as by
                // kube-proxy's `cluster-ips` reject. Anything else is not ours.
                None if unsafe { CLUSTER_IPS.get(&addr) }.is_some() => {
                    return fail(ECONNREFUSED, counter::REJECTED);
                }
                None => return PROCEED,
            }
        }
    };
    if master.flags & FLAG_SOURCE_RANGES != 0 {
        return PROCEED;
    }
    if master.flags & FLAG_REJECT != 0 {
        return fail(ECONNREFUSED, counter::REJECTED);
    }
    if master.flags & FLAG_DROP != 0 {
        return fail(ETIMEDOUT, counter::DROPPED);
    }
    if master.count == 0 {
        return fail(EHOSTUNREACH, counter::LOOKUP_MISS);
    }

    // SAFETY: helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let affinity_key = AffinityKey {
        netns_cookie,
        service_id: master.service_id,
        pad: 0,
    };
    let mut backend_id = 0u32;
    if master.target != 0 {
        if let Some(a) = unsafe { AFFINITY.get(&affinity_key) } {
            let a = *a;
            let fresh =
                now.wrapping_sub(a.last_used_ns) <= u64::from(master.target) * NANOS_PER_SEC;
            let still_member = unsafe {
                AFFINITY_MATCH
                    .get(&AffinityMatchKey {
                        service_id: master.service_id,
                        backend_id: a.backend_id,
                    })
                    .is_some()
            };
            if fresh && still_member {
                backend_id = a.backend_id;
                count(counter::AFFINITY_HIT);
            }
        }
    }
    if backend_id == 0 {
        let pick = if protocol == IPPROTO_TCP {
            // SAFETY: helper call.
            u64::from(unsafe { bpf_get_prandom_u32() })
        } else {
            // UDP: one backend per socket, so replies to an unconnected socket come from
            // the backend its earlier datagrams went to.
            // SAFETY: helper call.
            unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
        };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the remainder is below count, a u16"
        )]
        let slot = (pick % u64::from(master.count)) as u16 + 1;
        key.slot = slot;
        match unsafe { SERVICES.get(&key) } {
            Some(v) => backend_id = v.target,
            None => return fail(EHOSTUNREACH, counter::LOOKUP_MISS),
        }
    }
    let Some(backend) = (unsafe { BACKENDS.get(&backend_id) }).copied() else {
        return fail(EHOSTUNREACH, counter::LOOKUP_MISS);
    };
    if master.target != 0 {
        let value = AffinityValue {
            last_used_ns: now,
            backend_id,
            pad: 0,
        };
        // A full LRU evicts; an update failure only costs stickiness.
        let _ = AFFINITY.insert(&affinity_key, &value, 0);
    }
    // SAFETY: helper call.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let rev_key = RevSockKey {
        cookie,
        addr: backend.addr,
        port: backend.port,
        pad: [0; 6],
    };
    let rev_value = RevSockValue {
        addr,
        port,
        pad: [0; 2],
        service_id: master.service_id,
    };
    // LRU: never full; a lost entry only shows the backend address to recvmsg.
    let _ = REV_SOCK.insert(&rev_key, &rev_value, 0);
    if !set_user_addr(ctx, v6, &backend.addr, backend.port) {
        return fail(EHOSTUNREACH, counter::LOOKUP_MISS);
    }
    count(counter::TRANSLATED);
    PROCEED
}

/// recvmsg/getpeername: show the Service address instead of the backend's.
#[inline(always)]
fn reverse(ctx: &SockAddrContext, v6: bool) {
    // SAFETY: helper call.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevSockKey {
        cookie,
        addr: user_addr(ctx, v6),
        port: user_port(ctx),
        pad: [0; 6],
    };
    // SAFETY: LRU value copied out at once.
    if let Some(v) = unsafe { REV_SOCK.get(&key) }.copied() {
        if set_user_addr(ctx, v6, &v.addr, v.port) {
            count(counter::REVERSED);
        }
    }
}
