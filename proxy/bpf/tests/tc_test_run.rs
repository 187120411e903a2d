//! `BPF_PROG_TEST_RUN` of the tc programs with crafted packets, against maps a real
//! dataplane filled from a model, inside a lab node's namespace (so the programs' FIB
//! lookups see the node's routes). Each case checks the verdict, every rewritten field and
//! that the IP and L4 checksums of the result are still valid.

#[expect(
    dead_code,
    reason = "shared with socket_lb.rs; these tests use part of it"
)]
mod common;

use std::net::{IpAddr, Ipv4Addr};

use aya::{
    EbpfLoader,
    programs::{SchedClassifier, TestRun as _, TestRunOptions},
};
use common::{ECHO_PORT, all, assert_root, endpoint, key, model};
use kproxy_bpf::{BpfConfig, BpfDataplane, object::EBPF_OBJECT};
use kproxy_common::{TC_EXTERNAL_EGRESS, TC_EXTERNAL_INGRESS, TC_POD_INGRESS};
use kproxy_model::{
    Endpoint, EndpointSet, ExternalTraffic, Frontend, FrontendKind, InternalMasquerade, IpFamily,
    Protocol, ServicePort, Verdict,
};
use kproxy_tests::lab::{Host, Lab};

const TCP: u8 = 6;
const UDP: u8 = 17;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// `TC_ACT_UNSPEC` (-1): not this program's packet.
const NEXT: u32 = u32::MAX;

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const ALLOWED_CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    #[expect(clippy::cast_possible_truncation, reason = "folded")]
    let r = !(s as u16);
    r
}

/// The L4 checksum of an IPv4 packet (`ip` from the IP header on), over the pseudo
/// header; 0 (or 0xffff) when the stored one is right.
fn l4_residue(ip: &[u8]) -> u16 {
    let ihl = usize::from(ip[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let l4 = &ip[ihl..total];
    let mut s = sum16(&ip[12..20]) + u32::from(ip[9]);
    s += u32::try_from(l4.len()).unwrap();
    s += sum16(l4);
    fold(s)
}

/// An Ethernet + IPv4 + TCP/UDP packet with correct checksums and a small payload.
fn packet(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Vec<u8> {
    let payload = b"ping\n";
    let l4_len = if proto == TCP { 20 } else { 8 } + payload.len();
    let mut p = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = u16::try_from(20 + l4_len).unwrap();
    p.extend_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0]);
    p[16..18].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.0.octets());
    p.extend_from_slice(&dst.0.octets());
    let check = fold(sum16(&p[14..34]));
    p[24..26].copy_from_slice(&check.to_be_bytes());
    p.extend_from_slice(&src.1.to_be_bytes());
    p.extend_from_slice(&dst.1.to_be_bytes());
    if proto == TCP {
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    } else {
        p.extend_from_slice(&u16::try_from(l4_len).unwrap().to_be_bytes());
        p.extend_from_slice(&[0, 0]);
    }
    p.extend_from_slice(payload);
    let csum = if proto == TCP { 34 + 16 } else { 34 + 6 };
    let c = l4_residue(&p[14..]);
    p[csum..csum + 2].copy_from_slice(&c.to_be_bytes());
    assert_eq!(l4_residue(&p[14..]), 0, "test packet checksum");
    p
}

/// What a packet says, after checking its checksums.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
}

fn seen(p: &[u8]) -> Seen {
    let ip = &p[14..];
    assert_eq!(fold(sum16(&ip[..20])), 0, "IP header checksum of {p:02x?}");
    assert_eq!(l4_residue(ip), 0, "L4 checksum of {p:02x?}");
    let addr = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
    let port = |o: usize| u16::from_be_bytes([ip[o], ip[o + 1]]);
    Seen {
        src: (addr(12), port(20)),
        dst: (addr(16), port(22)),
    }
}

/// Runs `prog` on `data` as if it arrived on `ifindex`; returns the verdict and the packet.
fn run(prog: &SchedClassifier, data: &[u8], ifindex: u32) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 256];
    // `struct __sk_buff` up to `ifindex` (offset 40) and `tc_index`: the kernel takes a
    // prefix of the context and zero for the rest.
    let mut ctx = [0u8; 48];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    let result = prog
        .test_run(TestRunOptions {
            data_in: Some(data),
            data_out: Some(&mut out),
            ctx_in: Some(&ctx),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(result.data_size_out as usize);
    (result.return_value, out)
}

fn service(
    name: &str,
    protocol: Protocol,
    frontends: Vec<Frontend>,
    endpoints: Vec<Endpoint>,
    local: bool,
) -> ServicePort {
    let internal = all(&endpoints);
    let verdict = if local && !endpoints.is_empty() {
        let set: Vec<u32> = (0..u32::try_from(endpoints.len()).unwrap())
            .filter(|i| endpoints[*i as usize].is_local)
            .collect();
        if set.is_empty() {
            Verdict::Drop
        } else {
            Verdict::Forward(EndpointSet(set))
        }
    } else {
        internal.clone()
    };
    ServicePort {
        key: key(name, protocol, IpFamily::V4),
        cluster_ip: frontends[0].ip,
        port: 80,
        node_port: None,
        frontends,
        source_ranges: Vec::new(),
        affinity_timeout_secs: None,
        external_policy_local: local,
        internal_policy_local: false,
        health_check_node_port: None,
        endpoints,
        internal: internal.clone(),
        internal_masquerade: InternalMasquerade::HairpinOnly,
        external: Some(ExternalTraffic {
            verdict,
            masquerade: !local,
            pod_sources_use_cluster: Vec::new(),
            node_sources_use_cluster: false,
            cluster_verdict: internal,
        }),
        local_ready_endpoints: 0,
    }
}

fn node_port(ip: Ipv4Addr, port: u16) -> Frontend {
    Frontend {
        kind: FrontendKind::NodePort,
        ip: ip.into(),
        port,
    }
}

fn cluster_ip(last: u8) -> Frontend {
    Frontend {
        kind: FrontendKind::ClusterIp,
        ip: IpAddr::from([198, 51, 100, last]),
        port: 80,
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
#[expect(clippy::too_many_lines, reason = "one scenario, case after case")]
fn tc_programs_translate_reply_reject_drop_and_filter_crafted_packets() {
    assert_root();
    let lab = Lab::new("bpf-tcrun").expect("lab");
    let a = lab.add_node("a").expect("node a");
    let b = lab.add_node("b").expect("node b");
    let a1 = a.add_pod("a1").expect("pod a1");
    let b1 = b.add_pod("b1").expect("pod b1");
    let node = a.ipv4();
    let (a1_ip, b1_ip) = (a1.ipv4(), b1.ipv4());
    let local_ep = endpoint(a1_ip.into(), true);
    let remote_ep = endpoint(b1_ip.into(), false);

    let mut lb = service(
        "lb",
        Protocol::Tcp,
        vec![
            cluster_ip(14),
            Frontend {
                kind: FrontendKind::LoadBalancer,
                ip: IpAddr::from([198, 51, 100, 200]),
                port: 80,
            },
        ],
        vec![remote_ep.clone()],
        false,
    );
    lb.source_ranges = vec!["203.0.113.2/32".parse().unwrap()];
    let m = model([
        service(
            "local",
            Protocol::Tcp,
            vec![cluster_ip(11), node_port(node, 30081)],
            vec![local_ep.clone(), remote_ep.clone()],
            true,
        ),
        service(
            "local",
            Protocol::Udp,
            vec![cluster_ip(11), node_port(node, 30081)],
            vec![local_ep.clone(), remote_ep.clone()],
            true,
        ),
        service(
            "cluster",
            Protocol::Tcp,
            vec![cluster_ip(10), node_port(node, 30080)],
            vec![remote_ep.clone()],
            false,
        ),
        service(
            "nolocal",
            Protocol::Tcp,
            vec![cluster_ip(12), node_port(node, 30082)],
            vec![remote_ep],
            true,
        ),
        service(
            "empty",
            Protocol::Tcp,
            vec![cluster_ip(13), node_port(node, 30083)],
            Vec::new(),
            false,
        ),
        lb,
    ]);

    let cfg = BpfConfig {
        cgroup_path: a.cgroup_path().to_owned(),
        bpffs: a.bpffs_path().to_owned(),
        devices: vec!["eth0".to_owned()],
    };
    let mut dp = a
        .run(move || BpfDataplane::new(&cfg))
        .expect("thread in node a")
        .unwrap_or_else(|e| panic!("dataplane: {e:#?}"));
    dp.sync_full(&m).expect("sync");

    let maps = a.bpffs_path().join("kproxy/maps");
    let veth = a1.host_veth().to_owned();
    a.run(move || {
        // A second instance of the object, sharing the dataplane's pinned maps.
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps)
            .load(EBPF_OBJECT)
            .expect("load the object against the pinned maps");
        for name in [TC_EXTERNAL_INGRESS, TC_EXTERNAL_EGRESS, TC_POD_INGRESS] {
            let p: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            p.load().unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
        let prog = |name| -> &SchedClassifier { ebpf.program(name).unwrap().try_into().unwrap() };
        let (ingress, egress, from_pod) = (
            prog(TC_EXTERNAL_INGRESS),
            prog(TC_EXTERNAL_EGRESS),
            prog(TC_POD_INGRESS),
        );
        let eth0 = nix::net::if_::if_nametoindex("eth0").expect("eth0");
        let pod_dev = nix::net::if_::if_nametoindex(veth.as_str()).expect("veth");

        // Not a frontend: untouched, handed on.
        let p = packet(TCP, (CLIENT, 40000), (node, 22), SYN);
        let (rc, out) = run(ingress, &p, eth0);
        assert_eq!((rc, &out), (NEXT, &p), "a packet to no frontend");

        // eTP Local: DNAT to the local endpoint, source kept, the kernel routes it.
        for (proto, sport) in [(TCP, 40001), (UDP, 40002)] {
            let p = packet(proto, (CLIENT, sport), (node, 30081), SYN);
            let (rc, out) = run(ingress, &p, eth0);
            assert_eq!(rc, TC_ACT_OK, "eTP Local proto {proto}");
            assert_eq!(
                seen(&out),
                Seen {
                    src: (CLIENT, sport),
                    dst: (a1_ip, ECHO_PORT)
                },
                "eTP Local proto {proto}"
            );
            // Later packets follow the first.
            let (rc, again) = run(
                ingress,
                &packet(proto, (CLIENT, sport), (node, 30081), ACK),
                eth0,
            );
            assert_eq!(rc, TC_ACT_OK);
            assert_eq!(seen(&again).dst, (a1_ip, ECHO_PORT));
            // The pod's reply, on its veth: back to the NodePort as source, forwarded by
            // the program (its source is the node's own address).
            let reply = packet(proto, (a1_ip, ECHO_PORT), (CLIENT, sport), ACK);
            let (rc, out) = run(from_pod, &reply, pod_dev);
            assert_eq!(rc, TC_ACT_REDIRECT, "reply proto {proto}");
            assert_eq!(
                seen(&out),
                Seen {
                    src: (node, 30081),
                    dst: (CLIENT, sport)
                },
                "reply proto {proto}"
            );
            // The same reply leaving through the node's stack (egress program).
            let (rc, out) = run(egress, &reply, eth0);
            assert_eq!(rc, TC_ACT_OK);
            assert_eq!(seen(&out).src, (node, 30081));
        }

        // eTP Cluster to a remote endpoint: DNAT plus SNAT to the node address, redirected.
        let p = packet(TCP, (CLIENT, 40003), (node, 30080), SYN);
        let (rc, out) = run(ingress, &p, eth0);
        assert_eq!(rc, TC_ACT_REDIRECT, "eTP Cluster");
        let fwd = seen(&out);
        assert_eq!(fwd.dst, (b1_ip, ECHO_PORT), "eTP Cluster DNAT");
        assert_eq!(fwd.src.0, node, "eTP Cluster SNAT address");
        assert!(
            fwd.src.1 >= 61000,
            "SNAT port {} in the SNAT range",
            fwd.src.1
        );
        // The backend's reply arrives on the external device: both translations undone.
        let reply = packet(TCP, (b1_ip, ECHO_PORT), fwd.src, SYN | ACK);
        let (rc, out) = run(ingress, &reply, eth0);
        assert_eq!(rc, TC_ACT_REDIRECT, "reply to a SNAT'd flow");
        assert_eq!(
            seen(&out),
            Seen {
                src: (node, 30080),
                dst: (CLIENT, 40003)
            }
        );
        // A second flow gets another SNAT port.
        let (_, out2) = run(
            ingress,
            &packet(TCP, (CLIENT, 40004), (node, 30080), SYN),
            eth0,
        );
        assert_ne!(seen(&out2).src.1, fwd.src.1, "two flows share a SNAT port");

        // eTP Local without a local endpoint: dropped.
        let (rc, _) = run(
            ingress,
            &packet(TCP, (CLIENT, 40005), (node, 30082), SYN),
            eth0,
        );
        assert_eq!(rc, TC_ACT_SHOT, "no local endpoint");

        // No endpoints: an ICMP port unreachable goes back out the same device.
        let p = packet(TCP, (CLIENT, 40006), (node, 30083), SYN);
        let (rc, out) = run(ingress, &p, eth0);
        assert_eq!(rc, TC_ACT_REDIRECT, "reject");
        assert_eq!(out.len(), 14 + 20 + 8 + 28, "reject: {out:02x?}");
        assert_eq!(&out[0..6], &p[6..12], "reply to the sender's MAC");
        let ip = &out[14..];
        assert_eq!(fold(sum16(&ip[..20])), 0, "ICMP's IP checksum");
        assert_eq!(ip[9], 1, "ICMP");
        assert_eq!(&ip[12..16], &node.octets(), "from the frontend");
        assert_eq!(&ip[16..20], &CLIENT.octets(), "to the client");
        assert_eq!((ip[20], ip[21]), (3, 3), "port unreachable");
        assert_eq!(fold(sum16(&ip[20..])), 0, "ICMP checksum");
        assert_eq!(&ip[28..56], &p[14..42], "quotes the offending header");

        // loadBalancerSourceRanges: outside → dropped, inside → translated.
        let (rc, _) = run(
            ingress,
            &packet(
                TCP,
                (CLIENT, 40007),
                (Ipv4Addr::new(198, 51, 100, 200), 80),
                SYN,
            ),
            eth0,
        );
        assert_eq!(rc, TC_ACT_SHOT, "source outside the ranges");
        let (rc, out) = run(
            ingress,
            &packet(
                TCP,
                (ALLOWED_CLIENT, 40008),
                (Ipv4Addr::new(198, 51, 100, 200), 80),
                SYN,
            ),
            eth0,
        );
        assert_eq!(rc, TC_ACT_REDIRECT, "source inside the ranges");
        assert_eq!(seen(&out).dst, (b1_ip, ECHO_PORT));
        assert_eq!(seen(&out).src.0, node);

        // A ClusterIP reached from outside is not exposed by the tc programs.
        let p = packet(
            TCP,
            (CLIENT, 40009),
            (Ipv4Addr::new(198, 51, 100, 10), 80),
            SYN,
        );
        assert_eq!(run(ingress, &p, eth0).0, NEXT, "ClusterIP from outside");
    })
    .expect("test run in node a");

    let counters = dp.counters().expect("counters");
    assert_eq!(
        counters[kproxy_common::counter::TC_FAILED as usize],
        0,
        "{counters:?}"
    );
    drop(dp);
    BpfDataplane::cleanup(a.bpffs_path()).expect("cleanup");
}
