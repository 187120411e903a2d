//! Socket load balancing against the real kernel: a lab node with the dataplane attached
//! to its cgroup, echo pods as endpoints, and clients that are processes on the node or
//! in a pod.

mod common;

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use common::{
    EchoLab, HeldConnection, REQUEST, assert_root, cluster_ip, endpoint, model, names,
    start_pong_server, view_from, with_node_port_local,
};
use kproxy_bpf::{BpfConfig, BpfDataplane};
use kproxy_common::counter;
use kproxy_model::{EndpointSet, Protocol, Verdict};
use kproxy_tests::lab::{
    Host, Node,
    client::{ClientError, tcp_request, udp_request},
};

const TRIES: usize = 40;

fn config(node: &Node) -> BpfConfig {
    BpfConfig {
        cgroup_path: node.cgroup_path().to_owned(),
        bpffs: node.bpffs_path().to_owned(),
        devices: Vec::new(),
    }
}

/// The dataplane, created on a thread inside the node's namespace (its netns cookie
/// tells node sockets from pod sockets).
fn dataplane(node: &Node) -> BpfDataplane {
    let cfg = config(node);
    node.run(move || BpfDataplane::new(&cfg))
        .expect("thread in the node's namespace")
        .unwrap_or_else(|e| panic!("creating the dataplane: {e:#?}"))
}

fn vip(last: u8) -> IpAddr {
    IpAddr::from([198, 51, 100, last])
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn cluster_ip_reaches_every_endpoint_and_shows_the_vip() {
    assert_root();
    let lab = EchoLab::new("bpf-clusterip");
    let mut dp = dataplane(&lab.a);
    let tcp = cluster_ip("web", Protocol::Tcp, vip(10), 80, lab.endpoints());
    let udp = cluster_ip("web", Protocol::Udp, vip(10), 53, lab.endpoints());
    let stats = dp.sync_full(&model([tcp, udp])).expect("sync");
    assert_eq!(stats.frontends, 2);

    let expected: std::collections::BTreeSet<String> =
        ["a1", "a2", "b1"].iter().map(ToString::to_string).collect();
    let to_tcp = SocketAddr::new(vip(10), 80);
    let to_udp = SocketAddr::new(vip(10), 53);
    for (who, host) in [("node", &lab.a as &dyn HostRef), ("pod", &lab.client)] {
        let tcp: Vec<_> = (0..TRIES).map(|_| host.tcp(to_tcp)).collect();
        assert!(tcp.iter().all(Result::is_ok), "TCP from the {who}: {tcp:?}");
        assert_eq!(
            names(&tcp),
            expected,
            "TCP from the {who} reaches every endpoint"
        );
        let udp: Vec<_> = (0..TRIES).map(|_| host.udp(to_udp)).collect();
        assert!(udp.iter().all(Result::is_ok), "UDP from the {who}: {udp:?}");
        assert_eq!(
            names(&udp),
            expected,
            "UDP from the {who} reaches every endpoint"
        );
    }

    for view in [view_from(&lab.a, to_udp), view_from(&lab.client, to_udp)] {
        let (name, from) = view.udp_from.expect("unconnected UDP gets a reply");
        assert!(expected.contains(&name), "{name}");
        assert_eq!(
            from, to_udp,
            "recvfrom shows the service address, not the backend's"
        );
        assert_eq!(
            view.udp_peer.expect("connected UDP"),
            to_udp,
            "getpeername on UDP"
        );
    }
    let view = view_from(&lab.client, to_tcp);
    let (name, peer) = view.tcp.expect("TCP");
    assert!(expected.contains(&name), "{name}");
    assert_eq!(peer, to_tcp, "getpeername on TCP shows the service address");

    let counters = dp.counters().expect("counters");
    assert!(
        counters[counter::TRANSLATED as usize] >= (4 * TRIES) as u64,
        "{counters:?}"
    );
    assert!(counters[counter::REVERSED as usize] > 0, "{counters:?}");
    assert_eq!(counters[counter::LOOKUP_MISS as usize], 0, "{counters:?}");
    drop(dp);
    BpfDataplane::cleanup(lab.a.bpffs_path()).expect("cleanup");
}

/// Requests from a node or a pod, through the lab's echo client.
trait HostRef {
    fn tcp(&self, to: SocketAddr) -> Result<kproxy_tests::lab::client::EchoReply, ClientError>;
    fn udp(&self, to: SocketAddr) -> Result<kproxy_tests::lab::client::EchoReply, ClientError>;
}

impl<H: Host> HostRef for H {
    fn tcp(&self, to: SocketAddr) -> Result<kproxy_tests::lab::client::EchoReply, ClientError> {
        tcp_request(self, to, REQUEST)
    }
    fn udp(&self, to: SocketAddr) -> Result<kproxy_tests::lab::client::EchoReply, ClientError> {
        udp_request(self, to, REQUEST)
    }
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn reject_refuses_and_drop_times_out() {
    assert_root();
    let lab = EchoLab::new("bpf-verdicts");
    let mut dp = dataplane(&lab.a);
    let reject_tcp = cluster_ip("empty", Protocol::Tcp, vip(20), 80, Vec::new());
    let reject_udp = cluster_ip("empty", Protocol::Udp, vip(20), 53, Vec::new());
    // internalTrafficPolicy Local with no endpoint on this node: the model says drop.
    let mut drop_tcp = cluster_ip(
        "remote-only",
        Protocol::Tcp,
        vip(21),
        80,
        vec![endpoint(IpAddr::V4(lab.b1.ipv4()), false)],
    );
    drop_tcp.internal_policy_local = true;
    drop_tcp.internal = Verdict::Drop;
    // A served ClusterIP: its other ports and protocols are refused, as kube-proxy's
    // `cluster-ips` reject does.
    let web = cluster_ip("web", Protocol::Tcp, vip(22), 80, lab.endpoints());
    dp.sync_full(&model([reject_tcp, reject_udp, drop_tcp, web.clone()]))
        .expect("sync");

    for (who, host) in [("node", &lab.a as &dyn HostRef), ("pod", &lab.client)] {
        let r = host.tcp(SocketAddr::new(vip(20), 80));
        assert!(
            matches!(r, Err(ClientError::Refused)),
            "TCP reject from the {who}: {r:?}"
        );
        let r = host.udp(SocketAddr::new(vip(20), 53));
        assert!(
            matches!(r, Err(ClientError::Refused)),
            "UDP reject from the {who}: {r:?}"
        );
        let r = host.tcp(SocketAddr::new(vip(21), 80));
        assert!(
            matches!(r, Err(ClientError::Timeout)),
            "TCP drop from the {who}: {r:?}"
        );
        let r = host.tcp(SocketAddr::new(vip(22), 80));
        assert!(r.is_ok(), "TCP to the served port from the {who}: {r:?}");
        let r = host.tcp(SocketAddr::new(vip(22), 81));
        assert!(
            matches!(r, Err(ClientError::Refused)),
            "TCP to a ClusterIP on an unknown port from the {who}: {r:?}"
        );
        let r = host.udp(SocketAddr::new(vip(22), 80));
        assert!(
            matches!(r, Err(ClientError::Refused)),
            "UDP to a ClusterIP with TCP ports only from the {who}: {r:?}"
        );
    }
    // sendto (sendmsg4) and connect (connect4) of UDP, and TCP connect, from a pod.
    let view = view_from(&lab.client, SocketAddr::new(vip(22), 81));
    assert_refused(&view, "unknown port of a ClusterIP");
    let counters = dp.counters().expect("counters");
    assert_eq!(
        counters[counter::REJECTED as usize],
        4 + 4 + 3,
        "{counters:?}"
    );
    assert_eq!(counters[counter::DROPPED as usize], 2, "{counters:?}");

    // Once no service has the ClusterIP, it is not refused any more: a UDP connect to it
    // succeeds (it sends nothing), where it was refused above.
    let diff = kproxy_model::ModelDiff {
        removed: vec![web.key.clone()],
        ..Default::default()
    };
    let rest = model([
        cluster_ip("empty", Protocol::Tcp, vip(20), 80, Vec::new()),
        cluster_ip("empty", Protocol::Udp, vip(20), 53, Vec::new()),
    ]);
    dp.sync_partial(&rest, &diff).expect("partial sync");
    let view = view_from(&lab.client, SocketAddr::new(vip(22), 81));
    assert_eq!(
        view.udp_peer,
        Ok(SocketAddr::new(vip(22), 81)),
        "a former ClusterIP is left alone"
    );
    drop(dp);
    BpfDataplane::cleanup(lab.a.bpffs_path()).expect("cleanup");
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn node_port_from_node_and_pod_uses_the_cluster_set_under_local_policy() {
    assert_root();
    let lab = EchoLab::new("bpf-nodeport");
    let mut dp = dataplane(&lab.a);
    let node_ip = IpAddr::V4(lab.a.ipv4());
    // eTP Local: outside clients would only get node a's endpoints (a1); node and pod
    // clients short-circuit to the whole cluster set.
    let eps = lab.endpoints();
    let local = Verdict::Forward(EndpointSet(vec![0]));
    let svc = with_node_port_local(
        cluster_ip("np", Protocol::Tcp, vip(30), 80, eps),
        node_ip,
        30080,
        local,
    );
    dp.sync_full(&model([svc])).expect("sync");

    let expected: std::collections::BTreeSet<String> =
        ["a1", "a2", "b1"].iter().map(ToString::to_string).collect();
    let to = SocketAddr::new(node_ip, 30080);
    for (who, host) in [("node", &lab.a as &dyn HostRef), ("pod", &lab.client)] {
        let r: Vec<_> = (0..TRIES).map(|_| host.tcp(to)).collect();
        assert!(
            r.iter().all(Result::is_ok),
            "NodePort from the {who}: {r:?}"
        );
        assert_eq!(
            names(&r),
            expected,
            "NodePort from the {who} uses the cluster-wide set"
        );
    }
    // Without the short-circuit, node clients get the external (local) set only.
    let eps = lab.endpoints();
    let local = Verdict::Forward(EndpointSet(vec![0]));
    let mut svc = with_node_port_local(
        cluster_ip("np", Protocol::Tcp, vip(30), 80, eps),
        node_ip,
        30080,
        local,
    );
    if let Some(ext) = svc.external.as_mut() {
        ext.node_sources_use_cluster = false;
    }
    dp.sync_full(&model([svc])).expect("sync");
    let r: Vec<_> = (0..TRIES / 2).map(|_| lab.a.tcp(to)).collect();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!(
        names(&r),
        ["a1".to_owned()].into(),
        "node clients follow the external verdict"
    );
    drop(dp);
    BpfDataplane::cleanup(lab.a.bpffs_path()).expect("cleanup");
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn session_affinity_sticks_per_client() {
    assert_root();
    let lab = EchoLab::new("bpf-affinity");
    let mut dp = dataplane(&lab.a);
    let mut svc = cluster_ip("sticky", Protocol::Tcp, vip(40), 80, lab.endpoints());
    svc.affinity_timeout_secs = Some(600);
    dp.sync_full(&model([svc.clone()])).expect("sync");
    let to = SocketAddr::new(vip(40), 80);
    for (who, host) in [("node", &lab.a as &dyn HostRef), ("pod", &lab.client)] {
        let r: Vec<_> = (0..TRIES / 2).map(|_| host.tcp(to)).collect();
        assert!(r.iter().all(Result::is_ok), "{who}: {r:?}");
        assert_eq!(
            names(&r).len(),
            1,
            "the {who} sticks to one endpoint: {r:?}"
        );
    }
    let hits = dp.counters().expect("counters")[counter::AFFINITY_HIT as usize];
    assert_eq!(
        hits,
        2 * (TRIES as u64 / 2 - 1),
        "every request but each client's first"
    );

    // The endpoint a client sticks to goes away: it moves on, and sticks again.
    let stuck = lab.client.tcp(to).expect("request").name;
    let remaining: Vec<_> = lab
        .endpoints()
        .into_iter()
        .zip(["a1", "a2", "b1"])
        .filter(|(_, n)| *n != stuck)
        .map(|(e, _)| e)
        .collect();
    let mut svc2 = cluster_ip("sticky", Protocol::Tcp, vip(40), 80, remaining);
    svc2.affinity_timeout_secs = Some(600);
    let diff = kproxy_model::ModelDiff {
        updated: vec![svc2.key.clone()],
        ..Default::default()
    };
    dp.sync_partial(&model([svc2]), &diff)
        .expect("partial sync");
    let r: Vec<_> = (0..TRIES / 4).map(|_| lab.client.tcp(to)).collect();
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    let after = names(&r);
    assert_eq!(after.len(), 1, "sticks again: {r:?}");
    assert!(
        !after.contains(&stuck),
        "never the removed endpoint {stuck}: {r:?}"
    );
    drop(dp);
    BpfDataplane::cleanup(lab.a.bpffs_path()).expect("cleanup");
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn restart_keeps_connections_and_service_then_cleanup_removes_everything() {
    assert_root();
    let lab = EchoLab::new("bpf-restart");
    start_pong_server(&lab.b1, 9000);
    let web = cluster_ip("web", Protocol::Tcp, vip(50), 80, lab.endpoints());
    let mut pong = cluster_ip(
        "pong",
        Protocol::Tcp,
        vip(51),
        9000,
        vec![endpoint(IpAddr::V4(lab.b1.ipv4()), false)],
    );
    pong.endpoints[0].port = 9000;
    let m = model([web, pong]);
    let mut dp = dataplane(&lab.a);
    dp.sync_full(&m).expect("sync");

    let (mut held, first) = HeldConnection::open(&lab.client, SocketAddr::new(vip(51), 9000));
    assert_eq!(
        first,
        format!("connected {}", SocketAddr::new(vip(51), 9000)),
        "getpeername shows the VIP"
    );
    assert_eq!(held.ping(), "pong 1");

    // Clients keep connecting while agents come and go.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        let client = lab.client.clone();
        std::thread::spawn(move || {
            let mut results = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || results.len() < 10 {
                results.push(tcp_request(&client, SocketAddr::new(vip(50), 80), REQUEST));
            }
            results
        })
    };
    for round in 0..3 {
        let old_programs = linked_program_ids(&lab.a);
        drop(dp);
        dp = dataplane(&lab.a);
        let new_programs = linked_program_ids(&lab.a);
        assert!(
            new_programs.iter().all(|id| !old_programs.contains(id)),
            "round {round}: the new agent's programs replace the old ones"
        );
        wait_unloaded(&old_programs);
        let stats = dp.sync_full(&m).expect("sync after restart");
        assert_eq!(
            stats.updates, 0,
            "round {round}: a restarted agent finds every entry in place"
        );
        assert_eq!(stats.deletes, 0, "round {round}");
        assert_eq!(
            held.ping(),
            format!("pong {}", round + 2),
            "round {round}: the connection survives"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results = traffic.join().expect("traffic thread");
    assert!(
        results.iter().all(Result::is_ok),
        "every request during restarts succeeded: {results:?}"
    );
    assert_eq!(
        dp.counters().expect("counters")[counter::LOOKUP_MISS as usize],
        0
    );

    // Cleanup: pins gone, programs detached and unloaded, VIPs no longer translated.
    // Socket programs plus tc programs: ingress and egress on eth0, reply on 3 pod veths.
    let program_ids = linked_program_ids(&lab.a);
    assert_eq!(
        program_ids.len(),
        kproxy_common::SOCK_PROGRAMS.len() + 2 + 3,
        "every program linked and pinned"
    );
    drop(held);
    drop(dp);
    BpfDataplane::cleanup(lab.a.bpffs_path()).expect("cleanup");
    assert!(!lab.a.bpffs_path().join("kproxy").exists(), "no pins left");
    wait_unloaded(&program_ids);
    let r = lab.client.tcp(SocketAddr::new(vip(50), 80));
    assert!(
        r.is_err(),
        "after cleanup the ClusterIP is not translated any more: {r:?}"
    );
}

#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn ipv6_and_v4_mapped_clients_are_balanced() {
    assert_root();
    let lab = EchoLab::new("bpf-ipv6");
    let mut dp = dataplane(&lab.a);
    let vip6: IpAddr = "2001:db8:96::10".parse().unwrap();
    let tcp6 = cluster_ip("web6", Protocol::Tcp, vip6, 80, lab.endpoints_like(vip6));
    let udp6 = cluster_ip("web6", Protocol::Udp, vip6, 53, lab.endpoints_like(vip6));
    let tcp4 = cluster_ip("web4", Protocol::Tcp, vip(60), 80, lab.endpoints());
    dp.sync_full(&model([tcp6, udp6, tcp4])).expect("sync");

    let expected: std::collections::BTreeSet<String> =
        ["a1", "a2", "b1"].iter().map(ToString::to_string).collect();
    let to_tcp = SocketAddr::new(vip6, 80);
    let to_udp = SocketAddr::new(vip6, 53);
    for (who, host) in [("node", &lab.a as &dyn HostRef), ("pod", &lab.client)] {
        let tcp: Vec<_> = (0..TRIES).map(|_| host.tcp(to_tcp)).collect();
        assert!(
            tcp.iter().all(Result::is_ok),
            "TCP/IPv6 from the {who}: {tcp:?}"
        );
        assert_eq!(names(&tcp), expected, "TCP/IPv6 from the {who}");
        let udp: Vec<_> = (0..TRIES).map(|_| host.udp(to_udp)).collect();
        assert!(
            udp.iter().all(Result::is_ok),
            "UDP/IPv6 from the {who}: {udp:?}"
        );
        assert_eq!(names(&udp), expected, "UDP/IPv6 from the {who}");
    }
    let view = view_from(&lab.client, to_udp);
    assert_eq!(
        view.udp_from.expect("UDP/IPv6 reply").1,
        to_udp,
        "recvfrom shows the VIP"
    );
    assert_eq!(view.udp_peer.expect("connected UDP/IPv6"), to_udp);
    let view = view_from(&lab.client, to_tcp);
    assert_eq!(
        view.tcp.expect("TCP/IPv6").1,
        to_tcp,
        "getpeername shows the VIP"
    );

    // A dual-stack socket reaching the IPv4 service as ::ffff:198.51.100.60 goes through
    // connect6 and finds the IPv4 entry.
    let mapped = SocketAddr::new(
        IpAddr::V6(std::net::Ipv4Addr::new(198, 51, 100, 60).to_ipv6_mapped()),
        80,
    );
    let view = view_from(&lab.client, mapped);
    let (name, peer) = view.tcp.expect("v4-mapped TCP");
    assert!(expected.contains(&name), "{name}");
    assert_eq!(peer, mapped, "getpeername shows the mapped VIP");

    // Unknown ports of a ClusterIP are refused through sendmsg6 and connect6 too, for an
    // IPv6 ClusterIP and for an IPv4 one reached as ::ffff:a.b.c.d.
    assert_refused(
        &view_from(&lab.client, SocketAddr::new(vip6, 81)),
        "unknown port of an IPv6 ClusterIP",
    );
    assert_refused(
        &view_from(&lab.client, SocketAddr::new(mapped.ip(), 81)),
        "unknown port of a v4-mapped ClusterIP",
    );
    assert_eq!(
        dp.counters().expect("counters")[counter::LOOKUP_MISS as usize],
        0
    );
    drop(dp);
    BpfDataplane::cleanup(lab.a.bpffs_path()).expect("cleanup");
}

/// Every socket of `view` (unconnected UDP `sendto`, UDP `connect`, TCP `connect`) was
/// refused with ECONNREFUSED.
fn assert_refused(view: &common::SocketView, what: &str) {
    let refused = |e: Option<&String>| e.is_some_and(|e| e.contains("os error 111"));
    assert!(
        refused(view.udp_from.as_ref().err()),
        "UDP sendto, {what}: {:?}",
        view.udp_from
    );
    assert!(
        refused(view.udp_peer.as_ref().err()),
        "UDP connect, {what}: {:?}",
        view.udp_peer
    );
    assert!(
        refused(view.tcp.as_ref().err()),
        "TCP connect, {what}: {:?}",
        view.tcp
    );
}

/// Ids of the programs the pinned links of `node` hold.
fn linked_program_ids(node: &Node) -> Vec<u32> {
    std::fs::read_dir(node.bpffs_path().join("kproxy/links"))
        .expect("links pinned")
        .map(|e| {
            let link = aya::programs::links::PinnedLink::from_pin(e.expect("entry").path())
                .expect("pinned link");
            aya::programs::links::FdLink::from(link)
                .info()
                .expect("link info")
                .program_id()
        })
        .collect()
}

/// Waits (bounded) until none of `ids` is loaded: detached and freed by the kernel, which
/// releases links asynchronously.
fn wait_unloaded(ids: &[u32]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let loaded: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .collect();
        let left: Vec<_> = ids.iter().filter(|id| loaded.contains(id)).collect();
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "programs {left:?} still loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A map pinned under an older layout's name (here: the services map as it was named
/// before its capacity grew) is unpinned by the next agent; the current maps stay.
#[test]
#[ignore = "needs root: run through cargo xtask test"]
fn a_new_agent_unpins_maps_of_older_layouts() {
    assert_root();
    let lab = kproxy_tests::lab::Lab::new("bpf-oldpin").expect("lab");
    let node = lab.add_node("a").expect("node a");
    let maps = node.bpffs_path().join("kproxy/maps");
    drop(dataplane(&node));
    let old = maps.join("KP_SERVICES_V1");
    aya::maps::MapData::from_pin(maps.join(kproxy_common::MAP_SERVICES))
        .expect("the services map's pin")
        .pin(&old)
        .expect("pinning it under the old name");
    assert!(old.exists());

    drop(dataplane(&node));
    assert!(!old.exists(), "{} is still pinned", old.display());
    for spec in &kproxy_common::MAPS {
        assert!(maps.join(spec.name).exists(), "{} lost its pin", spec.name);
    }
}
