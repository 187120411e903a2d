//! Traffic from outside the node: tc programs on the external devices and the pod veths.
//!
//! `kp_tc_ingress` (external devices, ingress) sees a client's packet to a NodePort, LB IP
//! or externalIP, picks a backend from the same service entries the socket programs use
//! (scope ALL: the frontend's external verdict), and records the flow in two LRU maps:
//! `NAT_FWD` (the client's 5-tuple → the rewrite of its packets) and `NAT_REV` (the
//! backend's reply 5-tuple → the rewrite that restores the frontend and the client).
//!
//! * eTP Local (no masquerade): DNAT only. The packet goes on through the kernel's
//!   routing to the local pod; the pod's reply enters the node on its veth, where
//!   `kp_tc_from_pod` restores the frontend as source.
//! * eTP Cluster (masquerade): DNAT and SNAT to the node address the FIB picks towards
//!   the backend, with a port from [`SNAT_PORT_MIN`]`..=`[`SNAT_PORT_MAX`]; the reply comes
//!   back to that address, on the external device (remote backend) or a pod veth (local
//!   backend), and is restored there.
//!
//! A rewritten packet whose source is (or may be) this node's address cannot go back into
//! the kernel's input path, which drops local sources as martians: it is forwarded here,
//! with a FIB lookup and a redirect to the neighbour.
//!
//! Verdicts: reject → ICMP port unreachable built from the packet and sent back out the
//! device it came in on; drop and source outside `loadBalancerSourceRanges` → shot.
//!
//! IPv4 only: IPv6 packets are left to the kernel (see the crate README, "Not done").

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_SRC, BPF_NOEXIST, TC_ACT_OK, TC_ACT_SHOT,
        TC_ACT_UNSPEC, bpf_fib_lookup as FibParams,
    },
    helpers::generated::{
        bpf_csum_diff, bpf_fib_lookup, bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_redirect,
        bpf_redirect_neigh, bpf_skb_change_tail,
    },
    macros::classifier,
    maps::lpm_trie::Key,
    programs::TcContext,
};
use kproxy_common::{
    Addr, AffinityMatchKey, AffinityValue, FLAG_DROP, FLAG_EXTERNAL_IP, FLAG_LOAD_BALANCER,
    FLAG_MASQUERADE, FLAG_NODE_PORT, FLAG_REJECT, FLAG_SOURCE_RANGES, NAT_REDIRECT, NatKey,
    NatValue, SCOPE_ALL, ServiceKey, SourceRange, TcAffinityKey, counter,
};

use crate::{
    AFFINITY_MATCH, BACKENDS, NAT_FWD, NAT_REV, SERVICES, SOURCE_RANGES, TC_AFFINITY, count,
};

/// First port SNAT'd flows get on the node address: above Linux's default ephemeral range
/// (32768–60999), so a masqueraded flow never takes the 5-tuple of a node socket's.
pub const SNAT_PORT_MIN: u16 = 61000;
/// Last SNAT port.
pub const SNAT_PORT_MAX: u16 = 65535;
/// Random SNAT ports tried before a new flow gives up.
const SNAT_TRIES: u32 = 16;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const AF_INET: u8 = 2;
const IP_CSUM: usize = ETH_HLEN + 10;
const IP_SADDR: usize = ETH_HLEN + 12;
const IP_DADDR: usize = ETH_HLEN + 16;
const NANOS_PER_SEC: u64 = 1_000_000_000;
/// tc action of a redirect, as `bpf_redirect` returns it.
const TC_ACT_REDIRECT: i32 = 7;

#[expect(clippy::cast_possible_wrap, reason = "small tc action constants")]
const OK: i32 = TC_ACT_OK as i32;
#[expect(clippy::cast_possible_wrap, reason = "small tc action constants")]
const SHOT: i32 = TC_ACT_SHOT as i32;
/// Not ours: the next program (TCX) or the kernel's default path.
const NEXT: i32 = TC_ACT_UNSPEC;

/// An IPv4 TCP or UDP packet, unfragmented, as it is on the wire.
struct Packet {
    l4_off: usize,
    proto: u8,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
}

impl Packet {
    fn key(&self) -> NatKey {
        NatKey {
            saddr: Addr::from_v4_raw(self.saddr),
            daddr: Addr::from_v4_raw(self.daddr),
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            pad: [0; 3],
        }
    }

    fn csum_off(&self) -> usize {
        self.l4_off + if self.proto == IPPROTO_TCP { 16 } else { 6 }
    }
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Packet> {
    let eth_proto: u16 = ctx.load(12).ok()?;
    if eth_proto != ETH_P_IP.to_be() {
        return None;
    }
    let vihl: u8 = ctx.load(ETH_HLEN).ok()?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0xf) * 4;
    if ihl < 20 {
        return None;
    }
    let frag: u16 = ctx.load(ETH_HLEN + 6).ok()?;
    if u16::from_be(frag) & 0x3fff != 0 {
        // Fragments carry no (or only the first) L4 header; left to the kernel.
        return None;
    }
    let proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let l4_off = ETH_HLEN + ihl;
    Some(Packet {
        l4_off,
        proto,
        saddr: ctx.load(IP_SADDR).ok()?,
        daddr: ctx.load(IP_DADDR).ok()?,
        sport: ctx.load(l4_off).ok()?,
        dport: ctx.load(l4_off + 2).ok()?,
    })
}

/// Rewrites addresses and ports of `p` to `to`, fixing the IP and L4 checksums.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Packet, to: &NatValue) -> Result<(), ()> {
    let mangled = if p.proto == IPPROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    };
    let csum = p.csum_off();
    let addr_flags = u64::from(BPF_F_PSEUDO_HDR) | 4 | mangled;
    let (saddr, daddr) = (to.saddr.words[3], to.daddr.words[3]);
    if saddr != p.saddr {
        ctx.l4_csum_replace(csum, u64::from(p.saddr), u64::from(saddr), addr_flags)
            .map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CSUM, u64::from(p.saddr), u64::from(saddr), 4)
            .map_err(|_| ())?;
        ctx.store(IP_SADDR, &saddr, 0).map_err(|_| ())?;
    }
    if daddr != p.daddr {
        ctx.l4_csum_replace(csum, u64::from(p.daddr), u64::from(daddr), addr_flags)
            .map_err(|_| ())?;
        ctx.l3_csum_replace(IP_CSUM, u64::from(p.daddr), u64::from(daddr), 4)
            .map_err(|_| ())?;
        ctx.store(IP_DADDR, &daddr, 0).map_err(|_| ())?;
    }
    if to.sport != p.sport {
        ctx.l4_csum_replace(csum, u64::from(p.sport), u64::from(to.sport), 2 | mangled)
            .map_err(|_| ())?;
        ctx.store(p.l4_off, &to.sport, 0).map_err(|_| ())?;
    }
    if to.dport != p.dport {
        ctx.l4_csum_replace(csum, u64::from(p.dport), u64::from(to.dport), 2 | mangled)
            .map_err(|_| ())?;
        ctx.store(p.l4_off + 2, &to.dport, 0).map_err(|_| ())?;
    }
    Ok(())
}

#[inline(always)]
fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: the context is valid for the program's run.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// FIB lookup towards `daddr` as if forwarding a packet that came in on this device.
/// With `want_src`, the kernel also fills in the source address it would use.
#[inline(always)]
fn fib(ctx: &TcContext, daddr: u32, want_src: bool) -> Option<FibParams> {
    // SAFETY: an all-zero bpf_fib_lookup is a valid argument; fields are set below.
    let mut params: FibParams = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.ifindex = ifindex(ctx);
    params.__bindgen_anon_4.ipv4_dst = daddr;
    let flags = if want_src { BPF_FIB_LOOKUP_SRC } else { 0 };
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap,
        reason = "the struct is 64 bytes"
    )]
    let size = core::mem::size_of::<FibParams>() as i32;
    // SAFETY: helper call with a valid context and a stack buffer of the size passed.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &raw mut params, size, flags) };
    #[expect(clippy::cast_sign_loss, reason = "compared with non-negative codes")]
    let rc = rc as u32;
    if rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH {
        // NO_NEIGH still names the device; the redirect resolves the neighbour.
        if rc == BPF_FIB_LKUP_RET_NO_NEIGH {
            params.dmac = [0; 6];
        }
        Some(params)
    } else {
        None
    }
}

/// Sends the (already rewritten) packet out of the device `params` names.
#[inline(always)]
fn redirect(ctx: &TcContext, params: &FibParams) -> i32 {
    if params.dmac == [0; 6] {
        // SAFETY: helper call; no nexthop given, the kernel looks it up.
        #[expect(clippy::cast_possible_truncation, reason = "tc actions are small")]
        let rc = unsafe { bpf_redirect_neigh(params.ifindex, core::ptr::null_mut(), 0, 0) } as i32;
        return rc;
    }
    if ctx.store(0, &params.dmac, 0).is_err() || ctx.store(6, &params.smac, 0).is_err() {
        count(counter::TC_FAILED);
        return SHOT;
    }
    // SAFETY: helper call.
    #[expect(clippy::cast_possible_truncation, reason = "tc actions are small")]
    let rc = unsafe { bpf_redirect(params.ifindex, 0) } as i32;
    rc
}

/// FIB lookup and redirect towards `daddr`; shot when there is no route.
#[inline(always)]
fn forward_to(ctx: &TcContext, daddr: u32) -> i32 {
    match fib(ctx, daddr, false) {
        Some(params) => redirect(ctx, &params),
        None => {
            count(counter::TC_FAILED);
            SHOT
        }
    }
}

/// A packet of a tracked flow, either direction: rewrite, then forward it ourselves if
/// its new source may be local.
#[inline(always)]
fn apply(ctx: &TcContext, p: &Packet, v: &NatValue, may_redirect: bool) -> i32 {
    if rewrite(ctx, p, v).is_err() {
        count(counter::TC_FAILED);
        return SHOT;
    }
    if may_redirect && v.flags & NAT_REDIRECT != 0 {
        forward_to(ctx, v.daddr.words[3])
    } else {
        OK
    }
}

/// External devices, ingress.
#[classifier]
pub fn kp_tc_ingress(ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return NEXT;
    };
    let key = p.key();
    // SAFETY (map reads): values are copied out at once.
    if let Some(v) = unsafe { NAT_REV.get(&key) }.copied() {
        count(counter::TC_REVERSED);
        return apply(&ctx, &p, &v, true);
    }
    if let Some(v) = unsafe { NAT_FWD.get(&key) }.copied() {
        return apply(&ctx, &p, &v, true);
    }
    new_flow(&ctx, &p, &key)
}

/// Every other device (pod veths), ingress: replies of local backends.
#[classifier]
pub fn kp_tc_from_pod(ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return NEXT;
    };
    // SAFETY: value copied out at once.
    match unsafe { NAT_REV.get(&p.key()) }.copied() {
        Some(v) => {
            count(counter::TC_REVERSED);
            apply(&ctx, &p, &v, true)
        }
        None => NEXT,
    }
}

/// External devices, egress: replies that the node's own stack routed out (backends in
/// the node's network namespace).
#[classifier]
pub fn kp_tc_egress(ctx: TcContext) -> i32 {
    let Some(p) = parse(&ctx) else {
        return NEXT;
    };
    // SAFETY: value copied out at once.
    match unsafe { NAT_REV.get(&p.key()) }.copied() {
        Some(v) => {
            count(counter::TC_REVERSED);
            apply(&ctx, &p, &v, false)
        }
        None => NEXT,
    }
}

#[inline(always)]
fn fail(which: u32) -> i32 {
    count(which);
    SHOT
}

/// First packet of a flow to a frontend (or a packet that is no frontend's at all).
#[inline(always)]
#[expect(clippy::too_many_lines, reason = "one decision sequence")]
fn new_flow(ctx: &TcContext, p: &Packet, key: &NatKey) -> i32 {
    let mut skey = ServiceKey {
        addr: key.daddr,
        port: p.dport,
        slot: 0,
        proto: p.proto,
        scope: SCOPE_ALL,
        pad: [0; 2],
    };
    // SAFETY (map reads): no-prealloc hashes and LRUs; values are copied out at once.
    let Some(master) = (unsafe { SERVICES.get(&skey) }).copied() else {
        return NEXT;
    };
    if master.flags & (FLAG_NODE_PORT | FLAG_LOAD_BALANCER | FLAG_EXTERNAL_IP) == 0 {
        // A ClusterIP reached from outside: not exposed, left to the kernel.
        return NEXT;
    }
    if master.flags & FLAG_SOURCE_RANGES != 0 {
        let range = Key::new(
            32 + 128,
            SourceRange {
                service_id_be: master.service_id.to_be(),
                addr: key.saddr,
            },
        );
        if SOURCE_RANGES.get(&range).is_none() {
            return fail(counter::TC_DROPPED);
        }
    }
    if master.flags & FLAG_REJECT != 0 {
        return reject(ctx, p);
    }
    if master.flags & FLAG_DROP != 0 || master.count == 0 {
        return fail(counter::TC_DROPPED);
    }

    // SAFETY: helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let affinity_key = TcAffinityKey {
        addr: key.saddr,
        service_id: master.service_id,
        pad: 0,
    };
    let mut backend_id = 0u32;
    if master.target != 0 {
        if let Some(a) = unsafe { TC_AFFINITY.get(&affinity_key) }.copied() {
            let fresh =
                now.wrapping_sub(a.last_used_ns) <= u64::from(master.target) * NANOS_PER_SEC;
            let member = unsafe {
                AFFINITY_MATCH
                    .get(&AffinityMatchKey {
                        service_id: master.service_id,
                        backend_id: a.backend_id,
                    })
                    .is_some()
            };
            if fresh && member {
                backend_id = a.backend_id;
                count(counter::AFFINITY_HIT);
            }
        }
    }
    if backend_id == 0 {
        // SAFETY: helper call.
        let pick = unsafe { bpf_get_prandom_u32() };
        #[expect(
            clippy::cast_possible_truncation,
            reason = "the remainder is below count, a u16"
        )]
        let slot = (pick % u32::from(master.count)) as u16 + 1;
        skey.slot = slot;
        match unsafe { SERVICES.get(&skey) } {
            Some(v) => backend_id = v.target,
            None => return fail(counter::TC_FAILED),
        }
    }
    let Some(backend) = (unsafe { BACKENDS.get(&backend_id) }).copied() else {
        return fail(counter::TC_FAILED);
    };
    if !backend.addr.is_v4_mapped() {
        return fail(counter::TC_FAILED);
    }
    if master.target != 0 {
        let value = AffinityValue {
            last_used_ns: now,
            backend_id,
            pad: 0,
        };
        // A full LRU evicts; a failed update only costs stickiness.
        let _ = TC_AFFINITY.insert(&affinity_key, &value, 0);
    }

    let reply = NatValue {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: p.dport,
        dport: p.sport,
        flags: NAT_REDIRECT,
    };
    let mut fwd = NatValue {
        saddr: key.saddr,
        daddr: backend.addr,
        sport: p.sport,
        dport: backend.port,
        flags: 0,
    };
    let mut route = None;
    if master.flags & FLAG_MASQUERADE != 0 {
        let Some(params) = fib(ctx, backend.addr.words[3], true) else {
            return fail(counter::TC_FAILED);
        };
        // SAFETY: a union of plain integers; the kernel filled ipv4_src.
        let node = Addr::from_v4_raw(unsafe { params.__bindgen_anon_3.ipv4_src });
        let mut port = 0u16;
        for _ in 0..SNAT_TRIES {
            // SAFETY: helper call.
            let r = unsafe { bpf_get_prandom_u32() };
            #[expect(clippy::cast_possible_truncation, reason = "below the range size")]
            let candidate =
                (SNAT_PORT_MIN + (r % u32::from(SNAT_PORT_MAX - SNAT_PORT_MIN + 1)) as u16).to_be();
            let rev_key = NatKey {
                saddr: backend.addr,
                daddr: node,
                sport: backend.port,
                dport: candidate,
                proto: p.proto,
                pad: [0; 3],
            };
            if NAT_REV
                .insert(&rev_key, &reply, u64::from(BPF_NOEXIST))
                .is_ok()
            {
                port = candidate;
                break;
            }
        }
        if port == 0 {
            return fail(counter::TC_FAILED);
        }
        fwd.saddr = node;
        fwd.sport = port;
        fwd.flags = NAT_REDIRECT;
        route = Some(params);
    } else {
        let rev_key = NatKey {
            saddr: backend.addr,
            daddr: key.saddr,
            sport: backend.port,
            dport: p.sport,
            proto: p.proto,
            pad: [0; 3],
        };
        if NAT_REV.insert(&rev_key, &reply, 0).is_err() {
            return fail(counter::TC_FAILED);
        }
    }
    if NAT_FWD.insert(key, &fwd, 0).is_err() {
        return fail(counter::TC_FAILED);
    }
    if rewrite(ctx, p, &fwd).is_err() {
        return fail(counter::TC_FAILED);
    }
    count(counter::TC_TRANSLATED);
    match route {
        Some(params) => redirect(ctx, &params),
        None => OK,
    }
}

/// IPv4 header without options.
#[repr(C)]
struct Ipv4Header {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    protocol: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

/// ICMP destination unreachable with the offending header and 8 bytes of its payload.
#[repr(C)]
struct IcmpUnreachable {
    kind: u8,
    code: u8,
    check: u16,
    unused: u32,
    original: [u8; 20],
    l4: [u8; 8],
}

const ICMP_LEN: usize = core::mem::size_of::<IcmpUnreachable>();
const REJECT_LEN: usize = ETH_HLEN + 20 + ICMP_LEN;

#[inline(always)]
fn fold(sum: i64) -> u16 {
    #[expect(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a 32-bit one's complement sum"
    )]
    let mut s = sum as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits")]
    let folded = !(s as u16);
    folded
}

/// Turns the packet into an ICMP port unreachable for its sender and sends it back out the
/// device it arrived on: what kube-proxy's REJECT answers (a TCP client's connect fails
/// with ECONNREFUSED, a connected UDP socket's next call too).
#[inline(always)]
fn reject(ctx: &TcContext, p: &Packet) -> i32 {
    if p.l4_off != ETH_HLEN + 20 {
        // IP options: not worth a variable-length copy; dropped instead.
        return fail(counter::TC_DROPPED);
    }
    let (Ok(original), Ok(l4), Ok(dmac), Ok(smac)) = (
        ctx.load::<[u8; 20]>(ETH_HLEN),
        ctx.load::<[u8; 8]>(p.l4_off),
        ctx.load::<[u8; 6]>(0),
        ctx.load::<[u8; 6]>(6),
    ) else {
        return fail(counter::TC_FAILED);
    };
    let mut icmp = IcmpUnreachable {
        kind: 3,
        code: 3,
        check: 0,
        unused: 0,
        original,
        l4,
    };
    #[expect(clippy::cast_possible_truncation, reason = "56 bytes")]
    let mut ip = Ipv4Header {
        version_ihl: 0x45,
        tos: 0,
        tot_len: ((20 + ICMP_LEN) as u16).to_be(),
        id: 0,
        frag_off: 0,
        ttl: 64,
        protocol: IPPROTO_ICMP,
        check: 0,
        saddr: p.daddr,
        daddr: p.saddr,
    };
    // SAFETY: helper calls over initialised stack structs of the sizes passed.
    #[expect(clippy::cast_possible_truncation, reason = "small structs")]
    unsafe {
        icmp.check = fold(bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (&raw mut icmp).cast(),
            ICMP_LEN as u32,
            0,
        ));
        ip.check = fold(bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            (&raw mut ip).cast(),
            20,
            0,
        ));
    }
    // SAFETY: helper call on the program's own packet.
    #[expect(clippy::cast_possible_truncation, reason = "70 bytes")]
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, REJECT_LEN as u32, 0) } != 0 {
        return fail(counter::TC_FAILED);
    }
    if ctx.store(0, &smac, 0).is_err()
        || ctx.store(6, &dmac, 0).is_err()
        || ctx.store(ETH_HLEN, &ip, 0).is_err()
        || ctx.store(ETH_HLEN + 20, &icmp, 0).is_err()
    {
        return fail(counter::TC_FAILED);
    }
    count(counter::TC_REJECTED);
    // SAFETY: helper call.
    #[expect(clippy::cast_possible_truncation, reason = "tc actions are small")]
    let rc = unsafe { bpf_redirect(ifindex(ctx), 0) } as i32;
    if rc == TC_ACT_REDIRECT { rc } else { SHOT }
}
